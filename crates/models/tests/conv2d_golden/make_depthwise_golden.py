"""Golden values for crates/models/tests/depthwise_conv2d.rs, computed by PyTorch in float64.

Run from the repository root with the peer venv:

    .venv-peer/bin/python crates/models/tests/conv2d_golden/make_depthwise_golden.py

Every case is a depthwise convolution (groups = C_in = C_out, weight (C, 1, K_h, K_w)). For every
case of the grid it stores, under the prefix `caseNN.`, the inputs (`x`, `w`, `b`, and the cotangent
`r`), the geometry `geom` = [padding, stride, dilation, has_bias] and PyTorch's results:
`y` = conv2d(x, w, b, groups=C) and the gradients `gx`, `gw`, `gb` of sum(y * r). The inputs are
rounded to float32 first, the maths is done in float64 and the results are stored as float32.
"""
import os
import torch
from safetensors.torch import save_file

# (n, channels, (h, w), (kh, kw), padding, stride, dilation, bias)
GRID = [
    (1, 3, (8, 10), (3, 3), 1, 1, 1, False),
    (2, 4, (9, 7), (3, 3), 1, 2, 1, True),
    (1, 5, (7, 11), (3, 3), 0, 1, 1, True),
    (2, 3, (11, 9), (3, 3), 2, 1, 2, False),
    (1, 4, (13, 10), (3, 3), 3, 2, 2, True),
    (2, 5, (15, 13), (3, 3), 1, 2, 1, False),
    # Padding larger than the kernel's reach: border outputs are the bias alone.
    (2, 3, (5, 5), (3, 3), 3, 1, 1, True),
    (2, 3, (6, 6), (1, 1), 0, 1, 1, True),
    (1, 3, (7, 5), (1, 1), 0, 2, 1, False),
    (2, 2, (5, 9), (1, 1), 1, 1, 1, False),
    (1, 3, (9, 13), (5, 5), 2, 1, 1, True),
    (2, 3, (11, 8), (5, 5), 3, 2, 1, False),
    (1, 3, (10, 9), (5, 5), 0, 2, 2, True),
    (1, 4, (7, 9), (3, 1), 1, 1, 1, True),
    (2, 3, (10, 7), (3, 1), 0, 2, 2, False),
    (1, 3, (9, 14), (3, 3), 6, 1, 6, True),
    # Dilated kernels whose outer rows (and columns) only ever read padding (ASPP on a small map).
    (2, 2, (5, 14), (3, 3), 6, 1, 6, False),
    (1, 3, (3, 20), (3, 3), 12, 1, 12, True),
    (2, 3, (6, 7), (3, 3), 12, 1, 12, True),
    (1, 2, (4, 5), (3, 3), 12, 2, 12, False),
]


def main():
    gen = torch.Generator().manual_seed(4321)
    out = {}
    for i, (n, c, (h, w), (kh, kw), p, s, d, has_bias) in enumerate(GRID):
        def rand(*shape):
            return (torch.rand(*shape, generator=gen) * 2 - 1).float()

        x = rand(n, c, h, w)
        wt = rand(c, 1, kh, kw)
        b = rand(c)
        x64 = x.double().requires_grad_()
        w64 = wt.double().requires_grad_()
        b64 = b.double().requires_grad_()
        y = torch.nn.functional.conv2d(
            x64, w64, b64 if has_bias else None, stride=s, padding=p, dilation=d, groups=c
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
    save_file(out, os.path.join(here, "depthwise_golden.safetensors"))
    print(f"wrote {len(GRID)} cases")


if __name__ == "__main__":
    main()
