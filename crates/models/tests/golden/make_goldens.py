"""Reference numbers for recallseg-models' tests, from PyTorch / torchvision / timm.

Run from the repository root:

    .venv-peer/bin/python crates/models/tests/golden/make_goldens.py

Writes the JSON files next to this script. No weights are downloaded or stored: every parameter
and input is filled by a deterministic formula that the Rust tests implement identically
(`tests/common/mod.rs`):

    h   = FNV-1a-64(name)
    z_i = SplitMix64(h XOR i)            for element i in row-major order
    u_i = (z_i >> 11) * 2^-53            uniform in [0, 1), exact in f64
    value by name / shape (computed in f64, rounded once to f32):
      *.running_var, 1-D *.weight (BN scale) : 0.5 + u
      *.running_mean, *.bias                 : 0.1 * (2u - 1)
      conv weight (4-D)                      : (2u - 1) * sqrt(3 / fan_in)
      "input*" and "grad*" tensors           : 2u - 1

Large outputs are compared on a deterministic sample (every `step`-th element) plus their sum
and sum of absolute values.
"""
import json
import math
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
M64 = (1 << 64) - 1


def fnv1a64(s):
    h = 0xCBF29CE484222325
    for b in s.encode():
        h ^= b
        h = (h * 0x100000001B3) & M64
    return h


def splitmix64(x):
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniform(name, n):
    i = np.arange(n, dtype=np.uint64)
    z = splitmix64(np.uint64(fnv1a64(name)) ^ i)
    return (z >> np.uint64(11)).astype(np.float64) * (2.0 ** -53)


def fill_value(name, shape):
    n = int(np.prod(shape)) if len(shape) else 1
    u = uniform(name, n)
    last = name.rsplit(".", 1)[-1]
    if name.startswith("input") or name.startswith("grad"):
        v = 2 * u - 1
    elif last == "running_var" or (last == "weight" and len(shape) == 1):
        v = 0.5 + u
    elif last in ("running_mean", "bias"):
        v = 0.1 * (2 * u - 1)
    elif last == "weight" and len(shape) == 4:
        fan_in = shape[1] * shape[2] * shape[3]
        v = (2 * u - 1) * math.sqrt(3.0 / fan_in)
    else:
        raise ValueError(f"no fill rule for {name} {shape}")
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def fill_module(module, prefix=""):
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if name.endswith("num_batches_tracked") or (prefix + name).split(".")[-2:-1] == ["fc"]:
                continue  # not part of the segmentation model
            t.copy_(fill_value(prefix + name, tuple(t.shape)))


def summary(t, max_values=1200):
    flat = t.detach().double().flatten()
    n = flat.numel()
    step = max(1, n // max_values)
    return {
        "shape": list(t.shape),
        "step": step,
        "values": flat[::step].tolist(),
        "sum": flat.sum().item(),
        "abs_sum": flat.abs().sum().item(),
    }


def write(name, obj):
    path = os.path.join(HERE, name)
    with open(path, "w") as f:
        json.dump(obj, f, indent=None, separators=(",", ":"))
        f.write("\n")
    print("wrote", path)


def ops_goldens():
    torch.set_default_dtype(torch.float64)
    x = fill_value("input.resize", (2, 3, 5, 7)).double()
    resize = []
    for (oh, ow) in [(9, 4), (3, 11), (10, 14), (1, 1)]:
        for ac in (False, True):
            y = F.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=ac)
            resize.append({"size": [oh, ow], "align_corners": ac, "output": summary(y, 10**6)})
    # Quantised values create ties inside windows: PyTorch sends the gradient to the first max.
    xp = (fill_value("input.maxpool", (2, 3, 7, 9)).double() * 4).round() / 4
    pools = []
    for (k, s, p) in [(3, 2, 1), (2, 2, 0), (3, 1, 1)]:
        xv = xp.clone().requires_grad_(True)
        y = F.max_pool2d(xv, k, s, p)
        g = fill_value("grad.maxpool", tuple(y.shape)).double()
        (y * g).sum().backward()
        pools.append({
            "kernel": k, "stride": s, "padding": p,
            "output": summary(y, 10**6), "grad_input": summary(xv.grad, 10**6),
        })
    torch.set_default_dtype(torch.float32)
    write("ops.json", {"resize": resize, "max_pool": pools})


def resnet_goldens():
    import timm
    import torchvision

    out = {}
    m = torchvision.models.resnet18(weights=None).eval()
    fill_module(m, "backbone.")
    x = fill_value("input.resnet", (1, 3, 64, 64))
    with torch.no_grad():
        y = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        l1 = m.layer1(y)
        l4 = m.layer4(m.layer3(m.layer2(l1)))
    out["torchvision_resnet18"] = {"input": [1, 3, 64, 64], "layer1": summary(l1), "layer4": summary(l4)}

    for os_ in (8, 16):
        m = timm.create_model("resnet18", pretrained=False, output_stride=os_).eval()
        fill_module(m, "backbone.")
        x = fill_value("input.resnet", (1, 3, 48, 48))
        with torch.no_grad():
            f = m.forward_features(x)
        out[f"timm_resnet18_os{os_}"] = {"input": [1, 3, 48, 48], "layer4": summary(f)}
    write("resnet.json", out)


def deeplabv3_golden():
    from torchvision.models.segmentation import deeplabv3_resnet50

    m = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=5, aux_loss=False).eval()
    fill_module(m)
    x = fill_value("input.deeplab", (1, 3, 40, 40))
    with torch.no_grad():
        y = m(x)["out"]
    write("deeplabv3_r50_os8.json", {"input": [1, 3, 40, 40], "n_classes": 5, "logits": summary(y)})


class DeepLabV3PlusRef(nn.Module):
    """DeepLabV3+ as documented in docs/models.md, in plain PyTorch on timm's dilated ResNet.

    `separable=True` builds the ASPP and decoder convolutions from segmentation_models_pytorch's
    own `ASPP(separable=True)` and `SeparableConv2d` (an independent implementation of the
    depthwise-separable layout); `decoder_convs` is 1 or 2; `rates` overrides the atrous rates.
    """

    def __init__(self, n_classes, output_stride, separable=False, decoder_convs=2, rates=None):
        super().__init__()
        import timm
        from torchvision.models.segmentation.deeplabv3 import ASPP

        self.backbone = timm.create_model("resnet18", pretrained=False, output_stride=output_stride)
        if rates is None:
            rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        if separable:
            from segmentation_models_pytorch.decoders.deeplabv3.decoder import ASPP as SmpASPP
            from segmentation_models_pytorch.decoders.deeplabv3.decoder import SeparableConv2d

            self.aspp = SmpASPP(512, 256, rates, separable=True, dropout=0.0)

            def conv3x3(c_in, c_out):
                return SeparableConv2d(c_in, c_out, 3, padding=1, bias=False)
        else:
            self.aspp = ASPP(512, rates, 256)

            def conv3x3(c_in, c_out):
                return nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.aspp.project[3].p = 0.0  # the tests compare training steps without dropout
        dec = nn.Module()
        dec.project = nn.Sequential(nn.Conv2d(64, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU())
        fuse = [conv3x3(304, 256), nn.BatchNorm2d(256), nn.ReLU(), nn.Dropout(0.0)]
        if decoder_convs == 2:
            fuse += [conv3x3(256, 256), nn.BatchNorm2d(256), nn.ReLU(), nn.Dropout(0.0)]
        dec.fuse = nn.Sequential(*fuse)
        self.decoder = dec
        self.classifier = nn.Conv2d(256, n_classes, 1)

    def forward(self, x):
        b = self.backbone
        y = b.maxpool(b.act1(b.bn1(b.conv1(x))))
        low = b.layer1(y)
        high = b.layer4(b.layer3(b.layer2(low)))
        a = self.aspp(high)
        a = F.interpolate(a, size=low.shape[-2:], mode="bilinear", align_corners=False)
        y = torch.cat([a, self.decoder.project(low)], 1)
        y = self.classifier(self.decoder.fuse(y))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def deeplabv3plus_golden(file, grad_names, stat_names, **layout):
    out = {}
    m = DeepLabV3PlusRef(6, 16, **layout)
    fill_module(m)
    x = fill_value("input.deeplab", (2, 3, 64, 80))
    m.eval()
    with torch.no_grad():
        out["eval_logits"] = summary(m(x))
    m.train()
    with torch.no_grad():
        out["train_logits"] = summary(m(x))
    # Gradients and running statistics in float64: f32 accumulation over ~10^5 terms (PyTorch
    # accumulates BN reductions in double on the CPU, candle in f32) would blur a real mismatch.
    m = DeepLabV3PlusRef(6, 16, **layout)
    fill_module(m)
    m = m.double().train()
    params = {n: p for n, p in m.named_parameters()}
    bufs = {n: b for n, b in m.named_buffers()}
    x = x.double()
    y = m(x)
    g = fill_value("grad.deeplab", tuple(y.shape)).double()
    (y * g).sum().backward()
    out["train_logits_f64"] = summary(y)
    out["grads_f64"] = {n: summary(params[n].grad, 400) for n in grad_names}
    out["running_stats_f64"] = {n: summary(bufs[n], 400) for n in stat_names}
    out["input"] = [2, 3, 64, 80]
    out["n_classes"] = 6
    write(file, out)


def deeplabv3plus_goldens():
    deeplabv3plus_golden(
        "deeplabv3plus_r18_os16.json",
        [
            "backbone.conv1.weight", "backbone.bn1.weight", "backbone.layer4.1.bn2.bias",
            "aspp.convs.4.1.weight", "aspp.project.1.weight", "decoder.project.1.bias",
            "decoder.fuse.4.weight", "classifier.weight", "classifier.bias",
        ],
        [
            "backbone.bn1.running_mean", "backbone.bn1.running_var",
            "backbone.layer3.0.downsample.1.running_var", "aspp.convs.4.2.running_mean",
            "aspp.convs.4.2.running_var", "decoder.fuse.5.running_var",
        ],
    )
    # Separable ASPP and decoder, one decoder conv; small rates so that the 4×5 feature map of
    # the 64×80 input exercises dilated depthwise taps that are partly inside the image.
    deeplabv3plus_golden(
        "deeplabv3plus_r18_os16_separable.json",
        [
            "backbone.layer4.1.conv2.weight", "aspp.convs.1.0.0.weight", "aspp.convs.3.0.0.weight",
            "aspp.convs.3.0.1.weight", "aspp.project.0.weight", "decoder.fuse.0.0.weight",
            "decoder.fuse.0.1.weight", "decoder.fuse.1.bias", "classifier.weight",
        ],
        ["aspp.convs.2.1.running_var", "decoder.fuse.1.running_mean", "decoder.fuse.1.running_var"],
        separable=True,
        decoder_convs=1,
        rates=(1, 2, 3),
    )


if __name__ == "__main__":
    torch.manual_seed(0)
    torch.set_num_threads(1)
    ops_goldens()
    resnet_goldens()
    deeplabv3_golden()
    deeplabv3plus_goldens()
