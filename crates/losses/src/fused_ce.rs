//! The fused CPU kernel of the cross-entropy family: a candle [`CustomOp2`] over
//! `(logits f32 (N, C, H, W) contiguous, target (N, H, W) u8/u32/i64)`.
//!
//! * Forward (one parallel pass over pixel blocks): per-pixel max, argmax, log-sum-exp and
//!   cross entropy, accumulated into per-class sums (pixel count, true positives, predictions,
//!   CE, focal terms); OHEM keeps the per-pixel CE for its selection. The class weights of the
//!   step (recall, precision) follow from these sums, and the loss is `Σ_c W_c · CE_sum_c / Z`,
//!   so the logits are read once.
//! * Backward (one parallel pass): recomputes the softmax of each block and writes
//!   `∂L/∂z_{n,j} = g · f_n · (p_{n,j} - [j = y_n])` where `f_n` is the pixel's factor (class
//!   weight over `Z`, times the focal derivative term for Focal, the keep mask for OHEM) and `g`
//!   the incoming gradient. Nothing is stored between the passes but `C` (or, for OHEM, `N·H·W`)
//!   factors, and no gradient is computed when nobody asks for it.
//!
//! Work is split into blocks of [`BLOCK`] consecutive pixels of one image; within a block the
//! loops run over pixels for one class at a time, so they read contiguous memory and
//! auto-vectorise.

// Kernel loops index several equally long slices at once; that is the clearer form here.
#![allow(clippy::needless_range_loop)]

use crate::blocks::{block_max, block_max_only, class_of, softmax_into, BLOCK, TASKS_PER_GROUP};
use crate::ce_mode::{CeMode, ClassStats, StepReport};
use crate::fast_math::{fast_exp, fast_ln, kernel_buffer};
use crate::ohem_selection::{ohem_keep, OhemSelection};
use crate::LossError;
use candle_core::Result;
use rayon::prelude::*;
use recallseg_kernels::fused::FusedLoss;
use recallseg_kernels::simd::use_avx2;
use recallseg_kernels::storage::Label;
use recallseg_kernels::{dispatch, SavedState, SyncPtr};
use std::sync::Arc;

/// State the forward pass leaves for the backward pass and for the loss object.
#[derive(Debug, Clone)]
pub(crate) struct FusedOut {
    /// Weights to report and the updated recall average.
    pub step: StepReport,
    /// `W_c / Z` (weighted members) or `s_c / Z` (Focal), per class.
    class_factor: Vec<f32>,
    /// OHEM: the factor of every pixel (`s_y / Z_kept` if kept, else 0).
    pixel_factor: Option<Vec<f32>>,
    /// Focal: γ.
    gamma: Option<f32>,
    /// Label smoothing `ε` (0 = none): the gradient is `f (p − (1 − ε) onehot − ε/C)`.
    smoothing: f32,
    /// Softmax probabilities (`N·C·H·W`), kept when a gradient will be asked for; the backward
    /// pass turns them into the gradient in place.
    probs: Option<Vec<f32>>,
    /// Focal: the per-pixel factor `F_n` (kept with `probs`).
    focal_f: Option<Vec<f32>>,
}

/// The fused cross-entropy-family op (see the module documentation).
pub(crate) struct FusedCe {
    pub n_classes: usize,
    pub ignore_index: u32,
    /// Static class weights (ones when none).
    pub static_w: Vec<f64>,
    /// Focal's per-class `α` (numerator only), `None` = ones.
    pub focal_alpha: Option<Vec<f64>>,
    /// Label smoothing `ε` (Plain and class-weighted members; 0 = none).
    pub smoothing: f64,
    pub mode: CeMode,
    /// The recall moving average before this step.
    pub ema_prev: Option<Vec<f32>>,
    /// A shard of a sharded step: the per-class factors `W_c / Z` (Focal: `s_c α_c / Z`) fixed
    /// by the step's statistics, used instead of the shard's own weights and normaliser (the
    /// value is then this shard's numerator over the batch's `Z`, and no argmax is needed).
    pub fixed: Option<Vec<f64>>,
    /// Only count the argmax statistics of the valid pixels (`StepReport::stats`; the value is
    /// 0 and there is no gradient): a shard's statistics in one parallel pass.
    pub stats_only: bool,
    /// Filled by the forward pass; the loss object that builds the op reads the step report
    /// from it.
    pub out: Arc<SavedState<FusedOut>>,
    /// Keep the softmax for the backward pass (the logits take part in a graph).
    pub keep: bool,
}

/// Per-class accumulators of the forward pass.
#[derive(Clone)]
struct Acc {
    count: Vec<u64>,
    tp: Vec<u64>,
    pred: Vec<u64>,
    ce: Vec<f64>,
    focal_w: Vec<f64>,
    focal_l: Vec<f64>,
    /// Label smoothing: per class, `Σ_n Σ_k (−log p_{n,k})`.
    smooth: Vec<f64>,
    bad: Option<i64>,
}

impl Acc {
    fn new(c: usize) -> Self {
        Self {
            count: vec![0; c],
            tp: vec![0; c],
            pred: vec![0; c],
            ce: vec![0.0; c],
            focal_w: vec![0.0; c],
            focal_l: vec![0.0; c],
            smooth: vec![0.0; c],
            bad: None,
        }
    }
    fn merge(mut self, o: Acc) -> Acc {
        for k in 0..self.count.len() {
            self.count[k] += o.count[k];
            self.tp[k] += o.tp[k];
            self.pred[k] += o.pred[k];
            self.ce[k] += o.ce[k];
            self.focal_w[k] += o.focal_w[k];
            self.focal_l[k] += o.focal_l[k];
            self.smooth[k] += o.smooth[k];
        }
        self.bad = self.bad.or(o.bad);
        self
    }
}

/// `((1 - p)^γ, F)` for a pixel with cross entropy `ce` (`p = e^{-ce}`), where
/// `F = (1-p)^γ - γ (1-p)^{γ-1} p ln p` is the factor that turns the CE gradient into the focal
/// gradient.
#[inline]
pub(crate) fn focal_terms(ce: f32, gamma: f32) -> (f32, f32) {
    if gamma == 0.0 {
        return (1.0, 1.0);
    }
    let p = (-ce).exp();
    let q = -(-ce).exp_m1();
    if q <= 0.0 {
        return (0.0, 0.0);
    }
    let (m, m1) = if gamma == 1.0 {
        (q, 1.0)
    } else if gamma == 2.0 {
        (q * q, q)
    } else {
        let m = q.powf(gamma);
        (m, m / q)
    };
    (m, m + gamma * m1 * p * ce)
}

/// Per-pixel `Σ_k exp(z_k - max)` of one block.
#[inline(always)]
fn block_sumexp(img: &[f32], hw: usize, c: usize, a: usize, mx: &[f32], sm: &mut [f32]) {
    let l = mx.len();
    sm.iter_mut().for_each(|v| *v = 0.0);
    for k in 0..c {
        let row = &img[k * hw + a..k * hw + a + l];
        for p in 0..l {
            sm[p] += fast_exp(row[p] - mx[p]);
        }
    }
}

/// Everything one forward work item needs.
struct FwdCtx<'a, L> {
    x: &'a [f32],
    labels: &'a [L],
    c: usize,
    hw: usize,
    nblk: usize,
    ignore: i64,
    gamma: Option<f32>,
    ohem: bool,
    need_argmax: bool,
    /// Count only (`count`, `tp`, `pred`): a shard's statistics, no cross entropy.
    stats_only: bool,
    keep: bool,
    smooth: bool,
    pp: SyncPtr,
    fp: SyncPtr,
    ce_ptr: SyncPtr,
}

// The forward pass over one pixel block, also compiled for AVX2 + FMA (8-wide `exp`) as
// `fwd_block_avx2`.
dispatch!(fwd_block_dispatch, fwd_block, fast = fwd_block_avx2, [L: Label],
    (ctx: &FwdCtx<'_, L>, acc: &mut Acc, t: usize));

/// A shard's statistics over one block: counts, predictions and true positives of its valid
/// pixels (`am`: their argmax).
#[inline(always)]
fn count_block<L: Label>(acc: &mut Acc, lab: &[L], am: &[u32], ignore: i64, c: usize) {
    for (p, &pk) in am.iter().enumerate() {
        match class_of(lab[p].into(), ignore, c) {
            Ok(Some(y)) => {
                let pk = pk as usize;
                acc.count[y] += 1;
                acc.pred[pk] += 1;
                if pk == y {
                    acc.tp[y] += 1;
                }
            }
            Ok(None) => {}
            Err(bad) => acc.bad = acc.bad.or(Some(bad)),
        }
    }
}

/// The forward pass over one pixel block (work item `t`), accumulated into `acc`.
#[inline(always)]
fn fwd_block<L: Label>(ctx: &FwdCtx<'_, L>, acc: &mut Acc, t: usize) {
    let FwdCtx {
        x,
        labels,
        c,
        hw,
        nblk,
        ignore,
        gamma,
        ohem,
        need_argmax,
        stats_only,
        keep,
        smooth,
        pp,
        fp,
        ce_ptr,
    } = *ctx;
    let (img_i, b) = (t / nblk, t % nblk);
    let a = b * BLOCK;
    let l = BLOCK.min(hw - a);
    let img = &x[img_i * c * hw..(img_i + 1) * c * hw];
    let lab = &labels[img_i * hw + a..img_i * hw + a + l];
    let mut mx = [0f32; BLOCK];
    let mut am = [0u32; BLOCK];
    let mut sm = [0f32; BLOCK];
    if need_argmax {
        block_max(img, hw, c, a, &mut mx[..l], &mut am[..l]);
    } else {
        block_max_only(img, hw, c, a, &mut mx[..l]);
    }
    if stats_only {
        count_block(acc, lab, &am[..l], ignore, c);
        return;
    }
    if keep {
        // SAFETY: work item `t` owns probs[img_i·c·hw + k·hw + a .. + l] for every k.
        unsafe { softmax_into(pp, img_i * c * hw, img, hw, c, a, &mx[..l], &mut sm[..l]) };
    } else {
        block_sumexp(img, hw, c, a, &mx[..l], &mut sm[..l]);
    }
    let mut lse = [0f32; BLOCK];
    for p in 0..l {
        lse[p] = fast_ln(sm[p]);
    }
    // Label smoothing: Σ_k z_k per pixel, so that Σ_k (−log p_k) = C (max + lse) − Σ_k z_k.
    let mut zsum = [0f32; BLOCK];
    if smooth {
        for k in 0..c {
            let row = &img[k * hw + a..k * hw + a + l];
            for p in 0..l {
                zsum[p] += row[p];
            }
        }
    }
    for p in 0..l {
        let y = match class_of(lab[p].into(), ignore, c) {
            Ok(Some(y)) => y,
            Ok(None) => {
                if ohem {
                    // SAFETY: pixel img_i*hw+a+p belongs to this block only.
                    unsafe { *ce_ptr.get().add(img_i * hw + a + p) = f32::NEG_INFINITY };
                }
                continue;
            }
            Err(bad) => {
                acc.bad = acc.bad.or(Some(bad));
                continue;
            }
        };
        let ce = mx[p] + lse[p] - img[y * hw + a + p];
        let ce = ce.max(0.0);
        acc.count[y] += 1;
        acc.ce[y] += ce as f64;
        if smooth {
            acc.smooth[y] += (c as f32 * (mx[p] + lse[p]) - zsum[p]).max(0.0) as f64;
        }
        let pk = am[p] as usize;
        acc.pred[pk] += 1;
        if pk == y {
            acc.tp[y] += 1;
        }
        if let Some(g) = gamma {
            let (m, f) = focal_terms(ce, g);
            acc.focal_w[y] += m as f64;
            acc.focal_l[y] += (m * ce) as f64;
            if keep {
                // SAFETY: pixel img_i*hw+a+p belongs to this block only.
                unsafe { *fp.get().add(img_i * hw + a + p) = f };
            }
        }
        if ohem {
            // SAFETY: as above.
            unsafe { *ce_ptr.get().add(img_i * hw + a + p) = ce };
        }
    }
}

impl FusedOut {
    /// The output of a step with the given report and per-class factors (no per-pixel factor,
    /// no focal γ, no smoothing, nothing kept yet).
    fn new(step: StepReport, class_factor: Vec<f32>) -> Self {
        Self {
            step,
            class_factor,
            pixel_factor: None,
            gamma: None,
            smoothing: 0.0,
            probs: None,
            focal_f: None,
        }
    }
}

/// `Σ_c a_c · CE_c`, or with label smoothing `Σ_c a_c ((1 − ε) CE_c + (ε/C) Σ_k (−log p_k))`,
/// from the per-class sums of the forward pass.
fn weighted_ce_sum(a: &[f64], acc: &Acc, eps: f64, c: usize) -> f64 {
    if eps > 0.0 {
        let ec = eps / c as f64;
        a.iter()
            .zip(acc.ce.iter().zip(&acc.smooth))
            .map(|(a, (ce, sm))| a * ((1.0 - eps) * ce + ec * sm))
            .sum::<f64>()
    } else {
        a.iter().zip(&acc.ce).map(|(a, b)| a * b).sum::<f64>()
    }
}

/// Per-class means `sum / count` as reported weights (`NaN` for absent classes).
fn per_class_mean(sums: &[f64], count: &[f64]) -> Vec<f32> {
    sums.iter()
        .zip(count)
        .map(|(f, n)| if *n > 0.0 { (f / n) as f32 } else { f32::NAN })
        .collect()
}

/// The buffers the forward pass fills besides its sums.
struct FwdBuffers {
    /// OHEM: every pixel's cross entropy (`-inf` at ignored pixels).
    ce_pix: Vec<f32>,
    /// The softmax, kept for the backward pass.
    probs: Vec<f32>,
    /// Focal's per-pixel factor, kept for the backward pass.
    focal_f: Vec<f32>,
}

impl FusedCe {
    fn forward_impl<L: Label>(&self, x: &[f32], dims: [usize; 4], labels: &[L]) -> Result<f64> {
        let [n, c, h, w] = dims;
        let gamma = match self.mode {
            CeMode::Focal { gamma } => Some(gamma as f32), // the kernel computes in f32
            _ => None,
        };
        let (acc, buf) = self.accumulate(x, dims, labels, gamma);
        if let Some(label) = acc.bad {
            return Err(LossError::LabelOutOfRange {
                label,
                n_classes: c,
                ignore_index: self.ignore_index,
            }
            .into_candle());
        }
        let count: Vec<f64> = acc.count.iter().map(|&v| v as f64).collect();
        if self.stats_only {
            let stats = ClassStats {
                count,
                tp: acc.tp.iter().map(|&v| v as f64).collect(),
                pred: acc.pred.iter().map(|&v| v as f64).collect(),
            };
            self.out.put(FusedOut::new(
                StepReport {
                    stats: Some(stats),
                    ..Default::default()
                },
                Vec::new(),
            ))?;
            return Ok(0.0);
        }
        let pixels = n * h * w;
        let (loss, mut out) = match &self.mode {
            CeMode::Plain | CeMode::ClassWeighted(_) if self.fixed.is_some() => {
                self.finish_fixed(&acc, c)
            }
            CeMode::Plain | CeMode::ClassWeighted(_) => self.finish_weighted(&acc, &count, pixels),
            CeMode::Focal { gamma } => self.finish_focal(&acc, count, pixels, *gamma),
            CeMode::Ohem(sel) => self.finish_ohem(*sel, &buf.ce_pix, labels, count, n),
        };
        if self.keep {
            out.probs = Some(buf.probs);
            if gamma.is_some() {
                out.focal_f = Some(buf.focal_f);
            }
        }
        self.out.put(out)?;
        Ok(loss)
    }

    /// The parallel pass over every pixel block: the per-class sums and the buffers.
    fn accumulate<L: Label>(
        &self,
        x: &[f32],
        dims: [usize; 4],
        labels: &[L],
        gamma: Option<f32>,
    ) -> (Acc, FwdBuffers) {
        let [n, c, h, w] = dims;
        let hw = h * w;
        let nblk = hw.div_ceil(BLOCK);
        let ohem = matches!(self.mode, CeMode::Ohem(_));
        let need_argmax = self.stats_only
            || (matches!(self.mode, CeMode::ClassWeighted(_)) && self.fixed.is_none());
        let keep = self.keep;
        let mut buf = FwdBuffers {
            ce_pix: if ohem { vec![0f32; n * hw] } else { Vec::new() },
            probs: if keep {
                kernel_buffer(n * c * hw)
            } else {
                Vec::new()
            },
            focal_f: if keep && gamma.is_some() {
                vec![0f32; n * hw]
            } else {
                Vec::new()
            },
        };
        let ctx = FwdCtx {
            x,
            labels,
            c,
            hw,
            nblk,
            ignore: self.ignore_index as i64,
            gamma,
            ohem,
            need_argmax,
            stats_only: self.stats_only,
            keep,
            smooth: self.smoothing > 0.0,
            pp: SyncPtr(buf.probs.as_mut_ptr()),
            fp: SyncPtr(buf.focal_f.as_mut_ptr()),
            ce_ptr: SyncPtr(buf.ce_pix.as_mut_ptr()),
        };
        let avx2 = use_avx2();
        // Fixed groups of blocks, each accumulated in order, merged in group order: the f64 sums
        // do not depend on how rayon schedules the work or on the thread count.
        let tasks = n * nblk;
        let acc = (0..tasks.div_ceil(TASKS_PER_GROUP))
            .into_par_iter()
            .map(|g| {
                let mut acc = Acc::new(c);
                for t in g * TASKS_PER_GROUP..((g + 1) * TASKS_PER_GROUP).min(tasks) {
                    fwd_block_dispatch(avx2, &ctx, &mut acc, t);
                }
                acc
            })
            .collect::<Vec<Acc>>()
            .into_iter()
            .fold(Acc::new(c), Acc::merge);
        (acc, buf)
    }

    /// A shard of a sharded step (Plain and class-weighted members): the step's factors
    /// `W_c / Z`, this shard's numerator.
    fn finish_fixed(&self, acc: &Acc, c: usize) -> (f64, FusedOut) {
        let f = self.fixed.as_deref().unwrap_or_default();
        let eps = self.smoothing;
        let loss = weighted_ce_sum(f, acc, eps, c);
        let mut out = FusedOut::new(StepReport::default(), f.iter().map(|&v| v as f32).collect());
        out.smoothing = eps as f32;
        (loss, out)
    }

    /// Plain (static weights) and class-weighted members (weights from the batch's argmax
    /// statistics and the moving average).
    fn finish_weighted(&self, acc: &Acc, count: &[f64], pixels: usize) -> (f64, FusedOut) {
        let s = &self.static_w;
        let c = self.n_classes;
        let (wts, step) = if matches!(self.mode, CeMode::Plain) {
            (s.clone(), StepReport::default())
        } else {
            let st = ClassStats {
                count: count.to_vec(),
                tp: acc.tp.iter().map(|&v| v as f64).collect(),
                pred: acc.pred.iter().map(|&v| v as f64).collect(),
            };
            let d = self.mode.class_weights(&st, self.ema_prev.as_deref());
            let w = self.mode.final_weights(s, &d.w);
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
        let z = self.mode.normaliser(s, &wts, count, pixels);
        let inv_z = if z > 0.0 { 1.0 / z } else { 0.0 };
        let eps = self.smoothing;
        let loss = weighted_ce_sum(&wts, acc, eps, c) * inv_z;
        let mut out = FusedOut::new(step, wts.iter().map(|v| (v * inv_z) as f32).collect());
        out.smoothing = eps as f32;
        (loss, out)
    }

    /// Focal: `Σ_c s_c α_c Σ (1 − p)^γ CE / Z` from the per-class focal sums.
    fn finish_focal(
        &self,
        acc: &Acc,
        count: Vec<f64>,
        pixels: usize,
        gamma: f64,
    ) -> (f64, FusedOut) {
        let s = &self.static_w;
        // α multiplies the numerator only.
        let sa: Vec<f64> = match &self.focal_alpha {
            Some(a) => s.iter().zip(a).map(|(x, y)| x * y).collect(),
            None => s.clone(),
        };
        let (factor, loss): (Vec<f64>, f64) = match &self.fixed {
            Some(f) => (
                f.clone(),
                f.iter().zip(&acc.focal_l).map(|(a, b)| a * b).sum(),
            ),
            None => {
                let z = self.mode.normaliser(s, s, &count, pixels);
                let inv_z = crate::ce_mode::inv(z);
                (
                    sa.iter().map(|v| v * inv_z).collect(),
                    sa.iter().zip(&acc.focal_l).map(|(a, b)| a * b).sum::<f64>() * inv_z,
                )
            }
        };
        let step = StepReport {
            report: Some(per_class_mean(&acc.focal_w, &count)),
            ema: None,
            sums: Some((acc.focal_w.clone(), count)),
            stats: None,
        };
        let mut out = FusedOut::new(step, factor.iter().map(|&v| v as f32).collect());
        out.gamma = Some(gamma as f32);
        (loss, out)
    }

    /// OHEM: the selection over the pixels' cross entropies, then the kept pixels' weighted
    /// mean.
    fn finish_ohem<L: Label>(
        &self,
        sel: OhemSelection,
        ce_pix: &[f32],
        labels: &[L],
        count: Vec<f64>,
        n: usize,
    ) -> (f64, FusedOut) {
        let (s, c) = (&self.static_w, self.n_classes);
        let keep = ohem_keep(ce_pix, sel, n);
        let mut kept = vec![0.0f64; c];
        let mut zk = 0.0f64;
        let mut lsum = 0.0f64;
        let mut factor = vec![0f32; ce_pix.len()];
        // A shard of a sharded step (threshold selection): the kept pixels' factors are the
        // step's `s_y / Z`.
        let fixed = self.fixed.as_deref();
        for (i, &k) in keep.iter().enumerate() {
            if k {
                let y = labels[i].into() as usize;
                kept[y] += 1.0;
                zk += s[y];
                let a = fixed.map_or(s[y], |f| f[y]);
                lsum += a * ce_pix[i] as f64;
                factor[i] = a as f32;
            }
        }
        let loss = if fixed.is_some() {
            lsum
        } else {
            // `ce_pix` has one entry per pixel of the batch.
            let zk = sel.normaliser(zk, count.iter().sum(), ce_pix.len());
            let inv = if zk > 0.0 { 1.0 / zk } else { 0.0 };
            factor
                .iter_mut()
                .for_each(|f| *f = (*f as f64 * inv) as f32);
            lsum * inv
        };
        let step = StepReport {
            report: Some(per_class_mean(&kept, &count)),
            ema: None,
            sums: Some((kept, count)),
            stats: None,
        };
        let mut out = FusedOut::new(step, vec![0.0; c]);
        out.pixel_factor = Some(factor);
        (loss, out)
    }

    /// The backward pass over the softmax kept by the forward pass, in place:
    /// `probs[n, j] <- f_n (probs[n, j] - [j = y_n])`.
    fn backward_in_place<L: Label>(
        &self,
        mut probs: Vec<f32>,
        dims: [usize; 4],
        labels: &[L],
        g0: f32,
        out: &FusedOut,
    ) -> Vec<f32> {
        let [n, c, h, w] = dims;
        let hw = h * w;
        let nblk = hw.div_ceil(BLOCK);
        let ignore = self.ignore_index as i64;
        let gp = SyncPtr(probs.as_mut_ptr());
        // Label smoothing: ∂/∂z_j = f (p_j − ε/C − (1 − ε)[j = y]).
        let (ec, one_m) = (out.smoothing / c as f32, 1.0 - out.smoothing);
        (0..n * nblk).into_par_iter().for_each(|t| {
            let (img_i, b) = (t / nblk, t % nblk);
            let a = b * BLOCK;
            let l = BLOCK.min(hw - a);
            let lab = &labels[img_i * hw + a..img_i * hw + a + l];
            let gbase = img_i * c * hw;
            let mut fct = [0f32; BLOCK];
            let mut ys = [0usize; BLOCK];
            for p in 0..l {
                let i = img_i * hw + a + p;
                fct[p] = match class_of(lab[p].into(), ignore, c) {
                    Ok(Some(y)) => {
                        ys[p] = y;
                        let base = match &out.pixel_factor {
                            Some(pf) => pf[i],
                            None => out.class_factor[y],
                        };
                        match &out.focal_f {
                            Some(ff) => base * ff[i] * g0,
                            None => base * g0,
                        }
                    }
                    _ => 0.0,
                };
            }
            for k in 0..c {
                // SAFETY: this block owns probs[gbase + k*hw + a .. + l] for every k.
                let row =
                    unsafe { std::slice::from_raw_parts_mut(gp.get().add(gbase + k * hw + a), l) };
                if ec > 0.0 {
                    for p in 0..l {
                        row[p] = (row[p] - ec) * fct[p];
                    }
                } else {
                    for p in 0..l {
                        row[p] *= fct[p];
                    }
                }
            }
            for p in 0..l {
                if fct[p] != 0.0 {
                    // SAFETY: as above.
                    unsafe { *gp.get().add(gbase + ys[p] * hw + a + p) -= one_m * fct[p] };
                }
            }
        });
        probs
    }

    fn backward_impl<L: Label>(
        &self,
        x: &[f32],
        dims: [usize; 4],
        labels: &[L],
        g0: f32,
        out: &FusedOut,
    ) -> Vec<f32> {
        let [n, c, h, w] = dims;
        let hw = h * w;
        let nblk = hw.div_ceil(BLOCK);
        let ignore = self.ignore_index as i64;
        let mut grad = kernel_buffer(n * c * hw);
        let gp = SyncPtr(grad.as_mut_ptr());
        let (ec, one_m) = (out.smoothing / c as f32, 1.0 - out.smoothing);
        (0..n * nblk).into_par_iter().for_each(|t| {
            let (img_i, b) = (t / nblk, t % nblk);
            let a = b * BLOCK;
            let l = BLOCK.min(hw - a);
            let img = &x[img_i * c * hw..(img_i + 1) * c * hw];
            let lab = &labels[img_i * hw + a..img_i * hw + a + l];
            let gbase = img_i * c * hw;
            let mut mx = [0f32; BLOCK];
            let mut am = [0u32; BLOCK];
            let mut sm = [0f32; BLOCK];
            let mut scale = [0f32; BLOCK];
            let mut fct = [0f32; BLOCK];
            let mut ys = [0usize; BLOCK];
            block_max(img, hw, c, a, &mut mx[..l], &mut am[..l]);
            sm[..l].iter_mut().for_each(|v| *v = 0.0);
            for k in 0..c {
                let row = &img[k * hw + a..k * hw + a + l];
                // SAFETY: this block owns grad[gbase + k*hw + a .. + l] for every k.
                let grow =
                    unsafe { std::slice::from_raw_parts_mut(gp.get().add(gbase + k * hw + a), l) };
                for p in 0..l {
                    let e = fast_exp(row[p] - mx[p]);
                    grow[p] = e;
                    sm[p] += e;
                }
            }
            for p in 0..l {
                let f = match class_of(lab[p].into(), ignore, c) {
                    Ok(Some(y)) => {
                        ys[p] = y;
                        let base = match &out.pixel_factor {
                            Some(pf) => pf[img_i * hw + a + p],
                            None => out.class_factor[y],
                        };
                        match out.gamma {
                            Some(gm) if base != 0.0 => {
                                let ce = (mx[p] + sm[p].ln() - img[y * hw + a + p]).max(0.0);
                                base * focal_terms(ce, gm).1
                            }
                            _ => base,
                        }
                    }
                    _ => 0.0,
                };
                let f = f * g0;
                fct[p] = f;
                scale[p] = f / sm[p];
            }
            for k in 0..c {
                // SAFETY: as above.
                let grow =
                    unsafe { std::slice::from_raw_parts_mut(gp.get().add(gbase + k * hw + a), l) };
                if ec > 0.0 {
                    for p in 0..l {
                        grow[p] = grow[p] * scale[p] - ec * fct[p];
                    }
                } else {
                    for p in 0..l {
                        grow[p] *= scale[p];
                    }
                }
            }
            for p in 0..l {
                if fct[p] != 0.0 {
                    // SAFETY: as above.
                    unsafe { *gp.get().add(gbase + ys[p] * hw + a + p) -= one_m * fct[p] };
                }
            }
        });
        grad
    }
}

impl FusedLoss for FusedCe {
    const NAME: &'static str = "recallseg-fused-ce";

    fn n_classes(&self) -> usize {
        self.n_classes
    }

    fn forward<L: Label>(&self, x: &[f32], dims: [usize; 4], labels: &[L]) -> Result<f64> {
        self.forward_impl(x, dims, labels)
    }

    fn backward<L: Label>(
        &self,
        x: &[f32],
        dims: [usize; 4],
        labels: &[L],
        g0: f32,
    ) -> Result<Vec<f32>> {
        self.out.with(|out| {
            // The kept softmax is consumed by the first backward pass; a second one recomputes.
            let kept = out.probs.take();
            let out = &*out;
            match kept {
                Some(p) => self.backward_in_place(p, dims, labels, g0, out),
                None => self.backward_impl(x, dims, labels, g0, out),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 build of the forward block and the portable-SIMD build agree (the tests of the
    /// crate otherwise exercise only the one the machine picks).
    #[test]
    fn avx2_and_baseline_forward_blocks_agree() {
        let (n, c, hw) = (2usize, 5usize, 300usize);
        let mut state = 99u64;
        let mut rnd = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        let x: Vec<f32> = (0..n * c * hw).map(|_| rnd() * 8.0 - 4.0).collect();
        let labels: Vec<u8> = (0..n * hw)
            .map(|_| {
                let r = rnd();
                if r < 0.1 {
                    255
                } else {
                    (r * 4.0) as u8
                }
            })
            .collect();
        let nblk = hw.div_ceil(BLOCK);
        for gamma in [None, Some(2.0f32)] {
            let run = |use_avx2: bool| {
                let mut probs = vec![0f32; n * c * hw];
                let mut ff = vec![0f32; n * hw];
                let mut ce = vec![0f32; n * hw];
                let ctx = FwdCtx {
                    x: &x,
                    labels: &labels,
                    c,
                    hw,
                    nblk,
                    ignore: 255,
                    gamma,
                    ohem: true,
                    need_argmax: true,
                    stats_only: false,
                    keep: true,
                    smooth: true,
                    pp: SyncPtr(probs.as_mut_ptr()),
                    fp: SyncPtr(ff.as_mut_ptr()),
                    ce_ptr: SyncPtr(ce.as_mut_ptr()),
                };
                let mut acc = Acc::new(c);
                for t in 0..n * nblk {
                    #[cfg(target_arch = "x86_64")]
                    if use_avx2 {
                        // SAFETY: only called when the CPU has AVX2 and FMA.
                        unsafe { fwd_block_avx2(&ctx, &mut acc, t) };
                        continue;
                    }
                    let _ = use_avx2;
                    fwd_block(&ctx, &mut acc, t);
                }
                (acc, probs, ff, ce)
            };
            let base = run(false);
            #[cfg(target_arch = "x86_64")]
            if use_avx2() {
                let fast = run(true);
                assert_eq!(base.0.count, fast.0.count);
                assert_eq!(base.0.tp, fast.0.tp);
                assert_eq!(base.0.pred, fast.0.pred);
                for k in 0..c {
                    assert!((base.0.ce[k] - fast.0.ce[k]).abs() < 1e-4 * base.0.ce[k].max(1.0));
                    assert!(
                        (base.0.focal_l[k] - fast.0.focal_l[k]).abs()
                            < 1e-4 * base.0.focal_l[k].max(1.0)
                    );
                    assert!(
                        (base.0.smooth[k] - fast.0.smooth[k]).abs()
                            < 1e-4 * base.0.smooth[k].max(1.0)
                    );
                }
                let d = |a: &[f32], b: &[f32]| {
                    a.iter()
                        .zip(b)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0f32, f32::max)
                };
                assert!(d(&base.1, &fast.1) < 1e-6);
                assert!(d(&base.2, &fast.2) < 1e-5);
                assert!(d(&base.3, &fast.3) < 1e-5);
            }
            // The baseline against a direct f64 computation of the per-class CE sums.
            let mut want = vec![0f64; c];
            for i in 0..n * hw {
                let y = labels[i];
                if y == 255 {
                    continue;
                }
                let (img, p) = (i / hw, i % hw);
                let z: Vec<f64> = (0..c)
                    .map(|k| x[img * c * hw + k * hw + p] as f64)
                    .collect();
                let m = z.iter().cloned().fold(f64::MIN, f64::max);
                let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
                want[y as usize] += lse - z[y as usize];
            }
            for k in 0..c {
                assert!(
                    (base.0.ce[k] - want[k]).abs() < 1e-4 * want[k].max(1.0),
                    "{k}"
                );
            }
        }
    }
}
