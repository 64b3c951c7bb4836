//! The engine shared by the cross-entropy family: one normalisation, one ignore rule, one
//! definition of every per-class weight, two implementations (portable candle ops and the fused
//! CPU kernel of [`crate::fused_ce`]).
//!
//! Every member computes
//!
//! ```text
//! L = (1/Z) Σ_{n valid} s_{y_n} · d_n · CE_n,      CE_n = -log softmax(z_n)_{y_n},
//! Z = Σ_{n valid} s_{y_n}                          (= number of valid pixels without static weights)
//! ```
//!
//! where `s` are static class weights (all 1 unless given) and `d_n` the member's dynamic
//! weight: 1 (CE), `1 - recall_{y_n}` (RecallCE), `FP/(TP+FP)` of `y_n` (PrecisionCE),
//! `(1 - p_n)^γ` (Focal, differentiated), the keep indicator (OHEM, which normalises by the kept
//! pixels' `Σ s_{y_n}` instead). Class-level dynamic weights carry no gradient. When `Z = 0`
//! (no valid pixel, or all weights zero) the loss is 0 with a zero gradient.

/// The portable (candle ops) implementation.
mod portable;
/// The sharded step of the engine (data parallelism, accumulation).
mod shard;

use crate::ce_mode::{CeMode, StepReport};
use crate::fused_ce::FusedCe;
use crate::input::prepare;
use crate::options::{Engine, LossOptions};
use crate::{Kernel, LossError, ShardStatistics};
use candle_core::{DType, Result, Tensor};
use recallseg_kernels::fused::FusedOp;
use recallseg_kernels::SavedState;
use shard::CeStep;
use std::sync::Arc;

/// Shared state and behaviour of the cross-entropy family.
#[derive(Debug, Clone)]
pub(crate) struct CeEngine {
    pub name: &'static str,
    /// Class count, ignore index, static class weights `s` (`None` = all ones), kernel.
    pub opts: LossOptions,
    pub mode: CeMode,
    /// Recall moving average (RecallCE with `ema`).
    pub ema: Option<Vec<f32>>,
    /// Weights reported by `last_class_weights`.
    pub last: Option<Vec<f32>>,
    /// Label smoothing `ε` (0 = none): the target distribution is `(1 − ε) onehot + ε / C`.
    pub smoothing: f64,
    /// Focal's per-class `α` (multiplies the numerator only), `None` = all ones.
    pub focal_alpha: Option<Vec<f64>>,
    /// The implementation the last forward pass ran.
    pub last_kernel: Option<Kernel>,
    /// The batch-level quantities of the current sharded step (`SegLoss::prepare_step`).
    pub step: Option<CeStep>,
}

impl CeEngine {
    /// Focal's `α` at the precision of `dtype` (see [`crate::LossOptions::static_weights`]).
    pub(crate) fn focal_alpha_at(&self, dtype: DType) -> Option<Vec<f64>> {
        self.focal_alpha.as_ref().map(|a| {
            a.iter()
                .map(|&v| crate::options::at_precision(v, dtype))
                .collect()
        })
    }

    pub(crate) fn new(name: &'static str, opts: LossOptions, mode: CeMode) -> Self {
        Self {
            name,
            opts,
            mode,
            ema: None,
            last: None,
            smoothing: 0.0,
            focal_alpha: None,
            last_kernel: None,
            step: None,
        }
    }

    /// Sets label smoothing `ε ∈ [0, 1)`; the members whose pixels are not plain (weighted)
    /// cross entropy (Focal, OHEM) reject it.
    pub(crate) fn set_label_smoothing(&mut self, eps: f64) -> std::result::Result<(), LossError> {
        if !(eps.is_finite() && (0.0..1.0).contains(&eps)) {
            return Err(LossError::InvalidParameter {
                loss: self.name,
                field: "label_smoothing",
                value: eps.to_string(),
                reason: "must be in [0, 1)".into(),
            });
        }
        if eps > 0.0 && matches!(self.mode, CeMode::Focal { .. } | CeMode::Ohem(_)) {
            return Err(LossError::InvalidParameter {
                loss: self.name,
                field: "label_smoothing",
                value: eps.to_string(),
                reason: "label smoothing applies to cross_entropy, weighted_ce, balanced_ce, \
                         recall_ce and precision_ce only"
                    .into(),
            });
        }
        self.smoothing = eps;
        Ok(())
    }

    /// The option the fused kernel does not cover, if the loss has one.
    pub(crate) fn fused_gap(&self) -> Option<&'static str> {
        if self.mode.per_image() {
            Some("recall_ce variant = \"per_image\"")
        } else {
            None
        }
    }

    pub(crate) fn forward(&mut self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        let p = prepare(
            logits,
            target,
            self.opts.n_classes(),
            self.opts.ignore_index(),
            self.opts.kernel(),
            self.fused_gap(),
        )?;
        if p.empty {
            // No weights were applied: report none rather than the previous batch's.
            self.last = None;
            self.last_kernel = None;
            return crate::input::zero_loss(&p.logits);
        }
        self.last_kernel = Some(if p.fused {
            Kernel::Fused
        } else {
            Kernel::Portable
        });
        let (loss, rep) = self.run(&p, None)?;
        if rep.ema.is_some() {
            self.ema = rep.ema;
        }
        self.last = rep.report;
        Ok(loss)
    }

    /// Runs the implementation `p` chose on prepared, non-empty inputs. With `fixed` (a shard of
    /// a sharded step) the class weights and `1/Z` are the step's instead of the batch's own.
    pub(crate) fn run(
        &self,
        p: &crate::input::Prepared,
        fixed: Option<&CeStep>,
    ) -> Result<(Tensor, StepReport)> {
        if p.fused {
            let out = Arc::new(SavedState::new());
            let op = FusedCe {
                n_classes: self.opts.n_classes(),
                ignore_index: self.opts.ignore_index(),
                static_w: self.opts.static_weights(DType::F32),
                focal_alpha: self.focal_alpha_at(DType::F32),
                smoothing: self.smoothing,
                mode: self.mode,
                ema_prev: self.ema.clone(),
                fixed: fixed.map(CeStep::factors),
                stats_only: false,
                out: out.clone(),
                keep: p.logits.track_op(),
            };
            let loss = p
                .logits
                .apply_op2_arc(&p.target, Arc::new(Box::new(FusedOp(op))))?;
            let rep = out.with(|o: &mut crate::fused_ce::FusedOut| o.step.clone())?;
            Ok((loss, rep))
        } else {
            self.forward_portable(&p.logits, &p.target, fixed)
        }
    }
}

impl CeEngine {
    /// Restores the recall moving average (RecallCE with `ema`); see `SegLoss::load_state`.
    pub(crate) fn load_state(
        &mut self,
        state: &[f32],
    ) -> std::result::Result<(), crate::LossError> {
        let keeps = self.mode.keeps_average();
        if state.is_empty() {
            if keeps {
                self.ema = None;
            }
            return Ok(());
        }
        if !keeps {
            return Err(crate::LossError::InvalidParameter {
                loss: self.name,
                field: "state",
                value: format!("{} values", state.len()),
                reason: "this loss keeps no state across steps".into(),
            });
        }
        if state.len() != self.opts.n_classes() {
            return Err(crate::LossError::ClassCountMismatch {
                what: "loss state (recall moving average)",
                expected: self.opts.n_classes(),
                got: state.len(),
            });
        }
        if let Some(v) = state
            .iter()
            .find(|v| !v.is_nan() && !(0.0..=1.0).contains(*v))
        {
            return Err(crate::LossError::InvalidParameter {
                loss: self.name,
                field: "state",
                value: v.to_string(),
                reason: "a recall average must be in [0, 1] (or NaN for unseen classes)".into(),
            });
        }
        self.ema = Some(state.to_vec());
        Ok(())
    }
}

impl Engine for CeEngine {
    fn options(&self) -> &LossOptions {
        &self.opts
    }

    fn options_mut(&mut self) -> &mut LossOptions {
        &mut self.opts
    }

    fn name(&self) -> &'static str {
        self.name
    }

    fn forward(&mut self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        CeEngine::forward(self, logits, target)
    }

    /// The static weights for plain CE, the last step's dynamic weights otherwise.
    fn last_class_weights(&self) -> Option<Vec<f32>> {
        match self.mode {
            CeMode::Plain => self.opts.class_weights_f32(),
            _ => self.last.clone(),
        }
    }

    fn last_kernel(&self) -> Option<Kernel> {
        self.last_kernel
    }

    fn state(&self) -> Option<Vec<f32>> {
        self.ema.clone()
    }

    fn load_state(&mut self, state: &[f32]) -> std::result::Result<(), crate::LossError> {
        CeEngine::load_state(self, state)
    }

    fn sharding(&self) -> crate::Sharding {
        CeEngine::sharding(self)
    }

    fn shard_statistics(&self, logits: &Tensor, target: &Tensor) -> Result<ShardStatistics> {
        CeEngine::shard_statistics(self, logits, target)
    }

    fn prepare_step(&mut self, batch: &ShardStatistics) -> Result<()> {
        CeEngine::prepare_step(self, batch)
    }

    fn forward_shard(&mut self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        CeEngine::forward_shard(self, logits, target)
    }
}
