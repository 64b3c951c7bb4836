//! The error type of the crate, [`LossError`], from building a loss to its forward pass.

use std::sync::Arc;
use thiserror::Error;

/// The crate's result type: every fallible function of the crate returns it, from the
/// constructors and `with_*` methods to [`crate::SegLoss::forward`].
pub type Result<T, E = LossError> = std::result::Result<T, E>;

/// Everything that can go wrong when configuring or applying a loss.
///
/// One type from build to forward: constructors, `with_*` methods, [`crate::LossConfig::build`],
/// [`crate::SegLoss::forward`] and [`crate::functional`] all return it, so one `?` chain covers
/// them. A failing candle operation (a device out of memory, a backward pass through a shape
/// error) arrives as [`LossError::Candle`]; `?` converts candle's error into this type and this
/// type into candle's (`From` both ways), so either can be the error type of the calling
/// function. `Display` is one message without a backtrace, whatever `RUST_BACKTRACE` says (the
/// candle error keeps its backtrace for [`CandleError::inner`]).
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
        value: f64,
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
    /// A sharding call ([`crate::SegLoss::shard_statistics`], `prepare_step`, `forward_shard`)
    /// on a loss that is computed per shard ([`crate::Sharding::PerShard`]).
    #[error("loss {loss} has no shard statistics (it is computed per shard)")]
    NoShardStatistics {
        /// The loss's name.
        loss: String,
    },
    /// [`crate::SegLoss::forward_shard`] before [`crate::SegLoss::prepare_step`] fixed the
    /// step's batch-level quantities.
    #[error("loss {loss}: forward_shard needs the step's statistics first (prepare_step)")]
    StepNotPrepared {
        /// The loss's name.
        loss: String,
    },
    /// A candle operation failed (in the forward pass, or in a caller's candle code reached
    /// through `?`).
    #[error("{0}")]
    Candle(CandleError),
}

/// A candle error inside a [`LossError`]: its `Display` is candle's message with any backtrace
/// left out; [`CandleError::inner`] is the error itself.
#[derive(Debug, Clone)]
pub struct CandleError(Arc<candle_core::Error>);

impl CandleError {
    /// The candle error.
    pub fn inner(&self) -> &candle_core::Error {
        &self.0
    }
}

impl PartialEq for CandleError {
    /// Two candle errors are equal when their messages are.
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl std::fmt::Display for CandleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&candle_message(&self.0))
    }
}

impl std::error::Error for CandleError {}

/// Candle's message for `e` without the backtraces candle attaches when `RUST_BACKTRACE` is set,
/// context and path kept; a loss error carried inside is shown by its own `Display`.
fn candle_message(e: &candle_core::Error) -> String {
    use candle_core::Error as E;
    match e {
        E::WithBacktrace { inner, .. } => candle_message(inner),
        E::Context { inner, context } => format!("{context}: {}", candle_message(inner)),
        E::WithPath { inner, path } => format!("{}: {}", path.display(), candle_message(inner)),
        E::WrappedContext { wrapped, context } => match wrapped.downcast_ref::<LossError>() {
            Some(l) if context.is_empty() => l.to_string(),
            Some(l) => format!("{context}: {l}"),
            None if context.is_empty() => wrapped.to_string(),
            None => format!("{context}: {wrapped}"),
        },
        other => other.to_string(),
    }
}

impl LossError {
    /// Converts into candle's error type inside the crate's candle-op code, so that
    /// [`From<candle_core::Error>`] gives this very error back (variant and fields) at the public
    /// boundary.
    pub(crate) fn into_candle(self) -> candle_core::Error {
        candle_core::Error::WrappedContext {
            wrapped: Box::new(self),
            context: String::new(),
        }
    }
}

impl From<candle_core::Error> for LossError {
    /// A loss error that travelled through candle code comes back as itself; any other candle
    /// error (backtraces dropped from its message) becomes [`LossError::Candle`].
    fn from(e: candle_core::Error) -> Self {
        match e {
            candle_core::Error::WithBacktrace { inner, .. } => LossError::from(*inner),
            candle_core::Error::WrappedContext { wrapped, context } if context.is_empty() => {
                match wrapped.downcast::<LossError>() {
                    Ok(l) => *l,
                    Err(wrapped) => LossError::Candle(CandleError(Arc::new(
                        candle_core::Error::WrappedContext { wrapped, context },
                    ))),
                }
            }
            other => LossError::Candle(CandleError(Arc::new(other))),
        }
    }
}

impl From<LossError> for candle_core::Error {
    /// The candle error carried by [`LossError::Candle`], or the loss error wrapped (its
    /// `Display` unchanged, no backtrace added), so `?` works in functions returning
    /// `candle_core::Result`.
    fn from(e: LossError) -> Self {
        match e {
            LossError::Candle(c) => match Arc::try_unwrap(c.0) {
                Ok(inner) => inner,
                Err(shared) => candle_core::Error::Msg(candle_message(&shared)),
            },
            other => candle_core::Error::Wrapped(Box::new(other)),
        }
    }
}
