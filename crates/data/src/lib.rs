//! Semantic segmentation datasets, a synthetic Synthia-format generator and a parallel loader.
//!
//! `recallseg-data` knows nothing of tensors: it yields plain buffers ([`Batch`]) that the
//! trainer turns into candle tensors.
//!
//! * Datasets ([`SegDataset`]): [`SynthiaDataset`] (SYNTHIA-SEQS), [`CityscapesDataset`],
//!   [`FolderDataset`] (an image folder and a mask folder plus a class file).
//! * [`generate_synthia`]: a procedural street-scene dataset written in the
//!   Synthia-SEQS on-disk format, read back by [`SynthiaDataset`].
//! * [`transform`]: resize, random scale/crop/flip, normalisation.
//! * [`Loader`]: parallel decode + augment, prefetching, deterministic from a seed.
//! * [`stats`]: per-class pixel counts (cached next to the data) for class-weighted losses.
//!
//! Labels are `u8` train ids with an ignore index (default 255).
//!
//! Start from a dataset ([`SynthiaDataset::open`], [`CityscapesDataset::open`],
//! [`FolderDataset::open`]) and a [`Loader`] ([`LoaderConfig`], augmentation in
//! [`transform::Augment`]); every fallible call returns [`DataError`]. Each public item has one
//! path: the crate root, or one of three namespaces: [`png_io`] (image and label files),
//! [`transform`] (resizing, cropping, flipping, normalisation and their configuration) and
//! [`stats`] (dataset statistics and the pixel-count cache).

#![warn(missing_docs)]

mod cityscapes;
mod common;
mod dataset;
mod error;
mod fingerprint;
mod folder;
mod loader;
pub mod png_io;
mod prefix;
mod split;
pub mod stats;
mod subset;
mod synthetic;
mod synthia;
pub mod transform;

pub use cityscapes::{
    CityscapesDataset, CityscapesLabels, CityscapesOptions, CITYSCAPES_CLASS_NAMES,
    CITYSCAPES_ID_TO_TRAIN_ID, CITYSCAPES_PALETTE,
};
pub use dataset::{
    colorize, ClassInfo, LabelMap, Normalize, Sample, SegDataset, Split, DEFAULT_IGNORE_INDEX,
};
pub use error::DataError;
pub use folder::{skipped_summary, FolderDataset, FolderSpec, SkippedFile};
pub use loader::{mix_seed, Batch, EpochIter, Loader, LoaderConfig, Shard};
pub use prefix::{prefix, Prefix};
pub use split::SplitFractions;
pub use subset::{subset, Subset};
pub use synthetic::{generate_synthia, render_scene, GenerateReport, Scene, SyntheticConfig};
pub use synthia::{
    class as synthia_class, SynthiaDataset, SynthiaOptions, SYNTHIA_CLASS_NAMES, SYNTHIA_NORMALIZE,
    SYNTHIA_PALETTE,
};
