//! `cargo xtask bench NAME [--json]`: one module per benchmark, each returning its figures.
//!
//! Progress goes to stderr; stdout holds either a human table or, with `--json`, exactly one JSON
//! object whose keys carry their unit (`"recall_ce_fwd_bwd_ms"`), so scripts can compare runs.

mod allreduce;
mod conv;
mod data;
mod data_parallel;
mod losses;
mod metrics;
mod models;

use clap::{Args, ValueEnum};
use std::time::{Duration, Instant};

/// Which benchmark to run.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum BenchName {
    /// Confusion-matrix throughput (Gpix/s).
    Metrics,
    /// Forward+backward time of every loss.
    Losses,
    /// DeepLabV3+ training step and inference time.
    Models,
    /// Data loading throughput (images/s).
    Data,
    /// conv3x3 forward/backward micro-benchmark.
    Conv,
    /// MPI all-reduce time of one step's gradient (runs `mpirun`; needs an MPI library).
    Allreduce,
    /// Training steps/s on one process and on two MPI ranks (`recallseg` built with `mpi`).
    DataParallel,
}

/// Arguments of `cargo xtask bench`.
#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    /// The benchmark to run.
    pub name: BenchName,
    /// Print one JSON object of figures on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Timed repetitions per figure (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Only run the cases whose figure keys contain this text (`bench models --only separable`);
    /// for profiling one case. Benches with a single case ignore it.
    #[arg(long)]
    pub only: Option<String>,
    /// Device of `bench models`: `cpu` (default), `cuda` or `cuda:N` (needs xtask built with
    /// `--features cuda`). The other benches run on the CPU only.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// `bench models`: images per step (default 2).
    #[arg(long)]
    pub batch: Option<usize>,
    /// `bench models`: image height (default 192).
    #[arg(long)]
    pub height: Option<usize>,
    /// `bench models`: image width (default 384).
    #[arg(long)]
    pub width: Option<usize>,
    /// `bench models`: number of classes (default 16).
    #[arg(long)]
    pub classes: Option<usize>,
    /// `bench allreduce`: MPI ranks (processes) to start (default 2).
    #[arg(long)]
    pub ranks: Option<usize>,
    /// `bench allreduce`: floats per all-reduce (default: the trainable parameters of
    /// DeepLabV3+-ResNet-18).
    #[arg(long)]
    pub floats: Option<usize>,
    /// `bench allreduce`: timed all-reduces (default 20; the median is reported).
    #[arg(long)]
    pub iters: Option<usize>,
}

impl BenchArgs {
    /// Whether a case is selected by `--only`; `keys` lists the case's figure keys
    /// (space-separated).
    pub(crate) fn wants(&self, key: &str) -> bool {
        self.only.as_deref().is_none_or(|o| key.contains(o))
    }
}

/// One measured figure.
#[derive(Debug, Clone)]
pub(crate) struct Figure {
    /// JSON key, with its unit as suffix (`"ce_fwd_bwd_ms"`).
    pub key: String,
    /// Human label for the table.
    pub label: String,
    /// Measured value.
    pub value: f64,
    /// Unit shown in the table.
    pub unit: &'static str,
    /// The PyTorch peer's figure on the 2-core machine (../shared/peer), same unit, if any.
    pub peer: Option<f64>,
}

impl Figure {
    /// A figure without a peer value.
    pub(crate) fn new(
        key: impl Into<String>,
        label: impl Into<String>,
        value: f64,
        unit: &'static str,
    ) -> Self {
        Self {
            key: key.into(),
            label: label.into(),
            value,
            unit,
            peer: None,
        }
    }

    /// Attaches the PyTorch peer's figure.
    pub(crate) fn with_peer(mut self, peer: f64) -> Self {
        self.peer = Some(peer);
        self
    }
}

/// Runs `f` once to warm up, then `reps` times, and returns the median duration.
pub(crate) fn median_time<F: FnMut() -> anyhow::Result<()>>(
    reps: usize,
    mut f: F,
) -> anyhow::Result<Duration> {
    f()?;
    let mut times = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

/// Milliseconds of a duration, as f64.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Entry point of `cargo xtask bench`.
pub(crate) fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let shaped = args.batch.is_some()
        || args.height.is_some()
        || args.width.is_some()
        || args.classes.is_some();
    anyhow::ensure!(
        args.name == BenchName::Models || (args.device == "cpu" && !shaped),
        "--device, --batch, --height, --width and --classes apply to `bench models` only"
    );
    anyhow::ensure!(
        args.name == BenchName::Allreduce
            || (args.ranks.is_none() && args.floats.is_none() && args.iters.is_none()),
        "--ranks, --floats and --iters apply to `bench allreduce` only"
    );
    let figures = match args.name {
        BenchName::Metrics => metrics::run(args)?,
        BenchName::Losses => losses::run(args)?,
        BenchName::Models => models::run(args)?,
        BenchName::Data => data::run(args)?,
        BenchName::Conv => conv::run(args)?,
        BenchName::Allreduce => allreduce::run(args)?,
        BenchName::DataParallel => data_parallel::run(args)?,
    };
    if args.json {
        let obj: serde_json::Map<String, serde_json::Value> = figures
            .iter()
            .map(|f| (f.key.clone(), serde_json::json!(f.value)))
            .collect();
        println!("{}", serde_json::Value::Object(obj));
    } else {
        print_table(&figures);
    }
    Ok(())
}

fn print_table(figures: &[Figure]) {
    let w = figures
        .iter()
        .map(|f| f.label.len())
        .max()
        .unwrap_or(0)
        .max(6);
    let any_peer = figures.iter().any(|f| f.peer.is_some());
    if any_peer {
        println!(
            "{:<w$}  {:>14}  {:>14}  {:>8}",
            "figure", "recallseg", "PyTorch", "ratio"
        );
    } else {
        println!("{:<w$}  {:>14}", "figure", "recallseg");
    }
    for f in figures {
        let v = format!("{:.3} {}", f.value, f.unit);
        match f.peer {
            Some(p) => println!(
                "{:<w$}  {:>14}  {:>14}  {:>8.2}",
                f.label,
                v,
                format!("{p:.3} {}", f.unit),
                f.value / p
            ),
            None if any_peer => println!("{:<w$}  {:>14}  {:>14}  {:>8}", f.label, v, "-", "-"),
            None => println!("{:<w$}  {:>14}", f.label, v),
        }
    }
}
