//! Every operation of `NcclCommunicator`, checked on the GPUs of the ranks `mpirun` starts
//! (one rank per GPU; rank r uses `cuda:LOCAL_RANK`):
//!
//! ```text
//! source scripts/cuda-env.sh
//! cargo build -p recallseg-distributed --features nccl --bin recallseg-nccl-selftest
//! mpirun -np 2 target/debug/recallseg-nccl-selftest
//! ```
//!
//! Checks (every rank generates every rank's inputs from a fixed seed, so each can compute the
//! expected result itself):
//! * the communicator's device is the one it was given; the sum of a tensor on it stays on it
//!   (same handle, shape and dtype);
//! * `f32`/`f64` sums of integer-valued tensors (exact in any order) at lengths from 1 to the
//!   12M floats of a DeepLabV3+-ResNet-18 gradient;
//! * `f32` sums of random tensors: every rank receives rank 0's bits, within the rounding
//!   bound of the rank-order sum;
//! * `f16`/`bf16` (summed in `f32`), a non-contiguous tensor, a `u32` tensor and a CPU tensor
//!   (the host path);
//! * `all_reduce_sum_autograd` on the GPU: the forward sum and the all-reduced gradient;
//! * MPI's host collectives through the same communicator; 200 small all-reduces in a row.
//!
//! Prints one line per rank (with the median time of the 12M-float all-reduce); the exit status
//! is 0 on every rank if every check passed on every rank, 1 otherwise. An error aborts the job.

mod selftest;

use selftest::Checks;

use candle_core::backend::BackendDevice;
use candle_core::{DType, Device, Tensor, Var};
use recallseg_distributed::{
    all_reduce_sum_autograd, local_rank, Communicator, NcclCommunicator, SharedCommunicator,
};
use std::sync::Arc;
use std::time::Instant;

/// The trainable parameters of DeepLabV3+ with a ResNet-18 backbone, about.
const R18_GRADIENT: usize = 12_000_000;

/// Ends the job if an operation returned an error.
fn ok<T>(comm: &NcclCommunicator, r: candle_core::Result<T>, what: &str) -> T {
    selftest::ok_or_abort("nccl_selftest", comm.mpi(), r, what)
}

/// A deterministic value in [-1, 1) for (seed, rank, index).
fn noise(seed: u64, rank: usize, i: usize) -> f32 {
    let mut z = seed
        ^ (rank as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (i as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// Integers below 2^20: every partial sum is exact in f32 for up to 16 ranks.
fn int_value(rank: usize, i: usize) -> f64 {
    ((i * 7919 + rank * 104_729) % (1 << 20)) as f64 - 300_000.0
}

fn on_device(t: &Tensor, device: &Device) -> bool {
    match (t.device(), device) {
        (Device::Cuda(a), Device::Cuda(b)) => a.same_device(b),
        _ => false,
    }
}

fn exact_sums(comm: &NcclCommunicator, dev: &Device, c: &mut Checks) {
    let (rank, size) = (comm.rank(), comm.size());
    for &n in &[1usize, 3, 1000, 1_100_000, R18_GRADIENT] {
        let expect: Vec<f64> = (0..n)
            .map(|i| (0..size).map(|r| int_value(r, i)).sum())
            .collect();
        for dtype in [DType::F32, DType::F64] {
            let mine: Vec<f64> = (0..n).map(|i| int_value(rank, i)).collect();
            let t = ok(
                comm,
                Tensor::from_vec(mine, n, dev).and_then(|t| t.to_dtype(dtype)),
                "upload",
            );
            let s = ok(comm, comm.all_reduce_sum(&t), "all-reduce");
            c.check(
                on_device(&s, dev) && s.dtype() == dtype && s.dims() == [n],
                || format!("{dtype:?} sum of {n} values: device, dtype or shape changed"),
            );
            let got = ok(
                comm,
                s.to_dtype(DType::F64).and_then(|s| s.to_vec1::<f64>()),
                "download",
            );
            c.check(got == expect, || {
                format!("exact {dtype:?} sum of {n} values")
            });
        }
    }
}

fn random_sums(comm: &NcclCommunicator, dev: &Device, c: &mut Checks) {
    let (rank, size) = (comm.rank(), comm.size());
    for &n in &[5usize, 40_000, 1_100_000] {
        let mine: Vec<f32> = (0..n).map(|i| noise(0xF32, rank, i)).collect();
        let t = ok(comm, Tensor::from_vec(mine, n, dev), "upload");
        let s = ok(comm, comm.all_reduce_sum(&t), "all-reduce");
        let got = ok(comm, s.to_vec1::<f32>(), "download");
        let bits: Vec<u8> = got.iter().flat_map(|x| x.to_le_bytes()).collect();
        let mut root = bits.clone();
        ok(comm, comm.broadcast_bytes(&mut root, 0), "broadcast");
        c.check(root == bits, || {
            format!("f32 sum of {n} random values: bits differ from rank 0's")
        });
        let mut worst = 0.0f64;
        for (i, g) in got.iter().enumerate() {
            let xs: Vec<f32> = (0..size).map(|r| noise(0xF32, r, i)).collect();
            let ordered = xs.iter().fold(0.0f32, |a, x| a + x) as f64;
            let bound =
                xs.iter().map(|x| x.abs() as f64).sum::<f64>() * size as f64 * f32::EPSILON as f64;
            worst = worst.max((*g as f64 - ordered).abs() / bound.max(f64::MIN_POSITIVE));
        }
        c.check(worst <= 1.0, || {
            format!("f32 sum of {n} random values off by {worst} of the rounding bound")
        });
    }
}

fn other_tensors(comm: &NcclCommunicator, dev: &Device, c: &mut Checks) {
    let (rank, size) = (comm.rank(), comm.size());
    let base: Vec<f32> = (0..24).map(|i| (i % 7) as f32 + rank as f32).collect();
    let expect: Vec<f32> = (0..24)
        .map(|i| (0..size).map(|r| (i % 7) as f32 + r as f32).sum())
        .collect();
    for dtype in [DType::F16, DType::BF16] {
        let t = ok(
            comm,
            Tensor::from_vec(base.clone(), (4, 6), dev).and_then(|t| t.to_dtype(dtype)),
            "upload",
        );
        let s = ok(comm, comm.all_reduce_sum(&t), "all-reduce");
        let got = ok(
            comm,
            s.to_dtype(DType::F32)
                .and_then(|s| s.flatten_all())
                .and_then(|s| s.to_vec1::<f32>()),
            "download",
        );
        c.check(
            s.dtype() == dtype && s.dims() == [4, 6] && on_device(&s, dev) && got == expect,
            || format!("{dtype:?} sum"),
        );
    }
    // A transposed (non-contiguous) view.
    let t = ok(
        comm,
        Tensor::from_vec(base.clone(), (4, 6), dev).and_then(|t| t.t()),
        "upload",
    );
    let s = ok(comm, comm.all_reduce_sum(&t), "all-reduce");
    let want = ok(
        comm,
        Tensor::from_vec(expect.clone(), (4, 6), dev)
            .and_then(|t| t.t())
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>()),
        "expected",
    );
    let got = ok(
        comm,
        s.flatten_all().and_then(|s| s.to_vec1::<f32>()),
        "download",
    );
    c.check(s.dims() == [6, 4] && got == want, || {
        "sum of a transposed tensor".into()
    });
    // u32 on the GPU and f32 on the CPU: the host path.
    let u: Vec<u32> = (0..10).map(|i| i * 3 + rank as u32).collect();
    let t = ok(comm, Tensor::from_vec(u, 10, dev), "upload");
    let s = ok(comm, comm.all_reduce_sum(&t), "all-reduce");
    let want: Vec<u32> = (0..10)
        .map(|i| (0..size as u32).map(|r| i * 3 + r).sum())
        .collect();
    c.check(
        s.dtype() == DType::U32 && ok(comm, s.to_vec1::<u32>(), "download") == want,
        || "u32 sum (host path)".into(),
    );
    let t = ok(
        comm,
        Tensor::from_vec(base.clone(), 24, &Device::Cpu),
        "cpu tensor",
    );
    let s = ok(comm, comm.all_reduce_sum(&t), "all-reduce");
    c.check(
        s.device().is_cpu() && ok(comm, s.to_vec1::<f32>(), "download") == expect,
        || "CPU tensor sum (host path)".into(),
    );
}

fn autograd(comm: &Arc<NcclCommunicator>, dev: &Device, c: &mut Checks) {
    let size = comm.size() as f32;
    let shared: SharedCommunicator = comm.clone();
    let x = ok(comm, Var::new(&[1.0f32, 2.0, 3.0], dev), "var");
    let y = ok(
        comm,
        all_reduce_sum_autograd(&shared, x.as_tensor()),
        "autograd all-reduce",
    );
    let fwd = ok(comm, y.to_vec1::<f32>(), "download");
    c.check(fwd == [size, 2.0 * size, 3.0 * size], || {
        format!("autograd forward {fwd:?}")
    });
    let grads = ok(
        comm,
        y.sqr().and_then(|s| s.sum_all()).and_then(|l| l.backward()),
        "backward",
    );
    // d/dx_r Σ_s (Σ_q x_q)² summed over ranks = Σ_s 2 y = 2 · size · y.
    let g = grads
        .get(x.as_tensor())
        .map(|g| ok(comm, g.to_vec1::<f32>(), "download"));
    let want: Vec<f32> = fwd.iter().map(|v| 2.0 * size * v).collect();
    c.check(g.as_deref() == Some(&want[..]), || {
        format!("autograd gradient {g:?}, expected {want:?}")
    });
}

fn host_collectives(comm: &NcclCommunicator, dev: &Device, c: &mut Checks) {
    let (rank, size) = (comm.rank(), comm.size());
    let mut v = vec![rank as f32 + 1.0; 3];
    ok(comm, comm.all_reduce_sum_f32(&mut v), "f32 all-reduce");
    let want = (size * (size + 1) / 2) as f32;
    c.check(v == [want; 3], || format!("host f32 all-reduce {v:?}"));
    let mut bytes = if rank == 0 { b"nccl".to_vec() } else { vec![] };
    ok(comm, comm.broadcast_bytes(&mut bytes, 0), "broadcast");
    c.check(bytes == b"nccl", || "broadcast from rank 0".into());
    ok(comm, comm.barrier(), "barrier");
    // 200 small device all-reduces queued back to back, then read once.
    let mut t = ok(comm, Tensor::ones(16, DType::F32, dev), "upload");
    for _ in 0..200 {
        t = ok(
            comm,
            comm.all_reduce_sum(&t).and_then(|s| s / size as f64),
            "all-reduce",
        );
    }
    let got = ok(comm, t.to_vec1::<f32>(), "download");
    c.check(got == [1.0; 16], || "200 all-reduces in a row".into());
}

/// Median milliseconds of an all-reduce of the 12M-float gradient bucket (synchronised).
fn time_gradient_bucket(comm: &NcclCommunicator, dev: &Device) -> f64 {
    let t = ok(
        comm,
        Tensor::ones(R18_GRADIENT, DType::F32, dev),
        "gradient bucket",
    );
    let mut ms = Vec::new();
    for i in 0..12 {
        ok(comm, comm.barrier(), "barrier");
        let start = Instant::now();
        let s = ok(comm, comm.all_reduce_sum(&t), "all-reduce");
        ok(comm, dev.synchronize(), "synchronize");
        drop(s);
        if i >= 2 {
            ms.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

fn main() {
    let ordinal = local_rank().unwrap_or(0);
    let device = match Device::new_cuda(ordinal) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("nccl_selftest: cuda:{ordinal}: {e}");
            std::process::exit(2);
        }
    };
    let comm = match NcclCommunicator::init(&device) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("nccl_selftest: {e}");
            std::process::exit(2);
        }
    };
    let mut c = Checks::new("nccl_selftest", comm.rank());
    c.check(
        comm.backend() == "nccl"
            && comm
                .device()
                .is_some_and(|d| on_device(&Tensor::zeros(1, DType::F32, &d).unwrap(), &device)),
        || "backend name and device".into(),
    );
    exact_sums(&comm, &device, &mut c);
    random_sums(&comm, &device, &mut c);
    other_tensors(&comm, &device, &mut c);
    autograd(&comm, &device, &mut c);
    host_collectives(&comm, &device, &mut c);
    let ms = time_gradient_bucket(&comm, &device);

    let failures = c.failed_on_all_ranks(comm.mpi());
    println!(
        "nccl_selftest: rank {} of {} on cuda:{ordinal}: {} checks passed, {} failed here, {} \
         failed on all ranks; all-reduce of {R18_GRADIENT} f32: {ms:.3} ms (median of 10)",
        comm.rank(),
        comm.size(),
        c.passed,
        c.failed.len(),
        failures,
    );
    let code = i32::from(failures != 0);
    ok(&comm, comm.finish(), "finish");
    drop(comm); // NCCL, then MPI_Finalize, before exiting
    std::process::exit(code);
}
