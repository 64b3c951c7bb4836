//! Class-balanced cross entropy (Cui et al. 2019).

use crate::ce_family::CeEngine;
use crate::ce_mode::CeMode;
use crate::class_weights::class_balanced;
use crate::options::LossOptions;
use crate::LossError;

/// Cross entropy weighted by the inverse effective number of samples (Cui et al., CVPR 2019).
///
/// ```text
/// w_c = (1 - β) / (1 - β^{N_c}),  normalised so that Σ_c w_c = C
/// L   = Σ_{n valid} w_{y_n} CE_n / Σ_{n valid} w_{y_n}
/// ```
///
/// `β` defaults to `(N - 1)/N` with `N` the total pixel count, as in the paper's code; a class
/// with `N_c = 0` gets an effective number of 1 (again as the paper's code). Normalisation and
/// gradient as [`crate::WeightedCe`]. `last_class_weights` reports `w`.
#[derive(Debug, Clone)]
pub struct BalancedCe {
    pub(crate) engine: CeEngine,
}

impl BalancedCe {
    /// Label smoothing `ε ∈ [0, 1)` (segmentation_models_pytorch's `SoftCrossEntropyLoss`
    /// `smooth_factor`): each pixel's cross entropy is taken against `(1 − ε) onehot + ε / C`,
    /// `(1 − ε)(−log p_y) + (ε / C) Σ_k (−log p_k)`; weights and normalisation unchanged. Covered
    /// by the fused kernel.
    pub fn with_label_smoothing(mut self, epsilon: f64) -> Result<Self, LossError> {
        self.engine.set_label_smoothing(epsilon)?;
        Ok(self)
    }

    /// Class-balanced CE from the per-class pixel counts of the training split.
    pub fn from_counts(counts: &[u64], beta: Option<f64>) -> Result<Self, LossError> {
        let w = class_balanced(counts, beta)?;
        Ok(Self {
            engine: CeEngine::new(
                "balanced_ce",
                LossOptions::new(w.len()).with_class_weights(w)?,
                CeMode::Plain,
            ),
        })
    }
}

crate::options::engine_loss!(BalancedCe, CeEngine);
