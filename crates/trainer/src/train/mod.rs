//! The training loop.
//!
//! Each step: the next batch (deterministic from the seed, the epoch and the position in it) is
//! put on the device, the model runs in training mode with a dropout seed drawn from the run's
//! RNG, the loss and its gradients are computed, and the optimiser steps with the scheduled
//! learning rate. The per-class weights the loss applied are logged (Fig. 4). Every
//! `val_every` steps the model is evaluated on the validation split and `best.safetensors` keeps
//! the best mean IoU; every `checkpoint_every` steps `last.safetensors` is written.
//!
//! Everything that influences the next step — model tensors (BatchNorm statistics included),
//! optimiser moments, the step, the RNG — is in the checkpoint, so a resumed run continues bit
//! for bit on the CPU. A NaN or infinite loss (or update) stops the run before the update, after
//! saving the last good state to `last.safetensors`. An interrupt (Ctrl-C, see
//! [`interrupt_flag`]) writes `last.safetensors` and returns. The loop itself is
//! [`Trainer`] (`trainer.rs`); this module holds what it is built from.

use crate::config::{model_config, TrainConfig};
use crate::data::{eval_loader, open_split, parse_split, train_loader};
use crate::optim::NamedVar;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use recallseg_data::{ClassInfo, Loader, SegDataset};
use recallseg_losses::{LossContext, SegLoss};
use recallseg_models::{BuildOptions, DeepLab};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

mod strategy;
mod trainer;

pub use strategy::{EarlyStop, KeepBest, StopRule, Stopping};
pub use trainer::Trainer;

/// Why a run ended without finishing.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The optimiser refused an update that would make the model non-finite.
    #[error(
        "step {step}: {update}: the update was not applied; {checkpoint}. Try a lower optim.lr \
         (or gradient-friendlier settings)."
    )]
    NonFiniteUpdate {
        /// The step that produced it (1-based).
        step: u64,
        /// What was not finite.
        update: crate::optim::NonFiniteUpdate,
        /// What was saved, or the last checkpoint.
        checkpoint: String,
    },
    /// The forward pass made a model buffer (a BatchNorm running statistic) non-finite.
    #[error(
        "step {step}: the forward pass made {count} values of `{tensor}` NaN or infinite (the \
         activations overflow); the step was undone; {checkpoint}. Try a lower optim.lr."
    )]
    NonFiniteBuffer {
        /// The step that produced it (1-based).
        step: u64,
        /// The buffer's `VarMap` name.
        tensor: String,
        /// How many of its values are not finite.
        count: usize,
        /// What was saved, or the last checkpoint.
        checkpoint: String,
    },
    /// The loss became NaN or infinite; nothing of that step was applied.
    #[error(
        "the loss became {value} at step {step} (loss {loss}, or the model's output did): the \
         run stopped before updating the model; {checkpoint}. Try a lower optim.lr."
    )]
    NonFiniteLoss {
        /// The step that produced it (1-based).
        step: u64,
        /// `NaN` or `inf`.
        value: String,
        /// The loss's name.
        loss: String,
        /// What was saved, or the last checkpoint.
        checkpoint: String,
    },
}

/// Installs the handlers of SIGINT (Ctrl-C), SIGTERM and SIGHUP that set [`interrupt_flag`]
/// (see [`crate::signals`]; a second Ctrl-C exits at once). Installing twice is harmless.
pub fn install_ctrlc() {
    if let Err(e) = crate::signals::install_signal_handlers() {
        note!("warning: {e}; a signal will stop the run without a checkpoint");
    }
}

/// Options of [`train`] that are not part of the configuration.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Continue from `out_dir/last.safetensors` if it exists (its config must match).
    pub resume: bool,
    /// Replace the run `out_dir` holds (its `last`, `best` and log are removed first). Without
    /// it (and without `resume`), a folder holding a run is an error: nothing is overwritten.
    pub overwrite: bool,
    /// Stop (after writing a checkpoint) when this flag becomes true.
    pub interrupt: Option<Arc<AtomicBool>>,
    /// Show a progress bar (otherwise plain log lines).
    pub progress_bar: bool,
    /// Print nothing but errors.
    pub quiet: bool,
    /// Label of the progress display (the loss name by default).
    pub label: Option<String>,
    /// Stop after this many steps of this invocation (tests of resuming); `None` = run to
    /// `train.iters`.
    pub stop_after: Option<u64>,
    /// Do not evaluate `data.test_split` when the run ends (the comparison evaluates the
    /// weights it chose itself). Default `false`: a run that ends in this invocation reports
    /// the test split (log, `test.json`, [`TrainOutcome::test`]).
    pub skip_test: bool,
    /// The data-parallel group this process is a rank of (`None`: one process). Every rank
    /// runs the same configuration on its shard of each batch; rank 0 alone writes the run
    /// folder (checkpoints, logs, reports) and prints.
    pub communicator: Option<recallseg_distributed::SharedCommunicator>,
}

/// What a finished (or interrupted) run produced.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// Steps completed.
    pub step: u64,
    /// Whether `train.iters` was reached (false when interrupted or stopped early).
    pub finished: bool,
    /// Best validation mean IoU and its step.
    pub best: Option<(f64, u64)>,
    /// `out_dir/last.safetensors`.
    pub last_checkpoint: PathBuf,
    /// Seconds spent in training steps (without validation), over every invocation of the run
    /// (a resumed run adds to the time stored in its checkpoint).
    pub train_seconds: f64,
    /// Mean loss of the last logged interval.
    pub last_loss: Option<f64>,
    /// The signal that stopped the run (when it was stopped by one, see [`crate::signals`]).
    pub stop_signal: Option<crate::signals::StopSignal>,
    /// Early stopping ended the run before `train.iters` (`train.early_stop`); such a run
    /// counts as `finished`, and resuming it trains no further.
    pub early_stopped: bool,
    /// The test split evaluated with the final weights when the run ended in this invocation
    /// (`None`: skipped, not ended, or the dataset has no such split).
    pub test: Option<recallseg_metrics::Report>,
}

/// A model on a fresh `VarMap`, with the parameters the optimiser updates and their names.
pub struct BuiltModel {
    /// Every tensor to checkpoint.
    pub varmap: VarMap,
    /// The network.
    pub model: DeepLab,
    /// The trainable parameters with their `VarMap` names.
    pub trainable: Vec<NamedVar>,
}

/// Builds the model of `cfg` on `device`; loads pretrained weights when `load_pretrained`.
pub fn build_model(
    cfg: &TrainConfig,
    n_classes: usize,
    device: &Device,
    load_pretrained: bool,
) -> anyhow::Result<BuiltModel> {
    build_model_with(
        cfg,
        n_classes,
        device,
        load_pretrained,
        &BuildOptions::default(),
    )
}

/// [`build_model`] with the models' build options (SyncBatchNorm over a data-parallel group).
pub fn build_model_with(
    cfg: &TrainConfig,
    n_classes: usize,
    device: &Device,
    load_pretrained: bool,
    options: &BuildOptions,
) -> anyhow::Result<BuiltModel> {
    let mc = model_config(cfg, n_classes);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let model = if load_pretrained {
        let (model, report) = DeepLab::from_pretrained_with(&mc, vb, options)?;
        if let Some(r) = report {
            // One line on the terminal; every tensor name in the run folder.
            note!("pretrained weights: {r}");
            let out = &cfg.train.out_dir;
            if out.is_dir() {
                let list = |title: &str, names: &[String]| {
                    format!("{title} ({}):\n{}\n", names.len(), names.join("\n"))
                };
                let text = format!(
                    "{r}\n\n{}\n{}\n{}\n{}",
                    list("loaded", &r.loaded),
                    list("re-initialised (class count differs)", &r.reinitialised),
                    list("kept their initialisation", &r.kept_initialisation),
                    list("ignored tensors of the file", &r.ignored)
                );
                let path = out.join("pretrained_load.txt");
                if let Err(e) = recallseg_files::write_bytes_atomic(&path, text.as_bytes()) {
                    note!("warning: {e}");
                }
            }
        }
        model
    } else {
        DeepLab::new_with(&mc, vb, options)?
    };
    let trainable_ids: std::collections::HashSet<_> = model
        .trainable_vars()
        .iter()
        .map(|v| v.as_tensor().id())
        .collect();
    let trainable = model
        .named_vars()
        .iter()
        .filter(|nv| trainable_ids.contains(&nv.var.as_tensor().id()))
        .map(|nv| NamedVar {
            name: nv.name.clone(),
            var: nv.var.clone(),
        })
        .collect();
    Ok(BuiltModel {
        varmap,
        model,
        trainable,
    })
}

/// The datasets of a run.
pub struct RunData {
    /// Class names, palette, ignore index.
    pub classes: ClassInfo,
    /// The training loader.
    pub train: Loader,
    /// The validation loader (`None` when `val_every = 0` and no final validation is wanted).
    pub val: Option<Loader>,
    /// Whether `val` holds only this rank's share of the validation split (whole batches dealt
    /// out over the ranks, [`recallseg_data::Shard::whole_batches`]), whose counts and loss the
    /// ranks then sum; `false`: the whole split.
    pub val_sharded: bool,
    /// Training pixel counts per class (for WeightedCE / BalancedCE).
    pub class_pixel_counts: Vec<u64>,
}

/// Opens the training and validation data of `cfg`.
pub fn open_run_data(cfg: &TrainConfig) -> anyhow::Result<RunData> {
    open_run_data_shard(cfg, recallseg_data::Shard::default())
}

/// [`open_run_data`] for one data-parallel rank: its training loader yields `shard` of every
/// batch (`train.batch_size` is the global batch). Its validation loader holds its share of the
/// validation batches when there are at least as many batches as ranks (else every rank
/// validates the whole split).
pub fn open_run_data_shard(
    cfg: &TrainConfig,
    shard: recallseg_data::Shard,
) -> anyhow::Result<RunData> {
    let d = &cfg.data;
    let train_ds = open_split(d, parse_split("data.train_split", &d.train_split)?)?;
    let classes = train_ds.class_info().clone();
    let train_ds = crate::data::limit(train_ds, d.max_train_images);
    let class_pixel_counts = recallseg_data::stats::class_pixel_counts(&*train_ds)?;
    let train = train_loader(d, train_ds, cfg.train.batch_size, cfg.train.seed, shard)?;
    let val_ds = open_split(d, parse_split("data.val_split", &d.val_split)?)?;
    let mut val_ds = crate::data::limit(val_ds, d.max_eval_images);
    let val_batch = cfg.train.batch_size.max(4);
    let val_sharded = shard.count > 1 && val_ds.len().div_ceil(val_batch) >= shard.count;
    if val_sharded {
        let items = shard.whole_batches(val_ds.len(), val_batch);
        val_ds = recallseg_data::subset(val_ds, items)?;
    }
    let val = Some(eval_loader(d, val_ds, val_batch)?);
    Ok(RunData {
        classes,
        train,
        val,
        val_sharded,
        class_pixel_counts,
    })
}

/// Checkpoint key of a stateful loss's state (RecallCE's moving-average recall).
const LOSS_STATE_KEY: &str = "loss.state";
/// Checkpoint key of the auxiliary head's loss state (`model.aux_head`; its own instance of the
/// configured loss, so a moving average is kept per head).
const AUX_LOSS_STATE_KEY: &str = "loss.aux.state";

/// The losses' cross-step state as checkpoint tensors (empty for stateless losses).
fn loss_state_tensors(
    loss: &dyn SegLoss,
    aux: Option<&dyn SegLoss>,
) -> candle_core::Result<HashMap<String, Tensor>> {
    let mut extra = HashMap::new();
    for (key, l) in [(LOSS_STATE_KEY, Some(loss)), (AUX_LOSS_STATE_KEY, aux)] {
        if let Some(state) = l.and_then(|l| l.state()) {
            let n = state.len();
            extra.insert(key.to_string(), Tensor::from_vec(state, n, &Device::Cpu)?);
        }
    }
    Ok(extra)
}

/// Restores what [`loss_state_tensors`] stored, so a resumed stateful loss continues exactly.
fn restore_loss_state(
    loss: &mut dyn SegLoss,
    aux: Option<&mut dyn SegLoss>,
    extra: &HashMap<String, Tensor>,
    path: &Path,
) -> anyhow::Result<()> {
    let restore = |l: &mut dyn SegLoss, key: &str| -> anyhow::Result<()> {
        let state = match extra.get(key) {
            Some(t) => t.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?,
            None => Vec::new(),
        };
        l.load_state(&state)
            .map_err(|e| anyhow::anyhow!("{}: {key}: {e}", path.display()))
    };
    restore(loss, LOSS_STATE_KEY)?;
    if let Some(a) = aux {
        restore(a, AUX_LOSS_STATE_KEY)?;
    }
    Ok(())
}

/// Builds the configured loss for the dataset.
pub fn build_loss(
    cfg: &TrainConfig,
    classes: &ClassInfo,
    pixel_counts: &[u64],
) -> anyhow::Result<Box<dyn SegLoss>> {
    let lc = &cfg.loss;
    let ctx = LossContext::new(classes.n_classes())
        .with_ignore_index(classes.ignore_index as u32)
        .with_class_pixel_counts(pixel_counts.to_vec());
    Ok(lc.build(&ctx)?)
}

/// Trains a model as `cfg` says, writing into `cfg.train.out_dir` ([`Trainer::open`], then
/// [`Trainer::run`]).
///
/// What is guaranteed when things go wrong (see `docs/training.md`): the run folder is locked
/// for the run's lifetime; a folder holding another run is refused unless `opts.resume` or
/// `opts.overwrite`; an interrupt writes `last.safetensors` and returns an unfinished outcome;
/// an error after the first step (unreadable image, non-finite loss or update, failed
/// validation) first writes the last good state to `last.safetensors`; checkpoints never hold
/// non-finite tensors.
///
/// ```
/// use recallseg_trainer::config::Preset;
/// use recallseg_trainer::train::{train, TrainOptions};
///
/// # fn main() -> anyhow::Result<()> {
/// let dir = tempfile::tempdir()?;
/// let root = dir.path().join("synthetic");
/// let out = dir.path().join("run");
/// // A tiny generated dataset: 10 images of 64×32 in SYNTHIA's layout.
/// let synthetic = recallseg_data::SyntheticConfig {
///     width: 64, height: 32, frames_per_folder: 10,
///     cameras: vec!["Omni_F".into()], sides: vec!["Stereo_Left".into()],
///     ..Default::default()
/// };
/// recallseg_data::generate_synthia(&root, &synthetic)?;
/// let q = |p: &std::path::Path| format!("{:?}", p.display().to_string()); // a TOML string
/// // The quick preset, shrunk to a few seconds.
/// let cfg = Preset::SynthiaQuick.config(&[
///     format!("data.root={}", q(&root)),
///     "data.generate_synthetic=false".into(),
///     "data.height=32".into(), "data.width=64".into(),
///     "model.backbone_width=4".into(), "model.head_channels=8".into(),
///     "model.low_level_channels=4".into(),
///     "loss.name=\"recall_ce\"".into(),
///     "train.iters=2".into(), "train.batch_size=2".into(), "train.val_every=2".into(),
///     format!("train.out_dir={}", q(&out)),
/// ])?;
/// let outcome = train(&cfg, &TrainOptions { quiet: true, ..TrainOptions::default() })?;
/// assert!(outcome.finished && outcome.step == 2);
/// assert!(out.join("best.safetensors").exists() && out.join("log.jsonl").exists());
/// # Ok(())
/// # }
/// ```
pub fn train(cfg: &TrainConfig, opts: &TrainOptions) -> anyhow::Result<TrainOutcome> {
    Trainer::open(cfg, opts)?.run()
}

/// Whether two configurations describe the same run up to what may change on resume.
pub fn same_run(a: &TrainConfig, b: &TrainConfig) -> bool {
    run_differences(a, b).is_empty()
}

/// What makes `now` another run than `saved` (empty when it is the same run up to what may
/// change on resume): one line per differing field, `key: saved → now`, or the reason the
/// schedule's `train.iters` may not change.
pub fn run_differences(saved: &TrainConfig, now: &TrainConfig) -> Vec<String> {
    let norm = |c: &TrainConfig| {
        let mut c = c.clone();
        c.train.iters = 0;
        c.train.log_every = 1;
        c.train.val_every = 0;
        c.train.checkpoint_every = 0;
        c.train.device = String::new();
        c.train.out_dir = PathBuf::new();
        c.data.workers = 0;
        // How each batch is spread over micro-batches and ranks is how the run executes, not
        // what it computes: a run may resume with another number of ranks.
        c.train.accumulate = 1;
        c.train.sync_batch_norm = false;
        c.train.check_replicas_every = 0;
        // How a fresh model starts does not matter to a run that continues from its
        // checkpoint (every parameter comes from there); a config stored before `init` existed
        // reads as today's default.
        c.model.init = recallseg_models::InitScheme::default();
        c.model.pretrained = None;
        // How the model is run at test time does not change training.
        c.inference = crate::inference::InferenceConfig::default();
        // What evaluation reports show is not part of the run.
        c.metrics = recallseg_metrics::ReportSettings::default();
        c
    };
    let mut diffs = Vec::new();
    let (a, b) = (norm(saved), norm(now));
    if a != b {
        let (fa, fb) = (flat_fields(&a), flat_fields(&b));
        for (key, va) in &fa {
            match fb.get(key) {
                Some(vb) if vb == va => {}
                Some(vb) => diffs.push(format!("{key}: {va} → {vb}")),
                None => diffs.push(format!("{key}: {va} → (unset)")),
            }
        }
        for (key, vb) in &fb {
            if !fa.contains_key(key) {
                diffs.push(format!("{key}: (unset) → {vb}"));
            }
        }
        if diffs.is_empty() {
            diffs.push("the configurations differ".into());
        }
    }
    // Poly and cosine schedules depend on iters, so changing iters with them is not the same
    // run (multi-step milestones are absolute steps).
    let by_iters = matches!(
        saved.schedule.kind,
        crate::config::ScheduleKind::Poly | crate::config::ScheduleKind::Cosine
    );
    if by_iters && saved.train.iters != now.train.iters && saved.schedule.kind == now.schedule.kind
    {
        diffs.push(format!(
            "train.iters: {} → {} (the {:?} schedule's learning rate at each step depends on \
             train.iters, so a longer or shorter {:?} run is another run)",
            saved.train.iters, now.train.iters, saved.schedule.kind, saved.schedule.kind
        ));
    }
    diffs
}

/// Every leaf of a configuration as `section.key` → its TOML value.
fn flat_fields(c: &TrainConfig) -> std::collections::BTreeMap<String, String> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut std::collections::BTreeMap<String, String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    if let Ok(v) = toml::Value::try_from(c) {
        walk("", &v, &mut out);
    }
    out
}

/// Opens the split `split` of the configured dataset for evaluation.
pub fn open_eval(cfg: &TrainConfig, split: &str) -> anyhow::Result<(Arc<dyn SegDataset>, Loader)> {
    let ds = open_split(&cfg.data, parse_split("split", split)?)?;
    let ds = crate::data::limit(ds, cfg.data.max_eval_images);
    let loader = eval_loader(&cfg.data, ds.clone(), cfg.train.batch_size.max(4))?;
    Ok((ds, loader))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;

    #[test]
    fn same_run_ignores_how_a_fresh_model_would_start() {
        let a = Preset::SynthiaQuick.config(&[]).unwrap();
        let mut b = a.clone();
        b.model.init = recallseg_models::InitScheme::PytorchDefault;
        assert!(same_run(&a, &b), "init only matters for a fresh start");
        // A config stored before `init` existed (no key) is the same run as today's preset.
        let old = a.to_toml().unwrap().replace("init = \"paper_code\"\n", "");
        assert!(!old.contains("init ="), "{old}");
        let stored: TrainConfig = toml::from_str(&old).unwrap();
        assert!(same_run(&stored, &a));
        b.model.head_channels += 4;
        assert!(!same_run(&a, &b));
        assert_eq!(
            run_differences(&a, &b),
            [format!(
                "model.head_channels: {} → {}",
                a.model.head_channels,
                a.model.head_channels + 4
            )]
        );
    }

    #[test]
    fn pretrained_weights_are_reported_in_one_line_and_listed_in_the_run_folder() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        std::fs::create_dir_all(&out).unwrap();
        let mut cfg = Preset::SynthiaQuick
            .config(&[
                "model.backbone_width=64".into(),
                format!("train.out_dir={:?}", out.display().to_string()),
            ])
            .unwrap();
        // A DeepLab checkpoint of the same architecture, saved under the model's own names.
        let built = build_model(&cfg, 5, &Device::Cpu, false).unwrap();
        let file = dir.path().join("deeplab.safetensors");
        built.varmap.save(&file).unwrap();
        cfg.model.pretrained = Some(recallseg_models::PretrainedSource::Path(file.clone()));
        build_model(&cfg, 5, &Device::Cpu, true).unwrap();
        let listed = std::fs::read_to_string(out.join("pretrained_load.txt")).unwrap();
        let first = listed.lines().next().unwrap();
        assert!(
            first.starts_with("loaded ")
                && first.contains("DeepLab model")
                && first.contains("deeplab.safetensors"),
            "{first}"
        );
        assert!(listed.contains("\nloaded ("), "{listed}");
        assert!(
            listed.contains("backbone.conv1.weight"),
            "the names are listed: {listed}"
        );
    }

    #[test]
    fn a_longer_poly_run_is_another_run_and_the_reason_says_why() {
        let mut a = Preset::SynthiaQuick.config(&[]).unwrap();
        a.schedule.kind = crate::config::ScheduleKind::Poly;
        let mut b = a.clone();
        b.train.iters += 100;
        let d = run_differences(&a, &b);
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            d[0].starts_with(&format!(
                "train.iters: {} → {}",
                a.train.iters, b.train.iters
            )) && d[0].contains("Poly schedule's learning rate"),
            "{d:?}"
        );
        // With a constant schedule more iterations continue the same run.
        a.schedule.kind = crate::config::ScheduleKind::Constant;
        b.schedule.kind = crate::config::ScheduleKind::Constant;
        assert!(same_run(&a, &b));
    }
}
