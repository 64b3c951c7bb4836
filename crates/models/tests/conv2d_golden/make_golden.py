"""Golden values for crates/models/tests/conv2d.rs, computed by PyTorch in float64.

Run from the repository root with the peer venv:

    .venv-peer/bin/python crates/models/tests/conv2d_golden/make_golden.py

For every case of the grid it stores, under the prefix `caseNN.`, the inputs (`x`, `w`, `b`, and the
cotangent `r`), the geometry `geom` = [padding, stride, dilation, has_bias] and PyTorch's results:
`y` = conv2d(x, w, b) and the gradients `gx`, `gw`, `gb` of sum(y * r). The inputs are rounded to
float32 first, the maths is done in float64 and the results are stored as float32.
"""
import os
import torch
from safetensors.torch import save_file

# (n, c_in, c_out, (h, w), (kh, kw), padding, stride, dilation, bias)
GRID = []
SPATIAL = [
    ((8, 10), (3, 3), 1, 1, 1),
    ((9, 7), (3, 3), 1, 2, 1),
    ((7, 11), (3, 3), 0, 1, 1),
    ((11, 9), (3, 3), 2, 1, 2),
    ((13, 10), (3, 3), 3, 2, 3),
    ((6, 6), (1, 1), 0, 1, 1),
    ((7, 5), (1, 1), 0, 2, 1),
    ((5, 9), (1, 1), 1, 1, 1),
    ((15, 13), (7, 7), 3, 2, 1),
    ((6, 8), (2, 3), 0, 1, 1),
    ((5, 5), (3, 3), 4, 1, 1),
    ((10, 12), (3, 3), 1, 3, 1),
    ((5, 6), (5, 5), 0, 1, 1),
    ((9, 14), (3, 3), 6, 1, 6),
    # Dilated kernels whose outer rows only ever read padding (ASPP on a small map).
    ((5, 14), (3, 3), 6, 1, 6),
    ((3, 20), (3, 3), 12, 1, 12),
]
for hw, k, p, s, d in SPATIAL:
    GRID.append((1, 3, 5, hw, k, p, s, d, False))
    GRID.append((2, 4, 3, hw, k, p, s, d, True))


def main():
    gen = torch.Generator().manual_seed(1234)
    out = {}
    for i, (n, ci, co, (h, w), (kh, kw), p, s, d, has_bias) in enumerate(GRID):
        def rand(*shape):
            return (torch.rand(*shape, generator=gen) * 2 - 1).float()

        x = rand(n, ci, h, w)
        wt = rand(co, ci, kh, kw)
        b = rand(co)
        x64 = x.double().requires_grad_()
        w64 = wt.double().requires_grad_()
        b64 = b.double().requires_grad_()
        y = torch.nn.functional.conv2d(
            x64, w64, b64 if has_bias else None, stride=s, padding=p, dilation=d
        )
        r = rand(*y.shape)
        (y * r.double()).sum().backward()
        key = f"case{i:02d}."
        out[key + "x"] = x
        out[key + "w"] = wt
        out[key + "b"] = b
        out[key + "r"] = r
        out[key + "geom"] = torch.tensor([p, s, d, int(has_bias)], dtype=torch.int64)
        out[key + "y"] = y.detach().float()
        out[key + "gx"] = x64.grad.float()
        out[key + "gw"] = w64.grad.float()
        if has_bias:
            out[key + "gb"] = b64.grad.float()
    here = os.path.dirname(os.path.abspath(__file__))
    save_file(out, os.path.join(here, "conv2d_golden.safetensors"))
    print(f"wrote {len(GRID)} cases")


if __name__ == "__main__":
    main()
