//! Scores computed from a [`ConfusionMatrix`]: per class, means, subsets, and a table printer.
//!
//! Every ratio is `None` (serialised as `null`, printed as `-`) where its denominator is zero,
//! exactly where numpy's `0/0` gives `nan` in the paper's evaluation code; means skip undefined
//! values like `numpy.nanmean` and say how many classes they cover. `docs/metrics.md` has the
//! definitions.

use crate::average::{Averaged, AveragedScores, Averaging, Score};
use crate::confusion::ConfusionMatrix;
use crate::error::MetricsError;
use crate::scores::{ClassScores, Mean};
use serde::{Deserialize, Serialize};
use std::fmt;

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
///
/// ```
/// use recallseg_metrics::ConfusionMatrix;
///
/// let mut cm = ConfusionMatrix::new(3);
/// cm.update(&[0u8, 0, 1, 2, 2], &[0u8, 0, 1, 2, 0]).unwrap();
/// // The paper's minority-class means (Tables II/III): a named subset of classes.
/// let report = cm
///     .report_with_names(&["road", "pole", "sign"])
///     .unwrap()
///     .with_subset("minority", &[1, 2])
///     .unwrap();
/// assert_eq!(report.subsets[0].mean_accuracy.value, Some(0.75)); // pole 1, sign 1/2
/// let json = serde_json::to_string(&report).unwrap(); // results.json
/// assert!(json.contains("\"minority\""));
/// println!("{report}"); // a per-class table
/// ```
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
    /// The β of the F-beta scores (1 unless set with [`Report::with_beta`]).
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// Mean F-beta over classes present in ground truth or prediction (mmseg's `mFscore`).
    #[serde(default)]
    pub mean_fbeta: Mean,
    /// Per-class scores, in class order.
    pub classes: Vec<ClassScores>,
    /// Subset means added with [`Report::with_subset`].
    pub subsets: Vec<SubsetMeans>,
    /// Scores averaged in other modes, added with [`Report::with_averaging`] (serialised and
    /// printed with the report).
    #[serde(default)]
    pub averages: Vec<AveragedScores>,
}

fn default_beta() -> f64 {
    1.0
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// F-beta of one class from its counts (`beta2` = β²).
fn fbeta(tp: u64, gt: u64, pred: u64, beta2: f64) -> Option<f64> {
    let (num, den) = Score::FBeta.fraction(tp, gt, pred, beta2);
    (den > 0.0).then(|| num / den)
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
                    fbeta: fbeta(tp[c], gt[c], pred[c], 1.0),
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
            beta: 1.0,
            mean_fbeta: Mean::of(classes.iter().map(|c| c.fbeta)),
            classes,
            subsets: Vec::new(),
            averages: Vec::new(),
        }
    }

    /// Sets the β of the F-beta scores (default 1, where F-beta = Dice) and recomputes them,
    /// with any stored [`averages`](Self::averages).
    ///
    /// Fails with [`MetricsError::InvalidOption`] unless `beta` is finite and positive.
    pub fn with_beta(mut self, beta: f64) -> Result<Self, MetricsError> {
        if !(beta.is_finite() && beta > 0.0) {
            return Err(MetricsError::InvalidOption {
                option: "beta",
                reason: format!("{beta} is not a finite number above 0"),
            });
        }
        self.beta = beta;
        let beta2 = beta * beta;
        for c in &mut self.classes {
            c.fbeta = fbeta(c.true_positives, c.gt_pixels, c.pred_pixels, beta2);
        }
        self.mean_fbeta = Mean::of(self.classes.iter().map(|c| c.fbeta));
        for a in &mut self.averages {
            a.fbeta = a.averaging.apply(Score::FBeta, &self.classes, beta2);
        }
        Ok(self)
    }

    /// `score` averaged as `averaging` says, computed from the per-class counts
    /// (`docs/metrics.md` has the formulas). With the default [`Averaging`] (`macro`, `skip`)
    /// this equals the report's own means (`mean_accuracy` for recall, `mean_iou` …).
    pub fn average(&self, score: Score, averaging: Averaging) -> Averaged {
        averaging.apply(score, &self.classes, self.beta * self.beta)
    }

    /// Every score averaged as `averaging` says.
    pub fn averaged(&self, averaging: Averaging) -> AveragedScores {
        let a = |s| self.average(s, averaging);
        AveragedScores {
            averaging,
            recall: a(Score::Recall),
            precision: a(Score::Precision),
            iou: a(Score::Iou),
            dice: a(Score::Dice),
            fbeta: a(Score::FBeta),
        }
    }

    /// Adds every score averaged as `averaging` says to [`averages`](Self::averages)
    /// (serialised and printed with the report).
    ///
    /// Fails with [`MetricsError::InvalidOption`] for a fill value outside `[0, 1]`.
    pub fn with_averaging(mut self, averaging: Averaging) -> Result<Self, MetricsError> {
        averaging.zero_division.validate()?;
        let a = self.averaged(averaging);
        self.averages.push(a);
        Ok(self)
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
        // F-beta gets a column only when it differs from Dice (β ≠ 1).
        let fb_name = (self.beta != 1.0).then(|| format!("F{}", self.beta));
        let mut header = format!(
            "{:<name_w$}  {:>gw$}  {:>pw$}  {:>7}  {:>9}  {:>7}  {:>7}",
            "class", "gt pixels", "pred pixels", "recall", "precision", "IoU", "Dice"
        );
        if let Some(fb) = &fb_name {
            header.push_str(&format!("  {fb:>7}"));
        }
        writeln!(f, "{header}")?;
        writeln!(f, "{}", "-".repeat(header.len()))?;
        for c in &self.classes {
            // Pad by characters, so non-ASCII names keep the columns aligned.
            let pad = name_w - c.name.chars().count();
            write!(
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
            if fb_name.is_some() {
                write!(f, "  {:>7}", pct(c.fbeta))?;
            }
            writeln!(f)?;
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
        if let Some(fb) = &fb_name {
            mean_line(f, &format!("mean {fb}"), &self.mean_fbeta, n)?;
        }
        for a in &self.averages {
            let fb = fb_name.as_deref().unwrap_or("F1");
            writeln!(f, "averaged ({}):", a.averaging.label())?;
            for (label, s) in [
                ("  recall", Score::Recall),
                ("  precision", Score::Precision),
                ("  IoU", Score::Iou),
                ("  Dice", Score::Dice),
            ]
            .into_iter()
            .chain((self.beta != 1.0).then_some(("", Score::FBeta)))
            {
                let label = if s == Score::FBeta {
                    format!("  {fb}")
                } else {
                    label.to_string()
                };
                match a.get(s) {
                    Averaged::Mean(m) => mean_line(f, &label, m, n)?,
                    Averaged::PerClass(v) => writeln!(
                        f,
                        "{label:<24} {}",
                        v.iter().map(|&x| pct(x)).collect::<Vec<_>>().join(" ")
                    )?,
                }
            }
        }
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

impl ConfusionMatrix {
    /// The scores, with classes named by their index (`"0"`, `"1"`, …).
    pub fn report(&self) -> Report {
        Report::from_matrix(self, (0..self.n_classes()).map(|c| c.to_string()).collect())
    }

    /// The scores, with one name per class.
    ///
    /// Fails with [`MetricsError::ClassNames`] if `names.len() != n_classes`.
    pub fn report_with_names<S: AsRef<str>>(&self, names: &[S]) -> Result<Report, MetricsError> {
        if names.len() != self.n_classes() {
            return Err(MetricsError::ClassNames {
                names: names.len(),
                n_classes: self.n_classes(),
            });
        }
        Ok(Report::from_matrix(
            self,
            names.iter().map(|s| s.as_ref().to_string()).collect(),
        ))
    }
}
