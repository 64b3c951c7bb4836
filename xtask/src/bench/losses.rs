//! `cargo xtask bench losses`: forward + backward time of every loss.
//!
//! Input as in `../shared/peer/loss_bench.py`: logits 4×19×256×512 (`f32`, standard normal),
//! labels uniform over the 19 classes with 10% of the pixels (chosen at random) set to the ignore
//! index 255, generated with a fixed seed. One repetition is `forward` + `backward` + reading the
//! gradient (its sum, as the peer script does); the median of `--reps` repetitions is reported.
//! Every loss runs with its default implementation (the fused CPU kernel); `recall_ce_portable`
//! times the composed candle-ops path of the same loss for comparison, and `recall_ce_fwd` the
//! forward pass alone (evaluation).
//!
//! The loss options of issue 17 have their own rows (`focal_alpha`, `ce_smooth`,
//! `recall_ce_smooth`, `recall_ce_per_image`, `recall_ce_loss_py`, `ohem_mmseg`,
//! `dice_smooth_log`, `jaccard`, `lovasz_per_image`, `combined_recall_lovasz`): the options the
//! fused kernels cover run fused, per-image recall runs the portable path (its row says so).
//! `--only TEXT` runs the rows whose key contains TEXT.
//!
//! Peer figures (PyTorch 2.x CPU on the 2-core machine, `../shared/peer/README.md`): CE 80 ms,
//! recall CE in PyTorch ops 181 ms, smp focal 787 ms, smp Dice 263 ms, smp Tversky 262 ms,
//! smp Lovász 1366 ms.

use super::{median_time, ms, BenchArgs, Figure};
use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use recallseg_losses::LossBuilder;
use recallseg_losses::{
    BalancedCe, CombinedLoss, CrossEntropy, Dice, Focal, Jaccard, Kernel, Lovasz, Ohem,
    OhemSelection, PrecisionCe, RecallCe, RecallVariant, SegLoss, SoftIou, Tversky, WeightMode,
    WeightedCe,
};

const N: usize = 4;
const C: usize = 19;
const H: usize = 256;
const W: usize = 512;

fn inputs() -> anyhow::Result<(Var, Tensor)> {
    let dev = Device::Cpu;
    let logits = Tensor::randn(0f32, 1.0, (N, C, H, W), &dev)?;
    let mut rng = StdRng::seed_from_u64(3);
    let labels: Vec<u8> = (0..N * H * W)
        .map(|_| {
            if rng.random_bool(0.1) {
                255
            } else {
                rng.random_range(0..C as u8)
            }
        })
        .collect();
    let target = Tensor::from_vec(labels, (N, H, W), &dev)?;
    Ok((Var::from_tensor(&logits)?, target))
}

/// Pixel counts of a Cityscapes-like imbalanced split, for the weighted losses.
fn counts() -> Vec<u64> {
    (0..C as u64).map(|c| 1_000_000 / (c + 1)).collect()
}

/// One benchmarked loss: JSON key stem, table label, the loss, and the PyTorch peer time (ms).
type Case = (&'static str, &'static str, Box<dyn SegLoss>, Option<f64>);

/// The losses timed, with their figure key, label and the peer's time (ms) where measured.
fn cases() -> anyhow::Result<Vec<Case>> {
    let mut cases = cross_entropy_cases()?;
    cases.extend(other_cases()?);
    Ok(cases)
}

/// The cross-entropy family: CE and its weightings, Recall and Precision CE, focal, OHEM.
fn cross_entropy_cases() -> anyhow::Result<Vec<Case>> {
    Ok(vec![
        (
            "ce",
            "cross entropy",
            Box::new(CrossEntropy::new(C)),
            Some(80.0),
        ),
        (
            "weighted_ce",
            "weighted CE (median freq.)",
            Box::new(WeightedCe::from_counts(
                &counts(),
                WeightMode::MedianFrequency,
            )?),
            None,
        ),
        (
            "balanced_ce",
            "class-balanced CE",
            Box::new(BalancedCe::from_counts(&counts(), None)?),
            None,
        ),
        (
            "recall_ce",
            "recall CE",
            Box::new(RecallCe::new(C)),
            Some(181.0),
        ),
        (
            "recall_ce_portable",
            "recall CE (portable path)",
            Box::new(RecallCe::new(C).with_kernel(Kernel::Portable)),
            Some(181.0),
        ),
        (
            "precision_ce",
            "precision CE",
            Box::new(PrecisionCe::new(C)),
            None,
        ),
        (
            "focal",
            "focal (γ=1)",
            Box::new(Focal::new(C).with_gamma(1.0)?),
            Some(787.0),
        ),
        (
            "ohem",
            "OHEM (70%)",
            Box::new(Ohem::new(C).with_selection(OhemSelection::KeepRatio(0.7))?),
            None,
        ),
    ])
}

/// The region losses, Lovász, and the variants (per-class α, label smoothing, combined).
fn other_cases() -> anyhow::Result<Vec<Case>> {
    Ok(vec![
        ("soft_iou", "SoftIoU", Box::new(SoftIou::new(C)), None),
        ("dice", "Dice", Box::new(Dice::new(C)), Some(263.0)),
        (
            "tversky",
            "Tversky (α=β=0.5)",
            Box::new(Tversky::new(C).with_alpha_beta(0.5, 0.5)?),
            Some(262.0),
        ),
        (
            "lovasz",
            "Lovász-Softmax",
            Box::new(Lovasz::new(C)),
            Some(1366.0),
        ),
        (
            "focal_alpha",
            "focal (γ=1, per-class α)",
            Box::new(
                Focal::new(C)
                    .with_gamma(1.0)?
                    .with_alpha((0..C).map(|c| 0.25 + c as f64 * 0.03).collect())?,
            ),
            None,
        ),
        (
            "ce_smooth",
            "CE, label smoothing 0.1",
            Box::new(CrossEntropy::new(C).with_label_smoothing(0.1)?),
            None,
        ),
        (
            "recall_ce_smooth",
            "recall CE, label smoothing 0.1",
            Box::new(RecallCe::new(C).with_label_smoothing(0.1)?),
            None,
        ),
        (
            "recall_ce_per_image",
            "recall CE per image (portable)",
            Box::new(RecallCe::new(C).with_variant(RecallVariant::PerImage)),
            None,
        ),
        (
            "recall_ce_loss_py",
            "recall CE, paper loss.py form",
            Box::new(RecallCe::new(C).with_variant(RecallVariant::PaperLossPy)),
            None,
        ),
        (
            "ohem_mmseg",
            "OHEM mmseg (τ=0.7, min_kept=100000)",
            Box::new(Ohem::new(C).with_selection(OhemSelection::Mmseg {
                threshold: Some(0.7),
                min_kept: 100_000,
                avg_non_ignore: false,
            })?),
            None,
        ),
        (
            "dice_smooth_log",
            "Dice (smooth 1, log loss)",
            Box::new(Dice::new(C).with_smooth(1.0)?.with_log_loss(true)),
            None,
        ),
        (
            "jaccard",
            "Jaccard (smp, per batch)",
            Box::new(Jaccard::new(C)),
            None,
        ),
        (
            "lovasz_per_image",
            "Lovász-Softmax per image",
            Box::new(Lovasz::new(C).with_per_image(true)),
            None,
        ),
        (
            "combined_recall_lovasz",
            "0.5 recall CE + 0.5 Lovász",
            Box::new(
                CombinedLoss::new()
                    .with_term(0.5, Box::new(RecallCe::new(C)))?
                    .with_term(0.5, Box::new(Lovasz::new(C)))?,
            ),
            None,
        ),
    ])
}

/// Runs the losses benchmark.
pub(super) fn run(args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let (x, t) = inputs()?;
    let mut cases = cases()?;
    let mut figures = Vec::new();
    for (key, label, loss, peer) in cases.iter_mut() {
        if !args.wants(key) {
            continue;
        }
        eprintln!("losses: {label}");
        let d = median_time(args.reps, || {
            let l = loss.forward(x.as_tensor(), &t)?;
            let grads = l.backward()?;
            let g = grads
                .get(x.as_tensor())
                .ok_or_else(|| anyhow::anyhow!("no gradient for the logits"))?;
            let s = g.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            anyhow::ensure!(s.is_finite(), "non-finite gradient");
            Ok(())
        })?;
        let mut f = Figure::new(
            format!("{key}_fwd_bwd_ms"),
            format!("{label} fwd+bwd"),
            ms(d),
            "ms",
        );
        if let Some(p) = peer {
            f = f.with_peer(*p);
        }
        figures.push(f);
    }
    if !args.wants("recall_ce_fwd") {
        return Ok(figures);
    }
    let mut recall = RecallCe::new(C);
    let d = median_time(args.reps, || {
        let v = recall
            .forward(&x.as_tensor().detach(), &t)?
            .to_scalar::<f32>()?;
        anyhow::ensure!(v.is_finite(), "non-finite loss");
        Ok(())
    })?;
    figures.push(Figure::new(
        "recall_ce_fwd_ms",
        "recall CE fwd only",
        ms(d),
        "ms",
    ));
    Ok(figures)
}
