//! A parallel, prefetching, deterministic batch loader.
//!
//! For every batch the loader decodes its items in parallel on its own rayon pool, resizes them
//! to a base size, augments them, normalises them, and packs them as plain buffers
//! ([`Batch`]). A background thread keeps up to [`LoaderConfig::prefetch`] batches in work on
//! the pool and hands them to the consumer in order.
//!
//! Determinism: the item order of epoch `e` is a function of `(seed, e)` only, and the
//! augmentation RNG of the item at position `p` of epoch `e` is
//! `ChaCha8Rng::seed_from_u64(mix(seed, e, p))`. Neither depends on the thread count, on
//! timing, or on where iteration started, so [`Loader::epoch_from`]`(e, k)` yields exactly the
//! batches `k, k+1, …` that [`Loader::epoch`]`(e)` yields (resuming a run mid-epoch).

use crate::dataset::{Normalize, Sample, SegDataset};
use crate::error::DataError;
use crate::split::shuffled_indices;
use crate::transform::{normalize_chw, Augment, ResizeMethod};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, OnceLock};

/// Loader settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoaderConfig {
    /// Items per batch.
    pub batch_size: usize,
    /// Shuffle the item order every epoch (from `seed` and the epoch number).
    pub shuffle: bool,
    /// Seed of the shuffle and of the augmentation.
    pub seed: u64,
    /// Drop the last, incomplete batch of an epoch.
    pub drop_last: bool,
    /// Base `(width, height)` every item is resized to (bilinear image, nearest label, as
    /// [`LoaderConfig::resize_method`] says) before augmentation; `None` keeps the stored size.
    pub resize: Option<(usize, usize)>,
    /// Filters of the base resize ([`LoaderConfig::resize`]): [`ResizeMethod::TwoTap`] (the
    /// default: two-tap bilinear as OpenCV's `INTER_LINEAR`, nearest `floor(d · in/out)`) or
    /// [`ResizeMethod::Antialias`] (PIL's `Image.resize`: antialiased bilinear, nearest at
    /// pixel centres). In a config file: `resize_method = "two_tap"` or `"antialias"`. The
    /// random scale of [`Augment`] always uses the two-tap filters.
    pub resize_method: ResizeMethod,
    /// Random augmentation (training); `None` for evaluation.
    pub augment: Option<Augment>,
    /// Colour normalisation; `None` uses the dataset's
    /// ([`SegDataset::normalization`]); [`Normalize::NONE`] keeps 0–255 values.
    pub normalize: Option<Normalize>,
    /// Worker threads decoding items; 0 = one per core.
    pub num_threads: usize,
    /// Batches prepared ahead of the consumer (at least 1): up to this many are decoded at once
    /// and up to this many finished ones wait for the consumer.
    pub prefetch: usize,
    /// Keep every resized item in memory after its first decode (needs about
    /// `4 · width · height` bytes per item). The cache belongs to one [`Loader`], whose
    /// settings (size and [`LoaderConfig::resize_method`] included) never change, so it needs
    /// no key beyond the item index.
    pub cache_resized: bool,
    /// Skip items that fail to load, with a warning on stderr, instead of stopping with the
    /// error; [`Loader::skipped`] counts them. A batch then holds fewer items.
    pub skip_bad: bool,
    /// Which part of every batch this loader yields (data-parallel training: each rank loads
    /// its own shard of the same global batches). The default, shard 0 of 1, is the whole
    /// batch. Batch numbering, the shuffle and each item's augmentation (drawn from the seed,
    /// the epoch and the item's position in it) do not depend on the shard, so the shards of a
    /// batch put together are exactly the unsharded batch.
    pub shard: Shard,
}

/// Shard `index` of `count` of every batch: the items at positions
/// `⌊len·index/count⌋ .. ⌊len·(index+1)/count⌋` of a batch of `len` items (contiguous slices,
/// in order, sizes differing by at most one). A batch shorter than `count` leaves some shards
/// empty: those load a batch of 0 items, which the epoch iterators leave out, so a data-parallel
/// caller keeps every global batch at least `count` items long (full batches, `drop_last`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    /// This shard, `0..count`.
    pub index: usize,
    /// Number of shards.
    pub count: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { index: 0, count: 1 }
    }
}

impl Shard {
    /// The positions of a batch covering positions `start..end` that this shard holds.
    pub fn range(&self, start: usize, end: usize) -> std::ops::Range<usize> {
        let len = end.saturating_sub(start);
        let count = self.count.max(1);
        start + len * self.index / count..start + len * (self.index + 1) / count
    }

    /// The items of this shard when whole batches are dealt out instead of cut: of the
    /// batches of `batch_size` consecutive items of `0..len` (the last one possibly shorter),
    /// batch `b` goes to shard `b mod count`. Evaluation shards this way: each batch is then
    /// evaluated whole on one rank (a batch's loss is the one-process value), and a loader over
    /// [`subset`](crate::subset)`(ds, items)` with the same batch size yields exactly this
    /// shard's batches.
    pub fn whole_batches(&self, len: usize, batch_size: usize) -> Vec<usize> {
        let (bs, count) = (batch_size.max(1), self.count.max(1));
        (0..len.div_ceil(bs))
            .filter(|b| b % count == self.index)
            .flat_map(|b| b * bs..((b + 1) * bs).min(len))
            .collect()
    }
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 8,
            shuffle: true,
            seed: 0,
            drop_last: true,
            resize: None,
            resize_method: ResizeMethod::TwoTap,
            augment: None,
            normalize: None,
            num_threads: 0,
            prefetch: 2,
            cache_resized: false,
            skip_bad: false,
            shard: Shard::default(),
        }
    }
}

impl LoaderConfig {
    /// Evaluation settings: dataset order, no augmentation, keep the last batch.
    pub fn eval(batch_size: usize, resize: Option<(usize, usize)>) -> Self {
        LoaderConfig {
            batch_size,
            shuffle: false,
            drop_last: false,
            resize,
            augment: None,
            ..LoaderConfig::default()
        }
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), DataError> {
        if self.batch_size == 0 {
            return Err(DataError::config("batch_size", 0, "must be > 0"));
        }
        if let Some((w, h)) = self.resize {
            if w == 0 || h == 0 {
                return Err(DataError::config(
                    "resize",
                    format!("({w}, {h})"),
                    "width and height must be > 0",
                ));
            }
        }
        if self.shard.count == 0 || self.shard.index >= self.shard.count {
            return Err(DataError::config(
                "shard",
                format!("{}/{}", self.shard.index, self.shard.count),
                "needs count ≥ 1 and index < count",
            ));
        }
        if let Some(a) = &self.augment {
            a.validate()?;
        }
        if let Some(n) = &self.normalize {
            n.validate()?;
        }
        Ok(())
    }
}

/// One batch as plain buffers.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `n × 3 × height × width` normalised images (planar RGB).
    pub images: Vec<f32>,
    /// `n × height × width` train ids (or the ignore index).
    pub labels: Vec<u8>,
    /// Number of items.
    pub n: usize,
    /// Height of every item.
    pub height: usize,
    /// Width of every item.
    pub width: usize,
    /// Sample ids.
    pub ids: Vec<String>,
    /// Dataset indices of the items.
    pub indices: Vec<usize>,
    /// Epoch this batch belongs to.
    pub epoch: u64,
    /// Position of this batch in its epoch.
    pub batch_index: usize,
}

/// Image, label, width, height and id of one item, ready to normalise.
type Prepared = (Vec<u8>, Vec<u8>, usize, usize, String);

struct Inner {
    ds: Arc<dyn SegDataset>,
    cfg: LoaderConfig,
    norm: Normalize,
    pool: rayon::ThreadPool,
    cache: Option<Vec<OnceLock<Arc<Sample>>>>,
    skipped: AtomicU64,
}

/// The batch loader. Cheap to clone (shares its pool and cache).
#[derive(Clone)]
pub struct Loader {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("dataset", &self.inner.ds.name())
            .field("len", &self.inner.ds.len())
            .field("cfg", &self.inner.cfg)
            .finish()
    }
}

/// SplitMix64 finaliser.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Mixes a seed with two counters into a new 64-bit seed (SplitMix64 chaining).
pub fn mix_seed(seed: u64, a: u64, b: u64) -> u64 {
    splitmix(splitmix(splitmix(seed) ^ a) ^ b)
}

const SHUFFLE_TAG: u64 = 0x5348_5546; // "SHUF"

impl Loader {
    /// A loader over `ds`. Errors on an empty dataset or invalid settings.
    pub fn new(ds: Arc<dyn SegDataset>, cfg: LoaderConfig) -> Result<Self, DataError> {
        cfg.validate()?;
        if ds.is_empty() {
            return Err(DataError::config(
                "dataset",
                ds.name(),
                "has no item to load",
            ));
        }
        let norm = cfg.normalize.unwrap_or_else(|| ds.normalization());
        norm.validate()?;
        let threads = if cfg.num_threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            cfg.num_threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("recallseg-data-{i}"))
            .build()
            .map_err(|e| DataError::config("num_threads", threads, e.to_string()))?;
        let cache = cfg
            .cache_resized
            .then(|| (0..ds.len()).map(|_| OnceLock::new()).collect());
        Ok(Loader {
            inner: Arc::new(Inner {
                ds,
                cfg,
                norm,
                pool,
                cache,
                skipped: AtomicU64::new(0),
            }),
        })
    }

    /// The dataset.
    pub fn dataset(&self) -> &Arc<dyn SegDataset> {
        &self.inner.ds
    }

    /// The settings.
    pub fn config(&self) -> &LoaderConfig {
        &self.inner.cfg
    }

    /// The normalisation in use.
    pub fn normalization(&self) -> Normalize {
        self.inner.norm
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.inner.ds.len(), self.inner.cfg.batch_size);
        if self.inner.cfg.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// Items skipped so far because they failed to load (with [`LoaderConfig::skip_bad`]).
    pub fn skipped(&self) -> u64 {
        self.inner.skipped.load(Ordering::Relaxed)
    }

    /// The dataset indices of epoch `epoch`, in visiting order.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let n = self.inner.ds.len();
        if self.inner.cfg.shuffle {
            shuffled_indices(n, mix_seed(self.inner.cfg.seed, SHUFFLE_TAG, epoch))
        } else {
            (0..n).collect()
        }
    }

    /// Loads batch `batch_index` of epoch `epoch` now, on the calling thread (plus the pool).
    ///
    /// With `skip_bad`, a batch whose items all failed has `n == 0` (the epoch iterators leave
    /// such batches out).
    pub fn load_batch(&self, epoch: u64, batch_index: usize) -> Result<Batch, DataError> {
        let order = self.order(epoch);
        self.inner.load_batch(&order, epoch, batch_index)
    }

    /// Iterates over the batches of epoch `epoch`.
    pub fn epoch(&self, epoch: u64) -> EpochIter {
        self.epoch_from(epoch, 0)
    }

    /// Iterates over the batches of epoch `epoch` from batch `start_batch` on, exactly as
    /// [`Loader::epoch`] would yield them (for resuming mid-epoch).
    pub fn epoch_from(&self, epoch: u64, start_batch: usize) -> EpochIter {
        let inner = self.inner.clone();
        let nb = self.batches_per_epoch();
        let (tx, rx) = sync_channel(inner.cfg.prefetch.max(1));
        let order = Arc::new(self.order(epoch));
        let handle = std::thread::Builder::new()
            .name("recallseg-prefetch".into())
            .spawn(move || {
                // Up to `prefetch` batches are computed at once on the pool (so one slow item
                // does not leave the other workers idle at the end of every batch); finished
                // batches are re-ordered and handed to the consumer in batch order.
                let window = inner.cfg.prefetch.max(1);
                let (done_tx, done_rx) = std::sync::mpsc::channel();
                let mut ready: BTreeMap<usize, Result<Batch, DataError>> = BTreeMap::new();
                let mut next_spawn = start_batch;
                let mut next_emit = start_batch;
                while next_emit < nb {
                    while next_spawn < nb && next_spawn < next_emit + window {
                        let (inner2, order2, done) =
                            (inner.clone(), order.clone(), done_tx.clone());
                        let b = next_spawn;
                        inner.pool.spawn(move || {
                            let r = inner2.load_batch(&order2, epoch, b);
                            let _ = done.send((b, r));
                        });
                        next_spawn += 1;
                    }
                    while !ready.contains_key(&next_emit) {
                        match done_rx.recv() {
                            Ok((b, r)) => {
                                ready.insert(b, r);
                            }
                            Err(_) => return,
                        }
                    }
                    let r = ready.remove(&next_emit).expect("just checked");
                    next_emit += 1;
                    if matches!(&r, Ok(batch) if batch.n == 0) {
                        continue; // every item skipped (skip_bad)
                    }
                    let stop = r.is_err();
                    if tx.send(r).is_err() || stop {
                        return;
                    }
                }
            })
            .expect("spawning the prefetch thread");
        EpochIter {
            rx,
            _handle: handle,
            remaining: nb.saturating_sub(start_batch),
        }
    }
}

impl Inner {
    fn base_sample(&self, index: usize) -> Result<Arc<Sample>, DataError> {
        if let Some(cache) = &self.cache {
            if let Some(s) = cache[index].get() {
                return Ok(s.clone());
            }
        }
        let mut s = self.ds.get(index)?;
        if let Some((w, h)) = self.cfg.resize {
            if (s.width, s.height) != (w, h) {
                let method = self.cfg.resize_method;
                s.image = method.resize_image(&s.image, s.width, s.height, w, h)?;
                s.label = method.resize_label(&s.label, s.width, s.height, w, h, 1)?;
                s.width = w;
                s.height = h;
            }
        }
        let s = Arc::new(s);
        if let Some(cache) = &self.cache {
            let _ = cache[index].set(s.clone());
        }
        Ok(s)
    }

    /// Image, label, width, height of one item after resize and augmentation.
    fn prepare(&self, index: usize, epoch: u64, position: usize) -> Result<Prepared, DataError> {
        let s = self.base_sample(index)?;
        match &self.cfg.augment {
            None => Ok((
                s.image.clone(),
                s.label.clone(),
                s.width,
                s.height,
                s.id.clone(),
            )),
            Some(aug) => {
                let mut rng =
                    ChaCha8Rng::seed_from_u64(mix_seed(self.cfg.seed, epoch, position as u64));
                let pad = self.norm.mean.map(|m| m.round().clamp(0.0, 255.0) as u8);
                let ignore = self.ds.class_info().ignore_index;
                let (img, lbl, w, h) =
                    aug.apply(&s.image, &s.label, s.width, s.height, pad, ignore, &mut rng)?;
                Ok((img, lbl, w, h, s.id.clone()))
            }
        }
    }

    fn load_batch(&self, order: &[usize], epoch: u64, b: usize) -> Result<Batch, DataError> {
        let bs = self.cfg.batch_size;
        let start = b * bs;
        let end = (start + bs).min(order.len());
        if start >= end {
            return Err(DataError::config(
                "batch_index",
                b,
                format!("epoch has {} item(s)", order.len()),
            ));
        }
        let positions = self.cfg.shard.range(start, end);
        let prepared: Vec<_> = self.pool.install(|| {
            positions
                .into_par_iter()
                .map(|pos| (order[pos], self.prepare(order[pos], epoch, pos)))
                .collect()
        });
        let mut items = Vec::with_capacity(prepared.len());
        for (index, r) in prepared {
            match r {
                Ok(p) => items.push((index, p)),
                Err(e) if self.cfg.skip_bad => {
                    self.skipped.fetch_add(1, Ordering::Relaxed);
                    eprintln!("warning: skipping item {index} of {}: {e}", self.ds.name());
                }
                Err(e) => return Err(e),
            }
        }
        let (w, h) = match items.first() {
            Some((_, p)) => (p.2, p.3),
            None => (0, 0),
        };
        for (_, p) in &items {
            if (p.2, p.3) != (w, h) {
                return Err(DataError::BatchShape {
                    id: p.4.clone(),
                    w: p.2,
                    h: p.3,
                    batch_w: w,
                    batch_h: h,
                });
            }
        }
        let n = items.len();
        let plane = w * h;
        let mut images = vec![0f32; n * 3 * plane];
        let mut labels = vec![0u8; n * plane];
        // Packing is cheap next to decoding; it runs on this task while other batches are in
        // work on the pool.
        for ((img_out, lbl_out), (_, p)) in images
            .chunks_mut(3 * plane.max(1))
            .zip(labels.chunks_mut(plane.max(1)))
            .zip(&items)
        {
            normalize_chw(&p.0, w, h, &self.norm, img_out)?;
            lbl_out.copy_from_slice(&p.1);
        }
        Ok(Batch {
            images,
            labels,
            n,
            height: h,
            width: w,
            ids: items.iter().map(|(_, p)| p.4.clone()).collect(),
            indices: items.iter().map(|(i, _)| *i).collect(),
            epoch,
            batch_index: b,
        })
    }
}

/// Iterator over the batches of one epoch, filled by a background thread.
///
/// Yields `Err` once and stops if an item fails to load (unless `skip_bad`). Dropping it
/// early stops the background thread after its current batch.
pub struct EpochIter {
    rx: Receiver<Result<Batch, DataError>>,
    _handle: std::thread::JoinHandle<()>,
    remaining: usize,
}

impl Iterator for EpochIter {
    type Item = Result<Batch, DataError>;
    fn next(&mut self) -> Option<Self::Item> {
        let r = self.rx.recv().ok()?;
        self.remaining = self.remaining.saturating_sub(1);
        if r.is_err() {
            self.remaining = 0;
        }
        Some(r)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining))
    }
}
