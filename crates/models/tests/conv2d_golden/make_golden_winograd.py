"""Golden values for the Winograd paths of crates/models/tests/conv2d.rs, computed by PyTorch in
float64.

Run from the repository root with the peer venv:

    .venv-peer/bin/python crates/models/tests/conv2d_golden/make_golden_winograd.py

Shapes that the CPU op computes by Winograd F(2x2, 3x3) in the forward pass, the input gradient
and the weight gradient (3x3, stride 1, >= 64 channels, >= 32 tiles over batch and dilation
phases). To keep the file small, the inputs are not stored: both sides generate them with the
same integer formula (`values` below and in the test), exactly representable in float32. Stored
under `caseNN.`: `geom` = [n, c_in, c_out, h, w, padding, dilation] and PyTorch's `y` =
conv2d(x, w, b) and the gradients `gx`, `gw`, `gb` of sum(y * r).
"""
import os
import numpy as np
import torch
from safetensors.torch import save_file

# (n, c_in, c_out, h, w, padding, dilation)
CASES = [
    # Dilation 2 on a small map with odd sizes: 4 phases of different sizes, 30 tiles per image.
    (2, 64, 64, 9, 11, 2, 2),
    # Batch 1, dilation 1, odd size, more output than input channels, padding 1: 35 tiles.
    (1, 64, 72, 10, 13, 1, 1),
]


def values(length, seed):
    """((i * 2654435761 + seed * 97) mod 2^32 >> 8) mod 1000 / 500 - 1, in float32."""
    i = np.arange(length, dtype=np.uint64)
    v = (i * np.uint64(2654435761) + np.uint64(seed * 97)) & np.uint64(0xFFFFFFFF)
    k = ((v >> np.uint64(8)) % np.uint64(1000)).astype(np.float32)
    return k / np.float32(500.0) - np.float32(1.0)


def main():
    out = {}
    for idx, (n, ci, co, h, w, p, d) in enumerate(CASES):
        oh = h + 2 * p - 2 * d
        ow = w + 2 * p - 2 * d
        t = lambda length, seed, shape: torch.from_numpy(values(length, seed)).reshape(shape)
        x = t(n * ci * h * w, 10 * idx + 1, (n, ci, h, w))
        wt = t(co * ci * 9, 10 * idx + 2, (co, ci, 3, 3))
        b = t(co, 10 * idx + 3, (co,))
        r = t(n * co * oh * ow, 10 * idx + 4, (n, co, oh, ow))
        x64 = x.double().requires_grad_()
        w64 = wt.double().requires_grad_()
        b64 = b.double().requires_grad_()
        y = torch.nn.functional.conv2d(x64, w64, b64, stride=1, padding=p, dilation=d)
        assert y.shape == r.shape
        (y * r.double()).sum().backward()
        key = f"case{idx:02d}."
        out[key + "geom"] = torch.tensor([n, ci, co, h, w, p, d], dtype=torch.int64)
        out[key + "y"] = y.detach().float()
        out[key + "gx"] = x64.grad.float()
        out[key + "gw"] = w64.grad.float()
        out[key + "gb"] = b64.grad.float()
    here = os.path.dirname(os.path.abspath(__file__))
    save_file(out, os.path.join(here, "conv2d_golden_winograd.safetensors"))
    print(f"wrote {len(CASES)} cases")


if __name__ == "__main__":
    main()
