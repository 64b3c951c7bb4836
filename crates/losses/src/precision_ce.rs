//! The hypothetical precision loss of the paper's Eq. 9 (a counterexample).

use crate::ce_family::{CeEngine, CeMode};

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
    /// The precision-weighted CE over `n_classes` classes.
    pub fn new(n_classes: usize) -> Self {
        Self {
            engine: CeEngine::new(
                "precision_ce",
                n_classes,
                crate::DEFAULT_IGNORE_INDEX,
                None,
                CeMode::Precision,
            ),
        }
    }
}

crate::ce_family::ce_loss_common!(PrecisionCe);
