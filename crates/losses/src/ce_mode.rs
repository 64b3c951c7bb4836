//! What distinguishes the members of the cross-entropy family ([`CeMode`]), the batch statistics
//! their class weights come from ([`ClassStats`]) and what a step reports back ([`DynWeights`],
//! [`StepReport`]). Shared by the engine ([`crate::ce_family`]), its fused kernel
//! ([`crate::fused_ce`]) and the members' own files, which hold their formulas (RecallCE's
//! weights in `recall_ce.rs`, PrecisionCE's in `precision_ce.rs`) and hand them to the engine
//! through [`ClassWeighting`], so that nothing imports in a circle.

use crate::ohem_selection::OhemSelection;

/// Which member of the family.
#[derive(Debug, Clone, Copy)]
pub(crate) enum CeMode {
    /// Plain (statically weighted) cross entropy.
    Plain,
    /// Per-class weights from the batch's argmax statistics (RecallCE, PrecisionCE).
    ClassWeighted(ClassWeighting),
    /// Per-pixel modulation `(1 - p)^γ` (γ as given; the f32 kernels round it).
    Focal { gamma: f64 },
    /// Online hard example mining.
    Ohem(OhemSelection),
}

/// A class-weighted member's formula and its parameters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClassWeighting {
    /// The weights from the batch statistics and the moving average before the batch
    /// (`crate::recall_ce::recall_weights`, `crate::precision_ce::precision_weights`).
    pub weights: fn(&ClassWeighting, &ClassStats, Option<&[f32]>) -> DynWeights,
    /// Momentum of the recall moving average, if one is kept (RecallCE's `ema`).
    pub momentum: Option<f32>,
    /// The paper code's counters: false negatives and pixels counted from 1, so a class present
    /// without false negatives weighs `1 / N_c`.
    pub paper_code: bool,
    /// What the weighted cross entropy is divided by.
    pub norm: CeNorm,
    /// The weights are `0.5 · dynamic + 0.5 · static` (the paper's `loss.py` with a `weight`)
    /// instead of `static · dynamic`.
    pub blend: bool,
    /// The statistics (and so the weights) are per image instead of per batch (portable path).
    pub per_image: bool,
}

impl ClassWeighting {
    /// A member with batch statistics, no moving average, Eq. 5's normalisation.
    pub(crate) fn plain(
        weights: fn(&ClassWeighting, &ClassStats, Option<&[f32]>) -> DynWeights,
    ) -> Self {
        Self {
            weights,
            momentum: None,
            paper_code: false,
            norm: CeNorm::Valid,
            blend: false,
            per_image: false,
        }
    }
}

/// The denominator `Z` of a class-weighted member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CeNorm {
    /// `Σ_{n valid} s_{y_n}`: the (static-weighted) count of valid pixels (Eq. 5).
    Valid,
    /// Every pixel of the batch, ignored ones included (the paper code's `loss.mean()`).
    AllPixels,
    /// `Σ_{n valid} W_{y_n}` with `W` the final weights: PyTorch's weighted mean
    /// (`F.cross_entropy(weight=W)`, the paper's `loss.py`).
    WeightSum,
}

impl CeMode {
    /// The loss's denominator `Z` from the static weights `s`, the final per-class weights `w`
    /// (`s` for the members without class weights), the pixel counts and the batch's pixel count
    /// (ignored ones included).
    pub(crate) fn normaliser(&self, s: &[f64], w: &[f64], count: &[f64], pixels: usize) -> f64 {
        match self {
            CeMode::ClassWeighted(ClassWeighting {
                norm: CeNorm::AllPixels,
                ..
            }) => pixels as f64,
            CeMode::ClassWeighted(ClassWeighting {
                norm: CeNorm::WeightSum,
                ..
            }) => w.iter().zip(count).map(|(a, b)| a * b).sum(),
            _ => s.iter().zip(count).map(|(a, b)| a * b).sum(),
        }
    }

    /// The final per-class weights from the static weights `s` and a step's dynamic weights
    /// `d`: `s_c · d_c`, or `0.5 d_c + 0.5 s_c` for a blending member.
    pub(crate) fn final_weights(&self, s: &[f64], d: &[f64]) -> Vec<f64> {
        match self {
            CeMode::ClassWeighted(ClassWeighting { blend: true, .. }) => {
                s.iter().zip(d).map(|(a, b)| 0.5 * b + 0.5 * a).collect()
            }
            _ => s.iter().zip(d).map(|(a, b)| a * b).collect(),
        }
    }

    /// Whether the class weights are per image (only the portable path has them).
    pub(crate) fn per_image(&self) -> bool {
        matches!(
            self,
            CeMode::ClassWeighted(ClassWeighting {
                per_image: true,
                ..
            })
        )
    }

    /// The class weights of a member from the batch statistics, shared by both
    /// implementations so they cannot drift apart: the member's formula for class-weighted
    /// members, all ones for the others.
    pub(crate) fn class_weights(&self, st: &ClassStats, ema_prev: Option<&[f32]>) -> DynWeights {
        match self {
            CeMode::ClassWeighted(cw) => (cw.weights)(cw, st, ema_prev),
            _ => {
                let c = st.count.len();
                DynWeights {
                    w: vec![1.0; c],
                    report: vec![1.0; c],
                    ema: None,
                }
            }
        }
    }

    /// Whether the member keeps a moving average across steps (its checkpointed state).
    pub(crate) fn keeps_average(&self) -> bool {
        matches!(
            self,
            CeMode::ClassWeighted(ClassWeighting {
                momentum: Some(_),
                ..
            })
        )
    }
}

/// Argmax statistics of one batch over its valid pixels.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ClassStats {
    /// Ground-truth pixels per class (`TP + FN`).
    pub count: Vec<f64>,
    /// Pixels of the class predicted as the class.
    pub tp: Vec<f64>,
    /// Pixels predicted as the class (`TP + FP`).
    pub pred: Vec<f64>,
}

/// Dynamic class weights of one step.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DynWeights {
    /// Multiplier per class used in the loss (0 for classes without pixels).
    pub w: Vec<f64>,
    /// Reported weights (`NaN` for classes absent from the batch).
    pub report: Vec<f32>,
    /// The updated recall moving average, if one is kept.
    pub ema: Option<Vec<f32>>,
}

/// What one forward pass reports back to the engine.
#[derive(Debug, Clone, Default)]
pub(crate) struct StepReport {
    pub report: Option<Vec<f32>>,
    pub ema: Option<Vec<f32>>,
    /// The report's per-class numerator and pixel count over this batch (Focal: `Σ (1 − p)^γ`;
    /// per-image Recall: `Σ_n w_{n,c} N_{n,c}`), which a sharded step accumulates over its shards.
    pub sums: Option<(Vec<f64>, Vec<f64>)>,
    /// The argmax statistics of the valid pixels (the fused kernel's `stats_only` pass).
    pub stats: Option<ClassStats>,
}

/// `1/z`, or 0 when `z = 0` (no valid pixel, or every weight 0: the loss is 0).
pub(crate) fn inv(z: f64) -> f64 {
    if z > 0.0 {
        1.0 / z
    } else {
        0.0
    }
}
