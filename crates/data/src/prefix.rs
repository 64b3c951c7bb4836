//! [`prefix`]: the first items of a dataset, as a dataset (quick runs and smoke tests use a few
//! images of a large split).

use crate::dataset::SegDataset;
use crate::fingerprint::Fnv64;
use std::sync::Arc;

/// The dataset restricted to its first `max` items (`0`, or `max` at least its length: the
/// dataset itself). Its fingerprint differs from the whole dataset's, so caches keyed by it do
/// not mix.
pub fn prefix(ds: Arc<dyn SegDataset>, max: usize) -> Arc<dyn SegDataset> {
    if max == 0 || ds.len() <= max {
        ds
    } else {
        Arc::new(Prefix {
            inner: ds,
            len: max,
        })
    }
}

/// The first `len` items of a dataset (made by [`prefix`]).
pub struct Prefix {
    inner: Arc<dyn SegDataset>,
    len: usize,
}

impl SegDataset for Prefix {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn len(&self) -> usize {
        self.len
    }
    fn class_info(&self) -> &crate::ClassInfo {
        self.inner.class_info()
    }
    fn get(&self, index: usize) -> Result<crate::Sample, crate::DataError> {
        if index >= self.len {
            return Err(crate::DataError::OutOfRange {
                dataset: self.name().to_string(),
                index,
                len: self.len,
            });
        }
        self.inner.get(index)
    }
    fn get_label(&self, index: usize) -> Result<crate::LabelMap, crate::DataError> {
        if index >= self.len {
            return Err(crate::DataError::OutOfRange {
                dataset: self.name().to_string(),
                index,
                len: self.len,
            });
        }
        self.inner.get_label(index)
    }
    fn source(&self, index: usize) -> Option<std::path::PathBuf> {
        (index < self.len)
            .then(|| self.inner.source(index))
            .flatten()
    }
    fn label_source(&self, index: usize) -> Option<std::path::PathBuf> {
        (index < self.len)
            .then(|| self.inner.label_source(index))
            .flatten()
    }
    fn label_from_bytes(
        &self,
        index: usize,
        bytes: &[u8],
    ) -> Result<crate::LabelMap, crate::DataError> {
        if index >= self.len {
            return Err(crate::DataError::OutOfRange {
                dataset: self.name().to_string(),
                index,
                len: self.len,
            });
        }
        self.inner.label_from_bytes(index, bytes)
    }
    fn normalization(&self) -> crate::Normalize {
        self.inner.normalization()
    }
    fn fingerprint(&self) -> u64 {
        let mut h = Fnv64::default();
        h.write_u64(self.inner.fingerprint());
        h.write_u64(self.len as u64);
        h.finish()
    }
    fn cache_dir(&self) -> Option<std::path::PathBuf> {
        self.inner.cache_dir()
    }
}
