//! Which pixels OHEM keeps: [`OhemSelection`] (a ratio of the hardest valid pixels or a
//! probability threshold) and the selection itself, shared by both implementations of
//! [`crate::Ohem`].

use crate::LossError;

/// Which pixels OHEM keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OhemSelection {
    /// Keep the `⌈r · N_valid⌉` valid pixels with the largest cross entropy (the paper: `r = 0.7`).
    /// Ties at the cut are broken by pixel order (first pixels kept), so exactly that many are
    /// kept.
    KeepRatio(f64),
    /// Keep the valid pixels whose ground-truth probability is below `τ`, i.e. whose cross
    /// entropy exceeds `-ln τ`.
    Threshold(f64),
}

impl OhemSelection {
    /// Checks the parameter: ratio in `(0, 1]`, threshold in `(0, 1]`.
    pub fn validate(&self) -> Result<(), LossError> {
        let (field, v) = match *self {
            OhemSelection::KeepRatio(r) => ("keep_ratio", r),
            OhemSelection::Threshold(t) => ("threshold", t),
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

/// Keep flags for per-pixel cross entropies `ce` (`-inf` marks ignored pixels, never kept).
pub(crate) fn ohem_keep(ce: &[f32], sel: OhemSelection) -> Vec<bool> {
    match sel {
        OhemSelection::Threshold(t) => {
            let cut = -(t as f32).ln();
            ce.iter()
                .map(|&v| v != f32::NEG_INFINITY && v > cut)
                .collect()
        }
        OhemSelection::KeepRatio(r) => {
            let mut vals: Vec<f32> = ce
                .iter()
                .copied()
                .filter(|v| *v != f32::NEG_INFINITY)
                .collect();
            let n_valid = vals.len();
            let k = ((r * n_valid as f64).ceil() as usize).min(n_valid);
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
    }
}
