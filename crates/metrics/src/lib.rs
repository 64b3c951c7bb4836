//! Confusion matrices and segmentation scores for semantic segmentation.
//!
//! Part of [recallseg](https://example.invalid/recallseg), a Rust implementation of Recall loss
//! (Tian et al., *Striking the Right Balance: Recall Loss for Semantic Segmentation*, ICRA 2022).
//! Pure Rust, no tensor library: it works on label slices.
//!
//! * [`ConfusionMatrix`] counts pixels by (ground truth, prediction) from `u8`, `u16` or `u32`
//!   label maps, skipping an ignore index (default 255) and refusing values that are neither a
//!   class nor the ignore index (or skipping them in lenient mode). Counting is parallel and, for
//!   `u8`, branch-free.
//! * [`Report`] holds per-class recall (class accuracy), precision, IoU, Dice and pixel counts,
//!   pixel accuracy, mean accuracy, mean precision, mean IoU, mean Dice and frequency-weighted
//!   IoU, NaN-aware like the `numpy.nanmean` of the paper's evaluation code, plus means over class
//!   subsets. It serialises with serde and prints as an aligned table.
//! * F-beta per class and its mean ([`Report::with_beta`]), and every score averaged as
//!   torchmetrics names the modes ([`Report::average`] with an [`Averaging`]: [`Average`]
//!   `macro` / `micro` / `weighted` / `none`, undefined scores left out or filled by
//!   [`ZeroDivision`]). [`Averaging::NANMEAN`] is the paper's `nanmean` (the report's own means),
//!   [`Averaging::TORCHMETRICS`] torchmetrics' default.
//! * [`ConfusionMatrix::normalized`]: the matrix over its rows (`true`), columns (`pred`) or total
//!   (`all`), as sklearn's and torchmetrics' `normalize` ([`Normalize`], [`NormalizedMatrix`]).
//! * [`PerImageIou`]: IoU per image (torchmetrics' `MeanIoU` / `mean_iou` per sample): the mean
//!   of the per-image mean IoUs, torchmetrics' pooled mean and per-class means over images.
//! * [`ReportSettings`]: how a report reduces and shows the scores (averaging, β, confusion
//!   normalisation), as a serde table.
//!
//! ```
//! use recallseg_metrics::ConfusionMatrix;
//!
//! let mut cm = ConfusionMatrix::new(3); // ignore index 255
//! let gt: [u8; 6] = [0, 0, 1, 1, 2, 255];
//! let pred: [u8; 6] = [0, 1, 1, 1, 1, 0];
//! cm.update(&gt, &pred)?;
//! assert_eq!(cm.get(0, 1), Some(1));
//! assert_eq!(cm.ignored_pixels(), 1);
//!
//! let report = cm.report_with_names(&["road", "car", "bike"])?;
//! assert_eq!(report.classes[1].recall, Some(1.0));
//! assert_eq!(report.classes[1].precision, Some(2.0 / 4.0));
//! assert_eq!(report.classes[2].iou, Some(0.0));
//! assert_eq!(report.mean_accuracy.value, Some((0.5 + 1.0 + 0.0) / 3.0));
//! println!("{report}");
//! # Ok::<(), recallseg_metrics::MetricsError>(())
//! ```
//!
//! Definitions and undefined cases: `docs/metrics.md` in the repository.

#![warn(missing_docs)]

mod average;
mod confusion;
mod duration;
mod error;
mod kernel;
mod label;
mod normalize;
mod per_image;
mod report;
mod scores;
mod settings;

pub use average::{Average, Averaged, AveragedScores, Averaging, Score, ZeroDivision};
pub use confusion::{ConfusionMatrix, DEFAULT_IGNORE_INDEX, MAX_CLASSES};
pub use duration::format_seconds;
pub use error::{LabelSource, MetricsError};
pub use label::Label;
pub use normalize::{Normalize, NormalizedMatrix};
pub use per_image::{PerImageIou, PerImageScores};
pub use report::{Report, SubsetMeans};
pub use scores::{ClassScores, Mean};
pub use settings::ReportSettings;
