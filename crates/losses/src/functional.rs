//! Stateless functions, one per loss with no state across steps, for code that does not keep a
//! loss object: `recall_ce(&logits, &target, &LossOptions::new(19))`. Each builds the loss with
//! the options and computes it once, so the result is exactly [`SegLoss::forward`]'s; the
//! per-class weights of the step are not reported (keep a loss object for
//! [`SegLoss::last_class_weights`]).

use crate::{
    CrossEntropy, Dice, Focal, LossBuilder, LossOptions, Lovasz, Ohem, OhemSelection, PrecisionCe,
    RecallCe, SegLoss, SoftIou, Tversky,
};
use candle_core::{Result, Tensor};

fn once<L: LossBuilder + SegLoss>(
    loss: std::result::Result<L, crate::LossError>,
    logits: &Tensor,
    target: &Tensor,
    opts: &LossOptions,
) -> Result<Tensor> {
    loss.and_then(|l| l.with_options(opts))
        .map_err(candle_core::Error::wrap)?
        .forward(logits, target)
}

/// Cross entropy ([`CrossEntropy`]).
pub fn cross_entropy(logits: &Tensor, target: &Tensor, opts: &LossOptions) -> Result<Tensor> {
    once(
        Ok(CrossEntropy::new(opts.n_classes())),
        logits,
        target,
        opts,
    )
}

/// Recall loss, the paper's Eq. 5 ([`RecallCe`] without moving average).
pub fn recall_ce(logits: &Tensor, target: &Tensor, opts: &LossOptions) -> Result<Tensor> {
    once(Ok(RecallCe::new(opts.n_classes())), logits, target, opts)
}

/// The precision-weighted counterexample of Eq. 9 ([`PrecisionCe`]).
pub fn precision_ce(logits: &Tensor, target: &Tensor, opts: &LossOptions) -> Result<Tensor> {
    once(Ok(PrecisionCe::new(opts.n_classes())), logits, target, opts)
}

/// Focal loss with focusing parameter `gamma` ([`Focal`]).
pub fn focal(logits: &Tensor, target: &Tensor, gamma: f64, opts: &LossOptions) -> Result<Tensor> {
    once(Focal::new(opts.n_classes(), gamma), logits, target, opts)
}

/// Online hard example mining ([`Ohem`]).
pub fn ohem(
    logits: &Tensor,
    target: &Tensor,
    selection: OhemSelection,
    opts: &LossOptions,
) -> Result<Tensor> {
    once(Ohem::new(opts.n_classes(), selection), logits, target, opts)
}

/// SoftIoU ([`SoftIou`]).
pub fn soft_iou(logits: &Tensor, target: &Tensor, opts: &LossOptions) -> Result<Tensor> {
    once(Ok(SoftIou::new(opts.n_classes())), logits, target, opts)
}

/// Dice loss ([`Dice`]).
pub fn dice(logits: &Tensor, target: &Tensor, opts: &LossOptions) -> Result<Tensor> {
    once(Ok(Dice::new(opts.n_classes())), logits, target, opts)
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
        Tversky::new(opts.n_classes(), alpha, beta),
        logits,
        target,
        opts,
    )
}

/// Lovász-Softmax over the present classes (`present_only`) or all ([`Lovasz`]).
pub fn lovasz(
    logits: &Tensor,
    target: &Tensor,
    present_only: bool,
    opts: &LossOptions,
) -> Result<Tensor> {
    once(
        Ok(Lovasz::new(opts.n_classes(), present_only)),
        logits,
        target,
        opts,
    )
}
