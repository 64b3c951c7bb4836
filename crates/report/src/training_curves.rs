//! `recallseg plot`: training curves of one or several runs, like TensorBoard's scalar view.
//!
//! [`draw_training_curves`] draws the series of each run ([`RunCurves`], read from a run's
//! `log.jsonl` by `recallseg_compare::read_run_curves`), in one figure: the training loss, the
//! learning rate, the validation mean accuracy and mean IoU, and one small panel per class with
//! its validation recall; each run is one colour, named in the legend. It writes
//! `training.svg` and `training.png`.

use super::plots::{line_colour, with_backend, PlotResult};
use crate::ReportError;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// The series of one run (as its `log.jsonl` records them).
#[derive(Debug, Clone, Default)]
pub struct RunCurves {
    /// The run's name (its folder's name).
    pub name: String,
    /// Class names of the run (its log header's).
    pub class_names: Vec<String>,
    /// `(step, loss)` of the train lines.
    pub loss: Vec<(f64, f64)>,
    /// `(step, learning rate)` of the train lines.
    pub lr: Vec<(f64, f64)>,
    /// `(step, mean accuracy)` of the val lines.
    pub mean_accuracy: Vec<(f64, f64)>,
    /// `(step, mean IoU)` of the val lines.
    pub mean_iou: Vec<(f64, f64)>,
    /// Per class, `(step, recall)` of the val lines (classes absent from a val line are skipped).
    pub recall: Vec<Vec<(f64, f64)>>,
}

/// A run's lines in one panel: points and whether the line is dashed.
type RunLines = Vec<(Vec<(f64, f64)>, bool)>;

/// One panel: a title and, per run, its lines (`(label suffix, points, dashed)`).
struct Panel {
    title: String,
    /// Per run: lines of that run.
    lines: Vec<RunLines>,
    /// Whether y is a score in `[0, 1]`.
    unit: bool,
}

fn build_panels(runs: &[RunCurves]) -> Vec<Panel> {
    let mut panels = vec![
        Panel {
            title: "training loss".into(),
            lines: runs.iter().map(|r| vec![(r.loss.clone(), false)]).collect(),
            unit: false,
        },
        Panel {
            title: "learning rate".into(),
            lines: runs.iter().map(|r| vec![(r.lr.clone(), false)]).collect(),
            unit: false,
        },
        Panel {
            title: "val mean accuracy (solid) / mean IoU (dashed)".into(),
            lines: runs
                .iter()
                .map(|r| vec![(r.mean_accuracy.clone(), false), (r.mean_iou.clone(), true)])
                .collect(),
            unit: true,
        },
    ];
    // Classes by name, in the first run's order, then any new names of later runs.
    let mut classes: Vec<String> = Vec::new();
    for r in runs {
        for n in &r.class_names {
            if !classes.contains(n) {
                classes.push(n.clone());
            }
        }
    }
    for class in classes {
        panels.push(Panel {
            title: format!("val recall: {class}"),
            lines: runs
                .iter()
                .map(|r| {
                    r.class_names
                        .iter()
                        .position(|n| *n == class)
                        .map(|k| vec![(r.recall[k].clone(), false)])
                        .unwrap_or_default()
                })
                .collect(),
            unit: true,
        });
    }
    panels
}

const PANEL_W: u32 = 420;
const PANEL_H: u32 = 300;
const COLS: u32 = 3;
const LEGEND_H_PER_ROW: u32 = 22;

fn e<T: std::fmt::Display>(err: T) -> String {
    err.to_string()
}

fn draw<DB: DrawingBackend>(runs: &[RunCurves], root: DrawingArea<DB, Shift>) -> PlotResult {
    root.fill(&WHITE).map_err(e)?;
    let legend_h = LEGEND_H_PER_ROW * runs.len() as u32 + 12;
    let (legend, grid) = root.split_vertically(legend_h);
    for (i, r) in runs.iter().enumerate() {
        let y = 6 + LEGEND_H_PER_ROW as i32 * i as i32 + LEGEND_H_PER_ROW as i32 / 2;
        let c = line_colour(i);
        legend
            .draw(&PathElement::new(vec![(12, y), (52, y)], c.stroke_width(3)))
            .map_err(e)?;
        legend
            .draw(&Text::new(
                r.name.clone(),
                (60, y - 8),
                ("sans-serif", 16).into_font(),
            ))
            .map_err(e)?;
    }
    let panels = build_panels(runs);
    let rows = panels.len().div_ceil(COLS as usize);
    let areas = grid.split_evenly((rows, COLS as usize));
    for (p, area) in panels.iter().zip(areas) {
        let pts = p.lines.iter().flatten().flat_map(|(l, _)| l.iter());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in pts {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if x0 > x1 {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if p.unit {
            (y0, y1) = (0.0, 1.0);
        }
        if x1 - x0 < 1e-12 {
            x1 = x0 + 1.0;
        }
        if y1 - y0 < 1e-12 * y1.abs().max(1e-12) {
            let pad = y1.abs().max(1e-3) * 0.1;
            (y0, y1) = (y0 - pad, y1 + pad);
        } else if !p.unit {
            let pad = (y1 - y0) * 0.05;
            (y0, y1) = (y0 - pad, y1 + pad);
        }
        let mut chart = ChartBuilder::on(&area)
            .caption(&p.title, ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("step")
            // Whole steps only: no more ticks than steps in the range.
            .x_labels(((x1 - x0).round() as usize + 1).clamp(2, 6))
            .y_labels(6)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| {
                if y.abs() > 0.0 && (y.abs() < 1e-2 || y.abs() >= 1e4) {
                    format!("{y:.1e}")
                } else {
                    format!("{y:.2}")
                }
            })
            .label_style(("sans-serif", 12))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(e)?;
        for (i, lines) in p.lines.iter().enumerate() {
            let c = line_colour(i);
            for (l, dashed) in lines {
                if *dashed {
                    chart
                        .draw_series(DashedLineSeries::new(
                            l.iter().copied(),
                            6,
                            4,
                            c.stroke_width(2),
                        ))
                        .map_err(e)?;
                } else {
                    chart
                        .draw_series(LineSeries::new(l.iter().copied(), c.stroke_width(2)))
                        .map_err(e)?;
                }
                if l.len() == 1 {
                    chart
                        .draw_series(l.iter().map(|&p| Circle::new(p, 3, c.filled())))
                        .map_err(e)?;
                }
            }
        }
    }
    root.present().map_err(e)
}

/// The figure's size in pixels for these runs.
pub fn figure_size(runs: &[RunCurves]) -> (u32, u32) {
    let panels = build_panels(runs).len() as u32;
    let rows = panels.div_ceil(COLS);
    (
        PANEL_W * COLS,
        PANEL_H * rows + LEGEND_H_PER_ROW * runs.len() as u32 + 12,
    )
}

/// Draws the training curves of `runs` into `out_dir/training.svg` and
/// `out_dir/training.png` (creating `out_dir`), each written atomically; returns the two
/// paths. No run is an error.
pub fn draw_training_curves(
    runs: &[RunCurves],
    out_dir: &Path,
) -> Result<Vec<PathBuf>, ReportError> {
    if runs.is_empty() {
        return Err(ReportError::Invalid("no run to draw".into()));
    }
    let size = figure_size(runs);
    let mut out = Vec::new();
    for name in ["training.svg", "training.png"] {
        let path = out_dir.join(name);
        with_backend(&path, size, |a| draw(runs, a), |a| draw(runs, a))
            .map_err(|err| ReportError::Invalid(format!("{}: {err}", path.display())))?;
        out.push(path);
    }
    Ok(out)
}
