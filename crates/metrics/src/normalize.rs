//! The normalised confusion matrix, as sklearn's `confusion_matrix(normalize=…)` and
//! torchmetrics' `MulticlassConfusionMatrix(normalize=…)` define it.

use crate::confusion::ConfusionMatrix;
use crate::error::MetricsError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How a confusion matrix is normalised (sklearn's and torchmetrics' `normalize`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Normalize {
    /// Over the ground truth: each row sums to 1, the diagonal is the recall (`"true"`).
    #[default]
    #[serde(rename = "true")]
    True,
    /// Over the predictions: each column sums to 1, the diagonal is the precision (`"pred"`).
    #[serde(rename = "pred")]
    Pred,
    /// Over all counted pixels: the whole matrix sums to 1 (`"all"`).
    #[serde(rename = "all")]
    All,
    /// No normalisation: the counts (`"none"`).
    #[serde(rename = "none")]
    None,
}

impl Normalize {
    /// Every mode.
    pub const ALL: [Normalize; 4] = [
        Normalize::True,
        Normalize::Pred,
        Normalize::All,
        Normalize::None,
    ];

    /// The sklearn / torchmetrics name (`"true"`, `"pred"`, `"all"`, `"none"`).
    pub fn name(self) -> &'static str {
        match self {
            Normalize::True => "true",
            Normalize::Pred => "pred",
            Normalize::All => "all",
            Normalize::None => "none",
        }
    }
}

impl fmt::Display for Normalize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Normalize {
    type Err = MetricsError;
    fn from_str(s: &str) -> Result<Self, MetricsError> {
        Normalize::ALL
            .into_iter()
            .find(|n| n.name() == s)
            .ok_or_else(|| MetricsError::InvalidOption {
                option: "normalize",
                reason: format!("`{s}` is not one of true, pred, all, none"),
            })
    }
}

/// A confusion matrix divided by its row sums, column sums or total (rows = ground truth,
/// columns = prediction, row-major like [`ConfusionMatrix::counts`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NormalizedMatrix {
    /// How it was normalised.
    pub normalize: Normalize,
    /// Number of classes (`values` has `n_classes²` entries).
    pub n_classes: usize,
    /// `values[g * n + p]`: the share of cell `(g, p)`. A row (`true`), column (`pred`) or
    /// matrix (`all`) without any count is all zeros, as sklearn and torchmetrics return it
    /// (their `nan_to_num`).
    pub values: Vec<f64>,
}

impl NormalizedMatrix {
    /// The value of cell `(gt, pred)`, or `None` if either is not a class.
    pub fn get(&self, gt: usize, pred: usize) -> Option<f64> {
        let n = self.n_classes;
        (gt < n && pred < n).then(|| self.values[gt * n + pred])
    }

    /// Row `gt`, or `None` if it is not a class.
    pub fn row(&self, gt: usize) -> Option<&[f64]> {
        let n = self.n_classes;
        (gt < n).then(|| &self.values[gt * n..(gt + 1) * n])
    }
}

impl ConfusionMatrix {
    /// The matrix normalised as `normalize` says (`Normalize::True`: rows sum to 1 and the
    /// diagonal holds each class's recall). Empty rows / columns / matrices give zeros.
    pub fn normalized(&self, normalize: Normalize) -> NormalizedMatrix {
        let n = self.n_classes();
        let counts = self.counts();
        let gt = self.gt_pixels();
        let pred = self.pred_pixels();
        let total = self.total();
        let div = |v: u64, d: u64| if d > 0 { v as f64 / d as f64 } else { 0.0 };
        let values = counts
            .iter()
            .enumerate()
            .map(|(i, &v)| match normalize {
                Normalize::True => div(v, gt[i / n]),
                Normalize::Pred => div(v, pred[i % n]),
                Normalize::All => div(v, total),
                Normalize::None => v as f64,
            })
            .collect();
        NormalizedMatrix {
            normalize,
            n_classes: n,
            values,
        }
    }
}
