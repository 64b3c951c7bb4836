//! Scores computed from a [`ConfusionMatrix`]: per class, means, subsets, and a table printer.
//!
//! Every ratio is `None` (serialised as `null`, printed as `-`) where its denominator is zero,
//! exactly where numpy's `0/0` gives `nan` in the paper's evaluation code; means skip undefined
//! values like `numpy.nanmean` and say how many classes they cover. `docs/metrics.md` has the
//! definitions.

use crate::confusion::ConfusionMatrix;
use crate::error::MetricsError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Scores of one class. `TP` = true positives (the diagonal cell), `FN` = ground-truth pixels of
/// the class predicted as another class, `FP` = pixels of other classes predicted as this one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassScores {
    /// Class name.
    pub name: String,
    /// Ground-truth pixels of the class, `TP + FN` (row sum).
    pub gt_pixels: u64,
    /// Pixels predicted as the class, `TP + FP` (column sum).
    pub pred_pixels: u64,
    /// Correctly predicted pixels, `TP`.
    pub true_positives: u64,
    /// Recall (= class accuracy) `TP / (TP + FN)`; `None` when the class has no ground-truth
    /// pixels.
    pub recall: Option<f64>,
    /// Precision `TP / (TP + FP)`; `None` when no pixel is predicted as the class.
    pub precision: Option<f64>,
    /// Intersection over union `TP / (TP + FP + FN)`; `None` when the class is absent from both
    /// ground truth and prediction.
    pub iou: Option<f64>,
    /// Dice / F1 `2·TP / (2·TP + FP + FN)`; `None` when the class is absent from both ground
    /// truth and prediction.
    pub dice: Option<f64>,
}

/// A mean over classes, NaN-aware: the average of the defined values only.
#[derive(Copy, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mean {
    /// The mean, `None` when no class has a defined value.
    pub value: Option<f64>,
    /// How many classes the mean covers (those with a defined value).
    pub classes: usize,
}

impl Mean {
    /// The plain average of the defined values (`numpy.nanmean`).
    pub fn of<I: IntoIterator<Item = Option<f64>>>(values: I) -> Mean {
        let (sum, classes) = values
            .into_iter()
            .flatten()
            .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
        Mean {
            value: (classes > 0).then(|| sum / classes as f64),
            classes,
        }
    }
}

/// Means over a chosen subset of classes (the paper's Tables II/III average minority classes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubsetMeans {
    /// The subset's name (e.g. `"minority"`).
    pub name: String,
    /// Indices of the classes in the subset, as given.
    pub classes: Vec<usize>,
    /// Mean recall over the subset.
    pub mean_accuracy: Mean,
    /// Mean precision over the subset.
    pub mean_precision: Mean,
    /// Mean IoU over the subset.
    pub mean_iou: Mean,
    /// Mean Dice over the subset.
    pub mean_dice: Mean,
}

/// Every score of a confusion matrix; serialisable (serde), printable as a table (`Display`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Number of classes.
    pub n_classes: usize,
    /// The matrix's ignore index.
    pub ignore_index: Option<u32>,
    /// Counted pixels (sum of the matrix).
    pub pixels: u64,
    /// Pixels skipped for the ignore index.
    pub ignored_pixels: u64,
    /// Pixels skipped in lenient mode for an invalid value.
    pub invalid_pixels: u64,
    /// Overall pixel accuracy `ΣTP / pixels`; `None` when no pixel was counted.
    pub pixel_accuracy: Option<f64>,
    /// Mean accuracy (mean recall) over classes with ground-truth pixels.
    pub mean_accuracy: Mean,
    /// Mean precision over classes with predicted pixels.
    pub mean_precision: Mean,
    /// Mean IoU over classes present in ground truth or prediction.
    pub mean_iou: Mean,
    /// Mean Dice over classes present in ground truth or prediction.
    pub mean_dice: Mean,
    /// Frequency-weighted IoU `Σ_c (gt_c / pixels) · IoU_c` over classes with ground-truth pixels
    /// (`classes` = how many).
    pub frequency_weighted_iou: Mean,
    /// Per-class scores, in class order.
    pub classes: Vec<ClassScores>,
    /// Subset means added with [`Report::with_subset`].
    pub subsets: Vec<SubsetMeans>,
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

impl Report {
    /// Computes every score of `m`, with `names[c]` the name of class `c`
    /// (`names.len() == m.n_classes()`, checked by the callers).
    pub(crate) fn from_matrix(m: &ConfusionMatrix, names: Vec<String>) -> Report {
        let gt = m.gt_pixels();
        let pred = m.pred_pixels();
        let tp = m.true_positives();
        let pixels: u64 = gt.iter().sum();
        let classes: Vec<ClassScores> = names
            .into_iter()
            .enumerate()
            .map(|(c, name)| {
                let union = gt[c] + pred[c] - tp[c];
                ClassScores {
                    name,
                    gt_pixels: gt[c],
                    pred_pixels: pred[c],
                    true_positives: tp[c],
                    recall: ratio(tp[c], gt[c]),
                    precision: ratio(tp[c], pred[c]),
                    iou: ratio(tp[c], union),
                    dice: ratio(2 * tp[c], gt[c] + pred[c]),
                }
            })
            .collect();
        let fw_terms: Vec<f64> = classes
            .iter()
            .filter(|c| c.gt_pixels > 0)
            .filter_map(|c| Some(c.gt_pixels as f64 / pixels as f64 * c.iou?))
            .collect();
        Report {
            n_classes: m.n_classes(),
            ignore_index: m.ignore_index(),
            pixels,
            ignored_pixels: m.ignored_pixels(),
            invalid_pixels: m.invalid_pixels(),
            pixel_accuracy: ratio(tp.iter().sum(), pixels),
            mean_accuracy: Mean::of(classes.iter().map(|c| c.recall)),
            mean_precision: Mean::of(classes.iter().map(|c| c.precision)),
            mean_iou: Mean::of(classes.iter().map(|c| c.iou)),
            mean_dice: Mean::of(classes.iter().map(|c| c.dice)),
            frequency_weighted_iou: Mean {
                value: (!fw_terms.is_empty()).then(|| fw_terms.iter().sum()),
                classes: fw_terms.len(),
            },
            classes,
            subsets: Vec::new(),
        }
    }

    /// Index of the class called `name`, if any.
    pub fn class_index(&self, name: &str) -> Option<usize> {
        self.classes.iter().position(|c| c.name == name)
    }

    /// Means over the classes `classes` (indices), NaN-aware like the global means.
    ///
    /// Fails with [`MetricsError::InvalidSubset`] if `classes` is empty, repeats a class or holds
    /// an index `>= n_classes`.
    pub fn subset(&self, name: &str, classes: &[usize]) -> Result<SubsetMeans, MetricsError> {
        let bad = |reason: String| MetricsError::InvalidSubset {
            subset: name.to_string(),
            reason,
        };
        if classes.is_empty() {
            return Err(bad("no class given".into()));
        }
        let mut seen = vec![false; self.n_classes];
        for &c in classes {
            if c >= self.n_classes {
                return Err(bad(format!(
                    "class index {c} is not below the number of classes {}",
                    self.n_classes
                )));
            }
            if std::mem::replace(&mut seen[c], true) {
                return Err(bad(format!("class index {c} is given twice")));
            }
        }
        let pick = |f: fn(&ClassScores) -> Option<f64>| {
            Mean::of(classes.iter().map(|&c| f(&self.classes[c])))
        };
        Ok(SubsetMeans {
            name: name.to_string(),
            classes: classes.to_vec(),
            mean_accuracy: pick(|c| c.recall),
            mean_precision: pick(|c| c.precision),
            mean_iou: pick(|c| c.iou),
            mean_dice: pick(|c| c.dice),
        })
    }

    /// Like [`subset`](Self::subset), with classes given by name.
    ///
    /// Fails with [`MetricsError::InvalidSubset`] on an unknown name, besides the cases of
    /// [`subset`](Self::subset).
    pub fn subset_by_names<S: AsRef<str>>(
        &self,
        name: &str,
        class_names: &[S],
    ) -> Result<SubsetMeans, MetricsError> {
        let idx = class_names
            .iter()
            .map(|s| {
                self.class_index(s.as_ref())
                    .ok_or_else(|| MetricsError::InvalidSubset {
                        subset: name.to_string(),
                        reason: format!("no class is named {:?}", s.as_ref()),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.subset(name, &idx)
    }

    /// Adds the means over `classes` to [`subsets`](Self::subsets) (serialised and printed with
    /// the report). Errors as [`subset`](Self::subset).
    pub fn with_subset(mut self, name: &str, classes: &[usize]) -> Result<Self, MetricsError> {
        let s = self.subset(name, classes)?;
        self.subsets.push(s);
        Ok(self)
    }

    /// The report as a human table (the same text as `Display`).
    pub fn table(&self) -> String {
        self.to_string()
    }
}

/// A score in percent with two decimals, or `-` when undefined.
fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{:.2}", 100.0 * v))
}

fn mean_line(f: &mut fmt::Formatter<'_>, label: &str, m: &Mean, of: usize) -> fmt::Result {
    writeln!(
        f,
        "{label:<24} {:>7}  ({} of {of} classes)",
        pct(m.value),
        m.classes
    )
}

impl fmt::Display for Report {
    /// Per-class table (pixel counts, then recall, precision, IoU and Dice in percent with two
    /// decimals, `-` where undefined), then the overall scores and any subsets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name_w = self
            .classes
            .iter()
            .map(|c| c.name.chars().count())
            .max()
            .unwrap_or(0)
            .max("class".len());
        let num_w = |h: &str, v: fn(&ClassScores) -> u64| {
            self.classes
                .iter()
                .map(|c| v(c).to_string().len())
                .max()
                .unwrap_or(0)
                .max(h.len())
        };
        let gw = num_w("gt pixels", |c| c.gt_pixels);
        let pw = num_w("pred pixels", |c| c.pred_pixels);
        let header = format!(
            "{:<name_w$}  {:>gw$}  {:>pw$}  {:>7}  {:>9}  {:>7}  {:>7}",
            "class", "gt pixels", "pred pixels", "recall", "precision", "IoU", "Dice"
        );
        writeln!(f, "{header}")?;
        writeln!(f, "{}", "-".repeat(header.len()))?;
        for c in &self.classes {
            // Pad by characters, so non-ASCII names keep the columns aligned.
            let pad = name_w - c.name.chars().count();
            writeln!(
                f,
                "{}{}  {:>gw$}  {:>pw$}  {:>7}  {:>9}  {:>7}  {:>7}",
                c.name,
                " ".repeat(pad),
                c.gt_pixels,
                c.pred_pixels,
                pct(c.recall),
                pct(c.precision),
                pct(c.iou),
                pct(c.dice)
            )?;
        }
        writeln!(f, "{}", "-".repeat(header.len()))?;
        writeln!(
            f,
            "{:<24} {:>7}  ({} pixels counted, {} ignored{})",
            "pixel accuracy",
            pct(self.pixel_accuracy),
            self.pixels,
            self.ignored_pixels,
            if self.invalid_pixels > 0 {
                format!(", {} invalid skipped", self.invalid_pixels)
            } else {
                String::new()
            }
        )?;
        let n = self.n_classes;
        mean_line(f, "mean accuracy (recall)", &self.mean_accuracy, n)?;
        mean_line(f, "mean precision", &self.mean_precision, n)?;
        mean_line(f, "mean IoU", &self.mean_iou, n)?;
        mean_line(f, "mean Dice", &self.mean_dice, n)?;
        mean_line(f, "frequency-weighted IoU", &self.frequency_weighted_iou, n)?;
        for s in &self.subsets {
            let names: Vec<&str> = s
                .classes
                .iter()
                .filter_map(|&c| self.classes.get(c).map(|c| c.name.as_str()))
                .collect();
            writeln!(f, "subset {:?}: {}", s.name, names.join(", "))?;
            let k = s.classes.len();
            mean_line(f, "  mean accuracy (recall)", &s.mean_accuracy, k)?;
            mean_line(f, "  mean precision", &s.mean_precision, k)?;
            mean_line(f, "  mean IoU", &s.mean_iou, k)?;
            mean_line(f, "  mean Dice", &s.mean_dice, k)?;
        }
        Ok(())
    }
}
