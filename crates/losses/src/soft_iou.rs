//! SoftIoU loss (Rahman & Wang 2016).

use crate::region::RegionEngine;
use crate::region_loss::RegionKind;

/// Soft Jaccard loss, per image and class, averaged.
///
/// ```text
/// I_{n,c} = Σ_{i valid} p_{i,c} t_{i,c}       U_{n,c} = Σ_{i valid} (p_{i,c} + t_{i,c} - p_{i,c} t_{i,c})
/// L = 1 - (1 / (N Σ_c s_c)) Σ_n Σ_c s_c · I_{n,c} / (U_{n,c} + 1e-16)
/// ```
///
/// over the valid pixels `i` of image `n` (`p` softmax probabilities, `t` one-hot target, `s`
/// static class weights, all 1 by default). This is the paper's code (`SoftIoULoss`, which
/// returns `-mean IoU`; `1 -` shifts it to `[0, 1]` without changing the gradient) except that
/// ignored pixels are excluded from the union too (the paper's code counts their predictions).
/// Every class of every image counts, also when absent from it: its IoU is 0, so the loss pushes
/// its probability down. Gradient through the softmax:
/// `∂L/∂p = -(s_c/(N S)) (t/U - I(1-t)/U²)`.
#[derive(Debug, Clone)]
pub struct SoftIou {
    pub(crate) engine: RegionEngine,
}

impl SoftIou {
    /// SoftIoU over `n_classes` classes.
    pub fn new(n_classes: usize) -> Self {
        Self {
            engine: RegionEngine::new("soft_iou", n_classes, RegionKind::SoftIou),
        }
    }
}

crate::options::engine_loss!(SoftIou, RegionEngine);
