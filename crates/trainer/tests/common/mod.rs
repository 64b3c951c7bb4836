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

/// A folder dataset of 12 generated 64×32 images in `root`: grey background, a blue band
/// ("road stripe") and a small red square ("dot", rare), masks with those ids and a few
/// ignored pixels. Returns the class file (`root/classes.toml`, split 70/10/20 by the folder
/// dataset's shuffle).
pub(crate) fn tiny_folder_dataset(root: &Path) -> std::path::PathBuf {
    let (w, h) = (64u32, 32u32);
    std::fs::create_dir_all(root.join("images")).unwrap();
    std::fs::create_dir_all(root.join("masks")).unwrap();
    for k in 0..12u32 {
        let band = 8 + (k % 5) * 3;
        let (dx, dy) = (5 + (k * 7) % 50, 2 + (k * 3) % 4);
        let mut img = image::RgbImage::new(w, h);
        let mut mask = image::GrayImage::new(w, h);
        for y in 0..h {
            for x in 0..w {
                let noise = ((x * 31 + y * 17 + k * 13) % 23) as u8;
                let (class, rgb) = if (dx..dx + 4).contains(&x) && (dy..dy + 4).contains(&y) {
                    (2u8, [200 + noise, 30, 30])
                } else if (band..band + 6).contains(&y) {
                    (1, [40, 60, 180 + noise])
                } else {
                    (0, [110 + noise, 110 + noise, 110 + noise])
                };
                img.put_pixel(x, y, image::Rgb(rgb));
                let ignored = x == 0 && y % 8 == 0;
                mask.put_pixel(x, y, image::Luma([if ignored { 255 } else { class }]));
            }
        }
        img.save(root.join(format!("images/{k:03}.png"))).unwrap();
        mask.save(root.join(format!("masks/{k:03}.png"))).unwrap();
    }
    let classes = root.join("classes.toml");
    std::fs::write(
        &classes,
        "classes = [\n  { name = \"background\", color = [128, 128, 128] },\n  \
         { name = \"road stripe\", color = [0, 0, 255] },\n  { name = \"dot\" },\n]\n\
         images = \"images\"\nmasks = \"masks\"\n",
    )
    .unwrap();
    classes
}

/// The trained parameters of a checkpoint, by name. BatchNorm's running statistics are left
/// out: one process accumulating moves them once per micro-batch, ranks once per step (then
/// averaged); training never reads them.
pub(crate) fn trained_params(path: &Path) -> Vec<(String, Vec<f32>)> {
    let ck = Checkpoint::load(path, &Device::Cpu).unwrap();
    let mut v: Vec<(String, Vec<f32>)> = ck
        .model
        .iter()
        .filter(|(k, _)| !k.ends_with(".running_mean") && !k.ends_with(".running_var"))
        .map(|(k, t)| (k.clone(), t.flatten_all().unwrap().to_vec1().unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Largest difference between two models, relative to the largest magnitude of each tensor.
pub(crate) fn max_rel_diff(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut worst = 0.0f32;
    for ((na, va), (nb, vb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        let scale = va.iter().fold(1e-3f32, |m, x| m.max(x.abs()));
        for (x, y) in va.iter().zip(vb) {
            worst = worst.max((x - y).abs() / scale);
        }
    }
    worst
}

/// A `train` log line: step, loss, the class weights applied.
pub(crate) type TrainRecord = (u64, f64, Option<Vec<Option<f32>>>);

/// The `train` lines of a run's log.
pub(crate) fn train_records(out: &Path) -> Vec<TrainRecord> {
    read_log(&out.join("log.jsonl"))
        .unwrap()
        .into_iter()
        .filter_map(|r| match r {
            LogRecord::Train {
                step,
                loss,
                class_weights,
                ..
            } => Some((step, loss, class_weights)),
            _ => None,
        })
        .collect()
}
