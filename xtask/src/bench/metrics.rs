//! `cargo xtask bench metrics`: confusion-matrix throughput.
//!
//! Input as in `../shared/peer/confusion_bench.py`: 8×512×1024 `u8` label maps, 19 classes,
//! uniformly random ground truth and prediction, 10% of the ground truth set to the ignore index
//! 255. Generated deterministically (fixed seed). One timed repetition is `INNER` calls of
//! `ConfusionMatrix::update` on the whole batch; the median repetition is reported.
//!
//! Figures:
//! * `confusion_gpix_per_s`: all rayon threads (the peer: numpy `bincount`, 0.125 Gpix/s);
//! * `confusion_1thread_gpix_per_s`: the same on a one-thread pool;
//! * `confusion_1thread_cpu_gpix_per_s`: the same, per second of CPU time of the counting thread
//!   (Linux, `/proc/thread-self/schedstat`): what one core does when it is not shared, a steadier
//!   figure than wall time on a busy machine;
//! * `confusion_runs_gpix_per_s`: label maps made of runs of equal labels (as real maps are),
//!   prediction equal to the ground truth on 80% of the runs: the case where consecutive pixels
//!   hit the same cell;
//! * `confusion_u16_gpix_per_s`: the same data as `u16` labels (the generic kernel).

use super::{median_time, BenchArgs, Figure};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use recallseg_metrics::ConfusionMatrix;
use std::time::Duration;

const N_CLASSES: usize = 19;
const PIXELS: usize = 8 * 512 * 1024;
/// `update` calls per timed repetition.
const INNER: usize = 4;
/// numpy `fast_hist` (`bincount`) on the 2-core machine, from `../shared/peer/README.md`.
const PEER_NUMPY_GPIX_PER_S: f64 = 0.125;

/// Uniform random labels, 10% ignore.
fn uniform_maps(rng: &mut StdRng) -> (Vec<u8>, Vec<u8>) {
    let gt = (0..PIXELS)
        .map(|_| {
            if rng.random_bool(0.1) {
                255
            } else {
                rng.random_range(0..N_CLASSES as u8)
            }
        })
        .collect();
    let pred = (0..PIXELS)
        .map(|_| rng.random_range(0..N_CLASSES as u8))
        .collect();
    (gt, pred)
}

/// Runs of 1..64 equal labels (10% of runs void); prediction = ground truth on 80% of runs.
fn run_maps(rng: &mut StdRng) -> (Vec<u8>, Vec<u8>) {
    let mut gt = Vec::with_capacity(PIXELS);
    let mut pred = Vec::with_capacity(PIXELS);
    while gt.len() < PIXELS {
        let len = rng.random_range(1..=64usize).min(PIXELS - gt.len());
        let g = if rng.random_bool(0.1) {
            255
        } else {
            rng.random_range(0..N_CLASSES as u8)
        };
        let p = if g != 255 && rng.random_bool(0.8) {
            g
        } else {
            rng.random_range(0..N_CLASSES as u8)
        };
        gt.extend(std::iter::repeat_n(g, len));
        pred.extend(std::iter::repeat_n(p, len));
    }
    (gt, pred)
}

/// Median throughput of `update` in Gpix/s.
fn throughput<L: recallseg_metrics::Label>(
    reps: usize,
    gt: &[L],
    pred: &[L],
) -> anyhow::Result<f64> {
    let mut cm = ConfusionMatrix::new(N_CLASSES);
    let t = median_time(reps, || {
        for _ in 0..INNER {
            cm.update(gt, pred)?;
        }
        Ok(())
    })?;
    anyhow::ensure!(cm.total() > 0, "nothing was counted");
    Ok((INNER * gt.len()) as f64 / t.as_secs_f64() / 1e9)
}

/// CPU time consumed so far by the calling thread (Linux only).
fn thread_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = stat.split_whitespace().next()?.parse::<u64>().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Median throughput of `update` per second of the counting thread's CPU time (call on a
/// one-thread pool), or `None` where thread CPU time cannot be read.
fn cpu_throughput(reps: usize, gt: &[u8], pred: &[u8]) -> anyhow::Result<Option<f64>> {
    let mut cm = ConfusionMatrix::new(N_CLASSES);
    cm.update(gt, pred)?;
    let mut times = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let Some(start) = thread_cpu_time() else {
            return Ok(None);
        };
        for _ in 0..INNER {
            cm.update(gt, pred)?;
        }
        let Some(end) = thread_cpu_time() else {
            return Ok(None);
        };
        times.push(end.saturating_sub(start));
    }
    times.sort();
    let t = times[times.len() / 2].as_secs_f64();
    Ok((t > 0.0).then(|| (INNER * gt.len()) as f64 / t / 1e9))
}

/// Runs the metrics benchmark.
pub(super) fn run(args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let mut rng = StdRng::seed_from_u64(2022);
    eprintln!("metrics: generating 8×512×1024 u8 label maps, {N_CLASSES} classes, 10% ignore");
    let (gt, pred) = uniform_maps(&mut rng);
    let (rgt, rpred) = run_maps(&mut rng);
    let threads = rayon::current_num_threads();

    eprintln!("metrics: u8, {threads} threads");
    let all = throughput(args.reps, &gt, &pred)?;
    eprintln!("metrics: u8, 1 thread");
    let single = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let one = single.install(|| throughput(args.reps, &gt, &pred))?;
    let one_cpu = single.install(|| cpu_throughput(args.reps, &gt, &pred))?;
    eprintln!("metrics: u8 runs, {threads} threads");
    let runs = throughput(args.reps, &rgt, &rpred)?;
    eprintln!("metrics: u16, {threads} threads");
    let g16: Vec<u16> = gt.iter().map(|&v| u16::from(v)).collect();
    let p16: Vec<u16> = pred.iter().map(|&v| u16::from(v)).collect();
    let wide = throughput(args.reps, &g16, &p16)?;

    let mut figures = vec![
        Figure::new(
            "confusion_gpix_per_s",
            format!("confusion u8 8x512x1024, {threads} threads"),
            all,
            "Gpix/s",
        )
        .with_peer(PEER_NUMPY_GPIX_PER_S),
        Figure::new(
            "confusion_1thread_gpix_per_s",
            "confusion u8, 1 thread",
            one,
            "Gpix/s",
        ),
        Figure::new(
            "confusion_runs_gpix_per_s",
            format!("confusion u8 runs of equal labels, {threads} threads"),
            runs,
            "Gpix/s",
        ),
        Figure::new(
            "confusion_u16_gpix_per_s",
            format!("confusion u16, {threads} threads"),
            wide,
            "Gpix/s",
        ),
    ];
    if let Some(v) = one_cpu {
        figures.insert(
            2,
            Figure::new(
                "confusion_1thread_cpu_gpix_per_s",
                "confusion u8, 1 thread, per CPU second",
                v,
                "Gpix/s",
            ),
        );
    }
    Ok(figures)
}
