//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while reading, generating or loading segmentation data.
///
/// Every variant that concerns a file names it, so a bad item in a dataset of thousands can be
/// found and fixed.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An I/O operation on `path` failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A dataset root (or a folder the layout requires) does not exist.
    #[error("{what} not found: {path}")]
    MissingPath {
        /// What was expected there ("Synthia root", "mask folder", …).
        what: String,
        /// The path that does not exist.
        path: PathBuf,
    },
    /// The requested split holds no sample.
    #[error("{dataset}: split `{split}` is empty under {root} ({hint})")]
    EmptySplit {
        /// Dataset name.
        dataset: String,
        /// Split name.
        split: String,
        /// Dataset root.
        root: PathBuf,
        /// What was looked for.
        hint: String,
    },
    /// An image or label file could not be decoded (corrupt, truncated, unsupported format).
    #[error("{path}: cannot decode image: {reason}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A PNG file could not be written.
    #[error("{path}: cannot encode PNG: {reason}")]
    Encode {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An image and its label map do not have the same size.
    #[error(
        "size mismatch: image {image} is {image_w}x{image_h} but label {label} is {label_w}x{label_h}"
    )]
    SizeMismatch {
        /// Image file.
        image: PathBuf,
        /// Image width.
        image_w: u32,
        /// Image height.
        image_h: u32,
        /// Label file.
        label: PathBuf,
        /// Label width.
        label_w: u32,
        /// Label height.
        label_h: u32,
    },
    /// A label map holds a value that is not a class of the dataset (nor its ignore/void value).
    #[error("{path}: label value {value} at (x={x}, y={y}) is outside the class set ({allowed})")]
    BadLabel {
        /// Label file.
        path: PathBuf,
        /// The offending raw value.
        value: u32,
        /// Column of the first offending pixel.
        x: u32,
        /// Row of the first offending pixel.
        y: u32,
        /// What values are allowed.
        allowed: String,
    },
    /// An image has a file but its label does not (or the other way round).
    #[error("{path}: no matching {what} (expected {expected}{})", found_suffix(.found))]
    Unpaired {
        /// The file without a partner.
        path: PathBuf,
        /// What is missing ("label", "mask", "image").
        what: String,
        /// Where the partner was expected.
        expected: PathBuf,
        /// What is at `expected` when something is there but is no readable file (a folder, a
        /// broken or looping symbolic link); `None` when nothing is.
        found: Option<String>,
    },
    /// A class definition is invalid (too many classes, duplicated names, bad palette …).
    #[error("invalid class definition{}: {reason}", source_suffix(.source_file))]
    Classes {
        /// The file the classes came from, if any.
        source_file: Option<PathBuf>,
        /// Why it is invalid.
        reason: String,
    },
    /// A configuration value is invalid.
    #[error("invalid {field} = {value}: {reason}")]
    Config {
        /// The field name.
        field: String,
        /// Its value, as text.
        value: String,
        /// Why it is invalid.
        reason: String,
    },
    /// An index past the end of a dataset.
    #[error("{dataset}: index {index} out of range (len {len})")]
    OutOfRange {
        /// Dataset name.
        dataset: String,
        /// Requested index.
        index: usize,
        /// Dataset length.
        len: usize,
    },
    /// Samples of one batch differ in size (configure a resize or crop).
    #[error(
        "sample {id} is {w}x{h} but the batch is {batch_w}x{batch_h}; set a resize or crop size"
    )]
    BatchShape {
        /// Sample id.
        id: String,
        /// Sample width.
        w: usize,
        /// Sample height.
        h: usize,
        /// Batch width.
        batch_w: usize,
        /// Batch height.
        batch_h: usize,
    },
    /// A cache or class file holds invalid JSON/TOML.
    #[error("{path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn found_suffix(found: &Option<String>) -> String {
    match found {
        Some(f) => format!(", which is {f}"),
        None => String::new(),
    }
}

fn source_suffix(p: &Option<PathBuf>) -> String {
    match p {
        Some(p) => format!(" in {}", p.display()),
        None => String::new(),
    }
}

impl DataError {
    /// [`DataError::Unpaired`] for `path`, whose partner (`what`) was expected at `expected`;
    /// says what is there when something is but it is no readable file.
    pub(crate) fn unpaired(path: PathBuf, what: &str, expected: PathBuf) -> Self {
        let found = match std::fs::symlink_metadata(&expected) {
            Err(_) => None,
            Ok(l) => match std::fs::metadata(&expected) {
                Ok(m) if m.is_dir() => Some("a folder".to_string()),
                Ok(m) if m.is_file() => Some("a file that could not be listed".to_string()),
                Ok(_) => Some("not a regular file".to_string()),
                Err(e) if l.file_type().is_symlink() => {
                    Some(format!("a broken or looping symbolic link ({e})"))
                }
                Err(e) => Some(format!("unreadable ({e})")),
            },
        };
        DataError::Unpaired {
            path,
            what: what.to_string(),
            expected,
            found,
        }
    }

    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }

    /// A configuration error.
    pub fn config(
        field: impl Into<String>,
        value: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        DataError::Config {
            field: field.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}
