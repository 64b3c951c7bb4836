"""Writes confusion_golden.json: the normalised confusion matrices of recallseg-metrics.

Reads the label maps of metrics_golden.json (made by make_golden.py; the Rust tests load the same
data) and writes, per case and per `normalize` in ("true", "pred", "all"), the non-zero cells of
sklearn's `confusion_matrix(y_true, y_pred, labels=range(n), normalize=...)` in float64 (ignored
pixels removed first), after asserting that torchmetrics 1.x's `multiclass_confusion_matrix(...,
normalize=..., ignore_index=...)` agrees (float32, 1e-6). The Rust tests compare within 1e-15
and check that every other cell is 0 (empty rows / columns give zeros in both libraries).

Run from the repository root:
    .venv-peer/bin/python crates/metrics/tests/golden/make_golden_confusion.py
"""
import json
import os

import numpy as np
import sklearn
import torch
import torchmetrics
from sklearn.metrics import confusion_matrix
from torchmetrics.functional.classification import multiclass_confusion_matrix

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    with open(os.path.join(HERE, "metrics_golden.json")) as f:
        cases = json.load(f)["cases"]
    out = []
    for case in cases:
        n, ignore = case["n_classes"], case["ignore_index"]
        gt = np.array(case["gt"], dtype=np.int64)
        pred = np.array(case["pred"], dtype=np.int64)
        if ignore is not None and ignore < n:
            # Our matrix also skips predictions equal to an in-range ignore index; the data has
            # none with a valid ground truth, so both count the same pixels.
            assert not ((pred == ignore) & (gt != ignore)).any()
        keep = gt != (ignore if ignore is not None else -1)
        entry = {"name": case["name"], "normalized": {}}
        for norm in ["true", "pred", "all"]:
            sk = confusion_matrix(gt[keep], pred[keep], labels=list(range(n)), normalize=norm)
            tm = multiclass_confusion_matrix(
                torch.from_numpy(pred), torch.from_numpy(gt), n, ignore_index=ignore, normalize=norm
            ).double().numpy()
            assert np.allclose(sk, tm, rtol=0, atol=1e-6), (case["name"], norm)
            entry["normalized"][norm] = [[int(g), int(p), float(sk[g, p])] for g, p in zip(*np.nonzero(sk))]
        out.append(entry)
    path = os.path.join(HERE, "confusion_golden.json")
    with open(path, "w") as f:
        json.dump({
            "generator": "make_golden_confusion.py (sklearn confusion_matrix(normalize=...), torchmetrics cross-check)",
            "data": "metrics_golden.json",
            "numpy": np.__version__,
            "sklearn": sklearn.__version__,
            "torch": torch.__version__,
            "torchmetrics": torchmetrics.__version__,
            "cases": out,
        }, f)
        f.write("\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
