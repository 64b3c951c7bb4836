//! Per-class pixel counts over a dataset split (the statistics WeightedCE and BalancedCE use),
//! and [`dataset_stats`]: per-channel colour mean / standard deviation with the class pixel
//! counts, in the same parallel pass (what `recallseg stats` prints).
//!
//! Counts are taken on the label maps as the dataset returns them (stored resolution, train
//! ids), ignored pixels excluded, in one parallel pass over the items. The result is cached as
//! JSON in the dataset's [`cache_dir`](crate::SegDataset::cache_dir) (next to the data) under
//! `pixel-counts-<dataset name>.json`, item by item:
//!
//! * the whole cache is used only while the dataset's
//!   [`fingerprint`](crate::SegDataset::fingerprint) (its file list, sizes, modification times
//!   and options) is the one it was written for;
//! * each item's counts are used only while its label file's bytes hash (FNV-1a 64, see
//!   [`hash_bytes`]) to the value stored beside them. The pass reads every label file
//!   ([`SegDataset::label_source`]), hashes the bytes and decodes them
//!   ([`SegDataset::label_from_bytes`]) only when the hash differs, so a hit costs a read and a
//!   hash (a fraction of a decode), a relabelled mask is recounted even when its size and
//!   modification time were restored, and only the files that changed are decoded again.
//!
//! Items whose labels are not files are trusted to the fingerprint alone. An unwritable cache
//! folder only costs a warning; an unreadable cache file is ignored (with a warning) and
//! rewritten.

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
    /// Pixels per train id over all items (the sum of `per_item`, for humans reading the file).
    pub counts: Vec<u64>,
    /// Number of items counted.
    pub items: usize,
    /// Per item, in dataset order: the hash of its label file and its counts.
    #[serde(default)]
    pub per_item: Vec<ItemCounts>,
}

/// One item's entry in a [`PixelCountCache`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ItemCounts {
    /// FNV-1a 64 of the label file's bytes ([`hash_bytes`]) as 16 hex digits; `None` when the
    /// item's label is not a file.
    #[serde(default)]
    pub hash: Option<String>,
    /// Pixels per train id of this item.
    pub counts: Vec<u64>,
}

/// The hash that keys an item's cached counts: 64-bit FNV-1a of the bytes (stable across Rust
/// versions and platforms, unlike `std`'s `DefaultHasher`), as 16 hex digits.
pub fn hash_bytes(bytes: &[u8]) -> String {
    let mut h = crate::fingerprint::Fnv64::default();
    h.write(bytes);
    format!("{:016x}", h.finish())
}

/// Pixels per train id of one label map (values `>= n_classes`, the ignore index among them,
/// are not counted).
fn count(label: &[u8], n_classes: usize) -> Vec<u64> {
    let mut c = vec![0u64; 256];
    for &v in label {
        c[v as usize] += 1;
    }
    c.truncate(n_classes);
    c
}

fn sum(per_item: &[ItemCounts], n_classes: usize) -> Vec<u64> {
    let mut total = vec![0u64; n_classes];
    for it in per_item {
        for (t, c) in total.iter_mut().zip(&it.counts) {
            *t += c;
        }
    }
    total
}

/// Counts the pixels of every train id over all items (ignored pixels excluded), in parallel,
/// without the cache.
pub fn compute_class_pixel_counts<D: SegDataset + ?Sized>(ds: &D) -> Result<Vec<u64>, DataError> {
    let n = ds.class_info().n_classes();
    let per_item = count_items(ds, None)?;
    Ok(sum(
        &per_item.into_iter().map(|(c, _)| c).collect::<Vec<_>>(),
        n,
    ))
}

/// The pass over the items: for each (in parallel, results in item order so nothing depends
/// on scheduling), read the label file and hash it, take the counts from `cached` when the
/// hash matches, decode and count otherwise. Returns each item's entry and whether it was
/// (re)computed.
fn count_items<D: SegDataset + ?Sized>(
    ds: &D,
    cached: Option<&[ItemCounts]>,
) -> Result<Vec<(ItemCounts, bool)>, DataError> {
    let n = ds.class_info().n_classes();
    par_items(ds.len(), |i| {
        let prev = cached.and_then(|c| c.get(i));
        let Some(path) = ds.label_source(i) else {
            if let Some(p) = prev.filter(|p| p.hash.is_none()) {
                return Ok((p.clone(), false));
            }
            let l = ds.get_label(i)?;
            let counts = count(&l.label, n);
            return Ok((ItemCounts { hash: None, counts }, true));
        };
        let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
        let hash = Some(hash_bytes(&bytes));
        if let Some(p) = prev.filter(|p| p.hash == hash) {
            return Ok((p.clone(), false));
        }
        let l = ds.label_from_bytes(i, &bytes)?;
        let counts = count(&l.label, n);
        Ok((ItemCounts { hash, counts }, true))
    })
}

/// The parallel pass over the items every statistic here uses: `f(i)` for each item, run in
/// parallel, the results collected in item order (so sums over them, taken in that order, do not
/// depend on scheduling); an error of a failing item is returned.
fn par_items<T: Send>(
    n: usize,
    f: impl Fn(usize) -> Result<T, DataError> + Sync + Send,
) -> Result<Vec<T>, DataError> {
    (0..n).into_par_iter().map(f).collect()
}

/// A hash of the bytes of every label file of `ds` (`None` when its labels are not files): each
/// file is hashed ([`hash_bytes`]) in parallel, and the per-file hashes are combined in item
/// order, so the value does not depend on scheduling.
pub fn label_content_hash<D: SegDataset + ?Sized>(ds: &D) -> Result<Option<u64>, DataError> {
    let paths: Option<Vec<PathBuf>> = (0..ds.len()).map(|i| ds.label_source(i)).collect();
    let Some(paths) = paths else {
        return Ok(None);
    };
    let hashes: Vec<String> = paths
        .par_iter()
        .map(|p| {
            let bytes = std::fs::read(p).map_err(|e| DataError::io(p, e))?;
            Ok(hash_bytes(&bytes))
        })
        .collect::<Result<_, DataError>>()?;
    let mut all = crate::fingerprint::Fnv64::default();
    for h in hashes {
        all.write_str(&h);
    }
    Ok(Some(all.finish()))
}

/// Colour and class statistics of a dataset split ([`dataset_stats`]): what `recallseg stats`
/// prints.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DatasetStats {
    /// Items (images) counted.
    pub images: usize,
    /// Image pixels counted (over all items, at stored resolution).
    pub pixels: u64,
    /// Per-channel (R, G, B) mean on the 0–255 scale.
    pub mean: [f64; 3],
    /// Per-channel (R, G, B) population standard deviation (`ddof = 0`, numpy's default) on the
    /// 0–255 scale, over every pixel of every image.
    pub std: [f64; 3],
    /// Labelled pixels per train id (ignored pixels excluded), as
    /// [`class_pixel_counts`] gives.
    pub class_pixels: Vec<u64>,
    /// Pixels whose label is the ignore index (or any value outside the classes).
    pub ignored_pixels: u64,
}

impl DatasetStats {
    /// Each class's share of the labelled pixels (0 when nothing is labelled).
    pub fn class_shares(&self) -> Vec<f64> {
        let total: u64 = self.class_pixels.iter().sum();
        self.class_pixels
            .iter()
            .map(|&c| {
                if total == 0 {
                    0.0
                } else {
                    c as f64 / total as f64
                }
            })
            .collect()
    }

    /// The statistics as a [`Normalize`](crate::Normalize) (`f32`, 0–255 scale), e.g. for a
    /// folder dataset's `normalize` entry.
    pub fn normalize(&self) -> crate::Normalize {
        crate::Normalize {
            mean: self.mean.map(|v| v as f32),
            std: self.std.map(|v| v as f32),
        }
    }
}

/// Exact integer sums of one item: per-channel `Σx` and `Σx²`, pixels, per-class counts.
struct ItemSums {
    sum: [u64; 3],
    sum_sq: [u64; 3],
    pixels: u64,
    counts: Vec<u64>,
    labelled: u64,
}

/// Per-channel mean and standard deviation of the images and per-class pixel counts of the
/// labels of `ds`, at stored resolution, in one pass over the items.
///
/// The pass is the one the pixel counts use: items are decoded in parallel and their results
/// collected in item order. Each item contributes exact integer sums (`Σx`, `Σx²` per channel,
/// class counts), added in item order, so the result does not depend on scheduling; mean and
/// variance come from those sums in 128-bit integers (`var = (n·Σx² − (Σx)²) / n²`), so they are
/// exact up to the final division. The standard deviation is the population one (`ddof = 0`).
pub fn dataset_stats<D: SegDataset + ?Sized>(ds: &D) -> Result<DatasetStats, DataError> {
    let n_classes = ds.class_info().n_classes();
    let items: Vec<ItemSums> = par_items(ds.len(), |i| {
        let s = ds.get(i)?;
        let px = s.width * s.height;
        if s.image.len() != px * 3 || s.label.len() != px {
            return Err(DataError::config(
                "item",
                &s.id,
                format!(
                    "image of {} bytes and label of {} for {}×{} pixels",
                    s.image.len(),
                    s.label.len(),
                    s.width,
                    s.height
                ),
            ));
        }
        let mut sum = [0u64; 3];
        let mut sum_sq = [0u64; 3];
        for p in s.image.chunks_exact(3) {
            for c in 0..3 {
                let v = p[c] as u64;
                sum[c] += v;
                sum_sq[c] += v * v;
            }
        }
        let counts = count(&s.label, n_classes);
        let labelled = counts.iter().sum();
        Ok(ItemSums {
            sum,
            sum_sq,
            pixels: px as u64,
            counts,
            labelled,
        })
    })?;
    let mut sum = [0u128; 3];
    let mut sum_sq = [0u128; 3];
    let mut pixels = 0u64;
    let mut labelled = 0u64;
    let mut class_pixels = vec![0u64; n_classes];
    for it in &items {
        for c in 0..3 {
            sum[c] += it.sum[c] as u128;
            sum_sq[c] += it.sum_sq[c] as u128;
        }
        pixels += it.pixels;
        labelled += it.labelled;
        for (t, c) in class_pixels.iter_mut().zip(&it.counts) {
            *t += c;
        }
    }
    let n = pixels as u128;
    let (mut mean, mut std) = ([0f64; 3], [0f64; 3]);
    if n > 0 {
        for c in 0..3 {
            mean[c] = sum[c] as f64 / n as f64;
            let num = n * sum_sq[c] - sum[c] * sum[c];
            std[c] = (num as f64 / (n as f64 * n as f64)).sqrt();
        }
    }
    Ok(DatasetStats {
        images: items.len(),
        pixels,
        mean,
        std,
        class_pixels,
        ignored_pixels: pixels - labelled,
    })
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

/// Per-class pixel counts: each item's from the cache when the dataset's fingerprint and the
/// hash of its label file match, decoded and counted otherwise; the cache is rewritten when
/// anything was recounted. See the module docs for what the cache trusts.
pub fn class_pixel_counts<D: SegDataset + ?Sized>(ds: &D) -> Result<Vec<u64>, DataError> {
    let fingerprint = format!("{:016x}", ds.fingerprint());
    let path = cache_path(ds);
    let n = ds.class_info().n_classes();
    let cached: Option<PixelCountCache> = path.as_ref().and_then(|path| {
        let text = std::fs::read_to_string(path).ok()?;
        match serde_json::from_str::<PixelCountCache>(&text) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!(
                    "warning: ignoring unreadable pixel count cache {}: {e}",
                    path.display()
                );
                None
            }
        }
    });
    let usable = cached.as_ref().filter(|c| {
        c.fingerprint == fingerprint
            && c.per_item.len() == ds.len()
            && c.per_item.iter().all(|it| it.counts.len() == n)
    });
    let items = count_items(ds, usable.map(|c| c.per_item.as_slice()))?;
    let recounted = items.iter().any(|(_, r)| *r) || usable.is_none();
    let per_item: Vec<ItemCounts> = items.into_iter().map(|(c, _)| c).collect();
    let counts = sum(&per_item, n);
    if let (Some(path), true) = (&path, recounted) {
        let cache = PixelCountCache {
            dataset: ds.name().to_string(),
            fingerprint,
            names: ds.class_info().names.clone(),
            counts: counts.clone(),
            items: ds.len(),
            per_item,
        };
        if let Err(e) = recallseg_files::write_bytes_atomic(path, cache_text(&cache).as_bytes()) {
            eprintln!("warning: pixel counts not cached: {e}");
        }
    }
    Ok(counts)
}

/// The cache as JSON: the header fields one a line, then one line per item (a file of
/// thousands of items stays small and readable).
fn cache_text(c: &PixelCountCache) -> String {
    fn j<T: serde::Serialize + ?Sized>(v: &T) -> String {
        serde_json::to_string(v).expect("plain data serialises")
    }
    let mut s = String::from("{\n");
    s += &format!("  \"dataset\": {},\n", j(&c.dataset));
    s += &format!("  \"fingerprint\": {},\n", j(&c.fingerprint));
    s += &format!("  \"names\": {},\n", j(&c.names));
    s += &format!("  \"counts\": {},\n", j(&c.counts));
    s += &format!("  \"items\": {},\n", c.items);
    s += "  \"per_item\": [";
    for (i, it) in c.per_item.iter().enumerate() {
        s += if i == 0 { "\n    " } else { ",\n    " };
        s += &j(it);
    }
    s += if c.per_item.is_empty() {
        "]\n}\n"
    } else {
        "\n  ]\n}\n"
    };
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_text_is_the_cache_as_json() {
        let mut c = PixelCountCache {
            dataset: "d \"x\"".into(),
            fingerprint: "0123456789abcdef".into(),
            names: vec!["a".into(), "b\\".into()],
            counts: vec![3, 4],
            items: 2,
            per_item: vec![
                ItemCounts {
                    hash: Some(hash_bytes(b"x")),
                    counts: vec![1, 2],
                },
                ItemCounts {
                    hash: None,
                    counts: vec![2, 2],
                },
            ],
        };
        let back: PixelCountCache = serde_json::from_str(&cache_text(&c)).unwrap();
        assert_eq!(back, c);
        c.per_item.clear();
        let back: PixelCountCache = serde_json::from_str(&cache_text(&c)).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn the_hash_is_fnv1a_64() {
        // Reference values of 64-bit FNV-1a.
        assert_eq!(hash_bytes(b""), "cbf29ce484222325");
        assert_eq!(hash_bytes(b"a"), "af63dc4c8601ec8c");
        assert_eq!(hash_bytes(b"foobar"), "85944171f73967e8");
    }
}
