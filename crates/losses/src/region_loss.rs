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

/// Loss value and the gradient coefficients `α, β` (per group × class, row-major) from the sums.
///
/// `s` are the static class weights, `groups` the number of groups (images or 1).
pub(crate) fn region_loss(
    kind: RegionKind,
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
            for j in 0..groups * c {
                if g[j] <= 0.0 {
                    continue;
                }
                let k = s[j % c] * norm;
                let raw = (1.0 - a - b) * i[j] + a * p[j] + b * g[j];
                let (d, clamped) = if raw < DICE_EPS {
                    (DICE_EPS, true)
                } else {
                    (raw, false)
                };
                loss += k * (1.0 - i[j] / d);
                if clamped {
                    alpha[j] = 0.0;
                    beta[j] = -k / d;
                } else {
                    alpha[j] = k * a * i[j] / (d * d);
                    beta[j] = -k * (1.0 / d - (1.0 - a - b) * i[j] / (d * d));
                }
            }
        }
    }
    (loss, alpha, beta)
}
