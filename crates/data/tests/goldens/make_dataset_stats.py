"""Writes dataset_stats.json: per-channel mean / std (numpy, float64, ddof=0 over every pixel of
every image) and per-class pixel counts of the generated folder dataset that
tests/it/stats.rs writes (the same formulas: images of several sizes, values
(53k + 31y + 17x + 89c + 11·((x·y) mod 7)) mod 256, labels (k + 3x + 5y) mod 4 with 3 → 255,
the ignore index, over 3 classes).

Run: .venv-peer/bin/python crates/data/tests/goldens/make_dataset_stats.py
"""
import json, pathlib
import numpy as np

SIZES = [(7, 5), (3, 4), (16, 9), (1, 1), (10, 2)]  # (width, height) of item k
N_CLASSES = 3


def image(k, w, h):
    y, x, c = np.meshgrid(np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    return ((53 * k + 31 * y + 17 * x + 89 * c + 11 * ((x * y) % 7)) % 256).astype(np.uint8)


def label(k, w, h):
    y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    l = (k + 3 * x + 5 * y) % 4
    return np.where(l == 3, 255, l).astype(np.uint8)


pixels = np.concatenate([image(k, w, h).reshape(-1, 3) for k, (w, h) in enumerate(SIZES)])
labels = np.concatenate([label(k, w, h).reshape(-1) for k, (w, h) in enumerate(SIZES)])
px = pixels.astype(np.float64)
counts = [int((labels == c).sum()) for c in range(N_CLASSES)]
out = {
    "sizes": SIZES,
    "images": len(SIZES),
    "pixels": int(len(pixels)),
    "mean": px.mean(axis=0).tolist(),
    "std": px.std(axis=0).tolist(),
    "class_pixels": counts,
    "ignored_pixels": int((labels == 255).sum()),
    "shares": (np.array(counts) / sum(counts)).tolist(),
}
path = pathlib.Path(__file__).with_name("dataset_stats.json")
path.write_text(json.dumps(out, indent=1))
print("wrote", path, "numpy", np.__version__)
