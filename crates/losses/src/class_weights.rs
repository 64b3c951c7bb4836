//! Per-class weights from per-class pixel counts (the training split's class statistics).
//!
//! Every function takes one count per class and returns one weight per class. The counts come
//! from the data crate; these helpers only do the arithmetic. Weights of classes that never occur
//! are 0 for the frequency weightings (they can never be a target) and follow the paper's code
//! for the class-balanced weighting. Weights are `f64`, computed without rounding to `f32`: an `f64`
//! loss applies them exactly, an `f32` loss rounded to `f32`.

use crate::LossError;

fn check_counts(counts: &[u64], loss: &'static str) -> Result<f64, LossError> {
    if counts.is_empty() {
        return Err(LossError::NoClasses);
    }
    let total: f64 = counts.iter().map(|&c| c as f64).sum();
    if total <= 0.0 {
        return Err(LossError::InvalidParameter {
            loss,
            field: "class_pixel_counts",
            value: "all zero".into(),
            reason: "at least one class needs pixels".into(),
        });
    }
    Ok(total)
}

/// Inverse frequency `w_c = N / (C · N_c)` (so a class of average size weighs 1); 0 where
/// `N_c = 0`.
pub fn inverse_frequency(counts: &[u64]) -> Result<Vec<f64>, LossError> {
    let total = check_counts(counts, "weighted_ce")?;
    let c = counts.len() as f64;
    Ok(counts
        .iter()
        .map(|&n| if n == 0 { 0.0 } else { total / (c * n as f64) })
        .collect())
}

/// Median-frequency balancing `w_c = median_k(N_k) / N_c` (Eigen & Fergus 2015, the paper's
/// code); 0 where `N_c = 0`. The median runs over all classes, zeros included, and averages the
/// two middle values for an even class count (numpy's `np.median`).
pub fn median_frequency(counts: &[u64]) -> Result<Vec<f64>, LossError> {
    check_counts(counts, "weighted_ce")?;
    let mut sorted: Vec<f64> = counts.iter().map(|&n| n as f64).collect();
    sorted.sort_by(f64::total_cmp);
    let m = sorted.len();
    let median = if m % 2 == 1 {
        sorted[m / 2]
    } else {
        0.5 * (sorted[m / 2 - 1] + sorted[m / 2])
    };
    Ok(counts
        .iter()
        .map(|&n| if n == 0 { 0.0 } else { median / n as f64 })
        .collect())
}

/// Class-balanced weights of Cui et al. (2019): `w_c = (1 - β) / (1 - β^{N_c})`, normalised to
/// sum to `C`. `β` defaults to `(N - 1) / N` with `N = Σ_c N_c` (the paper's code); a class with
/// `N_c = 0` gets effective number 1 (as in the paper's code), i.e. the raw weight `1 - β`.
pub fn class_balanced(counts: &[u64], beta: Option<f64>) -> Result<Vec<f64>, LossError> {
    let total = check_counts(counts, "balanced_ce")?;
    let beta = match beta {
        Some(b) => {
            if !(0.0..1.0).contains(&b) {
                return Err(LossError::InvalidParameter {
                    loss: "balanced_ce",
                    field: "beta",
                    value: b.to_string(),
                    reason: "must be in [0, 1)".into(),
                });
            }
            b
        }
        None => {
            let b = (total - 1.0) / total;
            if b >= 1.0 {
                // Beyond 2^53 pixels (N - 1)/N rounds to 1 and every weight would be 0/0.
                return Err(LossError::InvalidParameter {
                    loss: "balanced_ce",
                    field: "class_pixel_counts",
                    value: format!("{total:e} pixels in total"),
                    reason: "the default beta = (N - 1)/N rounds to 1 in f64 above 2^53 pixels; \
                             give beta explicitly"
                        .into(),
                });
            }
            b
        }
    };
    // ln β computed accurately for β close to 1.
    let ln_beta = (-(1.0 - beta)).ln_1p();
    let raw: Vec<f64> = counts
        .iter()
        .map(|&n| {
            // 1 - β^n = -expm1(n ln β)
            let eff = if beta == 0.0 {
                if n == 0 {
                    0.0
                } else {
                    1.0
                }
            } else {
                -(n as f64 * ln_beta).exp_m1()
            };
            let eff = if eff == 0.0 { 1.0 } else { eff };
            (1.0 - beta) / eff
        })
        .collect();
    let sum: f64 = raw.iter().sum();
    let c = counts.len() as f64;
    Ok(raw.iter().map(|&w| w / sum * c).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_frequency_by_hand() {
        // N = 100, C = 4: w = 100 / (4 N_c)
        let w = inverse_frequency(&[50, 25, 25, 0]).unwrap();
        assert_eq!(w, vec![0.5, 1.0, 1.0, 0.0]);
    }

    #[test]
    fn median_frequency_by_hand() {
        // counts sorted: 0, 10, 30, 60 -> median 20
        let w = median_frequency(&[60, 10, 0, 30]).unwrap();
        assert_eq!(w, vec![20.0 / 60.0, 2.0, 0.0, 20.0 / 30.0]);
        // odd count: median is the middle value
        let w = median_frequency(&[1, 2, 4]).unwrap();
        assert_eq!(w, vec![2.0, 1.0, 0.5]);
    }

    #[test]
    fn class_balanced_by_hand() {
        // beta = 0.5: raw = 0.5 / (1 - 0.5^n): n=1 -> 1, n=2 -> 2/3, n=0 -> 0.5 (eff 1)
        let w = class_balanced(&[1, 2, 0], Some(0.5)).unwrap();
        let raw = [1.0, 2.0 / 3.0, 0.5];
        let s: f64 = raw.iter().sum();
        for (got, r) in w.iter().zip(raw) {
            assert!((got - r / s * 3.0).abs() < 1e-15);
        }
        let sum: f64 = w.iter().sum();
        assert!((sum - 3.0).abs() < 1e-14);
    }

    #[test]
    fn class_balanced_default_beta_is_near_inverse_frequency_for_small_classes() {
        // With beta = (N-1)/N and N_c << N, 1 - beta^N_c ~ N_c / N: weights ~ 1/N_c.
        let w = class_balanced(&[1_000_000, 10, 100], None).unwrap();
        assert!((w[1] / w[2] - 10.0).abs() < 0.01, "{w:?}");
    }

    #[test]
    fn bad_counts_are_errors() {
        assert_eq!(inverse_frequency(&[]), Err(LossError::NoClasses));
        assert!(median_frequency(&[0, 0]).is_err());
        assert!(class_balanced(&[1, 2], Some(1.0)).is_err());
        assert!(class_balanced(&[1, 2], Some(-0.1)).is_err());
        // The default beta = (N-1)/N is 1 in f64 beyond 2^53 pixels: an error naming the total,
        // not NaN weights (they were [NaN, NaN]).
        let e = class_balanced(&[u64::MAX, 1], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1.8446744073709552e19"), "{e}");
        let w = class_balanced(&[u64::MAX / 2, 1], Some(0.999)).unwrap();
        assert!(w.iter().all(|v| v.is_finite()), "{w:?}");
    }
}
