//! Averaging of per-class scores as torchmetrics names the modes (`macro`, `micro`, `weighted`,
//! `none`), with a choice for classes whose score is undefined: leave them out (the paper's
//! `numpy.nanmean`) or fill them with a value (torchmetrics' `zero_division`).
//!
//! Everything is computed from the exact per-class counts a [`Report`](crate::Report) holds
//! (`TP`, ground-truth pixels, predicted pixels), so an averaged score never depends on the
//! rounding of another. `docs/metrics.md` gives the formulas and which mode equals which anchor.

use crate::error::MetricsError;
use crate::scores::{ClassScores, Mean};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A per-class score that can be averaged.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Score {
    /// Recall (class accuracy) `TP / (TP + FN)`.
    Recall,
    /// Precision `TP / (TP + FP)`.
    Precision,
    /// IoU (Jaccard) `TP / (TP + FP + FN)`.
    Iou,
    /// Dice = F1 `2·TP / (2·TP + FP + FN)`.
    Dice,
    /// F-beta `(1 + β²)·TP / ((1 + β²)·TP + β²·FN + FP)`, with the report's β.
    FBeta,
}

impl Score {
    /// Every score, in the order reports print them.
    pub const ALL: [Score; 5] = [
        Score::Recall,
        Score::Precision,
        Score::Iou,
        Score::Dice,
        Score::FBeta,
    ];

    /// `(numerator, denominator)` of the score of one class, as exact counts converted to
    /// `f64` (`beta2` = β², used by [`Score::FBeta`] only).
    pub(crate) fn fraction(self, tp: u64, gt: u64, pred: u64, beta2: f64) -> (f64, f64) {
        let (tp, gt, pred) = (tp as f64, gt as f64, pred as f64);
        match self {
            Score::Recall => (tp, gt),
            Score::Precision => (tp, pred),
            Score::Iou => (tp, gt + pred - tp),
            Score::Dice => (2.0 * tp, gt + pred),
            // (1 + β²)·TP + β²·FN + FP = β²·(TP + FN) + (TP + FP).
            Score::FBeta => ((1.0 + beta2) * tp, beta2 * gt + pred),
        }
    }
}

/// How per-class scores are reduced to one number (torchmetrics' `average`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Average {
    /// The plain mean over classes (today's means; torchmetrics' default).
    #[default]
    Macro,
    /// The score of the summed counts: `ΣTP` over the summed denominators of all classes.
    Micro,
    /// The mean over classes weighted by their ground-truth pixels (support `TP + FN`).
    Weighted,
    /// No reduction: the per-class scores.
    None,
}

impl Average {
    /// Every mode.
    pub const ALL: [Average; 4] = [
        Average::Macro,
        Average::Micro,
        Average::Weighted,
        Average::None,
    ];

    /// The torchmetrics name (`"macro"`, `"micro"`, `"weighted"`, `"none"`).
    pub fn name(self) -> &'static str {
        match self {
            Average::Macro => "macro",
            Average::Micro => "micro",
            Average::Weighted => "weighted",
            Average::None => "none",
        }
    }
}

impl fmt::Display for Average {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Average {
    type Err = MetricsError;
    fn from_str(s: &str) -> Result<Self, MetricsError> {
        Average::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| MetricsError::InvalidOption {
                option: "average",
                reason: format!("`{s}` is not one of macro, micro, weighted, none"),
            })
    }
}

/// What an undefined (`0/0`) per-class score becomes when scores are averaged.
///
/// Serialised as the string `"skip"` or as the fill value (a number in `[0, 1]`), so a TOML
/// config reads `zero_division = "skip"` or `zero_division = 0.0`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ZeroDivisionRepr", into = "ZeroDivisionRepr")]
pub enum ZeroDivision {
    /// Left out of the mean, like `numpy.nanmean` in the paper's evaluation code (today's rule).
    #[default]
    Skip,
    /// Replaced by this value (torchmetrics' `zero_division`, whose default is 0). In the
    /// `macro` mode a class absent from both ground truth and prediction is still left out, as
    /// torchmetrics does.
    Fill(f64),
}

/// Serialised form of [`ZeroDivision`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum ZeroDivisionRepr {
    Value(f64),
    Name(String),
}

impl TryFrom<ZeroDivisionRepr> for ZeroDivision {
    type Error = MetricsError;
    fn try_from(r: ZeroDivisionRepr) -> Result<Self, MetricsError> {
        match r {
            ZeroDivisionRepr::Value(v) => ZeroDivision::fill(v),
            ZeroDivisionRepr::Name(s) => s.parse(),
        }
    }
}

impl From<ZeroDivision> for ZeroDivisionRepr {
    fn from(z: ZeroDivision) -> Self {
        match z {
            ZeroDivision::Skip => ZeroDivisionRepr::Name("skip".into()),
            ZeroDivision::Fill(v) => ZeroDivisionRepr::Value(v),
        }
    }
}

impl ZeroDivision {
    /// [`ZeroDivision::Fill`] with a checked value: finite and in `[0, 1]`
    /// ([`MetricsError::InvalidOption`] otherwise).
    pub fn fill(value: f64) -> Result<Self, MetricsError> {
        if (0.0..=1.0).contains(&value) {
            Ok(ZeroDivision::Fill(value))
        } else {
            Err(MetricsError::InvalidOption {
                option: "zero_division",
                reason: format!("{value} is not \"skip\" or a number between 0 and 1"),
            })
        }
    }

    /// Checks a value built directly as [`ZeroDivision::Fill`] (as [`fill`](Self::fill) does).
    pub fn validate(self) -> Result<Self, MetricsError> {
        match self {
            ZeroDivision::Skip => Ok(self),
            ZeroDivision::Fill(v) => ZeroDivision::fill(v),
        }
    }

    /// The value an undefined score takes: `None` (left out) or the fill value.
    pub fn undefined(self) -> Option<f64> {
        match self {
            ZeroDivision::Skip => None,
            ZeroDivision::Fill(v) => Some(v),
        }
    }
}

impl fmt::Display for ZeroDivision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ZeroDivision::Skip => f.write_str("skip"),
            ZeroDivision::Fill(v) => write!(f, "{v}"),
        }
    }
}

impl FromStr for ZeroDivision {
    type Err = MetricsError;
    /// `"skip"`, or a number in `[0, 1]`.
    fn from_str(s: &str) -> Result<Self, MetricsError> {
        if s == "skip" {
            return Ok(ZeroDivision::Skip);
        }
        match s.parse::<f64>() {
            Ok(v) => ZeroDivision::fill(v),
            Err(_) => Err(MetricsError::InvalidOption {
                option: "zero_division",
                reason: format!("`{s}` is not \"skip\" or a number between 0 and 1"),
            }),
        }
    }
}

/// An averaging mode and its rule for undefined scores.
///
/// The default (`macro`, `skip`) is the paper's `numpy.nanmean` and the means a [`Report`]
/// has always held; `macro` with `zero_division = 0` is torchmetrics' default.
///
/// [`Report`]: crate::Report
#[derive(Copy, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Averaging {
    /// The reduction.
    #[serde(default)]
    pub average: Average,
    /// What an undefined per-class score becomes.
    #[serde(default)]
    pub zero_division: ZeroDivision,
}

impl Averaging {
    /// The paper's rule: macro mean of the defined scores (`numpy.nanmean`).
    pub const NANMEAN: Averaging = Averaging {
        average: Average::Macro,
        zero_division: ZeroDivision::Skip,
    };
    /// torchmetrics' default: macro mean, undefined scores counted as 0, classes absent from
    /// both ground truth and prediction left out.
    pub const TORCHMETRICS: Averaging = Averaging {
        average: Average::Macro,
        zero_division: ZeroDivision::Fill(0.0),
    };

    /// A mode with a rule.
    pub fn new(average: Average, zero_division: ZeroDivision) -> Self {
        Averaging {
            average,
            zero_division,
        }
    }

    /// Short text: `macro`, `macro, zero_division 0`, `micro` …
    pub fn label(&self) -> String {
        match self.zero_division {
            ZeroDivision::Skip => self.average.name().to_string(),
            ZeroDivision::Fill(v) => format!("{}, zero_division {v}", self.average),
        }
    }

    /// Averages `score` over `classes` (β² for F-beta): a [`Mean`] for `macro`, `micro` and
    /// `weighted`, the per-class values for `none`.
    pub(crate) fn apply(&self, score: Score, classes: &[ClassScores], beta2: f64) -> Averaged {
        let fill = self.zero_division.undefined();
        let fraction =
            |c: &ClassScores| score.fraction(c.true_positives, c.gt_pixels, c.pred_pixels, beta2);
        let value = |c: &ClassScores| {
            let (num, den) = fraction(c);
            if den > 0.0 {
                Some(num / den)
            } else {
                fill
            }
        };
        match self.average {
            Average::None => Averaged::PerClass(classes.iter().map(value).collect()),
            Average::Macro => {
                // Classes absent from both maps are left out in both rules (torchmetrics sets
                // their weight to 0; numpy's nanmean skips their NaN).
                let (sum, n) = classes
                    .iter()
                    .filter(|c| c.gt_pixels + c.pred_pixels > 0)
                    .filter_map(value)
                    .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
                Averaged::Mean(Mean {
                    value: (n > 0).then(|| sum / n as f64),
                    classes: n,
                })
            }
            Average::Micro => {
                let (num, den) = classes.iter().fold((0.0, 0.0), |(a, b), c| {
                    let (n, d) = fraction(c);
                    (a + n, b + d)
                });
                let present = classes
                    .iter()
                    .filter(|c| c.gt_pixels + c.pred_pixels > 0)
                    .count();
                let value = if den > 0.0 { Some(num / den) } else { fill };
                Averaged::Mean(Mean {
                    value,
                    classes: if value.is_some() { present } else { 0 },
                })
            }
            Average::Weighted => {
                // Weight = ground-truth pixels; a class without any has weight 0 and never
                // counts. Skip renormalises over the classes with a defined score.
                let (sum, weight, n) = classes
                    .iter()
                    .filter(|c| c.gt_pixels > 0)
                    .filter_map(|c| value(c).map(|v| (c.gt_pixels as f64, v)))
                    .fold((0.0, 0.0, 0usize), |(s, w, n), (cw, v)| {
                        (s + cw * v, w + cw, n + 1)
                    });
                Averaged::Mean(Mean {
                    value: (weight > 0.0).then(|| sum / weight),
                    classes: n,
                })
            }
        }
    }
}

/// The result of averaging a score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Averaged {
    /// One number (`macro`, `micro`, `weighted`) and how many classes entered it.
    Mean(Mean),
    /// One value per class (`none`), `None` where undefined and not filled.
    PerClass(Vec<Option<f64>>),
}

impl Averaged {
    /// The averaged value (`None` for `none`, or when no class has a defined score).
    pub fn value(&self) -> Option<f64> {
        match self {
            Averaged::Mean(m) => m.value,
            Averaged::PerClass(_) => None,
        }
    }

    /// The [`Mean`], for the reducing modes.
    pub fn mean(&self) -> Option<&Mean> {
        match self {
            Averaged::Mean(m) => Some(m),
            Averaged::PerClass(_) => None,
        }
    }

    /// The per-class values, for `none`.
    pub fn per_class(&self) -> Option<&[Option<f64>]> {
        match self {
            Averaged::Mean(_) => None,
            Averaged::PerClass(v) => Some(v),
        }
    }
}

/// Every score of a report averaged one way (stored in [`Report::averages`]).
///
/// [`Report::averages`]: crate::Report::averages
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AveragedScores {
    /// How the scores were averaged.
    pub averaging: Averaging,
    /// Recall (`macro` is mean accuracy).
    pub recall: Averaged,
    /// Precision.
    pub precision: Averaged,
    /// IoU.
    pub iou: Averaged,
    /// Dice (F1).
    pub dice: Averaged,
    /// F-beta with the report's β.
    pub fbeta: Averaged,
}

impl AveragedScores {
    /// The averaged value of `score`.
    pub fn get(&self, score: Score) -> &Averaged {
        match score {
            Score::Recall => &self.recall,
            Score::Precision => &self.precision,
            Score::Iou => &self.iou,
            Score::Dice => &self.dice,
            Score::FBeta => &self.fbeta,
        }
    }
}

impl ClassScores {
    /// The value of `score` for this class (F-beta with the β the report was made with).
    pub fn get(&self, score: Score) -> Option<f64> {
        match score {
            Score::Recall => self.recall,
            Score::Precision => self.precision,
            Score::Iou => self.iou,
            Score::Dice => self.dice,
            Score::FBeta => self.fbeta,
        }
    }
}
