"""PyTorch timing of the depthwise cases of `cargo xtask bench conv` (xtask/src/bench/conv.rs).

Same protocol as the Rust benchmark: float32, 2 threads (torch.set_num_threads(2)), "forward"
times `y = conv2d(x, w, padding, dilation, groups=C); s = (y*y).sum(); s.item()`, "backward"
times `s.backward()` (input and weight gradients, including the gradient of `y*y`); the median of
`reps` timed passes after one warm-up. Besides wall time it prints the process CPU time per pass
(all threads), which is what to compare on a machine shared with other work. An optional second
argument sets another thread count (e.g. 1, to see the work without any waiting between threads).

    .venv-peer/bin/python crates/models/benches/torch_depthwise_bench.py [reps] [threads]
"""
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

# (figure prefix, (n, c, h, w), kernel, padding, dilation)
CASES = [
    ("dw3x3_c256_48x96", (2, 256, 48, 96), 3, 1, 1),
    ("dw3x3_c512_12x24_d12", (2, 512, 12, 24), 3, 12, 12),
]


def bench(shape, k, padding, dilation, reps):
    n, c, h, w = shape
    x = torch.randn(n, c, h, w, requires_grad=True)
    wt = (torch.randn(c, 1, k, k) * 0.1).requires_grad_()
    fwd, bwd, fwd_cpu, bwd_cpu = [], [], [], []
    for rep in range(reps + 1):
        x.grad = None
        wt.grad = None
        c0, t0 = time.process_time(), time.perf_counter()
        y = F.conv2d(x, wt, padding=padding, dilation=dilation, groups=c)
        s = (y * y).sum()
        s.item()
        c1, t1 = time.process_time(), time.perf_counter()
        s.backward()
        x.grad.sum().item()
        c2, t2 = time.process_time(), time.perf_counter()
        if rep == 0:
            continue
        fwd.append((t1 - t0) * 1e3)
        bwd.append((t2 - t1) * 1e3)
        fwd_cpu.append((c1 - c0) * 1e3)
        bwd_cpu.append((c2 - c1) * 1e3)
    med = statistics.median
    return med(fwd), med(bwd), med(fwd_cpu), med(bwd_cpu)


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
    out = {}
    for name, shape, k, p, d in CASES:
        f, b, fc, bc = bench(shape, k, p, d, reps)
        out[f"{name}_fwd_ms"] = round(f, 3)
        out[f"{name}_bwd_ms"] = round(b, 3)
        out[f"{name}_fwd_cpu_ms"] = round(fc, 3)
        out[f"{name}_bwd_cpu_ms"] = round(bc, 3)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
