//! The cross-entropy family over a batch split into shards (data-parallel ranks, gradient
//! accumulation): the additive statistics of a shard, the step's batch-level quantities
//! ([`CeStep`]) and each shard's share of the batch's loss. See `SegLoss::sharding`.
//!
//! Every member is exact but OHEM with a ranking selection (`keep_ratio`, mmseg's `min_kept`),
//! whose kept set spans the batch; OHEM with a `threshold` keeps each pixel on its own cross
//! entropy and is exact with statistics `[N_0 … N_{C−1}, K_0 … K_{C−1}, pixels]` (`K_c` kept
//! pixels of class `c`, from a forward pass without graph), `Z = Σ_c s_c K_c`. The loss of the batch is `(1/Z) Σ_c W_c · CE_c` (Focal:
//! `(1/Z) Σ_n s_{y_n} α_{y_n} (1 − p_n)^γ CE_n`; per-image Recall: weights per image), where
//! only `W` (Recall, Precision: from the batch's argmax counts) and `Z` (the static-weighted
//! valid pixel count, every pixel for `paper_code`, `Σ W_c N_c` for `paper_loss_py`) span the
//! batch. Both follow from per-class counts, so a shard's statistics are
//!
//! ```text
//! [N_0 … N_{C−1}, pixels]                                         (labels only)
//! [N_0 … N_{C−1}, TP_0 … TP_{C−1}, PRED_0 … PRED_{C−1}, pixels]   (Recall, Precision but per-image)
//! ```
//!
//! (`N_c` valid pixels of class `c`, `TP_c` of them predicted `c`, `PRED_c` valid pixels
//! predicted `c`, `pixels` every pixel, ignored ones included), and a shard's share is its own
//! numerator over the batch's `Z`, computed by the same fused kernel (or portable path) as a
//! whole batch with `W` and `1/Z` handed in.

use super::CeEngine;
use crate::ce_mode::inv;
use crate::ce_mode::{CeMode, ClassStats};
use crate::fused_ce::{FusedCe, FusedOut};
use crate::input::{check_inputs, checked_labels_u32, prepare, zero_loss};
use crate::sharding::check_statistics;
use crate::OhemSelection;
use crate::{ShardStatistics, Sharding};
use candle_core::{DType, Result, Tensor};
use recallseg_kernels::fused::FusedOp;
use recallseg_kernels::SavedState;
use std::sync::Arc;

/// The batch-level quantities of one sharded step, fixed by `prepare_step`.
#[derive(Debug, Clone)]
pub(crate) struct CeStep {
    /// Per-class multipliers of the numerator: the final class weights `W_c` (Plain: the
    /// static weights; Focal: `s_c α_c`).
    pub w: Vec<f64>,
    /// `1/Z` of the batch (0 when `Z = 0`).
    pub inv_z: f64,
    /// The batch has no valid pixel: every share is 0.
    pub empty: bool,
    /// Report numerators and pixel counts accumulated over this step's shards (Focal's mean
    /// `(1 − p)^γ`, per-image Recall's mean weight), which only the shards' logits give.
    pub acc: Option<(Vec<f64>, Vec<f64>)>,
}

impl CeStep {
    /// `W_c / Z` per class: the fused kernel's per-class factors.
    pub(crate) fn factors(&self) -> Vec<f64> {
        self.w.iter().map(|v| v * self.inv_z).collect()
    }
}

impl CeEngine {
    /// Exact for every member but OHEM with a ranking selection, which spans the batch; the
    /// statistics read the logits for the members whose weights come from the batch's argmax
    /// (Recall but per-image, Precision) and for OHEM's threshold selection.
    pub(crate) fn sharding(&self) -> Sharding {
        match self.mode {
            CeMode::Ohem(OhemSelection::Threshold(_)) => Sharding::Exact { needs_logits: true },
            CeMode::Ohem(_) => Sharding::PerShard,
            CeMode::ClassWeighted(_) if !self.mode.per_image() => {
                Sharding::Exact { needs_logits: true }
            }
            _ => Sharding::Exact {
                needs_logits: false,
            },
        }
    }

    fn per_shard_error(&self) -> candle_core::Error {
        crate::options::per_shard_error(self.name).into_candle()
    }

    /// The length of the statistics vector.
    fn stats_len(&self, needs_logits: bool) -> usize {
        let c = self.opts.n_classes();
        match self.mode {
            CeMode::Ohem(_) => 2 * c + 1,
            _ if needs_logits => 3 * c + 1,
            _ => c + 1,
        }
    }

    /// See the module documentation for the layout.
    pub(crate) fn shard_statistics(
        &self,
        logits: &Tensor,
        target: &Tensor,
    ) -> Result<ShardStatistics> {
        let Sharding::Exact { needs_logits } = self.sharding() else {
            return Err(self.per_shard_error());
        };
        let c = self.opts.n_classes();
        let ignore = self.opts.ignore_index();
        let (n, _, h, w) = check_inputs(logits, target, c)?;
        let mut st = vec![0.0f64; self.stats_len(needs_logits)];
        let last = st.len() - 1;
        st[last] = (n * h * w) as f64;
        if n * h * w == 0 {
            return Ok(ShardStatistics(st));
        }
        if needs_logits {
            // On the CPU one parallel pass of the fused kernel without graph: OHEM's threshold
            // selection keeps a pixel on its own cross entropy (the same kernel as the shares,
            // so the same pixels are kept); otherwise the argmax counts only. Elsewhere
            // candle's argmax (below).
            let p = prepare(
                &logits.detach(),
                target,
                c,
                ignore,
                self.opts.kernel(),
                self.fused_gap(),
            )?;
            if p.empty {
                return Ok(ShardStatistics(st));
            }
            if let CeMode::Ohem(_) = self.mode {
                let (_, rep) = self.run(&p, None)?;
                if let Some((kept, count)) = rep.sums {
                    st[..c].copy_from_slice(&count);
                    st[c..2 * c].copy_from_slice(&kept);
                }
                return Ok(ShardStatistics(st));
            }
            if p.fused {
                let out = Arc::new(SavedState::new());
                let op = FusedCe {
                    n_classes: c,
                    ignore_index: ignore,
                    static_w: self.opts.static_weights(DType::F32),
                    focal_alpha: None,
                    smoothing: 0.0,
                    mode: self.mode,
                    ema_prev: None,
                    fixed: None,
                    stats_only: true,
                    out: out.clone(),
                    keep: false,
                };
                p.logits
                    .apply_op2_arc(&p.target, Arc::new(Box::new(FusedOp(op))))?;
                let cs = out
                    .with(|o: &mut FusedOut| o.step.stats.clone())?
                    .ok_or_else(|| candle_core::Error::Msg("no statistics".into()))?;
                st[..c].copy_from_slice(&cs.count);
                st[c..2 * c].copy_from_slice(&cs.tp);
                st[2 * c..3 * c].copy_from_slice(&cs.pred);
                return Ok(ShardStatistics(st));
            }
        }
        let labels = checked_labels_u32(target, c, ignore)?
            .flatten_all()?
            .to_vec1::<u32>()?;
        // Valid: not the ignore index (which may be below C) and a class.
        let class = |l: u32| (l != ignore && (l as usize) < c).then_some(l as usize);
        for &l in &labels {
            if let Some(y) = class(l) {
                st[y] += 1.0;
            }
        }
        if needs_logits {
            // First maximum on ties, as the fused kernel's and the portable path's argmax.
            // Ignored pixels are not counted, so their logits (NaN included) do not matter.
            let am = logits.argmax(1)?.flatten_all()?.to_vec1::<u32>()?;
            for (&l, &p) in labels.iter().zip(&am) {
                if let Some(y) = class(l) {
                    let p = (p as usize).min(c - 1);
                    if p == y {
                        st[c + y] += 1.0;
                    }
                    st[2 * c + p] += 1.0;
                }
            }
        }
        Ok(ShardStatistics(st))
    }

    /// Fixes the step's class weights, normaliser and moving average from the summed statistics.
    pub(crate) fn prepare_step(&mut self, batch: &ShardStatistics) -> Result<()> {
        let Sharding::Exact { needs_logits } = self.sharding() else {
            return Err(self.per_shard_error());
        };
        let c = self.opts.n_classes();
        let len = self.stats_len(needs_logits);
        check_statistics(self.name, batch, len)?;
        let b = &batch.0;
        let count = b[..c].to_vec();
        let pixels = b[len - 1] as usize;
        // The step's quantities are fixed before the shards' logits are seen: the parameters
        // enter at f32 precision (the trainer's), as the f32 forward pass applies them.
        let s = self.opts.static_weights(DType::F32);
        if count.iter().all(|&v| v == 0.0) {
            // As a whole batch without valid pixels: loss 0, no weights, the average unmoved.
            self.last = None;
            self.step = Some(CeStep {
                w: vec![0.0; c],
                inv_z: 0.0,
                empty: true,
                acc: None,
            });
            return Ok(());
        }
        let zero_acc = || Some((vec![0.0; c], vec![0.0; c]));
        let (w, z, acc) = match &self.mode {
            CeMode::Plain => (
                s.clone(),
                self.mode.normaliser(&s, &s, &count, pixels),
                None,
            ),
            CeMode::ClassWeighted(_) if self.mode.per_image() => {
                self.last = None;
                let z = self.mode.normaliser(&s, &s, &count, pixels);
                (s.clone(), z, zero_acc())
            }
            CeMode::ClassWeighted(_) => {
                let st = ClassStats {
                    count: count.clone(),
                    tp: b[c..2 * c].to_vec(),
                    pred: b[2 * c..3 * c].to_vec(),
                };
                let d = self.mode.class_weights(&st, self.ema.as_deref());
                let w = self.mode.final_weights(&s, &d.w);
                let z = self.mode.normaliser(&s, &w, &count, pixels);
                self.last = Some(d.report);
                if d.ema.is_some() {
                    self.ema = d.ema;
                }
                (w, z, None)
            }
            CeMode::Focal { .. } => {
                self.last = None;
                let sa: Vec<f64> = match &self.focal_alpha_at(DType::F32) {
                    Some(a) => s.iter().zip(a).map(|(x, y)| x * y).collect(),
                    None => s.clone(),
                };
                (sa, self.mode.normaliser(&s, &s, &count, pixels), zero_acc())
            }
            CeMode::Ohem(sel) => {
                let kept = &b[c..2 * c];
                let zk: f64 = s.iter().zip(kept).map(|(a, k)| a * k).sum();
                let z = sel.normaliser(zk, count.iter().sum(), pixels);
                self.last = Some(
                    kept.iter()
                        .zip(&count)
                        .map(|(k, n)| if *n > 0.0 { (k / n) as f32 } else { f32::NAN })
                        .collect(),
                );
                (s.clone(), z, None)
            }
        };
        self.step = Some(CeStep {
            w,
            inv_z: inv(z),
            empty: false,
            acc,
        });
        Ok(())
    }

    /// This shard's numerator over the batch's `Z`, with the step's weights.
    pub(crate) fn forward_shard(&mut self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        if !matches!(self.sharding(), Sharding::Exact { .. }) {
            return Err(self.per_shard_error());
        }
        let Some(step) = self.step.take() else {
            return Err(crate::LossError::StepNotPrepared {
                loss: self.name.into(),
            }
            .into_candle());
        };
        let out = self.shard_share(logits, target, &step);
        let step = match out {
            Ok((_, Some((ref num, ref cnt)))) => {
                let mut step = step;
                if let Some((an, ac)) = step.acc.as_mut() {
                    an.iter_mut().zip(num).for_each(|(a, v)| *a += v);
                    ac.iter_mut().zip(cnt).for_each(|(a, v)| *a += v);
                    self.last = Some(
                        an.iter()
                            .zip(ac.iter())
                            .map(|(a, n)| if *n > 0.0 { (a / n) as f32 } else { f32::NAN })
                            .collect(),
                    );
                }
                step
            }
            _ => step,
        };
        self.step = Some(step);
        out.map(|(loss, _)| loss)
    }

    /// The share and the report sums of one shard.
    #[allow(clippy::type_complexity)]
    fn shard_share(
        &mut self,
        logits: &Tensor,
        target: &Tensor,
        step: &CeStep,
    ) -> Result<(Tensor, Option<(Vec<f64>, Vec<f64>)>)> {
        let p = prepare(
            logits,
            target,
            self.opts.n_classes(),
            self.opts.ignore_index(),
            self.opts.kernel(),
            self.fused_gap(),
        )?;
        if p.empty || step.empty {
            if step.empty {
                self.last_kernel = None;
            }
            return Ok((zero_loss(&p.logits)?, None));
        }
        self.last_kernel = Some(if p.fused {
            crate::Kernel::Fused
        } else {
            crate::Kernel::Portable
        });
        let (loss, rep) = self.run(&p, Some(step))?;
        Ok((loss, rep.sums))
    }
}
