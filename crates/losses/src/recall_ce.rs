//! Recall loss (Tian et al., ICRA 2022, Eq. 5).

use crate::ce_family::CeEngine;
use crate::ce_mode::{CeMode, CeNorm, ClassStats, ClassWeighting, DynWeights};
use crate::options::LossOptions;
use crate::LossError;

/// Recall loss: cross entropy weighted by each class's false negative rate in the batch.
///
/// ```text
/// R_c = TP_c / (TP_c + FN_c)                  (argmax predictions, valid pixels of the batch)
/// L   = (1/Z) Σ_{n valid} s_{y_n} (1 - R_{y_n}) CE_n,     Z = Σ_{n valid} s_{y_n}
/// ```
///
/// This is the paper's Eq. 5, `-Σ_c Σ_{n: y_n = c} (1 - R_c) log p_n`, divided by the number of
/// valid pixels (`s ≡ 1` unless static class weights are given): the paper's code
/// (`RecallCrossEntropy` in `ptsemseg/loss/recall_loss.py`) takes `(weight[target] * CE).mean()`.
/// Differences from that code, all documented in `docs/losses.md`: its mean runs over all pixels
/// (ignored ones included, with loss 0) where this one runs over valid pixels; its false-negative
/// counter starts at 1, so a class without false negatives gets weight `1/N_c` instead of
/// `1 - R_c = 0`; this loss follows the equation (`0`).
///
/// The weights are statistics of the argmax and carry no gradient, so
/// `∂L/∂z_{n,j} = s_{y_n} (1 - R_{y_n}) (p_{n,j} - [j = y_n]) / Z`. With every prediction wrong
/// the weights are 1 and the loss is plain cross entropy; a class predicted perfectly stops
/// contributing.
///
/// Optionally ([`RecallCe::with_ema`]) the recall is smoothed across steps,
/// `R̄_c ← m R̄_c + (1 - m) R_c` for classes present in the batch (the first observation
/// initialises it), and the weights become `1 - R̄_c`. `last_class_weights` reports `1 - R_c`
/// (or `1 - R̄_c`) per class, `NaN` for classes absent from the last batch; static class
/// weights, if any, multiply on top and are not included.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use recallseg_losses::{RecallCe, SegLoss};
///
/// # fn main() -> candle_core::Result<()> {
/// // Two pixels of class 0 (one predicted right, one wrong) and one of class 1 (right).
/// let logits = Tensor::new(&[[[[2.0f32, -1.0, 3.0]], [[0.0f32, 1.0, 4.0]]]], &Device::Cpu)?;
/// let target = Tensor::new(&[[[0u8, 0, 1]]], &Device::Cpu)?;
/// let mut loss = RecallCe::new(2);
/// let value = loss.forward(&logits, &target)?;
/// // Class 0 has recall 1/2 (weight 0.5), class 1 recall 1 (weight 0).
/// let weights = loss.last_class_weights().expect("recall weights");
/// assert_eq!(weights, vec![0.5, 0.0]);
/// assert!(value.to_scalar::<f32>()? > 0.0);
/// let _gradients = value.backward()?; // differentiable like any candle op
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RecallCe {
    pub(crate) engine: CeEngine,
}

/// Which recall loss [`RecallCe`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecallVariant {
    /// The paper's Eq. 5 (default): weight `1 − recall_c = FN_c / N_c` of each class present in
    /// the batch, mean over the valid pixels.
    #[default]
    Eq5,
    /// What the paper's public code (PotatoTian/recall-semseg, `recall_loss.py`) computes:
    /// `FN_c / N_c` with both counters starting at 1, so a class present without false negatives
    /// weighs `1 / N_c` instead of 0; the weighted cross entropy is averaged over *all* pixels of
    /// the batch, ignored ones included (their term is 0). The code's remapping of the ignore
    /// label onto class 1 (an indexing bug) is not reproduced.
    PaperCode,
    /// Eq. 5 with recall measured **per image**: `w_{n,c} = 1 − TP_{n,c} / N_{n,c}` from the
    /// argmax statistics of image `n` alone, so a class's weight differs between the images of
    /// a batch; mean over the valid pixels as Eq. 5. Runs on the portable path (the fused
    /// kernel gathers batch statistics only). `last_class_weights` reports the pixel-weighted
    /// mean weight `Σ_n w_{n,c} N_{n,c} / N_c`.
    PerImage,
    /// The paper repository's unused `RecallCrossEntropy` of `ptsemseg/loss/loss.py`:
    /// `w_c = FN_c / N_c` with counters from 1 (as `paper_code`), handed to PyTorch's
    /// `F.cross_entropy(weight=w, ignore_index=255)`, i.e. normalised by the weight sum
    /// `Σ_{n valid} s_{y_n} w_{y_n}` instead of the pixel count. Static class weights multiply.
    /// The file's remapping of the ignore label onto class 0 is not reproduced.
    PaperLossPy,
    /// [`RecallVariant::PaperLossPy`] with the file's `weight` argument: the class weights are
    /// the blend `0.5 · FN_c / N_c + 0.5 · s_c` with the static class weights `s` (all 1 when
    /// none are given) instead of their product; normalised by their sum.
    PaperLossPyBlend,
}

impl RecallVariant {
    /// The config spelling (`"eq5"`, `"paper_code"`, `"per_image"`, `"paper_loss_py"`,
    /// `"paper_loss_py_blend"`).
    pub fn as_str(&self) -> &'static str {
        match self {
            RecallVariant::Eq5 => "eq5",
            RecallVariant::PaperCode => "paper_code",
            RecallVariant::PerImage => "per_image",
            RecallVariant::PaperLossPy => "paper_loss_py",
            RecallVariant::PaperLossPyBlend => "paper_loss_py_blend",
        }
    }
}

impl RecallCe {
    /// The paper's instantaneous recall loss over `n_classes` classes.
    pub fn new(n_classes: usize) -> Self {
        Self {
            engine: CeEngine::new(
                "recall_ce",
                LossOptions::new(n_classes),
                recall_mode(None, RecallVariant::Eq5),
            ),
        }
    }

    /// Smooths recall with an exponential moving average of momentum `m ∈ [0, 1)` across steps
    /// (`m = 0` is the instantaneous loss).
    pub fn with_ema(mut self, momentum: f64) -> Result<Self, LossError> {
        if !(0.0..1.0).contains(&momentum) {
            return Err(LossError::InvalidParameter {
                loss: "recall_ce",
                field: "ema",
                value: momentum.to_string(),
                reason: "the moving-average momentum must be in [0, 1)".into(),
            });
        }
        self.engine.mode = recall_mode(Some(momentum as f32), RecallVariant::Eq5);
        Ok(self)
    }

    /// Which definition the loss computes: Eq. 5 (default) or one of the other
    /// [`RecallVariant`]s; only Eq. 5 has a moving average (this resets a `with_ema` setting).
    pub fn with_variant(mut self, variant: RecallVariant) -> Self {
        self.engine.mode = recall_mode(None, variant);
        self
    }

    /// Label smoothing `ε ∈ [0, 1)` (segmentation_models_pytorch's `SoftCrossEntropyLoss`
    /// `smooth_factor`): each pixel's cross entropy is taken against `(1 − ε) onehot + ε / C`.
    pub fn with_label_smoothing(mut self, epsilon: f64) -> Result<Self, LossError> {
        self.engine.set_label_smoothing(epsilon)?;
        Ok(self)
    }

    /// The smoothed per-class recall (EMA option), `NaN` for classes not seen yet.
    pub fn recall_average(&self) -> Option<&[f32]> {
        self.engine.ema.as_deref()
    }

    /// Forgets the moving average (e.g. when training restarts).
    pub fn reset(&mut self) {
        self.engine.ema = None;
        self.engine.last = None;
    }
}

/// The engine mode of Recall loss: its weights are [`recall_weights`], its variant sets the
/// counters, the normaliser, the blend and per-image statistics.
fn recall_mode(momentum: Option<f32>, variant: RecallVariant) -> CeMode {
    let mut cw = ClassWeighting::plain(recall_weights);
    cw.momentum = momentum;
    match variant {
        RecallVariant::Eq5 => {}
        RecallVariant::PaperCode => {
            cw.paper_code = true;
            cw.norm = CeNorm::AllPixels;
        }
        RecallVariant::PerImage => cw.per_image = true,
        RecallVariant::PaperLossPy | RecallVariant::PaperLossPyBlend => {
            cw.paper_code = true;
            cw.norm = CeNorm::WeightSum;
            cw.blend = variant == RecallVariant::PaperLossPyBlend;
        }
    }
    CeMode::ClassWeighted(cw)
}

/// Recall loss's class weights from one batch's argmax statistics (both implementations use
/// it): `w_c = 1 − R_c` with `R_c = TP_c / N_c` (Eq. 5), or `1 − R̄_c` with the moving average
/// `R̄_c ← m R̄_c + (1 − m) R_c` (`momentum = Some(m)`; the first observation initialises it),
/// or with `paper_code` the public code's `FN_c / N_c` whose counters start at 1 (a class without
/// false negatives keeps `1 / N_c`). Classes absent from the batch weigh 0 and are reported as
/// `NaN`; `ema_prev` is the average before this batch.
pub(crate) fn recall_weights(
    cw: &ClassWeighting,
    st: &ClassStats,
    ema_prev: Option<&[f32]>,
) -> DynWeights {
    let (momentum, paper_code) = (cw.momentum, cw.paper_code);
    let c = st.count.len();
    let mut w = vec![0.0f64; c];
    let mut report = vec![f32::NAN; c];
    if paper_code {
        for k in 0..c {
            if st.count[k] > 0.0 {
                let fneg = st.count[k] - st.tp[k];
                let v = if fneg > 0.0 { fneg } else { 1.0 } / st.count[k];
                w[k] = v;
                report[k] = v as f32;
            }
        }
        return DynWeights {
            w,
            report,
            ema: None,
        };
    }
    let mut smoothed: Vec<f32> = match ema_prev {
        Some(p) => p.to_vec(),
        None => vec![f32::NAN; c],
    };
    for k in 0..c {
        if st.count[k] > 0.0 {
            let r = st.tp[k] / st.count[k];
            let rk = match momentum {
                Some(m) if !smoothed[k].is_nan() => {
                    let m = m as f64;
                    m * smoothed[k] as f64 + (1.0 - m) * r
                }
                _ => r,
            };
            smoothed[k] = rk as f32;
            w[k] = 1.0 - rk;
            report[k] = (1.0 - rk) as f32;
        }
    }
    DynWeights {
        w,
        report,
        ema: momentum.is_some().then_some(smoothed),
    }
}

crate::options::engine_loss!(RecallCe, CeEngine);
