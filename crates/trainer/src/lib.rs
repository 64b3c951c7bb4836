//! Training, evaluation and prediction for semantic segmentation with Recall loss.
//!
//! The `recallseg` command line is a thin shell over this library: [`config`] reads and validates
//! a TOML configuration, [`optim`] holds checkpointable Adam / AdamW / SGD, [`checkpoint`] writes
//! safetensors checkpoints atomically and verifies them on load, [`run_dir`] locks a run's
//! folder, [`signals`] turns SIGINT/SIGTERM/SIGHUP into a checkpoint and a clean stop, [`log`] writes progress and a JSON-lines log, and
//! [`report`] turns finished runs into the paper-style report (text drawn with the embedded font of
//! [`font`]).

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
