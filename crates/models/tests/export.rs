//! Export to PyTorch names (`recallseg_models::save_exported` and its siblings): the name mapping round trip, the file
//! round trip, clear errors for configurations without a counterpart, and the golden of
//! `tests/golden/make_export_golden.py`: segmentation_models_pytorch's `DeepLabV3Plus` and
//! torchvision's `deeplabv3_resnet50` load the exported files with `strict=True` (same names and
//! shapes as the state dicts listed in the golden) and give our logits (relative error 1e-4).
//!
//! To remake the golden: `RECALLSEG_EXPORT_DIR=target/export-golden cargo test -p
//! recallseg-models --test export` writes the exported files, then
//! `.venv-peer/bin/python crates/models/tests/golden/make_export_golden.py target/export-golden`.

mod common;

use candle_core::Tensor;
use common::{assert_matches, build, fill, fill_model, golden};
use recallseg_models::{
    check_compatible, export_tensors, from_pytorch_name, load_exported, save_exported,
    to_pytorch_name, ExportFormat,
};
use recallseg_models::{Backbone, DeepLab, Head, ModelConfig};
use std::collections::{BTreeMap, HashSet};

const TOL: f64 = 1e-4;

fn smp_config() -> ModelConfig {
    ModelConfig {
        n_classes: 3,
        head_channels: 64,
        ..ModelConfig::default()
    }
    .smp_layout()
}

fn torchvision_config() -> ModelConfig {
    ModelConfig {
        backbone: Backbone::Resnet50,
        head: Head::DeepLabV3,
        output_stride: 8,
        n_classes: 3,
        ..ModelConfig::default()
    }
}

fn thin(cfg: ModelConfig) -> ModelConfig {
    ModelConfig {
        backbone_width: 8,
        head_channels: 16,
        ..cfg
    }
}

#[test]
fn names_map_both_ways_one_to_one() {
    for (cfg, format) in [
        (thin(smp_config()), ExportFormat::Smp),
        (thin(torchvision_config()), ExportFormat::Torchvision),
        (
            thin(ModelConfig {
                backbone: Backbone::Resnet101,
                ..torchvision_config()
            }),
            ExportFormat::Torchvision,
        ),
    ] {
        let (model, _) = build(&cfg);
        let mut theirs = HashSet::new();
        for nv in model.named_vars() {
            let t = to_pytorch_name(&nv.name, format)
                .unwrap_or_else(|| panic!("{} has no {format:?} name", nv.name));
            assert_eq!(
                from_pytorch_name(&t, format).as_deref(),
                Some(nv.name.as_str())
            );
            assert!(theirs.insert(t.clone()), "two parameters map to {t}");
        }
    }
    assert_eq!(
        to_pytorch_name("decoder.aspp_conv.0.1.weight", ExportFormat::Smp).unwrap(),
        "decoder.aspp.1.1.weight"
    );
    assert_eq!(
        from_pytorch_name("segmentation_head.0.bias", ExportFormat::Smp).unwrap(),
        "classifier.bias"
    );
    assert_eq!(
        from_pytorch_name("encoder.bn1.num_batches_tracked", ExportFormat::Smp),
        None
    );
    assert_eq!(
        from_pytorch_name("aux_classifier.0.weight", ExportFormat::Torchvision),
        None
    );
}

#[test]
fn configurations_without_a_counterpart_name_the_field() {
    let cases: Vec<(ModelConfig, ExportFormat, &str)> = vec![
        (thin(smp_config()), ExportFormat::Smp, "backbone_width"),
        (
            ModelConfig {
                n_classes: 3,
                ..ModelConfig::default()
            },
            ExportFormat::Smp,
            "separable",
        ),
        (
            ModelConfig {
                smp_dilation: false,
                ..smp_config()
            },
            ExportFormat::Smp,
            "smp_dilation",
        ),
        (
            ModelConfig {
                low_level_channels: 32,
                ..smp_config()
            },
            ExportFormat::Smp,
            "low_level_channels",
        ),
        (torchvision_config(), ExportFormat::Smp, "head"),
        (smp_config(), ExportFormat::Torchvision, "head"),
        (
            ModelConfig {
                backbone: Backbone::Resnet18,
                ..torchvision_config()
            },
            ExportFormat::Torchvision,
            "backbone",
        ),
        (
            ModelConfig {
                output_stride: 16,
                aspp_rates: Some([12, 24, 36]),
                ..torchvision_config()
            },
            ExportFormat::Torchvision,
            "output_stride",
        ),
        (
            ModelConfig {
                head_channels: 128,
                ..torchvision_config()
            },
            ExportFormat::Torchvision,
            "head_channels",
        ),
    ];
    for (cfg, format, field) in cases {
        let e = check_compatible(&cfg, format).unwrap_err().to_string();
        assert!(e.contains(&format!("`{field}`")), "{e} should name {field}");
    }
    let meta = check_compatible(&smp_config(), ExportFormat::Smp).unwrap();
    assert_eq!(meta["encoder_name"], "resnet18");
    assert_eq!(meta["decoder_atrous_rates"], "[12, 24, 36]");
    assert_eq!(meta["decoder_channels"], "64");
    let meta = check_compatible(&torchvision_config(), ExportFormat::Torchvision).unwrap();
    assert_eq!(meta["constructor"], "deeplabv3_resnet50");
    assert!(ExportFormat::parse("onnx").unwrap_err().contains("onnx"));
}

/// Builds the golden's model: the fill formula for every tensor.
fn golden_model(cfg: &ModelConfig) -> DeepLab {
    let (model, vm) = build(cfg);
    fill_model(&model);
    std::mem::forget(vm); // the model's variables share its storage
    model
}

/// Checks the export of the fill-formula model of `cfg` against the golden `key`; returns our
/// logits.
fn check(key: &str, cfg: &ModelConfig, format: ExportFormat, input: &[usize]) -> Tensor {
    let model = golden_model(cfg);
    // The file round trip: every tensor back under our name, bit for bit.
    let dir = tempfile::tempdir().unwrap();
    let path = match std::env::var_os("RECALLSEG_EXPORT_DIR") {
        Some(d) => {
            std::fs::create_dir_all(&d).unwrap();
            std::path::PathBuf::from(d).join(format!("{key}.safetensors"))
        }
        None => dir.path().join("model.safetensors"),
    };
    let extra = BTreeMap::from([("note".to_string(), "golden".to_string())]);
    save_exported(&model, format, 7, &extra, &path).unwrap();
    let back = load_exported(&path, format).unwrap();
    assert_eq!(back.len(), model.named_vars().len());
    for nv in model.named_vars() {
        let t = &back[&nv.name];
        let a = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = nv.var.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b, "{}", nv.name);
    }
    let g = golden("export.json");
    let g = &g[key];
    // The exported names and shapes are exactly the PyTorch state dict's (what strict=True
    // checks), num_batches_tracked included.
    let tensors = export_tensors(&model, format, 7).unwrap();
    let ours: BTreeMap<String, Vec<usize>> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.dims().to_vec()))
        .collect();
    let theirs: BTreeMap<String, Vec<usize>> = g["state_dict"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(n, s)| {
            let s = s.as_array().unwrap();
            (
                n.clone(),
                s.iter().map(|d| d.as_u64().unwrap() as usize).collect(),
            )
        })
        .collect();
    assert_eq!(ours, theirs, "{key}: state dict names and shapes");
    // PyTorch's logits of the loaded file are ours.
    let x = fill(&format!("input.export.{key}"), input);
    let y = model.forward_t(&x, false).unwrap();
    let w = assert_matches(&format!("{key} logits"), &y, &g["logits"], TOL);
    eprintln!("{key} logits: worst relative error {w:.2e}");
    y
}

#[test]
fn smp_loads_the_export_strictly_and_gives_our_logits() {
    let y = check("smp", &smp_config(), ExportFormat::Smp, &[1, 3, 64, 64]);
    // smp dilates the first convolution of layer4 too: with torchvision's rule the same
    // weights give other logits (the reason `smp_dilation` exists).
    let other = golden_model(&ModelConfig {
        smp_dilation: false,
        ..smp_config()
    });
    let x = fill("input.export.smp", &[1, 3, 64, 64]);
    let y2 = other.forward_t(&x, false).unwrap();
    let d: f32 = (y - y2)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(d > 1e-2, "the dilation rule changed the logits by only {d}");
}

#[test]
fn torchvision_loads_the_export_strictly_and_gives_our_logits() {
    check(
        "torchvision",
        &torchvision_config(),
        ExportFormat::Torchvision,
        &[1, 3, 32, 32],
    );
}

#[test]
fn a_failed_write_says_write_and_names_the_file_and_leaves_no_part() {
    let model = golden_model(&smp_config());
    let dir = tempfile::tempdir().unwrap();
    let extra = BTreeMap::new();
    // A "folder" that is a file: the write fails, and says it was a write.
    std::fs::write(dir.path().join("no-such-folder"), b"a file").unwrap();
    let missing = dir.path().join("no-such-folder").join("m.safetensors");
    let err = save_exported(&model, ExportFormat::Smp, 0, &extra, &missing)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("cannot write weights to ") && err.contains("no-such-folder"),
        "{err}"
    );
    // An existing export is replaced whole: no temporary file is left beside it.
    let path = dir.path().join("m.safetensors");
    save_exported(&model, ExportFormat::Smp, 0, &extra, &path).unwrap();
    save_exported(&model, ExportFormat::Smp, 1, &extra, &path).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, ["m.safetensors", "no-such-folder"]);
    assert!(load_exported(&path, ExportFormat::Smp).is_ok());
}
