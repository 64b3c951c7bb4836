//! Recall loss and the segmentation loss baselines, differentiable in candle.
//!
//! Every loss maps logits `(N, C, H, W)` and an integer target `(N, H, W)` to a scalar
//! [`Tensor`] that backpropagates with candle's autograd on any device. Pixels whose label is
//! the ignore index (default 255) contribute no loss, no gradient and no statistics.
//!
//! * Cross-entropy family (per-pixel losses): [`CrossEntropy`], [`WeightedCe`], [`BalancedCe`],
//!   [`RecallCe`] (the paper's Eq. 5), [`PrecisionCe`] (Eq. 9, a documented counterexample),
//!   [`Focal`], [`Ohem`].
//! * Region losses: [`SoftIou`], [`Lovasz`], [`Dice`], [`Tversky`], [`Jaccard`].
//! * A weighted sum of any of them: [`CombinedLoss`] (`name = "combined"`).
//!
//! Each loss has two implementations: a *portable* one built from candle ops (CPU, CUDA,
//! Metal; autograd does the backward pass) and a *fused* CPU kernel (a candle custom op with
//! its own backward pass, parallel over pixels with rayon). The fused kernel is chosen
//! automatically when the logits live on the CPU and are contiguous; [`Kernel::Portable`]
//! forces the portable path. Tests check that both agree in value and gradient.
//!
//! Losses are built by name with [`LossConfig`] (serde, tagged by `name`) and a
//! [`LossContext`] (number of classes, ignore index, dataset statistics, and the [`Kernel`]
//! every built loss uses: [`LossContext::with_kernel`]), or directly
//! (`RecallCe::new(19)`); every loss has the options of [`LossOptions`] (ignore index, static
//! class weights, [`Kernel`]) through the [`LossBuilder`] methods (`with_ignore_index`,
//! `with_class_weights`, `with_kernel`). The losses without state across steps are also plain
//! functions in [`functional`] (`functional::recall_ce(&logits, &target, &opts)`). The formulas,
//! their normalisation and gradients are in `docs/losses.md`. `use recallseg_losses::prelude::*`
//! brings the traits whose methods every loss has ([`SegLoss`], [`LossBuilder`]) into scope.
//! `examples/gradient.rs` takes a loss's gradient with respect to the logits.
//!
//! Start from [`LossConfig`] + [`LossContext`] (losses by name, as in a training config) or from
//! a loss type (`RecallCe`, `CrossEntropy`, …) with the [`prelude`]; [`functional`] for one-off
//! values.
//!
//! Conventions (details in `docs/losses.md`, "The API's rules"):
//!
//! * `new(n_classes)` never fails and gives the documented defaults; a `with_*` method returns
//!   `Result<Self, LossError>` exactly when its argument can be invalid (numbers, per-class
//!   vectors), `Self` otherwise (an index, a kernel, a `bool` or an enum).
//! * One error type, [`LossError`], from building to [`SegLoss::forward`]; `?` converts candle's
//!   error into it and it into candle's, and its `Display` never carries a backtrace.
//! * Parameters (class weights, focal's `α` and `γ`) keep the `f64` precision given: exact for
//!   `f64` logits, rounded to `f32` for the others.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use recallseg_losses::{LossConfig, LossContext};
//!
//! let dev = Device::Cpu;
//! let logits = Tensor::zeros((1, 3, 2, 2), candle_core::DType::F32, &dev)?;
//! let target = Tensor::new(&[[[0u8, 1], [2, 255]]], &dev)?;
//! let mut loss = LossConfig::from_name("recall")?.build(&LossContext::new(3))?;
//! let value = loss.forward(&logits, &target)?.to_scalar::<f32>()?;
//! // Uniform logits: every pixel has CE = ln 3; the argmax (class 0) is right for one pixel.
//! assert!(value > 0.0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod blocks;
pub mod class_weights;
mod combined;
mod config;
mod error;
mod fast_math;
pub mod functional;
mod fused_ce;
mod fused_lovasz;
mod fused_region;
mod input;
mod jaccard;
mod options;
pub mod prelude;

mod balanced_ce;
mod ce_family;
mod ce_mode;
mod cross_entropy;
mod dice;
mod focal;
mod lovasz;
mod ohem;
mod ohem_selection;
mod precision_ce;
mod recall_ce;
mod region;
mod region_loss;
mod sharding;
mod soft_iou;
mod tversky;
mod weighted_ce;

pub use balanced_ce::BalancedCe;
pub use combined::CombinedLoss;
pub use config::{CombinedTerm, LossConfig, LossName, WeightMode, LOSS_NAMES};
pub use cross_entropy::CrossEntropy;
pub use dice::Dice;
pub use error::{CandleError, LossError, Result};
pub use focal::Focal;
pub use jaccard::Jaccard;
pub use lovasz::{Lovasz, LovaszClasses};
pub use ohem::Ohem;
pub use ohem_selection::OhemSelection;
pub use options::{LossBuilder, LossOptions};
pub use precision_ce::PrecisionCe;
pub use recall_ce::{RecallCe, RecallVariant};
pub use sharding::{ShardStatistics, Sharding};
pub use soft_iou::SoftIou;
pub use tversky::Tversky;
pub use weighted_ce::WeightedCe;

use candle_core::Tensor;

/// The default ignore index (void pixels), as in Cityscapes and Synthia train ids.
pub const DEFAULT_IGNORE_INDEX: u32 = 255;

/// A segmentation loss: logits and labels in, scalar out, state kept across steps.
pub trait SegLoss: Send {
    /// Computes the loss of one batch.
    ///
    /// * `logits`: `(N, C, H, W)`, `f32` (also `f64`; `f16`/`bf16` are computed in `f32`).
    /// * `target`: `(N, H, W)`, `u8`, `u32` or `i64` class indices, or the ignore index.
    ///
    /// Returns a scalar tensor (dtype `f32`, or `f64` for `f64` logits) that backpropagates to
    /// `logits`. Labels outside `0..C` that are not the ignore index are an error naming the
    /// label (`i64` labels are checked as `i64`: `2^32` is not class 0), as are logits that are
    /// not `(N, C, H, W)` with `C` the loss's class count (a loss built for 0 classes errs on
    /// every call), a target that is not `(N, H, W)`, and unsupported dtypes.
    ///
    /// Edge cases behave the same on every implementation and dtype: a batch without valid
    /// pixels (no pixel at all, or every one ignored) gives 0 with a gradient that exists and
    /// is zero; ignored pixels' logits are never read, so a NaN or an infinity there changes
    /// neither the value nor the gradient (zero on those pixels); a NaN on a valid pixel
    /// propagates to the loss. Valid pixels whose static class weights are all 0 give the
    /// loss's value without them (0 for all but SoftIoU, which counts every class and gives
    /// 1), again with a zero gradient that exists.
    fn forward(&mut self, logits: &Tensor, target: &Tensor) -> Result<Tensor>;

    /// [`SegLoss::forward`] with the per-class weights the step applied
    /// ([`SegLoss::last_class_weights`] right after it), so a caller never reads weights left
    /// by an earlier call.
    fn forward_output(&mut self, logits: &Tensor, target: &Tensor) -> Result<LossOutput> {
        let loss = self.forward(logits, target)?;
        Ok(LossOutput {
            loss,
            class_weights: self.last_class_weights(),
            terms: self.last_terms(),
        })
    }

    /// Which implementation the last [`SegLoss::forward`] ran: [`Kernel::Fused`] or
    /// [`Kernel::Portable`] (never [`Kernel::Auto`]); `None` before the first call, after a batch
    /// without valid pixels, and for losses made of several terms (each term reports its own,
    /// see [`CombinedLoss::term_kernels`]). Under [`Kernel::Auto`] an option the fused kernel
    /// does not cover (recall's `variant = "per_image"`) makes the loss run the portable path,
    /// and this says so.
    fn last_kernel(&self) -> Option<Kernel> {
        None
    }

    /// The unweighted value of each term of the last step for a loss made of several terms
    /// ([`CombinedLoss`]); `None` for a single loss.
    fn last_terms(&self) -> Option<Vec<LossTerm>> {
        None
    }

    /// The loss's name, as in [`LossConfig`] (`"recall_ce"`).
    fn name(&self) -> &str;

    /// The per-class weights applied on the last call of [`SegLoss::forward`] (for the paper's
    /// Fig. 4 analysis), one per class, or `None` where the notion is meaningless (region losses,
    /// unweighted cross entropy) or before the first step.
    ///
    /// Classes absent from the last batch are reported as `NaN` by the losses whose weights are
    /// batch statistics ([`RecallCe`]: `1 - recall`, [`PrecisionCe`]: `FP/(TP+FP)`, [`Focal`]:
    /// mean `(1-p)^γ`, [`Ohem`]: fraction of the class's pixels kept); these report the dynamic
    /// weight only (static class weights multiply on top). Static weights ([`WeightedCe`],
    /// [`BalancedCe`], [`CrossEntropy`] and the region losses built with `class_weights`) are
    /// reported for every class; unweighted [`CrossEntropy`] and region losses report `None`.
    fn last_class_weights(&self) -> Option<Vec<f32>>;

    /// How the loss behaves when a batch is split into shards (data-parallel ranks, gradient
    /// accumulation): [`Sharding::Exact`] losses reproduce the whole batch's loss from additive
    /// statistics ([`SegLoss::shard_statistics`], [`SegLoss::prepare_step`],
    /// [`SegLoss::forward_shard`]); [`Sharding::PerShard`] losses (the default) compute each
    /// shard's loss on its own. `docs/losses.md` lists which is which.
    fn sharding(&self) -> Sharding {
        Sharding::PerShard
    }

    /// This shard's additive statistics (an [`Sharding::Exact`] loss): what the step's
    /// batch-level quantities are computed from once they are summed over every shard. Reads
    /// the logits only when `needs_logits` of [`Sharding::Exact`] says so (otherwise they may be any
    /// tensor of the right shape). An error for a [`Sharding::PerShard`] loss.
    fn shard_statistics(&self, logits: &Tensor, target: &Tensor) -> Result<ShardStatistics> {
        let _ = (logits, target);
        Err(options::per_shard_error(self.name()))
    }

    /// Fixes the step's batch-level quantities (class weights, normaliser, the moving average,
    /// which moves once per step) from the statistics summed over every shard of the batch.
    fn prepare_step(&mut self, batch: &ShardStatistics) -> Result<()> {
        let _ = batch;
        Err(options::per_shard_error(self.name()))
    }

    /// This shard's share of the loss of the whole batch, with the quantities of the last
    /// [`SegLoss::prepare_step`]: summed over the shards, the values and the gradients are those
    /// of [`SegLoss::forward_output`] on the concatenated batch.
    fn forward_shard(&mut self, logits: &Tensor, target: &Tensor) -> Result<LossOutput> {
        let _ = (logits, target);
        Err(options::per_shard_error(self.name()))
    }

    /// The state the loss carries across steps, for checkpoints: [`RecallCe`] with a moving
    /// average returns its per-class smoothed recall (`NaN` for classes not seen yet, once it has
    /// seen a batch); every other loss returns `None`.
    fn state(&self) -> Option<Vec<f32>> {
        None
    }

    /// Restores what [`SegLoss::state`] returned, so that a resumed run continues exactly.
    /// Stateless losses accept only an empty state; a state of the wrong length is an error.
    fn load_state(&mut self, state: &[f32]) -> Result<(), LossError> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(LossError::InvalidParameter {
                loss: "state",
                field: "state",
                value: format!("{} values", state.len()),
                reason: "this loss keeps no state across steps".into(),
            })
        }
    }
}

/// What one step of a loss produced: the scalar that backpropagates and the per-class weights it
/// applied (see [`SegLoss::last_class_weights`] for what they are per loss).
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// The loss value (a scalar tensor).
    pub loss: Tensor,
    /// Per-class weights of this step, `NaN` for classes absent from the batch, `None` where
    /// the loss has none.
    pub class_weights: Option<Vec<f32>>,
    /// The terms of a combined loss ([`CombinedLoss`]) with their values this step; `None` for
    /// a single loss.
    pub terms: Option<Vec<LossTerm>>,
}

/// One term of a [`CombinedLoss`] step: its name, its weight and its unweighted value.
#[derive(Debug, Clone, PartialEq)]
pub struct LossTerm {
    /// The term's key: the loss's name (`"recall_ce"`), with `_2`, `_3`, … appended when the
    /// same loss appears more than once.
    pub name: String,
    /// The term's weight in the sum.
    pub weight: f64,
    /// The term's value this step, before weighting.
    pub value: f64,
}

/// Which implementation a loss runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernel {
    /// The fused CPU kernel when the logits are on the CPU and contiguous (`f32`, or `f16`/`bf16`
    /// converted to `f32`), the portable candle-ops path otherwise.
    #[default]
    Auto,
    /// Always the composed candle-ops path (every device, candle autograd).
    Portable,
    /// Always the fused CPU kernel; a forward call whose logits are not on the CPU, not
    /// contiguous or not `f32`/`f16`/`bf16` is an error (for tests and benchmarks).
    Fused,
}

/// What a loss needs to know about the task when it is built.
#[derive(Debug, Clone, PartialEq)]
pub struct LossContext {
    /// Number of classes `C` (the logits' channel count).
    pub n_classes: usize,
    /// Label of void pixels, which contribute nothing (default 255).
    pub ignore_index: u32,
    /// Pixel count of each class over the training split (needed by [`WeightedCe`] and
    /// [`BalancedCe`]).
    pub class_pixel_counts: Option<Vec<u64>>,
    /// Optional static per-class weights, applied by every loss on top of its own weighting
    /// (kept in `f64`: exact for `f64` logits, rounded to `f32` for the others).
    pub class_weights: Option<Vec<f64>>,
    /// Which implementation every built loss uses ([`Kernel::Auto`] by default), as
    /// [`LossBuilder::with_kernel`] sets it on a loss built directly.
    pub kernel: Kernel,
}

impl LossContext {
    /// A context for `n_classes` classes, ignore index 255, no statistics, no weights.
    pub fn new(n_classes: usize) -> Self {
        Self {
            n_classes,
            ignore_index: DEFAULT_IGNORE_INDEX,
            class_pixel_counts: None,
            class_weights: None,
            kernel: Kernel::Auto,
        }
    }

    /// Sets the implementation every loss built with this context uses (the terms of a
    /// combined loss included).
    pub fn with_kernel(mut self, kernel: Kernel) -> Self {
        self.kernel = kernel;
        self
    }

    /// Sets the ignore index.
    pub fn with_ignore_index(mut self, ignore_index: u32) -> Self {
        self.ignore_index = ignore_index;
        self
    }

    /// Sets the per-class pixel counts of the training split.
    pub fn with_class_pixel_counts(mut self, counts: Vec<u64>) -> Self {
        self.class_pixel_counts = Some(counts);
        self
    }

    /// Sets static per-class weights.
    pub fn with_class_weights(mut self, weights: Vec<f64>) -> Self {
        self.class_weights = Some(weights);
        self
    }

    /// Checks the context: at least one class, per-class vectors of length `n_classes`, weights
    /// finite and non-negative.
    pub fn validate(&self) -> Result<(), LossError> {
        if self.n_classes == 0 {
            return Err(LossError::NoClasses);
        }
        if let Some(c) = &self.class_pixel_counts {
            if c.len() != self.n_classes {
                return Err(LossError::ClassCountMismatch {
                    what: "class_pixel_counts",
                    expected: self.n_classes,
                    got: c.len(),
                });
            }
        }
        if let Some(w) = &self.class_weights {
            check_weights(w, self.n_classes)?;
        }
        Ok(())
    }
}

/// Checks a static weight vector: length `n_classes`, finite, non-negative.
pub(crate) fn check_weights(w: &[f64], n_classes: usize) -> Result<(), LossError> {
    if w.len() != n_classes {
        return Err(LossError::ClassCountMismatch {
            what: "class_weights",
            expected: n_classes,
            got: w.len(),
        });
    }
    for (index, &value) in w.iter().enumerate() {
        if !value.is_finite() || value < 0.0 {
            return Err(LossError::InvalidClassWeight { index, value });
        }
    }
    Ok(())
}
