//! Bitwise determinism of a whole training step (forward, backward, BatchNorm statistics) under
//! concurrent load and across rayon thread counts.
//!
//! The models are thin DeepLabV3+ ResNet-18s (one dense, one with the depthwise-separable head) on
//! a 2×3×64×96 batch, so that the step goes through every CPU kernel: im2col convolutions with
//! several tiles and weight-gradient chunks, stride-2 convolutions (col2im input gradient), 1×1
//! convolutions, Winograd (the decoder's 3×3 convolutions: forward, weight and input gradients),
//! depthwise convolutions, conv + BatchNorm (+ ReLU), BatchNorm (+ ReLU), max-pool, the residual
//! `relu(a + b)`, bilinear resizes and dropout. Nothing here measures time: the load only shuffles
//! the scheduling, and every result must be the same to the last bit.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::fill;
use rayon::prelude::*;
use recallseg_models::ops::{with_cpu_kernels, CpuKernels};
use recallseg_models::{DeepLab, ModelConfig};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const INPUT: [usize; 4] = [2, 3, 64, 96];
const DROPOUT_SEED: u64 = 0x5eed;

fn dense() -> ModelConfig {
    ModelConfig {
        n_classes: 5,
        backbone_width: 16,
        head_channels: 64,
        low_level_channels: 16,
        ..ModelConfig::default()
    }
}

fn separable() -> ModelConfig {
    ModelConfig {
        n_classes: 5,
        backbone_width: 16,
        head_channels: 64,
        low_level_channels: 16,
        ..ModelConfig::default().smp_layout()
    }
}

/// Every number a training step produces, as bits: the logits, the gradient of every trainable
/// variable and the updated BatchNorm running statistics, by name.
type StepBits = Vec<(String, Vec<u32>)>;

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// One training step of a freshly built model (seeded initialisation): forward in training mode
/// with a fixed dropout seed, backward of `Σ logits · r`.
fn step(cfg: &ModelConfig) -> StepBits {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = DeepLab::new(cfg, vb).unwrap();
    let x = fill("input.determinism", &INPUT);
    let logits = model.forward_t_with(&x, true, DROPOUT_SEED).unwrap();
    let r = fill("grad.determinism", logits.dims());
    let grads = (&logits * &r)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let mut out = vec![("logits".to_string(), bits(&logits))];
    let trainable = model.trainable_vars();
    for nv in model.named_vars() {
        if nv.name.ends_with("running_mean") || nv.name.ends_with("running_var") {
            out.push((nv.name.clone(), bits(nv.var.as_tensor())));
        } else if trainable.iter().any(|v| v.id() == nv.var.id()) {
            let g = grads
                .get(&nv.var)
                .unwrap_or_else(|| panic!("no gradient for {}", nv.name));
            out.push((format!("grad {}", nv.name), bits(g)));
        }
    }
    out
}

/// The first entry where two steps differ (for a readable failure).
fn first_difference(a: &StepBits, b: &StepBits) -> Option<String> {
    if a.len() != b.len() {
        return Some(format!("{} vs {} entries", a.len(), b.len()));
    }
    a.iter().zip(b).find_map(|((name, x), (_, y))| {
        let i = x.iter().zip(y).position(|(p, q)| p != q)?;
        Some(format!(
            "{name}[{i}]: {} vs {}",
            f32::from_bits(x[i]),
            f32::from_bits(y[i])
        ))
    })
}

/// Busy threads (plain spinning and floating-point work), a thread that keeps rayon's global pool
/// busy with its own parallel sums, and a thread that runs a model on candle's portable ops
/// (`CpuKernels::NONE`, scoped to that thread) over and over; all stop when dropped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for k in 0..2u64 {
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                let mut v = k as f64;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..10_000 {
                        v = (v * 1.000_000_1 + 1e-9).sqrt();
                    }
                    std::hint::black_box(v);
                }
            }));
        }
        let stop_rayon = stop.clone();
        threads.push(std::thread::spawn(move || {
            while !stop_rayon.load(Ordering::Relaxed) {
                let s: f64 = (0..1usize << 16)
                    .into_par_iter()
                    .map(|i| (i as f64).sqrt())
                    .sum();
                std::hint::black_box(s);
            }
        }));
        let stop_portable = stop.clone();
        threads.push(std::thread::spawn(move || {
            let cfg = ModelConfig {
                n_classes: 3,
                backbone_width: 4,
                head_channels: 8,
                low_level_channels: 4,
                ..ModelConfig::default()
            };
            with_cpu_kernels(CpuKernels::NONE, || {
                while !stop_portable.load(Ordering::Relaxed) {
                    std::hint::black_box(step(&cfg));
                }
            });
        }));
        Self { stop, threads }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The same step, repeated under load, gives the same bits as on a quiet machine; the model code
/// runs both on this test's thread and from inside rayon tasks of the (busy) global pool.
#[test]
fn training_steps_are_bitwise_equal_under_concurrent_load() {
    const REPS: usize = 10;
    for cfg in [dense(), separable()] {
        let quiet = step(&cfg);
        let load = Load::start();
        for rep in 0..REPS {
            let got = if rep % 2 == 0 {
                step(&cfg)
            } else {
                rayon::join(|| step(&cfg), || ()).0
            };
            if let Some(d) = first_difference(&quiet, &got) {
                panic!(
                    "repetition {rep} under load differs: {d} (separable: {})",
                    cfg.separable
                );
            }
        }
        drop(load);
    }
}

/// The kernels cut their work by the shape, not by the number of threads: the step is the same
/// on rayon pools of one, two and three threads as on the global pool (whatever its size).
#[test]
fn training_steps_are_bitwise_equal_for_one_two_and_three_rayon_threads() {
    for cfg in [dense(), separable()] {
        let global = step(&cfg);
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let got = pool.install(|| step(&cfg));
            if let Some(d) = first_difference(&global, &got) {
                panic!(
                    "{threads} rayon threads differ: {d} (separable: {})",
                    cfg.separable
                );
            }
        }
    }
}
