//! [`LossOptions`]: what every loss has — its class count, the ignore index, static class
//! weights and the implementation it runs — validated once where it is set; [`LossBuilder`]:
//! the builder methods every loss gets from it.

use crate::{Kernel, LossError, SegLoss, ShardStatistics, Sharding};
use candle_core::{Result, Tensor};

/// The options every loss has.
#[derive(Debug, Clone, PartialEq)]
pub struct LossOptions {
    n_classes: usize,
    ignore_index: u32,
    class_weights: Option<Vec<f64>>,
    kernel: Kernel,
}

impl LossOptions {
    /// Options for `n_classes` classes: ignore index 255, no class weights, [`Kernel::Auto`].
    pub fn new(n_classes: usize) -> Self {
        Self {
            n_classes,
            ignore_index: crate::DEFAULT_IGNORE_INDEX,
            class_weights: None,
            kernel: Kernel::Auto,
        }
    }

    /// Sets the ignore index: pixels with this label contribute nothing.
    pub fn with_ignore_index(mut self, ignore_index: u32) -> Self {
        self.ignore_index = ignore_index;
        self
    }

    /// Multiplies static per-class weights `s_c` (one per class, finite, `>= 0`) onto the ones
    /// already set (WeightedCE's and BalancedCE's frequency weights, or none). Kept in `f64`:
    /// an `f64` loss uses them as given, an `f32` one rounded to `f32` (see
    /// [`LossOptions::static_weights`]).
    pub fn with_class_weights(mut self, weights: Vec<f64>) -> std::result::Result<Self, LossError> {
        self.multiply_class_weights(weights)?;
        Ok(self)
    }

    /// Chooses the implementation (default [`Kernel::Auto`]).
    pub fn with_kernel(mut self, kernel: Kernel) -> Self {
        self.kernel = kernel;
        self
    }

    /// The number of classes.
    pub fn n_classes(&self) -> usize {
        self.n_classes
    }

    /// The ignore index.
    pub fn ignore_index(&self) -> u32 {
        self.ignore_index
    }

    /// The static per-class weights, if any, as given.
    pub fn class_weights(&self) -> Option<&[f64]> {
        self.class_weights.as_deref()
    }

    /// The implementation choice.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Checks `weights` (one per class, finite, `>= 0`) and multiplies them onto the class
    /// weights.
    fn multiply_class_weights(&mut self, weights: Vec<f64>) -> std::result::Result<(), LossError> {
        crate::check_weights(&weights, self.n_classes)?;
        self.class_weights = Some(match self.class_weights.take() {
            Some(e) => e.iter().zip(&weights).map(|(a, b)| a * b).collect(),
            None => weights,
        });
        Ok(())
    }

    /// The static weights a loss computing in `dtype` applies, ones when none were given: as
    /// given for `f64` logits, rounded to `f32` for the others (which compute in `f32`), so a
    /// parameter has the precision of the arithmetic it enters.
    pub fn static_weights(&self, dtype: candle_core::DType) -> Vec<f64> {
        match &self.class_weights {
            Some(w) => w.iter().map(|&v| at_precision(v, dtype)).collect(),
            None => vec![1.0; self.n_classes],
        }
    }

    /// The static weights as `f32` (what [`crate::SegLoss::last_class_weights`] reports).
    pub(crate) fn class_weights_f32(&self) -> Option<Vec<f32>> {
        self.class_weights
            .as_ref()
            .map(|w| w.iter().map(|&v| v as f32).collect())
    }
}

/// A parameter `v` at the precision of arithmetic in `dtype`: unchanged for `f64`, rounded to
/// `f32` otherwise (`f16`/`bf16` logits are computed in `f32`).
pub(crate) fn at_precision(v: f64, dtype: candle_core::DType) -> f64 {
    if dtype == candle_core::DType::F64 {
        v
    } else {
        v as f32 as f64
    }
}

/// The builder methods every loss of the crate has, from its [`LossOptions`].
pub trait LossBuilder: Sized {
    /// The loss's options.
    fn options(&self) -> &LossOptions;

    /// The loss's options, to change them (the `with_*` methods use this).
    fn options_mut(&mut self) -> &mut LossOptions;

    /// Sets the ignore index (default 255): pixels with this label contribute nothing.
    fn with_ignore_index(mut self, ignore_index: u32) -> Self {
        self.options_mut().ignore_index = ignore_index;
        self
    }

    /// Applies static per-class weights `s_c` (one per class, finite, `>= 0`), multiplied onto
    /// any the loss already has (WeightedCE's, BalancedCE's). The cross-entropy family becomes a
    /// weighted mean normalised by `Σ_{valid n} s_{y_n}`; the region losses and Lovász weight
    /// their per-class terms, `Σ_c s_c L_c / Σ_c s_c`.
    ///
    /// The weights keep the precision given: an `f64` loss applies them exactly, an `f32` one
    /// rounded to `f32`.
    fn with_class_weights(mut self, weights: Vec<f64>) -> std::result::Result<Self, LossError> {
        self.options_mut().multiply_class_weights(weights)?;
        Ok(self)
    }

    /// Chooses the implementation (default [`Kernel::Auto`]).
    fn with_kernel(mut self, kernel: Kernel) -> Self {
        self.options_mut().kernel = kernel;
        self
    }

    /// Applies `options`' ignore index, implementation and class weights (multiplied onto the
    /// loss's own); its class count must be the loss's.
    fn with_options(mut self, options: &LossOptions) -> std::result::Result<Self, LossError> {
        let own = self.options_mut();
        if options.n_classes != own.n_classes {
            return Err(LossError::ClassCountMismatch {
                what: "options",
                expected: own.n_classes,
                got: options.n_classes,
            });
        }
        own.ignore_index = options.ignore_index;
        own.kernel = options.kernel;
        if let Some(w) = &options.class_weights {
            own.multiply_class_weights(w.clone())?;
        }
        Ok(self)
    }

    /// The number of classes the loss was built for.
    fn n_classes(&self) -> usize {
        self.options().n_classes
    }

    /// The static per-class weights, if any, as given.
    fn class_weights(&self) -> Option<&[f64]> {
        self.options().class_weights()
    }
}

/// The computation behind a loss type: one engine per family (cross entropy, region, Lovász),
/// shared by the types of that family.
pub(crate) trait Engine: Send {
    fn options(&self) -> &LossOptions;
    fn options_mut(&mut self) -> &mut LossOptions;
    fn name(&self) -> &'static str;
    fn forward(&mut self, logits: &Tensor, target: &Tensor) -> Result<Tensor>;
    fn last_class_weights(&self) -> Option<Vec<f32>>;
    fn last_kernel(&self) -> Option<crate::Kernel>;
    fn state(&self) -> Option<Vec<f32>> {
        None
    }
    fn load_state(&mut self, state: &[f32]) -> std::result::Result<(), LossError> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(LossError::InvalidParameter {
                loss: self.name(),
                field: "state",
                value: format!("{} values", state.len()),
                reason: "this loss keeps no state across steps".into(),
            })
        }
    }
    /// See [`SegLoss::sharding`]; per shard unless the engine says otherwise.
    fn sharding(&self) -> Sharding {
        Sharding::PerShard
    }
    /// See [`SegLoss::shard_statistics`].
    fn shard_statistics(&self, logits: &Tensor, target: &Tensor) -> Result<ShardStatistics> {
        let _ = (logits, target);
        Err(per_shard_error(self.name()).into_candle())
    }
    /// See [`SegLoss::prepare_step`].
    fn prepare_step(&mut self, batch: &ShardStatistics) -> Result<()> {
        let _ = batch;
        Err(per_shard_error(self.name()).into_candle())
    }
    /// See [`SegLoss::forward_shard`]: the share's scalar.
    fn forward_shard(&mut self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        let _ = (logits, target);
        Err(per_shard_error(self.name()).into_candle())
    }
}

/// The error of the sharding calls on a [`Sharding::PerShard`] loss.
pub(crate) fn per_shard_error(name: &str) -> LossError {
    LossError::NoShardStatistics {
        loss: name.to_string(),
    }
}

/// `impl EngineLoss for $loss` through its `engine` field, of type `$engine`.
macro_rules! engine_loss {
    ($loss:ty, $engine:ty) => {
        impl $crate::options::EngineLoss for $loss {
            type Engine = $engine;

            fn engine(&self) -> &$engine {
                &self.engine
            }

            fn engine_mut(&mut self) -> &mut $engine {
                &mut self.engine
            }
        }
    };
}
pub(crate) use engine_loss;

/// A loss type that is its engine plus its own constructors: it gets [`SegLoss`] and
/// [`LossBuilder`] from the engine.
pub(crate) trait EngineLoss: Send {
    type Engine: Engine;
    fn engine(&self) -> &Self::Engine;
    fn engine_mut(&mut self) -> &mut Self::Engine;
}

impl<T: EngineLoss> SegLoss for T {
    fn forward(&mut self, logits: &Tensor, target: &Tensor) -> crate::Result<Tensor> {
        Ok(self.engine_mut().forward(logits, target)?)
    }

    fn name(&self) -> &str {
        self.engine().name()
    }

    fn last_class_weights(&self) -> Option<Vec<f32>> {
        self.engine().last_class_weights()
    }

    fn last_kernel(&self) -> Option<crate::Kernel> {
        self.engine().last_kernel()
    }

    fn state(&self) -> Option<Vec<f32>> {
        self.engine().state()
    }

    fn load_state(&mut self, state: &[f32]) -> std::result::Result<(), LossError> {
        self.engine_mut().load_state(state)
    }

    fn sharding(&self) -> Sharding {
        self.engine().sharding()
    }

    fn shard_statistics(&self, logits: &Tensor, target: &Tensor) -> crate::Result<ShardStatistics> {
        Ok(self.engine().shard_statistics(logits, target)?)
    }

    fn prepare_step(&mut self, batch: &ShardStatistics) -> crate::Result<()> {
        Ok(self.engine_mut().prepare_step(batch)?)
    }

    fn forward_shard(
        &mut self,
        logits: &Tensor,
        target: &Tensor,
    ) -> crate::Result<crate::LossOutput> {
        let loss = self.engine_mut().forward_shard(logits, target)?;
        Ok(crate::LossOutput {
            loss,
            class_weights: self.last_class_weights(),
            terms: None,
        })
    }
}

impl<T: EngineLoss> LossBuilder for T {
    fn options(&self) -> &LossOptions {
        self.engine().options()
    }

    fn options_mut(&mut self) -> &mut LossOptions {
        self.engine_mut().options_mut()
    }
}
