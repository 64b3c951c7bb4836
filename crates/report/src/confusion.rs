//! The normalised confusion matrix as a heatmap (SVG or PNG by file extension) and as a
//! Markdown table.
//!
//! Rows are the ground truth, columns the prediction, both in train-id order with each class's
//! palette colour beside its name (the order and colours of the example figure's legend).
//! Classes absent from both the ground truth and the prediction are left out. Cells are shaded
//! from white (0) to dark blue (the largest value of the scale: 1, or the largest count when not
//! normalised), with the value in percent written in each cell when the matrix is small enough
//! to read, and a colour bar on the right.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use recallseg_metrics::{ConfusionMatrix, Normalize};
use std::fmt::Write;
use std::path::Path;

/// Largest number of classes whose cells get their value written in.
const MAX_LABELLED: usize = 30;

/// Sequential colour scale (matplotlib's "Blues" end points and three stops between).
fn shade(t: f64) -> RGBColor {
    const STOPS: [(f64, [f64; 3]); 5] = [
        (0.0, [247.0, 251.0, 255.0]),
        (0.25, [198.0, 219.0, 239.0]),
        (0.5, [107.0, 174.0, 214.0]),
        (0.75, [33.0, 113.0, 181.0]),
        (1.0, [8.0, 48.0, 107.0]),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let k = STOPS
        .windows(2)
        .position(|w| t <= w[1].0)
        .unwrap_or(STOPS.len() - 2);
    let ((a, ca), (b, cb)) = (STOPS[k], STOPS[k + 1]);
    let u = (t - a) / (b - a);
    let c = |i: usize| (ca[i] + u * (cb[i] - ca[i])).round() as u8;
    RGBColor(c(0), c(1), c(2))
}

/// What normalisation means, for titles and captions.
pub fn normalize_caption(normalize: Normalize) -> &'static str {
    match normalize {
        Normalize::True => {
            "normalised over the ground truth (rows sum to 100%, the diagonal is recall)"
        }
        Normalize::Pred => {
            "normalised over the predictions (columns sum to 100%, the diagonal is precision)"
        }
        Normalize::All => "normalised over all pixels (the matrix sums to 100%)",
        Normalize::None => "pixel counts",
    }
}

/// The classes shown: those present in the ground truth or the prediction, in class order.
pub fn shown_classes(m: &ConfusionMatrix) -> Vec<usize> {
    let (gt, pred) = (m.gt_pixels(), m.pred_pixels());
    (0..m.n_classes())
        .filter(|&c| gt[c] + pred[c] > 0)
        .collect()
}

/// One cell's text: percent without decimals (counts as integers), empty for 0.
fn cell_text(v: f64, normalize: Normalize) -> String {
    match normalize {
        _ if v == 0.0 => String::new(),
        Normalize::None => format!("{v:.0}"),
        _ if v < 0.005 => "<1".into(),
        _ => format!("{:.0}", 100.0 * v),
    }
}

/// Draws `m` normalised as `normalize` says, titled `title`, with `names` and `palette` (one per
/// class) into `path` (`.svg` or `.png`).
pub fn draw_confusion(
    m: &ConfusionMatrix,
    names: &[String],
    palette: &[[u8; 3]],
    normalize: Normalize,
    title: &str,
    path: &Path,
) -> Result<(), String> {
    let n = m.n_classes();
    if names.len() != n || palette.len() != n {
        return Err(format!(
            "{} class names and {} colours for a {n}-class confusion matrix",
            names.len(),
            palette.len()
        ));
    }
    let shown = shown_classes(m);
    if shown.is_empty() {
        return Err("the confusion matrix is empty".into());
    }
    let layout = Layout::new(&shown, names);
    crate::font::register_fonts()?;
    let spec = Spec {
        m,
        names,
        palette,
        normalize,
        title,
        shown: &shown,
        layout,
    };
    // DejaVu Sans: about 0.62 em a character.
    let text_w = (title.chars().count() as f64 * 17.0 * 0.62)
        .max(spec.subtitle().chars().count() as f64 * 12.0 * 0.62)
        .ceil() as i32;
    let size = spec.layout.size(text_w);
    crate::save::with_backend(path, size, |a| spec.draw(a), |a| spec.draw(a))
}

/// Pixel geometry of the figure.
#[derive(Clone, Copy)]
struct Layout {
    k: usize,
    cell: i32,
    left: i32,
    top: i32,
}

const LABEL_FONT: u32 = 13;
const SWATCH: i32 = 11;
const BAR_W: i32 = 16;

impl Layout {
    fn new(shown: &[usize], names: &[String]) -> Layout {
        let k = shown.len();
        let cell = (640 / k as i32).clamp(6, 34);
        // DejaVu Sans at 13 px: about 7.5 px a character.
        let longest = shown
            .iter()
            .map(|&c| names[c].chars().count())
            .max()
            .unwrap_or(1);
        let label_w = (longest as f64 * 7.5).ceil() as i32 + 8;
        let title_h = 54;
        Layout {
            k,
            cell,
            // axis title, names, swatch
            left: 24 + label_w + SWATCH + 6,
            top: title_h + label_w + SWATCH + 6,
        }
    }

    fn grid(&self) -> i32 {
        self.cell * self.k as i32
    }

    /// The figure's size; `text_w` is the width the title lines need.
    fn size(&self, text_w: i32) -> (u32, u32) {
        let w = self.left + self.grid() + 30 + BAR_W + 60;
        let h = self.top + self.grid().max(100) + 30;
        (w.max(text_w + 20) as u32, h as u32)
    }
}

struct Spec<'a> {
    m: &'a ConfusionMatrix,
    names: &'a [String],
    palette: &'a [[u8; 3]],
    normalize: Normalize,
    title: &'a str,
    shown: &'a [usize],
    layout: Layout,
}

fn e<T: std::fmt::Display>(err: T) -> String {
    err.to_string()
}

impl Spec<'_> {
    /// The line under the title: what the numbers are.
    fn subtitle(&self) -> String {
        format!(
            "{}{}",
            normalize_caption(self.normalize),
            if self.layout.k <= MAX_LABELLED && self.normalize != Normalize::None {
                ", values in %"
            } else {
                ""
            }
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> Result<(), String> {
        let Layout {
            k, cell, left, top, ..
        } = self.layout;
        let grid = self.layout.grid();
        root.fill(&WHITE).map_err(e)?;
        let nm = self.m.normalized(self.normalize);
        let scale_max = match self.normalize {
            Normalize::None => nm.values.iter().copied().fold(0.0, f64::max).max(1.0),
            _ => 1.0,
        };
        let font = |size: u32| ("sans-serif", size).into_font();
        // Title: the caller's, then what the numbers are.
        root.draw(&Text::new(
            self.title.to_string(),
            (10, 8),
            font(17).color(&BLACK),
        ))
        .map_err(e)?;
        root.draw(&Text::new(
            self.subtitle(),
            (10, 30),
            font(12).color(&BLACK.mix(0.75)),
        ))
        .map_err(e)?;
        let gt = self.m.gt_pixels();
        // Cells.
        for (i, &g) in self.shown.iter().enumerate() {
            for (j, &p) in self.shown.iter().enumerate() {
                let v = nm.get(g, p).unwrap_or(0.0);
                let (x0, y0) = (left + j as i32 * cell, top + i as i32 * cell);
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cell, y0 + cell)],
                    shade(v / scale_max).filled(),
                ))
                .map_err(e)?;
                if k <= MAX_LABELLED {
                    let t = cell_text(v, self.normalize);
                    if !t.is_empty() {
                        let colour = if v / scale_max > 0.5 { WHITE } else { BLACK };
                        let size = if t.len() > 2 { 10 } else { 12 }.min(cell as u32 - 2);
                        root.draw(&Text::new(
                            t,
                            (x0 + cell / 2, y0 + cell / 2),
                            font(size)
                                .color(&colour)
                                .pos(Pos::new(HPos::Center, VPos::Center)),
                        ))
                        .map_err(e)?;
                    }
                }
            }
        }
        // Grid frame and the diagonal's outline, so the correct cells stand out.
        root.draw(&Rectangle::new(
            [(left, top), (left + grid, top + grid)],
            BLACK.mix(0.6).stroke_width(1),
        ))
        .map_err(e)?;
        // Row labels (ground truth): name, then the class colour; absent rows in grey.
        let label_font = LABEL_FONT.min(cell as u32 + 2);
        for (i, &c) in self.shown.iter().enumerate() {
            let yc = top + i as i32 * cell + cell / 2;
            let sx = left - SWATCH - 4;
            self.swatch(&root, c, (sx, yc - SWATCH / 2))?;
            let colour = if gt[c] == 0 {
                BLACK.mix(0.45)
            } else {
                BLACK.mix(1.0)
            };
            root.draw(&Text::new(
                self.names[c].clone(),
                (sx - 4, yc),
                font(label_font)
                    .color(&colour)
                    .pos(Pos::new(HPos::Right, VPos::Center)),
            ))
            .map_err(e)?;
        }
        // Column labels (prediction): the class colour, then the name written upwards.
        for (j, &c) in self.shown.iter().enumerate() {
            let xc = left + j as i32 * cell + cell / 2;
            let sy = top - SWATCH - 4;
            self.swatch(&root, c, (xc - SWATCH / 2, sy))?;
            root.draw(&Text::new(
                self.names[c].clone(),
                (xc, sy - 4),
                font(label_font)
                    .transform(FontTransform::Rotate270)
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(e)?;
        }
        // Axis titles.
        root.draw(&Text::new(
            "prediction",
            (left + grid / 2, top + grid + 8),
            font(13)
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(e)?;
        root.draw(&Text::new(
            "ground truth",
            (10, top + grid / 2),
            font(13)
                .transform(FontTransform::Rotate270)
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Center)),
        ))
        .map_err(e)?;
        self.colour_bar(&root, scale_max)?;
        root.present().map_err(e)
    }

    fn swatch<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        c: usize,
        (x, y): (i32, i32),
    ) -> Result<(), String> {
        let p = self.palette[c];
        root.draw(&Rectangle::new(
            [(x, y), (x + SWATCH, y + SWATCH)],
            RGBColor(p[0], p[1], p[2]).filled(),
        ))
        .map_err(e)?;
        root.draw(&Rectangle::new(
            [(x, y), (x + SWATCH, y + SWATCH)],
            BLACK.mix(0.5).stroke_width(1),
        ))
        .map_err(e)
    }

    /// A vertical colour bar beside the grid, 0 at the bottom, with five ticks.
    fn colour_bar<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        scale_max: f64,
    ) -> Result<(), String> {
        let Layout { left, top, .. } = self.layout;
        let grid = self.layout.grid().max(100);
        let x0 = left + self.layout.grid() + 30;
        let steps = grid.max(1);
        for s in 0..steps {
            let t = 1.0 - s as f64 / (steps - 1).max(1) as f64;
            root.draw(&Rectangle::new(
                [(x0, top + s), (x0 + BAR_W, top + s + 1)],
                shade(t).filled(),
            ))
            .map_err(e)?;
        }
        root.draw(&Rectangle::new(
            [(x0, top), (x0 + BAR_W, top + grid)],
            BLACK.mix(0.6).stroke_width(1),
        ))
        .map_err(e)?;
        for q in 0..=4 {
            let t = q as f64 / 4.0;
            let y = top + ((1.0 - t) * grid as f64).round() as i32;
            let label = match self.normalize {
                Normalize::None => format!("{:.0}", t * scale_max),
                _ => format!("{:.0}%", 100.0 * t),
            };
            root.draw(&PathElement::new(
                vec![(x0 + BAR_W, y), (x0 + BAR_W + 4, y)],
                BLACK,
            ))
            .map_err(e)?;
            root.draw(&Text::new(
                label,
                (x0 + BAR_W + 7, y),
                ("sans-serif", 11)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(e)?;
        }
        Ok(())
    }
}

/// The normalised matrix as a Markdown table in percent with one decimal (counts when not
/// normalised), over the classes present in ground truth or prediction; rows = ground truth.
pub fn markdown_table(m: &ConfusionMatrix, names: &[String], normalize: Normalize) -> String {
    let shown = shown_classes(m);
    let nm = m.normalized(normalize);
    let mut md = String::from("| ground truth ＼ prediction |");
    for &c in &shown {
        let _ = write!(md, " {} |", names.get(c).map_or("?", |s| s.as_str()));
    }
    md.push_str("\n|---|");
    md.push_str(&"---:|".repeat(shown.len()));
    md.push('\n');
    for &g in &shown {
        let _ = write!(md, "| {} |", names.get(g).map_or("?", |s| s.as_str()));
        for &p in &shown {
            let v = nm.get(g, p).unwrap_or(0.0);
            let _ = match normalize {
                Normalize::None => write!(md, " {v:.0} |"),
                _ => write!(md, " {:.1} |", 100.0 * v),
            };
        }
        md.push('\n');
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shades_run_from_white_to_dark_blue() {
        assert_eq!(shade(0.0), RGBColor(247, 251, 255));
        assert_eq!(shade(1.0), RGBColor(8, 48, 107));
        assert_eq!(shade(0.5), RGBColor(107, 174, 214));
        assert_eq!(shade(f64::NAN), shade(0.0));
        assert_eq!(shade(7.0), shade(1.0));
    }

    #[test]
    fn cell_texts() {
        assert_eq!(cell_text(0.0, Normalize::True), "");
        assert_eq!(cell_text(0.001, Normalize::True), "<1");
        assert_eq!(cell_text(0.876, Normalize::All), "88");
        assert_eq!(cell_text(12.0, Normalize::None), "12");
    }
}
