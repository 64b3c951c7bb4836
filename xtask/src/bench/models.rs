//! `cargo xtask bench models`: DeepLab training step and inference time.
//!
//! Mirrors `../shared/peer/step_bench.py`: batch 2, 3×192×384 images, 16 classes, one Adam step
//! (forward in training mode, pixel-wise cross-entropy — `recallseg_losses::CrossEntropy`, the
//! trainer's, fused on the CPU — backward,
//! the trainer's Adam update — `recallseg_trainer::optim::Adam`, fused on the CPU — with lr 1e-3,
//! as `torch.optim.Adam`) of
//!
//! * DeepLabV3+ on ResNet-18, output stride 16 (the paper's model: dense ASPP and two dense
//!   decoder convolutions; PyTorch on this architecture: `crates/models/benches/torch_step_bench.py`),
//!   and its evaluation-mode forward pass (inference);
//! * the same with segmentation_models_pytorch's layout (`ModelConfig::smp_layout`: separable
//!   ASPP and decoder, one decoder convolution, rates 12/24/36): the equal-work counterpart of
//!   the peer's smp `DeepLabV3Plus` (570 ms);
//! * DeepLabV3 on ResNet-18, output stride 8 (peer 1.6 s).
//!
//! Inputs are random but fixed; every figure is the median of `--reps` runs after one warm-up.

use super::{median_time, ms, BenchArgs, Figure};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use recallseg_losses::{CrossEntropy, SegLoss};
use recallseg_models::{Backbone, DeepLab, Head, ModelConfig};
use recallseg_trainer::optim::{Adam, NamedVar, Optimizer};
use std::time::{Duration, Instant};

const BATCH: usize = 2;
const HEIGHT: usize = 192;
const WIDTH: usize = 384;
const CLASSES: usize = 16;
const LR: f64 = 1e-3;

struct Setup {
    model: DeepLab,
    opt: Adam,
    x: Tensor,
    y: Tensor,
    loss: CrossEntropy,
}

fn config(head: Head, output_stride: usize) -> ModelConfig {
    ModelConfig {
        backbone: Backbone::Resnet18,
        head,
        output_stride,
        n_classes: CLASSES,
        ..ModelConfig::default()
    }
}

fn setup(cfg: &ModelConfig) -> anyhow::Result<Setup> {
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let model = DeepLab::new(cfg, vb)?;
    let vars = model
        .trainable_vars()
        .into_iter()
        .enumerate()
        .map(|(i, var)| NamedVar {
            name: format!("p{i}"),
            var,
        })
        .collect();
    let opt = Adam::new(vars, 0.9, 0.999, 1e-8, 0.0, false)?;
    let x = Tensor::randn(0f32, 1f32, (BATCH, 3, HEIGHT, WIDTH), &device)?;
    let y = Tensor::rand(0f32, CLASSES as f32, (BATCH, HEIGHT, WIDTH), &device)?
        .floor()?
        .clamp(0f32, (CLASSES - 1) as f32)?
        .to_dtype(DType::U32)?;
    Ok(Setup {
        model,
        opt,
        x,
        y,
        loss: CrossEntropy::new(CLASSES),
    })
}

fn train_step(s: &mut Setup) -> anyhow::Result<()> {
    train_step_phases(s).map(|_| ())
}

/// Phases of one training step, in the order timed by [`train_step_phases`].
const PHASES: [&str; 4] = ["forward", "loss", "backward", "optimizer"];

/// One training step timed phase by phase: forward pass (training mode), cross-entropy,
/// backward pass, optimiser update. CPU ops are synchronous, so each interval is that phase's.
fn train_step_phases(s: &mut Setup) -> anyhow::Result<[Duration; 4]> {
    let t0 = Instant::now();
    let logits = s.model.forward_t(&s.x, true)?;
    let t1 = Instant::now();
    let loss = s.loss.forward(&logits, &s.y)?;
    let l = loss.to_scalar::<f32>()?;
    let t2 = Instant::now();
    let grads = loss.backward()?;
    let t3 = Instant::now();
    let outcome = s.opt.step(&grads, LR)?;
    let t4 = Instant::now();
    anyhow::ensure!(
        outcome == recallseg_trainer::optim::StepOutcome::Applied,
        "update rejected: {outcome:?}"
    );
    anyhow::ensure!(l.is_finite(), "non-finite loss {l}");
    Ok([t1 - t0, t2 - t1, t3 - t2, t4 - t3])
}

/// Median of each phase over `reps` steps (after one warm-up step).
fn phase_medians(s: &mut Setup, reps: usize) -> anyhow::Result<[Duration; 4]> {
    train_step_phases(s)?;
    let mut runs = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        runs.push(train_step_phases(s)?);
    }
    Ok(std::array::from_fn(|i| {
        let mut v: Vec<Duration> = runs.iter().map(|r| r[i]).collect();
        v.sort();
        v[v.len() / 2]
    }))
}

/// Runs the models benchmark.
pub(super) fn run(args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let mut figures = Vec::new();

    if args.wants("deeplabv3plus_r18_os16_train_step_ms deeplabv3plus_r18_os16_infer_ms") {
        eprintln!(
            "models: DeepLabV3+ ResNet-18 OS16, batch {BATCH}, 3x{HEIGHT}x{WIDTH}, {CLASSES} classes"
        );
        let mut s = setup(&config(Head::DeepLabV3Plus, 16))?;
        let t = median_time(args.reps, || train_step(&mut s))?;
        figures.push(Figure::new(
            "deeplabv3plus_r18_os16_train_step_ms",
            "DeepLabV3+ R18 OS16 train step (paper's dense head)",
            ms(t),
            "ms",
        ));
        let t = median_time(args.reps, || {
            let logits = s.model.forward_t(&s.x, false)?;
            anyhow::ensure!(logits.dims() == [BATCH, CLASSES, HEIGHT, WIDTH]);
            Ok(())
        })?;
        figures.push(Figure::new(
            "deeplabv3plus_r18_os16_infer_ms",
            "DeepLabV3+ R18 OS16 inference (eval forward)",
            ms(t),
            "ms",
        ));
    }
    if args.wants(
        "deeplabv3plus_r18_os16_separable_train_step_ms deeplabv3plus_r18_os16_separable_infer_ms",
    ) {
        eprintln!(
            "models: DeepLabV3+ ResNet-18 OS16, segmentation_models_pytorch layout (separable)"
        );
        let mut s = setup(&config(Head::DeepLabV3Plus, 16).smp_layout())?;
        let t = median_time(args.reps, || train_step(&mut s))?;
        figures.push(
            Figure::new(
                "deeplabv3plus_r18_os16_separable_train_step_ms",
                "DeepLabV3+ R18 OS16 train step, smp layout (separable)",
                ms(t),
                "ms",
            )
            .with_peer(570.0),
        );
        let t = median_time(args.reps, || {
            let logits = s.model.forward_t(&s.x, false)?;
            anyhow::ensure!(logits.dims() == [BATCH, CLASSES, HEIGHT, WIDTH]);
            Ok(())
        })?;
        for (phase, t) in PHASES.iter().zip(phase_medians(&mut s, args.reps)?) {
            figures.push(Figure::new(
                format!("deeplabv3plus_r18_os16_separable_{phase}_ms"),
                format!("  of which {phase}"),
                ms(t),
                "ms",
            ));
        }
        figures.push(Figure::new(
            "deeplabv3plus_r18_os16_separable_infer_ms",
            "DeepLabV3+ R18 OS16 inference, smp layout (separable)",
            ms(t),
            "ms",
        ));
    }
    if args.wants("deeplabv3_r18_os8_train_step_ms") {
        eprintln!("models: DeepLabV3 ResNet-18 OS8");
        let mut s = setup(&config(Head::DeepLabV3, 8))?;
        let t = median_time(args.reps, || train_step(&mut s))?;
        figures.push(
            Figure::new(
                "deeplabv3_r18_os8_train_step_ms",
                "DeepLabV3 R18 OS8 train step",
                ms(t),
                "ms",
            )
            .with_peer(1600.0),
        );
    }
    Ok(figures)
}
