//! Soft Dice loss (Milletari et al. 2016; multi-class form of segmentation_models_pytorch).

use crate::region::RegionEngine;
use crate::region_loss::RegionKind;

crate::region::region_options!(Dice);

/// Soft Dice loss over the batch, averaged over classes.
///
/// ```text
/// I_c = Σ_{i valid} p_{i,c} t_{i,c}     P_c = Σ_{i valid} p_{i,c}     G_c = Σ_{i valid} t_{i,c}
/// L = (1 / Σ_c s_c) Σ_{c: G_c > 0} s_c (1 - 2 I_c / max(P_c + G_c, 1e-7))
/// ```
///
/// over all valid pixels of the batch (`p` softmax probabilities, `t` one-hot target, `s` static
/// class weights, 1 by default). Classes absent from the batch's target contribute 0 but still
/// count in the average. This equals `segmentation_models_pytorch.losses.DiceLoss("multiclass",
/// ignore_index=255)` (smooth 0, eps 1e-7). Gradient:
/// `∂L/∂p_{i,c} = -(s_c/S)(2 t_{i,c}/D_c - 2 I_c/D_c²)`, `D_c = P_c + G_c`.
#[derive(Debug, Clone)]
pub struct Dice {
    pub(crate) engine: RegionEngine,
}

impl Dice {
    /// Dice loss over `n_classes` classes.
    pub fn new(n_classes: usize) -> Self {
        Self {
            engine: RegionEngine::new("dice", n_classes, RegionKind::Dice),
        }
    }
}

crate::options::engine_loss!(Dice, RegionEngine);
