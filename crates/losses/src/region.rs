//! The engine shared by the overlap losses SoftIoU, Dice and Tversky: soft per-class
//! intersections and sums, one loss formula per kind, two implementations (portable candle ops
//! and the fused CPU kernel of [`crate::fused_region`]).
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
use crate::Kernel;
use candle_core::{Result, Tensor};
use recallseg_kernels::fused::FusedOp;
use std::sync::Arc;

/// Denominator floor of Dice and Tversky (segmentation_models_pytorch's `eps`).
pub(crate) const DICE_EPS: f64 = 1e-7;
/// Denominator guard of SoftIoU (the paper's code).
pub(crate) const IOU_EPS: f64 = 1e-16;

/// Which overlap loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum RegionKind {
    /// Per image and class, `1 - mean IoU`.
    SoftIou,
    /// Over the batch, per present class `1 - Dice`.
    Dice,
    /// Over the batch, per present class `1 - Tversky(α, β)`.
    Tversky { alpha: f64, beta: f64 },
}

impl RegionKind {
    /// Whether statistics are gathered per image (SoftIoU) or over the batch.
    pub(crate) fn per_image(&self) -> bool {
        matches!(self, RegionKind::SoftIou)
    }
}

/// Loss value and the gradient coefficients `α, β` (per group × class, row-major) from the sums.
///
/// `s` are the static class weights, `groups` the number of groups (images or 1).
pub(crate) fn region_loss(
    kind: RegionKind,
    i: &[f64],
    p: &[f64],
    g: &[f64],
    s: &[f64],
    groups: usize,
) -> (f64, Vec<f64>, Vec<f64>) {
    let c = s.len();
    let ssum: f64 = s.iter().sum();
    let mut alpha = vec![0.0; groups * c];
    let mut beta = vec![0.0; groups * c];
    let mut loss = 0.0;
    match kind {
        RegionKind::SoftIou => {
            let norm = if ssum > 0.0 {
                1.0 / (groups as f64 * ssum)
            } else {
                0.0
            };
            let mut acc = 0.0;
            for j in 0..groups * c {
                let k = s[j % c] * norm;
                let u = p[j] + g[j] - i[j] + IOU_EPS;
                acc += k * i[j] / u;
                alpha[j] = k * i[j] / (u * u);
                beta[j] = -k * (1.0 / u + i[j] / (u * u));
            }
            loss = 1.0 - acc;
        }
        RegionKind::Dice | RegionKind::Tversky { .. } => {
            let (a, b) = match kind {
                RegionKind::Tversky { alpha, beta } => (alpha, beta),
                _ => (0.5, 0.5),
            };
            let norm = if ssum > 0.0 { 1.0 / ssum } else { 0.0 };
            for j in 0..groups * c {
                if g[j] <= 0.0 {
                    continue;
                }
                let k = s[j % c] * norm;
                let raw = (1.0 - a - b) * i[j] + a * p[j] + b * g[j];
                let (d, clamped) = if raw < DICE_EPS {
                    (DICE_EPS, true)
                } else {
                    (raw, false)
                };
                loss += k * (1.0 - i[j] / d);
                if clamped {
                    alpha[j] = 0.0;
                    beta[j] = -k / d;
                } else {
                    alpha[j] = k * a * i[j] / (d * d);
                    beta[j] = -k * (1.0 / d - (1.0 - a - b) * i[j] / (d * d));
                }
            }
        }
    }
    (loss, alpha, beta)
}

/// Shared state of SoftIoU, Dice and Tversky.
#[derive(Debug, Clone)]
pub(crate) struct RegionEngine {
    pub name: &'static str,
    pub n_classes: usize,
    pub ignore_index: u32,
    pub static_weights: Option<Vec<f32>>,
    pub kind: RegionKind,
    pub kernel: Kernel,
}

impl RegionEngine {
    pub(crate) fn new(name: &'static str, n_classes: usize, kind: RegionKind) -> Self {
        Self {
            name,
            n_classes,
            ignore_index: crate::DEFAULT_IGNORE_INDEX,
            static_weights: None,
            kind,
            kernel: Kernel::Auto,
        }
    }

    pub(crate) fn static_f64(&self) -> Vec<f64> {
        match &self.static_weights {
            Some(w) => w.iter().map(|&v| v as f64).collect(),
            None => vec![1.0; self.n_classes],
        }
    }

    pub(crate) fn forward(&mut self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        let p = prepare(
            logits,
            target,
            self.n_classes,
            self.ignore_index,
            self.kernel,
        )?;
        if p.empty {
            return crate::input::zero_loss(&p.logits);
        }
        if p.fused {
            let op = FusedRegion {
                n_classes: self.n_classes,
                ignore_index: self.ignore_index,
                static_w: self.static_f64(),
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
        let c = self.n_classes;
        let dtype = logits.dtype();
        let dev = logits.device();
        let labels = checked_labels_u32(target, c, self.ignore_index)?;
        let oh = one_hot(&labels, c, self.ignore_index, dtype)?;
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
        let s = self.static_f64();
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

/// Builder methods and the `SegLoss` implementation shared by the region losses.
macro_rules! region_loss_common {
    ($t:ty) => {
        impl $t {
            /// Sets the ignore index (default 255): pixels with this label contribute nothing.
            pub fn with_ignore_index(mut self, ignore_index: u32) -> Self {
                self.engine.ignore_index = ignore_index;
                self
            }

            /// Weights the per-class terms by static weights `s_c` (finite, `>= 0`); the class
            /// average becomes `Σ_c s_c L_c / Σ_c s_c`.
            pub fn with_class_weights(
                mut self,
                weights: Vec<f32>,
            ) -> Result<Self, $crate::LossError> {
                $crate::check_weights(&weights, self.engine.n_classes)?;
                self.engine.static_weights = Some(weights);
                Ok(self)
            }

            /// Chooses the implementation (default [`Kernel::Auto`](crate::Kernel::Auto)).
            pub fn with_kernel(mut self, kernel: $crate::Kernel) -> Self {
                self.engine.kernel = kernel;
                self
            }

            /// The number of classes the loss was built for.
            pub fn n_classes(&self) -> usize {
                self.engine.n_classes
            }
        }

        impl $crate::SegLoss for $t {
            fn forward(
                &mut self,
                logits: &candle_core::Tensor,
                target: &candle_core::Tensor,
            ) -> candle_core::Result<candle_core::Tensor> {
                self.engine.forward(logits, target)
            }

            fn name(&self) -> &str {
                self.engine.name
            }

            /// The static class weights if any were given; region losses have no per-class
            /// dynamic weights.
            fn last_class_weights(&self) -> Option<Vec<f32>> {
                self.engine.static_weights.clone()
            }
        }
    };
}
pub(crate) use region_loss_common;
