//! [`Trainer`]: one training run — what it holds, one optimisation step ([`Trainer::step`]),
//! validation ([`Trainer::validate`]), checkpoints ([`Trainer::checkpoint`]) and the loop that
//! strings them together ([`Trainer::run`]).

use super::strategy::{EarlyStop, KeepBest, StopRule, Stopping};
use super::{
    build_loss, build_model_with, loss_state_tensors, open_run_data_shard, restore_loss_state,
    run_differences, BuiltModel, RunData, TrainError, TrainOptions, TrainOutcome,
};
use crate::checkpoint::{Checkpoint, CheckpointMeta, RngState, FORMAT_VERSION};
use crate::config::{DeviceSpec, TrainConfig};
use crate::data::batch_tensors;
use crate::eval::{evaluate_interruptible, evaluate_with_loss_sum, EvalOutput};
use crate::log::{JsonlLog, LogRecord, Progress};
use crate::optim::{self, LrSchedule, Optimizer, StepOutcome};
use crate::run_dir::RunLock;
use crate::run_files as files;
use candle_core::{DType, Device, Tensor, Var};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recallseg_data::Batch;
use recallseg_distributed::SharedCommunicator;
use recallseg_losses::SegLoss;
use recallseg_losses::{ShardStatistics, Sharding};
use recallseg_metrics::Report;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Mixed into the step's dropout seed for the micro-batches after the first.
const MICRO_BATCH_TAG: u64 = 0x4d49_4352_4f42_4154; // "MICROBAT"

/// A training run, opened by [`Trainer::open`] (folder locked, data, model, loss and optimiser
/// built, a checkpoint resumed) and driven by [`Trainer::run`] or step by step.
pub struct Trainer<'a> {
    cfg: &'a TrainConfig,
    opts: &'a TrainOptions,
    device: Device,
    last_path: PathBuf,
    data: RunData,
    built: BuiltModel,
    loss: Box<dyn SegLoss>,
    /// The auxiliary head's loss (its own instance of the configured loss) and its weight
    /// (`model.aux_head`).
    aux_loss: Option<(Box<dyn SegLoss>, f64)>,
    loss_name: String,
    optimizer: Box<dyn Optimizer>,
    schedule: LrSchedule,
    rng: ChaCha8Rng,
    config_toml: String,
    log: JsonlLog,
    progress: Progress,
    label: String,
    /// The model tensors the optimiser does not update but the forward pass does (BatchNorm
    /// running statistics), by name: checked after every forward pass and restored when a step
    /// fails before its update (`Var::set` writes in place, so these handles stay current).
    buffers: Vec<(String, Var)>,
    keep_best: KeepBest,
    early_stop: Option<EarlyStop>,
    /// The test split's report, once evaluated at the end of the run.
    test_report: Option<Report>,
    stop_rules: Vec<StopRule>,
    /// Steps completed.
    step: u64,
    /// The step this invocation started from.
    start_step: u64,
    /// Sum and count of the losses since the last log record.
    loss_acc: (f64, u64),
    /// Training seconds of earlier invocations (from the checkpoint).
    prior_seconds: f64,
    /// Training seconds of this invocation.
    train_seconds: f64,
    /// The step `last.safetensors` holds (when this run wrote it or resumed from it).
    last_saved_step: Option<u64>,
    last_loss: Option<f64>,
    /// The per-class weights the loss applied on the last step (logged, Fig. 4).
    class_weights: Option<Vec<f32>>,
    /// A combined loss's term values on the last step (logged).
    loss_terms: Option<Vec<recallseg_losses::LossTerm>>,
    interval_start: Instant,
    interval_steps: u64,
    /// The data-parallel group (a single process by default); rank 0 alone writes.
    comm: SharedCommunicator,
    /// Some rank was interrupted during the last step (every rank stops after the same step).
    group_interrupted: bool,
    /// The run folder's lock (rank 0 only).
    _lock: Option<RunLock>,
}

/// A completed step: its loss, the learning rate, the loss's per-class weights and its terms.
type StepResult = (
    f64,
    f64,
    Option<Vec<f32>>,
    Option<Vec<recallseg_losses::LossTerm>>,
);

/// Why a step failed before its update was applied (the state is then rolled back).
enum StepFailure {
    /// An error (data, device, numerics library).
    Error(anyhow::Error),
    /// The loss or the logits are NaN or infinite.
    NonFiniteLoss(f64),
    /// The forward pass made buffer `k` of [`Trainer::buffers`] non-finite (`count` values).
    NonFiniteBuffer(usize, usize),
    /// The optimiser refused the update.
    Rejected(crate::optim::NonFiniteUpdate),
}

impl<E: Into<anyhow::Error>> From<E> for StepFailure {
    fn from(e: E) -> Self {
        StepFailure::Error(e.into())
    }
}

/// A snapshot of the state a training step changes before its update is applied (the RNG draws
/// the dropout seed, the forward pass moves BatchNorm's running statistics and a stateful
/// loss's moving average), so a step that fails before its update can be undone exactly.
struct StepSnapshot {
    rng: ChaCha8Rng,
    loss_state: Option<Vec<f32>>,
    aux_loss_state: Option<Vec<f32>>,
    /// Copies of the buffers.
    buffers: Vec<(Var, Tensor)>,
}

impl<'a> Trainer<'a> {
    /// Locks `cfg.train.out_dir`, builds everything the run needs and, with `opts.resume` and a
    /// `last.safetensors` there, restores it (its configuration must be the same run).
    pub fn open(cfg: &'a TrainConfig, opts: &'a TrainOptions) -> anyhow::Result<Self> {
        cfg.validate()?;
        recallseg_data::png_io::set_max_pixels(cfg.data.max_image_pixels)?;
        let out = &cfg.train.out_dir;
        let comm = opts
            .communicator
            .clone()
            .unwrap_or_else(recallseg_distributed::single_process);
        let (world, lead) = (comm.size(), comm.rank() == 0);
        let device = open_rank_device(cfg, &comm)?;
        check_micro_batches(cfg, world)?;
        let last_path = out.join(files::LAST);
        let (lock, resuming) = prepare_run_dir_on_ranks(cfg, opts, &comm)?;
        if !opts.skip_test {
            // A misspelt split name is an error now, not after training.
            crate::data::parse_split("data.test_split", &cfg.data.test_split)?;
        }
        let shard = recallseg_data::Shard {
            index: comm.rank(),
            count: world,
        };
        let data = open_run_data_shard(cfg, shard)?;
        let n_classes = data.classes.n_classes();
        let sync = (cfg.train.sync_batch_norm && world > 1).then(|| comm.clone());
        let built = build_model_with(
            cfg,
            n_classes,
            &device,
            !resuming,
            &recallseg_models::BuildOptions::default().with_sync_batch_norm(sync),
        )?;
        let mut loss = build_loss(cfg, &data.classes, &data.class_pixel_counts)?;
        let mut aux_loss = cfg
            .model
            .aux_head
            .as_ref()
            .map(|a| {
                anyhow::Ok((
                    build_loss(cfg, &data.classes, &data.class_pixel_counts)?,
                    a.loss_weight,
                ))
            })
            .transpose()?;
        let mut optimizer = optim::build(&cfg.optim, built.trainable.clone())?;
        let schedule = LrSchedule::new(cfg.optim.lr, cfg.train.iters, &cfg.schedule);
        let config_toml = cfg.to_toml()?;
        let r = if resuming {
            restore_checkpoint(
                cfg,
                &last_path,
                &device,
                &built,
                optimizer.as_mut(),
                loss.as_mut(),
                aux_loss
                    .as_mut()
                    .map(|(l, _)| l.as_mut() as &mut dyn SegLoss),
            )?
        } else {
            Restored::fresh(cfg)
        };
        let step = r.step;
        let log = open_run_log(cfg, lead, resuming, step, world, &data.classes.names)?;
        if lead {
            // The header row at the start, the rows up to the resumed step after a resume.
            crate::log::write_metrics_csv(out)?;
            recallseg_files::write_bytes_atomic(&out.join(files::CONFIG), config_toml.as_bytes())?;
        }

        let (label, progress) = run_progress(cfg, opts, lead, resuming, step, &last_path);
        let buffers = non_trainable_vars(&built)?;
        let stop_rules = stop_rules(opts);
        Ok(Self {
            cfg,
            opts,
            device,
            last_path,
            data,
            built,
            loss,
            aux_loss,
            loss_name: cfg.loss.name().to_string(),
            optimizer,
            schedule,
            rng: r.rng,
            config_toml,
            log,
            progress,
            label,
            buffers,
            keep_best: KeepBest::new(r.best),
            early_stop: cfg
                .train
                .early_stop
                .as_ref()
                .map(|e| EarlyStop::new(e.patience, e.min_delta, r.early_stop)),
            test_report: None,
            stop_rules,
            step,
            start_step: step,
            loss_acc: r.loss_acc,
            prior_seconds: r.prior_seconds,
            train_seconds: 0.0,
            last_saved_step: resuming.then_some(step),
            last_loss: None,
            class_weights: None,
            loss_terms: None,
            interval_start: Instant::now(),
            interval_steps: 0,
            comm,
            group_interrupted: false,
            _lock: lock,
        })
    }

    /// Whether this process writes the run folder and prints (rank 0, or a single process).
    fn is_lead(&self) -> bool {
        self.comm.rank() == 0
    }

    /// Whether to print nothing but errors (asked for, or not rank 0).
    fn quiet(&self) -> bool {
        self.opts.quiet || !self.is_lead()
    }

    /// Writes the run's current state (model, optimiser, loss state, RNG, counters) to `path`,
    /// atomically.
    /// Under data parallelism only rank 0 writes (every rank holds the same state); the other
    /// ranks return at once.
    pub fn checkpoint(&self, path: &Path) -> anyhow::Result<()> {
        if !self.is_lead() {
            return Ok(());
        }
        let (optim_state, optim_steps) = self.optimizer.state();
        let ck = Checkpoint {
            model: Checkpoint::model_from_varmap(&self.built.varmap)?,
            optim: optim_state,
            extra: loss_state_tensors(
                self.loss.as_ref(),
                self.aux_loss.as_ref().map(|(l, _)| l.as_ref()),
            )?,
            meta: CheckpointMeta {
                format_version: FORMAT_VERSION,
                step: self.step,
                optim_steps,
                rng: RngState::capture(&self.rng),
                config_toml: self.config_toml.clone(),
                best: self.keep_best.best(),
                class_names: self.data.classes.names.clone(),
                palette: self.data.classes.palette.clone(),
                ignore_index: self.data.classes.ignore_index,
                loss_acc: self.loss_acc,
                normalize: Some(self.data.train.normalization()),
                train_seconds: self.prior_seconds + self.train_seconds,
                early_stop: self.early_stop.as_ref().and_then(EarlyStop::state),
            },
        };
        ck.save(path)?;
        Ok(())
    }

    /// Runs to `train.iters` (or until a stop rule fires), validating, logging and
    /// checkpointing as configured.
    pub fn run(mut self) -> anyhow::Result<TrainOutcome> {
        let iters = self.cfg.train.iters as u64;
        let loader = self.data.train.clone();
        let bpe = loader.batches_per_epoch().max(1) as u64;
        let mut epoch = self.step / bpe;
        let mut batches = loader.epoch_from(epoch, (self.step % bpe) as usize);
        let mut finished = self.step >= iters;
        if self.early_stopping() {
            // A resumed run that early stopping had already ended.
            self.progress.finish();
            return Ok(self.outcome(true, None));
        }
        while self.step < iters {
            match self.stopping() {
                Some(Stopping::StepBudget) => break,
                Some(Stopping::Interrupted) => return self.stop_interrupted(),
                None => {}
            }
            let batch = match batches.next() {
                Some(Ok(b)) => b,
                Some(Err(e)) => return Err(self.fail_in_step(e.into())),
                None => {
                    epoch += 1;
                    batches = loader.epoch(epoch);
                    continue;
                }
            };
            let lr = self.step(&batch)?;
            self.after_step(lr)?;
            crate::fault::point("step-end");
            if self.step == iters {
                finished = true;
            } else if self.early_stopping() {
                return self.stop_early();
            }
        }
        if !finished {
            // Stopped early (a step budget): leave a resumable checkpoint.
            self.checkpoint(&self.last_path)?;
        }
        self.progress.finish();
        // A run that ended here is tested; so is a finished run whose test was interrupted
        // (no test.json for its final step): resuming it redoes only the evaluation.
        if finished
            && (self.step > self.start_step || self.test_pending())
            && !self.test_at_end()?
        {
            return Ok(self.stop_during_test());
        }
        Ok(self.outcome(finished, None))
    }

    /// Whether this process tests the run and the run folder has no test report of the final
    /// step yet.
    fn test_pending(&self) -> bool {
        if self.opts.skip_test || !self.is_lead() {
            return false;
        }
        let path = self.cfg.train.out_dir.join(files::TEST);
        let step = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("step").and_then(serde_json::Value::as_u64));
        step != Some(self.step)
    }

    /// A signal arrived during the end-of-run test evaluation: the training is complete and
    /// checkpointed; log the stop and return an unfinished outcome (exit `128 + signal`), so
    /// that `--resume` redoes only the evaluation.
    fn stop_during_test(mut self) -> TrainOutcome {
        let signal = crate::signals::received_signal();
        let what = signal.map_or("interrupt".to_string(), |s| s.name().to_string());
        let _ = self.log.write(&LogRecord::Stopped {
            step: self.step,
            reason: format!("interrupted ({what}) during the test evaluation"),
        });
        if !self.quiet() {
            note!(
                "[{}] {what}: the test evaluation was stopped (training is complete, {}); \
                 --resume evaluates the test split again",
                self.label,
                self.last_path.display()
            );
        }
        self.outcome(false, signal)
    }

    /// Evaluates `data.test_split` with the final weights (the model in memory, which
    /// `last.safetensors` holds) through the configured `[inference]`, as `recallseg eval
    /// --split test` on `last.safetensors` would, and reports it: a `test` line in `log.jsonl`,
    /// `test.json` in the run folder, and a summary on stderr. A dataset without that split
    /// (a folder dataset with no `[test]` section, an empty split) is reported and skipped; an
    /// error while evaluating fails the run (its checkpoints are already written).
    ///
    /// Returns `false` when a stop signal (the run's interrupt flag) ended the evaluation
    /// before it finished; nothing is written then.
    fn test_at_end(&mut self) -> anyhow::Result<bool> {
        if self.opts.skip_test || !self.is_lead() {
            return Ok(true);
        }
        let cfg = self.cfg;
        let split = cfg.data.test_split.clone();
        let loader = match super::open_eval(cfg, &split) {
            Ok((_, loader)) => loader,
            Err(e) => {
                if !self.quiet() {
                    note!("[{}] test split `{split}` not evaluated: {e:#}", self.label);
                }
                return Ok(true);
            }
        };
        let context = || {
            format!(
                "evaluating the test split `{split}` after step {} (the run itself ended and its \
                 checkpoints are written)",
                self.step
            )
        };
        let inference = cfg
            .inference
            .plan((cfg.data.height, cfg.data.width), cfg.model.align_corners)
            .map_err(|(field, m)| anyhow::anyhow!("inference.{field}: {m}"))?;
        crate::fault::point("test-evaluation");
        let never = std::sync::atomic::AtomicBool::new(false);
        let flag = self.opts.interrupt.as_deref().unwrap_or(&never);
        let Some(ev) = evaluate_interruptible(
            &self.built.model,
            &loader,
            &self.device,
            0,
            &inference,
            flag,
        )
        .map_err(|e| e.context(context()))?
        else {
            return Ok(false);
        };
        let rep = ev.matrix.report_with_names(&self.data.classes.names)?;
        let json = serde_json::json!({
            "split": split,
            "step": self.step,
            "weights": "final",
            "checkpoint": files::LAST,
            "images": ev.images,
            "report": &rep,
        });
        let path = cfg.train.out_dir.join(files::TEST);
        let text = serde_json::to_string_pretty(&json)? + "\n";
        recallseg_files::write_bytes_atomic(&path, text.as_bytes())?;
        self.log.write(&LogRecord::Test {
            step: self.step,
            split: split.clone(),
            images: ev.images,
            mean_accuracy: rep.mean_accuracy.value,
            mean_iou: rep.mean_iou.value,
            pixel_accuracy: rep.pixel_accuracy,
            recall: rep.classes.iter().map(|c| c.recall).collect(),
            iou: rep.classes.iter().map(|c| c.iou).collect(),
        })?;
        if !self.quiet() {
            note!(
                "[{}] test split `{split}` ({} images, weights after step {}): mean acc {:.2}% \
                 mean IoU {:.2}% ({})",
                self.label,
                ev.images,
                self.step,
                100.0 * rep.mean_accuracy.value.unwrap_or(f64::NAN),
                100.0 * rep.mean_iou.value.unwrap_or(f64::NAN),
                path.display()
            );
        }
        self.test_report = Some(rep);
        Ok(true)
    }

    /// Whether early stopping (`train.early_stop`) says the run is over.
    fn early_stopping(&self) -> bool {
        self.early_stop.as_ref().is_some_and(EarlyStop::should_stop)
    }

    /// Early stopping fired: make sure `last.safetensors` holds this step, log why, and return
    /// a finished outcome.
    fn stop_early(mut self) -> anyhow::Result<TrainOutcome> {
        let step = self.step;
        if self.last_saved_step != Some(step) {
            if let Err(e) = self.checkpoint(&self.last_path) {
                return Err(self.fail_after_step(e, true));
            }
            self.last_saved_step = Some(step);
            self.log.write(&LogRecord::Checkpoint {
                step,
                path: self.last_path.clone(),
                reason: "early_stop".into(),
            })?;
        }
        let es = self.cfg.train.early_stop.as_ref();
        let metric = es.map_or("mean_iou", |e| e.metric.name());
        let patience = es.map_or(0, |e| e.patience);
        let best = self.early_stop.as_ref().and_then(EarlyStop::state);
        let reason = format!(
            "early stop: validation {metric} did not improve for {patience} validations (best \
             {} at step {})",
            best.map_or("-".to_string(), |b| format!("{:.4}", b.best)),
            best.map_or(0, |b| b.best_step)
        );
        self.log.write(&LogRecord::Stopped {
            step,
            reason: reason.clone(),
        })?;
        self.progress.finish();
        if !self.quiet() {
            note!("[{}] step {step}: {reason}", self.label);
        }
        self.test_at_end()?;
        Ok(self.outcome(true, None))
    }

    /// The first stop rule that fires now.
    fn stopping(&self) -> Option<Stopping> {
        let done = self.step - self.start_step;
        if self.comm.size() > 1 {
            // Every rank stops after the same step: an interrupt counts once the step's
            // all-reduce has told every rank about it.
            if self.group_interrupted {
                return Some(Stopping::Interrupted);
            }
            return self
                .stop_rules
                .iter()
                .filter(|r| !matches!(r, StopRule::Interrupt(_)))
                .find_map(|r| r.check(done));
        }
        self.stop_rules.iter().find_map(|r| r.check(done))
    }

    fn outcome(
        &self,
        finished: bool,
        stop_signal: Option<crate::signals::StopSignal>,
    ) -> TrainOutcome {
        TrainOutcome {
            step: self.step,
            finished,
            best: self.keep_best.best(),
            last_checkpoint: self.last_path.clone(),
            train_seconds: self.prior_seconds + self.train_seconds,
            last_loss: self.last_loss,
            stop_signal,
            early_stopped: self.early_stopping() && self.step < self.cfg.train.iters as u64,
            test: self.test_report.clone(),
        }
    }

    /// An interrupt: checkpoint, log, and return an unfinished outcome.
    fn stop_interrupted(mut self) -> anyhow::Result<TrainOutcome> {
        let signal = crate::signals::received_signal();
        let what = signal.map_or("interrupt".to_string(), |s| s.name().to_string());
        self.checkpoint(&self.last_path)?;
        self.log.write(&LogRecord::Checkpoint {
            step: self.step,
            path: self.last_path.clone(),
            reason: "interrupt".into(),
        })?;
        self.log.write(&LogRecord::Stopped {
            step: self.step,
            reason: format!("interrupted ({what})"),
        })?;
        self.progress.finish();
        if !self.quiet() {
            // How to continue is the caller's to say (`recallseg train --resume`, or the same
            // `compare` command again).
            note!(
                "[{}] {what}: stopped at step {}; its state is in {}",
                self.label,
                self.step,
                self.last_path.display()
            );
        }
        Ok(self.outcome(false, signal))
    }

    /// One optimisation step on `batch`: forward, loss, checks, backward, update. On success
    /// the step count advances and the learning rate used is returned. On failure the state is
    /// rolled back to before the step, the last good state is saved when it holds unsaved
    /// steps, and the error says so.
    fn step(&mut self, batch: &Batch) -> anyhow::Result<f64> {
        let snapshot = match self.snapshot() {
            Ok(s) => s,
            Err(e) => return Err(self.fail_after_step(e, true)),
        };
        let t0 = Instant::now();
        let result = if self.comm.size() == 1 && self.cfg.train.accumulate == 1 {
            self.try_step(batch)
        } else {
            self.try_step_sharded(batch)
        };
        match result {
            Ok((lv, lr, class_weights, loss_terms)) => {
                self.class_weights = class_weights;
                self.loss_terms = loss_terms;
                self.step += 1;
                self.train_seconds += t0.elapsed().as_secs_f64();
                self.loss_acc.0 += lv;
                self.loss_acc.1 += 1;
                self.interval_steps += 1;
                Ok(lr)
            }
            Err(failure) => {
                if let Err(r) = self.restore(snapshot) {
                    let StepFailure::Error(e) = failure else {
                        return Err(r);
                    };
                    let _ = self.log.write(&LogRecord::Stopped {
                        step: self.step,
                        reason: format!("error: {e:#}"),
                    });
                    self.progress.finish();
                    return Err(e.context(format!(
                        "the state could not be rolled back ({r:#}); nothing was saved"
                    )));
                }
                Err(self.fail_step(failure))
            }
        }
    }

    /// The fallible body of [`Trainer::step`]: `(loss, learning rate, the loss's class weights)`.
    fn try_step(&mut self, batch: &Batch) -> Result<StepResult, StepFailure> {
        let (x, y) = batch_tensors(batch, &self.device)?;
        let dropout_seed = self.rng.next_u64();
        let (logits, aux_logits) = self
            .built
            .model
            .forward_t_with_aux(&x, true, dropout_seed)?;
        let out = self.loss.forward_output(&logits, &y)?;
        let mut l = out.loss;
        // The logits are checked too: a diverged model can produce NaN/inf logits on which a
        // loss still returns a finite number (masked pixels).
        let mut logit_sum = logits.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if let (Some((aux_loss, weight)), Some(a)) = (&mut self.aux_loss, &aux_logits) {
            // mmseg's objective: main loss + weight × auxiliary loss (same loss on both).
            l = (l + (aux_loss.forward(a, &y)? * *weight)?)?;
            logit_sum += a.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        }
        let lv = l.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        // Checked before the backward pass, which a non-finite loss would only waste.
        self.check_forward(lv, logit_sum)?;
        let grads = l.backward()?;
        self.apply_update(&grads, lv, out.class_weights, out.terms)
    }

    /// Refuses a step whose loss or logits' sum is not finite (a diverged model can produce
    /// NaN/inf logits on which a loss still returns a finite number: masked pixels) or whose
    /// forward pass made a BatchNorm running statistic non-finite (what evaluation would then
    /// use; the loss can stay finite meanwhile).
    fn check_forward(&self, loss: f64, logit_sum: f64) -> Result<(), StepFailure> {
        if !loss.is_finite() || !logit_sum.is_finite() {
            return Err(StepFailure::NonFiniteLoss(if loss.is_finite() {
                logit_sum
            } else {
                loss
            }));
        }
        let tensors: Vec<&Tensor> = self.buffers.iter().map(|(_, v)| v.as_tensor()).collect();
        if let Some((k, count)) = crate::optim::first_non_finite(&tensors)? {
            return Err(StepFailure::NonFiniteBuffer(k, count));
        }
        Ok(())
    }

    /// The optimiser's update with this step's learning rate; a rejected update (non-finite
    /// gradient or result) fails the step.
    fn apply_update(
        &mut self,
        grads: &candle_core::backprop::GradStore,
        loss: f64,
        class_weights: Option<Vec<f32>>,
        terms: Option<Vec<recallseg_losses::LossTerm>>,
    ) -> Result<StepResult, StepFailure> {
        let lr = self.schedule.lr(self.step as usize);
        match self.optimizer.step(grads, lr)? {
            StepOutcome::Applied => Ok((loss, lr, class_weights, terms)),
            StepOutcome::Rejected(update) => Err(StepFailure::Rejected(update)),
        }
    }

    /// One step over shards of the batch: `train.accumulate` micro-batches on this rank, and
    /// the other ranks' shards under data parallelism (`(loss, learning rate, class weights,
    /// terms)` as [`Trainer::try_step`]).
    ///
    /// The batch is cut into `ranks × accumulate` equal micro-batches; global micro-batch
    /// `j = rank · accumulate + i` runs with dropout seed `mix(seed, j)` (the step's seed itself
    /// for `j = 0`), so the same global batch gives the same computation whatever the ranks.
    /// A loss exact under sharding ([`Sharding::Exact`]) sums its shard statistics over every
    /// micro-batch and rank first (one `f64` all-reduce of a few numbers per class; the micro-
    /// batches' predictions come from a first forward pass without gradients when there are
    /// several and the statistics read the logits), then each micro-batch's share of the
    /// whole batch's loss is backpropagated. Another loss averages its per-micro-batch values.
    /// The summed gradients, with the BatchNorm running statistics to be averaged, travel in
    /// one flat `f32` all-reduce, so every rank applies the same update.
    fn try_step_sharded(&mut self, batch: &Batch) -> Result<StepResult, StepFailure> {
        let k = self.cfg.train.accumulate;
        let (world, rank) = (self.comm.size(), self.comm.rank());
        let (x, y) = batch_tensors(batch, &self.device)?;
        let n = x.dim(0)?;
        if n == 0 || !n.is_multiple_of(k) {
            return Err(StepFailure::Error(anyhow::anyhow!(
                "rank {rank} got {n} images, which do not divide into train.accumulate = {k} \
                 micro-batches"
            )));
        }
        let m = n / k;
        let base_seed = self.rng.next_u64();
        let seed_of = |i: usize| {
            let j = (rank * k + i) as u64;
            if j == 0 {
                base_seed
            } else {
                recallseg_data::mix_seed(base_seed, MICRO_BATCH_TAG, j)
            }
        };
        let micro = |i: usize| -> candle_core::Result<(Tensor, Tensor)> {
            Ok((x.narrow(0, i * m, m)?, y.narrow(0, i * m, m)?))
        };
        let shares = (world * k) as f64;
        let mut grads: Option<candle_core::backprop::GradStore> = None;
        let (mut lv, mut logit_sum) = (0.0f64, 0.0f64);
        let (mut class_weights, mut terms) = (None, None);
        let mut add_grads = |g: candle_core::backprop::GradStore| -> candle_core::Result<()> {
            match &mut grads {
                Some(acc) => acc.extend(g),
                None => {
                    grads = Some(g);
                    Ok(())
                }
            }
        };
        let sum_of = |t: &Tensor| -> candle_core::Result<f64> {
            t.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()
        };
        match self.loss.sharding() {
            Sharding::Exact { needs_logits } => {
                let aux_weight = self.aux_loss.as_ref().map(|(_, w)| *w);
                let (stats, aux_stats, mut kept) =
                    self.shard_statistics_pass(k, m, &micro, &seed_of, needs_logits)?;
                self.loss.prepare_step(&stats)?;
                if let Some((aux, _)) = &mut self.aux_loss {
                    aux.prepare_step(&aux_stats)?;
                }
                for (i, slot) in kept.iter_mut().enumerate() {
                    let (xi, yi) = micro(i)?;
                    let (lg, al) = match slot.take() {
                        Some(pair) => pair,
                        None => self.built.model.forward_t_with_aux(&xi, true, seed_of(i))?,
                    };
                    let out = self.loss.forward_shard(&lg, &yi)?;
                    let mut l = out.loss;
                    logit_sum += sum_of(&lg)?;
                    if let (Some((aux, _)), Some(a), Some(w)) =
                        (&mut self.aux_loss, &al, aux_weight)
                    {
                        l = (l + (aux.forward_shard(a, &yi)?.loss * w)?)?;
                        logit_sum += sum_of(a)?;
                    }
                    lv += l.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                    add_grads(l.backward()?)?;
                    class_weights = out.class_weights;
                    terms = out.terms;
                }
            }
            Sharding::PerShard => {
                for i in 0..k {
                    let (xi, yi) = micro(i)?;
                    let (lg, al) = self.built.model.forward_t_with_aux(&xi, true, seed_of(i))?;
                    let out = self.loss.forward_output(&lg, &yi)?;
                    let mut l = out.loss;
                    logit_sum += sum_of(&lg)?;
                    if let (Some((aux, w)), Some(a)) = (&mut self.aux_loss, &al) {
                        l = (l + (aux.forward(a, &yi)? * *w)?)?;
                        logit_sum += sum_of(a)?;
                    }
                    let l = (l / shares)?;
                    lv += l.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                    add_grads(l.backward()?)?;
                    class_weights = out.class_weights;
                    terms = out.terms;
                }
            }
        }
        let mut grads = grads.ok_or_else(|| anyhow::anyhow!("a step without micro-batches"))?;
        // The loss, the logits' sum and whether this rank was interrupted, summed over ranks.
        let interrupted = self.stop_rules.iter().any(|r| {
            matches!(r, StopRule::Interrupt(_)) && r.check(0) == Some(Stopping::Interrupted)
        });
        let mut scalars = [lv, logit_sum, interrupted as u8 as f64];
        if world > 1 {
            self.comm.all_reduce_sum_f64(&mut scalars)?;
            self.all_reduce_gradients_and_buffers(&mut grads)?;
        }
        let [lv, logit_sum, interrupted] = scalars;
        self.group_interrupted = interrupted > 0.0;
        self.check_forward(lv, logit_sum)?;
        self.apply_update(&grads, lv, class_weights, terms)
    }

    /// The first pass of an exact sharded step: every micro-batch's statistics for the loss
    /// (and the auxiliary loss), summed over micro-batches and ranks. With one micro-batch whose
    /// statistics need the logits, the logits are kept for the second pass (`kept`).
    #[allow(clippy::type_complexity)]
    fn shard_statistics_pass(
        &mut self,
        k: usize,
        m: usize,
        micro: &dyn Fn(usize) -> candle_core::Result<(Tensor, Tensor)>,
        seed_of: &dyn Fn(usize) -> u64,
        needs_logits: bool,
    ) -> Result<
        (
            ShardStatistics,
            ShardStatistics,
            Vec<Option<(Tensor, Option<Tensor>)>>,
        ),
        StepFailure,
    > {
        let world = self.comm.size();
        let mut kept: Vec<Option<(Tensor, Option<Tensor>)>> = vec![None; k];
        let mut stats = ShardStatistics::default();
        let mut aux_stats = ShardStatistics::default();
        let add_stats = |acc: &mut ShardStatistics, s: ShardStatistics| {
            if acc.0.is_empty() {
                *acc = s;
                Ok(())
            } else {
                acc.add(&s)
            }
        };
        if needs_logits {
            // With several micro-batches, a first pass predicts them all (BatchNorm's
            // running statistics are put back: the second pass moves them).
            let saved = if k > 1 {
                self.buffers
                    .iter()
                    .map(|(_, v)| v.as_tensor().copy())
                    .collect::<candle_core::Result<Vec<_>>>()?
            } else {
                Vec::new()
            };
            for (i, slot) in kept.iter_mut().enumerate() {
                let (xi, yi) = micro(i)?;
                let (lg, al) = self.built.model.forward_t_with_aux(&xi, true, seed_of(i))?;
                add_stats(&mut stats, self.loss.shard_statistics(&lg, &yi)?)?;
                if let (Some((aux, _)), Some(a)) = (&self.aux_loss, &al) {
                    add_stats(&mut aux_stats, aux.shard_statistics(a, &yi)?)?;
                }
                if k == 1 {
                    *slot = Some((lg, al));
                }
            }
            for ((_, v), t) in self.buffers.iter().zip(&saved) {
                v.set(t)?;
            }
        } else {
            // The statistics read the labels and only the logits' shape: a broadcast
            // zero stands in for the logits, without allocating them.
            let c = self.data.classes.n_classes();
            let zero = Tensor::zeros((1, 1, 1, 1), DType::F32, &self.device)?;
            for i in 0..k {
                let (_, yi) = micro(i)?;
                let (_, h, w) = yi.dims3()?;
                let shape = zero.broadcast_as((m, c, h, w))?;
                add_stats(&mut stats, self.loss.shard_statistics(&shape, &yi)?)?;
                if let Some((aux, _)) = &self.aux_loss {
                    add_stats(&mut aux_stats, aux.shard_statistics(&shape, &yi)?)?;
                }
            }
        }
        if world > 1 {
            let split = stats.0.len();
            let mut both = [stats.0.as_slice(), aux_stats.0.as_slice()].concat();
            self.comm.all_reduce_sum_f64(&mut both)?;
            aux_stats.0 = both.split_off(split);
            stats.0 = both;
        }
        Ok((stats, aux_stats, kept))
    }

    /// Checks that every rank holds the same model and optimiser state (bit for bit), as data
    /// parallelism promises: rank 0's digest is broadcast, each rank compares its own, and the
    /// count of differing ranks is summed so that every rank fails together. A difference means
    /// a non-deterministic kernel or ranks launched with different settings.
    fn check_replicas(&self) -> anyhow::Result<()> {
        let mut digest = StateDigest::default();
        let varmap = self
            .built
            .varmap
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("the model's VarMap lock is poisoned"))?;
        let mut names: Vec<&String> = varmap.keys().collect();
        names.sort();
        for name in names {
            digest.tensor(name, varmap[name].as_tensor())?;
        }
        drop(varmap);
        let (state, steps) = self.optimizer.state();
        let mut keys: Vec<&String> = state.keys().collect();
        keys.sort();
        for key in keys {
            digest.tensor(key, &state[key])?;
        }
        digest.bytes(&steps.to_le_bytes());
        let mine = digest.finish().to_le_bytes().to_vec();
        let mut lead = mine.clone();
        self.comm.broadcast_bytes(&mut lead, 0)?;
        let mut differ = [(lead != mine) as u64];
        self.comm.all_reduce_sum_u64(&mut differ)?;
        if differ[0] > 0 {
            anyhow::bail!(
                "after step {}: the model or optimiser state of {} rank(s) differs from rank 0's \
                 (this rank {}: {}); data-parallel replicas must stay identical (ranks launched \
                 with different settings, or a non-deterministic kernel)",
                self.step,
                differ[0],
                self.comm.rank(),
                if lead == mine { "same" } else { "differs" }
            );
        }
        Ok(())
    }

    /// Sums the gradients of the trainable parameters over every rank and averages the
    /// BatchNorm running statistics, in one all-reduce of one flat `f32` buffer (parameters in
    /// the model's fixed order; a parameter without a gradient has none on any rank, since
    /// every rank runs the same graph).
    fn all_reduce_gradients_and_buffers(
        &self,
        grads: &mut candle_core::backprop::GradStore,
    ) -> candle_core::Result<()> {
        let mut parts = Vec::new();
        let mut with_grad = Vec::new();
        for nv in &self.built.trainable {
            if let Some(g) = grads.get(nv.var.as_tensor()) {
                parts.push(g.to_dtype(DType::F32)?.flatten_all()?);
                with_grad.push(nv.var.as_tensor().clone());
            }
        }
        for (_, v) in &self.buffers {
            parts.push(v.as_tensor().to_dtype(DType::F32)?.flatten_all()?);
        }
        if parts.is_empty() {
            return Ok(());
        }
        let bucket = self.comm.all_reduce_sum(&Tensor::cat(&parts, 0)?)?;
        let mut offset = 0;
        for t in &with_grad {
            let n = t.elem_count();
            let g = bucket
                .narrow(0, offset, n)?
                .reshape(t.shape())?
                .to_dtype(t.dtype())?;
            grads.insert(t, g);
            offset += n;
        }
        let inv = 1.0 / self.comm.size() as f64;
        for (_, v) in &self.buffers {
            let t = v.as_tensor();
            let n = t.elem_count();
            let mean = (bucket.narrow(0, offset, n)?.reshape(t.shape())? * inv)?;
            v.set(&mean.to_dtype(t.dtype())?)?;
            offset += n;
        }
        Ok(())
    }

    fn snapshot(&self) -> candle_core::Result<StepSnapshot> {
        Ok(StepSnapshot {
            rng: self.rng.clone(),
            loss_state: self.loss.state(),
            aux_loss_state: self.aux_loss.as_ref().and_then(|(l, _)| l.state()),
            buffers: self
                .buffers
                .iter()
                .map(|(_, v)| Ok((v.clone(), v.as_tensor().copy()?)))
                .collect::<candle_core::Result<_>>()?,
        })
    }

    fn restore(&mut self, snapshot: StepSnapshot) -> anyhow::Result<()> {
        self.rng = snapshot.rng;
        if let Some(state) = snapshot.loss_state {
            self.loss
                .load_state(&state)
                .map_err(|e| anyhow::anyhow!("restoring the loss state: {e}"))?;
        }
        if let (Some(state), Some((aux, _))) = (snapshot.aux_loss_state, &mut self.aux_loss) {
            aux.load_state(&state)
                .map_err(|e| anyhow::anyhow!("restoring the auxiliary loss state: {e}"))?;
        }
        for (var, t) in snapshot.buffers {
            var.set(&t)?;
        }
        Ok(())
    }

    /// The error of a failed (and rolled back) step, after saving the last good state.
    fn fail_step(&mut self, failure: StepFailure) -> anyhow::Error {
        let at = self.step + 1;
        match failure {
            StepFailure::Error(e) => self.fail_in_step(e),
            StepFailure::NonFiniteLoss(v) => {
                let value = if v.is_nan() { "NaN" } else { "infinite" }.to_string();
                let loss = self.loss_name.clone();
                self.fail_saving(
                    format!("non-finite loss or logits ({v}) at step {at}"),
                    |checkpoint| {
                        TrainError::NonFiniteLoss {
                            step: at,
                            value,
                            loss,
                            checkpoint,
                        }
                        .into()
                    },
                )
            }
            StepFailure::NonFiniteBuffer(k, count) => {
                let tensor = self.buffers[k].0.clone();
                self.fail_saving(format!("non-finite {tensor} at step {at}"), |checkpoint| {
                    TrainError::NonFiniteBuffer {
                        step: at,
                        tensor,
                        count,
                        checkpoint,
                    }
                    .into()
                })
            }
            StepFailure::Rejected(update) => self.fail_saving(
                format!("non-finite update at step {at}: {update}"),
                |checkpoint| {
                    TrainError::NonFiniteUpdate {
                        step: at,
                        update,
                        checkpoint,
                    }
                    .into()
                },
            ),
        }
    }

    /// An error during a step (nothing of it applied).
    fn fail_in_step(&mut self, e: anyhow::Error) -> anyhow::Error {
        let at = self.step + 1;
        let reason = format!("error: {e:#}");
        self.fail_saving(reason, |saved| {
            e.context(format!("training stopped at step {at}; {saved}"))
        })
    }

    /// An error after a completed step (validation, logging, checkpoints): the state is good.
    /// When the step's validation was not completely recorded (its `best` or its log line), the
    /// state after the step is *not* saved: a resume then repeats the step and its validation,
    /// and ends with the files and records of a run that was never interrupted.
    fn fail_after_step(
        &mut self,
        e: impl Into<anyhow::Error>,
        validation_recorded: bool,
    ) -> anyhow::Error {
        let e: anyhow::Error = e.into();
        let step = self.step;
        let reason = format!("error: {e:#}");
        // Saving `last` at this step would skip its validation on resume.
        let unsaved = if validation_recorded {
            String::new()
        } else {
            format!(
                "the validation of step {step} was not completely written, so the state after it \
                 was not saved; "
            )
        };
        self.fail_with(reason, validation_recorded, |saved| {
            e.context(format!(
                "training stopped after step {step}; {unsaved}{saved}"
            ))
        })
    }

    /// Ends the run with an error after saving the current (good) state to `last.safetensors`
    /// when it holds steps not yet saved; `make` builds the error from the sentence saying what
    /// was saved.
    fn fail_saving(
        &mut self,
        reason: String,
        make: impl FnOnce(String) -> anyhow::Error,
    ) -> anyhow::Error {
        self.fail_with(reason, true, make)
    }

    /// [`Self::fail_saving`], saving only when `may_save` (otherwise `make` hears of the last
    /// checkpoint written).
    fn fail_with(
        &mut self,
        reason: String,
        may_save: bool,
        make: impl FnOnce(String) -> anyhow::Error,
    ) -> anyhow::Error {
        let step = self.step;
        let saved = if may_save && self.last_saved_step.is_none_or(|s| step > s) && step > 0 {
            match self.checkpoint(&self.last_path) {
                Ok(()) => {
                    let _ = self.log.write(&LogRecord::Checkpoint {
                        step,
                        path: self.last_path.clone(),
                        reason: "error".into(),
                    });
                    format!(
                        "the state after step {step} was saved to {} (continue with --resume)",
                        self.last_path.display()
                    )
                }
                Err(e) => format!(
                    "saving the state after step {step} to {} failed too ({e:#})",
                    self.last_path.display()
                ),
            }
        } else {
            match self.last_saved_step {
                Some(s) => format!(
                    "the last checkpoint is {} (step {s})",
                    self.last_path.display()
                ),
                None => "no checkpoint was written".to_string(),
            }
        };
        let _ = self.log.write(&LogRecord::Stopped { step, reason });
        self.progress.finish();
        make(saved)
    }

    /// Logging, validation and checkpoints after a completed step that used learning rate
    /// `lr`. Validation comes first (it decides the best), then `last` before `best`: when the
    /// disk fills up, the state that matters for resuming is the one that was written. Each log
    /// record is written after what it reports.
    fn after_step(&mut self, lr: f64) -> anyhow::Result<()> {
        let mut validation_recorded = true;
        match self.after_step_inner(lr, &mut validation_recorded) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail_after_step(e, validation_recorded)),
        }
    }

    /// Sets `validation_recorded` to false from the start of a validation until its `best`
    /// checkpoint, log line and `metrics.csv` are written.
    fn after_step_inner(&mut self, lr: f64, validation_recorded: &mut bool) -> anyhow::Result<()> {
        let cfg = self.cfg;
        let iters = cfg.train.iters as u64;
        let step = self.step;
        if step.is_multiple_of(cfg.train.log_every as u64) || step == iters {
            let mean = self.loss_acc.0 / self.loss_acc.1.max(1) as f64;
            let dt = self.interval_start.elapsed().as_secs_f64();
            self.log.write(&LogRecord::Train {
                step,
                loss: mean,
                lr,
                steps_per_s: if dt > 0.0 {
                    self.interval_steps as f64 / dt
                } else {
                    0.0
                },
                class_weights: finite_or_none(self.class_weights.clone()),
                loss_terms: self
                    .loss_terms
                    .as_ref()
                    .map(|t| t.iter().map(|t| (t.name.clone(), t.value)).collect()),
            })?;
            self.last_loss = Some(mean);
            if !self.quiet() {
                self.progress.update(step, mean, true);
            }
            self.loss_acc = (0.0, 0);
            self.interval_start = Instant::now();
            self.interval_steps = 0;
        }
        let val_now = (cfg.train.val_every > 0 && step.is_multiple_of(cfg.train.val_every as u64))
            || step == iters;
        let ck_now = (cfg.train.checkpoint_every > 0
            && step.is_multiple_of(cfg.train.checkpoint_every as u64))
            || step == iters;
        let check_every = cfg.train.check_replicas_every as u64;
        if self.comm.size() > 1 && (ck_now || (check_every > 0 && step.is_multiple_of(check_every)))
        {
            self.check_replicas()?;
        }
        // Order (each file complete before the one that refers to it): a new `best`, the
        // validation's log line and metrics.csv, then the checkpoint's log line, then `last`,
        // which records the best. A resume truncates the log after its checkpoint's step, so
        // whatever an interruption cut off is redone and rewritten exactly.
        *validation_recorded = !val_now;
        let val_record = if val_now { self.validate()? } else { None };
        if let Some((rep, is_best, val_loss)) = val_record {
            if is_best {
                self.checkpoint(&cfg.train.out_dir.join(files::BEST))?;
                crate::fault::point("after-best");
            }
            self.log.write(&LogRecord::Val {
                step,
                loss: val_loss,
                mean_accuracy: rep.mean_accuracy.value,
                mean_iou: rep.mean_iou.value,
                pixel_accuracy: rep.pixel_accuracy,
                recall: rep.classes.iter().map(|c| c.recall).collect(),
                iou: rep.classes.iter().map(|c| c.iou).collect(),
                best: is_best,
            })?;
            crate::log::write_metrics_csv(&cfg.train.out_dir)?;
        }
        *validation_recorded = true;
        if ck_now {
            self.log.write(&LogRecord::Checkpoint {
                step,
                path: self.last_path.clone(),
                reason: if step == iters { "final" } else { "periodic" }.into(),
            })?;
            self.checkpoint(&self.last_path)?;
            self.last_saved_step = Some(step);
        }
        Ok(())
    }

    /// The whole validation split's confusion matrix, ignored pixels, image count and loss sum
    /// from every rank's share: one `u64` all-reduce of the counts (exact, so the metrics and
    /// the decisions taken on them are the one-process ones) and one `f64` of the loss sum.
    fn sum_validation_shards(
        &self,
        matrix: recallseg_metrics::ConfusionMatrix,
        images: usize,
        loss_sum: f64,
    ) -> anyhow::Result<(recallseg_metrics::ConfusionMatrix, u64, usize, f64)> {
        let mut counts = matrix.counts().to_vec();
        counts.extend([matrix.ignored_pixels(), images as u64]);
        self.comm.all_reduce_sum_u64(&mut counts)?;
        let images = counts.pop().unwrap_or(0) as usize;
        let ignored = counts.pop().unwrap_or(0);
        let mut sum = [loss_sum];
        self.comm.all_reduce_sum_f64(&mut sum)?;
        let summed = recallseg_metrics::ConfusionMatrix::from_counts(
            matrix.n_classes(),
            matrix.ignore_index(),
            counts,
        )?;
        Ok((summed, ignored, images, sum[0]))
    }

    /// Evaluates the model on the validation split (when the run has one) and offers its mean
    /// IoU to the [`KeepBest`] strategy: the report, whether it is the new best and the
    /// validation loss. The loss is measured with a copy of the run's loss holding its current
    /// state, so validation never changes what training does.
    fn validate(&mut self) -> anyhow::Result<Option<(Report, bool, Option<f64>)>> {
        let Some(vl) = &self.data.val else {
            return Ok(None);
        };
        let mut val_loss = build_loss(self.cfg, &self.data.classes, &self.data.class_pixel_counts)?;
        let state = self.loss.state();
        let (EvalOutput { matrix, images, .. }, loss_sum) = evaluate_with_loss_sum(
            &self.built.model,
            vl,
            &self.device,
            0,
            val_loss.as_mut(),
            state.as_deref(),
        )?;
        let ignored = matrix.ignored_pixels();
        let (matrix, ignored, images, loss_sum) = if self.data.val_sharded {
            self.sum_validation_shards(matrix, images, loss_sum)?
        } else {
            (matrix, ignored, images, loss_sum)
        };
        let loss = (images > 0).then(|| loss_sum / images as f64);
        let mut rep = matrix.report_with_names(&self.data.classes.names)?;
        rep.ignored_pixels = ignored;
        let miou = rep.mean_iou.value.unwrap_or(0.0);
        let is_best = self.keep_best.offer(miou, self.step);
        if let (Some(es), Some(cfg)) = (&mut self.early_stop, &self.cfg.train.early_stop) {
            es.offer(cfg.metric.value(&rep), self.step);
        }
        if !self.quiet() {
            self.progress.println(&format!(
                "step {}: val loss {:.4} mean acc {:.2}% mean IoU {:.2}%{}",
                self.step,
                loss.unwrap_or(f64::NAN),
                100.0 * rep.mean_accuracy.value.unwrap_or(f64::NAN),
                100.0 * miou,
                if is_best { " (best)" } else { "" }
            ));
        }
        self.interval_start = Instant::now();
        Ok(Some((rep, is_best, loss)))
    }
}

/// Refuses a batch that does not divide into equal micro-batches over the ranks.
fn check_micro_batches(cfg: &TrainConfig, world: usize) -> anyhow::Result<()> {
    let shards = world * cfg.train.accumulate;
    if !cfg.train.batch_size.is_multiple_of(shards) {
        anyhow::bail!(
            "train.batch_size: {} does not divide into {world} rank(s) × train.accumulate = {} \
             equal micro-batches",
            cfg.train.batch_size,
            cfg.train.accumulate
        );
    }
    Ok(())
}

/// The stop rules `opts` asks for: a step budget, an interrupt flag.
fn stop_rules(opts: &TrainOptions) -> Vec<StopRule> {
    let mut rules = Vec::new();
    if let Some(n) = opts.stop_after {
        rules.push(StopRule::AfterSteps(n));
    }
    if let Some(flag) = &opts.interrupt {
        rules.push(StopRule::Interrupt(flag.clone()));
    }
    rules
}

/// The device this rank trains on. Under data parallelism `cuda` means each rank's own GPU:
/// `cuda:<local rank>`. A communicator bound to a device (NCCL) brings the very handle to train
/// on, which must be the configured one.
fn open_rank_device(
    cfg: &TrainConfig,
    comm: &SharedCommunicator,
) -> anyhow::Result<candle_core::Device> {
    let world = comm.size();
    let device_text = crate::distributed::rank_device(&cfg.train.device, world, comm.rank());
    let spec = DeviceSpec::parse(&device_text).map_err(|m| anyhow::anyhow!("train.device: {m}"))?;
    Ok(match comm.device() {
        Some(bound) => {
            let same = match (spec, bound.location()) {
                (DeviceSpec::Cuda(n), candle_core::DeviceLocation::Cuda { gpu_id }) => n == gpu_id,
                (DeviceSpec::Cpu, candle_core::DeviceLocation::Cpu) => true,
                (DeviceSpec::Metal, candle_core::DeviceLocation::Metal { .. }) => true,
                _ => false,
            };
            if !same {
                anyhow::bail!(
                    "train.device: `{device_text}` on rank {}, but its {} communicator is \
                     bound to {:?}",
                    comm.rank(),
                    comm.backend(),
                    bound.location()
                );
            }
            bound
        }
        None => spec.open()?,
    })
}

/// Rank 0 prepares the run folder (lock, leftovers, an earlier run, generated data) and tells
/// the other ranks whether the run resumes; their error is rank 0's. Returns rank 0's lock
/// (`None` on the others) and whether the run resumes.
fn prepare_run_dir_on_ranks(
    cfg: &TrainConfig,
    opts: &TrainOptions,
    comm: &SharedCommunicator,
) -> anyhow::Result<(Option<RunLock>, bool)> {
    Ok(if comm.size() == 1 {
        let (lock, resuming) = prepare_run_dir(cfg, opts)?;
        (Some(lock), resuming)
    } else {
        let prepared = (comm.rank() == 0).then(|| prepare_run_dir(cfg, opts));
        let mut status = match &prepared {
            Some(Ok((_, resuming))) => vec![1, *resuming as u8],
            Some(Err(e)) => [&[0u8][..], format!("{e:#}").as_bytes()].concat(),
            None => Vec::new(),
        };
        comm.broadcast_bytes(&mut status, 0)?;
        match prepared {
            Some(Ok((lock, resuming))) => (Some(lock), resuming),
            Some(Err(e)) => return Err(e),
            None if status.first() == Some(&1) => (None, status.get(1) == Some(&1)),
            None => anyhow::bail!(
                "rank 0 could not open the run: {}",
                String::from_utf8_lossy(status.get(1..).unwrap_or(&[]))
            ),
        }
    })
}

/// What a resumed run takes from its checkpoint besides the tensors.
struct Restored {
    rng: ChaCha8Rng,
    step: u64,
    best: Option<(f64, u64)>,
    loss_acc: (f64, u64),
    prior_seconds: f64,
    early_stop: Option<crate::checkpoint::EarlyStopState>,
}

impl Restored {
    /// The state of a run that starts at step 0.
    fn fresh(cfg: &TrainConfig) -> Self {
        Restored {
            rng: ChaCha8Rng::seed_from_u64(cfg.train.seed ^ 0x7261_6e64_5f74_726e),
            step: 0,
            best: None,
            loss_acc: (0.0, 0),
            prior_seconds: 0.0,
            early_stop: None,
        }
    }
}

/// The label of the run's progress lines and its progress display (nothing on ranks other than
/// 0 or when quiet), which says where a resumed run resumed from.
fn run_progress(
    cfg: &TrainConfig,
    opts: &TrainOptions,
    lead: bool,
    resuming: bool,
    step: u64,
    last_path: &Path,
) -> (String, Progress) {
    let label = opts
        .label
        .clone()
        .unwrap_or_else(|| cfg.loss.name().to_string());
    let quiet = opts.quiet || !lead;
    let progress = Progress::new(
        &label,
        step,
        cfg.train.iters as u64,
        opts.progress_bar && !quiet,
    );
    if resuming && !quiet {
        progress.println(&format!(
            "resumed from {} at step {step}",
            last_path.display()
        ));
    }
    (label, progress)
}

/// Restores `last_path` (written by the same run, up to what may change on resume) into the
/// model, the optimiser and the losses' state.
#[allow(clippy::too_many_arguments)]
fn restore_checkpoint(
    cfg: &TrainConfig,
    last_path: &Path,
    device: &candle_core::Device,
    built: &BuiltModel,
    optimizer: &mut dyn Optimizer,
    loss: &mut dyn SegLoss,
    aux_loss: Option<&mut dyn SegLoss>,
) -> anyhow::Result<Restored> {
    let ck = Checkpoint::load(last_path, device)?;
    let saved: TrainConfig = toml::from_str(&ck.meta.config_toml)
        .map_err(|e| anyhow::anyhow!("{}: stored config unreadable: {e}", last_path.display()))?;
    let differences = run_differences(&saved, cfg);
    if !differences.is_empty() {
        anyhow::bail!(
            "{} was written by a different configuration:\n  {}\nuse another \
             train.out_dir, or --overwrite to start this one there (what may change on \
             resume: train.iters unless the schedule is poly or cosine, the logging, \
             validation and checkpoint intervals, data.workers, train.device and the \
             number of ranks)",
            last_path.display(),
            differences.join("\n  ")
        );
    }
    if ck.meta.step > cfg.train.iters as u64 {
        anyhow::bail!(
            "{} is at step {}, beyond train.iters = {}; raise train.iters or start a new \
             run",
            last_path.display(),
            ck.meta.step,
            cfg.train.iters
        );
    }
    ck.restore_varmap(&built.varmap, last_path)?;
    optimizer.load_state(&ck.optim, ck.meta.optim_steps)?;
    restore_loss_state(loss, aux_loss, &ck.extra, last_path)?;
    let rng = ck
        .meta
        .rng
        .restore()
        .map_err(|m| anyhow::anyhow!("{}: {m}", last_path.display()))?;
    Ok(Restored {
        rng,
        step: ck.meta.step,
        best: ck.meta.best,
        loss_acc: ck.meta.loss_acc,
        prior_seconds: ck.meta.train_seconds,
        early_stop: ck.meta.early_stop,
    })
}

/// The run's log: a fresh one with its header, the existing one cut after `step` with a
/// `resumed` line, or (ranks other than 0) one that writes nothing.
fn open_run_log(
    cfg: &TrainConfig,
    lead: bool,
    resuming: bool,
    step: u64,
    world: usize,
    class_names: &[String],
) -> anyhow::Result<JsonlLog> {
    let log_path = cfg.train.out_dir.join(files::LOG);
    Ok(if !lead {
        JsonlLog::discard(&log_path)
    } else if resuming {
        let mut log = JsonlLog::resume(&log_path, step)?;
        if step < cfg.train.iters as u64 {
            log.write(&LogRecord::Resumed {
                step,
                ranks: Some(world as u64),
            })?;
        }
        log
    } else {
        let mut log = JsonlLog::create(&log_path)?;
        log.write(&LogRecord::Header {
            class_names: class_names.to_vec(),
            loss: cfg.loss.name().to_string(),
            iters: cfg.train.iters as u64,
            ranks: Some(world as u64),
        })?;
        log
    })
}

/// Rank 0's preparation of the run folder: creates and locks it, removes leftovers of killed
/// writes, refuses (or, with `overwrite`, clears) a folder holding another run, generates the
/// synthetic dataset when asked; returns the lock and whether the run resumes.
fn prepare_run_dir(cfg: &TrainConfig, opts: &TrainOptions) -> anyhow::Result<(RunLock, bool)> {
    let out = &cfg.train.out_dir;
    std::fs::create_dir_all(out).map_err(|e| anyhow::anyhow!("creating {}: {e}", out.display()))?;
    let lock = RunLock::acquire(out)?;
    // Holding the lock, no other process writes here: temporary files are leftovers of
    // killed writes.
    let stale = recallseg_files::remove_stale_temp_files(out)
        .map_err(|e| anyhow::anyhow!("{}: removing stale temporary files: {e}", out.display()))?;
    if !stale.is_empty() && !opts.quiet {
        note!(
            "removed {} temporary file(s) of interrupted checkpoint writes from {}",
            stale.len(),
            out.display()
        );
    }
    // `--resume` never deletes: it continues from `last`, starts a run in a folder that holds
    // none, or refuses, naming what is there. Only `--overwrite` removes a run.
    let last = out.join(files::LAST);
    let resuming = opts.resume && last.is_file();
    if !resuming {
        match crate::run_dir::existing_run(out) {
            Some(_) if opts.overwrite => crate::run_dir::remove_run_files(out)?,
            Some(_) if crate::run_dir::holds_nothing_to_lose(out) => {
                crate::run_dir::remove_run_files(out)?
            }
            Some(what) if opts.resume => {
                let why = if std::fs::symlink_metadata(&last).is_ok() {
                    format!(
                        "{} is not a readable file (a dangling or looping link, or a folder)",
                        last.display()
                    )
                } else {
                    format!(
                        "it has no {} (a run killed before its first checkpoint, e.g. by kill -9 \
                         or the out-of-memory killer, leaves none; train.checkpoint_every sets \
                         how often it is written)",
                        files::LAST
                    )
                };
                anyhow::bail!(
                    "{} cannot be resumed: it holds {what}, but {why}. Nothing was removed; \
                     start the run again with --overwrite (which deletes {what}), or choose \
                     another train.out_dir",
                    out.display()
                )
            }
            Some(what) => anyhow::bail!(
                "{} holds a run ({what}); continue it with --resume, replace it with \
                 --overwrite, or choose another train.out_dir",
                out.display()
            ),
            None => {}
        }
    }
    if cfg.data.generate_synthetic {
        crate::data::ensure_synthetic(&cfg.data, &crate::data::quick_synthetic_config())?;
    }
    Ok((lock, resuming))
}

/// The model tensors that are not trainable (BatchNorm running statistics), sorted by name.
fn non_trainable_vars(built: &BuiltModel) -> anyhow::Result<Vec<(String, Var)>> {
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
    Ok(names
        .into_iter()
        .map(|n| (n.clone(), data[n].clone()))
        .filter(|(_, v)| !trainable.contains(&v.as_tensor().id()))
        .collect())
}

fn finite_or_none(w: Option<Vec<f32>>) -> Option<Vec<Option<f32>>> {
    // Classes absent from the batch are NaN: logged as null (JSON has no NaN), left out of the
    // normalisation and drawn as gaps in Fig. 4.
    w.map(|v| v.into_iter().map(|x| x.is_finite().then_some(x)).collect())
}

/// A CRC-32 over named tensors' bytes (in the order given) for comparing replicas.
#[derive(Default)]
struct StateDigest(crc32fast::Hasher);

impl StateDigest {
    fn bytes(&mut self, b: &[u8]) {
        self.0.update(b);
    }

    /// The name, the shape and the values' bits.
    fn tensor(&mut self, name: &str, t: &Tensor) -> candle_core::Result<()> {
        self.bytes(name.as_bytes());
        for d in t.dims() {
            self.bytes(&(*d as u64).to_le_bytes());
        }
        let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let raw: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.bytes(&raw);
        Ok(())
    }

    fn finish(self) -> u32 {
        self.0.finalize()
    }
}
