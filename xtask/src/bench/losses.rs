//! `cargo xtask bench losses` (issue #3).

use super::{BenchArgs, Figure};

/// Runs the losses benchmark.
pub fn run(_args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    anyhow::bail!("the losses benchmark is not built yet (issue #3)")
}
