"""Golden values of the paper code's Recall loss variant (RecallVariant::PaperCode).

An independent PyTorch (float64) implementation of what PotatoTian/recall-semseg's
`ptsemseg/loss/recall_loss.py` computes: counters of ground-truth pixels and of false negatives
per class start at 1 and take the batch's counts where a class has any, the weight is their
ratio, and the weighted per-pixel cross entropy is averaged over every pixel of the batch
(ignored ones contribute 0). Its remapping of the ignore label onto class 1 (an indexing bug)
is left out. Inputs have ignored pixels and a class that has no false negative (weight 1/N_c).
Writes recall_paper_code.json next to this file.

Run: .venv-peer/bin/python crates/losses/tests/goldens/make_recall_paper_code.py
"""
import json
import os

import torch
import torch.nn.functional as F

IGN = 255
N, C, H, W = 2, 4, 3, 5


def case(seed):
    g = torch.Generator().manual_seed(seed)
    x = ((torch.rand(N, C, H, W, generator=g, dtype=torch.float64) * 2 - 1) * 3).float().double()
    y = torch.randint(0, C, (N, H, W), generator=g)
    # Class 2 always predicted right: a large logit on its pixels (no false negative).
    x = x.clone()
    x[:, 2][y == 2] = 9.0
    drop = torch.rand(N, H, W, generator=g) < 0.2
    y[drop] = IGN
    return x, y


def paper_code_loss(x, y):
    pred = x.argmax(1)
    valid = y != IGN
    gt = torch.ones(C, dtype=torch.float64)
    fn = torch.ones(C, dtype=torch.float64)
    for c in range(C):
        n_c = ((y == c) & valid).sum()
        if n_c > 0:
            gt[c] = n_c
        f_c = ((y == c) & valid & (pred != y)).sum()
        if f_c > 0:
            fn[c] = f_c
    w = fn / gt
    ce = F.cross_entropy(x, y, reduction="none", ignore_index=IGN)
    wy = torch.where(valid, w[y.clamp(max=C - 1)], torch.zeros_like(ce))
    return (wy * ce).mean(), w


out = []
for seed in [1, 2, 3]:
    x, y = case(seed)
    xv = x.clone().requires_grad_(True)
    loss, w = paper_code_loss(xv, y)
    loss.backward()
    out.append(
        {
            "logits": x.flatten().tolist(),
            "target": y.flatten().tolist(),
            "dims": [N, C, H, W],
            "loss": loss.item(),
            "grad": xv.grad.flatten().tolist(),
            "weights": w.tolist(),
        }
    )
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recall_paper_code.json")
with open(path, "w") as f:
    json.dump(out, f)
print("wrote", path)
