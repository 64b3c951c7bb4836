//! SyncBatchNorm: ranks of a `LocalGroup` (threads), each holding a shard of a batch, must
//! compute what one process computes on the whole batch (outputs, gradients, running
//! statistics). The reference is the single-process layer (the fused CPU kernel, itself checked
//! against PyTorch's goldens in `ops.rs` / `model.rs`) run on the concatenated batch.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use recallseg_distributed::{single_process, LocalGroup, SharedCommunicator};
use recallseg_models::ops::{with_cpu_kernels, CpuKernels};
use recallseg_models::BatchNorm2d;
use recallseg_models::ParamKind;
use recallseg_models::{Backbone, BuildOptions, DeepLab, Head, ModelConfig};
use std::sync::Arc;

/// 64-bit FNV-1a hash of a string.
fn fnv1a64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64 finaliser.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Deterministic values in `[-1, 1)` (+ `shift` on the first half of the batch, so the two
/// ranks' means differ).
fn input(name: &str, shape: (usize, usize, usize, usize), shift: f32) -> Tensor {
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    let half = n / 2;
    let h = fnv1a64(name);
    let v: Vec<f32> = (0..n as u64)
        .map(|i| {
            let u = (splitmix64(h ^ i) >> 11) as f64 / (1u64 << 53) as f64;
            (2.0 * u - 1.0) as f32 + if (i as usize) < half { shift } else { 0.0 }
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Runs `f` on each rank of a `LocalGroup` of `n` threads.
fn on_ranks<T: Send>(n: usize, f: impl Fn(SharedCommunicator) -> T + Sync) -> Vec<T> {
    let ranks = LocalGroup::new(n);
    std::thread::scope(|s| {
        let hs: Vec<_> = ranks
            .into_iter()
            .map(|c| {
                let f = &f;
                s.spawn(move || f(Arc::new(c)))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn vec64(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// `|a − b| ≤ tol · max(1, max |b|)` elementwise.
fn assert_close<T: Copy + Into<f64>>(a: &[T], b: &[T], tol: f64, what: &str) {
    let a: Vec<f64> = a.iter().map(|&x| x.into()).collect();
    let b: Vec<f64> = b.iter().map(|&x| x.into()).collect();
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * scale,
            "{what}[{i}]: {x} vs {y} (tolerance {tol} × {scale})"
        );
    }
}

const C: usize = 3;
const SHAPE: (usize, usize, usize, usize) = (4, C, 5, 6);

/// What one run of a BatchNorm layer gives: output, input gradient, γ and β gradients, running
/// mean and variance after two training steps.
struct BnRun {
    y: Vec<f64>,
    dx: Vec<f64>,
    dgamma: Vec<f64>,
    dbeta: Vec<f64>,
    running: Vec<f64>,
}

/// Two training steps of a `BatchNorm2d` in `x`'s dtype on `x` (the second one differentiated
/// against the fixed weights `w`: loss `Σ y·w`), with `comm` or without, with the CPU `kernels`.
fn bn_run(
    x: &Tensor,
    w: &Tensor,
    comm: Option<SharedCommunicator>,
    relu: bool,
    kernels: CpuKernels,
) -> BnRun {
    with_cpu_kernels(kernels, || bn_run_here(x, w, comm, relu))
}

fn bn_run_here(x: &Tensor, w: &Tensor, comm: Option<SharedCommunicator>, relu: bool) -> BnRun {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, x.dtype(), &Device::Cpu);
    let bn = BatchNorm2d::from_var_builder(vb, C, false)
        .unwrap()
        .with_communicator(comm);
    let data = vm.data().lock().unwrap();
    let gamma = data["weight"].clone();
    let beta = data["bias"].clone();
    drop(data);
    let gv = Tensor::new(&[0.5f32, 1.5, -2.0], &Device::Cpu).unwrap();
    let bv = Tensor::new(&[0.1f32, -0.3, 0.7], &Device::Cpu).unwrap();
    gamma.set(&gv.to_dtype(x.dtype()).unwrap()).unwrap();
    beta.set(&bv.to_dtype(x.dtype()).unwrap()).unwrap();
    // A first step moves the running statistics; the second is the one differentiated.
    bn.forward_t(&(x * 0.5).unwrap(), true).unwrap();
    let xv = Var::from_tensor(x).unwrap();
    let y = if relu {
        bn.forward_relu_t(xv.as_tensor(), true).unwrap()
    } else {
        bn.forward_t(xv.as_tensor(), true).unwrap()
    };
    let loss = (&y * w).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    let mut running = vec64(bn.running_mean());
    running.extend(vec64(bn.running_var()));
    BnRun {
        y: vec64(&y),
        dx: vec64(g.get(xv.as_tensor()).unwrap()),
        dgamma: vec64(g.get(gamma.as_tensor()).unwrap()),
        dbeta: vec64(g.get(beta.as_tensor()).unwrap()),
        running,
    }
}

/// Two ranks holding halves of `x` against one process on `x`, within `tol`, all with the CPU
/// `kernels`.
fn check_two_ranks(x: &Tensor, w: &Tensor, tol: f64, kernels: CpuKernels) {
    let n = x.dim(0).unwrap() / 2;
    for relu in [false, true] {
        let whole = bn_run(x, w, None, relu, kernels);
        let ranks = on_ranks(2, |comm| {
            let r = comm.rank();
            let xs = x.narrow(0, n * r, n).unwrap();
            let ws = w.narrow(0, n * r, n).unwrap();
            bn_run(&xs, &ws, Some(comm), relu, kernels)
        });
        let half = whole.y.len() / 2;
        let mut dgamma = vec![0.0f64; C];
        let mut dbeta = vec![0.0f64; C];
        for (r, run) in ranks.iter().enumerate() {
            let slice = r * half..(r + 1) * half;
            assert_close(&run.y, &whole.y[slice.clone()], tol, "output");
            assert_close(&run.dx, &whole.dx[slice], tol, "input gradient");
            for k in 0..C {
                dgamma[k] += run.dgamma[k];
                dbeta[k] += run.dbeta[k];
            }
            // Identical bits on every rank, and the whole batch's statistics.
            assert_eq!(
                run.running, ranks[0].running,
                "running statistics of rank {r}"
            );
            assert_close(&run.running, &whole.running, tol, "running statistics");
        }
        assert_close(&dgamma, &whole.dgamma, tol, "γ gradient");
        assert_close(&dbeta, &whole.dbeta, tol, "β gradient");
        // The shift makes the ranks' means differ: a per-rank BatchNorm would not pass.
        if x.elem_count() / C / 2 < 2 {
            continue; // one value per channel on a rank: per-rank BatchNorm is an error
        }
        let local = bn_run(
            &x.narrow(0, 0, n).unwrap(),
            &w.narrow(0, 0, n).unwrap(),
            None,
            relu,
            kernels,
        );
        let diff = local
            .y
            .iter()
            .zip(&whole.y[..half])
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            diff > 0.1,
            "per-rank statistics too close to global ones: {diff}"
        );
    }
}

#[test]
fn two_ranks_equal_one_process_on_the_concatenated_batch() {
    // f32, the fused CPU kernels (synchronised and not).
    let x = input("input.bn", SHAPE, 3.0);
    let w = input("grad.bn", SHAPE, 0.0);
    check_two_ranks(&x, &w, 2e-6, CpuKernels::ALL);
    // f32, candle ops (the path off the CPU).
    check_two_ranks(&x, &w, 1e-5, CpuKernels::NONE);
    // f64 (candle ops): the formula itself, to round-off.
    let x = x.to_dtype(DType::F64).unwrap();
    let w = w.to_dtype(DType::F64).unwrap();
    check_two_ranks(&x, &w, 1e-12, CpuKernels::ALL);
}

#[test]
fn one_value_per_rank_is_enough_when_the_global_batch_has_two() {
    // The image-pooling branch of ASPP with one image per rank: (1, C, 1, 1) on each of two
    // ranks is BatchNorm over (2, C, 1, 1), which a single rank alone refuses.
    let x = input("input.pool", (2, C, 1, 1), 1.0);
    let w = input("grad.pool", (2, C, 1, 1), 0.0);
    check_two_ranks(&x, &w, 2e-6, CpuKernels::ALL);
    check_two_ranks(&x, &w, 1e-5, CpuKernels::NONE);
}

#[test]
fn a_frozen_layer_is_not_synchronised() {
    let x = input("input.frozen", SHAPE, 2.0);
    let outs = on_ranks(2, |comm| {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let bn = BatchNorm2d::from_var_builder(vb, C, true).unwrap();
        let synced = bn.clone().with_communicator(Some(comm.clone()));
        let xs = x.narrow(0, 2 * comm.rank(), 2).unwrap();
        (
            vec(&bn.forward_t(&xs, true).unwrap()),
            vec(&synced.forward_t(&xs, true).unwrap()),
        )
    });
    for (a, b) in outs {
        assert_eq!(a, b);
    }
}

#[test]
fn one_rank_or_evaluation_is_the_plain_layer() {
    let x = input("input.bn1", SHAPE, 1.0);
    let w = input("grad.bn1", SHAPE, 0.0);
    for kernels in [CpuKernels::ALL, CpuKernels::NONE] {
        let plain = bn_run(&x, &w, None, true, kernels);
        let single = bn_run(&x, &w, Some(single_process()), true, kernels);
        assert_eq!(plain.y, single.y);
        assert_eq!(plain.dx, single.dx);
        assert_eq!(plain.running, single.running);
    }
    // Evaluation with two ranks reads the running statistics: no collective, per-rank output.
    let outs = on_ranks(2, |comm| {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let bn = BatchNorm2d::from_var_builder(vb, C, false).unwrap();
        let synced = bn.clone().with_communicator(Some(comm.clone()));
        let xs = x.narrow(0, 2 * comm.rank(), 2).unwrap();
        (
            vec(&bn.forward_t(&xs, false).unwrap()),
            vec(&synced.forward_t(&xs, false).unwrap()),
        )
    });
    for (a, b) in outs {
        assert_eq!(a, b);
    }
}

/// A thin DeepLab (ResNet-18, no dropout, so the forward pass is a function of the batch only).
fn tiny(head: Head) -> ModelConfig {
    ModelConfig {
        backbone: Backbone::Resnet18,
        head,
        output_stride: 16,
        n_classes: 3,
        backbone_width: 4,
        head_channels: 8,
        low_level_channels: 4,
        dropout: 0.0,
        decoder_dropout: [0.0, 0.0],
        ..ModelConfig::default()
    }
}

/// Logits, the gradient of `Σ logits·w` for every trainable variable, and every running
/// statistic after one training forward pass.
type ModelRun = (Vec<f32>, Vec<Vec<f32>>, Vec<f32>);

fn model_run(
    kernels: CpuKernels,
    cfg: &ModelConfig,
    x: &Tensor,
    w: &Tensor,
    comm: Option<SharedCommunicator>,
) -> ModelRun {
    with_cpu_kernels(kernels, || model_run_here(cfg, x, w, comm))
}

fn model_run_here(
    cfg: &ModelConfig,
    x: &Tensor,
    w: &Tensor,
    comm: Option<SharedCommunicator>,
) -> ModelRun {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let opts = BuildOptions::default().with_sync_batch_norm(comm);
    let model = DeepLab::new_with(cfg, vb, &opts).unwrap();
    let logits = model.forward_t_with(x, true, 7).unwrap();
    let loss = (&logits * w).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    let grads = model
        .trainable_vars()
        .iter()
        .map(|v| vec(g.get(v.as_tensor()).unwrap()))
        .collect();
    let stats = model
        .named_vars()
        .iter()
        .filter(|nv| nv.kind == ParamKind::BnStat)
        .flat_map(|nv| vec(nv.var.as_tensor()))
        .collect();
    (vec(&logits), grads, stats)
}

#[test]
fn a_synchronised_deeplab_on_two_ranks_equals_one_process() {
    // The fused CPU kernels (conv + BN, BN) with both heads; candle ops for DeepLabV3+.
    for (head, kernels) in [
        (Head::DeepLabV3Plus, CpuKernels::ALL),
        (Head::DeepLabV3, CpuKernels::ALL),
        (Head::DeepLabV3Plus, CpuKernels::NONE),
    ] {
        let cfg = tiny(head);
        let x = input("input.model", (4, 3, 32, 32), 0.5);
        let w = input("grad.model", (4, 3, 32, 32), 0.0);
        let (logits, grads, stats) = model_run(kernels, &cfg, &x, &w, None);
        let ranks = on_ranks(2, |comm| {
            let r = comm.rank();
            let xs = x.narrow(0, 2 * r, 2).unwrap();
            let ws = w.narrow(0, 2 * r, 2).unwrap();
            model_run(kernels, &cfg, &xs, &ws, Some(comm))
        });
        let half = logits.len() / 2;
        for (r, (l, _, s)) in ranks.iter().enumerate() {
            assert_close(l, &logits[r * half..(r + 1) * half], 5e-5, "logits");
            assert_eq!(s, &ranks[0].2, "running statistics of rank {r}");
            assert_close(s, &stats, 1e-5, "running statistics");
        }
        // Data-parallel training sums (averages) the ranks' gradients: that sum is the whole
        // batch's gradient.
        for (k, whole) in grads.iter().enumerate() {
            let summed: Vec<f32> = ranks[0].1[k]
                .iter()
                .zip(&ranks[1].1[k])
                .map(|(a, b)| a + b)
                .collect();
            assert_close(
                &summed,
                whole,
                1e-4,
                &format!("gradient of trainable variable {k}"),
            );
        }
    }
}
