"""Writes per_image_golden.json: per-image IoU of recallseg-metrics against torchmetrics.

Reads the label maps of metrics_golden.json (the Rust tests load the same data) and cuts each
case into images of `pixels_per_image` pixels. torchmetrics' MeanIoU has no ignore index, so
ignored pixels are given an extra class n in both maps (same value: they add nothing to the
classes 0..n-1) and that class's column is dropped. Written:

* `per_image_class`: `mean_iou(preds, target, num_classes=n+1, per_class=True,
  input_format="index")` (per image, per class; null where torchmetrics returns -1);
* `per_image`: each image's mean IoU, the nanmean of its row (= `mean_iou(per_class=False)`
  for the data without ignored pixels, asserted);
* `mean_of_images`: their mean; `pooled` and `per_class`: `MeanIoU(per_class=False/True)`'s
  definitions on the rows (asserted equal to the MeanIoU class itself where there is no ignore
  index).

Float32 in torchmetrics: the Rust tests compare within 1e-6. Run from the repository root:
    .venv-peer/bin/python crates/metrics/tests/golden/make_golden_per_image.py
"""
import json
import os

import numpy as np
import torch
import torchmetrics
from torchmetrics.functional.segmentation import mean_iou
from torchmetrics.segmentation import MeanIoU

HERE = os.path.dirname(os.path.abspath(__file__))
PIXELS = {"imbalanced_u8": 500, "many_classes_u16": 500, "ignore_in_range_u32": 250}


def main():
    with open(os.path.join(HERE, "metrics_golden.json")) as f:
        cases = json.load(f)["cases"]
    out = []
    for case in cases:
        n, ignore = case["n_classes"], case["ignore_index"]
        gt = np.array(case["gt"], dtype=np.int64)
        pred = np.array(case["pred"], dtype=np.int64)
        k = PIXELS[case["name"]]
        if ignore is not None:
            void = (gt == ignore) | (pred == ignore)
            gt = np.where(void, n, gt)
            pred = np.where(void, n, pred)
        t = torch.from_numpy(gt.reshape(-1, 1, k))
        p = torch.from_numpy(pred.reshape(-1, 1, k))
        per = mean_iou(p, t, num_classes=n + 1, per_class=True, input_format="index").double().numpy()[:, :n]
        per = np.where(per < 0, np.nan, per)
        per_image = np.nanmean(per, axis=1)
        valid = ~np.isnan(per)
        pooled = per[valid].sum() / valid.sum()
        with np.errstate(invalid="ignore"):
            per_class = np.nansum(per, axis=0) / valid.sum(axis=0)
        if ignore is None:
            tm = mean_iou(p, t, num_classes=n, per_class=False, input_format="index").double().numpy()
            assert np.allclose(tm, per_image, atol=1e-6)
            m = MeanIoU(num_classes=n, per_class=False, input_format="index")
            m.update(p, t)
            assert abs(float(m.compute()) - pooled) < 1e-6
            m = MeanIoU(num_classes=n, per_class=True, input_format="index")
            m.update(p, t)
            c = m.compute().double().numpy()
            assert np.allclose(np.where(c < 0, np.nan, c), per_class, atol=1e-6, equal_nan=True)
        out.append({
            "name": case["name"],
            "pixels_per_image": k,
            "per_image_class": [[None if np.isnan(v) else float(v) for v in row] for row in per],
            "per_image": [float(v) for v in per_image],
            "mean_of_images": float(per_image.mean()),
            "pooled": float(pooled),
            "per_class": [None if np.isnan(v) else float(v) for v in per_class],
        })
    path = os.path.join(HERE, "per_image_golden.json")
    with open(path, "w") as f:
        json.dump({
            "generator": "make_golden_per_image.py (torchmetrics mean_iou / MeanIoU)",
            "data": "metrics_golden.json",
            "torch": torch.__version__,
            "torchmetrics": torchmetrics.__version__,
            "cases": out,
        }, f)
        f.write("\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
