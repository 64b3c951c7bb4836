//! Stateless functions for code that does not keep a loss object:
//! `recall_ce(&logits, &target, &LossOptions::new(19))`. Each builds the loss with the options
//! and computes it once, so the result is exactly [`SegLoss::forward`]'s; the per-class weights
//! of the step are not reported (keep a loss object for [`SegLoss::last_class_weights`]).
//!
//! * One function per loss, with the options every loss has ([`LossOptions`]: class count,
//!   ignore index, static class weights, kernel) and the loss's own required parameters
//!   (focal's γ, Tversky's α and β, OHEM's selection, the classes Lovász averages over).
//! * [`configured`]: any loss with any of its options (label smoothing, focal's α, the region
//!   losses' `smooth`, `log_loss` and `classes`, Lovász per image, …) from a [`LossConfig`] and
//!   a [`LossContext`]; a loss with state across steps (Recall with a moving average) computes
//!   its first step.
//!
//! Shapes and dtypes are [`SegLoss::forward`]'s: logits `(N, C, H, W)` (`f32`, `f64`; `f16` and
//! `bf16` computed in `f32`), target `(N, H, W)` (`u8`, `u32`, `i64`). Every error is a
//! [`crate::LossError`]: invalid parameters before anything is computed, bad shapes, dtypes and
//! labels from the forward pass.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use recallseg_losses::functional;
//! use recallseg_losses::{LossConfig, LossContext, LossOptions};
//!
//! let dev = Device::Cpu;
//! let logits = Tensor::new(&[[[[2.0f64, -1.0]], [[0.5, 1.0]]]], &dev)?; // (1, 2, 1, 2)
//! let target = Tensor::new(&[[[0u8, 1]]], &dev)?;
//! let opts = LossOptions::new(2).with_class_weights(vec![1.0, 0.1])?;
//! let ce = functional::cross_entropy(&logits, &target, &opts)?;
//! let focal = functional::focal(&logits, &target, 0.3, &opts)?;
//! let smoothed = functional::configured(
//!     &LossConfig::CrossEntropy { label_smoothing: 0.1 },
//!     &LossContext::new(2),
//!     &logits,
//!     &target,
//! )?;
//! assert!(focal.to_scalar::<f64>()? < ce.to_scalar::<f64>()?);
//! assert!(smoothed.to_scalar::<f64>()? > 0.0);
//! # Ok::<(), recallseg_losses::LossError>(())
//! ```

use crate::{
    CrossEntropy, Dice, Focal, Jaccard, LossBuilder, LossConfig, LossContext, LossOptions, Lovasz,
    LovaszClasses, Ohem, OhemSelection, PrecisionCe, RecallCe, Result, SegLoss, SoftIou, Tversky,
};
use candle_core::Tensor;

fn once<L: LossBuilder + SegLoss>(
    loss: L,
    logits: &Tensor,
    target: &Tensor,
    opts: &LossOptions,
) -> Result<Tensor> {
    loss.with_options(opts)?.forward(logits, target)
}

/// Cross entropy ([`CrossEntropy`]); with `opts`' class weights, PyTorch's weighted mean.
pub fn cross_entropy(logits: &Tensor, target: &Tensor, opts: &LossOptions) -> Result<Tensor> {
    once(CrossEntropy::new(opts.n_classes()), logits, target, opts)
}

/// Recall loss, the paper's Eq. 5 ([`RecallCe`] without moving average).
pub fn recall_ce(logits: &Tensor, target: &Tensor, opts: &LossOptions) -> Result<Tensor> {
    once(RecallCe::new(opts.n_classes()), logits, target, opts)
}

/// The precision-weighted counterexample of Eq. 9 ([`PrecisionCe`]).
pub fn precision_ce(logits: &Tensor, target: &Tensor, opts: &LossOptions) -> Result<Tensor> {
    once(PrecisionCe::new(opts.n_classes()), logits, target, opts)
}

/// Focal loss with focusing parameter `gamma` (finite, `>= 0`; [`Focal`]).
pub fn focal(logits: &Tensor, target: &Tensor, gamma: f64, opts: &LossOptions) -> Result<Tensor> {
    once(
        Focal::new(opts.n_classes()).with_gamma(gamma)?,
        logits,
        target,
        opts,
    )
}

/// Online hard example mining with the given pixel selection ([`Ohem`]).
pub fn ohem(
    logits: &Tensor,
    target: &Tensor,
    selection: OhemSelection,
    opts: &LossOptions,
) -> Result<Tensor> {
    once(
        Ohem::new(opts.n_classes()).with_selection(selection)?,
        logits,
        target,
        opts,
    )
}

/// SoftIoU ([`SoftIou`]).
pub fn soft_iou(logits: &Tensor, target: &Tensor, opts: &LossOptions) -> Result<Tensor> {
    once(SoftIou::new(opts.n_classes()), logits, target, opts)
}

/// Dice loss ([`Dice`]).
pub fn dice(logits: &Tensor, target: &Tensor, opts: &LossOptions) -> Result<Tensor> {
    once(Dice::new(opts.n_classes()), logits, target, opts)
}

/// Jaccard (soft IoU as segmentation_models_pytorch defines it) loss ([`Jaccard`]).
pub fn jaccard(logits: &Tensor, target: &Tensor, opts: &LossOptions) -> Result<Tensor> {
    once(Jaccard::new(opts.n_classes()), logits, target, opts)
}

/// Tversky loss with false-positive weight `alpha` and false-negative weight `beta`
/// ([`Tversky`]).
pub fn tversky(
    logits: &Tensor,
    target: &Tensor,
    alpha: f64,
    beta: f64,
    opts: &LossOptions,
) -> Result<Tensor> {
    once(
        Tversky::new(opts.n_classes()).with_alpha_beta(alpha, beta)?,
        logits,
        target,
        opts,
    )
}

/// Lovász-Softmax per batch, averaged over the `classes` chosen ([`Lovasz`]).
pub fn lovasz(
    logits: &Tensor,
    target: &Tensor,
    classes: LovaszClasses,
    opts: &LossOptions,
) -> Result<Tensor> {
    once(
        Lovasz::new(opts.n_classes()).with_classes(classes),
        logits,
        target,
        opts,
    )
}

/// Any loss with any of its options, from its configuration: [`LossConfig::build`] with `ctx`
/// (class count, ignore index, pixel counts for the frequency-weighted losses, static class
/// weights, kernel), then one forward pass.
pub fn configured(
    config: &LossConfig,
    ctx: &LossContext,
    logits: &Tensor,
    target: &Tensor,
) -> Result<Tensor> {
    config.build(ctx)?.forward(logits, target)
}
