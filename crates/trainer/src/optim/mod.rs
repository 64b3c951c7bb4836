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

/// Common interface of [`Adam`] and [`Sgd`].
pub trait Optimizer {
    /// Applies one update with learning rate `lr` from the gradients of the loss. Parameters
    /// without a gradient are left unchanged (and their state too).
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()>;
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
