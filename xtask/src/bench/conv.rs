//! `cargo xtask bench conv` (issue #7): conv3x3 forward/backward micro-benchmark.
//!
//! Mirrors `../shared/peer/conv_bench.py`: conv3x3 64→64, padding 1, input 2×64×96×192 f32, stride
//! 1 and 2. "Forward" times `y = conv(x, k); s = (y*y).sum(); s.item()`, "backward" times
//! `s.backward()` (which includes the gradient of `y*y`), exactly as the PyTorch script does. Each
//! shape is timed for candle 0.11's own convolution (`Tensor::conv2d`) and for
//! `recallseg_models::ops::conv2d::conv2d` (the CPU custom op on CPU f32).
//!
//! Besides the wall-clock medians, the CPU time of all threads per pass is reported (Linux): on a
//! machine shared with other work it shows the work done independently of how much of the machine
//! the benchmark got (on an idle 2-core machine wall ≈ CPU / 2 for well-parallelised code).
//!
//! For profiling one side only, set `RECALLSEG_CONV_BENCH=candle` or `RECALLSEG_CONV_BENCH=ours`.

use super::{ms, BenchArgs, Figure};
use candle_core::{Device, Tensor, Var};
use recallseg_models::ops::conv2d::{conv2d, Conv2dGeometry};
use std::time::Instant;

/// PyTorch 2.15 CPU figures on the 2-core machine (`../shared/peer/README.md`), in ms:
/// (stride, forward, backward).
const PEER: [(usize, f64, f64); 2] = [(1, 32.0, 60.0), (2, 6.0, 25.0)];

/// Which implementation to time.
#[derive(Clone, Copy)]
enum Impl {
    /// candle's `Tensor::conv2d`.
    Candle,
    /// `recallseg_models::ops::conv2d::conv2d`.
    Ours,
}

fn forward(which: Impl, x: &Tensor, k: &Tensor, stride: usize) -> candle_core::Result<Tensor> {
    let y = match which {
        Impl::Candle => x.conv2d(k, 1, stride, 1, 1)?,
        Impl::Ours => conv2d(
            x,
            k,
            None,
            Conv2dGeometry {
                padding: 1,
                stride,
                dilation: 1,
                groups: 1,
            },
        )?,
    };
    (&y * &y)?.sum_all()
}

/// CPU time consumed so far by all threads of this process, in ns (Linux: the first field of
/// every `/proc/self/task/*/schedstat`); `None` elsewhere.
fn process_cpu_ns() -> Option<u64> {
    let mut total = 0u64;
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(entry.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// Median figures of one implementation at one stride, in ms.
struct Times {
    fwd: f64,
    bwd: f64,
    /// CPU time of all threads (None off Linux).
    fwd_cpu: Option<f64>,
    bwd_cpu: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times `reps` forward and backward passes (after one warm-up) of one implementation.
fn time_one(which: Impl, stride: usize, reps: usize) -> anyhow::Result<Times> {
    let dev = Device::Cpu;
    let (b, c, h, w) = (2, 64, 96, 192);
    let x = Var::from_tensor(&Tensor::randn(0f32, 1f32, (b, c, h, w), &dev)?)?;
    let k = Var::from_tensor(&(Tensor::randn(0f32, 1f32, (c, c, 3, 3), &dev)? * 0.05)?)?;
    let (mut fwd, mut bwd, mut fwd_cpu, mut bwd_cpu) = (vec![], vec![], vec![], vec![]);
    for rep in 0..reps.max(1) + 1 {
        let (c0, t0) = (process_cpu_ns(), Instant::now());
        let s = forward(which, x.as_tensor(), k.as_tensor(), stride)?;
        s.to_scalar::<f32>()?;
        let (c1, t1) = (process_cpu_ns(), Instant::now());
        let grads = s.backward()?;
        let gx = grads
            .get(x.as_tensor())
            .ok_or_else(|| anyhow::anyhow!("no gradient for the input"))?;
        gx.sum_all()?.to_scalar::<f32>()?;
        let (c2, t2) = (process_cpu_ns(), Instant::now());
        if rep == 0 {
            continue; // warm-up
        }
        fwd.push(ms(t1 - t0));
        bwd.push(ms(t2 - t1));
        if let (Some(c0), Some(c1), Some(c2)) = (c0, c1, c2) {
            fwd_cpu.push((c1 - c0) as f64 / 1e6);
            bwd_cpu.push((c2 - c1) as f64 / 1e6);
        }
    }
    let cpu = |v: Vec<f64>| (!v.is_empty()).then(|| median(v));
    Ok(Times {
        fwd: median(fwd),
        bwd: median(bwd),
        fwd_cpu: cpu(fwd_cpu),
        bwd_cpu: cpu(bwd_cpu),
    })
}

/// Runs the conv benchmark.
pub fn run(args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let mut figures = Vec::new();
    for (stride, peer_fwd, peer_bwd) in PEER {
        for (which, prefix, name) in [
            (Impl::Candle, "candle_", "candle 0.11"),
            (Impl::Ours, "", "recallseg"),
        ] {
            if let Ok(only) = std::env::var("RECALLSEG_CONV_BENCH") {
                let keep = match which {
                    Impl::Candle => only == "candle",
                    Impl::Ours => only == "ours",
                };
                if !keep {
                    continue;
                }
            }
            eprintln!(
                "conv3x3 stride {stride}: timing {name} ({} reps)…",
                args.reps
            );
            let t = time_one(which, stride, args.reps)?;
            figures.push(
                Figure::new(
                    format!("{prefix}conv3x3_s{stride}_fwd_ms"),
                    format!("conv3x3 s{stride} forward ({name})"),
                    t.fwd,
                    "ms",
                )
                .with_peer(peer_fwd),
            );
            figures.push(
                Figure::new(
                    format!("{prefix}conv3x3_s{stride}_bwd_ms"),
                    format!("conv3x3 s{stride} backward ({name})"),
                    t.bwd,
                    "ms",
                )
                .with_peer(peer_bwd),
            );
            for (pass, v) in [("fwd", t.fwd_cpu), ("bwd", t.bwd_cpu)] {
                if let Some(v) = v {
                    figures.push(Figure::new(
                        format!("{prefix}conv3x3_s{stride}_{pass}_cpu_ms"),
                        format!("conv3x3 s{stride} {pass} CPU time, all threads ({name})"),
                        v,
                        "ms",
                    ));
                }
            }
        }
    }
    Ok(figures)
}
