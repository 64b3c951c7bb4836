"""Golden of crates/models/tests/export.rs: PyTorch loads recallseg's exported files.

Run from the repository root, after the Rust test has written the exported files:

    RECALLSEG_EXPORT_DIR=target/export-golden cargo test -p recallseg-models --test export
    .venv-peer/bin/python crates/models/tests/golden/make_export_golden.py target/export-golden

For each file (smp.safetensors, torchvision.safetensors): builds the PyTorch model its metadata
names (segmentation_models_pytorch's DeepLabV3Plus with the stored encoder, output stride,
decoder channels and atrous rates; torchvision's deeplabv3_resnet50 without the auxiliary head),
loads the file with `load_state_dict(..., strict=True)` (fails on any missing, unexpected or
misshapen tensor), and records the state dict's names and shapes and the evaluation-mode logits
of the fill-formula input `input.export.<key>` (make_goldens.py). Writes export.json here.
"""
import json
import os
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_goldens import fill_value, summary, write  # noqa: E402


def metadata(path):
    with safe_open(path, "pt") as f:
        return f.metadata()


def load_strict(model, path):
    model.load_state_dict(load_file(path), strict=True)
    return model.eval()


def smp_golden(path):
    import segmentation_models_pytorch as smp

    m = metadata(path)
    assert m["format"] == "smp", m
    model = smp.DeepLabV3Plus(
        encoder_name=m["encoder_name"],
        encoder_weights=None,
        encoder_output_stride=int(m["encoder_output_stride"]),
        decoder_channels=int(m["decoder_channels"]),
        decoder_atrous_rates=tuple(json.loads(m["decoder_atrous_rates"])),
        classes=int(m["classes"]),
    )
    load_strict(model, path)
    x = fill_value("input.export.smp", (1, 3, 64, 64))
    with torch.no_grad():
        y = model(x)
    return model, m, y


def torchvision_golden(path):
    import torchvision.models.segmentation as seg

    m = metadata(path)
    assert m["format"] == "torchvision", m
    ctor = getattr(seg, m["constructor"])
    model = ctor(weights=None, weights_backbone=None, num_classes=int(m["num_classes"]), aux_loss=False)
    load_strict(model, path)
    x = fill_value("input.export.torchvision", (1, 3, 32, 32))
    with torch.no_grad():
        y = model(x)["out"]
    return model, m, y


def main():
    folder = sys.argv[1]
    out = {}
    for key, make in [("smp", smp_golden), ("torchvision", torchvision_golden)]:
        model, meta, y = make(os.path.join(folder, f"{key}.safetensors"))
        out[key] = {
            "metadata": meta,
            "state_dict": {k: list(v.shape) for k, v in model.state_dict().items()},
            "logits": summary(y),
        }
        print(key, "loaded strictly;", len(out[key]["state_dict"]), "tensors; logits", list(y.shape))
    out["versions"] = {"torch": torch.__version__}
    import segmentation_models_pytorch as smp
    import torchvision

    out["versions"].update({"smp": smp.__version__, "torchvision": torchvision.__version__})
    write("export.json", out)


if __name__ == "__main__":
    main()
