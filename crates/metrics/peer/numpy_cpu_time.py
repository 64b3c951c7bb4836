"""numpy `fast_hist` of ../shared/peer/confusion_bench.py, timed in process CPU time.

The peer script times wall clock, which on a shared machine mostly measures the load. numpy's
bincount runs on one thread, so process CPU time is its per-core cost, comparable with
`confusion_1thread_cpu_gpix_per_s` of `cargo xtask bench metrics`.

    .venv-peer/bin/python crates/metrics/peer/numpy_cpu_time.py
"""
import time

import numpy as np

rng = np.random.default_rng(0)
n = 19
N = 8 * 512 * 1024
gt = rng.integers(0, n, N).astype(np.int64)
pr = rng.integers(0, n, N).astype(np.int64)
gt[: N // 10] = 255


def fast_hist(lt, lp, n):
    mask = (lt >= 0) & (lt < n)
    return np.bincount(n * lt[mask].astype(int) + lp[mask], minlength=n**2).reshape(n, n)


ts = []
for _ in range(9):
    t = time.process_time()
    fast_hist(gt, pr, n)
    ts.append(time.process_time() - t)
ts.sort()
print(f"numpy fast_hist per CPU second: median {N / ts[len(ts) // 2] / 1e9:.3f} Gpix/s")
