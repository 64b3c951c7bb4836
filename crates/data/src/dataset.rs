//! The types every dataset shares: classes, samples, splits and the [`SegDataset`] trait.

use crate::error::DataError;
use std::path::PathBuf;

/// The default ignore index: label value for pixels that no loss or metric counts.
pub const DEFAULT_IGNORE_INDEX: u8 = 255;

/// Class names, display colours and the ignore index of a dataset.
///
/// Train ids are `0..n_classes()`; the ignore index is outside that range.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClassInfo {
    /// One name per train id.
    pub names: Vec<String>,
    /// One RGB colour per train id (for visualisations).
    pub palette: Vec<[u8; 3]>,
    /// Label value of pixels that are not counted (void).
    pub ignore_index: u8,
}

impl ClassInfo {
    /// Builds and validates a class table.
    ///
    /// Errors when there are no classes, more than 255 classes, a palette of another length than
    /// the names, duplicated or empty names, or an ignore index that is also a train id.
    pub fn new(
        names: Vec<String>,
        palette: Vec<[u8; 3]>,
        ignore_index: u8,
    ) -> Result<Self, DataError> {
        let info = ClassInfo {
            names,
            palette,
            ignore_index,
        };
        info.validate(None)?;
        Ok(info)
    }

    /// Checks the invariants listed in [`ClassInfo::new`]; `source` names the file for errors.
    pub fn validate(&self, source: Option<&std::path::Path>) -> Result<(), DataError> {
        let err = |reason: String| DataError::Classes {
            source_file: source.map(|p| p.to_path_buf()),
            reason,
        };
        let n = self.names.len();
        if n == 0 {
            return Err(err("no classes".into()));
        }
        if n > 255 {
            return Err(err(format!(
                "{n} classes; at most 255 are supported (labels are u8 train ids)"
            )));
        }
        if self.palette.len() != n {
            return Err(err(format!(
                "{} palette colours for {n} class names",
                self.palette.len()
            )));
        }
        if (self.ignore_index as usize) < n {
            return Err(err(format!(
                "ignore index {} is also a class id (classes are 0..{})",
                self.ignore_index,
                n - 1
            )));
        }
        for (i, name) in self.names.iter().enumerate() {
            if name.trim().is_empty() {
                return Err(err(format!("class {i} has an empty name")));
            }
            if self.names[..i].contains(name) {
                return Err(err(format!("class name `{name}` appears twice")));
            }
        }
        Ok(())
    }

    /// Number of classes (train ids `0..n_classes()`).
    pub fn n_classes(&self) -> usize {
        self.names.len()
    }

    /// Train id of the class called `name`, if any.
    pub fn id_of(&self, name: &str) -> Option<u8> {
        self.names.iter().position(|n| n == name).map(|i| i as u8)
    }

    /// Colours a label map for display: train ids get their palette colour, every other value
    /// (the ignore index) black. Returns H×W×3 RGB bytes.
    pub fn colorize(&self, label: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(label.len() * 3);
        for &l in label {
            let c = self.palette.get(l as usize).copied().unwrap_or([0, 0, 0]);
            out.extend_from_slice(&c);
        }
        out
    }
}

/// One decoded item of a dataset at its stored resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// H×W×3 RGB bytes, row-major.
    pub image: Vec<u8>,
    /// H×W train ids (or the ignore index), row-major.
    pub label: Vec<u8>,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// A stable identifier (relative path of the image, without extension).
    pub id: String,
}

/// A label map alone: a dataset's ground truth (what per-class pixel counting needs) or a
/// model's prediction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelMap {
    /// H×W train ids (or the ignore index), row-major.
    pub label: Vec<u8>,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
}

impl LabelMap {
    /// The train id at `(x, y)`; `None` outside the map.
    pub fn get(&self, x: usize, y: usize) -> Option<u8> {
        (x < self.width && y < self.height)
            .then(|| self.label.get(y * self.width + x).copied())
            .flatten()
    }

    /// RGB bytes (`height × width × 3`) in the colours of `palette` ([`colorize`]).
    pub fn colorize(&self, palette: &[[u8; 3]]) -> Vec<u8> {
        colorize(&self.label, palette)
    }

    /// Number of pixels of each of the `n_classes` train ids (ids outside are not counted).
    pub fn class_pixels(&self, n_classes: usize) -> Vec<u64> {
        let mut n = vec![0u64; n_classes];
        for &l in &self.label {
            if let Some(c) = n.get_mut(l as usize) {
                *c += 1;
            }
        }
        n
    }

    /// Writes the train ids as an 8-bit greyscale PNG (what programs read back), atomically.
    pub fn save_png(&self, path: &std::path::Path) -> Result<(), DataError> {
        crate::png_io::write_gray8(
            path,
            self.width,
            self.height,
            &self.label,
            crate::png_io::PngSpeed::Balanced,
        )
    }
}

/// RGB bytes (3 per label) in the colours of `palette`; labels without a colour (the ignore
/// index, ids outside the palette) are black.
pub fn colorize(labels: &[u8], palette: &[[u8; 3]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(labels.len() * 3);
    for &l in labels {
        out.extend_from_slice(palette.get(l as usize).unwrap_or(&[0, 0, 0]));
    }
    out
}

/// A dataset split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training split.
    Train,
    /// Validation split.
    Val,
    /// Test split.
    Test,
}

impl Split {
    /// `"train"`, `"val"` or `"test"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Split {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "train" => Ok(Split::Train),
            "val" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            other => Err(DataError::config(
                "split",
                other,
                "expected `train`, `val` or `test`",
            )),
        }
    }
}

/// Per-channel colour normalisation on the 0–255 scale: `(x - mean) / std`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalize {
    /// Channel means (R, G, B), 0–255 scale.
    pub mean: [f32; 3],
    /// Channel standard deviations (R, G, B), 0–255 scale.
    pub std: [f32; 3],
}

impl Normalize {
    /// ImageNet statistics (torchvision's), scaled to 0–255.
    pub const IMAGENET: Normalize = Normalize {
        mean: [123.675, 116.28, 103.53],
        std: [58.395, 57.12, 57.375],
    };

    /// No normalisation: values stay on the 0–255 scale.
    pub const NONE: Normalize = Normalize {
        mean: [0.0; 3],
        std: [1.0; 3],
    };

    /// Checks that every standard deviation is finite and positive.
    pub fn validate(&self) -> Result<(), DataError> {
        for (c, s) in self.std.iter().enumerate() {
            if !(s.is_finite() && *s > 0.0) {
                return Err(DataError::config(
                    format!("normalize.std[{c}]"),
                    s,
                    "must be finite and > 0",
                ));
            }
        }
        for (c, m) in self.mean.iter().enumerate() {
            if !m.is_finite() {
                return Err(DataError::config(
                    format!("normalize.mean[{c}]"),
                    m,
                    "must be finite",
                ));
            }
        }
        Ok(())
    }
}

/// A semantic segmentation dataset: an indexable list of (image, label) pairs with class info.
///
/// Implementations are cheap to index (`get` decodes one item from disk) and thread-safe, so the
/// [`Loader`](crate::Loader) can decode items in parallel.
pub trait SegDataset: Send + Sync {
    /// A short name for messages and cache files (`"synthia-train"`).
    fn name(&self) -> &str;

    /// Number of items.
    fn len(&self) -> usize;

    /// Whether the dataset has no item.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Class names, palette and ignore index.
    fn class_info(&self) -> &ClassInfo;

    /// Decodes item `index` (image and train-id label map at stored resolution).
    fn get(&self, index: usize) -> Result<Sample, DataError>;

    /// Decodes only the label map of item `index` (defaults to [`SegDataset::get`]).
    fn get_label(&self, index: usize) -> Result<LabelMap, DataError> {
        let s = self.get(index)?;
        Ok(LabelMap {
            label: s.label,
            width: s.width,
            height: s.height,
        })
    }

    /// The image file of item `index`, for messages (None when out of range).
    fn source(&self, index: usize) -> Option<PathBuf>;

    /// The label file of item `index` (None when out of range or not stored as a file). The
    /// pixel count cache hashes these files' bytes, so a relabelled mask is noticed even when
    /// its size and modification time were kept.
    fn label_source(&self, _index: usize) -> Option<PathBuf> {
        None
    }

    /// Decodes the label map of item `index` from `bytes`, the content of its
    /// [`label_source`](SegDataset::label_source) file already read by the caller (the pixel
    /// count pass hashes and decodes the same bytes). The default ignores `bytes` and calls
    /// [`SegDataset::get_label`], which reads the file again.
    fn label_from_bytes(&self, index: usize, bytes: &[u8]) -> Result<LabelMap, DataError> {
        let _ = bytes;
        self.get_label(index)
    }

    /// The colour normalisation this dataset is usually trained with.
    fn normalization(&self) -> Normalize {
        Normalize::IMAGENET
    }

    /// A value that changes whenever the item list or the options that affect labels change
    /// (it keys the per-class pixel count cache).
    fn fingerprint(&self) -> u64;

    /// Folder where caches (per-class pixel counts) are kept, next to the data.
    /// `None` disables caching.
    fn cache_dir(&self) -> Option<PathBuf>;
}

/// Checks `index < len`, naming the dataset otherwise.
pub(crate) fn check_index(name: &str, index: usize, len: usize) -> Result<(), DataError> {
    if index >= len {
        Err(DataError::OutOfRange {
            dataset: name.to_string(),
            index,
            len,
        })
    } else {
        Ok(())
    }
}
