//! Which pixels OHEM keeps: [`OhemSelection`] (a ratio or a number of the hardest valid pixels,
//! or a probability threshold) and the selection itself, shared by both implementations of
//! [`crate::Ohem`].

use crate::LossError;

/// Which pixels OHEM keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OhemSelection {
    /// Keep the `⌈r · N_valid⌉` valid pixels with the largest cross entropy (the paper: `r = 0.7`).
    /// Ties at the cut are broken by pixel order (first pixels kept), so exactly that many are
    /// kept.
    KeepRatio(f64),
    /// Keep exactly `k` valid pixels, those with the largest cross entropy (all of them when the
    /// batch has fewer than `k`), ties at the cut broken by pixel order; the loss is their
    /// (static-weighted) mean. `k >= 1`.
    KeepCount(usize),
    /// Keep the valid pixels whose ground-truth probability is below `τ`, i.e. whose cross
    /// entropy exceeds `-ln τ` (mmseg's selection with `min_kept = 0`, normalised over the kept
    /// pixels).
    Threshold(f64),
    /// mmsegmentation's `OHEMPixelSampler` followed by its `CrossEntropyLoss`, exactly: with
    /// `threshold = Some(τ)`, keep the valid pixels whose ground-truth probability `p` is below
    /// `max(τ, p_(k))`, `p_(k)` the `k`-th smallest probability (0-based) of the batch's valid
    /// pixels, `k = min(min_kept · N, N_valid − 1)`; with `threshold = None`, keep the
    /// `min_kept · N` valid pixels of largest cross entropy. The kept pixels' (static-weighted)
    /// cross entropies are summed and divided by every pixel of the batch (mmseg's default
    /// mean, ignored pixels included) or, with `avg_non_ignore`, by the valid pixels.
    Mmseg {
        /// Probability threshold `τ ∈ (0, 1]`, or `None` for the top-`min_kept` form.
        threshold: Option<f64>,
        /// Pixels kept at least, per image (mmseg's `min_kept`, default 100000 there).
        min_kept: usize,
        /// Divide by the valid pixels instead of all pixels (mmseg's `avg_non_ignore`).
        avg_non_ignore: bool,
    },
}

impl OhemSelection {
    /// Checks the parameter: ratio in `(0, 1]`, threshold in `(0, 1]`, counts `>= 1`.
    pub fn validate(&self) -> Result<(), LossError> {
        let (field, v) = match *self {
            OhemSelection::KeepCount(0) => {
                return Err(LossError::InvalidParameter {
                    loss: "ohem",
                    field: "keep_count",
                    value: "0".into(),
                    reason: "at least one pixel must be kept".into(),
                })
            }
            OhemSelection::KeepCount(_) => return Ok(()),
            OhemSelection::KeepRatio(r) => ("keep_ratio", r),
            OhemSelection::Threshold(t) => ("threshold", t),
            OhemSelection::Mmseg {
                threshold: Some(t), ..
            } => ("threshold", t),
            OhemSelection::Mmseg {
                threshold: None,
                min_kept,
                ..
            } => {
                if min_kept == 0 {
                    return Err(LossError::InvalidParameter {
                        loss: "ohem",
                        field: "min_kept",
                        value: "0".into(),
                        reason: "without a threshold, min_kept pixels per image are kept; \
                                 it must be >= 1"
                            .into(),
                    });
                }
                return Ok(());
            }
        };
        if !(v > 0.0 && v <= 1.0) {
            return Err(LossError::InvalidParameter {
                loss: "ohem",
                field,
                value: v.to_string(),
                reason: "must be in (0, 1]".into(),
            });
        }
        Ok(())
    }
}

impl OhemSelection {
    /// The loss's denominator from the kept pixels' static-weight sum, the number of valid
    /// pixels and the number of pixels of the batch.
    pub(crate) fn normaliser(&self, kept_weight: f64, n_valid: f64, pixels: usize) -> f64 {
        match *self {
            OhemSelection::Mmseg {
                avg_non_ignore: true,
                ..
            } => n_valid,
            OhemSelection::Mmseg { .. } => pixels as f64,
            _ => kept_weight,
        }
    }
}

/// Keep flags for per-pixel cross entropies `ce` (`-inf` marks ignored pixels, never kept) of a
/// batch of `n_images` images.
pub(crate) fn ohem_keep(ce: &[f32], sel: OhemSelection, n_images: usize) -> Vec<bool> {
    match sel {
        OhemSelection::Mmseg {
            threshold: Some(t),
            min_kept,
            ..
        } => {
            // mmseg compares probabilities: p = e^{-CE}.
            let prob: Vec<f64> = ce
                .iter()
                .map(|&v| {
                    if v == f32::NEG_INFINITY {
                        f64::INFINITY
                    } else {
                        (-(v as f64)).exp()
                    }
                })
                .collect();
            let mut valid: Vec<f64> = prob.iter().copied().filter(|p| p.is_finite()).collect();
            if valid.is_empty() {
                return vec![false; ce.len()];
            }
            let k = (min_kept.saturating_mul(n_images)).min(valid.len() - 1);
            let (_, kth, _) = valid.select_nth_unstable_by(k, |a, b| a.total_cmp(b));
            let cut = kth.max(t);
            prob.iter().map(|&p| p.is_finite() && p < cut).collect()
        }
        OhemSelection::Mmseg {
            threshold: None,
            min_kept,
            ..
        } => {
            let n_valid = ce.iter().filter(|v| **v != f32::NEG_INFINITY).count();
            keep_top(ce, min_kept.saturating_mul(n_images).min(n_valid))
        }
        OhemSelection::Threshold(t) => {
            let cut = -(t as f32).ln();
            ce.iter()
                .map(|&v| v != f32::NEG_INFINITY && v > cut)
                .collect()
        }
        OhemSelection::KeepRatio(r) => {
            let n_valid = ce.iter().filter(|v| **v != f32::NEG_INFINITY).count();
            keep_top(ce, ((r * n_valid as f64).ceil() as usize).min(n_valid))
        }
        OhemSelection::KeepCount(k) => {
            let n_valid = ce.iter().filter(|v| **v != f32::NEG_INFINITY).count();
            keep_top(ce, k.min(n_valid))
        }
    }
}

/// Keep flags for the `k` valid pixels (`k <= ` their number) of largest cross entropy; ties at
/// the cut are kept in pixel order.
fn keep_top(ce: &[f32], k: usize) -> Vec<bool> {
    let mut vals: Vec<f32> = ce
        .iter()
        .copied()
        .filter(|v| *v != f32::NEG_INFINITY)
        .collect();
    let n_valid = vals.len();
    if k == 0 {
        return vec![false; ce.len()];
    }
    if k == n_valid {
        return ce.iter().map(|&v| v != f32::NEG_INFINITY).collect();
    }
    // k-th largest value: everything above is kept, ties at it fill up in pixel order.
    let (_, kth, _) = vals.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let t = *kth;
    let above = ce.iter().filter(|&&v| v > t).count();
    let mut ties = k - above;
    ce.iter()
        .map(|&v| {
            if v > t {
                true
            } else if v == t && ties > 0 {
                ties -= 1;
                true
            } else {
                false
            }
        })
        .collect()
}
