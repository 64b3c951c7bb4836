//! Online hard example mining cross entropy (Shrivastava et al. 2016, as used for segmentation).

use crate::ce_family::{CeEngine, CeMode};
use crate::options::{EngineLoss, LossOptions};
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

/// OHEM cross entropy: the mean cross entropy over the hardest valid pixels only.
///
/// ```text
/// L = Σ_{n ∈ K} s_{y_n} CE_n / Σ_{n ∈ K} s_{y_n}
/// ```
///
/// with `K` the kept pixels ([`OhemSelection`]) and `s` the optional static class weights. The
/// selection carries no gradient: kept pixels get the (weighted) CE gradient over `|K|`, the
/// others none. The paper keeps 70 % (`keep_ratio = 0.7`). The paper's code selects among *all*
/// pixels (ignored ones count, with loss 0) and keeps `⌊0.7 · N·H·W⌋`; here only valid pixels
/// compete. `last_class_weights` reports, per class, the fraction of its pixels that were kept
/// (`NaN` for classes absent from the batch).
#[derive(Debug, Clone)]
pub struct Ohem {
    pub(crate) engine: CeEngine,
}

impl Ohem {
    /// OHEM over `n_classes` classes with the given selection.
    pub fn new(n_classes: usize, selection: OhemSelection) -> Result<Self, LossError> {
        selection.validate()?;
        Ok(Self {
            engine: CeEngine::new("ohem", LossOptions::new(n_classes), CeMode::Ohem(selection)),
        })
    }
}

impl EngineLoss for Ohem {
    type Engine = CeEngine;

    fn engine(&self) -> &CeEngine {
        &self.engine
    }

    fn engine_mut(&mut self) -> &mut CeEngine {
        &mut self.engine
    }
}
