//! Opening the configured dataset splits and loaders, and turning batches into tensors.

use crate::config::{DataConfig, DatasetKind};
use candle_core::{Device, Tensor};
use recallseg_data::transform::Augment;
use recallseg_data::{
    generate_synthia, Batch, CityscapesDataset, CityscapesOptions, FolderDataset, Loader,
    LoaderConfig, SegDataset, Split, SyntheticConfig, SynthiaDataset, SynthiaOptions,
};
use std::path::Path;
use std::sync::Arc;

/// Parses a split name (`train`, `val`, `test`), naming the config field on error.
pub fn parse_split(field: &str, name: &str) -> anyhow::Result<Split> {
    name.parse::<Split>()
        .map_err(|_| anyhow::anyhow!("{field}: `{name}` is not one of train, val, test"))
}

/// A short explanation of where to get a dataset and how to lay it out.
pub fn missing_dataset_help(kind: DatasetKind, root: &Path) -> String {
    match kind {
        DatasetKind::Synthia => format!(
            "SYNTHIA was not found at {root}.\n\
             Download SYNTHIA-SEQS-05-SUMMER (the paper's Synthia-Summer) from \
             https://synthia-dataset.net/downloads/ and unpack it so that\n  \
             {root}/SYNTHIA-SEQS-05-SUMMER/RGB/Stereo_Left/Omni_F/000000.png\n  \
             {root}/SYNTHIA-SEQS-05-SUMMER/GT/LABELS/Stereo_Left/Omni_F/000000.png\n\
             exist (docs/data.md has the details), or pass --data PATH.\n\
             Without the dataset, `cargo xtask reproduce synthia --quick` runs the same pipeline \
             on a generated synthetic Synthia-format dataset in minutes.",
            root = root.display()
        ),
        DatasetKind::Cityscapes => format!(
            "Cityscapes was not found at {root}.\n\
             Register at https://www.cityscapes-dataset.com/ and download leftImg8bit_trainvaltest.zip \
             and gtFine_trainvaltest.zip; unpack both into {root} so that\n  \
             {root}/leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png\n  \
             {root}/gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png\n\
             exist (docs/data.md has the details), or pass --data PATH.\n\
             Without a dataset, `cargo xtask reproduce synthia --quick` runs the pipeline on \
             generated synthetic data.",
            root = root.display()
        ),
        DatasetKind::Folder => format!(
            "the folder dataset description {} does not exist (docs/data.md describes the format)",
            root.display()
        ),
    }
}

/// Generates the synthetic Synthia-format dataset at `cfg.root` when `cfg.generate_synthetic`
/// is set and the folder holds no dataset yet. Returns whether it generated one.
pub fn ensure_synthetic(cfg: &DataConfig, synth: &SyntheticConfig) -> anyhow::Result<bool> {
    if !cfg.generate_synthetic || cfg.kind != DatasetKind::Synthia {
        return Ok(false);
    }
    let seq_dir = cfg.root.join(&synth.sequence);
    if seq_dir.exists() {
        // The generator publishes the folder whole (a rename at the end), so a folder that is
        // there is complete unless an older version was stopped half-way, or files went
        // missing: count them.
        let expected = synth.frames_per_folder * synth.cameras.len() * synth.sides.len();
        let count = |sub: &[&str]| -> usize {
            let mut n = 0;
            for side in &synth.sides {
                for cam in &synth.cameras {
                    let mut d = seq_dir.clone();
                    d.extend(sub);
                    d.push(side);
                    d.push(cam);
                    n += std::fs::read_dir(&d).map_or(0, |it| {
                        it.filter_map(Result::ok)
                            .filter(|e| e.path().extension().is_some_and(|x| x == "png"))
                            .count()
                    });
                }
            }
            n
        };
        let (images, labels) = (count(&["RGB"]), count(&["GT", "LABELS"]));
        if images < expected || labels < expected {
            anyhow::bail!(
                "{} holds an incomplete synthetic dataset ({images} images and {labels} label \
                 files of {expected}; generation was interrupted, or files were removed): \
                 delete the folder and it is generated again",
                seq_dir.display()
            );
        }
        return Ok(false);
    }
    note!(
        "generating the synthetic Synthia-format dataset in {} ({} images of {}x{}) ...",
        cfg.root.display(),
        synth.frames_per_folder * synth.cameras.len() * synth.sides.len(),
        synth.width,
        synth.height
    );
    generate_synthia(&cfg.root, synth)
        .map_err(|e| anyhow::anyhow!("generating the synthetic dataset: {e}"))?;
    Ok(true)
}

/// The synthetic dataset the quick presets generate: the generator's default (320 images of
/// 384×192 in `SYNTHIA-SEQS-05-SUMMER`), seed 0.
pub fn quick_synthetic_config() -> SyntheticConfig {
    SyntheticConfig::default()
}

/// Whether `root` has the top of the dataset's layout: a SYNTHIA sequence (`RGB/` and
/// `GT/LABELS/`, at the root or one level below) or Cityscapes' `leftImg8bit/` and `gtFine/`.
fn layout_present(kind: DatasetKind, root: &Path) -> bool {
    let sequence = |d: &Path| d.join("RGB").is_dir() && d.join("GT").join("LABELS").is_dir();
    match kind {
        DatasetKind::Synthia => {
            sequence(root)
                || std::fs::read_dir(root)
                    .is_ok_and(|rd| rd.filter_map(|e| e.ok()).any(|e| sequence(&e.path())))
        }
        DatasetKind::Cityscapes => {
            root.join("leftImg8bit").is_dir() && root.join("gtFine").is_dir()
        }
        DatasetKind::Folder => true,
    }
}

/// Opens one split of the configured dataset.
pub fn open_split(cfg: &DataConfig, split: Split) -> anyhow::Result<Arc<dyn SegDataset>> {
    let root = &cfg.root;
    let missing = !root.exists();
    if missing {
        anyhow::bail!("{}", missing_dataset_help(cfg.kind, root));
    }
    // The download instructions only when the dataset's layout is missing; an empty split or an
    // image without its label in a dataset that is there gets its own message alone.
    let explain = |e: recallseg_data::DataError| {
        if layout_present(cfg.kind, root) {
            anyhow::anyhow!("{e}")
        } else {
            anyhow::anyhow!("{e}\n\n{}", missing_dataset_help(cfg.kind, root))
        }
    };
    let ds: Arc<dyn SegDataset> = match cfg.kind {
        DatasetKind::Synthia => {
            Arc::new(SynthiaDataset::open(root, split, SynthiaOptions::default()).map_err(explain)?)
        }
        DatasetKind::Cityscapes => Arc::new(
            CityscapesDataset::open(root, split, CityscapesOptions::default()).map_err(explain)?,
        ),
        DatasetKind::Folder => {
            let ds = FolderDataset::open(root, split)?;
            if let Some(line) = recallseg_data::skipped_summary(ds.skipped()) {
                crate::console::warn_once(&line);
            }
            Arc::new(ds)
        }
    };
    Ok(ds)
}

/// The training loader: resize to `width × height` (or random crops with `crop`), optional
/// flips, shuffled per epoch from `seed`, incomplete last batch dropped; `shard` of every batch
/// (the whole batch by default, one rank's part under data parallelism).
pub fn train_loader(
    cfg: &DataConfig,
    ds: Arc<dyn SegDataset>,
    batch_size: usize,
    seed: u64,
    shard: recallseg_data::Shard,
) -> anyhow::Result<Loader> {
    let ds = limit(ds, cfg.max_train_images);
    if ds.len() < batch_size {
        anyhow::bail!(
            "train.batch_size: {batch_size} is larger than the {} training images of {}",
            ds.len(),
            ds.name()
        );
    }
    let scale = cfg.scale.map(|[lo, hi]| (lo, hi));
    let augment =
        (cfg.crop || cfg.hflip || scale.is_some() || cfg.color_jitter.is_some()).then(|| Augment {
            scale,
            scale_step: cfg.scale_step,
            // Without `crop`, the random scale is cropped (or padded) back to the resized size.
            crop: cfg.crop.then_some((cfg.width, cfg.height)),
            hflip: cfg.hflip,
            color_jitter: cfg.color_jitter,
        });
    let lc = LoaderConfig {
        batch_size,
        shuffle: true,
        seed,
        drop_last: true,
        resize: if cfg.crop {
            None
        } else {
            Some((cfg.width, cfg.height))
        },
        resize_method: cfg.resize_method,
        augment,
        normalize: None,
        num_threads: cfg.workers.max(1),
        prefetch: 2,
        cache_resized: !cfg.crop && (cfg.width * cfg.height <= 512 * 256),
        skip_bad: false,
        shard,
    };
    Ok(Loader::new(ds, lc)?)
}

/// An evaluation loader: dataset order, resized to the evaluation size, every item.
pub fn eval_loader(
    cfg: &DataConfig,
    ds: Arc<dyn SegDataset>,
    batch_size: usize,
) -> anyhow::Result<Loader> {
    let ds = limit(ds, cfg.max_eval_images);
    let (h, w) = cfg.eval_size();
    let mut lc = LoaderConfig::eval(batch_size, Some((w, h)));
    lc.num_threads = cfg.workers.max(1);
    lc.resize_method = cfg.resize_method;
    lc.cache_resized = w * h <= 512 * 256;
    Ok(Loader::new(ds, lc)?)
}

/// A dataset restricted to its first `max` items (`0` = all); see [`recallseg_data::prefix`].
pub fn limit(ds: Arc<dyn SegDataset>, max: usize) -> Arc<dyn SegDataset> {
    recallseg_data::prefix(ds, max)
}

/// A batch as tensors on `device`: images `(N, 3, H, W)` f32 and labels `(N, H, W)` u8.
pub fn batch_tensors(batch: &Batch, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let (n, h, w) = (batch.n, batch.height, batch.width);
    let x = Tensor::from_slice(&batch.images, (n, 3, h, w), device)?;
    let y = Tensor::from_slice(&batch.labels, (n, h, w), device)?;
    Ok((x, y))
}
