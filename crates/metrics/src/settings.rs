//! [`ReportSettings`]: how a report reduces and shows scores (the `[metrics]` section of a
//! recallseg configuration). It changes only what is reported, never a confusion matrix.

use crate::{Average, Averaging, MetricsError, Normalize, Report, ZeroDivision};
use serde::{Deserialize, Serialize};

/// How a report's headline means reduce the per-class scores, the β of its F-beta scores and how
/// its confusion matrices are normalised. Deserialises from a table whose every key is optional
/// (`average`, `zero_division`, `beta`, `confusion_normalize`); unknown keys are refused.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSettings {
    /// How the headline means reduce the per-class scores: `macro` (default), `micro` or
    /// `weighted` (torchmetrics' names; [`Average`]).
    #[serde(default)]
    pub average: Average,
    /// What an undefined per-class score (`0/0`) becomes in those means: `"skip"` (default:
    /// left out, the paper's `numpy.nanmean`) or a number in `[0, 1]` (torchmetrics'
    /// `zero_division`; `macro` with 0 is torchmetrics' default).
    #[serde(default)]
    pub zero_division: ZeroDivision,
    /// β of the F-beta scores (default 1: F1 = Dice; mmseg's `mFscore` and torchmetrics'
    /// `FBetaScore`).
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// How confusion matrices are normalised: `"true"` (default: over the ground truth, rows
    /// sum to 1, the diagonal is recall), `"pred"`, `"all"` or `"none"` (counts), as sklearn and
    /// torchmetrics name them.
    #[serde(default)]
    pub confusion_normalize: Normalize,
}

fn default_beta() -> f64 {
    1.0
}

impl Default for ReportSettings {
    fn default() -> Self {
        ReportSettings {
            average: Average::default(),
            zero_division: ZeroDivision::default(),
            beta: default_beta(),
            confusion_normalize: Normalize::default(),
        }
    }
}

impl ReportSettings {
    /// Whether every field holds its default.
    pub fn is_default(&self) -> bool {
        *self == ReportSettings::default()
    }

    /// The averaging of the headline means.
    pub fn averaging(&self) -> Averaging {
        Averaging::new(self.average, self.zero_division)
    }

    /// Checks the values; the error is `(field, message)` with the field's name inside the
    /// section (`average`, `zero_division`, `beta`).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.average == Average::None {
            return Err((
                "average",
                "`none` gives no single number for the headline means (the per-class tables \
                 show the unreduced scores); use macro, micro or weighted"
                    .into(),
            ));
        }
        if let Err(e) = self.zero_division.validate() {
            return Err(("zero_division", e.to_string()));
        }
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err((
                "beta",
                format!("{} is not a finite number above 0", self.beta),
            ));
        }
        Ok(())
    }

    /// `report` with these settings' β and, unless it is the report's own (`macro`, `skip`),
    /// their averaging stored in `averages` (printed and serialised with the report).
    pub fn apply(&self, report: Report) -> Result<Report, MetricsError> {
        let report = report.with_beta(self.beta)?;
        if self.averaging() == Averaging::NANMEAN {
            Ok(report)
        } else {
            report.with_averaging(self.averaging())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation_name_the_field() {
        let s: ReportSettings = serde_json::from_str("{}").unwrap();
        assert!(s.is_default());
        assert_eq!(s.averaging(), Averaging::NANMEAN);
        let bad = ReportSettings { beta: 0.0, ..s };
        assert_eq!(bad.validate().unwrap_err().0, "beta");
        let none = ReportSettings {
            average: Average::None,
            ..s
        };
        assert_eq!(none.validate().unwrap_err().0, "average");
        assert!(serde_json::from_str::<ReportSettings>(r#"{"avg": "micro"}"#).is_err());
    }
}
