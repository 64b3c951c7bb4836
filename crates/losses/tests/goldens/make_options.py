"""Reference values and gradients for the loss options of issue 17 (tests/options.rs).

Each case is a loss written as a TOML config (the Rust test builds it with `LossConfig`), its
inputs, and the value and gradient of an independent PyTorch (float64) implementation:

* segmentation_models_pytorch 0.6 where it defines the option: `SoftCrossEntropyLoss`
  (`smooth_factor`), `DiceLoss` / `TverskyLoss` / `JaccardLoss` (`smooth`, `log_loss`,
  `classes`), `LovaszLoss` (`per_image`);
* `F.cross_entropy(label_smoothing=...)` for smoothing with ignored pixels (smp's mean counts
  ignored pixels, see docs/losses.md);
* mmsegmentation is not installed: its `OHEMPixelSampler.sample` and the mean of its
  `CrossEntropyLoss` (`avg_non_ignore` False / True) are re-implemented below from its source
  (mmseg/models/segmentors/... decode_head.loss_by_feat -> sampler.sample -> cross_entropy ->
  weight_reduce_loss), line for line;
* the softmax focal loss with per-class alpha (Lin et al.'s alpha_t per class, mmseg's list
  semantics for the true class's term), Recall loss per image and the paper repository's
  `ptsemseg/loss/loss.py` RecallCrossEntropy (re-expressed on CPU, `.cuda()` dropped; the inputs
  keep class 0 present with false negatives so that the file's ignore-label remapping is
  harmless) are written in torch ops from their formulas;
* combined losses are the weighted sums of the above.

Run from the repo root: .venv-peer/bin/python crates/losses/tests/goldens/make_options.py
Writes options.json next to this file.
"""
import json
import os

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import lovasz as smp_lovasz

IGN = 255
N, C, H, W = 2, 4, 3, 5
COUNTS = [500, 120, 60, 9]


def make_inputs(seed, ignored=0.2, used=4, scale=3.0, blank_image=False):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(N, C, H, W, generator=g, dtype=torch.float64) * 2 - 1) * scale
    x = x.float().double()  # the f32 path sees the very same numbers
    y = torch.randint(0, used, (N, H, W), generator=g)
    drop = torch.rand(N, H, W, generator=g) < ignored
    y[drop] = IGN
    if blank_image:
        y[1] = IGN
    return x, y


def ce_pixels(x, y):
    return F.cross_entropy(x, y, reduction="none", ignore_index=IGN)


def median_frequency(counts):
    """w_c = median_k(N_k) / N_c (numpy's median over all classes, as make_goldens.py), in
    float64: the crate keeps class weights in f64 (an f32 loss rounds them itself)."""
    c = np.array(counts, dtype=np.float64)
    return (np.median(c) / c).tolist()


def inverse_frequency(counts):
    """w_c = N / (C N_c) in float64."""
    c = np.array(counts, dtype=np.float64)
    return (c.sum() / (len(counts) * c)).tolist()


def class_balanced(counts, beta):
    """Cui et al.'s (1 - beta) / (1 - beta^N_c), normalised to sum to C, in float64."""
    c = np.array(counts, dtype=np.float64)
    raw = (1 - beta) / (1 - np.power(beta, c))
    return (raw / raw.sum() * len(counts)).tolist()


# ---- focal with per-class alpha ------------------------------------------------------------
def focal_alpha(gamma, alpha, s=None):
    alpha = torch.tensor(alpha, dtype=torch.float64)
    def f(x, y):
        valid = y != IGN
        ce = ce_pixels(x, y)
        pt = torch.exp(-ce)
        yy = y.clone(); yy[~valid] = 0
        sw = torch.ones(C, dtype=torch.float64) if s is None else torch.tensor(s, dtype=torch.float64)
        a = (alpha * sw)[yy] * valid
        z = (sw[yy] * valid).sum()
        return (a * (1 - pt) ** gamma * ce).sum() / z
    return f


# ---- label smoothing -------------------------------------------------------------------------
def smp_soft_ce(eps):
    loss = smp.losses.SoftCrossEntropyLoss(smooth_factor=eps, ignore_index=IGN)
    return lambda x, y: loss(x, y)


def torch_ls_ce(eps):
    return lambda x, y: F.cross_entropy(x, y, ignore_index=IGN, label_smoothing=eps)


def smoothed_pixels(x, y, eps):
    """(1 - eps) * nll + eps / C * sum_k(-log p_k) per pixel (smp's formula), 0 on ignored."""
    logp = F.log_softmax(x, 1)
    valid = y != IGN
    yy = y.clone(); yy[~valid] = 0
    nll = -logp.gather(1, yy.unsqueeze(1)).squeeze(1)
    sm = -logp.sum(1)
    return ((1 - eps) * nll + eps / C * sm) * valid, valid, yy


def weighted_ls(eps, w):
    w = torch.as_tensor(w, dtype=torch.float64)
    def f(x, y):
        l, valid, yy = smoothed_pixels(x, y, eps)
        return (w[yy] * l).sum() / (w[yy] * valid).sum()
    return f


def argmax_stats(x, y):
    pred = x.argmax(1)
    valid = y != IGN
    t, p = y[valid], pred[valid]
    count = torch.bincount(t, minlength=C).double()
    tp = torch.bincount(t[p == t], minlength=C).double()
    return count, tp


def recall_ls(eps):
    def f(x, y):
        count, tp = argmax_stats(x, y)
        w = torch.where(count > 0, 1 - tp / count.clamp(min=1), torch.zeros_like(count))
        l, valid, yy = smoothed_pixels(x, y, eps)
        return (w[yy] * l).sum() / valid.sum()
    return f


# ---- recall variants -------------------------------------------------------------------------
def recall_per_image(x, y):
    total = torch.zeros((), dtype=torch.float64)
    ce = ce_pixels(x, y)
    for i in range(N):
        count, tp = argmax_stats(x[i:i + 1], y[i:i + 1])
        w = torch.where(count > 0, 1 - tp / count.clamp(min=1), torch.zeros_like(count))
        valid = y[i] != IGN
        yy = y[i].clone(); yy[~valid] = 0
        total = total + (w[yy] * ce[i] * valid).sum()
    return total / (y != IGN).sum()


def paper_loss_py(weight=None):
    """ptsemseg/loss/loss.py RecallCrossEntropy on CPU (the `.cuda()` calls dropped)."""
    def f(input, target):
        n, c, h, w = input.size()
        pred = input.argmax(1)
        idex = (pred != target).view(-1)
        gt_counter = torch.ones((c), dtype=torch.float64)
        gt_idx, gt_count = torch.unique(target, return_counts=True)
        gt_count[gt_idx == 255] = gt_count[0]
        gt_idx[gt_idx == 255] = 0
        gt_counter[gt_idx] = gt_count.double()
        fn_counter = torch.ones((c), dtype=torch.float64)
        fn = target.view(-1)[idex]
        fn_idx, fn_count = torch.unique(fn, return_counts=True)
        assert fn_idx[0] == 0, "inputs must give class 0 false negatives (see docstring)"
        fn_count[fn_idx == 255] = fn_count[0]
        fn_idx[fn_idx == 255] = 0
        fn_counter[fn_idx] = fn_count.double()
        if weight is not None:
            wgt = 0.5 * (fn_counter / gt_counter) + 0.5 * torch.tensor(weight, dtype=torch.float64)
        else:
            wgt = fn_counter / gt_counter
        inp = input.transpose(1, 2).transpose(2, 3).contiguous().view(-1, c)
        return F.cross_entropy(inp, target.view(-1), weight=wgt, ignore_index=255)
    return f


# ---- OHEM as mmseg ---------------------------------------------------------------------------
def mmseg_ohem(thresh, min_kept, avg_non_ignore=False, s=None):
    """mmseg OHEMPixelSampler.sample + CrossEntropyLoss(avg_non_ignore) with seg_weight."""
    def f(seg_logit, seg_label):
        with torch.no_grad():
            batch_kept = min_kept * seg_label.size(0)
            valid_mask = seg_label != IGN
            seg_weight = seg_logit.new_zeros(size=seg_label.size())
            valid_seg_weight = seg_weight[valid_mask]
            if thresh is not None:
                seg_prob = F.softmax(seg_logit, dim=1)
                tmp = seg_label.clone().unsqueeze(1)
                tmp[tmp == IGN] = 0
                seg_prob = seg_prob.gather(1, tmp).squeeze(1)
                sort_prob, _ = seg_prob[valid_mask].sort()
                if sort_prob.numel() > 0:
                    min_threshold = sort_prob[min(batch_kept, sort_prob.numel() - 1)]
                else:
                    min_threshold = 0.0
                threshold = max(min_threshold, thresh)
                valid_seg_weight[seg_prob[valid_mask] < threshold] = 1.0
            else:
                losses = F.cross_entropy(seg_logit, seg_label, reduction="none", ignore_index=IGN)
                _, sort_indices = losses[valid_mask].sort(descending=True)
                valid_seg_weight[sort_indices[:batch_kept]] = 1.0
            seg_weight[valid_mask] = valid_seg_weight
        cw = None if s is None else torch.tensor(s, dtype=torch.float64)
        loss = F.cross_entropy(seg_logit, seg_label, weight=cw, reduction="none", ignore_index=IGN)
        avg_factor = None
        if avg_non_ignore:
            avg_factor = seg_label.numel() - (seg_label == IGN).sum().item()
        loss = loss * seg_weight
        return loss.mean() if avg_factor is None else loss.sum() / avg_factor
    return f


# ---- region options (smp) --------------------------------------------------------------------
def smp_region(kind, **kw):
    cls = {"dice": smp.losses.DiceLoss, "tversky": smp.losses.TverskyLoss,
           "jaccard": smp.losses.JaccardLoss}[kind]
    loss = cls("multiclass", ignore_index=IGN, **kw)
    return lambda x, y: loss(x, y)


def lovasz_blank(x, y):
    """smp's per-image mean where an image has no valid pixel: smp returns an empty tensor
    there (its `mean` adds `probas * 0` of shape (0, C)); the intended 0 is used instead."""
    per = []
    for i in range(N):
        if (y[i] != IGN).any():
            per.append(smp_lovasz._lovasz_softmax(x[i:i + 1].softmax(1), y[i:i + 1], ignore=IGN))
        else:
            per.append(x.sum() * 0.0)
    return sum(per) / N


def lovasz_ref(per_image, classes="present"):
    def f(x, y):
        return smp_lovasz._lovasz_softmax(x.softmax(1), y, classes=classes, per_image=per_image, ignore=IGN)
    return f


def recall_ce(x, y):
    count, tp = argmax_stats(x, y)
    w = torch.where(count > 0, 1 - tp / count.clamp(min=1), torch.zeros_like(count))
    ce = ce_pixels(x, y)
    valid = y != IGN
    yy = y.clone(); yy[~valid] = 0
    return (w[yy] * ce * valid).sum() / valid.sum()


cases = []


def add(name, config, fn, seed, kernel, ctx=None, terms=None, f32=False, exact=False, **inp):
    """`f32`: the reference runs in float32 (smp's Lovasz gradient helper works in float32
    only); the test's tolerance widens accordingly. `exact`: parameters that float32 cannot
    represent (gamma 0.3, alpha and class weights like 0.1 or 1/3); the f64 loss must match to
    float64 rounding."""
    x, y = make_inputs(seed, **inp)
    xv = (x.float() if f32 else x.clone()).requires_grad_(True)
    loss = fn(xv, y)
    loss.backward()
    case = {
        "name": name,
        "config": config,
        "ctx": ctx or {},
        "kernel": kernel,
        "f32_reference": f32,  # the implementation Kernel::Auto picks for f32 CPU logits
        "exact_f64": exact,
        "dims": [N, C, H, W],
        "logits": x.flatten().tolist(),
        "target": y.flatten().tolist(),
        "loss": loss.item(),
        "grad": xv.grad.flatten().tolist(),
    }
    if terms is not None:
        case["terms"] = [[k, w, t(x.float() if f32 else x, y).item()] for k, w, t in terms]
    cases.append(case)


ALPHA = [0.25, 0.5, 1.0, 0.75]
SW = [1.0, 2.0, 0.5, 1.5]
add("focal_alpha", 'name = "focal"\ngamma = 2.0\nalpha = [0.25, 0.5, 1.0, 0.75]',
    focal_alpha(2.0, ALPHA), 1, "fused")
add("focal_alpha_static", 'name = "focal"\ngamma = 1.0\nalpha = [0.25, 0.5, 1.0, 0.75]',
    focal_alpha(1.0, ALPHA, SW), 2, "fused", ctx={"class_weights": SW})
add("ce_smooth_smp", 'name = "cross_entropy"\nlabel_smoothing = 0.1',
    smp_soft_ce(0.1), 3, "fused", ignored=0.0)
add("ce_smooth_ignored", 'name = "cross_entropy"\nlabel_smoothing = 0.2',
    torch_ls_ce(0.2), 4, "fused")
add("wce_smooth", 'name = "weighted_ce"\nlabel_smoothing = 0.1',
    weighted_ls(0.1, median_frequency(COUNTS)), 5, "fused", ctx={"counts": COUNTS})
add("recall_smooth", 'name = "recall_ce"\nlabel_smoothing = 0.1', recall_ls(0.1), 6, "fused")
add("lovasz_per_image", 'name = "lovasz"\nper_image = true', lovasz_ref(True), 7, "fused", f32=True)
add("lovasz_per_image_blank", 'name = "lovasz"\nper_image = true', lovasz_blank, 8, "fused",
    blank_image=True, f32=True)
add("lovasz_per_image_all", 'name = "lovasz"\nper_image = true\npresent_only = false',
    lovasz_ref(True, "all"), 9, "fused", used=3, f32=True)
add("ohem_mmseg_thresh", 'name = "ohem"\nthreshold = 0.7\nmin_kept = 3',
    mmseg_ohem(0.7, 3), 10, "fused")
add("ohem_mmseg_thresh_minkept", 'name = "ohem"\nthreshold = 0.3\nmin_kept = 9\navg_non_ignore = true',
    mmseg_ohem(0.3, 9, True), 11, "fused")
add("ohem_mmseg_thresh_big", 'name = "ohem"\nthreshold = 0.5\nmin_kept = 100000',
    mmseg_ohem(0.5, 100000), 12, "fused")
add("ohem_mmseg_topk", 'name = "ohem"\nmin_kept = 5', mmseg_ohem(None, 5), 13, "fused")
add("ohem_mmseg_static", 'name = "ohem"\nthreshold = 0.6\nmin_kept = 4\navg_non_ignore = true',
    mmseg_ohem(0.6, 4, True, SW), 14, "fused", ctx={"class_weights": SW})
add("dice_smooth_log_classes", 'name = "dice"\nsmooth = 1.0\nlog_loss = true\nclasses = [0, 2]',
    smp_region("dice", smooth=1.0, log_loss=True, classes=[0, 2]), 15, "fused")
add("dice_smooth", 'name = "dice"\nsmooth = 0.5', smp_region("dice", smooth=0.5), 16, "fused", used=3)
add("tversky_options", 'name = "tversky"\nalpha = 0.3\nbeta = 0.7\nsmooth = 1.0\nlog_loss = true',
    smp_region("tversky", alpha=0.3, beta=0.7, smooth=1.0, log_loss=True), 17, "fused")
add("tversky_classes", 'name = "tversky"\nclasses = [3, 1]',
    smp_region("tversky", alpha=0.3, beta=0.7, classes=[3, 1]), 18, "fused")
add("jaccard", 'name = "jaccard"', smp_region("jaccard"), 19, "fused", used=3)
add("jaccard_options", 'name = "jaccard"\nsmooth = 1.0\nlog_loss = true\nclasses = [0, 1, 3]',
    smp_region("jaccard", smooth=1.0, log_loss=True, classes=[0, 1, 3]), 20, "fused")
add("recall_per_image", 'name = "recall_ce"\nvariant = "per_image"', recall_per_image, 21,
    "portable")
add("recall_paper_loss_py", 'name = "recall_ce"\nvariant = "paper_loss_py"', paper_loss_py(),
    22, "fused")
add("recall_paper_loss_py_blend", 'name = "recall_ce"\nvariant = "paper_loss_py_blend"',
    paper_loss_py(SW), 23, "fused", ctx={"class_weights": SW})
lov = lovasz_ref(False)
add("combined_recall_lovasz",
    'name = "combined"\n[[terms]]\nweight = 0.5\nname = "recall_ce"\n'
    '[[terms]]\nweight = 0.5\nname = "lovasz"',
    lambda x, y: 0.5 * recall_ce(x, y) + 0.5 * lov(x, y), 24, None,
    terms=[("recall_ce", 0.5, recall_ce), ("lovasz", 0.5, lov)], f32=True)
wce = weighted_ls(0.0, median_frequency(COUNTS))
dice = smp_region("dice")
add("combined_wce_dice",
    'name = "combined"\n[[terms]]\nweight = 1.0\nname = "weighted_ce"\n'
    '[[terms]]\nweight = 2.0\nname = "dice"\n[[terms]]\nweight = 0.25\nname = "dice"\nlog_loss = true',
    lambda x, y: wce(x, y) + 2.0 * dice(x, y) + 0.25 * smp_region("dice", log_loss=True)(x, y),
    25, None, ctx={"counts": COUNTS},
    terms=[("weighted_ce", 1.0, wce), ("dice", 2.0, dice),
           ("dice_2", 0.25, smp_region("dice", log_loss=True))])

# Parameters kept in f64 (issue 26): an f64 loss with them is exact in f64.
ALPHA_X = [0.1, 1 / 3, 0.7, 0.45]
SW_X = [0.1, 0.2, 1 / 3, 0.7]
add("focal_exact_params",
    f'name = "focal"\ngamma = 0.3\nalpha = [{", ".join(repr(a) for a in ALPHA_X)}]',
    focal_alpha(0.3, ALPHA_X, SW_X), 26, "fused", ctx={"class_weights": SW_X}, exact=True)
add("ce_exact_weights", 'name = "cross_entropy"', weighted_ls(0.0, SW_X), 27, "fused",
    ctx={"class_weights": SW_X}, exact=True)
add("wce_exact_inverse", 'name = "weighted_ce"\nmode = "inverse_frequency"',
    weighted_ls(0.0, inverse_frequency(COUNTS)), 28, "fused", ctx={"counts": COUNTS}, exact=True)
add("wce_exact_median", 'name = "weighted_ce"', weighted_ls(0.0, median_frequency(COUNTS)), 29,
    "fused", ctx={"counts": COUNTS}, exact=True)
add("balanced_exact", 'name = "balanced_ce"\nbeta = 0.99',
    weighted_ls(0.0, class_balanced(COUNTS, 0.99)), 30, "fused", ctx={"counts": COUNTS},
    exact=True)

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "options.json")
with open(path, "w") as f:
    json.dump(cases, f, indent=None, separators=(",", ":"))
print(f"wrote {len(cases)} cases to {path}")
