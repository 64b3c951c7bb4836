//! The files of a run folder, by name.

/// The latest state, written periodically, at the end and on interrupt.
pub const LAST: &str = "last.safetensors";
/// The state with the best validation mean IoU.
pub const BEST: &str = "best.safetensors";
/// The JSON-lines log.
pub const LOG: &str = "log.jsonl";
/// One row per validation, rewritten from the log after each (`crate::log::metrics_csv`).
pub const METRICS: &str = "metrics.csv";
/// The configuration the run used.
pub const CONFIG: &str = "config.toml";
/// The test split's report, written when the run ends (`data.test_split`).
pub const TEST: &str = "test.json";
