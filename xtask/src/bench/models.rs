//! `cargo xtask bench models` (issue #4).

use super::{BenchArgs, Figure};

/// Runs the models benchmark.
pub fn run(_args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    anyhow::bail!("the models benchmark is not built yet (issue #4)")
}
