//! `cargo xtask bench data-parallel`: training steps per second of one model on one process and
//! on two MPI ranks, on this machine.
//!
//! Builds `recallseg` with the `mpi` feature (in xtask's own profile: release under `cargo xtask`; needs an MPI library, e.g. Debian's
//! `libopenmpi-dev openmpi-bin libclang-dev`) and trains the `synthia-quick` preset (DeepLabV3+
//! on a width-16 ResNet-18, 256×128 images, batch 8, generated data) for `--iters` steps in four
//! ways: one process with 2 threads and with 1 thread, one process with 2 threads accumulating 2
//! micro-batches, and `mpirun -np 2` with one thread per rank (the same computation as the
//! accumulating process). Each figure is the `steps_per_s` the run logs over its second half
//! (the first half warms up). Orchestration only: the runs are the `recallseg` command.
//!
//! Figures: `one_process_2_threads_steps_per_s`, `one_process_1_thread_steps_per_s`,
//! `accumulate_2_2_threads_steps_per_s`, `two_ranks_1_thread_each_steps_per_s`.

use super::{BenchArgs, Figure};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Steps of each run (the second half is timed).
const ITERS: usize = 12;

/// Builds `recallseg` with MPI and returns its path (next to this xtask).
fn recallseg_with_mpi() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let exe = std::env::current_exe()?;
    // The profile this xtask was built with (`cargo xtask` is release).
    let release = exe.components().any(|c| c.as_os_str() == "release");
    eprintln!("bench data-parallel: building recallseg (feature mpi, release: {release})");
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "-p",
        "recallseg-trainer",
        "--features",
        "mpi",
        "--bin",
        "recallseg",
    ]);
    if release {
        cmd.arg("--release");
    }
    let ok = cmd.status().context("running cargo build")?.success();
    anyhow::ensure!(
        ok,
        "building recallseg with MPI failed (apt-get install libopenmpi-dev openmpi-bin \
         libclang-dev)"
    );
    Ok(exe
        .parent()
        .context("xtask has no folder")?
        .join(format!("recallseg{}", std::env::consts::EXE_SUFFIX)))
}

/// One training run: `launcher` (empty, or `mpirun …`) runs `recallseg train` with `threads`
/// threads per process; returns the logged steps/s of the last interval.
fn run_case(
    bin: &Path,
    work: &Path,
    name: &str,
    launcher: &[&str],
    threads: usize,
    extra: &[&str],
) -> anyhow::Result<f64> {
    let out = work.join(name);
    let q = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    let mut sets = vec![
        format!("data.root={}", q(&work.join("data"))),
        format!("train.out_dir={}", q(&out)),
        format!("train.iters={ITERS}"),
        format!("train.log_every={}", ITERS / 2),
        "train.val_every=0".into(),
        "train.checkpoint_every=0".into(),
        "data.max_eval_images=2".into(),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    let mut cmd = match launcher.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.args([
        "train",
        "--preset",
        "synthia-quick",
        "--overwrite",
        "--no-progress",
    ]);
    for s in &sets {
        cmd.args(["--set", s]);
    }
    eprintln!("bench data-parallel: {name}");
    let status = cmd
        .env("RAYON_NUM_THREADS", threads.to_string())
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("starting {name}"))?;
    anyhow::ensure!(status.success(), "{name}: recallseg train failed");
    let log = recallseg_trainer::log::read_log(&out.join("log.jsonl"))?;
    log.iter()
        .rev()
        .find_map(|r| match r {
            recallseg_trainer::log::LogRecord::Train { steps_per_s, .. } => Some(*steps_per_s),
            _ => None,
        })
        .with_context(|| format!("{name}: no training line in its log"))
}

/// One way of running: figure key, label, launcher, threads per process, config overrides.
type Case<'a> = (&'a str, &'a str, &'a [&'a str], usize, &'a [&'a str]);

/// Runs the benchmark.
pub(crate) fn run(_args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let bin = recallseg_with_mpi()?;
    let work = std::env::current_dir()?.join("target/bench-data-parallel");
    std::fs::create_dir_all(&work)?;
    let mpirun = [
        "mpirun",
        "-np",
        "2",
        "--oversubscribe",
        "-x",
        "RAYON_NUM_THREADS",
    ];
    let cases: [Case; 4] = [
        ("one_process_2_threads", "1 process, 2 threads", &[], 2, &[]),
        ("one_process_1_thread", "1 process, 1 thread", &[], 1, &[]),
        (
            "accumulate_2_2_threads",
            "1 process, 2 threads, accumulate 2",
            &[],
            2,
            &["train.accumulate=2"],
        ),
        (
            "two_ranks_1_thread_each",
            "mpirun -np 2, 1 thread each",
            &mpirun,
            1,
            &[],
        ),
    ];
    let mut figures = Vec::new();
    for (key, label, launcher, threads, extra) in cases {
        let v = run_case(&bin, &work, key, launcher, threads, extra)?;
        figures.push(Figure::new(
            format!("{key}_steps_per_s"),
            format!("training steps/s, {label}"),
            v,
            "steps/s",
        ));
    }
    Ok(figures)
}
