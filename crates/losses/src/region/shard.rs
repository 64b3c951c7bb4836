//! The overlap losses over a batch split into shards (see `SegLoss::sharding`).
//!
//! * **SoftIoU** is a mean over the images of per-image terms: a shard of `N_s` whole images
//!   contributes `N_s / N` times its own loss ([`ImageMeanStep`]); statistics `[images, valid
//!   pixels]`, from the labels.
//! * **Dice, Tversky, Jaccard** (over the batch) are a function `f(S)` of the batch's soft sums
//!   `S = (I_c, P_c, G_c)`, which are additive over shards: statistics `[I_0 … I_{C−1}, P_0 …,
//!   G_0 …, images]` (a forward pass without graph). `prepare_step` evaluates `f` and its
//!   derivatives `α_c = ∂f/∂P_c`, `β_c = ∂f/∂I_c` at the summed `S` (`G` does not depend on the
//!   logits), and a shard's share is the linearisation
//!
//!   ```text
//!   share_s = Σ_c α_c P_c(s) + β_c I_c(s) + (N_s / N) · (f(S) − Σ_c α_c P_c + β_c I_c)
//!   ```
//!
//!   whose values sum to `f(S)` over the shards and whose gradient is exactly the batch's
//!   (`∂f/∂p_{n,c} = α_c + β_c t_{n,c}`, the same coefficients the whole batch's backward pass
//!   uses). A share's own value is not a loss of its shard: only the sum means something.

use super::RegionEngine;
use crate::input::{check_inputs, checked_labels_u32, one_hot, prepare};
use crate::region_loss::region_loss;
use crate::sharding::{check_statistics, ImageMeanStep};
use crate::{ShardStatistics, Sharding};
use candle_core::{DType, Result, Tensor};
use recallseg_kernels::fused::FusedOp;
use recallseg_kernels::SavedState;
use std::sync::Arc;

/// The coefficients of one shard's share: `Σ_c α_c P_c + β_c I_c + constant`.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    pub alpha: Vec<f64>,
    pub beta: Vec<f64>,
    pub constant: f64,
}

/// The batch-level quantities of one sharded step.
#[derive(Debug, Clone)]
pub(crate) enum RegionStep {
    /// SoftIoU: a mean over images.
    Images(ImageMeanStep),
    /// Dice, Tversky, Jaccard: the linearisation at the batch's sums.
    Batch {
        alpha: Vec<f64>,
        beta: Vec<f64>,
        /// `f(S) − Σ_c α_c P_c + β_c I_c`, shared out by image count.
        constant: f64,
        images: f64,
        /// The batch has no valid pixel: every share is 0.
        empty: bool,
    },
}

impl RegionEngine {
    /// Exact for every overlap loss: SoftIoU from the labels, the batch kinds from the soft sums
    /// (which read the logits).
    pub(crate) fn sharding(&self) -> Sharding {
        Sharding::Exact {
            needs_logits: !self.kind.per_image(),
        }
    }

    /// See the module documentation for the layouts.
    pub(crate) fn shard_statistics(
        &self,
        logits: &Tensor,
        target: &Tensor,
    ) -> Result<ShardStatistics> {
        let c = self.opts.n_classes();
        let ignore = self.opts.ignore_index();
        if self.kind.per_image() {
            return ImageMeanStep::statistics(logits, target, c, ignore);
        }
        let (n, _, _, _) = check_inputs(logits, target, c)?;
        let mut out = vec![0.0f64; 3 * c + 1];
        out[3 * c] = n as f64;
        let p = prepare(logits, target, c, ignore, self.opts.kernel(), None)?;
        if p.empty {
            return Ok(ShardStatistics(out));
        }
        let [i, pr, g] = if p.fused {
            // The fused forward pass (no graph, nothing kept) leaves its f64 sums.
            let sums = Arc::new(SavedState::new());
            let op = crate::fused_region::FusedRegion {
                n_classes: c,
                ignore_index: ignore,
                static_w: self.effective_static(candle_core::DType::F32),
                kind: self.kind,
                ro: self.ro,
                coef: Default::default(),
                keep: false,
                probs: Default::default(),
                fixed: None,
                sums_out: Some(sums.clone()),
            };
            p.logits
                .detach()
                .apply_op2_arc(&p.target, Arc::new(Box::new(FusedOp(op))))?;
            sums.take()?
        } else {
            let labels = checked_labels_u32(&p.target, c, ignore)?;
            let oh = one_hot(&labels, c, ignore, DType::F64)?;
            let valid = oh.sum_keepdim(1)?;
            let prob = candle_nn::ops::softmax(&p.logits.detach(), 1)?
                .to_dtype(DType::F64)?
                .broadcast_mul(&valid)?;
            let host = |t: &Tensor| t.sum((0, 2, 3))?.to_vec1::<f64>();
            [host(&(&prob * &oh)?)?, host(&prob)?, host(&oh)?]
        };
        out[..c].copy_from_slice(&i);
        out[c..2 * c].copy_from_slice(&pr);
        out[2 * c..3 * c].copy_from_slice(&g);
        Ok(ShardStatistics(out))
    }

    /// Fixes the step from the summed statistics.
    pub(crate) fn prepare_step(&mut self, batch: &ShardStatistics) -> Result<()> {
        if self.kind.per_image() {
            self.step = Some(RegionStep::Images(ImageMeanStep::from_statistics(
                self.name, batch,
            )?));
            return Ok(());
        }
        let c = self.opts.n_classes();
        check_statistics(self.name, batch, 3 * c + 1)?;
        let b = &batch.0;
        let (i, p, g) = (&b[..c], &b[c..2 * c], &b[2 * c..3 * c]);
        let images = b[3 * c];
        let empty = g.iter().all(|&v| v == 0.0);
        let (f, alpha, beta) = region_loss(
            self.kind,
            self.ro,
            i,
            p,
            g,
            &self.effective_static(candle_core::DType::F32),
            1,
        );
        let lin: f64 = (0..c).map(|k| alpha[k] * p[k] + beta[k] * i[k]).sum();
        self.step = Some(RegionStep::Batch {
            alpha,
            beta,
            constant: f - lin,
            images,
            empty,
        });
        Ok(())
    }

    /// This shard's share (see the module documentation).
    pub(crate) fn forward_shard(&mut self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        let Some(step) = self.step.clone() else {
            return Err(crate::LossError::StepNotPrepared {
                loss: self.name.into(),
            }
            .into_candle());
        };
        let (n_s, _, _, _) = check_inputs(logits, target, self.opts.n_classes())?;
        match step {
            RegionStep::Images(st) => {
                let (l, empty) = self.run(logits, target, None)?;
                // An image without valid pixels has IoU 0 for every class: it counts 1.
                st.share((!empty).then(|| l.clone()), || Ok(l), n_s, 1.0)
            }
            RegionStep::Batch {
                alpha,
                beta,
                constant,
                images,
                empty,
            } => {
                let constant = if empty || images == 0.0 {
                    0.0
                } else {
                    constant * n_s as f64 / images
                };
                let lin = Linear {
                    alpha,
                    beta,
                    constant,
                };
                let (l, shard_empty) = self.run(logits, target, Some(&lin))?;
                if shard_empty && constant != 0.0 {
                    l.affine(1.0, constant)
                } else {
                    Ok(l)
                }
            }
        }
    }
}
