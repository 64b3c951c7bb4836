"""PyTorch's peer of `cargo xtask bench allreduce`: torch.distributed all_reduce (gloo, the
CPU backend of DistributedDataParallel) of the same buffer on the same number of processes.

Same protocol as `examples/mpi_allreduce_bench.rs`: each timed iteration refills the f32
buffer (untimed), waits at a barrier, times one in-place SUM all-reduce on every rank; an
iteration's time is the slowest rank's; median over the iterations after 2 warm-ups. The
default size is the DeepLabV3+-ResNet-18 gradient counted by `cargo xtask bench allreduce`.

    .venv-peer/bin/python crates/distributed/benches/torch_allreduce_bench.py [floats] [iters] [ranks]

Prints one JSON object: ranks, floats, iters, median_ms, min_ms, max_ms, gbytes_per_s.
"""
import json
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# `cargo xtask bench allreduce` prints it ("DeepLabV3+-ResNet-18 has N trainable parameters").
DEFAULT_FLOATS = 16_607_667


def worker(rank, size, floats, iters, port, out):
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=size)
    base = (torch.arange(floats) % 1024).float() * 0.5
    buf = torch.empty(floats)
    times = []
    for k in range(2 + iters):
        buf.copy_(base + rank)
        dist.barrier()
        t = time.perf_counter()
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        if k >= 2:
            times.append((time.perf_counter() - t) * 1e3)
    s = float(size)
    expect = base * s + (s - 1) * s / 2
    assert torch.equal(buf, expect), "wrong all-reduce result"
    all_times = [None] * size
    dist.all_gather_object(all_times, times)
    if rank == 0:
        per_iter = sorted(max(r[k] for r in all_times) for k in range(iters))
        med = statistics.median(per_iter) if iters % 2 else per_iter[iters // 2]
        out.put({
            "ranks": size, "floats": floats, "iters": iters,
            "median_ms": round(med, 4), "min_ms": round(per_iter[0], 4),
            "max_ms": round(per_iter[-1], 4),
            "gbytes_per_s": round(floats * 4 / (med * 1e-3) / 1e9, 4),
            "torch": torch.__version__, "backend": "gloo",
        })
    dist.destroy_process_group()


def main():
    floats = int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_FLOATS
    iters = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = 29500 + os.getpid() % 1000
    mp.start_processes(worker, args=(size, floats, iters, port, out), nprocs=size,
                       start_method="spawn", join=True)
    print(json.dumps(out.get()))


if __name__ == "__main__":
    main()
