//! Per-class pixel counts over a dataset split (the statistics WeightedCE and BalancedCE use).
//!
//! Counts are taken on the label maps as the dataset returns them (stored resolution, train
//! ids), ignored pixels excluded, decoding labels in parallel with rayon. The result is cached
//! as JSON in the dataset's [`cache_dir`](crate::SegDataset::cache_dir) (next to the data) under
//! `pixel-counts-<dataset name>.json`, keyed by the dataset's
//! [`fingerprint`](crate::SegDataset::fingerprint) (the file list and the options) *and* a hash
//! of the bytes of every label file ([`label_content_hash`]): a changed file list, changed
//! options or a relabelled mask (even one whose size and modification time were restored)
//! recompute and overwrite it. Reading the label files' bytes costs a fraction of decoding them,
//! which is what a cache hit saves. Datasets whose labels are not files
//! ([`SegDataset::label_source`] is `None`) are keyed on the fingerprint alone. An unwritable
//! cache folder only costs a warning.

use crate::dataset::SegDataset;
use crate::error::DataError;
use rayon::prelude::*;
use std::path::PathBuf;

/// The JSON cache file's content.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PixelCountCache {
    /// Dataset name.
    pub dataset: String,
    /// Dataset fingerprint, as 16 hex digits.
    pub fingerprint: String,
    /// Class names (for humans reading the file).
    pub names: Vec<String>,
    /// FNV-1a hash of the label files' bytes ([`label_content_hash`]), as 16 hex digits.
    #[serde(default)]
    pub content: Option<String>,
    /// Pixels per train id.
    pub counts: Vec<u64>,
    /// Number of items counted.
    pub items: usize,
}

/// Counts the pixels of every train id over all items (ignored pixels excluded), in parallel.
pub fn compute_class_pixel_counts<D: SegDataset + ?Sized>(ds: &D) -> Result<Vec<u64>, DataError> {
    let n = ds.class_info().n_classes();
    (0..ds.len())
        .into_par_iter()
        .map(|i| {
            let l = ds.get_label(i)?;
            let mut c = vec![0u64; 256];
            for &v in &l.label {
                c[v as usize] += 1;
            }
            Ok(c)
        })
        .try_reduce(
            || vec![0u64; 256],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(b) {
                    *x += y;
                }
                Ok(a)
            },
        )
        .map(|mut c| {
            c.truncate(n);
            c
        })
}

/// A hash of the bytes of every label file of `ds` (`None` when its labels are not files): each
/// file is hashed (FNV-1a 64) in parallel, and the per-file hashes are combined in item order, so
/// the value does not depend on scheduling.
pub fn label_content_hash<D: SegDataset + ?Sized>(ds: &D) -> Result<Option<u64>, DataError> {
    let paths: Option<Vec<PathBuf>> = (0..ds.len()).map(|i| ds.label_source(i)).collect();
    let Some(paths) = paths else {
        return Ok(None);
    };
    let hashes: Vec<u64> = paths
        .par_iter()
        .map(|p| {
            let bytes = std::fs::read(p).map_err(|e| DataError::io(p, e))?;
            let mut h = crate::Fnv64::default();
            h.write(&bytes);
            Ok(h.finish())
        })
        .collect::<Result<_, DataError>>()?;
    let mut all = crate::Fnv64::default();
    for h in hashes {
        all.write_u64(h);
    }
    Ok(Some(all.finish()))
}

/// Where the cache of `ds` lives, if it has a cache folder.
pub fn cache_path<D: SegDataset + ?Sized>(ds: &D) -> Option<PathBuf> {
    let safe: String = ds
        .name()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    ds.cache_dir()
        .map(|d| d.join(format!("pixel-counts-{safe}.json")))
}

/// Per-class pixel counts, read from the cache when its fingerprint matches, computed (and
/// cached) otherwise.
pub fn class_pixel_counts<D: SegDataset + ?Sized>(ds: &D) -> Result<Vec<u64>, DataError> {
    let fingerprint = format!("{:016x}", ds.fingerprint());
    let path = cache_path(ds);
    let n = ds.class_info().n_classes();
    let content = if path.is_some() {
        label_content_hash(ds)?.map(|h| format!("{h:016x}"))
    } else {
        None
    };
    if let Some(path) = &path {
        if let Ok(text) = std::fs::read_to_string(path) {
            match serde_json::from_str::<PixelCountCache>(&text) {
                Ok(c)
                    if c.fingerprint == fingerprint
                        && c.content == content
                        && c.counts.len() == n =>
                {
                    return Ok(c.counts)
                }
                Ok(_) => {}
                Err(e) => eprintln!(
                    "warning: ignoring unreadable pixel count cache {}: {e}",
                    path.display()
                ),
            }
        }
    }
    let counts = compute_class_pixel_counts(ds)?;
    if let Some(path) = &path {
        let cache = PixelCountCache {
            dataset: ds.name().to_string(),
            fingerprint,
            content,
            names: ds.class_info().names.clone(),
            counts: counts.clone(),
            items: ds.len(),
        };
        if let Err(e) = write_atomic_json(path, &cache) {
            eprintln!("warning: pixel counts not cached: {e}");
        }
    }
    Ok(counts)
}

fn write_atomic_json(path: &std::path::Path, value: &PixelCountCache) -> Result<(), DataError> {
    let dir = path.parent().expect("cache path has a folder");
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let text = serde_json::to_string_pretty(value).expect("plain struct serialises");
    let tmp = path.with_extension(format!("json.tmp{}", std::process::id()));
    std::fs::write(&tmp, text).map_err(|e| DataError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))
}
