//! [`subset`]: chosen items of a dataset, in a chosen order, as a dataset (a data-parallel
//! rank's share of an evaluation split).

use crate::dataset::SegDataset;
use crate::fingerprint::Fnv64;
use crate::DataError;
use std::sync::Arc;

/// The dataset made of `ds`'s items `indices`, in that order (item `i` of the result is item
/// `indices[i]` of `ds`). An index out of range is an error naming the dataset. Its fingerprint
/// depends on the indices, so caches keyed by it do not mix with the whole dataset's.
pub fn subset(
    ds: Arc<dyn SegDataset>,
    indices: Vec<usize>,
) -> Result<Arc<dyn SegDataset>, DataError> {
    if let Some(&bad) = indices.iter().find(|&&i| i >= ds.len()) {
        return Err(DataError::OutOfRange {
            dataset: ds.name().to_string(),
            index: bad,
            len: ds.len(),
        });
    }
    Ok(Arc::new(Subset { inner: ds, indices }))
}

/// Chosen items of a dataset (made by [`subset`]).
pub struct Subset {
    inner: Arc<dyn SegDataset>,
    indices: Vec<usize>,
}

impl Subset {
    /// The index in the underlying dataset of item `index`.
    fn map(&self, index: usize) -> Result<usize, DataError> {
        self.indices
            .get(index)
            .copied()
            .ok_or_else(|| DataError::OutOfRange {
                dataset: self.name().to_string(),
                index,
                len: self.indices.len(),
            })
    }
}

impl SegDataset for Subset {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn class_info(&self) -> &crate::ClassInfo {
        self.inner.class_info()
    }
    fn get(&self, index: usize) -> Result<crate::Sample, DataError> {
        self.inner.get(self.map(index)?)
    }
    fn get_label(&self, index: usize) -> Result<crate::LabelMap, DataError> {
        self.inner.get_label(self.map(index)?)
    }
    fn source(&self, index: usize) -> Option<std::path::PathBuf> {
        self.map(index).ok().and_then(|i| self.inner.source(i))
    }
    fn label_source(&self, index: usize) -> Option<std::path::PathBuf> {
        self.map(index)
            .ok()
            .and_then(|i| self.inner.label_source(i))
    }
    fn label_from_bytes(&self, index: usize, bytes: &[u8]) -> Result<crate::LabelMap, DataError> {
        self.inner.label_from_bytes(self.map(index)?, bytes)
    }
    fn normalization(&self) -> crate::Normalize {
        self.inner.normalization()
    }
    fn fingerprint(&self) -> u64 {
        let mut h = Fnv64::default();
        h.write_u64(self.inner.fingerprint());
        h.write_str("subset");
        for &i in &self.indices {
            h.write_u64(i as u64);
        }
        h.finish()
    }
    fn cache_dir(&self) -> Option<std::path::PathBuf> {
        self.inner.cache_dir()
    }
}
