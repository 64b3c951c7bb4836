//! `recallseg compare` (the loss comparison on any dataset) and `recallseg plot` (training
//! curves of one or several runs).

use clap::Args;
use recallseg_compare::{
    collect_comparison, parse_losses, quick_losses, run_comparison, summary_table, CompareOptions,
    CompareOutcome, ComparisonPlan, Evaluate,
};
use recallseg_trainer::signals::interrupt_flag;
use recallseg_trainer::train::install_ctrlc;
use std::path::PathBuf;

/// `recallseg compare`.
#[derive(Args, Debug, Clone)]
#[command(after_help = "Examples:\n  \
    recallseg compare --config my.toml --losses ce,weighted_ce,recall_ce\n  \
    recallseg compare --config my.toml --losses ce,focal,recall_ce --iters 2000 --out results/mine\n  \
    recallseg compare --preset synthia-quick      # CE, WeightedCE, Focal, Recall on generated data\n\n\
    Runs one training per loss with the configuration's data, model and schedule, evaluates each \
    on data.test_split and writes report.md, results.json, fig1_acc_vs_iou, fig4_class_weights \
    and examples.png into --out. Run the same command again to reuse finished runs and resume an \
    interrupted one.")]
pub struct CompareArgs {
    /// The configuration every run shares (its `[loss]` and `train.out_dir` are replaced).
    #[command(flatten)]
    pub source: crate::ConfigSource,
    /// Comma-separated losses, run in this order (default: ce, weighted_ce, focal, recall_ce).
    /// Names: cross_entropy (ce), weighted_ce, balanced_ce, focal, ohem, soft_iou, lovasz,
    /// dice, tversky, recall_ce (recall), precision_ce; each with its default parameters.
    #[arg(long, value_delimiter = ',')]
    pub losses: Vec<String>,
    /// Output folder: the report, and each loss's run in `runs/<loss>/` (default
    /// `results/<config file stem or preset name>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Training steps per loss (shorthand for `--set train.iters=…`).
    #[arg(long)]
    pub iters: Option<usize>,
    /// Device: cpu, cuda, cuda:N, metal (shorthand for `--set train.device=…`).
    #[arg(long)]
    pub device: Option<String>,
    /// Test images drawn side by side in examples.png (0 = none).
    #[arg(long, default_value_t = 4)]
    pub examples: usize,
    /// Which weights are tested: final, best (best validation mean IoU, what the paper's test.py
    /// evaluates) or both (best as the main result, final beside it).
    #[arg(long, default_value = "final")]
    pub evaluate: Evaluate,
    /// Report title (default: "Loss comparison on <dataset> (<backbone>)").
    #[arg(long)]
    pub title: Option<String>,
    /// Plain log lines even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
    /// Replace runs of another configuration in the output folder (train them again); without
    /// it such a folder is an error and nothing is deleted.
    #[arg(long)]
    pub overwrite: bool,
    /// Train nothing: collect the runs finished in the output folder (trained by a Slurm job
    /// array, or by an earlier `compare`) into the report; runs that have not finished are
    /// named and make the exit status 1.
    #[arg(long, conflicts_with = "overwrite")]
    pub report_only: bool,
}

impl CompareArgs {
    /// The comparison these arguments describe (configuration validated, losses parsed).
    pub fn plan(&self) -> anyhow::Result<ComparisonPlan> {
        let base = self
            .source
            .load(&crate::run_shorthands(self.iters, self.device.as_deref()))?;
        let losses = if self.losses.is_empty() {
            quick_losses()
        } else {
            parse_losses(&self.losses)?
        };
        let out = match &self.out {
            Some(o) => o.clone(),
            None => {
                let stem = self.source.stem().unwrap_or_else(|| "compare".into());
                PathBuf::from("results").join(stem)
            }
        };
        let mut plan = ComparisonPlan::new(base, losses, out).with_evaluate(self.evaluate);
        plan.examples = self.examples;
        if let Some(t) = &self.title {
            plan.title = t.clone();
        }
        Ok(plan)
    }
}

/// `recallseg compare`; returns the exit status (0, or `128 + signal` when interrupted: run the
/// same command again to resume).
pub fn compare(a: &CompareArgs) -> anyhow::Result<i32> {
    let plan = a.plan()?;
    install_ctrlc();
    let opts = CompareOptions {
        progress_bar: !a.no_progress && recallseg_trainer::log::Progress::stderr_is_terminal(),
        interrupt: Some(interrupt_flag()),
        quiet: false,
        overwrite: a.overwrite,
    };
    let t0 = std::time::Instant::now();
    if a.report_only {
        let c = collect_comparison(&plan, &opts)?;
        for w in &c.written.warnings {
            note!("warning: {w}");
        }
        for m in &c.missing {
            note!(
                "not finished: {} ({}): {}",
                m.label,
                m.dir.display(),
                m.reason
            );
        }
        out!("\n{}", summary_table(&c.comparison))?;
        out!("report: {}", plan.out_dir.join("report.md").display())?;
        return Ok(if c.missing.is_empty() { 0 } else { 1 });
    }
    match run_comparison(&plan, &opts)? {
        CompareOutcome::Interrupted(label) => {
            note!(
                "interrupted during {label}; run the same command again to resume ({})",
                plan.out_dir.display()
            );
            Ok(recallseg_trainer::signals::received_signal().map_or(
                recallseg_trainer::signals::StopSignal::Interrupt.exit_code(),
                |s| s.exit_code(),
            ))
        }
        CompareOutcome::Done(cmp, written) => {
            for w in &written.warnings {
                note!("warning: {w}");
            }
            out!("\n{}", summary_table(&cmp))?;
            out!(
                "report: {} ({:.0} s)",
                plan.out_dir.join("report.md").display(),
                t0.elapsed().as_secs_f64()
            )?;
            Ok(0)
        }
    }
}
