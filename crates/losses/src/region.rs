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

use crate::fused_region::FusedRegion;
use crate::input::{checked_labels_u32, class_vector, one_hot, prepare};
use crate::options::{Engine, LossOptions};
use crate::region_loss::{RegionKind, DICE_EPS, IOU_EPS};
use candle_core::{Result, Tensor};
use recallseg_kernels::fused::FusedOp;
use std::sync::Arc;

/// The shared state of the region losses: their options and which loss.
#[derive(Debug, Clone)]
pub(crate) struct RegionEngine {
    pub name: &'static str,
    pub opts: LossOptions,
    pub kind: RegionKind,
}

impl RegionEngine {
    pub(crate) fn new(name: &'static str, n_classes: usize, kind: RegionKind) -> Self {
        Self {
            name,
            opts: LossOptions::new(n_classes),
            kind,
        }
    }

    pub(crate) fn forward(&mut self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        let p = prepare(
            logits,
            target,
            self.opts.n_classes(),
            self.opts.ignore_index(),
            self.opts.kernel(),
        )?;
        if p.empty {
            return crate::input::zero_loss(&p.logits);
        }
        if p.fused {
            let op = FusedRegion {
                n_classes: self.opts.n_classes(),
                ignore_index: self.opts.ignore_index(),
                static_w: self.opts.static_f64(),
                kind: self.kind,
                coef: Default::default(),
                keep: p.logits.track_op(),
                probs: Default::default(),
            };
            p.logits
                .apply_op2_arc(&p.target, Arc::new(Box::new(FusedOp(op))))
        } else {
            self.forward_portable(&p.logits, &p.target)
        }
    }

    /// The composed candle-ops implementation.
    fn forward_portable(&self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        let c = self.opts.n_classes();
        let dtype = logits.dtype();
        let dev = logits.device();
        let labels = checked_labels_u32(target, c, self.opts.ignore_index())?;
        let oh = one_hot(&labels, c, self.opts.ignore_index(), dtype)?;
        let valid = oh.sum_keepdim(1)?;
        let prob = candle_nn::ops::softmax(logits, 1)?.broadcast_mul(&valid)?;
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
        let s = self.opts.static_f64();
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
                let d = ((i.affine(1.0 - a - b, 0.0)? + p.affine(a, 0.0)?)? + g.affine(b, 0.0)?)?
                    .maximum(DICE_EPS)?;
                let score = (i / d)?.affine(-1.0, 1.0)?;
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
        self.opts.class_weights().map(<[f32]>::to_vec)
    }
}
