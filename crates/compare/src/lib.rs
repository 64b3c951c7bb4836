//! Loss comparisons and sweeps of recallseg: the experiments the Recall loss paper reports.
//!
//! * [`ComparisonPlan`] + [`run_comparison`]: one training per loss with a common configuration
//!   (Synthia, Cityscapes or a folder dataset of one's own), each evaluated on the test split,
//!   then the paper-style report (`recallseg_report::write_report`): `report.md`,
//!   `results.json`, the accuracy-vs-IoU and class-weight figures, confusion heatmaps and
//!   example predictions. An interrupted comparison continues where it stopped when run again.
//! * [`collect_comparison`]: the same report from runs trained elsewhere (a Slurm job array).
//! * [`sweep`]: a list of plans written as a Slurm job array with its report job
//!   ([`sweep::write_slurm`]).
//! * [`read_run_curves`] / [`draw_run_curves`]: training curves of run folders.
//!
//! `recallseg compare`, `recallseg plot` and `cargo xtask reproduce` are thin shells over these.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use recallseg_compare::{loss_run, run_comparison, CompareOptions, CompareOutcome, ComparisonPlan};
//! use recallseg_trainer::config::Preset;
//!
//! let base = Preset::SynthiaQuick.config(&["train.iters=200".to_string()])?;
//! let losses = vec![loss_run("ce")?, loss_run("recall")?];
//! let plan = ComparisonPlan::new(base, losses, "results/mine".into());
//! if let CompareOutcome::Done(cmp, _) = run_comparison(&plan, &CompareOptions::default())? {
//!     println!("{}", recallseg_compare::summary_table(&cmp));
//! }
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

/// `eprintln!` that never panics (`recallseg_trainer::console::note_line`).
macro_rules! note {
    ($($arg:tt)*) => { ::recallseg_trainer::console::note_line(::std::format_args!($($arg)*)) };
}

mod comparison;
mod curves;
pub mod sweep;

pub use comparison::*;
pub use curves::{draw_run_curves, read_run_curves};
