//! Semantic segmentation datasets, a synthetic Synthia-format generator and a parallel loader.
//!
//! `recallseg-data` knows nothing of tensors: it yields plain buffers ([`Batch`]) that the
//! trainer turns into candle tensors.
//!
//! * Datasets ([`SegDataset`]): [`SynthiaDataset`] (SYNTHIA-SEQS), [`CityscapesDataset`],
//!   [`FolderDataset`] (an image folder and a mask folder plus a class file).
//! * [`synthetic::generate_synthia`]: a procedural street-scene dataset written in the
//!   Synthia-SEQS on-disk format, read back by [`SynthiaDataset`].
//! * [`transform`]: resize, random scale/crop/flip, normalisation.
//! * [`Loader`]: parallel decode + augment, prefetching, deterministic from a seed.
//! * [`stats`]: per-class pixel counts (cached next to the data) for class-weighted losses.
//!
//! Labels are `u8` train ids with an ignore index (default 255).

#![warn(missing_docs)]

pub mod cityscapes;
mod common;
mod dataset;
mod error;
mod fingerprint;
pub mod folder;
pub mod loader;
pub mod png_io;
pub mod prefix;
pub mod split;
pub mod stats;
pub mod subset;
pub mod synthetic;
pub mod synthia;
pub mod transform;

pub use cityscapes::{CityscapesDataset, CityscapesOptions};
pub use dataset::{
    colorize, ClassInfo, LabelMap, Normalize, Sample, SegDataset, Split, DEFAULT_IGNORE_INDEX,
};
pub use error::DataError;
pub use folder::{skipped_summary, FolderDataset, FolderSpec, SkippedFile};
pub use loader::{mix_seed, Batch, EpochIter, Loader, LoaderConfig, Shard};
pub use prefix::{prefix, Prefix};
pub use stats::class_pixel_counts;
pub use subset::{subset, Subset};
pub use synthetic::{generate_synthia, GenerateReport, SyntheticConfig};
pub use synthia::{SynthiaDataset, SynthiaOptions};
pub use transform::{Augment, ResizeMethod};
