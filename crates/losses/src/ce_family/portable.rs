//! The composed candle-ops implementation of the cross-entropy family (any device; candle
//! autograd does the backward pass), one method per member: statically and class-weighted
//! (CE, WeightedCE, BalancedCE, RecallCE, PrecisionCE), class-weighted per image, Focal, OHEM.

use super::shard::CeStep;
use super::CeEngine;
use crate::ce_mode::inv;
use crate::ce_mode::{CeMode, ClassStats, StepReport};
use crate::input::{checked_labels_u32, class_column, class_vector, one_hot, per_class_host};
use crate::ohem_selection::{ohem_keep, OhemSelection};
use candle_core::{DType, Device, Result, Tensor};

/// What every member's portable path starts from.
struct Inputs<'a> {
    logits: &'a Tensor,
    /// Labels as `u32`, checked.
    labels: Tensor,
    /// One-hot targets `(N, C, H, W)` in the logits' dtype (zero at ignored pixels).
    oh: Tensor,
    /// `log softmax` of the logits.
    logp: Tensor,
    /// Valid pixels per class.
    count: Vec<f64>,
    /// Static weights at the logits' precision.
    s: Vec<f64>,
    /// Pixels of the batch, ignored ones included.
    pixels: usize,
    n_img: usize,
    c: usize,
    dtype: DType,
    dev: &'a Device,
}

/// `(1/n)·sum` per class as the reported weight: `NaN` for classes absent from the batch.
fn per_class_mean(sums: &[f64], count: &[f64]) -> Vec<f32> {
    sums.iter()
        .zip(count)
        .map(|(a, n)| if *n > 0.0 { (a / n) as f32 } else { f32::NAN })
        .collect()
}

/// A report with per-class sums (Focal, OHEM, per-image Recall).
fn report_with_sums(sums: Vec<f64>, count: Vec<f64>) -> StepReport {
    StepReport {
        report: Some(per_class_mean(&sums, &count)),
        ema: None,
        sums: Some((sums, count)),
        stats: None,
    }
}

impl CeEngine {
    /// The portable implementation; `fixed` as in [`CeEngine::run`].
    pub(super) fn forward_portable(
        &self,
        logits: &Tensor,
        target: &Tensor,
        fixed: Option<&CeStep>,
    ) -> Result<(Tensor, StepReport)> {
        let c = self.opts.n_classes();
        let dtype = logits.dtype();
        let labels = checked_labels_u32(target, c, self.opts.ignore_index())?;
        let oh = one_hot(&labels, c, self.opts.ignore_index(), dtype)?;
        let inp = Inputs {
            logits,
            logp: candle_nn::ops::log_softmax(logits, 1)?,
            count: per_class_host(&oh)?,
            labels,
            oh,
            s: self.opts.static_weights(dtype),
            pixels: logits.elem_count() / c.max(1),
            n_img: logits.dim(0)?,
            c,
            dtype,
            dev: logits.device(),
        };
        match &self.mode {
            CeMode::ClassWeighted(cw) if cw.per_image => self.portable_per_image(&inp, fixed),
            CeMode::Plain | CeMode::ClassWeighted(_) => self.portable_weighted(&inp, fixed),
            CeMode::Focal { gamma } => self.portable_focal(&inp, *gamma, fixed),
            CeMode::Ohem(sel) => self.portable_ohem(&inp, *sel, fixed),
        }
    }

    /// Each pixel's cross entropy against its (smoothed) target, summed over `dims` (per class,
    /// and per image with `per_image`): `(1 − ε)(−log p_y) + (ε/C) Σ_k (−log p_k)`.
    fn ce_sums(&self, inp: &Inputs, dims: &[usize]) -> Result<Tensor> {
        let nll = (&inp.oh * &inp.logp)?.sum(dims)?.neg()?;
        if self.smoothing > 0.0 {
            let eps = self.smoothing;
            let all = inp
                .oh
                .broadcast_mul(&inp.logp.sum_keepdim(1)?)?
                .sum(dims)?
                .neg()?;
            nll.affine(1.0 - eps, 0.0)? + all.affine(eps / inp.c as f64, 0.0)?
        } else {
            Ok(nll)
        }
    }

    /// The one-hot argmax of the valid pixels `(N, C, H, W)` and the valid mask `(N, 1, H, W)`.
    fn argmax_one_hot(&self, inp: &Inputs) -> Result<(Tensor, Tensor)> {
        let am = inp.logits.argmax_keepdim(1)?;
        let pred_oh = am
            .broadcast_eq(&class_column(inp.c, inp.dev)?)?
            .to_dtype(inp.dtype)?;
        Ok((pred_oh, inp.oh.sum_keepdim(1)?))
    }

    /// The class-weighted members with statistics (and weights) per image.
    fn portable_per_image(
        &self,
        inp: &Inputs,
        fixed: Option<&CeStep>,
    ) -> Result<(Tensor, StepReport)> {
        let (c, n_img) = (inp.c, inp.n_img);
        let (pred_oh, valid) = self.argmax_one_hot(inp)?;
        let host = |t: &Tensor| -> Result<Vec<f64>> {
            t.sum((2, 3))?
                .to_dtype(DType::F64)?
                .flatten_all()?
                .to_vec1::<f64>()
        };
        let cnt = host(&inp.oh)?;
        let tp = host(&(&pred_oh * &inp.oh)?)?;
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
            let fw = self.mode.final_weights(&inp.s, &d.w);
            wmat[i * c..(i + 1) * c].copy_from_slice(&fw);
        }
        let inv_z = match fixed {
            Some(f) => f.inv_z,
            None => inv(self.mode.normaliser(&inp.s, &inp.s, &inp.count, inp.pixels)),
        };
        wmat.iter_mut().for_each(|v| *v *= inv_z);
        let wt = Tensor::from_vec(wmat, (n_img, c), &Device::Cpu)?
            .to_dtype(inp.dtype)?
            .to_device(inp.dev)?;
        let loss = (self.ce_sums(inp, &[2, 3])? * wt)?.sum_all()?;
        Ok((loss, report_with_sums(wsum, inp.count.clone())))
    }

    /// Plain (statically weighted) cross entropy and the class-weighted members with batch
    /// statistics.
    fn portable_weighted(
        &self,
        inp: &Inputs,
        fixed: Option<&CeStep>,
    ) -> Result<(Tensor, StepReport)> {
        let (w, rep) = if let Some(f) = fixed {
            (f.w.clone(), StepReport::default())
        } else if matches!(self.mode, CeMode::Plain) {
            (
                inp.s.clone(),
                StepReport {
                    report: self.opts.class_weights_f32(),
                    ..Default::default()
                },
            )
        } else {
            let (pred_oh, valid) = self.argmax_one_hot(inp)?;
            let st = ClassStats {
                count: inp.count.clone(),
                tp: per_class_host(&(&pred_oh * &inp.oh)?)?,
                pred: per_class_host(&pred_oh.broadcast_mul(&valid)?)?,
            };
            let d = self.mode.class_weights(&st, self.ema.as_deref());
            let w = self.mode.final_weights(&inp.s, &d.w);
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
            None => inv(self.mode.normaliser(&inp.s, &w, &inp.count, inp.pixels)),
        };
        let scaled: Vec<f64> = w.iter().map(|v| v * inv_z).collect();
        let per_class_ce = self.ce_sums(inp, &[0, 2, 3])?;
        let loss = (per_class_ce * class_vector(&scaled, inp.dtype, inp.dev)?)?.sum_all()?;
        Ok((loss, rep))
    }

    /// Focal loss: the modulating factor `(1 − p)^γ` is differentiated.
    fn portable_focal(
        &self,
        inp: &Inputs,
        gamma: f64,
        fixed: Option<&CeStep>,
    ) -> Result<(Tensor, StepReport)> {
        let (dtype, dev) = (inp.dtype, inp.dev);
        let gamma = crate::options::at_precision(gamma, dtype);
        let logpt = (&inp.oh * &inp.logp)?.sum(1)?;
        let inv_z = match fixed {
            Some(f) => f.inv_z,
            None => inv(self.mode.normaliser(&inp.s, &inp.s, &inp.count, inp.pixels)),
        };
        // Focal's α multiplies the numerator only (Lin et al.'s α_t, mmseg's list).
        let sa: Vec<f64> = match &self.focal_alpha_at(dtype) {
            Some(a) => inp.s.iter().zip(a).map(|(x, y)| x * y).collect(),
            None => inp.s.clone(),
        };
        let s_col = class_vector(&sa, dtype, dev)?.reshape((1, inp.c, 1, 1))?;
        let s_map = inp.oh.broadcast_mul(&s_col)?.sum(1)?;
        let one_minus = logpt.exp()?.affine(-1.0, 1.0)?;
        let modf = if gamma == 0.0 {
            one_minus.ones_like()?
        } else if gamma == 1.0 {
            one_minus
        } else {
            one_minus.maximum(1e-12)?.powf(gamma)?
        };
        // `· (1/Z)` as a multiplication by a scalar tensor, not `affine`: candle drops an
        // `affine(0, ·)` from the graph, which left no gradient at all when `Z = 0` (valid
        // pixels whose static weights are all 0). Same rounding as `affine`.
        let inv_z_t = Tensor::new(inv_z, dev)?.to_dtype(dtype)?;
        let loss = (modf.neg()? * &logpt)?
            .mul(&s_map)?
            .sum_all()?
            .mul(&inv_z_t)?;
        let fsum = per_class_host(&inp.oh.broadcast_mul(&modf.detach().unsqueeze(1)?)?)?;
        Ok((loss, report_with_sums(fsum, inp.count.clone())))
    }

    /// OHEM: the selection (on the host, no gradient) then the kept pixels' weighted mean.
    fn portable_ohem(
        &self,
        inp: &Inputs,
        sel: OhemSelection,
        fixed: Option<&CeStep>,
    ) -> Result<(Tensor, StepReport)> {
        let (c, ignore_index) = (inp.c, self.opts.ignore_index());
        let ce_map = (&inp.oh * &inp.logp)?.sum(1)?.neg()?;
        let lab = inp.labels.flatten_all()?.to_vec1::<u32>()?;
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
        let keep = ohem_keep(&ce_marked, sel, inp.n_img);
        let mut kept = vec![0.0f64; c];
        let mut factor = vec![0.0f64; lab.len()];
        let mut zk = 0.0;
        for (i, &k) in keep.iter().enumerate() {
            if k {
                let y = lab[i] as usize;
                kept[y] += 1.0;
                factor[i] = inp.s[y];
                zk += inp.s[y];
            }
        }
        let n_valid = inp.count.iter().sum::<f64>();
        // A shard of a sharded step (threshold selection): the step's `1/Z`.
        let inv = match fixed {
            Some(f) => f.inv_z,
            None => inv(sel.normaliser(zk, n_valid, inp.pixels)),
        };
        factor.iter_mut().for_each(|f| *f *= inv);
        let f = Tensor::from_vec(factor, ce_map.shape(), &Device::Cpu)?
            .to_dtype(inp.dtype)?
            .to_device(inp.dev)?;
        let loss = (ce_map * f)?.sum_all()?;
        Ok((loss, report_with_sums(kept, inp.count.clone())))
    }
}
