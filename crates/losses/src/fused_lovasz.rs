//! The fused CPU kernel of Lovász-Softmax: a candle [`CustomOp2`] over
//! `(logits f32 (N, C, H, W) contiguous, target (N, H, W))`.
//!
//! * Forward: a parallel softmax pass writes the class probabilities; then, classes in
//!   parallel, each class's errors `|t - p|` over the valid pixels are sorted in decreasing order
//!   with a stable LSD radix sort on their bit patterns (non-negative floats order like their
//!   bits; three 11-bit passes, a pass skipped when all keys share its digit), and one scan over
//!   the sorted errors yields the Lovász gradient `g`, the class loss `Σ e_(k) g_k` and
//!   `∂L/∂p_{i,c}`, kept for the backward pass.
//! * Backward (parallel over pixel blocks): recomputes the softmax and applies its Jacobian,
//!   `∂L/∂z_{i,j} = g · p_j (D_j - Σ_k p_k D_k)` with `D_k = ∂L/∂p_{i,k}`.

// Kernel loops index several equally long slices at once; that is the clearer form here.
#![allow(clippy::needless_range_loop)]

use crate::blocks::{block_max, class_of, softmax_into, BLOCK};
use crate::fast_math::{fast_exp, kernel_buffer};
use crate::LossError;
use candle_core::Result;
use rayon::prelude::*;
use recallseg_kernels::fused::FusedLoss;
use recallseg_kernels::storage::Label;
use recallseg_kernels::{SavedState, SyncPtr};

/// The fused Lovász-Softmax op (see the module documentation).
pub(crate) struct FusedLovasz {
    pub n_classes: usize,
    pub ignore_index: u32,
    pub static_w: Vec<f64>,
    pub present_only: bool,
    /// One loss per image, averaged (smp's `per_image=True`), instead of one over the batch.
    pub per_image: bool,
    /// `∂L/∂p` (`N·C·H·W`), left for the backward pass.
    pub dldp: SavedState<Vec<f32>>,
    /// Keep the softmax for the backward pass (the logits take part in a graph).
    pub keep: bool,
    /// The kept softmax (`N·C·H·W`), consumed by the backward pass.
    pub probs: SavedState<Vec<f32>>,
}

/// Stable ascending sort of `v` by the upper 32 bits of each element.
pub(crate) fn radix_sort_hi32(v: &mut Vec<u64>, tmp: &mut Vec<u64>) {
    tmp.resize(v.len(), 0);
    for shift in [32u32, 43, 54] {
        let mut hist = [0usize; 2048];
        for &k in v.iter() {
            hist[((k >> shift) & 0x7ff) as usize] += 1;
        }
        if hist.contains(&v.len()) {
            continue;
        }
        let mut sum = 0;
        for h in hist.iter_mut() {
            let t = *h;
            *h = sum;
            sum += t;
        }
        for &k in v.iter() {
            let d = ((k >> shift) & 0x7ff) as usize;
            tmp[hist[d]] = k;
            hist[d] += 1;
        }
        std::mem::swap(v, tmp);
    }
}

/// Softmax probabilities of `x` `(N, C, H, W)`, in the same layout (parallel over pixel
/// blocks).
fn softmax(x: &[f32], dims: [usize; 4]) -> Vec<f32> {
    let [n, c, h, w] = dims;
    let hw = h * w;
    let nblk = hw.div_ceil(BLOCK);
    let mut prob = kernel_buffer(n * c * hw);
    let pp = SyncPtr(prob.as_mut_ptr());
    (0..n * nblk).into_par_iter().for_each(|t| {
        let (img_i, b) = (t / nblk, t % nblk);
        let a = b * BLOCK;
        let l = BLOCK.min(hw - a);
        let img = &x[img_i * c * hw..(img_i + 1) * c * hw];
        let mut mx = [0f32; BLOCK];
        let mut am = [0u32; BLOCK];
        let mut sm = [0f32; BLOCK];
        block_max(img, hw, c, a, &mut mx[..l], &mut am[..l]);
        // SAFETY: work item `t` owns prob[img_i·c·hw + k·hw + a .. + l] for every k.
        unsafe { softmax_into(pp, img_i * c * hw, img, hw, c, a, &mx[..l], &mut sm[..l]) };
    });
    prob
}

/// The valid pixels of a batch, compacted, grouped (each image with `per_image`, else the
/// batch), with their class counts per group.
struct ValidPixels {
    /// Offset of each valid pixel in the class-0 plane of the `(N, C, H, W)` layout.
    pos: Vec<u32>,
    /// Its class.
    y: Vec<u32>,
    /// Group `g`'s pixels are `bounds[g]..bounds[g + 1]`.
    bounds: Vec<usize>,
    /// Pixels per (group, class).
    counts: Vec<f64>,
}

impl ValidPixels {
    /// From the per-pixel classes `ys` (`u32::MAX` = ignored).
    fn new(ys: &[u32], c: usize, hw: usize, n_groups: usize) -> Self {
        let mut v = Self {
            pos: Vec::new(),
            y: Vec::new(),
            bounds: vec![0usize; n_groups + 1],
            counts: vec![0.0f64; n_groups * c],
        };
        for (i, &y) in ys.iter().enumerate() {
            if y != u32::MAX {
                // One group per image, or the whole batch.
                let grp = if n_groups > 1 { i / hw } else { 0 };
                v.pos.push(((i / hw) * c * hw + i % hw) as u32);
                v.y.push(y);
                v.counts[grp * c + y as usize] += 1.0;
                v.bounds[grp + 1] = v.pos.len();
            }
        }
        for grp in 1..=n_groups {
            v.bounds[grp] = v.bounds[grp].max(v.bounds[grp - 1]);
        }
        v
    }
}

/// One step's (group, class) jobs: each sorts its class's errors over its group's valid pixels
/// and scans them into the class loss and `∂L/∂p`.
struct Jobs<'a> {
    valid: &'a ValidPixels,
    prob: &'a [f32],
    /// Whether each (group, class) enters the average.
    considered: Vec<bool>,
    /// Each group's `Σ_{c considered} s_c`.
    norm: Vec<f64>,
    static_w: &'a [f64],
    /// Number of groups (the mean over images divides by it).
    div: f64,
    c: usize,
    hw: usize,
    /// `∂L/∂p`, written by the jobs (each job its own entries).
    dp: SyncPtr,
}

impl Jobs<'_> {
    /// Job `job = grp · C + cls`: its weighted class loss; writes its entries of `∂L/∂p`.
    fn loss(&self, job: usize, keys: &mut Vec<u64>, tmp: &mut Vec<u64>) -> f64 {
        let (c, v) = (self.c, self.valid);
        let (grp, cls) = (job / c, job % c);
        let range = v.bounds[grp]..v.bounds[grp + 1];
        if !self.considered[job] || self.norm[grp] <= 0.0 || range.is_empty() {
            return 0.0;
        }
        let f = self.static_w[cls] / self.norm[grp] / self.div;
        let plane = cls * self.hw;
        keys.clear();
        keys.extend(range.map(|j| {
            let (pos, y) = (v.pos[j], v.y[j]);
            let p = self.prob[pos as usize + plane];
            let e = if y as usize == cls { 1.0 - p } else { p };
            let e = e.max(0.0);
            ((!e.to_bits()) as u64) << 32 | j as u64
        }));
        radix_sort_hi32(keys, tmp);
        let gts = v.counts[job];
        let (mut cum_fg, mut cum_bg, mut prev) = (0.0f64, 0.0f64, 0.0f64);
        let mut loss = 0.0f64;
        for &key in keys.iter() {
            let j = (key & 0xffff_ffff) as usize;
            let e = f32::from_bits(!((key >> 32) as u32)) as f64;
            let fg = v.y[j] as usize == cls;
            if fg {
                cum_fg += 1.0;
            } else {
                cum_bg += 1.0;
            }
            let jac = 1.0 - (gts - cum_fg) / (gts + cum_bg);
            let g = jac - prev;
            prev = jac;
            loss += e * g;
            let d = if fg { -f * g } else { f * g };
            // SAFETY: job (grp, cls) alone writes the entries of class `cls` of the group's
            // pixels.
            unsafe { *self.dp.get().add(v.pos[j] as usize + plane) = d as f32 };
        }
        f * loss
    }

    /// Every job's loss, in job order, whatever the thread count: one work item per thread,
    /// each with its own sort buffers, over a strided share of the jobs (they cost about the
    /// same).
    fn run(&self, jobs: usize, n_pixels: usize) -> Vec<f64> {
        let workers = rayon::current_num_threads().clamp(1, jobs.max(1));
        let per_worker: Vec<Vec<(usize, f64)>> = (0..workers)
            .into_par_iter()
            .map(|wid| {
                let mut keys: Vec<u64> = Vec::with_capacity(n_pixels);
                let mut tmp: Vec<u64> = Vec::with_capacity(n_pixels);
                (wid..jobs)
                    .step_by(workers)
                    .map(|job| (job, self.loss(job, &mut keys, &mut tmp)))
                    .collect()
            })
            .collect();
        let mut losses = vec![0.0f64; jobs];
        for (job, l) in per_worker.into_iter().flatten() {
            losses[job] = l;
        }
        losses
    }
}

impl FusedLovasz {
    fn forward_impl<L: Label>(&self, x: &[f32], dims: [usize; 4], labels: &[L]) -> Result<f64> {
        let [n, c, h, w] = dims;
        let hw = h * w;
        let np = n * hw;
        if c * np > u32::MAX as usize {
            return Err(LossError::Shape(format!(
                "the fused Lovász kernel indexes logits with 32 bits; {n}x{c}x{h}x{w} is too large \
                 (use Kernel::Portable)"
            ))
            .into_candle());
        }
        let ys = self.checked_classes(labels, c)?;
        let prob = softmax(x, dims);
        let n_groups = if self.per_image { n } else { 1 };
        let valid = ValidPixels::new(&ys, c, hw, n_groups);
        let s = &self.static_w;
        let considered: Vec<bool> = valid
            .counts
            .iter()
            .map(|&g| !self.present_only || g > 0.0)
            .collect();
        let norm: Vec<f64> = (0..n_groups)
            .map(|grp| {
                (0..c)
                    .filter(|&cls| considered[grp * c + cls])
                    .map(|cls| s[cls])
                    .sum()
            })
            .collect();
        let mut dldp = kernel_buffer(c * np);
        let jobs = Jobs {
            valid: &valid,
            prob: &prob,
            considered,
            norm,
            static_w: s,
            div: n_groups as f64,
            c,
            hw,
            dp: SyncPtr(dldp.as_mut_ptr()),
        };
        // Per-job losses summed in job order: the total does not depend on the thread count.
        let losses = jobs.run(n_groups * c, valid.pos.len());
        self.dldp.put(dldp)?;
        if self.keep {
            self.probs.put(prob)?;
        }
        Ok(losses.iter().sum())
    }

    /// The class of every pixel (`u32::MAX` = ignored); a label out of range is an error.
    fn checked_classes<L: Label>(&self, labels: &[L], c: usize) -> Result<Vec<u32>> {
        let ignore = self.ignore_index as i64;
        labels
            .par_iter()
            .map(|&l| match class_of(l.into(), ignore, c) {
                Ok(Some(y)) => Ok(y as u32),
                Ok(None) => Ok(u32::MAX),
                Err(bad) => Err(bad),
            })
            .collect::<std::result::Result<_, i64>>()
            .map_err(|label| {
                LossError::LabelOutOfRange {
                    label,
                    n_classes: c,
                    ignore_index: self.ignore_index,
                }
                .into_candle()
            })
    }

    /// The backward pass over the kept softmax, in place: `p_j <- g p_j (D_j - Σ_k p_k D_k)`.
    fn backward_in_place(
        &self,
        mut probs: Vec<f32>,
        dims: [usize; 4],
        g0: f32,
        dldp: &[f32],
    ) -> Vec<f32> {
        let [n, c, h, w] = dims;
        let hw = h * w;
        let nblk = hw.div_ceil(BLOCK);
        let gp = SyncPtr(probs.as_mut_ptr());
        (0..n * nblk).into_par_iter().for_each(|t| {
            let (img_i, b) = (t / nblk, t % nblk);
            let a = b * BLOCK;
            let l = BLOCK.min(hw - a);
            let gbase = img_i * c * hw;
            let mut dot = [0f32; BLOCK];
            for k in 0..c {
                let d = &dldp[gbase + k * hw + a..gbase + k * hw + a + l];
                // SAFETY: this block owns probs[gbase + k*hw + a .. + l] for every k.
                let row =
                    unsafe { std::slice::from_raw_parts(gp.get().add(gbase + k * hw + a), l) };
                for p in 0..l {
                    dot[p] += row[p] * d[p];
                }
            }
            for k in 0..c {
                let d = &dldp[gbase + k * hw + a..gbase + k * hw + a + l];
                // SAFETY: as above.
                let row =
                    unsafe { std::slice::from_raw_parts_mut(gp.get().add(gbase + k * hw + a), l) };
                for p in 0..l {
                    row[p] *= g0 * (d[p] - dot[p]);
                }
            }
        });
        probs
    }

    fn backward_impl(&self, x: &[f32], dims: [usize; 4], g0: f32, dldp: &[f32]) -> Vec<f32> {
        let [n, c, h, w] = dims;
        let hw = h * w;
        let nblk = hw.div_ceil(BLOCK);
        let mut grad = kernel_buffer(n * c * hw);
        let gp = SyncPtr(grad.as_mut_ptr());
        (0..n * nblk).into_par_iter().for_each(|t| {
            let (img_i, b) = (t / nblk, t % nblk);
            let a = b * BLOCK;
            let l = BLOCK.min(hw - a);
            let img = &x[img_i * c * hw..(img_i + 1) * c * hw];
            let gbase = img_i * c * hw;
            let mut mx = [0f32; BLOCK];
            let mut am = [0u32; BLOCK];
            let mut sm = [0f32; BLOCK];
            let mut dot = [0f32; BLOCK];
            block_max(img, hw, c, a, &mut mx[..l], &mut am[..l]);
            for k in 0..c {
                let row = &img[k * hw + a..k * hw + a + l];
                let d = &dldp[gbase + k * hw + a..gbase + k * hw + a + l];
                // SAFETY: this block owns grad[gbase + k*hw + a .. + l] for every k.
                let grow =
                    unsafe { std::slice::from_raw_parts_mut(gp.get().add(gbase + k * hw + a), l) };
                for p in 0..l {
                    let e = fast_exp(row[p] - mx[p]);
                    grow[p] = e;
                    sm[p] += e;
                    dot[p] += e * d[p];
                }
            }
            for p in 0..l {
                sm[p] = 1.0 / sm[p];
                dot[p] *= sm[p];
                sm[p] *= g0;
            }
            for k in 0..c {
                let d = &dldp[gbase + k * hw + a..gbase + k * hw + a + l];
                // SAFETY: as above.
                let grow =
                    unsafe { std::slice::from_raw_parts_mut(gp.get().add(gbase + k * hw + a), l) };
                for p in 0..l {
                    grow[p] *= sm[p] * (d[p] - dot[p]);
                }
            }
        });
        grad
    }
}

impl FusedLoss for FusedLovasz {
    const NAME: &'static str = "recallseg-fused-lovasz";

    fn n_classes(&self) -> usize {
        self.n_classes
    }

    fn forward<L: Label>(&self, x: &[f32], dims: [usize; 4], labels: &[L]) -> Result<f64> {
        self.forward_impl(x, dims, labels)
    }

    /// The backward pass needs no labels: they are folded into `∂L/∂p`.
    fn backward<L: Label>(
        &self,
        x: &[f32],
        dims: [usize; 4],
        _labels: &[L],
        g0: f32,
    ) -> Result<Vec<f32>> {
        self.dldp.with(|dldp| {
            Ok(match self.probs.take_if_saved()? {
                Some(p) => self.backward_in_place(p, dims, g0, dldp),
                None => self.backward_impl(x, dims, g0, dldp),
            })
        })?
    }
}

#[cfg(test)]
mod tests {
    use super::radix_sort_hi32;

    #[test]
    fn radix_sort_is_a_stable_sort_on_the_high_word() {
        let mut state = 12345u64;
        let mut v: Vec<u64> = (0..5000u64)
            .map(|i| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                // Few distinct keys so that ties (and stability) matter; some keys share digits.
                let key = (state >> 33) % 300 * 0x0010_0001;
                key << 32 | i
            })
            .collect();
        let mut want = v.clone();
        want.sort_by_key(|k| k >> 32);
        let mut tmp = Vec::new();
        radix_sort_hi32(&mut v, &mut tmp);
        assert_eq!(v, want);
    }
}
