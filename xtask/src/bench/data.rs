//! `cargo xtask bench data` (issue #5).

use super::{BenchArgs, Figure};

/// Runs the data benchmark.
pub fn run(_args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    anyhow::bail!("the data benchmark is not built yet (issue #5)")
}
