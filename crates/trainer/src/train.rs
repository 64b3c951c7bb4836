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
//! for bit on the CPU. A NaN or infinite loss stops the run before the update, leaving the last
//! checkpoint as it was. An interrupt (Ctrl-C, see [`interrupt_flag`]) writes `last.safetensors`
//! and returns.

use crate::checkpoint::{Checkpoint, CheckpointMeta, RngState, FORMAT_VERSION};
use crate::config::{DeviceSpec, TrainConfig};
use crate::data::{batch_tensors, eval_loader, open_split, parse_split, train_loader};
use crate::eval::{evaluate, EvalOutput};
use crate::log::{JsonlLog, LogRecord, Progress};
use crate::optim::{self, LrSchedule, NamedVar, Optimizer, StepOutcome};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recallseg_data::{ClassInfo, Loader, SegDataset};
use recallseg_losses::{LossContext, SegLoss};
use recallseg_models::{DeepLab, ModelConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

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

/// File names inside a run folder.
pub mod files {
    /// The latest state, written periodically, at the end and on interrupt.
    pub const LAST: &str = "last.safetensors";
    /// The state with the best validation mean IoU.
    pub const BEST: &str = "best.safetensors";
    /// The JSON-lines log.
    pub const LOG: &str = "log.jsonl";
    /// The configuration the run used.
    pub const CONFIG: &str = "config.toml";
}

pub use crate::signals::interrupt_flag;

/// Installs the handlers of SIGINT (Ctrl-C), SIGTERM and SIGHUP that set [`interrupt_flag`]
/// (see [`crate::signals`]; a second signal exits at once). Installing twice is harmless.
pub fn install_ctrlc() {
    if let Err(e) = crate::signals::install_signal_handlers() {
        eprintln!("warning: {e}; a signal will stop the run without a checkpoint");
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
}

/// The model configuration of a training configuration for a dataset of `n_classes` classes.
pub fn model_config(cfg: &TrainConfig, n_classes: usize) -> ModelConfig {
    let m = &cfg.model;
    ModelConfig {
        backbone: m.backbone,
        head: m.head,
        output_stride: m.output_stride,
        n_classes,
        pretrained: m.pretrained.clone(),
        freeze_bn: m.freeze_bn,
        multi_grid: None,
        dropout: m.dropout,
        decoder_dropout: m.decoder_dropout,
        backbone_width: m.backbone_width,
        head_channels: m.head_channels,
        low_level_channels: m.low_level_channels,
        separable: m.separable,
        decoder_convs: m.decoder_convs,
        aspp_rates: m.aspp_rates,
        aspp_conv: m.aspp_conv,
        init: m.init,
        init_seed: cfg.train.seed,
        align_corners: m.align_corners,
    }
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
    let mc = model_config(cfg, n_classes);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let model = if load_pretrained {
        let (model, report) = DeepLab::from_pretrained(&mc, vb)?;
        if let Some(r) = report {
            eprintln!("pretrained weights: {r:?}");
        }
        model
    } else {
        DeepLab::new(&mc, vb)?
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
    /// Training pixel counts per class (for WeightedCE / BalancedCE).
    pub class_pixel_counts: Vec<u64>,
}

/// Opens the training and validation data of `cfg`.
pub fn open_run_data(cfg: &TrainConfig) -> anyhow::Result<RunData> {
    let d = &cfg.data;
    let train_ds = open_split(d, parse_split("data.train_split", &d.train_split)?)?;
    let classes = train_ds.class_info().clone();
    let train_ds = crate::data::limit(train_ds, d.max_train_images);
    let class_pixel_counts = train_ds.class_pixel_counts()?;
    let train = train_loader(d, train_ds, cfg.train.batch_size, cfg.train.seed)?;
    let val_ds = open_split(d, parse_split("data.val_split", &d.val_split)?)?;
    let val = Some(eval_loader(d, val_ds, cfg.train.batch_size.max(4))?);
    Ok(RunData {
        classes,
        train,
        val,
        class_pixel_counts,
    })
}

/// Checkpoint key of a stateful loss's state (RecallCE's moving-average recall).
const LOSS_STATE_KEY: &str = "loss.state";

/// The loss's cross-step state as checkpoint tensors (empty for stateless losses).
fn loss_state_tensors(loss: &dyn SegLoss) -> candle_core::Result<HashMap<String, Tensor>> {
    let mut extra = HashMap::new();
    if let Some(state) = loss.state() {
        let n = state.len();
        extra.insert(
            LOSS_STATE_KEY.to_string(),
            Tensor::from_vec(state, n, &Device::Cpu)?,
        );
    }
    Ok(extra)
}

/// Restores what [`loss_state_tensors`] stored, so a resumed stateful loss continues exactly.
fn restore_loss_state(
    loss: &mut dyn SegLoss,
    extra: &HashMap<String, Tensor>,
    path: &Path,
) -> anyhow::Result<()> {
    let state = match extra.get(LOSS_STATE_KEY) {
        Some(t) => t.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?,
        None => Vec::new(),
    };
    loss.load_state(&state)
        .map_err(|e| anyhow::anyhow!("{}: {LOSS_STATE_KEY}: {e}", path.display()))
}

/// Builds the configured loss for the dataset.
pub fn build_loss(
    cfg: &TrainConfig,
    classes: &ClassInfo,
    pixel_counts: &[u64],
) -> anyhow::Result<Box<dyn SegLoss>> {
    let lc = cfg.loss_config()?;
    let ctx = LossContext::new(classes.n_classes())
        .with_ignore_index(classes.ignore_index as u32)
        .with_class_pixel_counts(pixel_counts.to_vec());
    Ok(lc.build(&ctx)?)
}

fn finite_or_none(w: Option<Vec<f32>>) -> Option<Vec<Option<f32>>> {
    // Classes absent from the batch are NaN: logged as null (JSON has no NaN), left out of the
    // normalisation and drawn as gaps in Fig. 4.
    w.map(|v| v.into_iter().map(|x| x.is_finite().then_some(x)).collect())
}

/// A snapshot of the state a training step changes before its update is applied (the RNG draws
/// the dropout seed, the forward pass moves BatchNorm's running statistics and a stateful
/// loss's moving average), so a step that fails before its update can be undone exactly.
struct StepSnapshot {
    rng: ChaCha8Rng,
    loss_state: Option<Vec<f32>>,
    /// Copies of the non-trainable model tensors (BatchNorm running statistics).
    buffers: Vec<(candle_core::Var, Tensor)>,
}

impl StepSnapshot {
    fn take(
        rng: &ChaCha8Rng,
        loss: &dyn SegLoss,
        buffers: &[(String, candle_core::Var)],
    ) -> candle_core::Result<Self> {
        Ok(Self {
            rng: rng.clone(),
            loss_state: loss.state(),
            buffers: buffers
                .iter()
                .map(|(_, v)| Ok((v.clone(), v.as_tensor().copy()?)))
                .collect::<candle_core::Result<_>>()?,
        })
    }

    fn restore(self, rng: &mut ChaCha8Rng, loss: &mut dyn SegLoss) -> anyhow::Result<()> {
        *rng = self.rng;
        if let Some(state) = self.loss_state {
            loss.load_state(&state)
                .map_err(|e| anyhow::anyhow!("restoring the loss state: {e}"))?;
        }
        for (var, t) in self.buffers {
            var.set(&t)?;
        }
        Ok(())
    }
}

/// Trains a model as `cfg` says, writing into `cfg.train.out_dir`.
///
/// What is guaranteed when things go wrong (see `docs/training.md`): the run folder is locked
/// for the run's lifetime; a folder holding another run is refused unless `opts.resume` or
/// `opts.overwrite`; an interrupt writes `last.safetensors` and returns an unfinished outcome;
/// an error after the first step (unreadable image, non-finite loss or update, failed
/// validation) first writes the last good state to `last.safetensors`; checkpoints never hold
/// non-finite tensors.
pub fn train(cfg: &TrainConfig, opts: &TrainOptions) -> anyhow::Result<TrainOutcome> {
    cfg.validate()?;
    recallseg_data::png_io::set_max_pixels(cfg.data.max_image_pixels)?;
    let device = DeviceSpec::parse(&cfg.train.device)
        .map_err(|m| anyhow::anyhow!("train.device: {m}"))?
        .open()?;
    let out = &cfg.train.out_dir;
    std::fs::create_dir_all(out).map_err(|e| anyhow::anyhow!("creating {}: {e}", out.display()))?;
    let _lock = crate::run_dir::RunLock::acquire(out)?;
    // Holding the lock, no other process writes here: temporary files are leftovers of killed
    // writes.
    let stale = crate::checkpoint::remove_stale_temp_files(out)
        .map_err(|e| anyhow::anyhow!("{}: removing stale temporary files: {e}", out.display()))?;
    if !stale.is_empty() && !opts.quiet {
        eprintln!(
            "removed {} temporary file(s) of interrupted checkpoint writes from {}",
            stale.len(),
            out.display()
        );
    }
    let last_path = out.join(files::LAST);
    let resuming = opts.resume && last_path.exists();
    if !resuming {
        match crate::run_dir::existing_run(out) {
            Some(what) if !opts.overwrite && !opts.resume => anyhow::bail!(
                "{} holds a run ({what}); continue it with --resume, replace it with --overwrite, \
                 or choose another train.out_dir",
                out.display()
            ),
            Some(_) => crate::run_dir::remove_run_files(out)?,
            None => {}
        }
    }
    if cfg.data.generate_synthetic {
        crate::data::ensure_synthetic(&cfg.data, &crate::data::quick_synthetic_config())?;
    }
    let data = open_run_data(cfg)?;
    let lossc = cfg.loss_config()?;
    let n_classes = data.classes.n_classes();
    let built = build_model(cfg, n_classes, &device, !resuming)?;
    let mut loss = build_loss(cfg, &data.classes, &data.class_pixel_counts)?;
    let mut optimizer = optim::build(&cfg.optim, built.trainable.clone())?;
    let schedule = LrSchedule::new(cfg.optim.lr, cfg.train.iters, &cfg.schedule);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.train.seed ^ 0x7261_6e64_5f74_726e);
    let mut step: u64 = 0;
    let mut best: Option<(f64, u64)> = None;
    let mut loss_acc = (0.0f64, 0u64);
    let mut prior_seconds = 0.0f64;
    let config_toml = cfg.to_toml()?;

    if resuming {
        let ck = Checkpoint::load(&last_path, &device)?;
        let saved: TrainConfig = toml::from_str(&ck.meta.config_toml).map_err(|e| {
            anyhow::anyhow!("{}: stored config unreadable: {e}", last_path.display())
        })?;
        if !same_run(&saved, cfg) {
            anyhow::bail!(
                "{} was written by a different configuration; remove it or use another \
                 train.out_dir (only train.iters, the logging and checkpoint intervals, \
                 data.workers and train.device may change on resume)",
                last_path.display()
            );
        }
        if ck.meta.step > cfg.train.iters as u64 {
            anyhow::bail!(
                "{} is at step {}, beyond train.iters = {}; raise train.iters or start a new run",
                last_path.display(),
                ck.meta.step,
                cfg.train.iters
            );
        }
        ck.restore_varmap(&built.varmap, &last_path)?;
        optimizer.load_state(&ck.optim, ck.meta.optim_steps)?;
        restore_loss_state(loss.as_mut(), &ck.extra, &last_path)?;
        rng = ck
            .meta
            .rng
            .restore()
            .map_err(|m| anyhow::anyhow!("{}: {m}", last_path.display()))?;
        step = ck.meta.step;
        best = ck.meta.best;
        loss_acc = ck.meta.loss_acc;
        prior_seconds = ck.meta.train_seconds;
    }
    let log_path = out.join(files::LOG);
    let mut log = if resuming {
        JsonlLog::resume(&log_path, step)?
    } else {
        JsonlLog::create(&log_path)?
    };
    crate::checkpoint::write_atomic(&out.join(files::CONFIG), |f| {
        use std::io::Write;
        f.write_all(config_toml.as_bytes())
    })?;

    let iters = cfg.train.iters as u64;
    let label = opts
        .label
        .clone()
        .unwrap_or_else(|| lossc.name().to_string());
    let progress = Progress::new(&label, step, iters, opts.progress_bar && !opts.quiet);
    if resuming && !opts.quiet {
        progress.println(&format!(
            "resumed from {} at step {step}",
            last_path.display()
        ));
    }
    let save = |step: u64,
                best: Option<(f64, u64)>,
                loss_acc: (f64, u64),
                train_seconds: f64,
                optimizer: &dyn Optimizer,
                loss: &dyn SegLoss,
                rng: &ChaCha8Rng,
                path: &Path|
     -> anyhow::Result<()> {
        let (optim_state, optim_steps) = optimizer.state();
        let ck = Checkpoint {
            model: Checkpoint::model_from_varmap(&built.varmap)?,
            optim: optim_state,
            extra: loss_state_tensors(loss)?,
            meta: CheckpointMeta {
                format_version: FORMAT_VERSION,
                step,
                optim_steps,
                rng: RngState::capture(rng),
                config_toml: config_toml.clone(),
                best,
                class_names: data.classes.names.clone(),
                palette: data.classes.palette.clone(),
                ignore_index: data.classes.ignore_index,
                loss_acc,
                normalize: Some(data.train.normalization()),
                train_seconds,
            },
        };
        ck.save(path)?;
        Ok(())
    };

    // The model tensors the optimiser does not update but the forward pass does (BatchNorm
    // running statistics): restored when a step fails before its update.
    let buffers: Vec<(String, candle_core::Var)> = {
        let trainable: std::collections::HashSet<_> = built
            .trainable
            .iter()
            .map(|nv| nv.var.as_tensor().id())
            .collect();
        let data = built
            .varmap
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("the model's VarMap lock is poisoned"))?;
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        names
            .into_iter()
            .map(|n| (n.clone(), data[n].clone()))
            .filter(|(_, v)| !trainable.contains(&v.as_tensor().id()))
            .collect()
    };
    // Their tensors, checked after every forward pass (`Var::set` writes in place, so these
    // handles stay current).
    let buffer_tensors: Vec<&Tensor> = buffers.iter().map(|(_, v)| v.as_tensor()).collect();

    let loader = &data.train;
    let bpe = loader.batches_per_epoch().max(1) as u64;
    let mut epoch = step / bpe;
    let mut batches = loader.epoch_from(epoch, (step % bpe) as usize);
    let mut train_seconds = 0.0;
    let mut last_loss = None;
    // The step `last.safetensors` holds (when this run wrote it or resumed from it).
    let mut last_saved_step: Option<u64> = resuming.then_some(step);
    let start_step = step;
    let mut finished = step >= iters;
    let mut interval_start = Instant::now();
    let mut interval_steps = 0u64;

    // Every checkpoint of this loop records the loop's current state; only the path differs.
    macro_rules! save_to {
        ($path:expr) => {
            save(
                step,
                best,
                loss_acc,
                prior_seconds + train_seconds,
                optimizer.as_ref(),
                loss.as_ref(),
                &rng,
                $path,
            )
        };
    }
    // Ends the run with an error after saving the current (good) state to `last.safetensors`
    // when it holds steps not yet saved; the message says what was saved. `$make` builds the
    // error from that sentence.
    macro_rules! fail_saving {
        ($reason:expr, $make:expr) => {{
            let reason: String = $reason;
            let saved: String = if last_saved_step.is_none_or(|s| step > s) && step > 0 {
                match save_to!(&last_path) {
                    Ok(()) => {
                        let _ = log.write(&LogRecord::Checkpoint {
                            step,
                            path: last_path.clone(),
                            reason: "error".into(),
                        });
                        format!(
                            "the state after step {step} was saved to {} (continue with --resume)",
                            last_path.display()
                        )
                    }
                    Err(e) => format!(
                        "saving the state after step {step} to {} failed too ({e:#})",
                        last_path.display()
                    ),
                }
            } else {
                match last_saved_step {
                    Some(s) => format!(
                        "the last checkpoint is {} (step {s})",
                        last_path.display()
                    ),
                    None => "no checkpoint was written".to_string(),
                }
            };
            let _ = log.write(&LogRecord::Stopped { step, reason });
            progress.finish();
            let make = $make;
            return Err(make(saved));
        }};
    }
    // `?` for the step's fallible calls: on error, the state is rolled back to the step's start
    // (the snapshot), saved, and the run ends with the error.
    macro_rules! step_try {
        ($snapshot:expr, $e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => {
                    let e: anyhow::Error = e.into();
                    if let Err(r) = $snapshot.restore(&mut rng, loss.as_mut()) {
                        let _ = log.write(&LogRecord::Stopped {
                            step,
                            reason: format!("error: {e:#}"),
                        });
                        progress.finish();
                        return Err(e.context(format!(
                            "the state could not be rolled back ({r:#}); nothing was saved"
                        )));
                    }
                    fail_saving!(format!("error: {e:#}"), |saved: String| e
                        .context(format!("training stopped at step {}; {saved}", step + 1)))
                }
            }
        };
    }
    // `?` after a completed step (validation, checkpoints): the state is good as it is.
    macro_rules! after_step_try {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => {
                    let e: anyhow::Error = e.into();
                    fail_saving!(format!("error: {e:#}"), |saved: String| e
                        .context(format!("training stopped after step {step}; {saved}")))
                }
            }
        };
    }

    while step < iters {
        if opts.stop_after.is_some_and(|n| step - start_step >= n) {
            break;
        }
        if opts
            .interrupt
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst))
        {
            let signal = crate::signals::received_signal();
            let what = signal.map_or("interrupt".to_string(), |s| s.name().to_string());
            save_to!(&last_path)?;
            log.write(&LogRecord::Checkpoint {
                step,
                path: last_path.clone(),
                reason: "interrupt".into(),
            })?;
            log.write(&LogRecord::Stopped {
                step,
                reason: format!("interrupted ({what})"),
            })?;
            progress.finish();
            if !opts.quiet {
                eprintln!(
                    "[{label}] {what}: stopped at step {step}; resume with --resume ({})",
                    last_path.display()
                );
            }
            return Ok(TrainOutcome {
                step,
                finished: false,
                best,
                last_checkpoint: last_path,
                train_seconds: prior_seconds + train_seconds,
                last_loss,
                stop_signal: signal,
            });
        }
        let snapshot = after_step_try!(StepSnapshot::take(&rng, loss.as_ref(), &buffers));
        let batch = match batches.next() {
            Some(b) => step_try!(snapshot, b),
            None => {
                epoch += 1;
                batches = loader.epoch(epoch);
                continue;
            }
        };
        let t0 = Instant::now();
        let (x, y) = step_try!(snapshot, batch_tensors(&batch, &device));
        let dropout_seed = rng.next_u64();
        let logits = step_try!(snapshot, built.model.forward_t_with(&x, true, dropout_seed));
        let l = step_try!(snapshot, loss.forward(&logits, &y));
        let lv = step_try!(
            snapshot,
            l.to_dtype(DType::F64).and_then(|t| t.to_scalar::<f64>())
        );
        // The logits are checked too: a diverged model can produce NaN/inf logits on which a
        // loss still returns a finite number (masked pixels).
        let logit_sum = step_try!(
            snapshot,
            logits
                .sum_all()
                .and_then(|t| t.to_dtype(DType::F64))
                .and_then(|t| t.to_scalar::<f64>())
        );
        if !lv.is_finite() || !logit_sum.is_finite() {
            let v = if lv.is_finite() { logit_sum } else { lv };
            snapshot.restore(&mut rng, loss.as_mut())?;
            let value = if v.is_nan() { "NaN" } else { "infinite" }.to_string();
            fail_saving!(
                format!("non-finite loss or logits ({v}) at step {}", step + 1),
                |checkpoint: String| anyhow::Error::from(TrainError::NonFiniteLoss {
                    step: step + 1,
                    value,
                    loss: lossc.name().to_string(),
                    checkpoint,
                })
            );
        }
        // BatchNorm's running statistics were moved by the forward pass; a diverging model can
        // make them infinite while the loss stays finite (what evaluation would then use).
        if let Some((k, count)) =
            step_try!(snapshot, crate::optim::first_non_finite(&buffer_tensors))
        {
            snapshot.restore(&mut rng, loss.as_mut())?;
            let tensor = buffers[k].0.clone();
            fail_saving!(
                format!("non-finite {tensor} at step {}", step + 1),
                |checkpoint: String| anyhow::Error::from(TrainError::NonFiniteBuffer {
                    step: step + 1,
                    tensor,
                    count,
                    checkpoint,
                })
            );
        }
        let grads = step_try!(snapshot, l.backward());
        let lr = schedule.lr(step as usize);
        match step_try!(snapshot, optimizer.step(&grads, lr)) {
            StepOutcome::Applied => {}
            StepOutcome::Rejected(update) => {
                snapshot.restore(&mut rng, loss.as_mut())?;
                fail_saving!(
                    format!("non-finite update at step {}: {update}", step + 1),
                    |checkpoint: String| anyhow::Error::from(TrainError::NonFiniteUpdate {
                        step: step + 1,
                        update,
                        checkpoint,
                    })
                );
            }
        }
        drop(snapshot);
        step += 1;
        train_seconds += t0.elapsed().as_secs_f64();
        loss_acc.0 += lv;
        loss_acc.1 += 1;
        interval_steps += 1;

        if step.is_multiple_of(cfg.train.log_every as u64) || step == iters {
            let mean = loss_acc.0 / loss_acc.1.max(1) as f64;
            let dt = interval_start.elapsed().as_secs_f64();
            after_step_try!(log.write(&LogRecord::Train {
                step,
                loss: mean,
                lr,
                steps_per_s: if dt > 0.0 {
                    interval_steps as f64 / dt
                } else {
                    0.0
                },
                class_weights: finite_or_none(loss.last_class_weights()),
            }));
            last_loss = Some(mean);
            if !opts.quiet {
                progress.update(step, mean, true);
            }
            loss_acc = (0.0, 0);
            interval_start = Instant::now();
            interval_steps = 0;
        }
        let val_now = (cfg.train.val_every > 0 && step.is_multiple_of(cfg.train.val_every as u64))
            || step == iters;
        let ck_now = (cfg.train.checkpoint_every > 0
            && step.is_multiple_of(cfg.train.checkpoint_every as u64))
            || step == iters;
        // Validation first (it decides `best`), then `last` before `best`: when the disk fills
        // up, the state that matters for resuming is the one that was written. Each log record
        // is written after what it reports.
        let mut val_record = None;
        if val_now {
            if let Some(vl) = &data.val {
                let EvalOutput { matrix, .. } =
                    after_step_try!(evaluate(&built.model, vl, &device, 0));
                let rep = after_step_try!(matrix.report_with_names(&data.classes.names));
                let miou = rep.mean_iou.value.unwrap_or(0.0);
                let is_best = best.is_none_or(|(b, _)| miou > b);
                if is_best {
                    best = Some((miou, step));
                }
                if !opts.quiet {
                    progress.println(&format!(
                        "step {step}: val mean acc {:.2}% mean IoU {:.2}%{}",
                        100.0 * rep.mean_accuracy.value.unwrap_or(f64::NAN),
                        100.0 * miou,
                        if is_best { " (best)" } else { "" }
                    ));
                }
                val_record = Some((rep, is_best));
                interval_start = Instant::now();
            }
        }
        if ck_now {
            after_step_try!(save_to!(&last_path));
            last_saved_step = Some(step);
            after_step_try!(log.write(&LogRecord::Checkpoint {
                step,
                path: last_path.clone(),
                reason: if step == iters { "final" } else { "periodic" }.into(),
            }));
        }
        if let Some((rep, is_best)) = val_record {
            if is_best {
                let p = out.join(files::BEST);
                after_step_try!(save_to!(&p));
            }
            after_step_try!(log.write(&LogRecord::Val {
                step,
                mean_accuracy: rep.mean_accuracy.value,
                mean_iou: rep.mean_iou.value,
                pixel_accuracy: rep.pixel_accuracy,
                recall: rep.classes.iter().map(|c| c.recall).collect(),
                iou: rep.classes.iter().map(|c| c.iou).collect(),
                best: is_best,
            }));
        }
        if step == iters {
            finished = true;
        }
    }
    if !finished {
        // Stopped early (stop_after): leave a resumable checkpoint.
        save_to!(&last_path)?;
    }
    progress.finish();
    Ok(TrainOutcome {
        step,
        finished,
        best,
        last_checkpoint: last_path,
        train_seconds: prior_seconds + train_seconds,
        last_loss,
        stop_signal: None,
    })
}

/// Whether two configurations describe the same run up to what may change on resume.
pub fn same_run(a: &TrainConfig, b: &TrainConfig) -> bool {
    let norm = |c: &TrainConfig| {
        let mut c = c.clone();
        c.train.iters = 0;
        c.train.log_every = 1;
        c.train.val_every = 0;
        c.train.checkpoint_every = 0;
        c.train.device = String::new();
        c.train.out_dir = PathBuf::new();
        c.data.workers = 0;
        c.schedule.kind = crate::config::ScheduleKind::Constant;
        c
    };
    // A poly schedule depends on iters, so changing iters with poly is not the same run.
    let poly_ok =
        a.schedule.kind != crate::config::ScheduleKind::Poly || a.train.iters == b.train.iters;
    norm(a) == norm(b) && a.schedule.kind == b.schedule.kind && poly_ok
}

/// Loads a checkpoint's model for evaluation or prediction: returns the model, its config and
/// the dataset's class info stored in the checkpoint.
pub fn load_for_inference(
    path: &Path,
    device: &Device,
) -> anyhow::Result<(
    BuiltModel,
    TrainConfig,
    ClassInfo,
    recallseg_data::Normalize,
)> {
    let ck = Checkpoint::load(path, device)?;
    let cfg: TrainConfig = toml::from_str(&ck.meta.config_toml)
        .map_err(|e| anyhow::anyhow!("{}: stored config unreadable: {e}", path.display()))?;
    let classes = ClassInfo {
        names: ck.meta.class_names.clone(),
        palette: ck.meta.palette.clone(),
        ignore_index: ck.meta.ignore_index,
    };
    let built = build_model(&cfg, classes.names.len(), device, false)?;
    ck.restore_varmap(&built.varmap, path)?;
    let norm = ck
        .meta
        .normalize
        .unwrap_or(recallseg_data::Normalize::IMAGENET);
    Ok((built, cfg, classes, norm))
}

/// Opens the split `split` of the configured dataset for evaluation.
pub fn open_eval(cfg: &TrainConfig, split: &str) -> anyhow::Result<(Arc<dyn SegDataset>, Loader)> {
    let ds = open_split(&cfg.data, parse_split("split", split)?)?;
    let ds = crate::data::limit(ds, cfg.data.max_eval_images);
    let loader = eval_loader(&cfg.data, ds.clone(), cfg.train.batch_size.max(4))?;
    Ok((ds, loader))
}
