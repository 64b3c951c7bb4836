//! Focal loss (Lin et al. 2017), softmax form.

use crate::ce_family::CeEngine;
use crate::ce_mode::CeMode;
use crate::options::LossOptions;
use crate::LossError;

/// Softmax focal loss.
///
/// ```text
/// L = (1/Z) Σ_{n valid} s_{y_n} (1 - p_n)^γ · (-log p_n),   p_n = softmax(z_n)_{y_n},
/// Z = Σ_{n valid} s_{y_n}
/// ```
///
/// γ = 1 by default ([`Focal::DEFAULT_GAMMA`]), as in the paper's analysis (Sec. IV-D). The modulating factor is
/// differentiated: `∂L/∂z_{n,j} = s_{y_n} F_n (p_{n,j} - [j = y_n]) / Z` with
/// `F = (1-p)^γ - γ (1-p)^{γ-1} p log p`. `last_class_weights` reports the mean focal weight
/// `(1/N_c) Σ_{n: y_n = c} (1 - p_n)^γ` per class (the paper's Fig. 4), `NaN` for classes absent
/// from the batch.
///
/// Differences from other implementations: segmentation_models_pytorch's multiclass
/// `FocalLoss` is a sum over classes of one-vs-rest *sigmoid* focal losses; the paper's repository
/// applies the focal factor to the batch-mean CE. This is the per-pixel softmax form of Lin et al.
#[derive(Debug, Clone)]
pub struct Focal {
    pub(crate) engine: CeEngine,
}

impl Focal {
    /// The default focusing parameter, the paper's (Sec. IV-D) and [`crate::LossConfig`]'s.
    pub const DEFAULT_GAMMA: f64 = 1.0;

    /// Focal loss over `n_classes` classes with `γ = 1` ([`Focal::with_gamma`] changes it).
    pub fn new(n_classes: usize) -> Self {
        Self {
            engine: CeEngine::new(
                "focal",
                LossOptions::new(n_classes),
                CeMode::Focal {
                    gamma: Self::DEFAULT_GAMMA,
                },
            ),
        }
    }

    /// Sets the focusing parameter `γ` (finite, `>= 0`; 0 is cross entropy, Lin et al. use 2).
    /// Kept in `f64`: an `f64` loss applies it exactly, an `f32` one rounded to `f32`.
    pub fn with_gamma(mut self, gamma: f64) -> Result<Self, LossError> {
        if !(gamma.is_finite() && gamma >= 0.0) {
            return Err(LossError::InvalidParameter {
                loss: "focal",
                field: "gamma",
                value: gamma.to_string(),
                reason: "must be finite and >= 0".into(),
            });
        }
        self.engine.mode = CeMode::Focal { gamma };
        Ok(self)
    }

    /// Per-class balancing weights `α_c` (one per class, finite, `>= 0`): the loss becomes
    /// `(1/Z) Σ_n s_{y_n} α_{y_n} (1 − p_n)^γ (−log p_n)` with `Z = Σ_n s_{y_n}` unchanged (α is
    /// not in the normaliser, unlike static class weights). This is Lin et al.'s `α_t` per class,
    /// as mmsegmentation's list-valued `alpha` weighs each class's foreground term (mmseg and
    /// smp only have the sigmoid focal loss; this is its softmax form). Covered by the fused
    /// kernel. Kept in `f64` as the class weights are.
    pub fn with_alpha(mut self, alpha: Vec<f64>) -> Result<Self, LossError> {
        crate::check_weights(&alpha, self.engine.opts.n_classes()).map_err(|e| match e {
            LossError::InvalidClassWeight { index, value } => LossError::InvalidParameter {
                loss: "focal",
                field: "alpha",
                value: value.to_string(),
                reason: format!("alpha[{index}] must be finite and >= 0"),
            },
            LossError::ClassCountMismatch { expected, got, .. } => LossError::ClassCountMismatch {
                what: "focal alpha",
                expected,
                got,
            },
            e => e,
        })?;
        self.engine.focal_alpha = Some(alpha);
        Ok(self)
    }

    /// The per-class α, if set.
    pub fn alpha(&self) -> Option<&[f64]> {
        self.engine.focal_alpha.as_deref()
    }

    /// The focusing parameter γ.
    pub fn gamma(&self) -> f64 {
        match self.engine.mode {
            CeMode::Focal { gamma } => gamma,
            _ => Self::DEFAULT_GAMMA,
        }
    }
}

crate::options::engine_loss!(Focal, CeEngine);
