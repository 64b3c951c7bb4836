//! The error type of the crate.

use thiserror::Error;

/// Everything that can go wrong when configuring or applying a loss.
///
/// Errors raised inside [`crate::SegLoss::forward`] travel as [`candle_core::Error`] (the trait
/// returns candle's result type); their message is this enum's `Display` text.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum LossError {
    /// A loss name that [`crate::LossConfig::from_name`] does not know.
    #[error("unknown loss `{name}`; known losses: {known}")]
    UnknownLoss {
        /// The name that was asked for.
        name: String,
        /// The accepted names, comma separated.
        known: String,
    },
    /// A parameter outside its valid range.
    #[error("loss `{loss}`: invalid `{field}` = {value}: {reason}")]
    InvalidParameter {
        /// The loss the parameter belongs to.
        loss: &'static str,
        /// The parameter's field name.
        field: &'static str,
        /// The offending value, as text.
        value: String,
        /// Why it is rejected.
        reason: String,
    },
    /// A loss that needs per-class pixel counts was built without them.
    #[error(
        "loss `{loss}` needs per-class pixel counts (LossContext::class_pixel_counts), \
         e.g. from the data crate's class statistics of the training split"
    )]
    MissingPixelCounts {
        /// The loss that needs them.
        loss: &'static str,
    },
    /// A per-class vector whose length is not the number of classes.
    #[error("{what} has {got} entries but the loss has {expected} classes")]
    ClassCountMismatch {
        /// Which vector (`class_pixel_counts`, `class_weights`).
        what: &'static str,
        /// The number of classes.
        expected: usize,
        /// The vector's length.
        got: usize,
    },
    /// A static class weight that is negative or not finite.
    #[error("class weight {index} is {value}; weights must be finite and >= 0")]
    InvalidClassWeight {
        /// The class.
        index: usize,
        /// Its weight.
        value: f32,
    },
    /// Zero classes.
    #[error("a loss needs at least one class (n_classes = 0)")]
    NoClasses,
    /// Logits or target of the wrong rank or size.
    #[error("bad shape: {0}")]
    Shape(String),
    /// Logits or target of an unsupported element type.
    #[error("unsupported dtype: {0}")]
    DType(String),
    /// A target label that is neither a class index nor the ignore index.
    #[error(
        "target label {label} is out of range: expected 0..{n_classes} or the ignore index {ignore_index}"
    )]
    LabelOutOfRange {
        /// The offending label.
        label: i64,
        /// The number of classes.
        n_classes: usize,
        /// The ignore index.
        ignore_index: u32,
    },
}

impl LossError {
    /// Converts into candle's error type (used by `SegLoss::forward`).
    pub fn into_candle(self) -> candle_core::Error {
        candle_core::Error::wrap(self)
    }
}
