//! The overlap losses' formulas from the per-class sums (SoftIoU, Dice, Tversky): the loss and
//! the coefficients of its gradient, shared by the portable path of [`crate::region`] and the
//! fused kernel of [`crate::fused_region`].

/// Denominator floor of Dice and Tversky (segmentation_models_pytorch's `eps`).
pub(crate) const DICE_EPS: f64 = 1e-7;
/// Denominator guard of SoftIoU (the paper's code).
pub(crate) const IOU_EPS: f64 = 1e-16;

/// Which overlap loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum RegionKind {
    /// Per image and class, `1 - mean IoU`.
    SoftIou,
    /// Over the batch, per present class `1 - Dice`.
    Dice,
    /// Over the batch, per present class `1 - Tversky(α, β)`.
    Tversky { alpha: f64, beta: f64 },
}

impl RegionKind {
    /// Whether statistics are gathered per image (SoftIoU) or over the batch.
    pub(crate) fn per_image(&self) -> bool {
        matches!(self, RegionKind::SoftIou)
    }
}

/// The options of the overlap losses Dice, Tversky and Jaccard (segmentation_models_pytorch's
/// `smooth` and `log_loss`; its `classes` become a 0/1 mask on the static weights).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct RegionOpts {
    /// Added to numerator and denominator of the score (smp's `smooth`, default 0).
    pub smooth: f64,
    /// Per class `−ln max(score, 1e-7)` instead of `1 − score` (smp's `log_loss`).
    pub log_loss: bool,
}

impl RegionOpts {
    /// The smoothing term in this crate's normalised form `(I + σ) / (D + σ)`, `σ = smooth` for
    /// every overlap loss: smp 0.6 computes Dice as Tversky(0.5, 0.5), `(I + smooth) /
    /// ((P + G)/2 + smooth)` (i.e. `(2I + 2 smooth) / (P + G + 2 smooth)`).
    pub(crate) fn sigma(&self, _kind: RegionKind) -> f64 {
        self.smooth
    }
}

/// Loss value and the gradient coefficients `α, β` (per group × class, row-major) from the sums.
///
/// `s` are the static class weights (times the `classes` mask), `groups` the number of groups
/// (images or 1).
pub(crate) fn region_loss(
    kind: RegionKind,
    ro: RegionOpts,
    i: &[f64],
    p: &[f64],
    g: &[f64],
    s: &[f64],
    groups: usize,
) -> (f64, Vec<f64>, Vec<f64>) {
    let c = s.len();
    let ssum: f64 = s.iter().sum();
    let mut alpha = vec![0.0; groups * c];
    let mut beta = vec![0.0; groups * c];
    let mut loss = 0.0;
    match kind {
        RegionKind::SoftIou => {
            let norm = if ssum > 0.0 {
                1.0 / (groups as f64 * ssum)
            } else {
                0.0
            };
            let mut acc = 0.0;
            for j in 0..groups * c {
                let k = s[j % c] * norm;
                let u = p[j] + g[j] - i[j] + IOU_EPS;
                acc += k * i[j] / u;
                alpha[j] = k * i[j] / (u * u);
                beta[j] = -k * (1.0 / u + i[j] / (u * u));
            }
            loss = 1.0 - acc;
        }
        RegionKind::Dice | RegionKind::Tversky { .. } => {
            let (a, b) = match kind {
                RegionKind::Tversky { alpha, beta } => (alpha, beta),
                _ => (0.5, 0.5),
            };
            let norm = if ssum > 0.0 { 1.0 / ssum } else { 0.0 };
            let sigma = ro.sigma(kind);
            for j in 0..groups * c {
                if g[j] <= 0.0 {
                    continue;
                }
                let k = s[j % c] * norm;
                let raw = (1.0 - a - b) * i[j] + a * p[j] + b * g[j] + sigma;
                let (d, clamped) = if raw < DICE_EPS {
                    (DICE_EPS, true)
                } else {
                    (raw, false)
                };
                let num = i[j] + sigma;
                let score = num / d;
                // d loss / d score: −1, or −1/score for the log form (0 where it is clamped).
                let dphi = if ro.log_loss {
                    loss += k * -score.max(DICE_EPS).ln();
                    if score > DICE_EPS {
                        -1.0 / score
                    } else {
                        0.0
                    }
                } else {
                    loss += k * (1.0 - score);
                    -1.0
                };
                if clamped {
                    alpha[j] = 0.0;
                    beta[j] = k * dphi / d;
                } else {
                    alpha[j] = -k * dphi * a * num / (d * d);
                    beta[j] = k * dphi * (1.0 / d - (1.0 - a - b) * num / (d * d));
                }
            }
        }
    }
    (loss, alpha, beta)
}
