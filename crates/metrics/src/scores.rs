//! The score types of one class and of a mean over classes, shared by the report and the
//! averaging.

use serde::{Deserialize, Serialize};

/// Scores of one class. `TP` = true positives (the diagonal cell), `FN` = ground-truth pixels of
/// the class predicted as another class, `FP` = pixels of other classes predicted as this one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassScores {
    /// Class name.
    pub name: String,
    /// Ground-truth pixels of the class, `TP + FN` (row sum).
    pub gt_pixels: u64,
    /// Pixels predicted as the class, `TP + FP` (column sum).
    pub pred_pixels: u64,
    /// Correctly predicted pixels, `TP`.
    pub true_positives: u64,
    /// Recall (= class accuracy) `TP / (TP + FN)`; `None` when the class has no ground-truth
    /// pixels.
    pub recall: Option<f64>,
    /// Precision `TP / (TP + FP)`; `None` when no pixel is predicted as the class.
    pub precision: Option<f64>,
    /// Intersection over union `TP / (TP + FP + FN)`; `None` when the class is absent from both
    /// ground truth and prediction.
    pub iou: Option<f64>,
    /// Dice / F1 `2·TP / (2·TP + FP + FN)`; `None` when the class is absent from both ground
    /// truth and prediction.
    pub dice: Option<f64>,
    /// F-beta `(1 + β²)·TP / ((1 + β²)·TP + β²·FN + FP)` with the report's
    /// [`beta`](Report::beta) (= Dice for β = 1); `None` when the class is absent from both
    /// ground truth and prediction. Absent (`None`) in reports serialised before it existed.
    #[serde(default)]
    pub fbeta: Option<f64>,
}

/// A mean over classes, NaN-aware: the average of the defined values only.
#[derive(Copy, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Mean {
    /// The mean, `None` when no class has a defined value.
    pub value: Option<f64>,
    /// How many classes the mean covers (those with a defined value).
    pub classes: usize,
}

impl Mean {
    /// The plain average of the defined values (`numpy.nanmean`).
    pub fn of<I: IntoIterator<Item = Option<f64>>>(values: I) -> Mean {
        let (sum, classes) = values
            .into_iter()
            .flatten()
            .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
        Mean {
            value: (classes > 0).then(|| sum / classes as f64),
            classes,
        }
    }
}
