"""Writes metrics_golden.json: reference confusion matrices and scores for recallseg-metrics.

The reference is the numpy evaluation code used by the paper's repository and most segmentation
code bases (`fast_hist` via `np.bincount`, scores with `np.nanmean`), cross-checked against
torchmetrics' `multiclass_confusion_matrix`. The Rust tests only read the JSON.

Run from the repository root:
    .venv-peer/bin/python crates/metrics/tests/golden/make_golden.py
"""
import json
import math
import os

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_confusion_matrix


def fast_hist(gt, pred, n):
    mask = (gt >= 0) & (gt < n)
    return np.bincount(n * gt[mask].astype(np.int64) + pred[mask], minlength=n * n).reshape(n, n)


def nan_to_none(a):
    return [None if math.isnan(x) else float(x) for x in np.asarray(a, dtype=np.float64)]


def scalar(x):
    x = float(x)
    return None if math.isnan(x) else x


def scores(hist, subset):
    with np.errstate(divide="ignore", invalid="ignore"):
        diag = np.diag(hist).astype(np.float64)
        gt = hist.sum(axis=1).astype(np.float64)
        pred = hist.sum(axis=0).astype(np.float64)
        recall = diag / gt
        precision = diag / pred
        iou = diag / (gt + pred - diag)
        dice = 2 * diag / (gt + pred)
        freq = gt / hist.sum()
        fwiou = (freq[freq > 0] * iou[freq > 0]).sum() if hist.sum() > 0 else float("nan")
        sub = np.array(subset)
        return {
            # Non-zero cells as [ground truth, prediction, count].
            "confusion_nonzero": [[int(g), int(p), int(hist[g, p])] for g, p in zip(*np.nonzero(hist))],
            "recall": nan_to_none(recall),
            "precision": nan_to_none(precision),
            "iou": nan_to_none(iou),
            "dice": nan_to_none(dice),
            "pixel_accuracy": scalar(diag.sum() / hist.sum()),
            "mean_accuracy": scalar(np.nanmean(recall)),
            "mean_precision": scalar(np.nanmean(precision)),
            "mean_iou": scalar(np.nanmean(iou)),
            "mean_dice": scalar(np.nanmean(dice)),
            "frequency_weighted_iou": scalar(fwiou),
            "subset": subset,
            "subset_mean_accuracy": scalar(np.nanmean(recall[sub])),
            "subset_mean_precision": scalar(np.nanmean(precision[sub])),
            "subset_mean_iou": scalar(np.nanmean(iou[sub])),
            "subset_mean_dice": scalar(np.nanmean(dice[sub])),
        }


def case(name, n, ignore, dtype, gt, pred, subset):
    hist = fast_hist(np.where(gt == (ignore if ignore is not None else -1), -1, gt), pred, n)
    # Independent cross-check of the counts.
    tm = multiclass_confusion_matrix(
        torch.from_numpy(pred.astype(np.int64)),
        torch.from_numpy(gt.astype(np.int64)),
        n,
        ignore_index=ignore,
    ).numpy()
    assert (tm == hist).all(), name
    return {
        "name": name,
        "n_classes": n,
        "ignore_index": ignore,
        "dtype": dtype,
        "gt": gt.astype(np.int64).tolist(),
        "pred": pred.astype(np.int64).tolist(),
        "expected": scores(hist, subset),
    }


def main():
    rng = np.random.default_rng(20220502)
    cases = []

    # Imbalanced u8 labels, 10% void (255); class 4 absent from both maps, class 5 only predicted.
    n, N = 6, 3000
    gt = rng.choice([0, 1, 2, 3], size=N, p=[0.6, 0.3, 0.07, 0.03]).astype(np.uint8)
    noisy = rng.random(N) < 0.25
    pred = np.where(noisy, rng.choice([0, 1, 2, 3, 5], size=N), gt).astype(np.uint8)
    gt[rng.random(N) < 0.1] = 255
    cases.append(case("imbalanced_u8", n, 255, "u8", gt, pred, [2, 3, 4, 5]))

    # u16 labels, 300 classes, no ignore index: most classes absent, some only in one map.
    n, N = 300, 5000
    gt = rng.integers(0, 120, size=N).astype(np.uint16)
    pred = np.where(rng.random(N) < 0.5, gt, rng.integers(60, 300, size=N)).astype(np.uint16)
    cases.append(case("many_classes_u16", n, None, "u16", gt, pred, [0, 100, 150, 299]))

    # u32 labels, ignore index inside the class range (class 0 is void), 8 classes.
    n, N = 8, 2000
    gt = rng.integers(0, 8, size=N).astype(np.uint32)
    pred = np.where(rng.random(N) < 0.7, gt, rng.integers(1, 8, size=N)).astype(np.uint32)
    cases.append(case("ignore_in_range_u32", n, 0, "u32", gt, pred, [1, 2]))

    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "metrics_golden.json")
    with open(out, "w") as f:
        json.dump({"generator": "make_golden.py (numpy fast_hist + nanmean, torchmetrics cross-check)",
                   "numpy": np.__version__, "torch": torch.__version__, "cases": cases}, f)
        f.write("\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
