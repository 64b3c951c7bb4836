//! Fig. 1-like and Fig. 4-like plots (plotters, SVG or PNG by file extension).

use super::Comparison;
pub(crate) use crate::save::{with_backend, PlotResult};
use plotters::coord::Shift;
use plotters::prelude::*;
use recallseg_metrics::Score;
use std::path::Path;

fn e<T: std::fmt::Display>(err: T) -> String {
    err.to_string()
}

/// Colour of the `i`-th series (a fixed, distinguishable cycle).
fn series_colour(i: usize) -> RGBColor {
    const C: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    C[i % C.len()]
}

/// Draws mean accuracy (y) against mean IoU (x) for every run, with dashed quadrant lines at
/// cross entropy's values (Fig. 1 of the paper).
pub fn draw_fig1(cmp: &Comparison, path: &Path) -> PlotResult {
    with_backend(path, (800, 600), |a| fig1(cmp, a), |a| fig1(cmp, a))
}

fn padded_range(vals: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let v: Vec<f64> = vals.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0..100.0;
    }
    let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.15).max(1.0);
    (lo - pad).max(0.0)..(hi + pad).min(100.0)
}

fn fig1<DB: DrawingBackend>(cmp: &Comparison, root: DrawingArea<DB, Shift>) -> PlotResult {
    root.fill(&WHITE).map_err(e)?;
    let pts: Vec<(f64, f64, &str)> = cmp
        .runs
        .iter()
        .map(|r| {
            let (iou, acc) = (cmp.mean_pct(r, Score::Iou), cmp.mean_pct(r, Score::Recall));
            (iou, acc, r.label.as_str())
        })
        .filter(|(x, y, _)| x.is_finite() && y.is_finite())
        .collect();
    let xr = padded_range(pts.iter().map(|p| p.0));
    let yr = padded_range(pts.iter().map(|p| p.1));
    let caption = if cmp.setting.synthetic {
        "Mean accuracy vs mean IoU (synthetic data)".to_string()
    } else {
        format!("Mean accuracy vs mean IoU ({})", cmp.setting.dataset)
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(55)
        .y_label_area_size(75)
        .build_cartesian_2d(xr.clone(), yr.clone())
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("mean IoU (%)")
        .y_desc("mean accuracy (%)")
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 18))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(e)?;
    if let Some(b) = cmp.baseline() {
        let (bx, by) = (cmp.mean_pct(b, Score::Iou), cmp.mean_pct(b, Score::Recall));
        if bx.is_finite() && by.is_finite() {
            let dash = ShapeStyle::from(&BLACK.mix(0.5)).stroke_width(1);
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(bx, yr.start), (bx, yr.end)],
                    6,
                    4,
                    dash,
                ))
                .map_err(e)?;
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(xr.start, by), (xr.end, by)],
                    6,
                    4,
                    dash,
                ))
                .map_err(e)?;
        }
    }
    // Labels placed so that none overlaps another label or a point (losses often land close
    // together: Focal on top of CE).
    let px: Vec<(i32, i32)> = pts
        .iter()
        .map(|(x, y, _)| chart.backend_coord(&(*x, *y)))
        .collect();
    let sizes: Vec<(i32, i32)> = pts
        .iter()
        .map(|(_, _, l)| (label_width(l), LABEL_H))
        .collect();
    let offsets = place_labels(&px, &sizes, 7);
    for (i, (x, y, label)) in pts.iter().enumerate() {
        let c = series_colour(i);
        chart
            .draw_series(std::iter::once(
                EmptyElement::at((*x, *y))
                    + Circle::new((0, 0), 7, c.filled())
                    + Text::new(
                        label.to_string(),
                        offsets[i],
                        ("sans-serif", 17).into_font(),
                    ),
            ))
            .map_err(e)?;
    }
    root.present().map_err(e)
}

/// Height of a Fig. 1 label in pixels (17 px font).
const LABEL_H: i32 = 18;

/// Width of a Fig. 1 label in pixels, measured with the embedded font (17 px), plus a margin.
fn label_width(label: &str) -> i32 {
    let measured = ("sans-serif", 17)
        .into_font()
        .box_size(label)
        .map(|(w, _)| w as i32);
    // Without a font (it is registered first, so only if that failed) a generous estimate.
    measured.unwrap_or((label.chars().count() as f64 * 10.5).ceil() as i32) + 4
}

/// Offsets (from each point, top-left corner of the text) for labels of `sizes` (width, height)
/// at the pixel positions `points` (markers of radius `r`), chosen greedily in order from eight
/// positions around the point, so that no label box overlaps an earlier label or any marker.
/// When every position collides, the labels are stacked below the point at increasing distance
/// until one fits.
pub(crate) fn place_labels(points: &[(i32, i32)], sizes: &[(i32, i32)], r: i32) -> Vec<(i32, i32)> {
    type Rect = (i32, i32, i32, i32); // x0, y0, x1, y1
    let overlaps = |a: Rect, b: Rect| a.0 < b.2 && b.0 < a.2 && a.1 < b.3 && b.1 < a.3;
    let markers: Vec<Rect> = points
        .iter()
        .map(|&(x, y)| (x - r, y - r, x + r + 1, y + r + 1))
        .collect();
    let mut placed: Vec<Rect> = Vec::new();
    let mut out = Vec::new();
    for (i, (&(x, y), &(w, h))) in points.iter().zip(sizes).enumerate() {
        let g = r + 3;
        let mut candidates = vec![
            (g, -h - 2),
            (g, 2),
            (-g - w, -h - 2),
            (-g - w, 2),
            (-w / 2, -g - h),
            (-w / 2, g),
            (g, -h / 2),
            (-g - w, -h / 2),
        ];
        candidates.extend((1..40).map(|k| (g, g + k * (h + 2))));
        let free = |&(dx, dy): &(i32, i32)| {
            let rect = (x + dx, y + dy, x + dx + w, y + dy + h);
            !placed.iter().any(|&p| overlaps(p, rect))
                && !markers
                    .iter()
                    .enumerate()
                    .any(|(j, &m)| j != i && overlaps(m, rect))
        };
        let (dx, dy) = candidates
            .iter()
            .copied()
            .find(|c| free(c))
            .unwrap_or(candidates[0]);
        placed.push((x + dx, y + dy, x + dx + w, y + dy + h));
        out.push((dx, dy));
    }
    out
}

/// Whether Fig. 4 has anything to show (a Recall or Focal run with logged class weights).
pub(super) fn has_fig4_data(cmp: &Comparison) -> bool {
    fig4_runs(cmp).next().is_some()
}

fn fig4_runs(cmp: &Comparison) -> impl Iterator<Item = &super::RunSummary> {
    cmp.runs.iter().filter(|r| {
        (r.loss_name == "focal" || r.loss_name == "recall_ce") && !r.class_weights.is_empty()
    })
}

/// Weights normalised to sum to one over the classes present (`None` = absent from the batch,
/// left out); all zeros stay zeros.
pub(crate) fn normalise(w: &[Option<f32>]) -> Vec<Option<f64>> {
    let s: f64 = w.iter().flatten().map(|&v| v as f64).sum();
    w.iter()
        .map(|v| v.map(|v| if s > 0.0 { v as f64 / s } else { 0.0 }))
        .collect()
}

/// Splits a series with gaps into contiguous segments.
pub(crate) fn segments(points: &[Option<(f64, f64)>]) -> Vec<Vec<(f64, f64)>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    for p in points {
        match p {
            Some(p) => cur.push(*p),
            None if !cur.is_empty() => out.push(std::mem::take(&mut cur)),
            None => {}
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Draws the normalised per-class weights of the Focal and Recall runs over training (panels
/// (a) and (b) of the paper's Fig. 4) and, when both ran, their ratio recall/focal (panel (c)).
pub fn draw_fig4(cmp: &Comparison, path: &Path) -> PlotResult {
    let n = panels(cmp).len() as u32;
    with_backend(
        path,
        (520 * n.max(1) + LEGEND_W, 480),
        |a| fig4(cmp, a),
        |a| fig4(cmp, a),
    )
}

/// Per class, the points over training (`None` where the class was absent).
type Series = Vec<Vec<Option<(f64, f64)>>>;

fn panels(cmp: &Comparison) -> Vec<(String, Series)> {
    let n = cmp.class_names.len();
    let mut out: Vec<(String, Series)> = Vec::new();
    let mut by_loss = std::collections::BTreeMap::new();
    for r in fig4_runs(cmp) {
        let mut s: Series = vec![Vec::new(); n];
        for (step, w) in &r.class_weights {
            for (c, v) in normalise(w).into_iter().enumerate().take(n) {
                s[c].push(v.map(|v| (*step as f64, v)));
            }
        }
        by_loss.insert(r.loss_name.clone(), (r.label.clone(), s));
    }
    for key in ["focal", "recall_ce"] {
        if let Some((label, s)) = by_loss.get(key) {
            out.push((format!("normalised {label} weight"), s.clone()));
        }
    }
    if let (Some((_, f)), Some((_, r))) = (by_loss.get("focal"), by_loss.get("recall_ce")) {
        let ratio: Series = f
            .iter()
            .zip(r)
            .map(|(fc, rc)| {
                // The two runs log at the same steps; a ratio needs both weights.
                fc.iter()
                    .zip(rc)
                    .map(|(a, b)| match (a, b) {
                        (Some(a), Some(b)) if a.0 == b.0 && a.1 > 0.0 => Some((a.0, b.1 / a.1)),
                        _ => None,
                    })
                    .collect()
            })
            .collect();
        out.push(("recall / focal weight ratio".to_string(), ratio));
    }
    out
}

/// The `i`-th colour of the 20-colour line palette (cycles beyond it).
pub(super) fn line_colour(i: usize) -> RGBColor {
    LINE_COLOURS[i % LINE_COLOURS.len()]
}

/// Width of Fig. 4's legend column (right of the panels, so it never covers a curve).
const LEGEND_W: u32 = 190;

/// Line colours of Fig. 4: mostly Kelly's colours of maximum contrast (without white; a few
/// near-duplicates swapped for brighter hues), every pair at least 40 apart in some channel, so
/// neighbouring classes are told apart; a class beyond them repeats the cycle, dashed.
const LINE_COLOURS: [RGBColor; 20] = [
    RGBColor(0, 103, 165),
    RGBColor(243, 132, 0),
    RGBColor(0, 136, 86),
    RGBColor(190, 0, 50),
    RGBColor(135, 86, 146),
    RGBColor(34, 34, 34),
    RGBColor(161, 202, 241),
    RGBColor(243, 195, 0),
    RGBColor(132, 132, 130),
    RGBColor(230, 143, 172),
    RGBColor(0, 170, 170),
    RGBColor(141, 182, 0),
    RGBColor(136, 45, 23),
    RGBColor(194, 178, 128),
    RGBColor(249, 147, 121),
    RGBColor(179, 68, 108),
    RGBColor(100, 255, 100),
    RGBColor(60, 60, 255),
    RGBColor(226, 88, 34),
    RGBColor(200, 0, 200),
];

/// Colour and dash of the `k`-th line of Fig. 4.
pub(crate) fn line_style(k: usize) -> (RGBColor, bool) {
    (
        LINE_COLOURS[k % LINE_COLOURS.len()],
        k >= LINE_COLOURS.len(),
    )
}

/// A tick label of a step axis: whole numbers, no ".0".
pub(crate) fn step_label(x: &f64) -> String {
    format!("{:.0}", x)
}

fn fig4<DB: DrawingBackend>(cmp: &Comparison, root: DrawingArea<DB, Shift>) -> PlotResult {
    root.fill(&WHITE).map_err(e)?;
    let panels = panels(cmp);
    let (w, _) = root.dim_in_pixel();
    let (plots, legend) = root.split_horizontally(w.saturating_sub(LEGEND_W));
    let areas = plots.split_evenly((1, panels.len().max(1)));
    // The classes drawn (present in some panel), in train-id order, for the legend.
    let n = cmp.class_names.len();
    let drawn: Vec<usize> = (0..n)
        .filter(|&c| {
            panels
                .iter()
                .any(|(_, s)| s.get(c).is_some_and(|p| p.iter().any(|v| v.is_some())))
        })
        .collect();
    for ((title, series), area) in panels.iter().zip(areas) {
        let xmax = series
            .iter()
            .flatten()
            .flatten()
            .map(|p| p.0)
            .fold(1.0f64, f64::max);
        let ymax = series
            .iter()
            .flatten()
            .flatten()
            .map(|p| p.1)
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max)
            .max(1e-3)
            * 1.1;
        let ratio = title.contains("ratio");
        let mut chart = ChartBuilder::on(&area)
            .caption(title.as_str(), ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d(0.0..xmax, 0.0..ymax)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(if ratio {
                "weight ratio (recall / focal)"
            } else {
                "share of the summed class weights"
            })
            .x_label_formatter(&step_label)
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 14))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(e)?;
        for (c, pts) in series.iter().enumerate() {
            let segs = segments(pts);
            let Some(k) = drawn.iter().position(|&d| d == c) else {
                continue; // a class never present (Synthia's reserved ids)
            };
            let (colour, dashed) = line_style(k);
            for seg in &segs {
                if seg.len() == 1 {
                    chart
                        .draw_series(std::iter::once(Circle::new(seg[0], 2, colour.filled())))
                        .map_err(e)?;
                } else if dashed {
                    chart
                        .draw_series(DashedLineSeries::new(
                            seg.iter().copied(),
                            6,
                            4,
                            colour.stroke_width(2),
                        ))
                        .map_err(e)?;
                } else {
                    chart
                        .draw_series(LineSeries::new(seg.iter().copied(), colour.stroke_width(2)))
                        .map_err(e)?;
                }
            }
        }
    }
    // The legend, beside the panels: one swatch line and name per class drawn.
    let top = 40;
    let row = 20;
    for (k, &c) in drawn.iter().enumerate() {
        let y = top + k as i32 * row;
        let (colour, dashed) = line_style(k);
        let style = colour.stroke_width(3);
        if dashed {
            legend
                .draw(&PathElement::new(vec![(8, y), (16, y)], style))
                .map_err(e)?;
            legend
                .draw(&PathElement::new(vec![(22, y), (30, y)], style))
                .map_err(e)?;
        } else {
            legend
                .draw(&PathElement::new(vec![(8, y), (30, y)], style))
                .map_err(e)?;
        }
        legend
            .draw(&Text::new(
                cmp.class_names[c].clone(),
                (38, y - 7),
                ("sans-serif", 14).into_font().color(&BLACK),
            ))
            .map_err(e)?;
    }
    root.present().map_err(e)
}
