"""Reference values and gradients for the recallseg-losses tests.

Independent implementations in PyTorch (float64): torch ops written from the papers' formulas,
and segmentation_models_pytorch where its definition is the one the crate implements (Dice,
Tversky, Lovasz-Softmax). Writes goldens.json next to this file; the Rust tests only read it.

Run: /work/main/.venv-peer/bin/python crates/losses/tests/goldens/make_goldens.py
"""
import json
import math
import os

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import lovasz as smp_lovasz

torch.manual_seed(20220523)
IGN = 255
N, C, H, W = 2, 4, 3, 5


def make_inputs(seed, ignored=0.2, used=3, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(N, C, H, W, generator=g, dtype=torch.float64) * 2 - 1) * scale
    # Round to float32 so the f32 fused kernel sees the very same numbers.
    x = x.float().double()
    y = torch.randint(0, used, (N, H, W), generator=g)
    drop = torch.rand(N, H, W, generator=g) < ignored
    y[drop] = IGN
    return x, y


def ce_pixels(x, y):
    return F.cross_entropy(x, y, reduction="none", ignore_index=IGN)


def argmax_stats(x, y):
    pred = x.argmax(1)
    valid = y != IGN
    t, p = y[valid], pred[valid]
    count = torch.bincount(t, minlength=C).double()
    tp = torch.bincount(t[p == t], minlength=C).double()
    predc = torch.bincount(p, minlength=C).double()
    return count, tp, predc, valid


def recall_ce(x, y):
    count, tp, _, valid = argmax_stats(x, y)
    w = torch.where(count > 0, 1 - tp / count.clamp(min=1), torch.zeros_like(count))
    ce = ce_pixels(x, y)
    wy = torch.zeros_like(ce)
    wy[valid] = w[y[valid]]
    return (wy * ce).sum() / valid.sum()


def recall_ce_paper_code(x, y):
    """The paper's RecallCrossEntropy module (ptsemseg/loss/recall_loss.py) re-expressed on CPU:
    counters start at 1, weight = fn / gt, loss = (weight[target] * CE).mean(). Only valid
    without ignored pixels (weight[255] would be out of range)."""
    pred = x.argmax(1)
    idex = (pred != y).view(-1)
    gt_counter = torch.ones(C, dtype=torch.float64)
    gt_idx, gt_count = torch.unique(y, return_counts=True)
    gt_counter[gt_idx] = gt_count.double()
    fn_counter = torch.ones(C, dtype=torch.float64)
    fn_idx, fn_count = torch.unique(y.view(-1)[idex], return_counts=True)
    fn_counter[fn_idx] = fn_count.double()
    weight = fn_counter / gt_counter
    ce = F.cross_entropy(x, y, reduction="none", ignore_index=IGN)
    return (weight[y] * ce).mean()


def precision_ce(x, y):
    count, tp, predc, valid = argmax_stats(x, y)
    w = torch.where(predc > 0, (predc - tp) / predc.clamp(min=1), torch.ones_like(predc))
    ce = ce_pixels(x, y)
    wy = torch.zeros_like(ce)
    wy[valid] = w[y[valid]]
    return (wy * ce).sum() / valid.sum()


def focal(gamma):
    def f(x, y):
        valid = y != IGN
        logp = F.log_softmax(x, 1)
        yy = y.clone()
        yy[~valid] = 0
        logpt = logp.gather(1, yy.unsqueeze(1)).squeeze(1)[valid]
        pt = logpt.exp()
        return (-(1 - pt) ** gamma * logpt).sum() / valid.sum()

    return f


def ohem_ratio(r):
    def f(x, y):
        ce = ce_pixels(x, y)[y != IGN]
        k = math.ceil(r * ce.numel())
        return ce.topk(k).values.mean()

    return f


def ohem_threshold(t):
    def f(x, y):
        ce = ce_pixels(x, y)[y != IGN]
        keep = ce > -math.log(t)
        return ce[keep].mean()

    return f


def weighted(w):
    wt = torch.tensor(w, dtype=torch.float64)
    return lambda x, y: F.cross_entropy(x, y, weight=wt, ignore_index=IGN)


def soft_iou(x, y):
    valid = (y != IGN).unsqueeze(1).double()
    p = F.softmax(x, 1) * valid
    yy = y.clone()
    yy[y == IGN] = 0
    t = F.one_hot(yy, C).permute(0, 3, 1, 2).double() * valid
    inter = (p * t).sum((2, 3))
    union = (p + t - p * t).sum((2, 3))
    return 1 - (inter / (union + 1e-16)).mean()


def lovasz_all(x, y):
    probas = F.softmax(x, 1)
    return smp_lovasz._lovasz_softmax(probas, y, classes="all", per_image=False, ignore=IGN)


def grad_of(fn, x, y, f32=False):
    xv = (x.float() if f32 else x.clone()).requires_grad_()
    loss = fn(xv, y)
    loss.backward()
    return float(loss.detach()), xv.grad.double().flatten().tolist()


# Class-weight helpers, as the paper's train.py computes them (numpy).
def median_frequency(counts):
    c = np.array(counts, dtype=np.float64)
    with np.errstate(divide="ignore"):
        w = np.median(c) / c
    w[w == np.inf] = 0.0
    return w.tolist()


def inverse_frequency(counts):
    c = np.array(counts, dtype=np.float64)
    with np.errstate(divide="ignore"):
        w = c.sum() / (len(c) * c)
    w[w == np.inf] = 0.0
    return w.tolist()


def class_balanced(counts, beta=None):
    c = np.array(counts, dtype=np.float64)
    if beta is None:
        beta = (np.sum(c) - 1) / np.sum(c)
    eff = 1.0 - np.power(beta, c)
    eff[eff == 0] = 1
    w = (1.0 - beta) / eff
    return (w / np.sum(w) * len(c)).tolist()


COUNTS = [100, 10, 40, 0]
COUNTS_BAL = [100, 10, 40, 3]
STATIC = [0.5, 2.0, 1.0, 3.0]

cases = []


def add(name, fn, seed, params=None, ignored=0.2, used=3, f32=False):
    x, y = make_inputs(seed, ignored=ignored, used=used)
    value, grad = grad_of(fn, x, y, f32)
    cases.append(
        {
            "name": name,
            "params": params or {},
            "dims": [N, C, H, W],
            "logits": x.flatten().tolist(),
            "target": y.flatten().tolist(),
            "value": value,
            "grad": grad,
            "reference_dtype": "float32" if f32 else "float64",
        }
    )


for seed in (101, 102):
    add("cross_entropy", lambda x, y: F.cross_entropy(x, y, ignore_index=IGN), seed)
    add("cross_entropy_weighted", weighted(STATIC), seed, {"class_weights": STATIC})
    add("weighted_ce_median", weighted(median_frequency(COUNTS)), seed, {"counts": COUNTS})
    add("weighted_ce_inverse", weighted(inverse_frequency(COUNTS)), seed, {"counts": COUNTS})
    add("balanced_ce", weighted(class_balanced(COUNTS_BAL)), seed, {"counts": COUNTS_BAL})
    add("recall_ce", recall_ce, seed)
    add("precision_ce", precision_ce, seed)
    add("focal_g1", focal(1.0), seed, {"gamma": 1.0})
    add("focal_g2", focal(2.0), seed, {"gamma": 2.0})
    add("ohem_ratio", ohem_ratio(0.7), seed, {"keep_ratio": 0.7})
    add("ohem_threshold", ohem_threshold(0.5), seed, {"threshold": 0.5})
    add("soft_iou", soft_iou, seed)
    add("dice", smp.losses.DiceLoss("multiclass", ignore_index=IGN), seed)
    add(
        "tversky",
        smp.losses.TverskyLoss("multiclass", ignore_index=IGN, alpha=0.3, beta=0.7),
        seed,
        {"alpha": 0.3, "beta": 0.7},
    )
    # smp's Lovasz gradient helper works in float32 only.
    add(
        "lovasz",
        smp.losses.LovaszLoss("multiclass", ignore_index=IGN),
        seed,
        {"present_only": True},
        f32=True,
    )
    add("lovasz_all", lovasz_all, seed, {"present_only": False}, f32=True)

# The paper's own RecallCrossEntropy semantics agree with ours when no pixel is ignored and every
# class has a false negative (then its counters' initial 1s are overwritten).
for seed in range(200, 400):
    x, y = make_inputs(seed, ignored=0.0, used=C)
    count, tp, _, _ = argmax_stats(x, y)
    if bool(((count - tp) > 0).all()):
        value, grad = grad_of(recall_ce_paper_code, x, y)
        cases.append(
            {
                "name": "recall_ce_paper_code",
                "params": {},
                "dims": [N, C, H, W],
                "logits": x.flatten().tolist(),
                "target": y.flatten().tolist(),
                "value": value,
                "grad": grad,
                "reference_dtype": "float64",
            }
        )
        break
else:
    raise SystemExit("no batch with a false negative in every class")

weights = {
    "counts": COUNTS,
    "median_frequency": median_frequency(COUNTS),
    "inverse_frequency": inverse_frequency(COUNTS),
    "counts_balanced": COUNTS_BAL,
    "class_balanced": class_balanced(COUNTS_BAL),
    "class_balanced_beta_0.9": class_balanced(COUNTS_BAL, 0.9),
}

out = {
    "generator": "make_goldens.py",
    "torch": torch.__version__,
    "smp": smp.__version__,
    "cases": cases,
    "class_weights": weights,
}
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "goldens.json")
with open(path, "w") as f:
    json.dump(out, f, indent=None, separators=(",", ":"))
print(f"wrote {len(cases)} cases to {path}")
