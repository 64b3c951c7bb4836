//! `cargo xtask bench conv` (issue #7).

use super::{BenchArgs, Figure};

/// Runs the conv benchmark.
pub fn run(_args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    anyhow::bail!("the conv benchmark is not built yet (issue #7)")
}
