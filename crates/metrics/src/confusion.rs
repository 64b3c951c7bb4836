//! The confusion matrix.

use crate::error::MetricsError;
use crate::kernel::{Partial, Spec};
use crate::label::Label;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Largest number of classes a [`ConfusionMatrix`] accepts (its counts take `8·n²` bytes:
/// 128 MiB at this bound).
pub const MAX_CLASSES: usize = 4096;

/// The ignore index used by [`ConfusionMatrix::new`]: the void label of Cityscapes/Synthia train
/// ids.
pub const DEFAULT_IGNORE_INDEX: u32 = 255;

/// A confusion matrix for semantic segmentation: `n × n` pixel counts, rows = ground truth,
/// columns = prediction.
///
/// Counting rules for one pixel with ground-truth label `g` and prediction `p`:
///
/// * if `g` or `p` is *invalid* (not in `0..n_classes` and not the ignore index), the update is
///   refused with [`MetricsError::InvalidLabel`] naming the first such value and its position,
///   and the matrix is left unchanged; in lenient mode ([`ConfusionMatrix::lenient`]) the pixel
///   is skipped instead and counted in [`invalid_pixels`](Self::invalid_pixels);
/// * otherwise, if `g` or `p` equals the ignore index, the pixel is skipped and counted in
///   [`ignored_pixels`](Self::ignored_pixels) (void ground truth is the usual case; a prediction
///   equal to the ignore index is skipped too rather than rejected);
/// * otherwise cell `(g, p)` is incremented.
///
/// If the ignore index lies inside `0..n_classes`, that class is never counted (its scores are
/// undefined).
///
/// Counting is parallel (rayon) for large inputs and, for `u8` labels, branch-free; see
/// `docs/metrics.md` for the design and `cargo xtask bench metrics` for its throughput.
///
/// The matrix serialises (serde) as its settings plus the row-major `counts`; deserialising
/// checks that the data is consistent.
///
/// ```
/// use recallseg_metrics::ConfusionMatrix;
///
/// // Three classes, void = 255; ground truth and prediction of four pixels.
/// let mut cm = ConfusionMatrix::with_ignore_index(3, Some(255));
/// cm.update(&[0u8, 0, 1, 255], &[0u8, 1, 1, 2]).unwrap();
/// assert_eq!(cm.ignored_pixels(), 1);
/// let report = cm.report_with_names(&["road", "pole", "sign"]).unwrap();
/// assert_eq!(report.classes[0].recall, Some(0.5)); // one of two road pixels found
/// assert_eq!(report.classes[1].iou, Some(0.5)); // 1 TP, 1 FP
/// assert_eq!(report.classes[2].recall, None); // no sign in the ground truth: left out
/// assert_eq!(report.mean_accuracy.value, Some(0.75)); // mean over road and pole
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "MatrixData", into = "MatrixData")]
pub struct ConfusionMatrix {
    n: usize,
    ignore: Option<u32>,
    lenient: bool,
    counts: Vec<u64>,
    ignored: u64,
    invalid: u64,
}

/// Serialised form of a [`ConfusionMatrix`].
#[derive(Clone, Debug, Serialize, Deserialize)]
struct MatrixData {
    n_classes: usize,
    ignore_index: Option<u32>,
    lenient: bool,
    counts: Vec<u64>,
    ignored_pixels: u64,
    invalid_pixels: u64,
}

impl TryFrom<MatrixData> for ConfusionMatrix {
    type Error = MetricsError;
    fn try_from(d: MatrixData) -> Result<Self, MetricsError> {
        let mut m = Self::from_counts(d.n_classes, d.ignore_index, d.counts)?;
        m.lenient = d.lenient;
        m.ignored = d.ignored_pixels;
        m.invalid = d.invalid_pixels;
        Ok(m)
    }
}

impl From<ConfusionMatrix> for MatrixData {
    fn from(m: ConfusionMatrix) -> Self {
        MatrixData {
            n_classes: m.n,
            ignore_index: m.ignore,
            lenient: m.lenient,
            counts: m.counts,
            ignored_pixels: m.ignored,
            invalid_pixels: m.invalid,
        }
    }
}

impl ConfusionMatrix {
    /// An empty strict matrix for `n_classes` classes with ignore index
    /// [`DEFAULT_IGNORE_INDEX`] (255).
    ///
    /// # Panics
    /// If `n_classes` is 0 or above [`MAX_CLASSES`]; use [`try_new`](Self::try_new) for a class
    /// count that comes from user data.
    pub fn new(n_classes: usize) -> Self {
        Self::with_ignore_index(n_classes, Some(DEFAULT_IGNORE_INDEX))
    }

    /// An empty strict matrix for `n_classes` classes with the given ignore index (`None`: every
    /// value outside `0..n_classes` is invalid).
    ///
    /// # Panics
    /// If `n_classes` is 0 or above [`MAX_CLASSES`]; use [`try_new`](Self::try_new) for a class
    /// count that comes from user data.
    pub fn with_ignore_index(n_classes: usize, ignore_index: Option<u32>) -> Self {
        match Self::try_new(n_classes, ignore_index) {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`with_ignore_index`](Self::with_ignore_index), but returns
    /// [`MetricsError::InvalidClassCount`] instead of panicking.
    pub fn try_new(n_classes: usize, ignore_index: Option<u32>) -> Result<Self, MetricsError> {
        if n_classes == 0 || n_classes > MAX_CLASSES {
            return Err(MetricsError::InvalidClassCount {
                n_classes,
                max: MAX_CLASSES,
            });
        }
        Ok(Self {
            n: n_classes,
            ignore: ignore_index,
            lenient: false,
            counts: vec![0; n_classes * n_classes],
            ignored: 0,
            invalid: 0,
        })
    }

    /// A strict matrix holding saved counts, row-major `n × n` as [`counts`](Self::counts)
    /// returns them (e.g. a matrix computed by another program): `counts[g * n + p]` pixels of
    /// class `g` predicted as `p`.
    pub fn from_counts(
        n_classes: usize,
        ignore_index: Option<u32>,
        counts: Vec<u64>,
    ) -> Result<Self, MetricsError> {
        let mut m = Self::try_new(n_classes, ignore_index)
            .map_err(|e| MetricsError::InvalidData(e.to_string()))?;
        if counts.len() != n_classes * n_classes {
            return Err(MetricsError::InvalidData(format!(
                "`counts` holds {} values, {n_classes} classes need {}",
                counts.len(),
                n_classes * n_classes
            )));
        }
        m.counts = counts;
        Ok(m)
    }

    /// Sets lenient mode: invalid values are skipped (and counted in
    /// [`invalid_pixels`](Self::invalid_pixels)) instead of failing the update.
    pub fn lenient(mut self, lenient: bool) -> Self {
        self.lenient = lenient;
        self
    }

    /// Whether the matrix is in lenient mode.
    pub fn is_lenient(&self) -> bool {
        self.lenient
    }

    /// Number of classes.
    pub fn n_classes(&self) -> usize {
        self.n
    }

    /// The ignore index, if any.
    pub fn ignore_index(&self) -> Option<u32> {
        self.ignore
    }

    /// The counts, row-major `n × n`: `counts()[g * n + p]` pixels of class `g` predicted as `p`.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Pixels of ground-truth class `gt` predicted as `pred`, or `None` if either is not a class.
    pub fn get(&self, gt: usize, pred: usize) -> Option<u64> {
        (gt < self.n && pred < self.n).then(|| self.counts[gt * self.n + pred])
    }

    /// Row `gt` (all predictions for ground-truth class `gt`), or `None` if it is not a class.
    pub fn row(&self, gt: usize) -> Option<&[u64]> {
        (gt < self.n).then(|| &self.counts[gt * self.n..(gt + 1) * self.n])
    }

    /// Number of counted pixels (the sum of all cells).
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Pixels skipped because the label or the prediction was the ignore index.
    pub fn ignored_pixels(&self) -> u64 {
        self.ignored
    }

    /// Pixels skipped in lenient mode because a value was invalid (always 0 in strict mode).
    pub fn invalid_pixels(&self) -> u64 {
        self.invalid
    }

    /// Ground-truth pixels per class (row sums).
    pub fn gt_pixels(&self) -> Vec<u64> {
        self.counts
            .chunks_exact(self.n)
            .map(|r| r.iter().sum())
            .collect()
    }

    /// Predicted pixels per class (column sums).
    pub fn pred_pixels(&self) -> Vec<u64> {
        let mut cols = vec![0u64; self.n];
        for r in self.counts.chunks_exact(self.n) {
            for (c, v) in cols.iter_mut().zip(r) {
                *c += v;
            }
        }
        cols
    }

    /// Correctly predicted pixels per class (the diagonal).
    pub fn true_positives(&self) -> Vec<u64> {
        (0..self.n).map(|c| self.counts[c * self.n + c]).collect()
    }

    /// Counts one pair of label maps of equal length (flattened in the same order).
    ///
    /// On error the matrix is unchanged: [`MetricsError::LengthMismatch`] if the lengths differ;
    /// in strict mode [`MetricsError::InvalidLabel`] naming the first pixel (lowest position;
    /// ground truth before prediction) whose value is neither a class nor the ignore index.
    pub fn update<L: Label>(&mut self, gt: &[L], pred: &[L]) -> Result<(), MetricsError> {
        if gt.len() != pred.len() {
            return Err(MetricsError::LengthMismatch {
                gt: gt.len(),
                pred: pred.len(),
            });
        }
        let spec = Spec {
            n: self.n,
            ignore: self.ignore,
            lenient: self.lenient,
        };
        let part = count(gt, pred, &spec);
        if let Some((position, map, value)) = part.first_invalid {
            return Err(MetricsError::InvalidLabel {
                map,
                value,
                position,
                n_classes: self.n,
                ignore_index: self.ignore,
            });
        }
        let k = part.k;
        for g in 0..k {
            let dst = &mut self.counts[g * self.n..g * self.n + k];
            for (d, s) in dst.iter_mut().zip(&part.counts[g * k..(g + 1) * k]) {
                *d += s;
            }
        }
        self.ignored += part.ignored;
        self.invalid += part.invalid;
        Ok(())
    }

    /// Adds the counts of `other` (e.g. from another worker) into `self`.
    ///
    /// Fails with [`MetricsError::Incompatible`] (and leaves `self` unchanged) if the number of
    /// classes or the ignore index differ.
    pub fn merge(&mut self, other: &ConfusionMatrix) -> Result<(), MetricsError> {
        if self.n != other.n {
            return Err(MetricsError::Incompatible(format!(
                "{} classes vs {} classes",
                self.n, other.n
            )));
        }
        if self.ignore != other.ignore {
            return Err(MetricsError::Incompatible(format!(
                "ignore index {:?} vs {:?}",
                self.ignore, other.ignore
            )));
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.ignored += other.ignored;
        self.invalid += other.invalid;
        Ok(())
    }

    /// Sets every count back to zero (settings are kept).
    pub fn reset(&mut self) {
        self.counts.fill(0);
        self.ignored = 0;
        self.invalid = 0;
    }
}

/// Counts `gt`/`pred` (equal lengths), in parallel when large enough.
fn count<L: Label>(gt: &[L], pred: &[L], spec: &Spec) -> Partial {
    let k = spec.n.min(L::VALUES);
    let len = gt.len();
    // Two tasks per thread balance the load when a core is busy with something else.
    let tasks = (rayon::current_num_threads() * 2)
        .min(len / L::min_task_len(k))
        .max(1);
    if tasks == 1 {
        return L::count(gt, pred, 0, spec, k);
    }
    let chunk = len.div_ceil(tasks);
    gt.par_chunks(chunk)
        .zip(pred.par_chunks(chunk))
        .enumerate()
        .map(|(t, (g, p))| L::count(g, p, t * chunk, spec, k))
        .reduce_with(Partial::add)
        .unwrap_or_else(|| Partial::new(k))
}
