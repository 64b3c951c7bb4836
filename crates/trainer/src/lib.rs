//! Training, evaluation and prediction for semantic segmentation with Recall loss: the
//! training library of recallseg (no command line, no plotting: those are `recallseg-cli` and
//! `recallseg-report`; comparisons of losses are `recallseg-compare`).
//!
//! Start from [`config::TrainConfig`] (a preset, [`config::Preset::config`], or a TOML file,
//! [`config::TrainConfig::from_file`]) and [`train::train`]:
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use recallseg_trainer::config::Preset;
//! use recallseg_trainer::train::{train, TrainOptions};
//!
//! let cfg = Preset::SynthiaQuick.config(&["train.iters=100".to_string()])?;
//! let outcome = train(&cfg, &TrainOptions::default())?;
//! println!("stopped at step {}, best validation {:?}", outcome.step, outcome.best);
//! # Ok(())
//! # }
//! ```
//!
//! [`config`] reads and validates a configuration, [`optim`] holds checkpointable Adam / AdamW /
//! SGD, [`checkpoint`] writes safetensors checkpoints atomically and verifies them on load,
//! [`run_dir`] locks a run's folder, [`signals`] turns SIGINT/SIGTERM/SIGHUP into a checkpoint and
//! a clean stop, [`log`] writes progress and a JSON-lines log, [`eval`], [`inference`] and
//! [`predict`] evaluate and run a trained model, [`export`] writes its weights under PyTorch's
//! names, [`distributed`] joins a data-parallel group.

#![warn(missing_docs)]

/// `eprintln!` that never panics: a line to standard error, a failed write ignored
/// ([`console`]). Defined before the modules, so every module of the crate can use it.
macro_rules! note {
    ($($arg:tt)*) => { $crate::console::note_line(::std::format_args!($($arg)*)) };
}

pub mod checkpoint;
pub mod config;
pub mod console;
pub mod data;
pub mod distributed;
pub mod error_text;
pub mod eval;
pub mod export;
mod fault;
pub mod inference;
pub mod log;
pub mod optim;
pub mod predict;
pub mod run_dir;
pub mod run_files;
pub mod signals;
pub mod train;
