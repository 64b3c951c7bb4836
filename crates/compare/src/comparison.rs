//! The paper's loss comparison on any dataset: one training per loss with a common
//! configuration, each evaluated on the test split, then the report (`recallseg_report`).
//!
//! [`ComparisonPlan::new`] makes a plan from any training configuration (Synthia, Cityscapes or
//! a folder dataset of one's own) and a list of losses ([`parse_losses`]); [`run_comparison`]
//! runs it. `recallseg compare --config my.toml --losses ce,weighted_ce,recall_ce` and
//! `cargo xtask reproduce` are both thin shells over these.
//!
//! Runs live in `<out>/runs/<loss name>/`. A run whose `summary.json` exists for the same
//! configuration is reused as is; a run with a `last.safetensors` of the same configuration is
//! resumed; so an interrupted comparison continues where it stopped when started again.
//!
//! The runs may also be trained elsewhere, each by `recallseg train --config <its config>
//! --resume` ([`run_config`]; e.g. as a Slurm job array, [`crate::sweep`]):
//! [`collect_comparison`] then evaluates the finished ones and writes the same report, training
//! nothing.

use recallseg_data::transform::resize_bilinear_rgb;
use recallseg_losses::LossConfig;
use recallseg_report::{Comparison, ExampleRow, ExampleSet, RunSummary, Setting, WrittenReport};
use recallseg_trainer::config::TrainConfig;
use recallseg_trainer::eval::evaluate_with;
use recallseg_trainer::log::{read_log, LogRecord};
use recallseg_trainer::predict::{Predictor, PredictorOptions};
use recallseg_trainer::train::{self, open_eval, TrainOptions};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

/// One loss of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct LossRun {
    /// The label used in tables and plots (`Recall`, `CE`, …).
    pub label: String,
    /// The loss and its parameters.
    pub loss: LossConfig,
}

/// A loss by name (aliases as in [`LossConfig::from_name`]) with its default parameters, which
/// are the paper's (Focal γ = 1, OHEM keeps 70%), labelled as the paper's tables do.
pub fn loss_run(name: &str) -> anyhow::Result<LossRun> {
    let loss = LossConfig::from_name(name)?;
    Ok(LossRun {
        label: loss.label().into(),
        loss,
    })
}

/// The paper's comparison: CE, WeightedCE, BalancedCE, Focal (γ = 1), OHEM (70%), SoftIoU,
/// Lovász-Softmax, RecallCE.
pub fn paper_losses() -> Vec<LossRun> {
    [
        "cross_entropy",
        "weighted_ce",
        "balanced_ce",
        "focal",
        "ohem",
        "soft_iou",
        "lovasz",
        "recall_ce",
    ]
    .iter()
    .map(|n| loss_run(n).expect("known loss"))
    .collect()
}

/// The quick comparison: CE, WeightedCE, Focal (γ = 1), RecallCE.
pub fn quick_losses() -> Vec<LossRun> {
    ["cross_entropy", "weighted_ce", "focal", "recall_ce"]
        .iter()
        .map(|n| loss_run(n).expect("known loss"))
        .collect()
}

/// Which weights of each run are evaluated on the test split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Evaluate {
    /// The weights after the last step (default).
    #[default]
    Final,
    /// The checkpoint of the best validation mean IoU (`best.safetensors`), as the paper's
    /// `train.py` keeps and its `test.py` evaluates.
    Best,
    /// Both: the best-validation weights as the main result (the paper's choice), the final
    /// weights reported beside them.
    Both,
}

impl std::str::FromStr for Evaluate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "final" => Ok(Evaluate::Final),
            "best" => Ok(Evaluate::Best),
            "both" => Ok(Evaluate::Both),
            _ => Err(format!("`{s}` is not one of final, best, both")),
        }
    }
}

impl Evaluate {
    /// The name `--evaluate` takes: `final`, `best` or `both`.
    pub fn name(self) -> &'static str {
        match self {
            Evaluate::Final => "final",
            Evaluate::Best => "best",
            Evaluate::Both => "both",
        }
    }

    /// The weights of the main result: `"final"` or `"best"`.
    pub fn primary(self) -> &'static str {
        match self {
            Evaluate::Final => "final",
            Evaluate::Best | Evaluate::Both => "best",
        }
    }
}

/// What to compare and where to write it.
#[derive(Debug, Clone)]
pub struct ComparisonPlan {
    /// Report title.
    pub title: String,
    /// The configuration shared by every run (its `[loss]` and `train.out_dir` are replaced).
    pub base: TrainConfig,
    /// The losses, in report order.
    pub losses: Vec<LossRun>,
    /// Output folder (`results/<name>`).
    pub out_dir: PathBuf,
    /// Example predictions to draw (Fig. 3); 0 = none.
    pub examples: usize,
    /// Whether the data is the generated synthetic dataset (said in the report).
    pub synthetic: bool,
    /// Notes printed in the report.
    pub notes: Vec<String>,
    /// Which weights are evaluated on the test split.
    pub evaluate: Evaluate,
}

impl ComparisonPlan {
    /// A plan comparing `losses` on the data and model of `base` (any dataset kind), written
    /// into `out_dir`: titled after the dataset ([`default_title`]), 4 example rows, the final
    /// weights evaluated, and the standard notes ([`standard_notes`]).
    pub fn new(base: TrainConfig, losses: Vec<LossRun>, out_dir: PathBuf) -> Self {
        let evaluate = Evaluate::Final;
        Self {
            title: default_title(&base),
            synthetic: base.data.generate_synthetic,
            notes: standard_notes(&out_dir, evaluate),
            base,
            losses,
            out_dir,
            examples: 4,
            evaluate,
        }
    }

    /// The same plan testing other weights (the evaluation note follows).
    pub fn with_evaluate(mut self, evaluate: Evaluate) -> Self {
        let old = evaluation_note(self.evaluate);
        for n in &mut self.notes {
            if *n == old {
                *n = evaluation_note(evaluate);
            }
        }
        self.evaluate = evaluate;
        self
    }
}

/// `Loss comparison on <dataset>`: Synthia, Cityscapes, or the folder dataset's class file.
pub fn default_title(base: &TrainConfig) -> String {
    let d = &base.data;
    let what = match d.kind {
        recallseg_trainer::config::DatasetKind::Synthia if d.generate_synthetic => {
            "synthetic Synthia-format data".to_string()
        }
        recallseg_trainer::config::DatasetKind::Synthia => "Synthia".to_string(),
        recallseg_trainer::config::DatasetKind::Cityscapes => "Cityscapes".to_string(),
        recallseg_trainer::config::DatasetKind::Folder => format!("`{}`", d.root.display()),
    };
    format!("Loss comparison on {what} ({})", base.model.backbone.name())
}

/// The note saying which weights were tested.
pub fn evaluation_note(evaluate: Evaluate) -> String {
    format!(
        "Every loss trains from the same seed, data order and initialisation; the test split is \
         evaluated with {}.",
        match evaluate {
            Evaluate::Final => {
                "the final weights (`--evaluate best` tests the best validation checkpoint, as \
                 the paper's code does)"
            }
            Evaluate::Best => {
                "the checkpoint of the best validation mean IoU, as the paper's code does"
            }
            Evaluate::Both => {
                "the checkpoint of the best validation mean IoU (the paper's code) and, in a \
                 second table, the final weights"
            }
        }
    )
}

/// The notes every comparison report carries: how runs are reused and which weights are tested.
pub fn standard_notes(out_dir: &Path, evaluate: Evaluate) -> Vec<String> {
    vec![
        format!(
            "Finished runs in `{}/runs/` are reused when the comparison runs again; an \
             interrupted run resumes from its checkpoint.",
            out_dir.display()
        ),
        evaluation_note(evaluate),
    ]
}

/// Losses by name (`ce`, `weighted_ce`, `recall_ce`, aliases as in [`LossConfig::from_name`]),
/// each with its default parameters; a name given twice (also as two aliases of one loss) is an
/// error, since both runs would share one folder.
pub fn parse_losses<S: AsRef<str>>(names: &[S]) -> anyhow::Result<Vec<LossRun>> {
    let mut out: Vec<LossRun> = Vec::new();
    for n in names {
        let n = n.as_ref().trim();
        let run = loss_run(n).map_err(|e| anyhow::anyhow!("--losses: `{n}`: {e}"))?;
        if let Some(prev) = out.iter().find(|r| r.loss.name() == run.loss.name()) {
            anyhow::bail!(
                "--losses: `{n}` is {} again (given as {}); each loss runs once",
                run.loss.name(),
                prev.label
            );
        }
        out.push(run);
    }
    if out.is_empty() {
        anyhow::bail!("--losses: no loss given");
    }
    Ok(out)
}

/// The per-loss summary printed at the end of a comparison: mean accuracy and mean IoU (%).
pub fn summary_table(cmp: &Comparison) -> String {
    let w = cmp
        .runs
        .iter()
        .map(|r| r.label.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut s = format!(
        "{:<w$} {:>14} {:>12}\n",
        "loss", "mean acc (%)", "mean IoU (%)"
    );
    for r in &cmp.runs {
        s.push_str(&format!(
            "{:<w$} {:>14.2} {:>12.2}\n",
            r.label,
            r.mean_acc_pct(),
            r.mean_iou_pct()
        ));
    }
    s
}

/// Options of [`run_comparison`].
#[derive(Debug, Clone, Default)]
pub struct CompareOptions {
    /// Progress bars on a terminal.
    pub progress_bar: bool,
    /// Stop (after checkpointing the current run) when set.
    pub interrupt: Option<Arc<AtomicBool>>,
    /// Print nothing but errors.
    pub quiet: bool,
    /// Replace a run folder that holds a run of another configuration (or one that cannot be
    /// resumed). Without it such a folder is an error and nothing is deleted.
    pub overwrite: bool,
}

/// What a finished run leaves in `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// The configuration of the run.
    pub config_toml: String,
    /// Its results.
    pub summary: RunSummary,
    /// Number of test images.
    pub test_images: usize,
    /// Example rows kept: `(dataset index, id)`, predictions in `examples/<k>.png`.
    pub examples: Vec<(usize, String)>,
}

/// The configuration of one loss's run.
pub fn run_config(plan: &ComparisonPlan, run: &LossRun) -> TrainConfig {
    let mut cfg = plan.base.clone();
    cfg.loss = run.loss.clone();
    cfg.train.out_dir = run_dir(plan, run);
    cfg
}

/// `<out>/runs/<loss name>`.
pub fn run_dir(plan: &ComparisonPlan, run: &LossRun) -> PathBuf {
    plan.out_dir.join("runs").join(run.loss.name())
}

fn write_gray(path: &Path, data: &[u8], w: usize, h: usize) -> anyhow::Result<()> {
    recallseg_data::png_io::write_gray8(path, w, h, data, recallseg_data::png_io::PngSpeed::Fast)?;
    Ok(())
}

fn read_gray(path: &Path) -> anyhow::Result<Vec<u8>> {
    Ok(image::open(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        .to_luma8()
        .into_raw())
}

/// What [`one_run`] may do with a run whose training has not finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunMode {
    /// Train it (from its checkpoint when there is one): [`run_comparison`].
    Train,
    /// Leave it as it is and say why it is missing: [`collect_comparison`].
    Collect,
}

/// What [`one_run`] ended with.
enum RunState {
    /// Trained (or reused) and evaluated.
    Done(Box<RunRecord>),
    /// Interrupted while training.
    Interrupted,
    /// Not finished and not trained ([`RunMode::Collect`]): why.
    Missing(String),
}

/// Trains (or reuses, or resumes) and evaluates one run; with [`RunMode::Collect`] it trains
/// nothing and deletes nothing: a finished training is evaluated, anything else is reported as
/// missing.
fn one_run(
    plan: &ComparisonPlan,
    run: &LossRun,
    opts: &CompareOptions,
    mode: RunMode,
) -> anyhow::Result<RunState> {
    let cfg = run_config(plan, run);
    cfg.validate()?;
    let dir = &cfg.train.out_dir;
    let summary_path = dir.join("summary.json");
    // `[metrics]` changes only how the report averages, never what a run stores: a finished run
    // is reused whatever it says.
    let cfg_toml = TrainConfig {
        metrics: Default::default(),
        ..cfg.clone()
    }
    .to_toml()?;
    if let Some(r) = reused_summary(plan, run, opts, mode, &summary_path, &cfg_toml)? {
        return Ok(RunState::Done(Box::new(r)));
    }
    if let Some(missing) = check_checkpoint(&cfg, run, opts, mode)? {
        return Ok(missing);
    }
    let outcome = train::train(
        &cfg,
        &TrainOptions {
            resume: true,
            overwrite: opts.overwrite,
            interrupt: opts.interrupt.clone(),
            progress_bar: opts.progress_bar && mode == RunMode::Train,
            // Collecting only reads the checkpoint back: no "resumed from" line.
            quiet: opts.quiet || mode == RunMode::Collect,
            label: Some(run.label.clone()),
            // Collecting trains no step: a finished run's outcome comes from its checkpoint.
            stop_after: (mode == RunMode::Collect).then_some(0),
            // The comparison evaluates the weights it chose on the test split itself.
            skip_test: true,
            communicator: None,
        },
    )?;
    if !outcome.finished {
        return Ok(match mode {
            RunMode::Train => RunState::Interrupted,
            RunMode::Collect => RunState::Missing(format!(
                "stopped at step {} of {} (its checkpoint resumes it)",
                outcome.step, cfg.train.iters
            )),
        });
    }
    let record = evaluate_run(plan, run, &cfg, &outcome, cfg_toml)?;
    let json = serde_json::to_string_pretty(&record)?;
    recallseg_files::write_bytes_atomic(&summary_path, json.as_bytes())?;
    Ok(RunState::Done(Box::new(record)))
}

/// The run's `summary.json` when it is this configuration's and evaluation's (a finished run
/// reused as is); otherwise removes it (training mode: it is made again) and returns `None`.
fn reused_summary(
    plan: &ComparisonPlan,
    run: &LossRun,
    opts: &CompareOptions,
    mode: RunMode,
    summary_path: &Path,
    cfg_toml: &str,
) -> anyhow::Result<Option<RunRecord>> {
    let dir = summary_path.parent().unwrap_or(Path::new("."));
    if !summary_path.is_file() {
        return Ok(None);
    }
    {
        let text = std::fs::read_to_string(summary_path)?;
        let wanted = |r: &RunRecord| {
            r.summary.evaluated == plan.evaluate.primary()
                && r.summary.test_other.is_some() == (plan.evaluate == Evaluate::Both)
        };
        match serde_json::from_str::<RunRecord>(&text) {
            Ok(r) if r.config_toml == cfg_toml && wanted(&r) => {
                if !opts.quiet {
                    note!(
                        "[{}] reusing the finished run in {}",
                        run.label,
                        dir.display()
                    );
                }
                return Ok(Some(r));
            }
            _ if mode == RunMode::Collect => {
                // Replaced below (atomically) if the training is finished; kept otherwise.
            }
            _ => {
                // Only the summary (derived from the run, made again below) goes here; the
                // run's own files are checked next, and replaced only with --overwrite.
                if !opts.quiet {
                    note!(
                        "[{}] {} belongs to another configuration or evaluation: evaluating again",
                        run.label,
                        summary_path.display()
                    );
                }
                std::fs::remove_file(summary_path)?;
            }
        }
    }
    Ok(None)
}

/// Checks the run's `last.safetensors` before training: missing or not this run's when
/// collecting (returned as the reason the run is missing), refused or removed (with
/// `overwrite`) when training; a checkpoint of the same run is left to resume.
fn check_checkpoint(
    cfg: &TrainConfig,
    run: &LossRun,
    opts: &CompareOptions,
    mode: RunMode,
) -> anyhow::Result<Option<RunState>> {
    let dir = &cfg.train.out_dir;
    // A checkpoint of another configuration (or beyond the schedule) would refuse to resume:
    // start over then. One of the same run with fewer steps is continued (`--iters` raised).
    let last = dir.join(recallseg_trainer::run_files::LAST);
    if mode == RunMode::Collect && !last.is_file() {
        return Ok(Some(RunState::Missing(format!(
            "not started ({} does not exist)",
            last.display()
        ))));
    }
    if last.is_file() {
        let ck = recallseg_trainer::checkpoint::Checkpoint::load(&last, &candle_core::Device::Cpu);
        let why_not = match &ck {
            Err(e) => Some(format!("it cannot be used ({e})")),
            Ok(ck) if ck.meta.step > cfg.train.iters as u64 => {
                Some(format!("it is beyond {} steps", cfg.train.iters))
            }
            Ok(ck) => match toml::from_str::<TrainConfig>(&ck.meta.config_toml) {
                Ok(c) if train::same_run(&c, cfg) => None,
                _ => Some("it belongs to another configuration".to_string()),
            },
        };
        match (why_not, mode) {
            (Some(why), RunMode::Collect) => {
                return Ok(Some(RunState::Missing(format!(
                    "{} is not this run's: {why}",
                    last.display()
                ))))
            }
            (Some(why), RunMode::Train) if !opts.overwrite => anyhow::bail!(
                "[{}] {} cannot be continued: {why}; nothing was removed: replace the run with \
                 --overwrite, or choose another output folder",
                run.label,
                last.display()
            ),
            (Some(why), RunMode::Train) => {
                if !opts.quiet {
                    note!(
                        "[{}] starting over: {} is not resumed because {why}",
                        run.label,
                        last.display()
                    );
                }
                std::fs::remove_file(&last)?;
            }
            (None, RunMode::Collect) => {
                let step = ck.as_ref().map_or(0, |c| c.meta.step);
                // A run stopped early by `train.early_stop` is finished below its step count:
                // the trainer tells (without a step) when early stopping is configured.
                if step < cfg.train.iters as u64 && cfg.train.early_stop.is_none() {
                    return Ok(Some(RunState::Missing(format!(
                        "stopped at step {step} of {} (its checkpoint resumes it)",
                        cfg.train.iters
                    ))));
                }
            }
            (None, RunMode::Train) => {}
        }
    }
    Ok(None)
}

/// Evaluates a finished run's chosen weights on the test split and makes its record (the
/// examples' predictions written into `<run>/examples/`).
fn evaluate_run(
    plan: &ComparisonPlan,
    run: &LossRun,
    cfg: &TrainConfig,
    outcome: &train::TrainOutcome,
    cfg_toml: String,
) -> anyhow::Result<RunRecord> {
    let dir = &cfg.train.out_dir;
    // Evaluate the chosen weights on the test split (the examples come from the main ones).
    let device = recallseg_trainer::config::DeviceSpec::parse(&cfg.train.device)
        .map_err(|m| anyhow::anyhow!("train.device: {m}"))?
        .open()?;
    let weights = |which: &str| match which {
        "best" => dir.join(recallseg_trainer::run_files::BEST),
        _ => outcome.last_checkpoint.clone(),
    };
    let (_, loader) = open_eval(cfg, &cfg.data.test_split)?;
    let primary = weights(plan.evaluate.primary());
    if !primary.is_file() {
        anyhow::bail!(
            "{} does not exist: evaluating the best-validation weights needs a validation split \
             (data.val_split) and train.val_every or the final validation",
            primary.display()
        );
    }
    let opts = PredictorOptions {
        device: device.clone(),
        ..PredictorOptions::default()
    };
    let p = Predictor::from_checkpoint(&primary, &opts)?;
    let classes = p.classes().clone();
    let ev = evaluate_with(p.model(), &loader, &device, plan.examples, p.inference())?;
    let test = ev.matrix.report_with_names(&classes.names)?;
    let test_other = if plan.evaluate == Evaluate::Both {
        let p = Predictor::from_checkpoint(&weights("final"), &opts)?;
        let other = evaluate_with(p.model(), &loader, &device, 0, p.inference())?;
        Some(other.matrix.report_with_names(&classes.names)?)
    } else {
        None
    };
    let (eh, ew) = cfg.data.eval_size();
    let ex_dir = dir.join("examples");
    std::fs::create_dir_all(&ex_dir)?;
    let mut examples = Vec::new();
    for (k, (idx, id, _gt, pred)) in ev.kept.iter().enumerate() {
        write_gray(&ex_dir.join(format!("{k}.png")), pred, ew, eh)?;
        examples.push((*idx, id.clone()));
    }
    let class_weights = read_log(&dir.join(recallseg_trainer::run_files::LOG))?
        .into_iter()
        .filter_map(|r| match r {
            LogRecord::Train {
                step,
                class_weights: Some(w),
                ..
            } => Some((step, w)),
            _ => None,
        })
        .collect();
    let loss_config = serde_json::to_value(&cfg.loss)?;
    let record = RunRecord {
        config_toml: cfg_toml,
        summary: RunSummary {
            loss_name: cfg.loss_name().to_string(),
            label: run.label.clone(),
            loss_config,
            test,
            evaluated: plan.evaluate.primary().into(),
            test_other,
            best_val: outcome.best,
            iters: outcome.step,
            train_seconds: outcome.train_seconds,
            class_weights,
            confusion: Some(ev.matrix.clone()),
        },
        test_images: ev.images,
        examples,
    };
    Ok(record)
}

/// The outcome of [`run_comparison`].
#[derive(Debug)]
pub enum CompareOutcome {
    /// Every run finished; the report was written.
    Done(Box<Comparison>, WrittenReport),
    /// Interrupted during the run of this loss (its checkpoint is saved; run again to resume).
    Interrupted(String),
}

/// Runs (or reuses) every loss of the plan and writes the report into `plan.out_dir`.
pub fn run_comparison(
    plan: &ComparisonPlan,
    opts: &CompareOptions,
) -> anyhow::Result<CompareOutcome> {
    let clock = ComparisonClock::start(&plan.out_dir);
    if plan.base.data.generate_synthetic {
        recallseg_trainer::data::ensure_synthetic(
            &plan.base.data,
            &recallseg_trainer::data::quick_synthetic_config(),
        )?;
    }
    let mut records = Vec::new();
    for run in &plan.losses {
        match one_run(plan, run, opts, RunMode::Train)? {
            RunState::Done(r) => records.push(*r),
            RunState::Interrupted | RunState::Missing(_) => {
                return Ok(CompareOutcome::Interrupted(run.label.clone()))
            }
        }
    }
    let (cmp, written) = write_comparison(plan, &records, &clock, Vec::new())?;
    Ok(CompareOutcome::Done(cmp, written))
}

/// The wall time spent on a comparison's folder over every invocation: the seconds of earlier
/// ones are kept in `<out>/comparison-time.json`, which this one's time is added to when it
/// ends (finished, interrupted or failed), so a resumed comparison's `wall_seconds` counts
/// every part of it.
struct ComparisonClock {
    path: PathBuf,
    prior: f64,
    t0: Instant,
}

impl ComparisonClock {
    const FILE: &'static str = "comparison-time.json";

    fn start(out_dir: &Path) -> Self {
        let path = out_dir.join(Self::FILE);
        let prior = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("seconds")?.as_f64())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .unwrap_or(0.0);
        Self {
            path,
            prior,
            t0: Instant::now(),
        }
    }

    /// Seconds of the earlier invocations plus this one's so far.
    fn seconds(&self) -> f64 {
        self.prior + self.t0.elapsed().as_secs_f64()
    }
}

impl Drop for ComparisonClock {
    fn drop(&mut self) {
        if self.path.parent().is_some_and(Path::is_dir) {
            let text = serde_json::json!({ "seconds": self.seconds() }).to_string() + "\n";
            // Losing this figure must not fail a comparison whose results are written.
            let _ = recallseg_files::write_bytes_atomic(&self.path, text.as_bytes());
        }
    }
}

/// A run of the plan that [`collect_comparison`] found unfinished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingRun {
    /// Its label (`Recall`, `CE`, …).
    pub label: String,
    /// Its folder (`<out>/runs/<loss name>`).
    pub dir: PathBuf,
    /// Why it is not in the report (not started, stopped at step k of n, …).
    pub reason: String,
}

/// What [`collect_comparison`] wrote.
#[derive(Debug)]
pub struct Collected {
    /// The comparison of the finished runs, as written into the report.
    pub comparison: Box<Comparison>,
    /// The report files.
    pub written: WrittenReport,
    /// The runs left out of the report, in plan order (empty when every run had finished).
    pub missing: Vec<MissingRun>,
}

/// The report of runs trained elsewhere (by `recallseg train` in a Slurm job array, see
/// [`crate::sweep`], or by an earlier [`run_comparison`]): trains nothing and removes nothing.
///
/// Every run of the plan whose training has finished in its folder (`<out>/runs/<loss name>`,
/// with the plan's configuration, see [`run_config`]) is evaluated as [`run_comparison`]
/// evaluates it (a `summary.json` of the same configuration is reused), so the report is the
/// one [`run_comparison`] writes for the same plan, bar the wall time. Runs not started, stopped
/// before their last step, or whose folder holds another configuration's checkpoint are left
/// out, named in [`Collected::missing`] and in a note of the report; an error when no run has
/// finished.
pub fn collect_comparison(
    plan: &ComparisonPlan,
    opts: &CompareOptions,
) -> anyhow::Result<Collected> {
    let clock = ComparisonClock::start(&plan.out_dir);
    let mut records = Vec::new();
    let mut missing = Vec::new();
    for run in &plan.losses {
        match one_run(plan, run, opts, RunMode::Collect)? {
            RunState::Done(r) => records.push(*r),
            RunState::Interrupted => anyhow::bail!("interrupted while collecting {}", run.label),
            RunState::Missing(reason) => missing.push(MissingRun {
                label: run.label.clone(),
                dir: run_dir(plan, run),
                reason,
            }),
        }
    }
    if records.is_empty() {
        anyhow::bail!(
            "no run of {} has finished: {}",
            plan.out_dir.display(),
            missing
                .iter()
                .map(|m| format!("{} ({}): {}", m.label, m.dir.display(), m.reason))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let mut notes = vec![
        "The runs were trained separately (e.g. one Slurm array task per run) and collected \
         into this report; the wall time above is that of collecting them."
            .to_string(),
    ];
    for m in &missing {
        notes.push(format!(
            "Not in this report: {} (`{}`): {}.",
            m.label,
            m.dir.display(),
            m.reason
        ));
    }
    let (comparison, written) = write_comparison(plan, &records, &clock, notes)?;
    Ok(Collected {
        comparison,
        written,
        missing,
    })
}

/// Builds the comparison of `records` (the plan's finished runs, in plan order) and writes its
/// report into `plan.out_dir`; `extra_notes` follow the plan's notes.
fn write_comparison(
    plan: &ComparisonPlan,
    records: &[RunRecord],
    clock: &ComparisonClock,
    extra_notes: Vec<String>,
) -> anyhow::Result<(Box<Comparison>, WrittenReport)> {
    // Dataset facts for the report.
    let d = &plan.base.data;
    let train_ds = recallseg_trainer::data::open_split(
        d,
        recallseg_trainer::data::parse_split("data.train_split", &d.train_split)?,
    )?;
    let classes = train_ds.class_info().clone();
    let train_ds = recallseg_trainer::data::limit(train_ds, d.max_train_images);
    let counts = recallseg_data::stats::class_pixel_counts(&*train_ds)?;
    let total: u64 = counts.iter().sum();
    let class_frequency =
        (total > 0).then(|| counts.iter().map(|&c| c as f64 / total as f64).collect());

    let (eh, ew) = d.eval_size();
    let examples = build_examples(plan, records, eh, ew)?;
    let b = &plan.base;
    let cmp = Comparison {
        title: plan.title.clone(),
        setting: Setting {
            dataset: match d.kind {
                recallseg_trainer::config::DatasetKind::Synthia => "synthia",
                recallseg_trainer::config::DatasetKind::Cityscapes => "cityscapes",
                recallseg_trainer::config::DatasetKind::Folder => "folder",
            }
            .into(),
            data_root: d.root.clone(),
            synthetic: plan.synthetic,
            backbone: b.model.backbone.name().into(),
            backbone_width: b.model.backbone_width,
            head: b.model.head.name().into(),
            output_stride: b.model.output_stride,
            pretrained: b
                .model
                .pretrained
                .as_ref()
                .map_or_else(|| "none".to_string(), |p| p.to_string()),
            train_size: (d.height, d.width),
            eval_size: (eh, ew),
            batch_size: b.train.batch_size,
            iters: b.train.iters,
            optimizer: format!(
                "{:?}, lr {}, {:?} schedule",
                b.optim.kind, b.optim.lr, b.schedule.kind
            )
            .to_lowercase(),
            device: b.train.device.clone(),
            seed: b.train.seed,
            test_split: d.test_split.clone(),
            test_images: records.first().map_or(0, |r| r.test_images),
        },
        class_names: classes.names.clone(),
        palette: classes.palette.clone(),
        class_frequency,
        runs: records
            .iter()
            .map(|r| with_metrics(&plan.base.metrics, r.summary.clone()))
            .collect::<anyhow::Result<_>>()?,
        wall_seconds: clock.seconds(),
        notes: plan.notes.iter().cloned().chain(extra_notes).collect(),
        metrics: plan.base.metrics,
    };
    let written = recallseg_report::write_report(&plan.out_dir, &cmp, examples.as_ref())?;
    Ok((Box::new(cmp), written))
}

/// `run`'s test reports with the F-beta β and, when not the default, the averaging of
/// `[metrics]` (so that `results.json` holds the numbers the report shows).
fn with_metrics(
    metrics: &recallseg_metrics::ReportSettings,
    mut run: RunSummary,
) -> anyhow::Result<RunSummary> {
    run.test = metrics.apply(run.test)?;
    if let Some(t) = run.test_other.take() {
        run.test_other = Some(metrics.apply(t)?);
    }
    Ok(run)
}

/// The Fig. 3 rows: the kept test images with ground truth and the prediction of every run, in
/// the order run.
fn build_examples(
    plan: &ComparisonPlan,
    records: &[RunRecord],
    eh: usize,
    ew: usize,
) -> anyhow::Result<Option<ExampleSet>> {
    if plan.examples == 0 || records.is_empty() {
        return Ok(None);
    }
    let cols: Vec<&RunRecord> = records.iter().collect();
    let (ds, _) = open_eval(&plan.base, &plan.base.data.test_split)?;
    let mut rows = Vec::new();
    let first = &cols[0];
    // Ground truth at evaluation size, from the first batch of the test loader.
    let gt_loader =
        recallseg_trainer::data::eval_loader(&plan.base.data, ds.clone(), plan.examples.max(1))?;
    let gt_batch = gt_loader.load_batch(0, 0)?;
    let hw = eh * ew;
    for (k, (idx, id)) in first.examples.iter().enumerate() {
        let s = ds.get(*idx)?;
        let image = resize_bilinear_rgb(&s.image, s.width, s.height, ew, eh)?;
        let pos = gt_batch.indices.iter().position(|i| i == idx);
        let ground_truth = match pos {
            Some(p) => gt_batch.labels[p * hw..(p + 1) * hw].to_vec(),
            None => continue,
        };
        let mut predictions = Vec::new();
        for c in &cols {
            let dir = run_dir(
                plan,
                &LossRun {
                    label: c.summary.label.clone(),
                    loss: LossConfig::from_name(&c.summary.loss_name)?,
                },
            );
            predictions.push(read_gray(&dir.join("examples").join(format!("{k}.png")))?);
        }
        rows.push(ExampleRow {
            id: id.clone(),
            image,
            ground_truth,
            predictions,
        });
    }
    Ok(Some(ExampleSet {
        height: eh,
        width: ew,
        columns: cols.iter().map(|c| c.summary.label.clone()).collect(),
        rows,
    }))
}
