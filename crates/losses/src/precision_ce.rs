//! The hypothetical precision loss of the paper's Eq. 9 (a counterexample).

use crate::ce_family::CeEngine;
use crate::ce_mode::{CeMode, ClassStats, ClassWeighting, DynWeights};
use crate::options::LossOptions;
use crate::LossError;

/// Cross entropy weighted by each class's false discovery rate in the batch (paper Eq. 9).
///
/// ```text
/// w_c = FP_c / (FP_c + TP_c)      (argmax predictions over valid pixels; 1 if c is never predicted)
/// L   = (1/Z) Σ_{n valid} s_{y_n} w_{y_n} CE_n,     Z = Σ_{n valid} s_{y_n}
/// ```
///
/// **Opt-in counterexample.** The paper (Sec. III-C) argues that this loss misbehaves: a class
/// with many false positives gets a large weight, which encourages still more predictions of
/// it, so false positives explode. It is here to reproduce that argument, not to train with.
/// Weights carry no gradient; `last_class_weights` reports `w_c`, `NaN` for classes absent from
/// the batch's ground truth.
#[derive(Debug, Clone)]
pub struct PrecisionCe {
    pub(crate) engine: CeEngine,
}

impl PrecisionCe {
    /// Label smoothing `ε ∈ [0, 1)` (segmentation_models_pytorch's `SoftCrossEntropyLoss`
    /// `smooth_factor`): each pixel's cross entropy is taken against `(1 − ε) onehot + ε / C`,
    /// `(1 − ε)(−log p_y) + (ε / C) Σ_k (−log p_k)`; weights and normalisation unchanged. Covered
    /// by the fused kernel.
    pub fn with_label_smoothing(mut self, epsilon: f64) -> Result<Self, LossError> {
        self.engine.set_label_smoothing(epsilon)?;
        Ok(self)
    }

    /// The precision-weighted CE over `n_classes` classes.
    pub fn new(n_classes: usize) -> Self {
        Self {
            engine: CeEngine::new(
                "precision_ce",
                LossOptions::new(n_classes),
                CeMode::ClassWeighted(ClassWeighting::plain(precision_weights)),
            ),
        }
    }
}

/// PrecisionCE's class weights from one batch's argmax statistics (both implementations use
/// it): `w_c = FP_c / (TP_c + FP_c)` for classes present in the ground truth, 1 for a present
/// class that is never predicted (no precision yet); absent classes weigh 0, reported `NaN`.
pub(crate) fn precision_weights(
    _: &ClassWeighting,
    st: &ClassStats,
    _: Option<&[f32]>,
) -> DynWeights {
    let c = st.count.len();
    let mut w = vec![0.0f64; c];
    let mut report = vec![f32::NAN; c];
    for k in 0..c {
        if st.count[k] > 0.0 {
            let v = if st.pred[k] > 0.0 {
                (st.pred[k] - st.tp[k]) / st.pred[k]
            } else {
                1.0
            };
            w[k] = v;
            report[k] = v as f32;
        }
    }
    DynWeights {
        w,
        report,
        ema: None,
    }
}

crate::options::engine_loss!(PrecisionCe, CeEngine);
