"""PyTorch timing of the *same* architectures `cargo xtask bench models` times.

`../shared/peer/step_bench.py` times segmentation_models_pytorch's DeepLabV3/V3+, whose ASPP and
decoder use depthwise-separable convolutions and a single 3×3 decoder conv; recallseg builds the
paper's DeepLabV3+ (full 3×3 atrous convs, two 3×3 decoder convs), which costs more FLOPs. This
script times that exact architecture (`DeepLabV3PlusRef` from the parity goldens, torchvision's
DeepLabV3 head on timm's ResNet-18 for V3) with the same protocol: batch 2, 3×192×384, 16 classes,
Adam lr 1e-3, pixel-wise cross-entropy; median of the timed steps after one warm-up. It also
times smp's DeepLabV3Plus (the peer of `cargo xtask bench models`' smp-layout figure) phase by
phase (forward, loss, backward, optimizer), like the bench's `..._separable_{phase}_ms` figures.

    .venv-peer/bin/python crates/models/benches/torch_step_bench.py [reps]
"""
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden"))
from make_goldens import DeepLabV3PlusRef  # noqa: E402


class DeepLabV3Ref(nn.Module):
    def __init__(self, n_classes, output_stride):
        super().__init__()
        import timm
        from torchvision.models.segmentation.deeplabv3 import DeepLabHead

        self.backbone = timm.create_model("resnet18", pretrained=False, output_stride=output_stride)
        self.classifier = DeepLabHead(512, n_classes, (12, 24, 36) if output_stride == 8 else (6, 12, 18))

    def forward(self, x):
        f = self.backbone.forward_features(x)
        return F.interpolate(self.classifier(f), size=x.shape[-2:], mode="bilinear", align_corners=False)


def bench(model, reps):
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randn(2, 3, 192, 384)
    y = torch.randint(0, 16, (2, 192, 384))
    model.train()
    times, phases = [], []
    for i in range(reps + 1):
        t0 = time.perf_counter()
        out = model(x)
        t1 = time.perf_counter()
        loss = F.cross_entropy(out, y)
        loss.item()
        t2 = time.perf_counter()
        opt.zero_grad()
        loss.backward()
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        if i > 0:
            times.append((t4 - t0) * 1e3)
            phases.append([(b - a) * 1e3 for a, b in [(t0, t1), (t1, t2), (t2, t3), (t3, t4)]])
    bench.phases = [statistics.median(p[k] for p in phases) for k in range(4)]
    model.eval()
    inf = []
    with torch.no_grad():
        for i in range(reps + 1):
            t0 = time.perf_counter()
            model(x)
            if i > 0:
                inf.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), statistics.median(inf)


if __name__ == "__main__":
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    torch.manual_seed(0)
    m = DeepLabV3PlusRef(16, 16)
    m.aspp.project[3].p = 0.5
    m.decoder.fuse[3].p, m.decoder.fuse[7].p = 0.5, 0.1
    step, inf = bench(m, reps)
    print(f"deeplabv3plus_r18_os16 (recallseg architecture): train step {step:.0f} ms, inference {inf:.0f} ms")
    import segmentation_models_pytorch as smp

    step, inf = bench(smp.DeepLabV3Plus("resnet18", encoder_weights=None, classes=16), reps)
    f, l, b, o = bench.phases
    print(f"deeplabv3plus_r18_os16 (smp): train step {step:.0f} ms (forward {f:.0f}, loss {l:.0f}, "
          f"backward {b:.0f}, optimizer {o:.0f}), inference {inf:.0f} ms")
    step, inf = bench(DeepLabV3Ref(16, 8), reps)
    print(f"deeplabv3_r18_os8 (recallseg architecture): train step {step:.0f} ms, inference {inf:.0f} ms")
