"""Reference outputs for recallseg-data's antialiased resize (ResizeMethod::Antialias).

Run from the repository root:
    .venv-peer/bin/python crates/data/tests/goldens/make_resize_antialias.py
It rewrites crates/data/tests/goldens/resize_antialias.json, which tests/it/resize_antialias.rs
reads.

* image: PIL.Image.resize((dw, dh), Image.BILINEAR) of a uint8 RGB image (PIL widens the
  triangle filter by the scale factor when shrinking, so every source pixel contributes).
* label: PIL.Image.resize((dw, dh), Image.NEAREST) of a one-channel ("L") map, i.e. source index
  floor((d + 0.5) * in / out).

Sanity checks of the reference itself (the script stops if one fails):
* torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=True) agrees
  with PIL within 1 on every value (PIL rounds its horizontal pass to uint8, torch does not);
* interpolate(mode="nearest-exact") equals PIL's NEAREST exactly.

For the two small downscales the JSON also holds torch's unrounded antialiased output
("torch_antialias"), which the Rust filter (f32, no intermediate rounding) matches to rounding.

The source is one 45x37 image and label map drawn from torch.Generator seed 20250117; a case
with "src_rows": 36 uses the first 36 rows only (45x36, so the 3x downscale is exact).
"""
import json
import pathlib

import numpy as np
import PIL
import torch
import torch.nn.functional as F
from PIL import Image

SW, SH = 45, 37
gen = torch.Generator().manual_seed(20250117)
# Noise on a smooth ramp: every frequency is present, so an unfiltered resize would alias.
noise = torch.randint(0, 96, (SH, SW, 3), generator=gen, dtype=torch.int64)
yy, xx = torch.meshgrid(torch.arange(SH), torch.arange(SW), indexing="ij")
ramp = torch.stack([xx * 3, yy * 4, (xx + yy) * 2], -1)
src = (noise + ramp).clamp(0, 255).to(torch.uint8).numpy()
label = torch.randint(0, 19, (SH, SW), generator=gen, dtype=torch.int64).to(torch.uint8).numpy()

# (rows of the source used, dst_w, dst_h)
SIZES = [
    (36, 15, 12),  # exact 3x downscale of 45x36
    (37, 16, 11),  # non-integer downscale (2.8125 x 3.36)
    (37, 70, 50),  # upscale
    (37, 9, 50),  # downscale across, upscale down
    (37, 45, 12),  # height only (PIL skips the horizontal pass)
]

cases = []
worst = 0
for rows, dw, dh in SIZES:
    img = np.ascontiguousarray(src[:rows])
    lbl = np.ascontiguousarray(label[:rows])
    pil = np.array(Image.fromarray(img, "RGB").resize((dw, dh), Image.BILINEAR))
    pil_near = np.array(Image.fromarray(lbl, "L").resize((dw, dh), Image.NEAREST))

    t = torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)[None]
    aa = F.interpolate(t, size=(dh, dw), mode="bilinear", align_corners=False, antialias=True)
    aa = aa[0].permute(1, 2, 0).numpy()
    diff = np.abs(np.round(aa) - pil.astype(np.float32)).max()
    assert diff <= 1, f"torch antialias vs PIL, {SW}x{rows}->{dw}x{dh}: {diff}"
    worst = max(worst, float(diff))
    tl = torch.from_numpy(lbl.astype(np.float32))[None, None]
    ne = F.interpolate(tl, size=(dh, dw), mode="nearest-exact")[0, 0].numpy().astype(np.uint8)
    assert (ne == pil_near).all(), f"torch nearest-exact vs PIL NEAREST, {SW}x{rows}->{dw}x{dh}"

    case = {
        "src_rows": rows, "dst_w": dw, "dst_h": dh,
        "bilinear": pil.flatten().tolist(),
        "nearest": pil_near.flatten().tolist(),
    }
    if dw * dh <= 200:
        # The unrounded filter (no intermediate rounding) for the small downscales.
        case["torch_antialias"] = [round(float(v), 3) for v in aa.flatten()]
    cases.append(case)

path = pathlib.Path(__file__).with_name("resize_antialias.json")
path.write_text(json.dumps({
    "pillow": PIL.__version__,
    "torch": torch.__version__,
    "src_w": SW, "src_h": SH,
    "image": src.flatten().tolist(),
    "label": label.flatten().tolist(),
    "cases": cases,
}, separators=(",", ":")))
print("wrote", path, path.stat().st_size, "bytes; torch antialias vs PIL: max |diff|", worst)
