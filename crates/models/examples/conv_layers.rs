//! Per-layer cost of the CPU convolution kernels on the dense convolutions of DeepLabV3+-ResNet-18
//! (batch 2, 3×192×384, output stride 16): forward, input gradient and weight gradient of each
//! layer shape, as **process CPU time** (`CLOCK_PROCESS_CPUTIME_ID`, all threads, min over the repetitions; robust to other
//! processes' load) and wall time, on rayon pools of one and two threads.
//!
//! ```text
//! cargo run --release -p recallseg-models --example conv_layers [-- REPS [FILTER]]
//! ```
//!
//! `REPS` (default 5) repetitions per measurement; `FILTER` keeps the layers whose name contains
//! it. The allocator is tuned as in the training binaries (freed memory kept for reuse). With
//! `CONV_PATHS=1` it times both paths of each 3×3 layer instead of the dispatched one
//! (im2col + gemm and Winograd; the stride-1 input gradient is the forward pass of the transposed
//! convolution, timed as such). The kernels are compiled into this example from their source files, so what is timed is
//! the slice-level kernels alone (no candle tensors, no autograd).

// The kernels' own sources, compiled into this example as siblings (as in the library, each
// reaches the other through `super::`); not every item is used here.
#[path = "../src/ops/buffers.rs"]
mod buffers;
#[allow(dead_code)]
#[path = "../src/ops/conv2d/kernels.rs"]
mod kernels;

/// The kernels refer to their buffer helper as `crate::ops::buffers`.
mod ops {
    pub(crate) use super::buffers;
}
#[allow(dead_code)]
#[path = "../src/ops/conv2d/geometry.rs"]
mod geometry;
#[allow(dead_code)]
#[path = "../src/ops/conv2d/winograd.rs"]
mod winograd;

use geometry::ConvShape;
use kernels::{
    conv_forward, conv_forward_im2col, conv_input_grad, conv_weight_grad, conv_weight_grad_im2col,
};
use std::time::{Duration, Instant};
use winograd::{conv_forward_winograd, conv_weight_grad_winograd};

/// `struct timespec` of Linux x86-64 / aarch64.
#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

extern "C" {
    fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
    fn mallopt(param: i32, value: i32) -> i32;
}

/// The allocator settings the `recallseg` and `xtask` binaries apply at start-up
/// (`recallseg_cli::runtime`): glibc keeps freed blocks of up to 32 MiB for reuse instead of
/// returning them to the kernel, so that the kernels' buffers do not page-fault on every call.
fn tune_allocator() {
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    // SAFETY: mallopt only changes glibc allocator parameters.
    let ok = unsafe {
        mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, i32::MAX) == 1
    };
    assert!(ok, "mallopt rejected the allocator settings");
}

/// CPU time used so far by all threads of this process (`CLOCK_PROCESS_CPUTIME_ID`, which, unlike
/// `/proc/*/schedstat`, also counts the running threads' current time slice exactly).
fn process_cpu_time() -> Duration {
    const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the call only writes it.
    let rc = unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Deterministic values in [-1, 1).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A 3×3 convolution of DeepLabV3+-ResNet-18 at batch 2.
fn layer(c_in: usize, c_out: usize, h: usize, w: usize, dil: usize) -> ConvShape {
    ConvShape {
        n: 2,
        c_in,
        h,
        w,
        c_out,
        kh: 3,
        kw: 3,
        stride: 1,
        pad_h: dil,
        pad_w: dil,
        dil,
    }
}

/// (min CPU time, min wall time) of `reps` runs of `f`, after one warm-up run.
fn measure(reps: usize, mut f: impl FnMut() -> f32) -> (Duration, Duration) {
    let mut sink = f();
    let (mut cpu, mut wall) = (Duration::MAX, Duration::MAX);
    for _ in 0..reps {
        let (c0, w0) = (process_cpu_time(), Instant::now());
        sink += f();
        wall = wall.min(w0.elapsed());
        cpu = cpu.min(process_cpu_time().saturating_sub(c0));
    }
    std::hint::black_box(sink);
    (cpu, wall)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    tune_allocator();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let reps = args.first().and_then(|a| a.parse().ok()).unwrap_or(5);
    let filter = args.get(1).cloned().unwrap_or_default();
    // (name, shape, how many times the layer occurs in the network)
    let layers = [
        ("layer1 64→64 48×96", layer(64, 64, 48, 96, 1), 4),
        ("layer2 128→128 24×48", layer(128, 128, 24, 48, 1), 3),
        ("layer3 256→256 12×24", layer(256, 256, 12, 24, 1), 3),
        (
            "layer4.0.conv1 256→512 12×24",
            layer(256, 512, 12, 24, 1),
            1,
        ),
        ("layer4 512→512 12×24 dil 2", layer(512, 512, 12, 24, 2), 3),
        ("ASPP 512→256 12×24 rate 6", layer(512, 256, 12, 24, 6), 1),
        ("decoder 304→256 48×96", layer(304, 256, 48, 96, 1), 1),
    ];
    println!(
        "process CPU time / wall time in ms, min of {reps}; GFLOP/s = direct-convolution FLOPs per CPU second"
    );
    println!(
        "| layer (×count) | threads | fwd CPU | dx CPU | dW CPU | fwd wall | dx wall | dW wall | GFLOP/s fwd/dx/dW |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    if std::env::var_os("CONV_PATHS").is_some_and(|v| v == "1") {
        compare_paths(reps, &filter, &layers);
        return;
    }
    let mut totals = [[0f64; 3]; 2];
    for (name, s, count) in layers {
        if !name.contains(&filter) {
            continue;
        }
        let x = values(s.n * s.c_in * s.h * s.w, 1);
        let wt = values(s.c_out * s.k(), 2);
        let dy = values(s.n * s.c_out * s.oh() * s.ow(), 3);
        let flop = 2.0 * (s.n * s.c_out * s.oh() * s.ow() * s.k()) as f64;
        for (ti, threads) in [1usize, 2].into_iter().enumerate() {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("rayon pool");
            let (f, dx, dw) = pool.install(|| {
                (
                    measure(reps, || conv_forward(&s, &x, &wt, None)[7]),
                    measure(reps, || conv_input_grad(&s, &dy, &wt)[7]),
                    measure(reps, || conv_weight_grad(&s, &x, &dy)[7]),
                )
            });
            for (k, m) in [f, dx, dw].iter().enumerate() {
                totals[ti][k] += count as f64 * ms(m.0);
            }
            println!(
                "| {name} (×{count}) | {threads} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} / {:.0} / {:.0} |",
                ms(f.0),
                ms(dx.0),
                ms(dw.0),
                ms(f.1),
                ms(dx.1),
                ms(dw.1),
                flop / f.0.as_secs_f64() / 1e9,
                flop / dx.0.as_secs_f64() / 1e9,
                flop / dw.0.as_secs_f64() / 1e9,
            );
        }
    }
    for (ti, t) in totals.iter().enumerate() {
        println!(
            "total CPU ms weighted by count, {} thread(s): fwd {:.1}, dx {:.1}, dW {:.1}, sum {:.1}",
            ti + 1,
            t[0],
            t[1],
            t[2],
            t[0] + t[1] + t[2]
        );
    }
}

/// Process CPU ms of im2col and Winograd for the forward pass, the input gradient (the forward
/// pass of the transposed convolution) and the weight gradient of each layer.
fn compare_paths(reps: usize, filter: &str, layers: &[(&str, ConvShape, usize)]) {
    println!(
        "| layer | threads | fwd im2col / Winograd | dx im2col / Winograd | dW im2col / Winograd |"
    );
    println!("|---|---|---|---|---|");
    // Smaller shapes, to place the size threshold of `winograd::applies`.
    let probes = [
        (
            "probe 256→256 12×24 batch 1",
            ConvShape {
                n: 1,
                ..layer(256, 256, 12, 24, 1)
            },
            0,
        ),
        (
            "probe 512→512 12×24 dil 2 batch 1",
            ConvShape {
                n: 1,
                ..layer(512, 512, 12, 24, 2)
            },
            0,
        ),
        ("probe 256→256 6×12", layer(256, 256, 6, 12, 1), 0),
        ("probe 128→128 6×12", layer(128, 128, 6, 12, 1), 0),
        ("probe 64→64 12×24", layer(64, 64, 12, 24, 1), 0),
        (
            "probe 64→64 24×48 batch 1",
            ConvShape {
                n: 1,
                ..layer(64, 64, 24, 48, 1)
            },
            0,
        ),
        ("probe 32→32 48×96", layer(32, 32, 48, 96, 1), 0),
        ("probe 48→48 48×96", layer(48, 48, 48, 96, 1), 0),
    ];
    for &(name, s, _) in layers.iter().chain(&probes) {
        if !name.contains(filter) {
            continue;
        }
        let t = ConvShape {
            c_in: s.c_out,
            c_out: s.c_in,
            h: s.oh(),
            w: s.ow(),
            pad_h: 2 * s.dil - s.pad_h,
            pad_w: 2 * s.dil - s.pad_w,
            ..s
        };
        let x = values(s.n * s.c_in * s.h * s.w, 1);
        let wt = values(s.c_out * s.k(), 2);
        let dy = values(s.n * s.c_out * s.oh() * s.ow(), 3);
        for threads in [1usize, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("rayon pool");
            let r = pool.install(|| {
                [
                    measure(reps, || conv_forward_im2col(&s, &x, &wt, None)[7]),
                    measure(reps, || conv_forward_winograd(&s, &x, &wt, None)[7]),
                    measure(reps, || conv_forward_im2col(&t, &dy, &wt, None)[7]),
                    measure(reps, || conv_forward_winograd(&t, &dy, &wt, None)[7]),
                    measure(reps, || conv_weight_grad_im2col(&s, &x, &dy)[7]),
                    measure(reps, || conv_weight_grad_winograd(&s, &x, &dy)[7]),
                ]
            });
            let c = |i: usize| ms(r[i].0);
            println!(
                "| {name} | {threads} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} |",
                c(0),
                c(1),
                c(2),
                c(3),
                c(4),
                c(5)
            );
        }
    }
}
