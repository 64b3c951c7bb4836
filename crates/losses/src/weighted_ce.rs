//! Frequency-weighted cross entropy.

use crate::ce_family::CeEngine;
use crate::ce_mode::CeMode;
use crate::class_weights::{inverse_frequency, median_frequency};
use crate::options::LossOptions;
use crate::{LossError, WeightMode};

/// Cross entropy weighted by class frequency over the training set (paper Eq. 2).
///
/// ```text
/// L = Σ_{n valid} w_{y_n} CE_n / Σ_{n valid} w_{y_n}
/// inverse frequency:  w_c = N / (C · N_c)
/// median frequency:   w_c = median_k(N_k) / N_c          (Eigen & Fergus 2015)
/// ```
///
/// with `N_c` the pixel count of class `c` over the training split and `w_c = 0` for classes
/// that never occur. The normalisation is PyTorch's weighted mean, as in the paper's code
/// (`nn.CrossEntropyLoss(weight=…)`, median frequency), so the weights' overall scale does not
/// matter. Gradient: `w_{y_n} (p_{n,j} - [j = y_n]) / Σ w`. `last_class_weights` reports `w`.
#[derive(Debug, Clone)]
pub struct WeightedCe {
    pub(crate) engine: CeEngine,
}

impl WeightedCe {
    /// Label smoothing `ε ∈ [0, 1)` (segmentation_models_pytorch's `SoftCrossEntropyLoss`
    /// `smooth_factor`): each pixel's cross entropy is taken against `(1 − ε) onehot + ε / C`,
    /// `(1 − ε)(−log p_y) + (ε / C) Σ_k (−log p_k)`; weights and normalisation unchanged. Covered
    /// by the fused kernel.
    pub fn with_label_smoothing(mut self, epsilon: f64) -> Result<Self, LossError> {
        self.engine.set_label_smoothing(epsilon)?;
        Ok(self)
    }

    /// Weighted CE from the per-class pixel counts of the training split.
    pub fn from_counts(counts: &[u64], mode: WeightMode) -> Result<Self, LossError> {
        let w = match mode {
            WeightMode::InverseFrequency => inverse_frequency(counts)?,
            WeightMode::MedianFrequency => median_frequency(counts)?,
        };
        Self::from_weights(w)
    }

    /// Weighted CE with explicit per-class weights `w_c` (one per class, finite, `>= 0`; e.g.
    /// from [`crate::class_weights`] or a paper's table), kept in `f64`. Same loss as
    /// [`crate::CrossEntropy`] with [`crate::LossBuilder::with_class_weights`], under this name,
    /// reporting `w` as its class weights.
    pub fn from_weights(w: Vec<f64>) -> Result<Self, LossError> {
        let name = "weighted_ce";
        Ok(Self {
            engine: CeEngine::new(
                name,
                LossOptions::new(w.len()).with_class_weights(w)?,
                CeMode::Plain,
            ),
        })
    }
}

crate::options::engine_loss!(WeightedCe, CeEngine);
