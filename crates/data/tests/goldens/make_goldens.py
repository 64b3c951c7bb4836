"""Reference outputs for recallseg-data's transforms, computed with PyTorch / torchvision.

Run from the repository root:
    .venv-peer/bin/python crates/data/tests/goldens/make_goldens.py
It rewrites crates/data/tests/goldens/transforms.json and tiny.jpg, which tests/it/transforms.rs
reads.

* bilinear: torch.nn.functional.interpolate(mode="bilinear", align_corners=False,
  antialias=False) on float32 copies of uint8 images (the OpenCV INTER_LINEAR convention).
* nearest: interpolate(mode="nearest") on label maps (OpenCV INTER_NEAREST convention).
* color_jitter: torchvision.transforms.functional.adjust_brightness, adjust_contrast,
  adjust_saturation, in that order, on float images in [0, 1], scaled back to 0..255.
"""
import json
import pathlib

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

rng = np.random.RandomState(20240605)
cases = []
for (sh, sw, dh, dw) in [(23, 37, 11, 16), (11, 16, 23, 37), (10, 20, 7, 31), (19, 25, 19, 13), (8, 8, 3, 5)]:
    img = rng.randint(0, 256, size=(sh, sw, 3)).astype(np.uint8)
    lbl = rng.randint(0, 19, size=(sh, sw)).astype(np.uint8)
    t = torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)[None]
    bil = F.interpolate(t, size=(dh, dw), mode="bilinear", align_corners=False, antialias=False)
    bil = bil[0].permute(1, 2, 0).contiguous().numpy()
    tl = torch.from_numpy(lbl.astype(np.float32))[None, None]
    near = F.interpolate(tl, size=(dh, dw), mode="nearest")[0, 0].numpy().astype(np.uint8)
    cases.append({
        "src_w": sw, "src_h": sh, "dst_w": dw, "dst_h": dh,
        "image": img.flatten().tolist(),
        "label": lbl.flatten().tolist(),
        "bilinear": [round(float(v), 5) for v in bil.flatten()],
        "nearest": near.flatten().tolist(),
    })

jitter = []
for (b, c, s) in [(1.0, 1.0, 1.0), (1.3, 0.7, 1.2), (0.6, 1.4, 0.5), (1.5, 1.5, 0.0)]:
    img = rng.randint(0, 256, size=(6, 9, 3)).astype(np.uint8)
    t = torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1)
    t = TF.adjust_brightness(t, b)
    t = TF.adjust_contrast(t, c)
    t = TF.adjust_saturation(t, s)
    out = (t.permute(1, 2, 0).numpy() * 255.0)
    jitter.append({
        "w": 9, "h": 6, "brightness": b, "contrast": c, "saturation": s,
        "image": img.flatten().tolist(),
        "out": [round(float(v), 4) for v in out.flatten()],
    })

# A small JPEG (written by Pillow/libjpeg) and its pixels as libjpeg decodes them.
from PIL import Image
yy, xx = np.mgrid[0:12, 0:20]
jpg_src = np.stack([xx * 12, yy * 20, (xx + yy) * 6], -1).astype(np.uint8)
jpg_path = pathlib.Path(__file__).with_name("tiny.jpg")
Image.fromarray(jpg_src).save(jpg_path, quality=95)
jpg_decoded = np.array(Image.open(jpg_path).convert("RGB"))

path = pathlib.Path(__file__).with_name("transforms.json")
path.write_text(json.dumps({
    "torch": torch.__version__,
    "resize": cases,
    "jitter": jitter,
    "jpeg": {"w": 20, "h": 12, "pixels": jpg_decoded.flatten().tolist()},
}))
print("wrote", path)
