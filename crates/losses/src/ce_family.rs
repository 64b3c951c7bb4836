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

/// The sharded step of the engine (data parallelism, accumulation).
mod shard;

use crate::ce_mode::inv;
use crate::ce_mode::{CeMode, ClassStats, StepReport};
use crate::fused_ce::FusedCe;
use crate::input::{
    checked_labels_u32, class_column, class_vector, one_hot, per_class_host, prepare,
};
use crate::ohem_selection::ohem_keep;
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

    /// The composed candle-ops implementation (any device; candle autograd); `fixed` as in
    /// [`CeEngine::run`].
    fn forward_portable(
        &self,
        logits: &Tensor,
        target: &Tensor,
        fixed: Option<&CeStep>,
    ) -> Result<(Tensor, StepReport)> {
        let c = self.opts.n_classes();
        let ignore_index = self.opts.ignore_index();
        let dtype = logits.dtype();
        let dev = logits.device();
        let labels = checked_labels_u32(target, c, ignore_index)?;
        let oh = one_hot(&labels, c, ignore_index, dtype)?;
        let logp = candle_nn::ops::log_softmax(logits, 1)?;
        let count = per_class_host(&oh)?;
        let s = self.opts.static_weights(dtype);
        let pixels = logits.elem_count() / c.max(1);
        let static_report = self.opts.class_weights_f32();
        let n_img = logits.dim(0)?;
        // Each pixel's cross entropy against its (smoothed) target, summed per class (and per
        // image with `per_image`): `(1 − ε)(−log p_y) + (ε/C) Σ_k (−log p_k)`.
        let ce_sums = |dims: &[usize]| -> Result<Tensor> {
            let nll = (&oh * &logp)?.sum(dims)?.neg()?;
            if self.smoothing > 0.0 {
                let eps = self.smoothing;
                let all = oh.broadcast_mul(&logp.sum_keepdim(1)?)?.sum(dims)?.neg()?;
                nll.affine(1.0 - eps, 0.0)? + all.affine(eps / c as f64, 0.0)?
            } else {
                Ok(nll)
            }
        };
        match &self.mode {
            CeMode::ClassWeighted(cw) if cw.per_image => {
                let am = logits.argmax_keepdim(1)?;
                let pred_oh = am.broadcast_eq(&class_column(c, dev)?)?.to_dtype(dtype)?;
                let valid = oh.sum_keepdim(1)?;
                let host = |t: &Tensor| -> Result<Vec<f64>> {
                    t.sum((2, 3))?
                        .to_dtype(DType::F64)?
                        .flatten_all()?
                        .to_vec1::<f64>()
                };
                let cnt = host(&oh)?;
                let tp = host(&(&pred_oh * &oh)?)?;
                let pred = host(&pred_oh.broadcast_mul(&valid)?)?;
                let mut wmat = vec![0.0f64; n_img * c];
                let mut wsum = vec![0.0f64; c];
                for i in 0..n_img {
                    let r = i * c..(i + 1) * c;
                    let st = ClassStats {
                        count: cnt[r.clone()].to_vec(),
                        tp: tp[r.clone()].to_vec(),
                        pred: pred[r.clone()].to_vec(),
                    };
                    let d = self.mode.class_weights(&st, None);
                    for ((acc, w), n) in wsum.iter_mut().zip(&d.w).zip(&st.count) {
                        *acc += w * n;
                    }
                    let fw = self.mode.final_weights(&s, &d.w);
                    wmat[i * c..(i + 1) * c].copy_from_slice(&fw);
                }
                let inv_z = match fixed {
                    Some(f) => f.inv_z,
                    None => inv(self.mode.normaliser(&s, &s, &count, pixels)),
                };
                wmat.iter_mut().for_each(|v| *v *= inv_z);
                let report = wsum
                    .iter()
                    .zip(&count)
                    .map(|(a, n)| if *n > 0.0 { (a / n) as f32 } else { f32::NAN })
                    .collect();
                let wt = Tensor::from_vec(wmat, (n_img, c), &candle_core::Device::Cpu)?
                    .to_dtype(dtype)?
                    .to_device(dev)?;
                let loss = (ce_sums(&[2, 3])? * wt)?.sum_all()?;
                Ok((
                    loss,
                    StepReport {
                        report: Some(report),
                        ema: None,
                        sums: Some((wsum, count)),
                        stats: None,
                    },
                ))
            }
            CeMode::Plain | CeMode::ClassWeighted(_) => {
                let (w, rep) = if let Some(f) = fixed {
                    (f.w.clone(), StepReport::default())
                } else if matches!(self.mode, CeMode::Plain) {
                    (
                        s.clone(),
                        StepReport {
                            report: static_report,
                            ..Default::default()
                        },
                    )
                } else {
                    let am = logits.argmax_keepdim(1)?;
                    let pred_oh = am.broadcast_eq(&class_column(c, dev)?)?.to_dtype(dtype)?;
                    let valid = oh.sum_keepdim(1)?;
                    let tp = per_class_host(&(&pred_oh * &oh)?)?;
                    let pred = per_class_host(&pred_oh.broadcast_mul(&valid)?)?;
                    let st = ClassStats {
                        count: count.clone(),
                        tp,
                        pred,
                    };
                    let d = self.mode.class_weights(&st, self.ema.as_deref());
                    let w = self.mode.final_weights(&s, &d.w);
                    (
                        w,
                        StepReport {
                            report: Some(d.report),
                            ema: d.ema,
                            sums: None,
                            stats: None,
                        },
                    )
                };
                let inv_z = match fixed {
                    Some(f) => f.inv_z,
                    None => inv(self.mode.normaliser(&s, &w, &count, pixels)),
                };
                let scaled: Vec<f64> = w.iter().map(|v| v * inv_z).collect();
                let per_class_ce = ce_sums(&[0, 2, 3])?;
                let loss = (per_class_ce * class_vector(&scaled, dtype, dev)?)?.sum_all()?;
                Ok((loss, rep))
            }
            CeMode::Focal { gamma } => {
                let gamma = crate::options::at_precision(*gamma, dtype);
                let logpt = (&oh * &logp)?.sum(1)?;
                let inv_z = match fixed {
                    Some(f) => f.inv_z,
                    None => inv(self.mode.normaliser(&s, &s, &count, pixels)),
                };
                // Focal's α multiplies the numerator only (Lin et al.'s α_t, mmseg's list).
                let sa: Vec<f64> = match &self.focal_alpha_at(dtype) {
                    Some(a) => s.iter().zip(a).map(|(x, y)| x * y).collect(),
                    None => s.clone(),
                };
                let s_col = class_vector(&sa, dtype, dev)?.reshape((1, c, 1, 1))?;
                let s_map = oh.broadcast_mul(&s_col)?.sum(1)?;
                let one_minus = logpt.exp()?.affine(-1.0, 1.0)?;
                let modf = if gamma == 0.0 {
                    one_minus.ones_like()?
                } else if gamma == 1.0 {
                    one_minus
                } else {
                    one_minus.maximum(1e-12)?.powf(gamma)?
                };
                // `· (1/Z)` as a multiplication by a scalar tensor, not `affine`: candle drops
                // an `affine(0, ·)` from the graph, which left no gradient at all when `Z = 0`
                // (valid pixels whose static weights are all 0). Same rounding as `affine`.
                let inv_z_t = Tensor::new(inv_z, dev)?.to_dtype(dtype)?;
                let loss = (modf.neg()? * &logpt)?
                    .mul(&s_map)?
                    .sum_all()?
                    .mul(&inv_z_t)?;
                let fsum = per_class_host(&oh.broadcast_mul(&modf.detach().unsqueeze(1)?)?)?;
                let report = fsum
                    .iter()
                    .zip(&count)
                    .map(|(f, n)| if *n > 0.0 { (f / n) as f32 } else { f32::NAN })
                    .collect();
                Ok((
                    loss,
                    StepReport {
                        report: Some(report),
                        ema: None,
                        sums: Some((fsum, count)),
                        stats: None,
                    },
                ))
            }
            CeMode::Ohem(sel) => {
                let ce_map = (&oh * &logp)?.sum(1)?.neg()?;
                let lab = labels.flatten_all()?.to_vec1::<u32>()?;
                let ce_host = ce_map
                    .detach()
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let ce_marked: Vec<f32> = ce_host
                    .iter()
                    .zip(&lab)
                    .map(|(&v, &l)| {
                        if l == ignore_index || l as usize >= c {
                            f32::NEG_INFINITY
                        } else {
                            v
                        }
                    })
                    .collect();
                let keep = ohem_keep(&ce_marked, *sel, n_img);
                let mut kept = vec![0.0f64; c];
                let mut factor = vec![0.0f64; lab.len()];
                let mut zk = 0.0;
                for (i, &k) in keep.iter().enumerate() {
                    if k {
                        let y = lab[i] as usize;
                        kept[y] += 1.0;
                        factor[i] = s[y];
                        zk += s[y];
                    }
                }
                let n_valid = count.iter().sum::<f64>();
                // A shard of a sharded step (threshold selection): the step's `1/Z`.
                let inv = match fixed {
                    Some(f) => f.inv_z,
                    None => inv(sel.normaliser(zk, n_valid, pixels)),
                };
                factor.iter_mut().for_each(|f| *f *= inv);
                let f = Tensor::from_vec(factor, ce_map.shape(), &candle_core::Device::Cpu)?
                    .to_dtype(dtype)?
                    .to_device(dev)?;
                let loss = (ce_map * f)?.sum_all()?;
                let report = kept
                    .iter()
                    .zip(&count)
                    .map(|(k, n)| if *n > 0.0 { (k / n) as f32 } else { f32::NAN })
                    .collect();
                Ok((
                    loss,
                    StepReport {
                        report: Some(report),
                        ema: None,
                        sums: Some((kept, count)),
                        stats: None,
                    },
                ))
            }
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
