"""Sanity check of the synthetic Synthia-format dataset: is it learnable by a small CNN in a few
hundred steps, and imbalanced enough that plain cross-entropy neglects the small classes?

    cargo run --release -p recallseg-data --example generate_synthetic -- /tmp/synth 0
    .venv-peer/bin/pip install opencv-python-headless
    .venv-peer/bin/python crates/data/bench/learnability_check.py /tmp/synth [STEPS]

Trains a small encoder-decoder CNN (about 0.3 M parameters) at 192x96 on the frames of the
Omni_B/F/L cameras and evaluates on Omni_R, once with cross-entropy and once with median-frequency
weighted cross-entropy, and prints per-class recall and IoU. This is a check of the data, not part
of the project's pipeline (the project trains its own DeepLab in Rust).
"""
import glob
import os
import sys
import time

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

NAMES = ["void", "sky", "building", "road", "sidewalk", "fence", "vegetation", "pole", "car",
         "sign", "pedestrian", "bicycle", "lanemark", "r13", "r14", "light"]
W, H = 192, 96
torch.manual_seed(0)
np.random.seed(0)
torch.set_num_threads(os.cpu_count())


def load(root, cams):
    xs, ys = [], []
    for p in sorted(glob.glob(os.path.join(root, "*", "RGB", "*", "*", "*.png"))):
        if p.split(os.sep)[-2] not in cams:
            continue
        img = cv2.imread(p)[:, :, ::-1]
        lbl = cv2.imread(p.replace(os.sep + "RGB" + os.sep, os.sep + "GT" + os.sep + "LABELS" + os.sep),
                         cv2.IMREAD_UNCHANGED)[:, :, 2]
        xs.append(cv2.resize(img, (W, H)))
        ys.append(cv2.resize(lbl, (W, H), interpolation=cv2.INTER_NEAREST))
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float()
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)
    return x, torch.from_numpy(np.stack(ys).astype(np.int64))


def block(i, o, s=1):
    return nn.Sequential(nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))


class Net(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.e1 = nn.Sequential(block(3, 32), block(32, 32))
        self.e2 = nn.Sequential(block(32, 64, 2), block(64, 64))
        self.e3 = nn.Sequential(block(64, 96, 2), block(96, 96))
        self.e4 = nn.Sequential(block(96, 128, 2), block(128, 128))
        self.d3 = block(128 + 96, 96)
        self.d2 = block(96 + 64, 64)
        self.d1 = block(64 + 32, 32)
        self.out = nn.Conv2d(32, c, 1)

    def forward(self, x):
        a = self.e1(x)
        b = self.e2(a)
        c = self.e3(b)
        d = self.e4(c)
        up = lambda t, r: F.interpolate(t, size=r.shape[-2:], mode="bilinear", align_corners=False)
        y = self.d3(torch.cat([up(d, c), c], 1))
        y = self.d2(torch.cat([up(y, b), b], 1))
        y = self.d1(torch.cat([up(y, a), a], 1))
        return self.out(y)


def train_eval(xtr, ytr, xte, yte, weight, steps):
    net = Net()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    t = time.time()
    for s in range(steps):
        idx = torch.randint(0, len(xtr), (8,), generator=g)
        x, y = xtr[idx], ytr[idx]
        if s % 2:
            x, y = x.flip(-1), y.flip(-1)
        loss = F.cross_entropy(net(x), y, weight=weight, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    cm = np.zeros((16, 16), np.int64)
    with torch.no_grad():
        for i in range(0, len(xte), 16):
            p = net(xte[i:i + 16]).argmax(1).numpy().ravel()
            gt = yte[i:i + 16].numpy().ravel()
            cm += np.bincount(gt * 16 + p, minlength=256).reshape(16, 16)
    tp = np.diag(cm).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        rec = tp / cm.sum(1)
        iou = tp / (cm.sum(1) + cm.sum(0) - tp)
    return rec, iou, time.time() - t


if __name__ == "__main__":
    root = sys.argv[1]
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    xtr, ytr = load(root, {"Omni_B", "Omni_F", "Omni_L"})
    xte, yte = load(root, {"Omni_R"})
    counts = np.bincount(ytr.numpy().ravel(), minlength=16).astype(float)
    freq = counts / counts.sum()
    wts = np.where(counts > 0, np.median(counts[counts > 0]) / np.maximum(counts, 1), 0.0)
    print(f"train {len(xtr)} / test {len(xte)} images at {W}x{H}, {steps} steps of batch 8")
    runs = {}
    for name, w in [("CE", None), ("WeightedCE", torch.tensor(wts, dtype=torch.float32))]:
        runs[name] = train_eval(xtr, ytr, xte, yte, w, steps)
        print(f"{name}: {runs[name][2]:.0f} s")
    print(f"{'class':12} {'pix %':>7} | {'CE rec':>7} {'CE IoU':>7} | {'WCE rec':>7} {'WCE IoU':>7}")
    for c in range(16):
        if counts[c] == 0:
            continue
        r = [runs[n][k][c] * 100 for n in ("CE", "WeightedCE") for k in (0, 1)]
        print(f"{NAMES[c]:12} {freq[c]*100:7.3f} | {r[0]:7.1f} {r[1]:7.1f} | {r[2]:7.1f} {r[3]:7.1f}")
    for n in ("CE", "WeightedCE"):
        rec, iou, _ = runs[n]
        print(f"{n}: mean recall {np.nanmean(rec)*100:.1f}  mean IoU {np.nanmean(iou)*100:.1f}")
