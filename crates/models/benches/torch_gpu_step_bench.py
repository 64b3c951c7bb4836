"""PyTorch peer of `cargo xtask bench models --device cuda` on the same GPU (issue 13, item 5).

Times one training step (forward in training mode, pixel-wise cross-entropy, backward,
`torch.optim.Adam` lr 1e-3) of

* `dense`: the paper's DeepLabV3+ on a dilated ResNet-18, output stride 16 — the architecture
  recallseg builds by default (dense ASPP with rates 6/12/18 and a pooling branch, two dense 3×3
  decoder convolutions, dropouts 0.5 / 0.5 / 0.1, `align_corners=False`), the same network as
  `DeepLabV3PlusRef` of `crates/models/tests/golden/make_goldens.py`;
* `smp`: segmentation_models_pytorch's `DeepLabV3Plus("resnet18")` layout (separable ASPP with
  rates 12/24/36, the separable convolution after it, one separable decoder convolution,
  `align_corners=True`), recallseg's `ModelConfig::smp_layout`; the real `smp.DeepLabV3Plus` when
  the package imports (`smp_real`), else the plain-PyTorch copy below;
* `dlv3_os8`: DeepLabV3 on a ResNet-18 at output stride 8 (torchvision's head, rates 12/24/36).

Both networks are written here in plain PyTorch (no timm, torchvision or smp needed: the GPU
machine has PyTorch only). `--verify` checks on the CPU that they are the very networks of
`DeepLabV3PlusRef` and `smp.DeepLabV3Plus` (same parameters in the same order, equal outputs in
evaluation mode after copying the weights); run it where those packages are installed:

    .venv-peer/bin/python crates/models/benches/torch_gpu_step_bench.py --verify

On the GPU (what scripts/gpu-check.sh runs; batch 6, 3x384x768, 19 classes, fp32):

    python crates/models/benches/torch_gpu_step_bench.py --device cuda [--reps 10] [--tf32]

prints one JSON object: per model, the median step time (ms), steps/s and the peak memory
PyTorch's allocator reports (`max_memory_allocated`, `max_memory_reserved`, MiB). TF32 is off
unless `--tf32` (then cuDNN convolutions and matmuls may use it, PyTorch's default for cuDNN).
"""
import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def bn_relu(c):
    return [nn.BatchNorm2d(c), nn.ReLU()]


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride, dilation, first_dilation):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, first_dilation, first_dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.act2 = nn.ReLU()
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        s = x if self.downsample is None else self.downsample(x)
        return self.act2(y + s)


class ResNet18(nn.Module):
    """timm's ResNet-18 with the output stride set by dilating the last stages; `smp_dilation`:
    smp's `make_dilated`, which dilates every 3×3 convolution of a dilated stage, its first one
    included (timm keeps the previous stage's dilation there)."""

    def __init__(self, output_stride, smp_dilation=False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.act1 = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        dil = {16: [1, 1, 1, 2], 8: [1, 1, 2, 4], 32: [1, 1, 1, 1]}[output_stride]
        c_in, prev = 64, 1
        for i, (c, s) in enumerate(zip([64, 128, 256, 512], [1, 2, 2, 2])):
            d = dil[i]
            stride = 1 if d > 1 else s
            first = prev if d > 1 and not smp_dilation else d
            layer = nn.Sequential(BasicBlock(c_in, c, stride, d, first), BasicBlock(c, c, 1, d, d))
            setattr(self, f"layer{i + 1}", layer)
            c_in, prev = c, d

    def forward(self, x):
        y = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        low = self.layer1(y)
        return low, self.layer4(self.layer3(self.layer2(low)))


def separable(c_in, c_out, dilation=1):
    """smp's SeparableConv2d: depthwise 3×3 then pointwise 1×1, no bias, nothing in between."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, padding=dilation, dilation=dilation, groups=c_in, bias=False),
        nn.Conv2d(c_in, c_out, 1, bias=False),
    )


class Pooling(nn.Sequential):
    def __init__(self, c_in, c_out, align_corners=False):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c_in, c_out, 1, bias=False), *bn_relu(c_out))

    def forward(self, x):
        size = x.shape[-2:]
        for m in self:
            x = m(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """torchvision's ASPP (dense) or smp's (separable); `dropout` after the projection."""

    def __init__(self, c_in, rates, c_out=256, sep=False, dropout=0.5):
        super().__init__()
        convs = [nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), *bn_relu(c_out))]
        for r in rates:
            conv = separable(c_in, c_out, r) if sep else nn.Conv2d(c_in, c_out, 3, padding=r, dilation=r, bias=False)
            convs.append(nn.Sequential(conv, *bn_relu(c_out)))
        convs.append(Pooling(c_in, c_out))
        self.convs = nn.ModuleList(convs)
        self.project = nn.Sequential(nn.Conv2d(5 * c_out, c_out, 1, bias=False), *bn_relu(c_out), nn.Dropout(dropout))

    def forward(self, x):
        return self.project(torch.cat([c(x) for c in self.convs], 1))


class DeepLabV3Plus(nn.Module):
    """recallseg's DeepLabV3+ (`smp=False`: the paper's dense head) or smp's layout (`smp=True`)."""

    def __init__(self, n_classes, output_stride=16, smp=False):
        super().__init__()
        self.smp = smp
        self.backbone = ResNet18(output_stride, smp_dilation=smp)
        if smp:
            self.aspp = nn.Sequential(ASPP(512, (12, 24, 36), sep=True), separable(256, 256), *bn_relu(256))
            self.project = nn.Sequential(nn.Conv2d(64, 48, 1, bias=False), *bn_relu(48))
            self.fuse = nn.Sequential(separable(304, 256), *bn_relu(256))
        else:
            rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
            self.aspp = ASPP(512, rates)
            self.project = nn.Sequential(nn.Conv2d(64, 48, 1, bias=False), *bn_relu(48))
            self.fuse = nn.Sequential(
                nn.Conv2d(304, 256, 3, padding=1, bias=False), *bn_relu(256), nn.Dropout(0.5),
                nn.Conv2d(256, 256, 3, padding=1, bias=False), *bn_relu(256), nn.Dropout(0.1),
            )
        self.classifier = nn.Conv2d(256, n_classes, 1)

    def forward(self, x):
        ac = self.smp
        low, high = self.backbone(x)
        a = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=ac)
        y = self.classifier(self.fuse(torch.cat([a, self.project(low)], 1)))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=ac)


class DeepLabV3(nn.Module):
    """torchvision's DeepLabHead on the dilated ResNet-18."""

    def __init__(self, n_classes, output_stride=8):
        super().__init__()
        self.backbone = ResNet18(output_stride)
        rates = (12, 24, 36) if output_stride == 8 else (6, 12, 18)
        self.head = nn.Sequential(
            ASPP(512, rates), nn.Conv2d(256, 256, 3, padding=1, bias=False), *bn_relu(256), nn.Conv2d(256, n_classes, 1)
        )

    def forward(self, x):
        return F.interpolate(self.head(self.backbone(x)[1]), size=x.shape[-2:], mode="bilinear", align_corners=False)


def step_bench(model, x, y, reps, warmup, dev):
    """Median ms of a training step, peak allocator memory (MiB) over the timed steps."""
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    model.train()

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    for _ in range(warmup):
        step()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        loss = step()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    assert torch.isfinite(loss).item()
    ms = statistics.median(times)
    out = {"train_step_ms": ms, "steps_per_s": 1e3 / ms}
    if dev.type == "cuda":
        out["peak_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out["peak_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
    return out


def copy_by_order(src, dst):
    """Copies `src`'s parameters and buffers into `dst` by registration order; shapes must match."""
    # timm's ResNet keeps its ImageNet classifier (`fc`), which the segmentation model never uses.
    a = [t for k, t in src.state_dict().items() if not k.startswith("backbone.fc.")]
    b = list(dst.state_dict().values())
    assert len(a) == len(b), f"{len(a)} vs {len(b)} tensors"
    with torch.no_grad():
        for s, d in zip(a, b):
            assert s.shape == d.shape, f"{tuple(s.shape)} vs {tuple(d.shape)}"
            d.copy_(s)


def verify():
    """On the CPU: the plain-PyTorch networks are DeepLabV3PlusRef and smp.DeepLabV3Plus."""
    import os

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden"))
    from make_goldens import DeepLabV3PlusRef
    import segmentation_models_pytorch as smp_pkg

    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 96)
    pairs = [
        ("dense", DeepLabV3PlusRef(19, 16), DeepLabV3Plus(19, 16)),
        ("smp", smp_pkg.DeepLabV3Plus("resnet18", encoder_weights=None, classes=19), DeepLabV3Plus(19, 16, smp=True)),
    ]
    report = {}
    for name, ref, ours in pairs:
        copy_by_order(ref, ours)
        ref.eval(), ours.eval()
        with torch.no_grad():
            d = (ref(x) - ours(x)).abs().max().item()
        n = sum(p.numel() for p in ours.parameters())
        assert n == sum(p.numel() for k, p in ref.named_parameters() if not k.startswith("backbone.fc."))
        assert d < 1e-5, f"{name}: outputs differ by {d}"
        report[name] = {"params": n, "max_abs_diff": d}
    print(json.dumps(report))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=6)
    ap.add_argument("--height", type=int, default=384)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--classes", type=int, default=19)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--tf32", action="store_true", help="allow TF32 in cuDNN convolutions and matmuls")
    ap.add_argument("--only", default="", help="comma-separated subset of dense,smp,smp_real,dlv3_os8")
    ap.add_argument("--verify", action="store_true", help="check the networks against the references (CPU)")
    a = ap.parse_args()
    if a.verify:
        verify()
        return
    dev = torch.device(a.device)
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.backends.cudnn.allow_tf32 = a.tf32
    torch.manual_seed(0)
    x = torch.randn(a.batch, 3, a.height, a.width, device=dev)
    y = torch.randint(0, a.classes, (a.batch, a.height, a.width), device=dev)
    out = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if dev.type == "cuda" else None,
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "tf32": a.tf32,
        "shape": [a.batch, 3, a.height, a.width],
        "classes": a.classes,
    }
    models = {
        "dense": lambda: DeepLabV3Plus(a.classes, 16),
        "smp": lambda: DeepLabV3Plus(a.classes, 16, smp=True),
        "smp_real": None,
        "dlv3_os8": lambda: DeepLabV3(a.classes, 8),
    }
    only = [s for s in a.only.split(",") if s]
    for name, make in models.items():
        if only and name not in only:
            continue
        try:
            if make is None:
                import segmentation_models_pytorch as smp_pkg

                make = lambda: smp_pkg.DeepLabV3Plus("resnet18", encoder_weights=None, classes=a.classes)  # noqa: E731
            model = make().to(dev)
            out[name] = step_bench(model, x, y, a.reps, a.warmup, dev)
            del model
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        except Exception as e:  # a missing package or an out-of-memory: report, keep going
            out[name] = {"skipped": f"{type(e).__name__}: {e}"}
        print(f"torch peer: {name}: {out[name]}", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
