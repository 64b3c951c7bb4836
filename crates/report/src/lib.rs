//! The comparison report: `report.md` in the paper's style, `results.json`, the Fig. 1-like
//! accuracy-vs-IoU scatter, the Fig. 4-like class-weight plot and Fig. 3-like example predictions.
//!
//! [`write_report`] takes a [`Comparison`] (one [`RunSummary`] per loss, each with its test-set
//! metrics and the class weights logged during training) and optional [`ExampleSet`] predictions,
//! and writes into a folder:
//!
//! | file | what |
//! |---|---|
//! | `report.md` | setting, per-loss mean accuracy / mean IoU, minority-class table (Table II style), the paper's numbers, per-class tables |
//! | `results.json` | the [`Comparison`] as JSON |
//! | `fig1_acc_vs_iou.svg` / `.png` | mean accuracy vs mean IoU, quadrant lines at CE's values |
//! | `fig4_class_weights.svg` / `.png` | normalised per-class weights of Recall and Focal loss over training |
//! | `examples.png` | image, ground truth and each loss's prediction, side by side |
//! | `confusion_<loss>.svg` / `.png` | each run's test confusion matrix, normalised as `[metrics] confusion_normalize` says |

pub mod confusion;
mod examples;
pub mod font;
mod markdown;
mod overlay;
pub mod paper;
mod plots;
mod save;
pub mod training_curves;

pub use examples::{render_examples, zoom_window, ExampleRow, ExampleSet};
pub use markdown::render_markdown;
pub use overlay::{legend_entries, overlay, render_overlay, OverlayOptions, Picture};
pub use plots::{draw_fig1, draw_fig4};
pub use save::save_rgb_png;

use recallseg_metrics::ReportSettings;
use recallseg_metrics::{Report, Score};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Errors of report writing.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The inputs are inconsistent (e.g. a run with a different class count).
    #[error("report: {0}")]
    Invalid(String),
}

/// The setting a comparison ran in (printed at the top of the report).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Setting {
    /// `synthia` or `cityscapes`.
    pub dataset: String,
    /// Dataset root.
    pub data_root: PathBuf,
    /// Whether the data is the generated synthetic Synthia-format dataset.
    pub synthetic: bool,
    /// Backbone (`resnet18` …) and its width.
    pub backbone: String,
    /// First-stage width of the backbone (64 = standard).
    pub backbone_width: usize,
    /// Head (`deeplabv3plus` …).
    pub head: String,
    /// Output stride.
    pub output_stride: usize,
    /// Pretrained weights (`none`, `imagenet`, path).
    pub pretrained: String,
    /// Training input `(height, width)`.
    pub train_size: (usize, usize),
    /// Evaluation input `(height, width)`.
    pub eval_size: (usize, usize),
    /// Batch size.
    pub batch_size: usize,
    /// Optimiser steps per run.
    pub iters: usize,
    /// Optimiser and learning rate, as text (`adam, lr 1e-3, constant`).
    pub optimizer: String,
    /// Device.
    pub device: String,
    /// Seed.
    pub seed: u64,
    /// Test split evaluated.
    pub test_split: String,
    /// Number of test images.
    pub test_images: usize,
}

impl Setting {
    /// The paper table this setting reproduces, if it is the paper's protocol: real Synthia or
    /// Cityscapes data, ImageNet-pretrained full-width ResNet-18, the paper's image size and
    /// schedule.
    pub fn matching_paper_table(&self) -> Option<&'static paper::PaperTable> {
        if self.synthetic
            || self.backbone != "resnet18"
            || self.backbone_width != 64
            || self.pretrained == "none"
        {
            return None;
        }
        match self.dataset.as_str() {
            "synthia" if self.train_size == (384, 768) && self.iters >= 100_000 => {
                Some(&paper::TABLE_II)
            }
            "cityscapes" if self.train_size == (769, 769) && self.iters >= 90_000 => {
                Some(&paper::TABLE_III)
            }
            _ => None,
        }
    }

    /// The paper table of the same dataset (shown for orientation even when the setting does not
    /// match).
    pub fn dataset_paper_table(&self) -> Option<&'static paper::PaperTable> {
        match self.dataset.as_str() {
            "synthia" => Some(&paper::TABLE_II),
            "cityscapes" => Some(&paper::TABLE_III),
            _ => None,
        }
    }
}

/// One training run of a comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// The loss's `name` (`recall_ce`).
    pub loss_name: String,
    /// The loss as the paper names it (`Recall`, `CE`, `WeightedCE`).
    pub label: String,
    /// The loss's parameters as configured.
    pub loss_config: serde_json::Value,
    /// Metrics on the test split, with the weights `evaluated` names.
    pub test: Report,
    /// Which weights `test` measures: `"final"` (after the last step) or `"best"` (the
    /// checkpoint of the best validation mean IoU, which is what the paper's `test.py`
    /// evaluates).
    #[serde(default = "final_weights")]
    pub evaluated: String,
    /// The test metrics of the other weights, when both were evaluated.
    #[serde(default)]
    pub test_other: Option<Report>,
    /// Best validation mean IoU during training and its step.
    pub best_val: Option<(f64, u64)>,
    /// Steps trained.
    pub iters: u64,
    /// Training wall time in seconds (excluding evaluation).
    pub train_seconds: f64,
    /// Per-class loss weights logged during training: `(step, weights)`, `None` for classes
    /// absent from that step's batch.
    pub class_weights: Vec<(u64, Vec<Option<f32>>)>,
    /// The confusion matrix `test` was computed from (absent in runs recorded before it was
    /// kept: their report has no confusion-matrix figure).
    #[serde(default)]
    pub confusion: Option<recallseg_metrics::ConfusionMatrix>,
}

fn final_weights() -> String {
    "final".into()
}

impl RunSummary {
    /// The weights `test_other` measures (the ones `evaluated` does not name).
    pub fn other_weights(&self) -> &'static str {
        if self.evaluated == "best" {
            "final"
        } else {
            "best"
        }
    }

    /// Test mean accuracy in percent (NaN when undefined).
    pub fn mean_acc_pct(&self) -> f64 {
        self.test
            .mean_accuracy
            .value
            .map_or(f64::NAN, |v| 100.0 * v)
    }
    /// Test mean IoU in percent (NaN when undefined).
    pub fn mean_iou_pct(&self) -> f64 {
        self.test.mean_iou.value.map_or(f64::NAN, |v| 100.0 * v)
    }
}

/// A finished comparison of losses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Report title.
    pub title: String,
    /// The common setting.
    pub setting: Setting,
    /// Class names, in train-id order.
    pub class_names: Vec<String>,
    /// Class colours.
    pub palette: Vec<[u8; 3]>,
    /// Share of each class among the training pixels (sums to 1), if known.
    pub class_frequency: Option<Vec<f64>>,
    /// One entry per loss, in the order run.
    pub runs: Vec<RunSummary>,
    /// Wall time of the whole comparison in seconds: every invocation that worked on its
    /// output folder (an interrupted `compare` and the one that resumed it), summed through
    /// `comparison-time.json` in that folder. Runs trained elsewhere (a Slurm job array) count
    /// only with the time it took to collect them.
    pub wall_seconds: f64,
    /// Free-form notes printed under the setting.
    pub notes: Vec<String>,
    /// How the report averages scores (`[metrics]` of the configuration; absent in results
    /// written before it existed, which read as the defaults).
    #[serde(default)]
    pub metrics: ReportSettings,
}

impl Comparison {
    /// The test score `score` of `run` in percent, averaged as [`metrics`](Self::metrics) says
    /// (the paper's `nanmean` by default: then mean accuracy and mean IoU are
    /// [`RunSummary::mean_acc_pct`] and [`RunSummary::mean_iou_pct`]); F-beta with its β.
    /// NaN when undefined.
    pub fn mean_pct(&self, run: &RunSummary, score: Score) -> f64 {
        Self::mean_pct_of(&self.metrics, &run.test, score)
    }

    /// Like [`mean_pct`](Self::mean_pct), for any report of the comparison.
    pub fn mean_pct_of(metrics: &ReportSettings, report: &Report, score: Score) -> f64 {
        let report = match report.clone().with_beta(metrics.beta) {
            Ok(r) => r,
            Err(_) => return f64::NAN,
        };
        report
            .average(score, metrics.averaging())
            .value()
            .map_or(f64::NAN, |v| 100.0 * v)
    }

    /// The cross-entropy run, the reference of the quadrant lines and of the minority classes.
    pub fn baseline(&self) -> Option<&RunSummary> {
        self.runs.iter().find(|r| r.loss_name == "cross_entropy")
    }

    /// The minority classes in the paper's sense: classes whose test IoU with cross entropy is
    /// below 80% (Table II's †), or, without a CE run, below 80% with the first run. Classes
    /// absent from the test set are left out.
    pub fn minority_classes(&self) -> Vec<usize> {
        let Some(reference) = self.baseline().or(self.runs.first()) else {
            return Vec::new();
        };
        reference
            .test
            .classes
            .iter()
            .enumerate()
            .filter(|(_, c)| c.gt_pixels > 0 && c.iou.is_some_and(|v| v < 0.8))
            .map(|(i, _)| i)
            .collect()
    }

    /// The classes the example figure magnifies, rarest first: by training pixel frequency when
    /// known (classes that occur), else the minority classes.
    pub fn zoom_classes(&self) -> Vec<usize> {
        match &self.class_frequency {
            Some(f) => {
                let mut c: Vec<usize> = (0..f.len()).filter(|&i| f[i] > 0.0).collect();
                c.sort_by(|&a, &b| f[a].total_cmp(&f[b]).then(a.cmp(&b)));
                c
            }
            None => self.minority_classes(),
        }
    }

    fn check(&self) -> Result<(), ReportError> {
        let n = self.class_names.len();
        if self.palette.len() != n {
            return Err(ReportError::Invalid(format!(
                "{} class names but {} palette colours",
                n,
                self.palette.len()
            )));
        }
        for r in &self.runs {
            if r.test.classes.len() != n {
                return Err(ReportError::Invalid(format!(
                    "run {} has {} classes, the comparison {}",
                    r.loss_name,
                    r.test.classes.len(),
                    n
                )));
            }
            if let Some(m) = &r.confusion {
                if m.n_classes() != n {
                    return Err(ReportError::Invalid(format!(
                        "run {} has a {}-class confusion matrix, the comparison {} classes",
                        r.loss_name,
                        m.n_classes(),
                        n
                    )));
                }
            }
        }
        Ok(())
    }
}

/// What [`write_report`] wrote, and the plots it could not draw (an unwritable file, say).
#[derive(Debug, Clone, Default)]
pub struct WrittenReport {
    /// Files written.
    pub files: Vec<PathBuf>,
    /// Plot failures (the report is still complete otherwise).
    pub warnings: Vec<String>,
}

/// Writes the report files into `dir` (created if needed).
pub fn write_report(
    dir: &Path,
    cmp: &Comparison,
    examples: Option<&ExampleSet>,
) -> Result<WrittenReport, ReportError> {
    cmp.check()?;
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out = WrittenReport::default();
    let write = |name: &str, bytes: &[u8], out: &mut WrittenReport| -> Result<(), ReportError> {
        let path = dir.join(name);
        recallseg_files::write_bytes_atomic(&path, bytes).map_err(|e| ReportError::Io {
            path: path.clone(),
            source: e.source,
        })?;
        out.files.push(path);
        Ok(())
    };

    let json = serde_json::to_string_pretty(cmp).expect("comparison serialises");
    write("results.json", json.as_bytes(), &mut out)?;

    let mut figures = Vec::new();
    for (stem, has) in [
        ("fig1_acc_vs_iou", !cmp.runs.is_empty()),
        ("fig4_class_weights", plots::has_fig4_data(cmp)),
    ] {
        if !has {
            continue;
        }
        let mut ok = true;
        for ext in ["svg", "png"] {
            let path = dir.join(format!("{stem}.{ext}"));
            let r = if stem == "fig1_acc_vs_iou" {
                draw_fig1(cmp, &path)
            } else {
                draw_fig4(cmp, &path)
            };
            match r {
                Ok(()) => out.files.push(path),
                Err(e) => {
                    ok = false;
                    out.warnings.push(format!("{}: {e}", path.display()));
                }
            }
        }
        if ok {
            figures.push(stem.to_string());
        }
    }
    // One confusion-matrix figure per run that kept its matrix.
    for r in &cmp.runs {
        let Some(m) = &r.confusion else { continue };
        let stem = confusion_stem(r);
        if m.total() == 0 {
            continue;
        }
        let title = format!("{}: test confusion matrix", r.label);
        let mut ok = true;
        for ext in ["svg", "png"] {
            let path = dir.join(format!("{stem}.{ext}"));
            match confusion::draw_confusion(
                m,
                &cmp.class_names,
                &cmp.palette,
                cmp.metrics.confusion_normalize,
                &title,
                &path,
            ) {
                Ok(()) => out.files.push(path),
                Err(e) => {
                    ok = false;
                    out.warnings.push(format!("{}: {e}", path.display()));
                }
            }
        }
        if ok {
            figures.push(stem);
        }
    }
    let mut has_examples = false;
    if let Some(ex) = examples {
        let path = dir.join("examples.png");
        match render_examples(
            ex,
            &cmp.class_names,
            &cmp.palette,
            &cmp.zoom_classes(),
            &path,
        ) {
            Ok(()) => {
                out.files.push(path);
                has_examples = true;
            }
            Err(e) => out.warnings.push(format!("{}: {e}", path.display())),
        }
    }
    let md = render_markdown(cmp, &figures, examples.filter(|_| has_examples));
    write("report.md", md.as_bytes(), &mut out)?;
    Ok(out)
}

/// The file stem of a run's confusion-matrix figure: `confusion_<loss name>`.
pub fn confusion_stem(run: &RunSummary) -> String {
    format!("confusion_{}", run.loss_name)
}

#[cfg(test)]
mod tests;
