//! Errors of the models crate.

use std::path::PathBuf;

/// Everything that can go wrong building a model or loading its weights.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A `ModelConfig` field holds an unusable value.
    #[error("invalid model config: `{field}`: {message}")]
    Config {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The `VarBuilder` is not backed by a `VarMap`, so parameters could not be created as
    /// variables.
    #[error(
        "the model needs a VarMap-backed VarBuilder (`VarBuilder::from_varmap`): `{name}` is not a variable"
    )]
    NotAVarMap {
        /// The parameter that came back as a plain tensor.
        name: String,
    },
    /// A weight file could not be read or parsed.
    #[error("cannot read weights from {path}: {message}")]
    WeightFile {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        message: String,
    },
    /// A weight file could not be written.
    #[error("cannot write weights to {path}: {message}")]
    WriteFile {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        message: String,
    },
    /// A weight file has none of the expected tensor names.
    #[error("{path} holds neither ResNet (`conv1.weight`) nor DeepLab (`backbone.conv1.weight`) tensors")]
    UnknownLayout {
        /// The file.
        path: PathBuf,
    },
    /// A tensor the model needs is absent from the weight file.
    #[error("{path}: missing tensor `{name}` (the model needs shape {expected:?})")]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// Name of the tensor in the file.
        name: String,
        /// Shape the model expects.
        expected: Vec<usize>,
    },
    /// A tensor in the weight file has the wrong shape.
    #[error("{path}: tensor `{name}` has shape {found:?}, the model needs {expected:?}")]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// Name of the tensor in the file.
        name: String,
        /// Shape the model expects.
        expected: Vec<usize>,
        /// Shape found in the file.
        found: Vec<usize>,
    },
    /// Resolving weights through the Hugging Face hub failed (or was impossible offline).
    #[error("hub weights {repo}/{file}: {message}")]
    Hub {
        /// Repository id.
        repo: String,
        /// File in the repository.
        file: String,
        /// What went wrong.
        message: String,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
