//! Tversky loss (Salehi et al. 2017).

use crate::region::RegionEngine;
use crate::region_loss::RegionKind;

crate::region::region_options!(Tversky);
use crate::LossError;

/// Soft Tversky loss over the batch, averaged over classes.
///
/// ```text
/// T_c = I_c / max(I_c + α FP_c + β FN_c, 1e-7),   FP_c = P_c - I_c,   FN_c = G_c - I_c
/// L   = (1 / Σ_c s_c) Σ_{c: G_c > 0} s_c (1 - T_c)
/// ```
///
/// with the soft sums of [`crate::Dice`] (`α = β = 0.5` is Dice). `α` weighs false positives,
/// `β` false negatives; [`crate::LossConfig`] defaults to Salehi et al.'s `α = 0.3, β = 0.7`.
/// Equals `segmentation_models_pytorch.losses.TverskyLoss("multiclass", ignore_index=255,
/// alpha=α, beta=β)` (smooth 0, eps 1e-7, γ = 1).
#[derive(Debug, Clone)]
pub struct Tversky {
    pub(crate) engine: RegionEngine,
}

impl Tversky {
    /// Largest `alpha` or `beta` accepted: weights of 1e200 and above made the denominator
    /// overflow into NaN (and the fused and portable paths disagree); useful values are around 1.
    pub const MAX_WEIGHT: f64 = 1e6;

    /// The default false-positive weight (Salehi et al. 2017, [`crate::LossConfig`]'s default).
    pub const DEFAULT_ALPHA: f64 = 0.3;
    /// The default false-negative weight.
    pub const DEFAULT_BETA: f64 = 0.7;

    /// Tversky loss over `n_classes` classes with `α = 0.3, β = 0.7`
    /// ([`Tversky::with_alpha_beta`] changes them).
    pub fn new(n_classes: usize) -> Self {
        Self {
            engine: RegionEngine::new(
                "tversky",
                n_classes,
                RegionKind::Tversky {
                    alpha: Self::DEFAULT_ALPHA,
                    beta: Self::DEFAULT_BETA,
                },
            ),
        }
    }

    /// Sets the false-positive weight `alpha` and the false-negative weight `beta` (both in
    /// `[0, MAX_WEIGHT]`, not both 0; `α = β = 0.5` is Dice).
    pub fn with_alpha_beta(mut self, alpha: f64, beta: f64) -> Result<Self, LossError> {
        for (field, v) in [("alpha", alpha), ("beta", beta)] {
            if !(v.is_finite() && (0.0..=Self::MAX_WEIGHT).contains(&v)) {
                return Err(LossError::InvalidParameter {
                    loss: "tversky",
                    field,
                    value: v.to_string(),
                    reason: format!("must be in [0, {}]", Self::MAX_WEIGHT),
                });
            }
        }
        if alpha + beta <= 0.0 {
            return Err(LossError::InvalidParameter {
                loss: "tversky",
                field: "alpha",
                value: alpha.to_string(),
                reason: "alpha + beta must be > 0".into(),
            });
        }
        self.engine.kind = RegionKind::Tversky { alpha, beta };
        Ok(self)
    }
}

crate::options::engine_loss!(Tversky, RegionEngine);
