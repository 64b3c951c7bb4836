"""Writes averaging_golden.json: F-beta and the averaging modes of recallseg-metrics.

Reads the label maps of metrics_golden.json (made by make_golden.py; the Rust tests load the same
data) and computes, for recall, precision, IoU, Dice and F-beta (beta = 0.5, 1, 2), every
averaging mode (`macro`, `micro`, `weighted`, `none`) with every rule for undefined per-class
scores (`skip` = left out like numpy.nanmean, or filled with 0 or 1 like torchmetrics'
`zero_division`):

* `value`: numpy in float64, written from the definitions in docs/metrics.md (the Rust tests
  compare within 1e-12 relative);
* `torchmetrics`: torchmetrics 1.x's multiclass_{recall,precision,jaccard_index,f1_score,
  fbeta_score} with the same `average` and `zero_division` (float32; the Rust tests compare
  within 2e-6 absolute). `null` for `skip`, which torchmetrics does not offer;
* `sklearn` (micro, weighted, none only): precision_recall_fscore_support / jaccard_score with
  labels=range(n). sklearn's `macro` averages over every listed label, also the ones absent from
  both maps, so it is neither ours nor torchmetrics' and is not used.

The numpy values are asserted equal to torchmetrics (float32 tolerance) and sklearn before the
file is written. Run from the repository root:
    .venv-peer/bin/python crates/metrics/tests/golden/make_golden_averaging.py
"""
import json
import math
import os

import numpy as np
import sklearn
import torch
import torchmetrics
from sklearn.metrics import jaccard_score, precision_recall_fscore_support
from torchmetrics.functional.classification import (
    multiclass_f1_score,
    multiclass_fbeta_score,
    multiclass_jaccard_index,
    multiclass_precision,
    multiclass_recall,
)

HERE = os.path.dirname(os.path.abspath(__file__))
SCORES = ["recall", "precision", "iou", "dice", "fbeta"]
BETAS = [0.5, 1.0, 2.0]
AVERAGES = ["macro", "micro", "weighted", "none"]
ZERO_DIVISIONS = ["skip", 0.0, 1.0]


def fast_hist(gt, pred, n, ignore):
    keep = (gt != (ignore if ignore is not None else -1)) & (pred != (ignore if ignore is not None else -1))
    gt, pred = gt[keep], pred[keep]
    return np.bincount(n * gt + pred, minlength=n * n).reshape(n, n).astype(np.float64)


def fraction(score, hist, beta):
    tp = np.diag(hist)
    gt = hist.sum(axis=1)
    pred = hist.sum(axis=0)
    if score == "recall":
        return tp, gt
    if score == "precision":
        return tp, pred
    if score == "iou":
        return tp, gt + pred - tp
    if score == "dice":
        return 2 * tp, gt + pred
    b2 = beta * beta
    return (1 + b2) * tp, (1 + b2) * tp + b2 * (gt - tp) + (pred - tp)


def reference(score, hist, beta, average, zd):
    """The definitions of docs/metrics.md, in float64."""
    num, den = fraction(score, hist, beta)
    gt = hist.sum(axis=1)
    present = (gt + hist.sum(axis=0)) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        per = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    if zd != "skip":
        per = np.where(np.isnan(per), zd, per)
    if average == "none":
        return [None if math.isnan(v) else float(v) for v in per]
    if average == "micro":
        if den.sum() > 0:
            return float(num.sum() / den.sum())
        return None if zd == "skip" else float(zd)
    if average == "macro":
        v = per[present]
        v = v[~np.isnan(v)]
        return float(v.mean()) if len(v) else None
    # weighted by ground-truth pixels
    ok = (gt > 0) & ~np.isnan(per)
    return float((gt[ok] * per[ok]).sum() / gt[ok].sum()) if gt[ok].sum() > 0 else None


def torchmetrics_value(score, pred, gt, n, ignore, beta, average, zd):
    p = torch.from_numpy(pred.astype(np.int64))
    t = torch.from_numpy(gt.astype(np.int64))
    kw = dict(num_classes=n, average=average, ignore_index=ignore, zero_division=zd)
    if score == "recall":
        r = multiclass_recall(p, t, **kw)
    elif score == "precision":
        r = multiclass_precision(p, t, **kw)
    elif score == "iou":
        r = multiclass_jaccard_index(p, t, **kw)
    elif score == "dice":
        r = multiclass_f1_score(p, t, **kw)
    else:
        r = multiclass_fbeta_score(p, t, beta=beta, **kw)
    r = r.double().numpy()
    return r.tolist() if average == "none" else float(r)


def sklearn_value(score, pred, gt, n, ignore, beta, average, zd):
    keep = gt != (ignore if ignore is not None else -1)
    y, yp = gt[keep], pred[keep]
    labels = list(range(n))
    avg = None if average == "none" else average
    if score == "iou":
        r = jaccard_score(y, yp, labels=labels, average=avg, zero_division=zd)
    else:
        b = {"dice": 1.0, "fbeta": beta}.get(score, 1.0)
        p, rc, f, _ = precision_recall_fscore_support(
            y, yp, labels=labels, average=avg, beta=b, zero_division=zd
        )
        r = {"recall": rc, "precision": p}.get(score, f)
    return np.asarray(r, dtype=np.float64).tolist() if average == "none" else float(r)


def close(a, b, tol):
    if isinstance(a, list):
        return len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b))
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= tol


def main():
    with open(os.path.join(HERE, "metrics_golden.json")) as f:
        cases = json.load(f)["cases"]
    out_cases = []
    for case in cases:
        n, ignore = case["n_classes"], case["ignore_index"]
        gt = np.array(case["gt"], dtype=np.int64)
        pred = np.array(case["pred"], dtype=np.int64)
        # Our matrix skips a prediction equal to an in-range ignore index; torchmetrics counts
        # it. The golden data has none with a valid ground truth, so both count the same pixels.
        if ignore is not None and ignore < n:
            assert not ((pred == ignore) & (gt != ignore)).any()
        hist = fast_hist(gt, pred, n, ignore)
        entries = []
        for score in SCORES:
            for beta in BETAS if score == "fbeta" else [1.0]:
                for average in AVERAGES:
                    for zd in ZERO_DIVISIONS:
                        value = reference(score, hist, beta, average, zd)
                        tm = skl = None
                        if zd != "skip":
                            tm = torchmetrics_value(score, pred, gt, n, ignore, beta, average, zd)
                            assert close(value, tm, 2e-6), (case["name"], score, beta, average, zd, value, tm)
                            if average != "macro":
                                skl = sklearn_value(score, pred, gt, n, ignore, beta, average, zd)
                                assert close(value, skl, 1e-12), (case["name"], score, average, zd, value, skl)
                        entries.append({
                            "score": score,
                            "beta": beta,
                            "average": average,
                            "zero_division": zd,
                            "value": value,
                            "torchmetrics": tm,
                            "sklearn": skl,
                        })
        out_cases.append({"name": case["name"], "entries": entries})
    out = os.path.join(HERE, "averaging_golden.json")
    with open(out, "w") as f:
        json.dump({
            "generator": "make_golden_averaging.py (numpy float64 definitions; torchmetrics and sklearn cross-checks)",
            "data": "metrics_golden.json",
            "numpy": np.__version__,
            "torch": torch.__version__,
            "torchmetrics": torchmetrics.__version__,
            "sklearn": sklearn.__version__,
            "cases": out_cases,
        }, f)
        f.write("\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
