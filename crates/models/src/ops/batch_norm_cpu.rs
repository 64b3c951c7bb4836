//! Fused training-mode BatchNorm (optionally followed by ReLU) for contiguous f32 tensors on the
//! CPU: one custom op with its own backward instead of ~10 candle ops per layer.
//!
//! Forward, per channel over `M = N·H·W` values (sums in f64, as PyTorch's CPU kernel):
//! `μ = Σx/M`, `σ² = Σ(x−μ)²/M`, `x̂ = (x−μ)/√(σ²+ε)`, `y = γ·x̂ + β` (then `max(y, 0)`),
//! each element evaluated in f64.
//! Backward, with `g` the incoming gradient (masked by `y > 0` after a ReLU):
//! `∂β = Σg`, `∂γ = Σg·x̂`, `∂x = γ/√(σ²+ε) · (g − ∂β/M − x̂·∂γ/M)`.
//!
//! [`crate::batch_norm::BatchNorm2d`] picks it automatically for CPU f32 inputs (unless
//! `CpuKernels { batch_norm: false, .. }` is in effect, see [`crate::ops::with_cpu_kernels`]);
//! other devices and dtypes use the portable candle-ops path, and the tests check that both
//! agree.
//!
//! Synchronised over ranks (SyncBatchNorm, [`batch_norm_train_synced`]): the forward pass
//! all-reduces each channel's `Σx`, `Σ(x − x̄_r)²` (about this rank's mean), `(Σx)²/M_r` and
//! `M_r` (one f64 collective) and normalises with the global moments
//! `μ = Σx/M`, `σ² = (Σ_r Σ(x − x̄_r)² + Σ_r (Σx)_r²/M_r − (Σx)²/M)/M`, `M = Σ_r M_r`; the
//! backward pass all-reduces `Σg` and `Σg·x̂` (one more) for `∂x`, while `∂γ`, `∂β` stay this
//! rank's sums (data-parallel training sums them with the other gradients).

use crate::ops::buffers::zeroed;
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use recallseg_distributed::SharedCommunicator;
use recallseg_kernels::storage::contiguous_f32;
use recallseg_kernels::SavedState;
use recallseg_kernels::{dispatch, simd::use_avx2};
use std::sync::Arc;

/// Whether `batch_norm_train` can run on `x`.
pub(crate) fn supported(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// Batch statistics of one forward pass.
#[derive(Debug, Clone, Default)]
pub(crate) struct BatchStats {
    /// Per-channel mean.
    pub mean: Vec<f64>,
    /// Per-channel biased variance.
    pub var: Vec<f64>,
}

/// What a forward pass leaves: the statistics it normalised with and the number of values per
/// channel they were taken over (over every rank when synchronised).
pub(crate) type SavedStats = (BatchStats, f64);

/// The fused BatchNorm (+ ReLU) op; also the second half of the fused convolution + BatchNorm
/// op of [`crate::ops::conv_bn`].
pub(crate) struct BnTrain {
    pub(crate) eps: f64,
    pub(crate) relu: bool,
    /// Where the forward pass leaves the batch statistics.
    pub(crate) stats: Arc<SavedState<SavedStats>>,
    /// Evaluation mode: normalise with these (running) statistics instead of the batch's.
    pub(crate) fixed: Option<BatchStats>,
    /// Training statistics of the global batch over these ranks (never with `fixed`).
    pub(crate) sync: Option<SharedCommunicator>,
}

/// `(μ, σ²)` per channel and the global count from this rank's per-channel `(Σx, Σ(x − x̄)²)`
/// over `m` values each, summed over every rank in one f64 all-reduce.
fn global_moments(
    comm: &SharedCommunicator,
    local: &[(f64, f64)],
    m: f64,
) -> Result<(Vec<(f64, f64)>, f64)> {
    let c = local.len();
    let mut buf = Vec::with_capacity(3 * c + 1);
    buf.extend(local.iter().map(|l| l.0));
    buf.extend(local.iter().map(|l| l.1));
    buf.extend(
        local
            .iter()
            .map(|l| if m > 0.0 { l.0 * l.0 / m } else { 0.0 }),
    );
    buf.push(m);
    comm.all_reduce_sum_f64(&mut buf)?;
    let total = buf[3 * c];
    let moments = (0..c)
        .map(|ci| {
            let (sum, m2, q) = (buf[ci], buf[c + ci], buf[2 * c + ci]);
            let mean = sum / total;
            // Σ_r M2_r + Σ_r S_r²/M_r − S²/M: the second difference is the ranks' spread.
            let var = ((m2 + (q - sum * sum / total)) / total).max(0.0);
            (mean, var)
        })
        .collect();
    Ok((moments, total))
}

impl CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        "batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "fused batch norm: input")?;
        let gamma = contiguous_f32(s2, l2, "fused batch norm: weight")?;
        let beta = contiguous_f32(s3, l3, "fused batch norm: bias")?;
        let (n, c, h, w) = l1.shape().dims4()?;
        let hw = h * w;
        let m = (n * hw) as f64;
        let avx2 = use_avx2();
        let (stats, count): (Vec<(f64, f64)>, f64) = match &self.fixed {
            Some(f) => (
                f.mean.iter().copied().zip(f.var.iter().copied()).collect(),
                m,
            ),
            None => {
                // Per channel (Σx, Σ(x − x̄)²) over this rank's values.
                let local: Vec<(f64, f64)> = (0..c)
                    .into_par_iter()
                    .map(|ci| {
                        let planes =
                            || (0..n).map(|ni| &x[(ni * c + ci) * hw..(ni * c + ci + 1) * hw]);
                        let sum: f64 = planes().map(|p| sum_plane(avx2, p)).sum();
                        let mean = sum / m;
                        let sq: f64 = planes().map(|p| sq_dev_plane(avx2, p, mean)).sum();
                        (sum, sq)
                    })
                    .collect();
                match &self.sync {
                    Some(comm) => global_moments(comm, &local, m)?,
                    None => (local.iter().map(|&(s, q)| (s / m, q / m)).collect(), m),
                }
            }
        };
        if stats.len() != c {
            candle_core::bail!(
                "fused batch norm: {} statistics for {c} channels",
                stats.len()
            )
        }
        // y = (x − μ)·s + β in f64 per element: the folded form x·s + (β − μ·s) cancels
        // catastrophically in f32 when |μ| ≫ σ (small batches, e.g. the ASPP pooling branch).
        let coef: Vec<(f64, f64, f64)> = stats
            .iter()
            .enumerate()
            .map(|(ci, &(mean, var))| {
                let scale = gamma[ci] as f64 / (var + self.eps).sqrt();
                (mean, scale, beta[ci] as f64)
            })
            .collect();
        let mut y = zeroed(x.len());
        let relu = self.relu;
        y.par_chunks_mut(hw.max(1))
            .zip(x.par_chunks(hw.max(1)))
            .enumerate()
            .for_each(|(plane, (yp, xp))| {
                let (mu, s, b) = coef[plane % c];
                normalize_plane(avx2, xp, yp, mu, s, b, relu);
            });
        self.stats.put((
            BatchStats {
                mean: stats.iter().map(|s| s.0).collect(),
                var: stats.iter().map(|s| s.1).collect(),
            },
            count,
        ))?;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dgamma, dbeta) = self.backward(x, gamma, res, grad_res)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

impl BnTrain {
    /// `(∂x, ∂γ, ∂β)` from the op's input `x`, scale `gamma`, output `y` and output gradient
    /// `dy`, with the statistics of the forward pass.
    pub(crate) fn backward(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (_, c, _, _) = x.dims4()?;
        let (mean, var, count) = self
            .stats
            .with(|(st, count)| (st.mean.clone(), st.var.clone(), *count))?;
        let sync = match (&self.sync, &self.fixed) {
            (Some(comm), None) => Some((comm.clone(), count)),
            _ => None,
        };
        let op = BnBackward {
            relu: self.relu,
            eval: self.fixed.is_some(),
            sync,
            invstd: var.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect(),
            mean,
            gamma: gamma.to_vec1()?,
            param_grads: SavedState::new(),
        };
        let g = dy.to_dtype(DType::F32)?.contiguous()?;
        // Reads x, g and y in place (no copies); dγ and dβ come out of the same passes.
        let dx = x.apply_op3_no_bwd(&g, &y.contiguous()?, &op)?;
        let (dgamma, dbeta) = op.param_grads.take()?;
        let dev = x.device();
        Ok((
            dx,
            Tensor::from_vec(dgamma, c, dev)?,
            Tensor::from_vec(dbeta, c, dev)?,
        ))
    }
}

/// The backward pass of [`BnTrain`] as one op on `(x, g, y)`: per channel `Σg` and `Σg·x̂` (with
/// `g` masked by `y > 0` after a ReLU, sums in f64), then `∂x`; `∂γ`, `∂β` are left in
/// `param_grads`.
struct BnBackward {
    relu: bool,
    eval: bool,
    /// Synchronised training: the ranks and the global count; `Σg`, `Σg·x̂` of `∂x` are summed
    /// over the ranks.
    sync: Option<(SharedCommunicator, f64)>,
    mean: Vec<f64>,
    invstd: Vec<f64>,
    gamma: Vec<f32>,
    param_grads: SavedState<(Vec<f32>, Vec<f32>)>,
}

impl CustomOp3 for BnBackward {
    fn name(&self) -> &'static str {
        "batch-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let xs = contiguous_f32(s1, l1, "fused batch norm: input")?;
        let g = contiguous_f32(s2, l2, "fused batch norm: gradient")?;
        let ys = contiguous_f32(s3, l3, "fused batch norm: output")?;
        let (n, c, h, w) = l1.shape().dims4()?;
        let hw = h * w;
        if g.len() != xs.len() || ys.len() != xs.len() || self.mean.len() != c {
            candle_core::bail!(
                "fused batch norm backward: operand sizes do not match {n}×{c}×{h}×{w}"
            )
        }
        let m = (n * hw) as f64;
        let relu = self.relu;
        let avx2 = use_avx2();
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ci| {
                let (mut sg, mut sgx) = (0f64, 0f64);
                for ni in 0..n {
                    let r = (ni * c + ci) * hw..(ni * c + ci + 1) * hw;
                    let (pg, pgx) = grad_sums_plane(
                        avx2,
                        &g[r.clone()],
                        &xs[r.clone()],
                        &ys[r],
                        self.mean[ci],
                        relu,
                    );
                    sg += pg;
                    sgx += pgx;
                }
                (sg, sgx * self.invstd[ci])
            })
            .collect();
        // ∂x needs the sums over the whole batch: every rank's when synchronised.
        let (global, m) = match &self.sync {
            Some((comm, total)) => {
                let mut buf: Vec<f64> = sums.iter().flat_map(|s| [s.0, s.1]).collect();
                comm.all_reduce_sum_f64(&mut buf)?;
                (buf.chunks_exact(2).map(|p| (p[0], p[1])).collect(), *total)
            }
            None => (Vec::new(), m),
        };
        let global: &[(f64, f64)] = if self.sync.is_some() { &global } else { &sums };
        let mut dx = zeroed(xs.len());
        dx.par_chunks_mut(hw.max(1))
            .enumerate()
            .for_each(|(plane, dp)| {
                let ci = plane % c;
                let (sg, sgx) = global[ci];
                let k = self.gamma[ci] as f64 * self.invstd[ci];
                let (mu, is) = (self.mean[ci], self.invstd[ci]);
                let base = plane * hw;
                let (gp, xp, yp) = (
                    &g[base..base + hw],
                    &xs[base..base + hw],
                    &ys[base..base + hw],
                );
                if self.eval {
                    // Fixed statistics: y is affine in x: ∂x = k·g.
                    input_grad_plane(avx2, gp, xp, yp, dp, [k, 0.0, 0.0, mu], relu);
                    return;
                }
                // ∂x = k·(g − Σg/M − x̂·Σg·x̂/M) with x̂ = (x − μ)·is.
                input_grad_plane(
                    avx2,
                    gp,
                    xp,
                    yp,
                    dp,
                    [k, k * sg / m, k * is * sgx / m, mu],
                    relu,
                );
            });
        self.param_grads.put((
            sums.iter().map(|s| s.1 as f32).collect(),
            sums.iter().map(|s| s.0 as f32).collect(),
        ))?;
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Training-mode batch norm (then ReLU when `relu`) of `x` `(N, C, H, W)` with scale `gamma` and
/// shift `beta` `(C)`, all CPU f32. Returns the output and the batch statistics.
#[cfg(test)]
pub(crate) fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, BatchStats)> {
    let (y, stats, _) = batch_norm_train_synced(x, gamma, beta, eps, relu, None)?;
    Ok((y, stats))
}

/// `batch_norm_train` with the statistics of the global batch over the ranks of `sync`
/// (SyncBatchNorm; see the module documentation). Every rank must call it, and reach its
/// backward pass, in the same order. Returns the output, the global statistics and the number
/// of values per channel they were taken over (all ranks together). `None`: `batch_norm_train`,
/// with this rank's count.
pub(crate) fn batch_norm_train_synced(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
    sync: Option<&SharedCommunicator>,
) -> Result<(Tensor, BatchStats, f64)> {
    if !supported(x) || !matches!(x.device(), Device::Cpu) {
        candle_core::bail!(
            "fused batch norm needs a CPU f32 input, got {:?}",
            x.dtype()
        )
    }
    let stats = Arc::new(SavedState::new());
    let op = BnTrain {
        eps,
        relu,
        stats: stats.clone(),
        fixed: None,
        sync: sync.cloned(),
    };
    let y = x
        .contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    let (s, count) = stats.cloned()?;
    Ok((y, s, count))
}

/// Evaluation-mode batch norm (then ReLU when `relu`) of CPU f32 `x` `(N, C, H, W)` with the given
/// (running) statistics, in one pass; differentiable in `x`, `gamma` and `beta`
/// (`∂x = g·γ/√(σ²+ε)`, `∂γ = Σ g·x̂`, `∂β = Σ g`).
pub(crate) fn batch_norm_eval(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    stats: BatchStats,
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    if !supported(x) {
        candle_core::bail!(
            "fused batch norm needs a CPU f32 input, got {:?}",
            x.dtype()
        )
    }
    let (n, _, h, w) = x.dims4()?;
    let op = BnTrain {
        eps,
        relu,
        stats: Arc::new(SavedState::holding((stats.clone(), (n * h * w) as f64))),
        fixed: Some(stats),
        sync: None,
    };
    x.contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)
}

// Plane kernels: contiguous runs of one (image, channel) plane, in f64 per element. Sums keep
// four independent f64 lanes (added in a fixed order at the end) so they vectorise; every
// kernel also has an AVX2 build chosen at run time (`recallseg_kernels::dispatch!`), with the same results.

/// `Σ x` in f64.
#[inline(always)]
fn sum_plane_impl(x: &[f32]) -> f64 {
    let mut acc = [0f64; 4];
    let chunks = x.chunks_exact(4);
    let tail = chunks.remainder();
    for q in chunks {
        for l in 0..4 {
            acc[l] += q[l] as f64;
        }
    }
    let t: f64 = tail.iter().map(|&v| v as f64).sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + t
}

/// `Σ (x − μ)²` in f64.
#[inline(always)]
fn sq_dev_plane_impl(x: &[f32], mean: f64) -> f64 {
    let mut acc = [0f64; 4];
    let chunks = x.chunks_exact(4);
    let tail = chunks.remainder();
    for q in chunks {
        for l in 0..4 {
            let d = q[l] as f64 - mean;
            acc[l] += d * d;
        }
    }
    let t: f64 = tail.iter().map(|&v| (v as f64 - mean).powi(2)).sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + t
}

/// `y = (x − μ)·s + b` (then `max(·, 0)`), in f64 per element.
#[inline(always)]
fn normalize_plane_impl(x: &[f32], y: &mut [f32], mu: f64, s: f64, b: f64, relu: bool) {
    for (yv, &xv) in y.iter_mut().zip(x) {
        let v = ((xv as f64 - mu) * s + b) as f32;
        *yv = if relu { v.max(0.0) } else { v };
    }
}

/// The incoming gradient after the ReLU mask (`y > 0`) when `relu`.
#[inline(always)]
fn masked(g: f32, y: f32, relu: bool) -> f64 {
    if relu && y <= 0.0 {
        0.0
    } else {
        g as f64
    }
}

/// `(Σ g, Σ g·(x − μ))` in f64, `g` masked by the ReLU (`y > 0`) when `RELU`. Branch-free lanes
/// (the mask is a select, the ReLU choice a constant), so the compiler vectorises the loop.
#[inline(always)]
fn grad_sums<const RELU: bool>(g: &[f32], x: &[f32], y: &[f32], mean: f64) -> (f64, f64) {
    // `g` where `y > 0`, else +0, as a bit mask (the compiler keeps a float select branchy).
    let keep = |g: f32, y: f32| {
        if RELU {
            f32::from_bits(g.to_bits() & u32::from(y > 0.0).wrapping_neg())
        } else {
            g
        }
    };
    let (mut sg, mut sgx) = ([0f64; 4], [0f64; 4]);
    let (gc, xc, yc) = (g.chunks_exact(4), x.chunks_exact(4), y.chunks_exact(4));
    let (gt, xt, yt) = (gc.remainder(), xc.remainder(), yc.remainder());
    for ((g4, x4), y4) in gc.zip(xc).zip(yc) {
        let (g4, x4, y4): (&[f32; 4], &[f32; 4], &[f32; 4]) = (
            g4.try_into().expect("chunk of 4"),
            x4.try_into().expect("chunk of 4"),
            y4.try_into().expect("chunk of 4"),
        );
        for l in 0..4 {
            let gv = keep(g4[l], y4[l]) as f64;
            sg[l] += gv;
            sgx[l] += gv * (x4[l] as f64 - mean);
        }
    }
    let (mut tg, mut tgx) = (0f64, 0f64);
    for ((&gv, &xv), &yv) in gt.iter().zip(xt).zip(yt) {
        let gv = keep(gv, yv) as f64;
        tg += gv;
        tgx += gv * (xv as f64 - mean);
    }
    (
        (sg[0] + sg[1]) + (sg[2] + sg[3]) + tg,
        (sgx[0] + sgx[1]) + (sgx[2] + sgx[3]) + tgx,
    )
}

/// The AVX2 build of [`grad_sums`], with explicit vectors: the compiler turns the masked
/// reduction into scalar branches. Lane `l` accumulates elements `4i + l` with a product and a
/// sum (no fused multiply-add), exactly as [`grad_sums`] does, so both give the same bits.
///
/// # Safety
/// The CPU must support AVX2; `g`, `x` and `y` must have the same length.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn grad_sums_avx2<const RELU: bool>(
    g: &[f32],
    x: &[f32],
    y: &[f32],
    mean: f64,
) -> (f64, f64) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        use std::arch::x86_64::*;
        let n4 = g.len() / 4 * 4;
        let (mut sg, mut sgx) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        let vmean = _mm256_set1_pd(mean);
        let mut i = 0;
        while i < n4 {
            let mut g4 = _mm_loadu_ps(g.as_ptr().add(i));
            if RELU {
                let y4 = _mm_loadu_ps(y.as_ptr().add(i));
                g4 = _mm_and_ps(g4, _mm_cmpgt_ps(y4, _mm_setzero_ps()));
            }
            let gd = _mm256_cvtps_pd(g4);
            let xd = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(x.as_ptr().add(i))), vmean);
            sg = _mm256_add_pd(sg, gd);
            sgx = _mm256_add_pd(sgx, _mm256_mul_pd(gd, xd));
            i += 4;
        }
        let (mut a, mut b) = ([0f64; 4], [0f64; 4]);
        _mm256_storeu_pd(a.as_mut_ptr(), sg);
        _mm256_storeu_pd(b.as_mut_ptr(), sgx);
        let (tg, tgx) = grad_sums::<RELU>(&g[n4..], &x[n4..], &y[n4..], mean);
        (
            (a[0] + a[1]) + (a[2] + a[3]) + tg,
            (b[0] + b[1]) + (b[2] + b[3]) + tgx,
        )
    }
}

/// `(Σ g, Σ g·(x − μ))` in f64, `g` masked by the ReLU when `relu`.
#[inline]
fn grad_sums_plane(
    avx2: bool,
    g: &[f32],
    x: &[f32],
    y: &[f32],
    mean: f64,
    relu: bool,
) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if avx2 && g.len() == x.len() && g.len() == y.len() {
        // SAFETY: `avx2` is only set when the CPU has AVX2 (`use_avx2`); lengths checked.
        return unsafe {
            if relu {
                grad_sums_avx2::<true>(g, x, y, mean)
            } else {
                grad_sums_avx2::<false>(g, x, y, mean)
            }
        };
    }
    let _ = avx2;
    if relu {
        grad_sums::<true>(g, x, y, mean)
    } else {
        grad_sums::<false>(g, x, y, mean)
    }
}

/// `∂x = k·g − a − b·(x − μ)` with `[k, a, b, μ] = coef`, `g` masked by the ReLU.
#[inline(always)]
fn input_grad_plane_impl(
    g: &[f32],
    x: &[f32],
    y: &[f32],
    dx: &mut [f32],
    coef: [f64; 4],
    relu: bool,
) {
    let [k, a, b, mu] = coef;
    for (((d, &gv), &xv), &yv) in dx.iter_mut().zip(g).zip(x).zip(y) {
        *d = (k * masked(gv, yv, relu) - a - b * (xv as f64 - mu)) as f32;
    }
}

dispatch!(sum_plane, sum_plane_impl, (x: &[f32]) -> f64);
dispatch!(sq_dev_plane, sq_dev_plane_impl, (x: &[f32], mean: f64) -> f64);
dispatch!(normalize_plane, normalize_plane_impl,
    (x: &[f32], y: &mut [f32], mu: f64, s: f64, b: f64, relu: bool));
dispatch!(input_grad_plane, input_grad_plane_impl,
    (g: &[f32], x: &[f32], y: &[f32], dx: &mut [f32], coef: [f64; 4], relu: bool));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_values::values;
    use candle_core::Var;

    #[test]
    fn avx2_and_baseline_plane_kernels_agree_bitwise() {
        if !use_avx2() {
            return; // nothing to compare on this CPU
        }
        // Odd length: the lanes and the tail both run.
        let n = 1037;
        let (x, g, y) = (values(n, 1), values(n, 2), values(n, 3));
        assert_eq!(
            sum_plane(true, &x).to_bits(),
            sum_plane(false, &x).to_bits()
        );
        assert_eq!(
            sq_dev_plane(true, &x, 0.3).to_bits(),
            sq_dev_plane(false, &x, 0.3).to_bits()
        );
        for relu in [false, true] {
            let (a, b) = (
                grad_sums_plane(true, &g, &x, &y, 0.3, relu),
                grad_sums_plane(false, &g, &x, &y, 0.3, relu),
            );
            assert_eq!(
                (a.0.to_bits(), a.1.to_bits()),
                (b.0.to_bits(), b.1.to_bits())
            );
            let (mut d1, mut d2) = (vec![0f32; n], vec![0f32; n]);
            input_grad_plane(true, &g, &x, &y, &mut d1, [1.3, 0.2, 0.7, 0.3], relu);
            input_grad_plane(false, &g, &x, &y, &mut d2, [1.3, 0.2, 0.7, 0.3], relu);
            assert_eq!(d1, d2);
            normalize_plane(true, &x, &mut d1, 0.3, 1.7, -0.1, relu);
            normalize_plane(false, &x, &mut d2, 0.3, 1.7, -0.1, relu);
            assert_eq!(d1, d2);
        }
        // The lane sums equal the plain sums up to f64 rounding.
        let plain: f64 = x.iter().map(|&v| v as f64).sum();
        assert!((sum_plane(false, &x) - plain).abs() <= 1e-9 * plain.abs().max(1.0));
    }

    /// The fill formula of the integration tests (`tests/common`, `make_goldens.py`) for
    /// `input.*` / `grad.*` names: uniform in `[-1, 1)` from `(name, index)`, rounded to f32,
    /// as an f64 tensor.
    fn fill64(name: &str, shape: &[usize]) -> Tensor {
        use crate::init::{fnv1a64, splitmix64};
        let n: usize = shape.iter().product();
        let h = fnv1a64(name);
        let v: Vec<f64> = (0..n as u64)
            .map(|i| (splitmix64(h ^ i) >> 11) as f64 * (1.0 / (1u64 << 53) as f64))
            .map(|u| (2.0 * u - 1.0) as f32 as f64)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    // The fused ops against the same maths written with candle ops (moved here from
    // `tests/ops.rs`: the fused BatchNorm is internal to the crate).

    #[test]
    fn fused_cpu_batch_norm_agrees_with_portable_path() -> Result<()> {
        // The fused op (f32 CPU training) against the same maths written with candle ops.
        let x = Var::from_tensor(
            &fill64("input.bn", &[3, 5, 4, 6])
                .affine(2.0, 0.3)?
                .to_dtype(DType::F32)?,
        )?;
        let gamma = Var::from_tensor(
            &fill64("input.gamma", &[5])
                .affine(0.5, 1.0)?
                .to_dtype(DType::F32)?,
        )?;
        let beta = Var::from_tensor(&fill64("input.beta", &[5]).to_dtype(DType::F32)?)?;
        let g = fill64("grad.bn", &[3, 5, 4, 6]).to_dtype(DType::F32)?;
        for relu in [false, true] {
            let (fast, stats) = batch_norm_train(&x, &gamma, &beta, 1e-5, relu)?;
            // Portable reference written out with candle ops.
            let mean = x.mean_keepdim((0, 2, 3))?;
            let xc = x.broadcast_sub(&mean)?;
            let var = xc.sqr()?.mean_keepdim((0, 2, 3))?;
            let y = xc
                .broadcast_div(&var.affine(1.0, 1e-5)?.sqrt()?)?
                .broadcast_mul(&gamma.reshape((1, 5, 1, 1))?)?
                .broadcast_add(&beta.reshape((1, 5, 1, 1))?)?;
            let slow = if relu { y.relu()? } else { y };
            let close = |a: &Tensor, b: &Tensor, what: &str| -> Result<()> {
                let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(d <= 1e-5, "{what} (relu={relu}): max difference {d}");
                Ok(())
            };
            close(&fast, &slow, "output")?;
            let m: Vec<f32> = mean.flatten_all()?.to_vec1()?;
            let v: Vec<f32> = var.flatten_all()?.to_vec1()?;
            for c in 0..5 {
                assert!((stats.mean[c] - m[c] as f64).abs() < 1e-5);
                assert!((stats.var[c] - v[c] as f64).abs() < 1e-5);
            }
            let gf = (&fast * &g)?.sum_all()?.backward()?;
            let gs = (&slow * &g)?.sum_all()?.backward()?;
            for (t, name) in [(&x, "dx"), (&gamma, "dgamma"), (&beta, "dbeta")] {
                close(gf.get(t).unwrap(), gs.get(t).unwrap(), name)?;
            }
        }
        Ok(())
    }

    #[test]
    fn fused_cpu_eval_batch_norm_agrees_with_the_formula() -> Result<()> {
        let x = Var::from_tensor(
            &fill64("input.bne", &[2, 4, 3, 5])
                .affine(2.0, 0.5)?
                .to_dtype(DType::F32)?,
        )?;
        let gamma = Var::from_tensor(
            &fill64("input.gamma", &[4])
                .affine(0.5, 1.0)?
                .to_dtype(DType::F32)?,
        )?;
        let beta = Var::from_tensor(&fill64("input.beta", &[4]).to_dtype(DType::F32)?)?;
        let mean = vec![0.1, -0.2, 0.3, 0.0];
        let var = vec![0.5, 1.0, 1.5, 2.0];
        let g = fill64("grad.bne", &[2, 4, 3, 5]).to_dtype(DType::F32)?;
        for relu in [false, true] {
            let stats = BatchStats {
                mean: mean.clone(),
                var: var.clone(),
            };
            let fast = batch_norm_eval(&x, &gamma, &beta, stats, 1e-5, relu)?;
            let m = Tensor::new(
                mean.iter()
                    .map(|&v| v as f32)
                    .collect::<Vec<_>>()
                    .as_slice(),
                &Device::Cpu,
            )?
            .reshape((1, 4, 1, 1))?;
            let v = Tensor::new(
                var.iter().map(|&v| v as f32).collect::<Vec<_>>().as_slice(),
                &Device::Cpu,
            )?
            .reshape((1, 4, 1, 1))?;
            let y = x
                .broadcast_sub(&m)?
                .broadcast_div(&v.affine(1.0, 1e-5)?.sqrt()?)?
                .broadcast_mul(&gamma.reshape((1, 4, 1, 1))?)?
                .broadcast_add(&beta.reshape((1, 4, 1, 1))?)?;
            let slow = if relu { y.relu()? } else { y };
            let d = (&fast - &slow)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d <= 1e-5, "output (relu={relu}): {d}");
            let gf = (&fast * &g)?.sum_all()?.backward()?;
            let gs = (&slow * &g)?.sum_all()?.backward()?;
            for (t, name) in [(&x, "dx"), (&gamma, "dgamma"), (&beta, "dbeta")] {
                let d = (gf.get(t).unwrap() - gs.get(t).unwrap())?
                    .abs()?
                    .max_all()?
                    .to_scalar::<f32>()?;
                assert!(d <= 1e-5, "{name} (relu={relu}): {d}");
            }
        }
        Ok(())
    }
}
