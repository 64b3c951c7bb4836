//! Optimisers over `candle_core::Var` whose whole state can be checkpointed.
//!
//! candle-nn's optimisers keep their moment estimates private, so a run could not resume bit for
//! bit. These keep their state in named tensors ([`Optimizer::state`] /
//! [`Optimizer::load_state`]) and follow PyTorch's update rules exactly (`torch.optim.Adam`,
//! `AdamW`, `SGD`), which the tests check against goldens written by PyTorch.

mod adam;
mod adam_cpu;
mod schedule;
mod sgd;

pub use adam::Adam;
pub use schedule::LrSchedule;
pub use sgd::Sgd;

use crate::config::{OptimConfig, OptimKind};
use candle_core::{backprop::GradStore, Result, Tensor, Var};
use std::collections::HashMap;

/// A parameter the optimiser updates, with the name it has in the `VarMap` (used to key its
/// state in checkpoints).
#[derive(Clone, Debug)]
pub struct NamedVar {
    /// Name in the `VarMap` (`backbone.layer1.0.conv1.weight`).
    pub name: String,
    /// The variable.
    pub var: Var,
}

/// Where a rejected update went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonFiniteSource {
    /// The gradient itself holds NaN or infinite values.
    Gradient,
    /// The gradient is finite, but the updated parameter (or optimiser state) would not be: the
    /// step overflows, typically from a learning rate far too large.
    Update,
}

/// An update the optimiser refused because it would make the model non-finite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonFiniteUpdate {
    /// The first parameter (in the optimiser's order) that failed.
    pub param: String,
    /// Whether its gradient or its update is at fault.
    pub source: NonFiniteSource,
    /// How many of its values are NaN or infinite.
    pub count: usize,
}

impl std::fmt::Display for NonFiniteUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.source {
            NonFiniteSource::Gradient => write!(
                f,
                "the gradient of `{}` has {} NaN or infinite values",
                self.param, self.count
            ),
            NonFiniteSource::Update => write!(
                f,
                "the update would make {} values of `{}` (or of its optimiser state) NaN or \
                 infinite",
                self.count, self.param
            ),
        }
    }
}

/// What [`Optimizer::step`] did.
#[must_use = "a rejected step left the model unchanged; the caller must stop or skip it"]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// Every parameter with a gradient was updated.
    Applied,
    /// Nothing was changed (parameters, state, step count): the update was not finite.
    Rejected(NonFiniteUpdate),
}

/// Common interface of [`Adam`] and [`Sgd`].
pub trait Optimizer {
    /// Applies one update with learning rate `lr` from the gradients of the loss. Parameters
    /// without a gradient are left unchanged (and their state too).
    ///
    /// The update is checked before it is applied: if any gradient value, or any value the
    /// update would write (parameters and optimiser state), is NaN or infinite, nothing changes
    /// and [`StepOutcome::Rejected`] names the first parameter at fault. So a parameter never
    /// becomes non-finite through the optimiser, and a rejected step leaves the last good state
    /// in memory.
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<StepOutcome>;
    /// Number of steps taken so far.
    fn steps(&self) -> u64;
    /// The state as named tensors (`"m.<var>"`, `"v.<var>"`, `"buf.<var>"`) plus the step count.
    fn state(&self) -> (HashMap<String, Tensor>, u64);
    /// Restores a state produced by [`Optimizer::state`] (tensors are copied onto the
    /// parameters' device). Fails naming the first missing or mis-shaped tensor.
    fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps: u64) -> Result<()>;
}

/// Builds the optimiser a config asks for.
pub fn build(cfg: &OptimConfig, vars: Vec<NamedVar>) -> Result<Box<dyn Optimizer + Send>> {
    Ok(match cfg.kind {
        OptimKind::Adam => Box::new(Adam::new(
            vars,
            cfg.beta1,
            cfg.beta2,
            cfg.eps,
            cfg.weight_decay,
            false,
        )?),
        OptimKind::Adamw => Box::new(Adam::new(
            vars,
            cfg.beta1,
            cfg.beta2,
            cfg.eps,
            cfg.weight_decay,
            true,
        )?),
        OptimKind::Sgd => Box::new(Sgd::new(
            vars,
            cfg.momentum,
            cfg.weight_decay,
            cfg.nesterov,
        )?),
    })
}

/// Index of the first tensor of `ts` holding a NaN or infinite value, with the count of such
/// values in it. One reduction per tensor (`Σ 0·x` is 0 exactly when every `x` is finite) and a
/// single device-to-host copy for all of them; the count is only computed for the culprit.
pub fn first_non_finite(ts: &[&Tensor]) -> Result<Option<(usize, usize)>> {
    if ts.is_empty() {
        return Ok(None);
    }
    let sums = ts
        .iter()
        .map(|t| (*t * 0.0)?.sum_all()?.to_dtype(candle_core::DType::F32))
        .collect::<Result<Vec<_>>>()?;
    let sums: Vec<f32> = Tensor::stack(&sums, 0)?.to_vec1()?;
    let Some(i) = sums.iter().position(|s| !s.is_finite()) else {
        return Ok(None);
    };
    let values: Vec<f64> = ts[i]
        .to_dtype(candle_core::DType::F64)?
        .flatten_all()?
        .to_vec1()?;
    Ok(Some((i, values.iter().filter(|v| !v.is_finite()).count())))
}

/// Fetches `prefix.name` from a state map, checking its shape against `like`.
pub(crate) fn take_state(
    tensors: &HashMap<String, Tensor>,
    key: &str,
    like: &Tensor,
) -> Result<Tensor> {
    let t = tensors.get(key).ok_or_else(|| {
        candle_core::Error::Msg(format!("optimiser state `{key}` missing from checkpoint"))
    })?;
    if t.dims() != like.dims() {
        return Err(candle_core::Error::Msg(format!(
            "optimiser state `{key}` has shape {:?}, the parameter has {:?}",
            t.dims(),
            like.dims()
        )));
    }
    t.to_device(like.device())?.to_dtype(like.dtype())
}

#[cfg(test)]
mod tests;
