//! Pieces the dataset readers share: item lists, label value mapping, pair decoding.

use crate::dataset::{LabelMap, Sample};
use crate::error::DataError;
use crate::fingerprint::Fnv64;
use crate::png_io::{decode_label, decode_label_bytes, decode_rgb8, RawLabel};
use std::path::{Path, PathBuf};

/// One (image, label) file pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Item {
    pub image: PathBuf,
    pub label: PathBuf,
    pub id: String,
}

/// Maps raw label values (u16) to train ids, rejecting values outside the class set.
#[derive(Debug, Clone)]
pub(crate) struct LabelLut {
    /// `table[raw]` is the train id, or [`LabelLut::BAD`].
    table: Vec<u16>,
    /// Human description of the allowed raw values (for errors).
    allowed: String,
}

impl LabelLut {
    const BAD: u16 = u16::MAX;

    /// A table where every raw value is invalid.
    pub(crate) fn new(allowed: impl Into<String>) -> Self {
        LabelLut {
            table: vec![Self::BAD; 1 << 16],
            allowed: allowed.into(),
        }
    }

    /// Maps `raw` to `train_id`.
    pub(crate) fn set(&mut self, raw: u16, train_id: u8) {
        self.table[raw as usize] = train_id as u16;
    }

    /// Converts a raw label map, or names the first pixel with a value outside the set.
    pub(crate) fn map(&self, raw: &RawLabel, path: &Path) -> Result<Vec<u8>, DataError> {
        let mut out = Vec::with_capacity(raw.data.len());
        let mut bad = false;
        for &v in &raw.data {
            let t = self.table[v as usize];
            bad |= t == Self::BAD;
            out.push(t as u8);
        }
        if bad {
            let i = raw
                .data
                .iter()
                .position(|&v| self.table[v as usize] == Self::BAD)
                .expect("a bad value was seen");
            return Err(DataError::BadLabel {
                path: path.to_path_buf(),
                value: raw.data[i] as u32,
                x: (i % raw.width) as u32,
                y: (i / raw.width) as u32,
                allowed: self.allowed.clone(),
            });
        }
        Ok(out)
    }
}

/// Decodes an item's image and label, checks their sizes agree, maps the label.
pub(crate) fn load_pair(item: &Item, lut: &LabelLut) -> Result<Sample, DataError> {
    // Sequential on purpose: the loader parallelises over items, and a fork-join per item costs
    // more than it gains when the machine is busy.
    let img = decode_rgb8(&item.image)?;
    let lbl = decode_label(&item.label)?;
    if img.width != lbl.width || img.height != lbl.height {
        return Err(DataError::SizeMismatch {
            image: item.image.clone(),
            image_w: img.width as u32,
            image_h: img.height as u32,
            label: item.label.clone(),
            label_w: lbl.width as u32,
            label_h: lbl.height as u32,
        });
    }
    let label = lut.map(&lbl, &item.label)?;
    Ok(Sample {
        image: img.data,
        label,
        width: img.width,
        height: img.height,
        id: item.id.clone(),
    })
}

/// Decodes and maps an item's label only.
pub(crate) fn load_label(item: &Item, lut: &LabelLut) -> Result<LabelMap, DataError> {
    let lbl = decode_label(&item.label)?;
    let label = lut.map(&lbl, &item.label)?;
    Ok(LabelMap {
        label,
        width: lbl.width,
        height: lbl.height,
    })
}

/// Decodes and maps an item's label from the bytes of its label file.
pub(crate) fn load_label_bytes(
    item: &Item,
    lut: &LabelLut,
    bytes: &[u8],
) -> Result<LabelMap, DataError> {
    let lbl = decode_label_bytes(bytes).map_err(|reason| DataError::Decode {
        path: item.label.clone(),
        reason,
    })?;
    let label = lut.map(&lbl, &item.label)?;
    Ok(LabelMap {
        label,
        width: lbl.width,
        height: lbl.height,
    })
}

/// Sorted names of the `*.png` files in `dir` (case-insensitive extension).
pub(crate) fn list_pngs(dir: &Path) -> Result<Vec<String>, DataError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.to_ascii_lowercase().ends_with(".png") && entry.path().is_file() {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Errors unless `path` is an existing directory.
pub(crate) fn require_dir(path: &Path, what: &str) -> Result<(), DataError> {
    if path.is_dir() {
        Ok(())
    } else {
        Err(DataError::MissingPath {
            what: what.to_string(),
            path: path.to_path_buf(),
        })
    }
}

/// Fingerprint of an item list: ids, file sizes and modification times, plus `extra` options.
pub(crate) fn fingerprint_items(items: &[Item], extra: &str) -> u64 {
    let mut h = Fnv64::default();
    h.write_str(extra);
    for it in items {
        h.write_str(&it.id);
        for p in [&it.image, &it.label] {
            // The raw OS bytes: two names that differ only outside UTF-8 differ here too.
            h.write(p.as_os_str().as_encoded_bytes());
            h.write(&[0xff]);
            if let Ok(m) = std::fs::metadata(p) {
                h.write_u64(m.len());
                if let Ok(t) = m.modified() {
                    if let Ok(d) = t.duration_since(std::time::UNIX_EPOCH) {
                        h.write_u64(d.as_nanos() as u64);
                    }
                }
            }
        }
    }
    h.finish()
}

/// The file stem of a path, as text.
pub(crate) fn stem(name: &str) -> &str {
    match name.rfind('.') {
        Some(i) => &name[..i],
        None => name,
    }
}

/// The [`crate::SegDataset`] methods shared by every dataset made of image/label file pairs
/// (fields `name: String`, `items: Vec<Item>`, `classes: ClassInfo`, `lut: LabelLut`): name,
/// length, classes, decoding a pair or only its label (from its file or its bytes), and the
/// image and label paths of an item. Expanded inside each dataset's `impl SegDataset`, beside
/// the methods that differ (normalisation, fingerprint, cache directory).
macro_rules! paired_file_methods {
    () => {
        fn name(&self) -> &str {
            &self.name
        }
        fn len(&self) -> usize {
            self.items.len()
        }
        fn class_info(&self) -> &$crate::ClassInfo {
            &self.classes
        }
        fn get(&self, index: usize) -> Result<$crate::Sample, $crate::DataError> {
            $crate::dataset::check_index(&self.name, index, self.items.len())?;
            $crate::common::load_pair(&self.items[index], &self.lut)
        }
        fn get_label(&self, index: usize) -> Result<$crate::LabelMap, $crate::DataError> {
            $crate::dataset::check_index(&self.name, index, self.items.len())?;
            $crate::common::load_label(&self.items[index], &self.lut)
        }
        fn source(&self, index: usize) -> Option<std::path::PathBuf> {
            self.items.get(index).map(|i| i.image.clone())
        }
        fn label_source(&self, index: usize) -> Option<std::path::PathBuf> {
            self.items.get(index).map(|i| i.label.clone())
        }
        fn label_from_bytes(
            &self,
            index: usize,
            bytes: &[u8],
        ) -> Result<$crate::LabelMap, $crate::DataError> {
            $crate::dataset::check_index(&self.name, index, self.items.len())?;
            $crate::common::load_label_bytes(&self.items[index], &self.lut, bytes)
        }
    };
}
pub(crate) use paired_file_methods;
