//! Helpers shared by the trainer's integration tests: a tiny generated dataset and a tiny run.
#![allow(dead_code)]

use candle_core::Device;
use recallseg_data::{generate_synthia, SyntheticConfig};
use recallseg_trainer::checkpoint::Checkpoint;
use recallseg_trainer::config::{Preset, TrainConfig};
use recallseg_trainer::log::{read_log, LogRecord};
use recallseg_trainer::train::TrainOptions;
use std::path::Path;

/// 10 images of 64×32 in one camera folder: 7 train, 1 val, 2 test.
pub(crate) fn tiny_dataset(root: &Path) {
    let cfg = SyntheticConfig {
        seed: 3,
        width: 64,
        height: 32,
        cameras: vec!["Omni_F".into()],
        sides: vec!["Stereo_Left".into()],
        frames_per_folder: 10,
        ..SyntheticConfig::default()
    };
    generate_synthia(root, &cfg).unwrap();
}

pub(crate) fn tiny_config(root: &Path, out: &Path, extra: &[&str]) -> TrainConfig {
    let mut o: Vec<String> = vec![
        format!("data.root={:?}", root.display().to_string()),
        "data.generate_synthetic=false".into(),
        "data.height=32".into(),
        "data.width=64".into(),
        "data.workers=1".into(),
        "model.backbone_width=4".into(),
        "model.head_channels=8".into(),
        "model.low_level_channels=4".into(),
        "train.batch_size=2".into(),
        "train.iters=4".into(),
        "train.val_every=2".into(),
        "train.log_every=1".into(),
        "train.checkpoint_every=2".into(),
        "train.seed=7".into(),
        format!("train.out_dir={:?}", out.display().to_string()),
    ];
    o.extend(extra.iter().map(|s| s.to_string()));
    Preset::SynthiaQuick.config(&o).unwrap()
}

pub(crate) fn quiet() -> TrainOptions {
    TrainOptions {
        quiet: true,
        ..TrainOptions::default()
    }
}

pub(crate) fn train_losses(out: &Path) -> Vec<(u64, f64)> {
    read_log(&out.join("log.jsonl"))
        .unwrap()
        .into_iter()
        .filter_map(|r| match r {
            LogRecord::Train { step, loss, .. } => Some((step, loss)),
            _ => None,
        })
        .collect()
}

pub(crate) fn model_bytes(path: &Path) -> Vec<(String, Vec<u8>)> {
    let ck = Checkpoint::load(path, &Device::Cpu).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = ck
        .model
        .iter()
        .chain(ck.optim.iter())
        .map(|(k, t)| {
            let f: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            (k.clone(), f.iter().flat_map(|x| x.to_le_bytes()).collect())
        })
        .collect();
    v.sort();
    v
}
