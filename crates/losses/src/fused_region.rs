//! The fused CPU kernel of SoftIoU, Dice and Tversky: a candle [`CustomOp2`] over
//! `(logits f32 (N, C, H, W) contiguous, target (N, H, W))`.
//!
//! * Forward (one parallel pass over pixel blocks): softmax of every pixel, accumulated into the
//!   soft intersections `I`, prediction sums `P` and target counts `G` per group and class; the
//!   loss and the coefficients `α, β` of `∂L/∂p_{n,c} = α_{g,c} + β_{g,c} t_{n,c}` follow on the
//!   host ([`crate::region_loss::region_loss`]).
//! * Backward (one parallel pass): recomputes the softmax and applies its Jacobian,
//!   `∂L/∂z_{n,j} = g · p_j (G_j - Σ_k p_k G_k)` with `G_k = α_{g,k} + β_{g,k} [k = y_n]`.

// Kernel loops index several equally long slices at once; that is the clearer form here.
#![allow(clippy::needless_range_loop)]

use crate::blocks::{block_max, class_of, BLOCK, TASKS_PER_GROUP};
use crate::fast_math::{fast_exp, kernel_buffer};
use crate::region_loss::{region_loss, RegionKind, RegionOpts};
use crate::LossError;
use candle_core::Result;
use rayon::prelude::*;
use recallseg_kernels::fused::FusedLoss;
use recallseg_kernels::simd::use_avx2;
use recallseg_kernels::storage::Label;
use recallseg_kernels::{dispatch, SavedState, SyncPtr};
use std::sync::Arc;

/// The fused overlap-loss op (see the module documentation).
pub(crate) struct FusedRegion {
    pub n_classes: usize,
    pub ignore_index: u32,
    pub static_w: Vec<f64>,
    pub kind: RegionKind,
    /// Smoothing and log form (Dice, Tversky, Jaccard).
    pub ro: RegionOpts,
    /// `(α, β)` per group × class, left by the forward pass for the backward pass.
    pub coef: SavedState<(Vec<f32>, Vec<f32>)>,
    /// Keep the softmax for the backward pass (the logits take part in a graph).
    pub keep: bool,
    /// The kept softmax (`N·C·H·W`, zero at ignored pixels), consumed by the backward pass.
    pub probs: SavedState<Vec<f32>>,
    /// A shard of a sharded step (batch kinds): the step's `(α, β, constant)`; the value is then
    /// the linearisation `Σ_c α_c P_c + β_c I_c + constant` of the batch's loss at the batch's
    /// sums, whose gradient is the batch's (see `crate::region`'s `shard` module).
    pub fixed: Option<(Vec<f64>, Vec<f64>, f64)>,
    /// Where to leave the sums `(I, P, G)` of the pass (a shard's statistics), if asked.
    pub sums_out: Option<Arc<SavedState<[Vec<f64>; 3]>>>,
}

struct Sums {
    i: Vec<f64>,
    p: Vec<f64>,
    g: Vec<f64>,
    bad: Option<i64>,
}

impl Sums {
    fn new(len: usize) -> Self {
        Self {
            i: vec![0.0; len],
            p: vec![0.0; len],
            g: vec![0.0; len],
            bad: None,
        }
    }
    fn merge(mut self, o: Sums) -> Sums {
        for k in 0..self.i.len() {
            self.i[k] += o.i[k];
            self.p[k] += o.p[k];
            self.g[k] += o.g[k];
        }
        self.bad = self.bad.or(o.bad);
        self
    }
}

/// Everything one forward work item needs.
struct RegCtx<'a, L> {
    x: &'a [f32],
    labels: &'a [L],
    c: usize,
    hw: usize,
    nblk: usize,
    ignore: i64,
    groups: usize,
    keep: bool,
    pp: SyncPtr,
}

// The forward pass over one pixel block, also compiled for AVX2 + FMA.
dispatch!(region_block_dispatch, region_block, [L: Label],
    (ctx: &RegCtx<'_, L>, acc: &mut Sums, e: &mut [f32], t: usize));

/// The forward pass over one pixel block (work item `t`): softmax, soft sums into `acc`, the
/// probabilities kept when asked; `e` is scratch of `C · BLOCK` floats.
#[inline(always)]
fn region_block<L: Label>(ctx: &RegCtx<'_, L>, acc: &mut Sums, e: &mut [f32], t: usize) {
    let RegCtx {
        x,
        labels,
        c,
        hw,
        nblk,
        ignore,
        groups,
        keep,
        pp,
    } = *ctx;
    let (img_i, b) = (t / nblk, t % nblk);
    let gi = if groups == 1 { 0 } else { img_i };
    let a = b * BLOCK;
    let l = BLOCK.min(hw - a);
    let img = &x[img_i * c * hw..(img_i + 1) * c * hw];
    let lab = &labels[img_i * hw + a..img_i * hw + a + l];
    let mut mx = [0f32; BLOCK];
    let mut am = [0u32; BLOCK];
    let mut sm = [0f32; BLOCK];
    let mut vm = [0f32; BLOCK];
    let mut ys = [0usize; BLOCK];
    block_max(img, hw, c, a, &mut mx[..l], &mut am[..l]);
    sm[..l].iter_mut().for_each(|v| *v = 0.0);
    for k in 0..c {
        let row = &img[k * hw + a..k * hw + a + l];
        let er = &mut e[k * BLOCK..k * BLOCK + l];
        for p in 0..l {
            let v = fast_exp(row[p] - mx[p]);
            er[p] = v;
            sm[p] += v;
        }
    }
    for p in 0..l {
        match class_of(lab[p].into(), ignore, c) {
            Ok(Some(y)) => {
                ys[p] = y;
                vm[p] = 1.0 / sm[p];
            }
            Ok(None) => vm[p] = 0.0,
            Err(bad) => {
                acc.bad = acc.bad.or(Some(bad));
                vm[p] = 0.0;
            }
        }
    }
    for k in 0..c {
        let er = &mut e[k * BLOCK..k * BLOCK + l];
        // Eight independent partial sums, so the reduction vectorises.
        let mut part = [0f32; 8];
        let mut chunks = er.chunks_exact_mut(8);
        let mut vms = vm[..l].chunks_exact(8);
        for (ch, vc) in (&mut chunks).zip(&mut vms) {
            for j in 0..8 {
                ch[j] *= vc[j];
                part[j] += ch[j];
            }
        }
        for (v, m) in chunks.into_remainder().iter_mut().zip(vms.remainder()) {
            *v *= m;
            part[0] += *v;
        }
        acc.p[gi * c + k] += part.iter().map(|&v| v as f64).sum::<f64>();
        if keep {
            // SAFETY: this block owns probs[img_i*c*hw + k*hw + a .. + l].
            let pr = unsafe {
                std::slice::from_raw_parts_mut(pp.get().add(img_i * c * hw + k * hw + a), l)
            };
            pr.copy_from_slice(er);
        }
    }
    for p in 0..l {
        if vm[p] != 0.0 {
            let y = ys[p];
            acc.i[gi * c + y] += e[y * BLOCK + p] as f64;
            acc.g[gi * c + y] += 1.0;
        }
    }
}

impl FusedRegion {
    fn groups(&self, n: usize) -> usize {
        if self.kind.per_image() {
            n
        } else {
            1
        }
    }

    fn forward_impl<L: Label>(&self, x: &[f32], dims: [usize; 4], labels: &[L]) -> Result<f64> {
        let [n, c, h, w] = dims;
        let hw = h * w;
        let nblk = hw.div_ceil(BLOCK);
        let ignore = self.ignore_index as i64;
        let groups = self.groups(n);
        let keep = self.keep;
        let mut probs = if keep {
            kernel_buffer(n * c * hw)
        } else {
            Vec::new()
        };
        let pp = SyncPtr(probs.as_mut_ptr());
        let ctx = RegCtx {
            x,
            labels,
            c,
            hw,
            nblk,
            ignore,
            groups,
            keep,
            pp,
        };
        let avx2 = use_avx2();
        // Fixed groups of blocks, merged in group order: the sums do not depend on scheduling.
        let tasks = n * nblk;
        let sums = (0..tasks.div_ceil(TASKS_PER_GROUP))
            .into_par_iter()
            .map(|g| {
                let (mut acc, mut e) = (Sums::new(groups * c), vec![0f32; c * BLOCK]);
                for t in g * TASKS_PER_GROUP..((g + 1) * TASKS_PER_GROUP).min(tasks) {
                    region_block_dispatch(avx2, &ctx, &mut acc, &mut e, t);
                }
                acc
            })
            .collect::<Vec<Sums>>()
            .into_iter()
            .fold(Sums::new(groups * c), Sums::merge);
        if let Some(label) = sums.bad {
            return Err(LossError::LabelOutOfRange {
                label,
                n_classes: c,
                ignore_index: self.ignore_index,
            }
            .into_candle());
        }
        let (loss, alpha, beta) = match &self.fixed {
            Some((alpha, beta, constant)) => {
                let lin: f64 = (0..groups * c)
                    .map(|j| alpha[j % c] * sums.p[j] + beta[j % c] * sums.i[j])
                    .sum();
                let rep = |v: &[f64]| (0..groups * c).map(|j| v[j % c]).collect::<Vec<f64>>();
                (lin + constant, rep(alpha), rep(beta))
            }
            None => region_loss(
                self.kind,
                self.ro,
                &sums.i,
                &sums.p,
                &sums.g,
                &self.static_w,
                groups,
            ),
        };
        if let Some(out) = &self.sums_out {
            out.put([sums.i.clone(), sums.p.clone(), sums.g.clone()])?;
        }
        self.coef.put((
            alpha.iter().map(|&v| v as f32).collect(),
            beta.iter().map(|&v| v as f32).collect(),
        ))?;
        if keep {
            self.probs.put(probs)?;
        }
        Ok(loss)
    }

    /// The backward pass over the kept softmax, in place.
    #[allow(clippy::too_many_arguments)]
    fn backward_in_place<L: Label>(
        &self,
        mut probs: Vec<f32>,
        dims: [usize; 4],
        labels: &[L],
        g0: f32,
        alpha: &[f32],
        beta: &[f32],
    ) -> Vec<f32> {
        let [n, c, h, w] = dims;
        let hw = h * w;
        let nblk = hw.div_ceil(BLOCK);
        let ignore = self.ignore_index as i64;
        let groups = self.groups(n);
        let gp = SyncPtr(probs.as_mut_ptr());
        (0..n * nblk).into_par_iter().for_each(|t| {
            let (img_i, b) = (t / nblk, t % nblk);
            let gi = if groups == 1 { 0 } else { img_i };
            let al = &alpha[gi * c..(gi + 1) * c];
            let be = &beta[gi * c..(gi + 1) * c];
            let a = b * BLOCK;
            let l = BLOCK.min(hw - a);
            let lab = &labels[img_i * hw + a..img_i * hw + a + l];
            let gbase = img_i * c * hw;
            let mut dot = [0f32; BLOCK];
            let mut ys = [usize::MAX; BLOCK];
            let mut py = [0f32; BLOCK];
            for k in 0..c {
                // SAFETY: this block owns probs[gbase + k*hw + a .. + l] for every k.
                let row =
                    unsafe { std::slice::from_raw_parts(gp.get().add(gbase + k * hw + a), l) };
                let ak = al[k];
                for p in 0..l {
                    dot[p] += row[p] * ak;
                }
            }
            for p in 0..l {
                if let Ok(Some(y)) = class_of(lab[p].into(), ignore, c) {
                    ys[p] = y;
                    // SAFETY: as above.
                    py[p] = unsafe { *gp.get().add(gbase + y * hw + a + p) };
                    dot[p] += py[p] * be[y];
                }
            }
            for k in 0..c {
                // SAFETY: as above.
                let row =
                    unsafe { std::slice::from_raw_parts_mut(gp.get().add(gbase + k * hw + a), l) };
                let ak = al[k];
                for p in 0..l {
                    row[p] *= g0 * (ak - dot[p]);
                }
            }
            for p in 0..l {
                let y = ys[p];
                if y != usize::MAX {
                    // SAFETY: as above.
                    unsafe { *gp.get().add(gbase + y * hw + a + p) += g0 * py[p] * be[y] };
                }
            }
        });
        probs
    }

    #[allow(clippy::too_many_arguments)]
    fn backward_impl<L: Label>(
        &self,
        x: &[f32],
        dims: [usize; 4],
        labels: &[L],
        g0: f32,
        alpha: &[f32],
        beta: &[f32],
    ) -> Vec<f32> {
        let [n, c, h, w] = dims;
        let hw = h * w;
        let nblk = hw.div_ceil(BLOCK);
        let ignore = self.ignore_index as i64;
        let groups = self.groups(n);
        let mut grad = kernel_buffer(n * c * hw);
        let gp = SyncPtr(grad.as_mut_ptr());
        (0..n * nblk).into_par_iter().for_each(|t| {
            let (img_i, b) = (t / nblk, t % nblk);
            let gi = if groups == 1 { 0 } else { img_i };
            let al = &alpha[gi * c..(gi + 1) * c];
            let be = &beta[gi * c..(gi + 1) * c];
            let a = b * BLOCK;
            let l = BLOCK.min(hw - a);
            let img = &x[img_i * c * hw..(img_i + 1) * c * hw];
            let lab = &labels[img_i * hw + a..img_i * hw + a + l];
            let gbase = img_i * c * hw;
            let mut mx = [0f32; BLOCK];
            let mut am = [0u32; BLOCK];
            let mut sm = [0f32; BLOCK];
            let mut acc = [0f32; BLOCK];
            let mut sc = [0f32; BLOCK];
            let mut dot = [0f32; BLOCK];
            let mut ys = [usize::MAX; BLOCK];
            block_max(img, hw, c, a, &mut mx[..l], &mut am[..l]);
            sm[..l].iter_mut().for_each(|v| *v = 0.0);
            acc[..l].iter_mut().for_each(|v| *v = 0.0);
            for k in 0..c {
                let row = &img[k * hw + a..k * hw + a + l];
                // SAFETY: this block owns grad[gbase + k*hw + a .. + l] for every k.
                let grow =
                    unsafe { std::slice::from_raw_parts_mut(gp.get().add(gbase + k * hw + a), l) };
                let ak = al[k];
                for p in 0..l {
                    let e = fast_exp(row[p] - mx[p]);
                    grow[p] = e;
                    sm[p] += e;
                    acc[p] += e * ak;
                }
            }
            for p in 0..l {
                if let Ok(Some(y)) = class_of(lab[p].into(), ignore, c) {
                    ys[p] = y;
                    let inv = 1.0 / sm[p];
                    // SAFETY: as above.
                    let py = unsafe { *gp.get().add(gbase + y * hw + a + p) } * inv;
                    dot[p] = acc[p] * inv + py * be[y];
                    sc[p] = g0 * inv;
                } else {
                    sc[p] = 0.0;
                    dot[p] = 0.0;
                }
            }
            for k in 0..c {
                // SAFETY: as above.
                let grow =
                    unsafe { std::slice::from_raw_parts_mut(gp.get().add(gbase + k * hw + a), l) };
                let ak = al[k];
                for p in 0..l {
                    grow[p] *= sc[p] * (ak - dot[p]);
                }
            }
            for p in 0..l {
                let y = ys[p];
                if y != usize::MAX {
                    let e_y = {
                        // Recompute p_y: the row now holds the gradient.
                        let v = fast_exp(img[y * hw + a + p] - mx[p]);
                        v / sm[p]
                    };
                    // SAFETY: as above.
                    unsafe { *gp.get().add(gbase + y * hw + a + p) += g0 * e_y * be[y] };
                }
            }
        });
        grad
    }
}

impl FusedLoss for FusedRegion {
    const NAME: &'static str = "recallseg-fused-region";

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
        self.coef.with(|(alpha, beta)| {
            Ok(match self.probs.take_if_saved()? {
                Some(p) => self.backward_in_place(p, dims, labels, g0, alpha, beta),
                None => self.backward_impl(x, dims, labels, g0, alpha, beta),
            })
        })?
    }
}
