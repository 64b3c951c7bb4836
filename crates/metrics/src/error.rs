//! The error type of this crate.

use std::fmt;

/// Which of the two label maps passed to [`ConfusionMatrix::update`] holds a value.
///
/// [`ConfusionMatrix::update`]: crate::ConfusionMatrix::update
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelSource {
    /// The ground-truth label map (`gt`).
    GroundTruth,
    /// The predicted label map (`pred`).
    Prediction,
}

impl fmt::Display for LabelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LabelSource::GroundTruth => "ground-truth label",
            LabelSource::Prediction => "prediction",
        })
    }
}

/// Everything that can go wrong in this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// The number of classes is zero or larger than [`MAX_CLASSES`](crate::MAX_CLASSES).
    #[error("invalid number of classes {n_classes}: must be between 1 and {max}")]
    InvalidClassCount {
        /// The number of classes asked for.
        n_classes: usize,
        /// The largest number of classes supported.
        max: usize,
    },
    /// The ground-truth and prediction slices passed to `update` differ in length.
    #[error("length mismatch: {gt} ground-truth labels but {pred} predictions")]
    LengthMismatch {
        /// Length of the ground-truth slice.
        gt: usize,
        /// Length of the prediction slice.
        pred: usize,
    },
    /// A value that is neither a class (`0..n_classes`) nor the ignore index (strict mode only).
    #[error(
        "{map} {value} at position {position} is outside 0..{n_classes} and is not the ignore index{}",
        match ignore_index { Some(i) => format!(" ({i})"), None => " (none set)".to_string() }
    )]
    InvalidLabel {
        /// Whether the value is in the ground truth or in the prediction.
        map: LabelSource,
        /// The offending value.
        value: u32,
        /// Its index in the slice passed to `update` (the first offending pixel).
        position: usize,
        /// The matrix's number of classes.
        n_classes: usize,
        /// The matrix's ignore index.
        ignore_index: Option<u32>,
    },
    /// Two matrices to merge differ in number of classes or ignore index.
    #[error("cannot merge confusion matrices: {0}")]
    Incompatible(String),
    /// A class-name list whose length differs from the number of classes.
    #[error("{names} class names given for {n_classes} classes")]
    ClassNames {
        /// Number of names given.
        names: usize,
        /// The matrix's number of classes.
        n_classes: usize,
    },
    /// A class subset that is empty, repeats a class, or names a class that does not exist.
    #[error("invalid class subset {subset:?}: {reason}")]
    InvalidSubset {
        /// The subset's name.
        subset: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Saved or serialised matrix data that is inconsistent (wrong count length, bad class count).
    #[error("invalid confusion matrix data: {0}")]
    InvalidData(String),
    /// A metric option with a value outside its range (`beta`, `zero_division`, `average`,
    /// `normalize`).
    #[error("invalid `{option}`: {reason}")]
    InvalidOption {
        /// The option's name.
        option: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
}
