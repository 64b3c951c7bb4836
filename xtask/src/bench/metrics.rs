//! `cargo xtask bench metrics` (issue #2).

use super::{BenchArgs, Figure};

/// Runs the metrics benchmark.
pub fn run(_args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    anyhow::bail!("the metrics benchmark is not built yet (issue #2)")
}
