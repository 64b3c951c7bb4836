//! Loading pretrained weights from small safetensors files written in a tempdir (no network):
//! ImageNet-ResNet layout, full DeepLab layout, class-count mismatch, missing and mismatched
//! tensors, unknown layouts, and offline hub resolution.

mod common;

use candle_core::{DType, Device, Tensor};
use common::build;
use recallseg_models::{
    Backbone, CheckpointLayout, Head, HubFile, ModelConfig, ModelError, PretrainedSource,
};
use std::collections::HashMap;
use std::path::Path;

fn thin(n_classes: usize, seed: u64) -> ModelConfig {
    ModelConfig {
        backbone: Backbone::Resnet18,
        head: Head::DeepLabV3Plus,
        n_classes,
        backbone_width: 4,
        head_channels: 8,
        low_level_channels: 4,
        init_seed: seed,
        ..ModelConfig::default()
    }
}

fn snapshot(model: &recallseg_models::DeepLab) -> HashMap<String, Vec<f32>> {
    model
        .named_vars()
        .iter()
        .map(|v| {
            (
                v.name.clone(),
                v.var.flatten_all().unwrap().to_vec1().unwrap(),
            )
        })
        .collect()
}

/// Writes `model`'s backbone as an ImageNet-style ResNet checkpoint (torchvision names, plus
/// `fc.*` and `num_batches_tracked` as real checkpoints have), optionally editing it.
fn write_resnet(
    model: &recallseg_models::DeepLab,
    path: &Path,
    edit: impl Fn(&mut HashMap<String, Tensor>),
) {
    let mut m: HashMap<String, Tensor> = model
        .named_vars()
        .iter()
        .filter_map(|v| {
            v.name
                .strip_prefix("backbone.")
                .map(|n| (n.to_string(), v.var.as_tensor().clone()))
        })
        .collect();
    m.insert(
        "fc.weight".into(),
        Tensor::zeros((1000, 32), DType::F32, &Device::Cpu).unwrap(),
    );
    m.insert(
        "fc.bias".into(),
        Tensor::zeros(1000, DType::F32, &Device::Cpu).unwrap(),
    );
    m.insert(
        "bn1.num_batches_tracked".into(),
        Tensor::new(&[7i64], &Device::Cpu)
            .unwrap()
            .reshape(())
            .unwrap(),
    );
    edit(&mut m);
    candle_core::safetensors::save(&m, path).unwrap();
}

#[test]
fn imagenet_resnet_checkpoint_loads_the_backbone_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resnet.safetensors");
    let (src, _) = build(&thin(3, 1));
    write_resnet(&src, &path, |_| {});
    let (dst, _) = build(&thin(3, 2));
    let before = snapshot(&dst);
    let report = dst.load_safetensors(&path).unwrap();
    assert_eq!(report.layout, CheckpointLayout::ResNet);
    assert!(report.reinitialised.is_empty());
    assert!(report.ignored.contains(&"fc.weight".to_string()));
    assert!(report
        .ignored
        .contains(&"bn1.num_batches_tracked".to_string()));
    let (s, d) = (snapshot(&src), snapshot(&dst));
    for (name, v) in &d {
        if name.starts_with("backbone.") {
            assert_eq!(v, &s[name], "{name} should come from the checkpoint");
        } else {
            assert_eq!(v, &before[name], "{name} should keep its initialisation");
        }
    }
    assert_eq!(
        report.loaded.len() + report.kept_initialisation.len(),
        d.len()
    );
    assert!(
        report.to_string().contains("ImageNet ResNet backbone"),
        "{report}"
    );

    // The same through a `PretrainedSource::Path` in the config.
    let cfg = ModelConfig {
        pretrained: Some(PretrainedSource::Path(path.clone())),
        ..thin(3, 2)
    };
    let varmap = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    // Thin models are refused with pretrained sources at validation…
    let e = recallseg_models::DeepLab::from_pretrained(&cfg, vb).unwrap_err();
    assert!(e.to_string().contains("backbone_width"), "{e}");
    // …but a local file loads explicitly.
    let report = dst.load_pretrained(&PretrainedSource::Path(path)).unwrap();
    assert_eq!(report.layout, CheckpointLayout::ResNet);
}

#[test]
fn deeplab_checkpoint_with_other_class_count_reinitialises_the_classifier() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deeplab.safetensors");
    let (src, src_map) = build(&thin(7, 1));
    src_map.save(&path).unwrap();

    // Same class count: every tensor is taken.
    let (same, _) = build(&thin(7, 2));
    let report = same.load_safetensors(&path).unwrap();
    assert_eq!(report.layout, CheckpointLayout::DeepLab);
    assert!(report.reinitialised.is_empty() && report.ignored.is_empty());
    assert_eq!(snapshot(&same), snapshot(&src));

    // Other class count: all but the classifier, which gets a fresh model's values.
    let (other, _) = build(&thin(4, 2));
    let fresh = snapshot(&other);
    let report = other.load_safetensors(&path).unwrap();
    assert_eq!(
        report.reinitialised,
        vec![
            "classifier.weight".to_string(),
            "classifier.bias".to_string()
        ]
    );
    assert!(
        report
            .to_string()
            .contains("re-initialised classifier.weight"),
        "{report}"
    );
    let (s, o) = (snapshot(&src), snapshot(&other));
    for (name, v) in &o {
        if name.starts_with("classifier.") {
            assert_eq!(v, &fresh[name], "{name}");
        } else {
            assert_eq!(v, &s[name], "{name}");
        }
    }
}

#[test]
fn missing_and_mismatched_tensors_are_errors_naming_them_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = build(&thin(3, 1));
    let (dst, _) = build(&thin(3, 2));
    let before = snapshot(&dst);

    let missing = dir.path().join("missing.safetensors");
    write_resnet(&src, &missing, |m| {
        m.remove("layer3.1.bn2.running_var");
    });
    match dst.load_safetensors(&missing).unwrap_err() {
        ModelError::MissingTensor { name, expected, .. } => {
            assert_eq!(name, "layer3.1.bn2.running_var");
            assert_eq!(expected, vec![16]);
        }
        e => panic!("expected MissingTensor, got {e}"),
    }

    let wrong = dir.path().join("wrong.safetensors");
    write_resnet(&src, &wrong, |m| {
        m.insert(
            "layer2.0.conv1.weight".into(),
            Tensor::zeros((8, 4, 5, 5), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let e = dst.load_safetensors(&wrong).unwrap_err();
    assert!(matches!(e, ModelError::ShapeMismatch { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("layer2.0.conv1.weight") && msg.contains("[8, 4, 5, 5]"),
        "{msg}"
    );
    assert_eq!(
        snapshot(&dst),
        before,
        "a failed load must leave the model untouched"
    );

    let unknown = dir.path().join("unknown.safetensors");
    let mut m = HashMap::new();
    m.insert(
        "encoder.weight".to_string(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&m, &unknown).unwrap();
    assert!(matches!(
        dst.load_safetensors(&unknown).unwrap_err(),
        ModelError::UnknownLayout { .. }
    ));

    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"not a safetensors file").unwrap();
    let e = dst.load_safetensors(&garbage).unwrap_err();
    assert!(
        matches!(e, ModelError::WeightFile { .. }) && e.to_string().contains("garbage"),
        "{e}"
    );

    let e = PretrainedSource::Path(dir.path().join("absent.safetensors"))
        .resolve(Backbone::Resnet18)
        .unwrap_err();
    assert!(e.to_string().contains("absent.safetensors"), "{e}");
}

#[test]
fn checkpoints_convert_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f16.safetensors");
    let (src, _) = build(&thin(3, 1));
    write_resnet(&src, &path, |m| {
        for t in m.values_mut() {
            if t.dtype() == DType::F32 {
                *t = t.to_dtype(DType::F16).unwrap();
            }
        }
    });
    let (dst, _) = build(&thin(3, 2));
    dst.load_safetensors(&path).unwrap();
    let w = |m: &recallseg_models::DeepLab| snapshot(m)["backbone.conv1.weight"].clone();
    let (a, b) = (w(&src), w(&dst));
    assert!(a
        .iter()
        .zip(&b)
        .all(|(x, y)| (x - y).abs() <= 1e-3 * x.abs().max(1e-2)));
}

#[cfg(feature = "hub")]
#[test]
fn hub_resolution_uses_the_cache_and_respects_offline_mode() {
    let dir = tempfile::tempdir().unwrap();
    // The only test of this binary that touches the environment.
    std::env::set_var("HF_HOME", dir.path());
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let src = PretrainedSource::Hub(HubFile {
        repo: "timm/resnet18.tv_in1k".into(),
        file: "model.safetensors".into(),
        revision: None,
    });
    let e = src.resolve(Backbone::Resnet18).unwrap_err().to_string();
    assert!(
        e.contains("timm/resnet18.tv_in1k") && e.contains("HF_HUB_OFFLINE"),
        "{e}"
    );
    // A file present in the cache resolves offline (hub cache layout: refs + snapshots).
    let repo_dir = dir
        .path()
        .join("hub")
        .join("models--timm--resnet18.tv_in1k");
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs").join("main"), "abc123").unwrap();
    let snap = repo_dir.join("snapshots").join("abc123");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::write(snap.join("model.safetensors"), b"x").unwrap();
    let p = PretrainedSource::Imagenet
        .resolve(Backbone::Resnet18)
        .unwrap();
    assert_eq!(p, snap.join("model.safetensors"));
}
