"""CPU time (all threads, user + system) of the PyTorch peer losses, forward + backward.

Same inputs and losses as ../shared/peer/loss_bench.py (logits 4x19x256x512, labels uniform,
the first 20 rows of every image ignored). CPU time is steadier than wall time on a shared,
loaded machine; compare it with the `CPU time per step` of
`cargo run --release -p recallseg-losses --example loss_timing -- NAME`.

Run: .venv-peer/bin/python crates/losses/bench/peer_cpu_time.py
"""
import time

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

torch.manual_seed(0)
B, C, H, W = 4, 19, 256, 512
x0 = torch.randn(B, C, H, W)
y = torch.randint(0, C, (B, H, W))
y[:, :20, :] = 255


def recall_ce(inp, target, n_classes=C, ignore_index=255):
    pred = inp.argmax(1)
    valid = target != ignore_index
    t = target[valid]
    p = pred[valid]
    gt = torch.bincount(t, minlength=n_classes).float()
    fn = torch.bincount(t[p != t], minlength=n_classes).float()
    weight = fn / gt.clamp(min=1)
    ce = F.cross_entropy(inp, target, reduction="none", ignore_index=ignore_index)
    w = torch.zeros_like(ce)
    w[valid] = weight[t]
    return (w * ce).sum() / valid.sum()


losses = {
    "ce": lambda x: F.cross_entropy(x, y, ignore_index=255),
    "recall_ce": lambda x: recall_ce(x, y),
    "focal(smp)": lambda x: smp.losses.FocalLoss("multiclass", ignore_index=255)(x, y),
    "dice(smp)": lambda x: smp.losses.DiceLoss("multiclass", ignore_index=255)(x, y),
    "tversky(smp)": lambda x: smp.losses.TverskyLoss("multiclass", ignore_index=255)(x, y),
    "lovasz(smp)": lambda x: smp.losses.LovaszLoss("multiclass", ignore_index=255)(x, y),
}
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
for name, fn in losses.items():
    cpu, wall = [], []
    for _ in range(3):
        x = x0.clone().requires_grad_()
        c0, w0 = time.process_time(), time.perf_counter()
        loss = fn(x)
        loss.backward()
        x.grad.sum().item()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    print(f"{name:14s} CPU min {min(cpu) * 1e3:.0f} ms  wall min {min(wall) * 1e3:.0f} ms")
