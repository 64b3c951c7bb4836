"""The PyTorch side of `cargo xtask parity`: segmentation_models_pytorch's DeepLabV3Plus-ResNet-18
trained from scratch on the split that `cargo xtask parity` wrote, with the same budget as the
recallseg side (size, batch, optimiser, steps, flips), then evaluated on the test split.

It prints nothing a script needs; it writes one JSON file (`--out`) holding the confusion matrix of
the test split (rows: ground truth, columns: prediction), the training losses (means over 50-step windows, as recallseg logs them) and the wall time.
The metrics are computed from that matrix by recallseg-metrics, so both sides are scored by the
same code.

Data pipeline (what a typical PyTorch user writes):
* images: PIL `resize(BILINEAR)`, which low-pass filters when it downscales (`--image-resize
  two_tap` instead uses `F.interpolate(bilinear, antialias=False)`, recallseg's resize);
* labels: PIL `resize(NEAREST)`, which samples pixel centres (`--label-resize floor` instead takes
  source index floor(x * scale), recallseg's convention);
* ImageNet mean/std normalisation, a horizontal flip with probability 0.5 per image;
* every epoch a fresh permutation of the training set, the last incomplete batch dropped.

Recall loss is Eq. 5 of the paper (the recallseg default): weights 1 - recall of each class on the
batch (0 for a class absent from the batch), the weighted CE summed and divided by the number of
labelled pixels.

    .venv-peer/bin/python xtask/peer/parity_smp.py --split results/parity/peer/split.json \
        --seed 0 --loss cross_entropy --out results/parity/peer/cross_entropy-seed0.json
"""

import argparse
import json
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import segmentation_models_pytorch as smp

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def load_split(items, width, height, image_resize, label_resize):
    xs, ys = [], []
    for it in items:
        img = Image.open(it["image"]).convert("RGB")
        lab = Image.open(it["label"])
        if lab.mode != "L":
            raise SystemExit(f"{it['label']}: expected an 8-bit greyscale label map, got {lab.mode}")
        if image_resize == "pil":
            x = torch.from_numpy(np.asarray(img.resize((width, height), Image.BILINEAR)).copy())
            x = x.permute(2, 0, 1).float()
        else:
            x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float()[None]
            x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False,
                              antialias=False)[0].round().clamp(0, 255)
        if label_resize == "pil":
            y = torch.from_numpy(np.asarray(lab.resize((width, height), Image.NEAREST)).copy())
        else:
            src = np.asarray(lab)
            sh, sw = src.shape
            iy = np.minimum(np.floor(np.arange(height) * (sh / height)).astype(np.int64), sh - 1)
            ix = np.minimum(np.floor(np.arange(width) * (sw / width)).astype(np.int64), sw - 1)
            y = torch.from_numpy(src[iy][:, ix].copy())
        xs.append(x.to(torch.uint8))
        ys.append(y.long())
    return torch.stack(xs), torch.stack(ys)


def normalize(x_uint8):
    return (x_uint8.float() / 255.0 - MEAN) / STD


def recall_ce(logits, y, n_classes, ignore_index):
    valid = y != ignore_index
    pred = logits.argmax(1)
    yv = y[valid]
    count = torch.bincount(yv, minlength=n_classes).double()
    tp = torch.bincount(yv[pred[valid] == yv], minlength=n_classes).double()
    w = torch.where(count > 0, 1 - tp / count.clamp(min=1), torch.zeros_like(count)).float()
    ce = F.cross_entropy(logits, y, reduction="none", ignore_index=ignore_index)
    wy = torch.zeros_like(ce)
    wy[valid] = w[y[valid]]
    return (wy * ce).sum() / valid.sum().clamp(min=1)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", required=True, help="split.json written by cargo xtask parity")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--loss", choices=["cross_entropy", "recall_ce"], default="cross_entropy")
    p.add_argument("--iters", type=int, default=1500)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--image-resize", choices=["pil", "two_tap"], default="pil")
    p.add_argument("--label-resize", choices=["pil", "floor"], default="pil")
    p.add_argument("--out", required=True)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)

    split = json.load(open(a.split))
    w, h, k, ign = split["width"], split["height"], split["n_classes"], split["ignore_index"]
    x_train, y_train = load_split(split["train"], w, h, a.image_resize, a.label_resize)
    x_test, y_test = load_split(split["test"], w, h, a.image_resize, a.label_resize)

    model = smp.DeepLabV3Plus("resnet18", encoder_weights=None, classes=k)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    n = x_train.shape[0]
    per_epoch = n // a.batch
    losses = []
    window = []
    t0 = time.perf_counter()
    model.train()
    perm = None
    for step in range(a.iters):
        if step % per_epoch == 0:
            perm = torch.randperm(n)
        idx = perm[(step % per_epoch) * a.batch:(step % per_epoch + 1) * a.batch]
        x = x_train[idx].clone()
        y = y_train[idx].clone()
        flip = torch.rand(len(idx)) < 0.5
        x[flip] = x[flip].flip(-1)
        y[flip] = y[flip].flip(-1)
        logits = model(normalize(x))
        if a.loss == "recall_ce":
            loss = recall_ce(logits, y, k, ign)
        else:
            loss = F.cross_entropy(logits, y, ignore_index=ign)
        opt.zero_grad()
        loss.backward()
        opt.step()
        window.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == a.iters:
            # Like recallseg's log: the mean loss since the previous record.
            losses.append([step + 1, sum(window) / len(window)])
            window = []
    train_seconds = time.perf_counter() - t0

    model.eval()
    conf = torch.zeros(k * k, dtype=torch.int64)
    with torch.no_grad():
        for i in range(0, x_test.shape[0], 8):
            pred = model(normalize(x_test[i:i + 8])).argmax(1)
            gt = y_test[i:i + 8]
            valid = gt != ign
            conf += torch.bincount(gt[valid] * k + pred[valid], minlength=k * k)
    json.dump({
        "loss": a.loss, "seed": a.seed, "iters": a.iters, "batch": a.batch, "lr": a.lr,
        "image_resize": a.image_resize, "label_resize": a.label_resize,
        "torch": torch.__version__, "smp": smp.__version__,
        "train_seconds": train_seconds, "losses": losses,
        "n_classes": k, "confusion": conf.tolist(),
    }, open(a.out, "w"))


if __name__ == "__main__":
    main()
