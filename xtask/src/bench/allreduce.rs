//! `cargo xtask bench allreduce [--ranks 2] [--floats N] [--iters K]`: the MPI all-reduce time
//! of one data-parallel step's gradient.
//!
//! Builds `recallseg-distributed`'s `mpi_allreduce_bench` example (release, feature `mpi`; needs
//! an MPI library, e.g. Debian's `libopenmpi-dev openmpi-bin`) and runs it under
//! `mpirun -np RANKS --oversubscribe`. The buffer is `--floats` `f32` values, by default the
//! gradient of the paper's model: the trainable parameters of DeepLabV3+ on ResNet-18 (output
//! stride 16, 19 classes, `ModelConfig::default()`), counted on a model built here. Every
//! iteration is one `MpiCommunicator::all_reduce_sum_f32` (in place, as the trainer calls it),
//! timed as the slowest rank's; the median of `--iters` iterations (after 2 warm-ups) is
//! reported.
//!
//! Figures (`N` is the buffer's size in millions of floats, rounded: `12m`):
//! * `allreduce_Nm_f32_ms`: median time of one all-reduce;
//! * `allreduce_Nm_f32_gbytes_per_s`: buffer bytes per second at that time;
//! * `allreduce_floats_count`, `allreduce_ranks_count`: what was measured.

use super::{BenchArgs, Figure};
use anyhow::Context;
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use recallseg_models::{DeepLab, ModelConfig};
use std::process::{Command, Stdio};

/// The number of trainable parameters of DeepLabV3+ on ResNet-18 (`ModelConfig::default()`).
pub(crate) fn deeplabv3plus_r18_params() -> anyhow::Result<usize> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = DeepLab::new(&ModelConfig::default(), vb)?;
    Ok(model.trainable_vars().iter().map(|v| v.elem_count()).sum())
}

/// Builds the example and returns its path (from cargo's JSON messages).
fn build_example() -> anyhow::Result<std::path::PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("bench allreduce: building the mpi_allreduce_bench example (release, feature mpi)");
    let out = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "recallseg-distributed",
            "--features",
            "mpi",
            "--example",
            "mpi_allreduce_bench",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build")?;
    anyhow::ensure!(
        out.status.success(),
        "building the mpi_allreduce_bench example failed (is an MPI library installed? \
         apt-get install libopenmpi-dev openmpi-bin libclang-dev)"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["target"]["name"] == "mpi_allreduce_bench")
        .find_map(|m| m["executable"].as_str().map(std::path::PathBuf::from))
        .context("cargo did not report the mpi_allreduce_bench executable")
}

/// `12m` for 12.3 million, `500k` below a million.
fn size_label(floats: usize) -> String {
    if floats >= 1_000_000 {
        format!("{}m", (floats as f64 / 1e6).round() as usize)
    } else {
        format!("{}k", (floats as f64 / 1e3).round().max(1.0) as usize)
    }
}

/// Runs the benchmark.
pub(crate) fn run(args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let ranks = args.ranks.unwrap_or(2);
    anyhow::ensure!(
        ranks >= 2,
        "--ranks must be at least 2 (one rank has nothing to sum)"
    );
    let floats = match args.floats {
        Some(n) => n,
        None => {
            let n = deeplabv3plus_r18_params()?;
            eprintln!("bench allreduce: DeepLabV3+-ResNet-18 has {n} trainable parameters");
            n
        }
    };
    anyhow::ensure!(floats > 0, "--floats must be positive");
    let iters = args.iters.unwrap_or(20).max(1);
    let exe = build_example()?;
    eprintln!("bench allreduce: mpirun -np {ranks}: {floats} floats, {iters} iterations");
    let out = Command::new("mpirun")
        .args(["-np", &ranks.to_string(), "--oversubscribe"])
        .arg(&exe)
        .args([
            "--floats",
            &floats.to_string(),
            "--iters",
            &iters.to_string(),
        ])
        // As root, Open MPI's mpirun refuses to start without these.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .stderr(Stdio::inherit())
        .output()
        .context("running mpirun (is openmpi-bin installed?)")?;
    anyhow::ensure!(out.status.success(), "mpirun failed: {}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = stdout
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("no JSON from the benchmark in {stdout:?}"))?;
    let get = |k: &str| {
        json[k]
            .as_f64()
            .with_context(|| format!("no {k} in the benchmark's JSON {json}"))
    };
    let label = size_label(floats);
    Ok(vec![
        Figure::new(
            format!("allreduce_{label}_f32_ms"),
            format!("all-reduce of {floats} f32 on {ranks} ranks"),
            get("median_ms")?,
            "ms",
        ),
        Figure::new(
            format!("allreduce_{label}_f32_gbytes_per_s"),
            "  buffer bytes / time",
            get("gbytes_per_s")?,
            "GB/s",
        ),
        Figure::new("allreduce_floats_count", "floats", floats as f64, ""),
        Figure::new("allreduce_ranks_count", "ranks", ranks as f64, ""),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_labels_round_to_the_unit() {
        assert_eq!(size_label(12_345_678), "12m");
        assert_eq!(size_label(1_000_000), "1m");
        assert_eq!(size_label(500_400), "500k");
        assert_eq!(size_label(10), "1k");
    }
}
