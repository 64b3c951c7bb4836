//! `cargo xtask bench conv`: conv3x3 forward/backward micro-benchmark.
//!
//! Mirrors `../shared/peer/conv_bench.py`: conv3x3 64→64, padding 1, input 2×64×96×192 f32, stride
//! 1 and 2. "Forward" times `y = conv(x, k); s = (y*y).sum(); s.item()`, "backward" times
//! `s.backward()` (which includes the gradient of `y*y`), exactly as the PyTorch script does. Each
//! shape is timed for candle 0.11's own convolution (`Tensor::conv2d`) and for
//! `recallseg_models::ops::conv2d` (the CPU custom op on CPU f32).
//!
//! Besides the wall-clock medians, the CPU time of all threads per pass is reported (Linux): on a
//! machine shared with other work it shows the work done independently of how much of the machine
//! the benchmark got (on an idle 2-core machine wall ≈ CPU / 2 for well-parallelised code).
//!
//! Depthwise 3×3 convolutions (`groups == C`, the separable ASPP and decoder of DeepLabV3+) are
//! timed the same way: `dw3x3_c256_48x96` (2×256×48×96, padding 1, the decoder's shape) and
//! `dw3x3_c512_12x24_d12` (2×512×12×24, padding = dilation = 12, an ASPP branch at output stride
//! 16); candle's grouped convolution (one convolution per channel) under `candle_` names. Their
//! PyTorch counterpart is `crates/models/benches/torch_depthwise_bench.py`.
//!
//! For profiling one side only, set `RECALLSEG_CONV_BENCH=candle` or `RECALLSEG_CONV_BENCH=ours`;
//! `RECALLSEG_CONV_BENCH_SET=dense` or `=depthwise` runs one set of shapes only.

use super::{ms, BenchArgs, Figure};
use candle_core::{Device, Tensor, Var};
use recallseg_models::ops::{conv2d, Conv2dGeometry};
use std::time::Instant;

/// PyTorch 2.15 CPU figures on the 2-core machine (`../shared/peer/README.md`), in ms:
/// (stride, forward, backward).
const PEER: [(usize, f64, f64); 2] = [(1, 32.0, 60.0), (2, 6.0, 25.0)];

/// A depthwise 3×3 case: figure prefix, input `(N, C, H, W)`, padding = dilation, and the PyTorch
/// 2.15 figures (forward, backward ms: median wall time of
/// `crates/models/benches/torch_depthwise_bench.py` on the 2-core machine, 2 threads).
///
/// PyTorch's 2-thread medians were bimodal on the loaded machine (five sittings: 21–48 / 40–97 ms
/// for the first case, 1.1–32 / 11–64 ms for the second, the slow mode at multiples of 16 ms with
/// one thread's CPU time ≈ wall time, i.e. threads waiting for each other); the lowest of them is
/// used here. With one thread PyTorch took 4.7–5.6 / 17.7–26.8 ms and 1.1 / 3.8 ms.
struct DepthwiseCase {
    name: &'static str,
    dims: (usize, usize, usize, usize),
    dilation: usize,
    peer: (f64, f64),
}

const DEPTHWISE: [DepthwiseCase; 2] = [
    DepthwiseCase {
        name: "dw3x3_c256_48x96",
        dims: (2, 256, 48, 96),
        dilation: 1,
        peer: (21.5, 40.3),
    },
    DepthwiseCase {
        name: "dw3x3_c512_12x24_d12",
        dims: (2, 512, 12, 24),
        dilation: 12,
        peer: (1.06, 10.8),
    },
];

/// Which implementation to time.
#[derive(Clone, Copy)]
enum Impl {
    /// candle's `Tensor::conv2d`.
    Candle,
    /// `recallseg_models::ops::conv2d`.
    Ours,
}

/// `(conv(x, k)²).sum()` with the given implementation and geometry.
fn forward(which: Impl, x: &Tensor, k: &Tensor, g: Conv2dGeometry) -> candle_core::Result<Tensor> {
    let y = match which {
        Impl::Candle => x.conv2d(k, g.padding, g.stride, g.dilation, g.groups)?,
        Impl::Ours => conv2d(x, k, None, g)?,
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

/// Times `reps` forward and backward passes (after one warm-up) of one implementation on the
/// input `x` and kernel `k` (both random, gradients tracked).
fn time_one(
    which: Impl,
    x_dims: (usize, usize, usize, usize),
    k_dims: (usize, usize, usize, usize),
    g: Conv2dGeometry,
    reps: usize,
) -> anyhow::Result<Times> {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1f32, x_dims, &dev)?)?;
    let k = Var::from_tensor(&(Tensor::randn(0f32, 1f32, k_dims, &dev)? * 0.05)?)?;
    let (mut fwd, mut bwd, mut fwd_cpu, mut bwd_cpu) = (vec![], vec![], vec![], vec![]);
    for rep in 0..reps.max(1) + 1 {
        let (c0, t0) = (process_cpu_ns(), Instant::now());
        let s = forward(which, x.as_tensor(), k.as_tensor(), g)?;
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

/// The implementations to time: both, or the one `RECALLSEG_CONV_BENCH` names.
fn implementations() -> Vec<(Impl, &'static str, &'static str)> {
    let only = std::env::var("RECALLSEG_CONV_BENCH").ok();
    [
        (Impl::Candle, "candle_", "candle 0.11"),
        (Impl::Ours, "", "recallseg"),
    ]
    .into_iter()
    .filter(|(which, _, _)| match (&only, which) {
        (None, _) => true,
        (Some(o), Impl::Candle) => o == "candle",
        (Some(o), Impl::Ours) => o == "ours",
    })
    .collect()
}

/// The wall-time figures (with the peer's) and CPU-time figures of one timed case.
fn push_figures(figures: &mut Vec<Figure>, key: &str, label: &str, t: &Times, peer: (f64, f64)) {
    for (pass, wall, peer, cpu) in [
        ("fwd", t.fwd, peer.0, t.fwd_cpu),
        ("bwd", t.bwd, peer.1, t.bwd_cpu),
    ] {
        let what = if pass == "fwd" { "forward" } else { "backward" };
        figures.push(
            Figure::new(
                format!("{key}_{pass}_ms"),
                format!("{label} {what}"),
                wall,
                "ms",
            )
            .with_peer(peer),
        );
        if let Some(v) = cpu {
            figures.push(Figure::new(
                format!("{key}_{pass}_cpu_ms"),
                format!("{label} {pass} CPU time, all threads"),
                v,
                "ms",
            ));
        }
    }
}

/// Runs the conv benchmark.
pub(super) fn run(args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let set = std::env::var("RECALLSEG_CONV_BENCH_SET").ok();
    let mut figures = Vec::new();
    if set.as_deref().is_none_or(|s| s == "dense") {
        for (stride, peer_fwd, peer_bwd) in PEER {
            for (which, prefix, name) in implementations() {
                eprintln!(
                    "conv3x3 stride {stride}: timing {name} ({} reps)…",
                    args.reps
                );
                let g = Conv2dGeometry {
                    padding: 1,
                    stride,
                    dilation: 1,
                    groups: 1,
                };
                let t = time_one(which, (2, 64, 96, 192), (64, 64, 3, 3), g, args.reps)?;
                push_figures(
                    &mut figures,
                    &format!("{prefix}conv3x3_s{stride}"),
                    &format!("conv3x3 s{stride} ({name})"),
                    &t,
                    (peer_fwd, peer_bwd),
                );
            }
        }
    }
    if set.as_deref().is_none_or(|s| s == "depthwise") {
        for case in &DEPTHWISE {
            for (which, prefix, name) in implementations() {
                eprintln!("{}: timing {name} ({} reps)…", case.name, args.reps);
                let c = case.dims.1;
                let g = Conv2dGeometry {
                    padding: case.dilation,
                    stride: 1,
                    dilation: case.dilation,
                    groups: c,
                };
                let t = time_one(which, case.dims, (c, 1, 3, 3), g, args.reps)?;
                push_figures(
                    &mut figures,
                    &format!("{prefix}{}", case.name),
                    &format!("{} ({name})", case.name),
                    &t,
                    case.peer,
                );
            }
        }
    }
    Ok(figures)
}
