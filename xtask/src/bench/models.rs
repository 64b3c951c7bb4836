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
//!
//! `--device cuda` runs the same steps on a CUDA device (each timed phase ends with
//! `Device::synchronize`, so that queued kernels count where they run); `--batch`, `--height`,
//! `--width` and `--classes` change the shape (the paper's protocol: `--batch 6 --height 384
//! --width 768 --classes 19`, as `scripts/gpu-check.sh` runs it). The PyTorch figures of the
//! table are the 2-core CPU peer's at the default shape, so they are shown only for that run.

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

/// What one run of the benchmark measures on: the device and the input shape.
#[derive(Debug, Clone)]
struct Shape {
    device: Device,
    batch: usize,
    height: usize,
    width: usize,
    classes: usize,
}

impl Shape {
    fn of(args: &BenchArgs) -> anyhow::Result<Self> {
        let spec = recallseg_trainer::config::DeviceSpec::parse(&args.device)
            .map_err(|e| anyhow::anyhow!("--device {e}"))?;
        let s = Self {
            device: spec.open()?,
            batch: args.batch.unwrap_or(BATCH),
            height: args.height.unwrap_or(HEIGHT),
            width: args.width.unwrap_or(WIDTH),
            classes: args.classes.unwrap_or(CLASSES),
        };
        anyhow::ensure!(
            s.batch > 0 && s.height > 0 && s.width > 0 && s.classes > 0,
            "--batch, --height, --width and --classes must be at least 1"
        );
        Ok(s)
    }

    /// Whether this is the default CPU run the stored peer figures belong to.
    fn is_default(&self) -> bool {
        self.device.is_cpu()
            && (self.batch, self.height, self.width, self.classes)
                == (BATCH, HEIGHT, WIDTH, CLASSES)
    }
}

struct Setup {
    device: Device,
    model: DeepLab,
    opt: Adam,
    x: Tensor,
    y: Tensor,
    loss: CrossEntropy,
}

fn config(head: Head, output_stride: usize, classes: usize) -> ModelConfig {
    ModelConfig {
        backbone: Backbone::Resnet18,
        head,
        output_stride,
        n_classes: classes,
        ..ModelConfig::default()
    }
}

fn setup(cfg: &ModelConfig, shape: &Shape) -> anyhow::Result<Setup> {
    let device = shape.device.clone();
    let (batch, height, width, classes) = (shape.batch, shape.height, shape.width, shape.classes);
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
    let x = Tensor::randn(0f32, 1f32, (batch, 3, height, width), &device)?;
    let y = Tensor::rand(0f32, classes as f32, (batch, height, width), &device)?
        .floor()?
        .clamp(0f32, (classes - 1) as f32)?
        .to_dtype(DType::U32)?;
    Ok(Setup {
        device,
        model,
        opt,
        x,
        y,
        loss: CrossEntropy::new(classes),
    })
}

fn train_step(s: &mut Setup) -> anyhow::Result<()> {
    train_step_phases(s).map(|_| ())
}

/// Phases of one training step, in the order timed by [`train_step_phases`].
const PHASES: [&str; 4] = ["forward", "loss", "backward", "optimizer"];

/// One training step timed phase by phase: forward pass (training mode), cross-entropy,
/// backward pass, optimiser update. CPU ops are synchronous; on a GPU each phase ends by waiting
/// for the device, so each interval is that phase's.
fn train_step_phases(s: &mut Setup) -> anyhow::Result<[Duration; 4]> {
    let t0 = Instant::now();
    let logits = s.model.forward_t(&s.x, true)?;
    s.device.synchronize()?;
    let t1 = Instant::now();
    let loss = s.loss.forward(&logits, &s.y)?;
    let l = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    let t2 = Instant::now();
    let grads = loss.backward()?;
    s.device.synchronize()?;
    let t3 = Instant::now();
    let outcome = s.opt.step(&grads, LR)?;
    s.device.synchronize()?;
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
    let shape = Shape::of(args)?;
    let (batch, height, width, classes) = (shape.batch, shape.height, shape.width, shape.classes);
    let peer = |f: Figure, ms: f64| {
        if shape.is_default() {
            f.with_peer(ms)
        } else {
            f
        }
    };
    let infer = |s: &Setup| -> anyhow::Result<()> {
        let logits = s.model.forward_t(&s.x, false)?;
        s.device.synchronize()?;
        anyhow::ensure!(logits.dims() == [batch, classes, height, width]);
        Ok(())
    };
    let mut figures = Vec::new();

    if args.wants("deeplabv3plus_r18_os16_train_step_ms deeplabv3plus_r18_os16_infer_ms") {
        eprintln!(
            "models: DeepLabV3+ ResNet-18 OS16, batch {batch}, 3x{height}x{width}, {classes} classes, \
             on {:?}",
            shape.device.location()
        );
        let mut s = setup(&config(Head::DeepLabV3Plus, 16, classes), &shape)?;
        let t = median_time(args.reps, || train_step(&mut s))?;
        figures.push(Figure::new(
            "deeplabv3plus_r18_os16_train_step_ms",
            "DeepLabV3+ R18 OS16 train step (paper's dense head)",
            ms(t),
            "ms",
        ));
        let t = median_time(args.reps, || infer(&s))?;
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
        let mut s = setup(
            &config(Head::DeepLabV3Plus, 16, classes).smp_layout(),
            &shape,
        )?;
        let t = median_time(args.reps, || train_step(&mut s))?;
        figures.push(peer(
            Figure::new(
                "deeplabv3plus_r18_os16_separable_train_step_ms",
                "DeepLabV3+ R18 OS16 train step, smp layout (separable)",
                ms(t),
                "ms",
            ),
            570.0,
        ));
        let t = median_time(args.reps, || infer(&s))?;
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
        let mut s = setup(&config(Head::DeepLabV3, 8, classes), &shape)?;
        let t = median_time(args.reps, || train_step(&mut s))?;
        figures.push(peer(
            Figure::new(
                "deeplabv3_r18_os8_train_step_ms",
                "DeepLabV3 R18 OS8 train step",
                ms(t),
                "ms",
            ),
            1600.0,
        ));
    }
    Ok(figures)
}
