"""PyTorch peer of `cargo xtask bench data`: Synthia-format loading throughput in Python.

What it times is what the paper's code (PotatoTian/recall-semseg, ptsemseg/loader/synthia_loader.py)
does per image, plus the training augmentation recallseg's bench uses:
  cv2.imread RGB + cv2.imread(IMREAD_UNCHANGED) 16-bit label (class id = first channel),
  cv2.resize to 768x384 (INTER_LINEAR image, INTER_NEAREST label), random scale 0.5-2.0,
  random crop 768x384 (image padded with the mean, label with 255), random horizontal flip,
  (x - mean) / std to float32 CHW, torch tensors, batches of 4 from torch.utils.data.DataLoader
  (shuffle, persistent workers).

Set-up and run (from the repository root):
    cargo run --release -p recallseg-data --example generate_synthetic -- /tmp/synth1280 0 1280 760 2
    .venv-peer/bin/pip install opencv-python-headless
    .venv-peer/bin/python crates/data/bench/peer_loader.py /tmp/synth1280 [WORKERS ...]
Prints images/s (median of 5 epochs after a warm-up epoch) for each worker count
(default: 0 = in the main process, and one worker per core), and for workers=0 the images per
CPU-second of the process (robust to a machine shared with other work).
"""
import glob
import os
import random
import statistics
import sys
import time

import cv2
import numpy as np
import torch
from torch.utils import data

MEAN = np.array([55.09944, 62.203827, 71.23802], np.float32)  # the paper's BGR statistics
STD = np.array([49.56111, 51.497387, 55.363934], np.float32)
W, H = 768, 384


class Synthia(data.Dataset):
    def __init__(self, root):
        self.imgs = sorted(glob.glob(os.path.join(root, "*", "RGB", "*", "*", "*.png")))
        self.lbls = [p.replace(os.sep + "RGB" + os.sep, os.sep + os.path.join("GT", "LABELS") + os.sep)
                     for p in self.imgs]
        assert self.imgs, "no images under " + root

    def __len__(self):
        return len(self.imgs)

    def __getitem__(self, i):
        img = cv2.imread(self.imgs[i])
        lbl = cv2.imread(self.lbls[i], cv2.IMREAD_UNCHANGED)[:, :, 2]
        img = cv2.resize(img, (W, H))
        lbl = cv2.resize(lbl, (W, H), interpolation=cv2.INTER_NEAREST)
        s = random.uniform(0.5, 2.0)
        sw, sh = max(1, round(W * s)), max(1, round(H * s))
        img = cv2.resize(img, (sw, sh))
        lbl = cv2.resize(lbl, (sw, sh), interpolation=cv2.INTER_NEAREST)
        if sw < W or sh < H:
            pw, ph = max(0, W - sw), max(0, H - sh)
            img = cv2.copyMakeBorder(img, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=MEAN.tolist())
            lbl = cv2.copyMakeBorder(lbl, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=255)
        x0 = random.randint(0, img.shape[1] - W)
        y0 = random.randint(0, img.shape[0] - H)
        img = img[y0:y0 + H, x0:x0 + W]
        lbl = lbl[y0:y0 + H, x0:x0 + W]
        if random.random() < 0.5:
            img = img[:, ::-1]
            lbl = lbl[:, ::-1]
        img = ((img.astype(np.float32) - MEAN) / STD).transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(img)), torch.from_numpy(lbl.astype(np.int64))


def rate(ds, workers, reps=5):
    loader = data.DataLoader(ds, batch_size=4, shuffle=True, num_workers=workers,
                             persistent_workers=workers > 0)
    rates = []
    cpu0, total = None, 0
    for epoch in range(reps + 1):
        if epoch == 1:
            cpu0 = time.process_time()
        t = time.perf_counter()
        n = 0
        for img, lbl in loader:
            n += img.shape[0]
        if epoch > 0:
            rates.append(n / (time.perf_counter() - t))
            total += n
    # CPU time of this process (all its threads); worker processes are not included, so the
    # per-CPU-second figure is only meaningful with workers=0.
    per_cpu = total / (time.process_time() - cpu0)
    return statistics.median(rates), per_cpu


if __name__ == "__main__":
    ds = Synthia(sys.argv[1])
    workers = [int(w) for w in sys.argv[2:]] or [0, os.cpu_count()]
    print(f"{len(ds)} images, torch {torch.__version__}, opencv {cv2.__version__}")
    for w in workers:
        r, c = rate(ds, w)
        extra = f", {c:.2f} img per CPU-second" if w == 0 else ""
        print(f"workers={w}: {r:.2f} img/s{extra}")
