//! Plain cross entropy.

use crate::ce_family::CeEngine;
use crate::ce_mode::CeMode;
use crate::options::LossOptions;
use crate::LossError;

/// Softmax cross entropy, averaged over valid pixels.
///
/// ```text
/// L = (1/Z) Σ_{n valid} s_{y_n} · (-log softmax(z_n)_{y_n}),   Z = Σ_{n valid} s_{y_n}
/// ```
///
/// Without static weights `s ≡ 1` and `Z` is the number of valid pixels (PyTorch's
/// `F.cross_entropy(..., ignore_index=255)`); with them it is PyTorch's weighted mean
/// (`weight=`). Gradient: `∂L/∂z_{n,j} = s_{y_n} (p_{n,j} - [j = y_n]) / Z`. A batch without
/// valid pixels gives 0 with a zero gradient. `last_class_weights` reports the static weights,
/// or `None` without them.
#[derive(Debug, Clone)]
pub struct CrossEntropy {
    pub(crate) engine: CeEngine,
}

impl CrossEntropy {
    /// Label smoothing `ε ∈ [0, 1)` (segmentation_models_pytorch's `SoftCrossEntropyLoss`
    /// `smooth_factor`): each pixel's cross entropy is taken against `(1 − ε) onehot + ε / C`,
    /// `(1 − ε)(−log p_y) + (ε / C) Σ_k (−log p_k)`; weights and normalisation unchanged. Covered
    /// by the fused kernel.
    pub fn with_label_smoothing(mut self, epsilon: f64) -> Result<Self, LossError> {
        self.engine.set_label_smoothing(epsilon)?;
        Ok(self)
    }

    /// Cross entropy over `n_classes` classes (ignore index 255, no weights).
    pub fn new(n_classes: usize) -> Self {
        Self {
            engine: CeEngine::new("cross_entropy", LossOptions::new(n_classes), CeMode::Plain),
        }
    }
}

crate::options::engine_loss!(CrossEntropy, CeEngine);
