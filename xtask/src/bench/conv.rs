//! `cargo xtask bench conv` (issue #7): conv3x3 forward/backward micro-benchmark.
//!
//! Mirrors `../shared/peer/conv_bench.py`: conv3x3 64→64, padding 1, input 2×64×96×192 f32, stride
//! 1 and 2. "Forward" times `y = conv(x, k); s = (y*y).sum(); s.item()`, "backward" times
//! `s.backward()` (which includes the gradient of `y*y`), exactly as the PyTorch script does. Each
//! shape is timed for candle 0.11's own convolution (`Tensor::conv2d`) and for
//! `recallseg_models::ops::conv2d::conv2d` (the CPU custom op on CPU f32).
//!
//! For profiling one side only, set `RECALLSEG_CONV_BENCH=candle` or `RECALLSEG_CONV_BENCH=ours`.

use super::{median_time, ms, BenchArgs, Figure};
use candle_core::{Device, Tensor, Var};
use recallseg_models::ops::conv2d::{conv2d, Conv2dGeometry};

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

/// Median forward and backward times (ms) of one implementation at one stride.
fn time_one(which: Impl, stride: usize, reps: usize) -> anyhow::Result<(f64, f64)> {
    let dev = Device::Cpu;
    let (b, c, h, w) = (2, 64, 96, 192);
    let x = Var::from_tensor(&Tensor::randn(0f32, 1f32, (b, c, h, w), &dev)?)?;
    let k = Var::from_tensor(&(Tensor::randn(0f32, 1f32, (c, c, 3, 3), &dev)? * 0.05)?)?;
    let fwd = median_time(reps, || {
        let s = forward(which, x.as_tensor(), k.as_tensor(), stride)?;
        s.to_scalar::<f32>()?;
        Ok(())
    })?;
    // Backward alone: the forward graph is rebuilt outside the timed region every repetition.
    let mut times = Vec::with_capacity(reps + 1);
    for _ in 0..reps.max(1) + 1 {
        let s = forward(which, x.as_tensor(), k.as_tensor(), stride)?;
        s.to_scalar::<f32>()?;
        let t = std::time::Instant::now();
        let grads = s.backward()?;
        let gx = grads
            .get(x.as_tensor())
            .ok_or_else(|| anyhow::anyhow!("no gradient for the input"))?;
        gx.sum_all()?.to_scalar::<f32>()?;
        times.push(t.elapsed());
    }
    times.remove(0); // warm-up
    times.sort();
    let bwd = times[times.len() / 2];
    Ok((ms(fwd), ms(bwd)))
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
            let (f, b) = time_one(which, stride, args.reps)?;
            figures.push(
                Figure::new(
                    format!("{prefix}conv3x3_s{stride}_fwd_ms"),
                    format!("conv3x3 s{stride} forward ({name})"),
                    f,
                    "ms",
                )
                .with_peer(peer_fwd),
            );
            figures.push(
                Figure::new(
                    format!("{prefix}conv3x3_s{stride}_bwd_ms"),
                    format!("conv3x3 s{stride} backward ({name})"),
                    b,
                    "ms",
                )
                .with_peer(peer_bwd),
            );
        }
    }
    Ok(figures)
}
