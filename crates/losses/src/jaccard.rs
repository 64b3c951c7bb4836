//! Soft Jaccard loss over the batch (segmentation_models_pytorch's `JaccardLoss` convention).

use crate::region::RegionEngine;
use crate::region_loss::RegionKind;

crate::region::region_options!(Jaccard);

/// Soft Jaccard (IoU) loss over the batch, averaged over classes, as
/// `segmentation_models_pytorch.losses.JaccardLoss("multiclass", ignore_index=255)` computes it.
///
/// ```text
/// J_c = (I_c + smooth) / max(P_c + G_c − I_c + smooth, 1e-7)
/// L   = (1 / Σ_c s_c) Σ_{c: G_c > 0} s_c (1 − J_c)            (or −ln max(J_c, 1e-7), log_loss)
/// ```
///
/// with the soft sums of [`crate::Dice`] over all valid pixels of the batch. This differs from
/// [`crate::SoftIou`] (the paper's SoftIoU): statistics per batch instead of per image, and
/// classes absent from the batch contribute 0 (smp's mask) instead of a full `1`. It is the
/// Tversky loss with `α = β = 1` and shares its gradient (and fused kernel).
#[derive(Debug, Clone)]
pub struct Jaccard {
    pub(crate) engine: RegionEngine,
}

impl Jaccard {
    /// Jaccard loss over `n_classes` classes.
    pub fn new(n_classes: usize) -> Self {
        Self {
            engine: RegionEngine::new(
                "jaccard",
                n_classes,
                RegionKind::Tversky {
                    alpha: 1.0,
                    beta: 1.0,
                },
            ),
        }
    }
}

crate::options::engine_loss!(Jaccard, RegionEngine);
