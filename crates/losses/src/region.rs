//! The engine shared by the overlap losses SoftIoU, Dice and Tversky: soft per-class
//! intersections and sums, the loss formula of [`crate::region_loss`], two implementations
//! (portable candle ops and the fused CPU kernel of [`crate::fused_region`]).
//!
//! With `p` the softmax probabilities, `t` the one-hot target and sums over the valid pixels of a
//! group (one image for SoftIoU, the whole batch for Dice and Tversky):
//!
//! ```text
//! I_c = Σ p_c t_c        P_c = Σ p_c        G_c = Σ t_c
//! ```
//!
//! Every loss is a function of these sums, so its gradient with respect to `p_{n,c}` has the form
//! `α_{g,c} + β_{g,c} t_{n,c}`; the fused kernel exploits that (see `docs/losses.md`).

/// The sharded step of the engine (data parallelism, accumulation).
mod shard;

use crate::fused_region::FusedRegion;
use crate::input::{checked_labels_u32, class_vector, one_hot, prepare};
use crate::options::{Engine, LossOptions};
use crate::region_loss::{RegionKind, RegionOpts, DICE_EPS, IOU_EPS};
use crate::ShardStatistics;
use crate::{Kernel, LossError};
use candle_core::{Result, Tensor};
use recallseg_kernels::fused::FusedOp;
use shard::{Linear, RegionStep};
use std::sync::Arc;

/// The builder methods of segmentation_models_pytorch's overlap-loss options (`smooth`,
/// `log_loss`, `classes`) for a loss type whose `engine` is a [`RegionEngine`].
macro_rules! region_options {
    ($ty:ty) => {
        impl $ty {
            /// Adds `smooth` to the score's numerator and denominator as smp 0.6 does (its
            /// `smooth`, default 0): `(I + smooth) / (I + α·FP + β·FN + smooth)`, so Dice (smp's
            /// Tversky with α = β = 0.5) is `(2I + 2·smooth) / (P + G + 2·smooth)` and Jaccard
            /// `(I + smooth) / (P + G − I + smooth)`. Classes absent from the batch still
            /// contribute 0 (smp's mask). Covered by the fused kernel.
            pub fn with_smooth(mut self, smooth: f64) -> Result<Self, crate::LossError> {
                self.engine.set_smooth(smooth)?;
                Ok(self)
            }

            /// Uses `−ln max(score, 1e-7)` per class instead of `1 − score` (smp's `log_loss`).
            /// Covered by the fused kernel.
            pub fn with_log_loss(mut self, log_loss: bool) -> Self {
                self.engine.ro.log_loss = log_loss;
                self
            }

            /// Averages over these classes only (smp's `classes`: distinct indices `< C`): the
            /// others get weight 0 and leave the normaliser. Covered by the fused kernel.
            pub fn with_classes(mut self, classes: Vec<usize>) -> Result<Self, crate::LossError> {
                self.engine.set_classes(classes)?;
                Ok(self)
            }
        }
    };
}
pub(crate) use region_options;

/// The shared state of the region losses: their options and which loss.
#[derive(Debug, Clone)]
pub(crate) struct RegionEngine {
    pub name: &'static str,
    pub opts: LossOptions,
    pub kind: RegionKind,
    /// `smooth` and `log_loss` (Dice, Tversky, Jaccard).
    pub ro: RegionOpts,
    /// The classes the loss averages over (smp's `classes`), `None` = all.
    pub classes: Option<Vec<usize>>,
    /// The implementation the last forward pass ran.
    pub last_kernel: Option<Kernel>,
    /// The batch-level quantities of the current sharded step (`SegLoss::prepare_step`).
    pub step: Option<RegionStep>,
}

impl RegionEngine {
    pub(crate) fn new(name: &'static str, n_classes: usize, kind: RegionKind) -> Self {
        Self {
            name,
            opts: LossOptions::new(n_classes),
            kind,
            ro: RegionOpts::default(),
            classes: None,
            last_kernel: None,
            step: None,
        }
    }

    /// Sets smp's `smooth` (finite, `>= 0`).
    pub(crate) fn set_smooth(&mut self, smooth: f64) -> std::result::Result<(), LossError> {
        if !(smooth.is_finite() && smooth >= 0.0) {
            return Err(LossError::InvalidParameter {
                loss: self.name,
                field: "smooth",
                value: smooth.to_string(),
                reason: "must be finite and >= 0".into(),
            });
        }
        self.ro.smooth = smooth;
        Ok(())
    }

    /// Sets smp's `classes`: the loss averages over these classes only (distinct, each `< C`,
    /// at least one).
    pub(crate) fn set_classes(
        &mut self,
        classes: Vec<usize>,
    ) -> std::result::Result<(), LossError> {
        let c = self.opts.n_classes();
        let bad = |value: String, reason: &str| LossError::InvalidParameter {
            loss: self.name,
            field: "classes",
            value,
            reason: reason.into(),
        };
        if classes.is_empty() {
            return Err(bad("[]".into(), "give at least one class"));
        }
        let mut seen = vec![false; c];
        for &k in &classes {
            if k >= c {
                return Err(bad(k.to_string(), &format!("a class index must be < {c}")));
            }
            if std::mem::replace(&mut seen[k], true) {
                return Err(bad(k.to_string(), "a class appears twice"));
            }
        }
        self.classes = Some(classes);
        Ok(())
    }

    /// The static weights (at the precision of `dtype`) times the `classes` mask.
    pub(crate) fn effective_static(&self, dtype: candle_core::DType) -> Vec<f64> {
        let mut s = self.opts.static_weights(dtype);
        if let Some(cl) = &self.classes {
            let mut mask = vec![0.0; s.len()];
            cl.iter().for_each(|&k| mask[k] = 1.0);
            s.iter_mut().zip(&mask).for_each(|(a, m)| *a *= m);
        }
        s
    }

    pub(crate) fn forward(&mut self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        Ok(self.run(logits, target, None)?.0)
    }

    /// The loss of `(logits, target)`, or with `fixed` (a shard of a sharded step, batch kinds)
    /// the linearisation of the batch's loss; also whether the input had no valid pixel (the
    /// loss is then 0 with a zero gradient).
    pub(crate) fn run(
        &mut self,
        logits: &Tensor,
        target: &Tensor,
        fixed: Option<&Linear>,
    ) -> Result<(Tensor, bool)> {
        let p = prepare(
            logits,
            target,
            self.opts.n_classes(),
            self.opts.ignore_index(),
            self.opts.kernel(),
            None,
        )?;
        if p.empty {
            self.last_kernel = None;
            return Ok((crate::input::zero_loss(&p.logits)?, true));
        }
        self.last_kernel = Some(if p.fused {
            Kernel::Fused
        } else {
            Kernel::Portable
        });
        let loss = if p.fused {
            let op = FusedRegion {
                n_classes: self.opts.n_classes(),
                ignore_index: self.opts.ignore_index(),
                static_w: self.effective_static(candle_core::DType::F32),
                kind: self.kind,
                ro: self.ro,
                coef: Default::default(),
                keep: p.logits.track_op(),
                probs: Default::default(),
                fixed: fixed.map(|f| (f.alpha.clone(), f.beta.clone(), f.constant)),
                sums_out: None,
            };
            p.logits
                .apply_op2_arc(&p.target, Arc::new(Box::new(FusedOp(op))))?
        } else {
            self.forward_portable(&p.logits, &p.target, fixed)?
        };
        Ok((loss, false))
    }

    /// The composed candle-ops implementation; `fixed` as in [`RegionEngine::run`].
    fn forward_portable(
        &self,
        logits: &Tensor,
        target: &Tensor,
        fixed: Option<&Linear>,
    ) -> Result<Tensor> {
        let c = self.opts.n_classes();
        let dtype = logits.dtype();
        let dev = logits.device();
        let labels = checked_labels_u32(target, c, self.opts.ignore_index())?;
        let oh = one_hot(&labels, c, self.opts.ignore_index(), dtype)?;
        let valid = oh.sum_keepdim(1)?;
        let prob = candle_nn::ops::softmax(logits, 1)?.broadcast_mul(&valid)?;
        if let Some(f) = fixed {
            let p = prob.sum((0, 2, 3))?;
            let i = (&prob * &oh)?.sum((0, 2, 3))?;
            let lin = ((p * class_vector(&f.alpha, dtype, dev)?)?.sum_all()?
                + (i * class_vector(&f.beta, dtype, dev)?)?.sum_all()?)?;
            return lin.affine(1.0, f.constant);
        }
        let (i, p, g) = if self.kind.per_image() {
            (
                (&prob * &oh)?.sum((2, 3))?,
                prob.sum((2, 3))?,
                oh.sum((2, 3))?,
            )
        } else {
            (
                (&prob * &oh)?.sum((0, 2, 3))?.unsqueeze(0)?,
                prob.sum((0, 2, 3))?.unsqueeze(0)?,
                oh.sum((0, 2, 3))?.unsqueeze(0)?,
            )
        };
        let groups = i.dim(0)?;
        let s = self.effective_static(dtype);
        let ssum: f64 = s.iter().sum();
        match self.kind {
            RegionKind::SoftIou => {
                let norm = if ssum > 0.0 {
                    1.0 / (groups as f64 * ssum)
                } else {
                    0.0
                };
                let u = ((&p + &g)? - &i)?.affine(1.0, IOU_EPS)?;
                let iou = (i / u)?;
                let sw: Vec<f64> = s.iter().map(|v| v * norm).collect();
                let sw = class_vector(&sw, dtype, dev)?.unsqueeze(0)?;
                iou.broadcast_mul(&sw)?.sum_all()?.affine(-1.0, 1.0)
            }
            RegionKind::Dice | RegionKind::Tversky { .. } => {
                let (a, b) = match self.kind {
                    RegionKind::Tversky { alpha, beta } => (alpha, beta),
                    _ => (0.5, 0.5),
                };
                let norm = if ssum > 0.0 { 1.0 / ssum } else { 0.0 };
                let present: Vec<f64> = g
                    .flatten_all()?
                    .to_dtype(candle_core::DType::F64)?
                    .to_vec1::<f64>()?
                    .iter()
                    .zip(&s)
                    .map(|(gc, sc)| if *gc > 0.0 { sc * norm } else { 0.0 })
                    .collect();
                let sigma = self.ro.sigma(self.kind);
                let d = ((i.affine(1.0 - a - b, 0.0)? + p.affine(a, 0.0)?)? + g.affine(b, 0.0)?)?;
                let (num, d) = if sigma > 0.0 {
                    (i.affine(1.0, sigma)?, d.affine(1.0, sigma)?)
                } else {
                    (i, d)
                };
                let ratio = (num / d.maximum(DICE_EPS)?)?;
                let score = if self.ro.log_loss {
                    ratio.maximum(DICE_EPS)?.log()?.neg()?
                } else {
                    ratio.affine(-1.0, 1.0)?
                };
                let wv = class_vector(&present, dtype, dev)?.unsqueeze(0)?;
                score.broadcast_mul(&wv)?.sum_all()
            }
        }
    }
}

impl Engine for RegionEngine {
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
        RegionEngine::forward(self, logits, target)
    }

    /// The static class weights if any were given; region losses have no per-class dynamic
    /// weights.
    fn last_class_weights(&self) -> Option<Vec<f32>> {
        self.opts.class_weights_f32()
    }

    fn last_kernel(&self) -> Option<Kernel> {
        self.last_kernel
    }

    fn sharding(&self) -> crate::Sharding {
        RegionEngine::sharding(self)
    }

    fn shard_statistics(&self, logits: &Tensor, target: &Tensor) -> Result<ShardStatistics> {
        RegionEngine::shard_statistics(self, logits, target)
    }

    fn prepare_step(&mut self, batch: &ShardStatistics) -> Result<()> {
        RegionEngine::prepare_step(self, batch)
    }

    fn forward_shard(&mut self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        RegionEngine::forward_shard(self, logits, target)
    }
}
