//! Example predictions side by side (the paper's Fig. 3) and palette colouring.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// One test image with its ground truth and one prediction per column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExampleRow {
    /// Sample id (file stem).
    pub id: String,
    /// The image as RGB bytes, `height × width × 3`.
    pub image: Vec<u8>,
    /// Ground-truth train ids, `height × width`.
    pub ground_truth: Vec<u8>,
    /// Predicted train ids, one per column of the [`ExampleSet`].
    pub predictions: Vec<Vec<u8>>,
}

/// Several [`ExampleRow`]s of the same size, with the column titles of the predictions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExampleSet {
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Title of each prediction column (the loss labels).
    pub columns: Vec<String>,
    /// Rows.
    pub rows: Vec<ExampleRow>,
}

use recallseg_data::colorize;

const TITLE_H: usize = 28;
const GAP: usize = 4;
const LEGEND_ROW_H: usize = 20;
const LEGEND_ENTRY_W: usize = 150;
const ZOOM_OUTLINE: [u8; 3] = [255, 221, 0];

/// A window of the image: `(x0, y0, width, height)` in pixels.
type Window = (usize, usize, usize, usize);

/// The window to magnify in a row: around the pixels of the first class of `focus` present in
/// the ground truth, a quarter of the image in each direction (larger if those pixels spread
/// further), centred on them and kept inside the image. `None` when no focus class is present.
pub fn zoom_window(gt: &[u8], w: usize, h: usize, focus: &[usize]) -> Option<(usize, Window)> {
    let class = focus
        .iter()
        .copied()
        .find(|&c| gt.iter().any(|&l| l as usize == c))?;
    let (mut x_lo, mut x_hi, mut y_lo, mut y_hi) = (w, 0, h, 0);
    for (i, &l) in gt.iter().enumerate() {
        if l as usize == class {
            let (x, y) = (i % w, i / w);
            x_lo = x_lo.min(x);
            x_hi = x_hi.max(x);
            y_lo = y_lo.min(y);
            y_hi = y_hi.max(y);
        }
    }
    // Same aspect ratio as the image, so the magnified window fills a tile.
    let zw = (w / 4).max(x_hi - x_lo + 1).max(1).min(w);
    let zh = (h / 4).max(y_hi - y_lo + 1).max(1).min(h);
    let (zw, zh) = if zw * h > zh * w {
        (zw, (zw * h).div_ceil(w).min(h))
    } else {
        ((zh * w).div_ceil(h).min(w), zh)
    };
    let cx = (x_lo + x_hi) / 2;
    let cy = (y_lo + y_hi) / 2;
    let x0 = cx.saturating_sub(zw / 2).min(w - zw);
    let y0 = cy.saturating_sub(zh / 2).min(h - zh);
    Some((class, (x0, y0, zw, zh)))
}

/// Renders the examples as one PNG: a title row, then per example the image, the colourised
/// ground truth and each prediction, scaled up (nearest neighbour) to at least 192 pixels wide.
/// Under each example, as in the paper's Fig. 3, the same columns magnified around the pixels of
/// the rarest class present (the first of `focus`, classes in order of priority), with the
/// window outlined in yellow above; at the bottom a legend of the classes that appear.
pub fn render_examples(
    ex: &ExampleSet,
    class_names: &[String],
    palette: &[[u8; 3]],
    focus: &[usize],
    path: &Path,
) -> Result<(), String> {
    let (h, w) = (ex.height, ex.width);
    if h == 0 || w == 0 || ex.rows.is_empty() {
        return Err("no examples to draw".into());
    }
    for r in &ex.rows {
        if r.image.len() != h * w * 3
            || r.ground_truth.len() != h * w
            || r.predictions.len() != ex.columns.len()
            || r.predictions.iter().any(|p| p.len() != h * w)
        {
            return Err(format!("example `{}` does not have the set's shape", r.id));
        }
    }
    let scale = 192usize.div_ceil(w).clamp(1, 4);
    let (ch, cw) = (h * scale, w * scale);
    let ncol = 2 + ex.columns.len();
    let width = ncol * cw + (ncol + 1) * GAP;
    let zooms: Vec<Option<(usize, Window)>> = ex
        .rows
        .iter()
        .map(|r| zoom_window(&r.ground_truth, w, h, focus))
        .collect();
    // Classes shown anywhere, for the legend.
    let mut shown = vec![false; palette.len()];
    for r in &ex.rows {
        for l in r.ground_truth.iter().chain(r.predictions.iter().flatten()) {
            if let Some(s) = shown.get_mut(*l as usize) {
                *s = true;
            }
        }
    }
    let legend: Vec<usize> = (0..palette.len()).filter(|&c| shown[c]).collect();
    let per_line = (width / LEGEND_ENTRY_W).max(1);
    let legend_h = legend.len().div_ceil(per_line) * LEGEND_ROW_H + GAP;
    let rows_h: usize = zooms
        .iter()
        .map(|z| ch + GAP + if z.is_some() { ch + GAP } else { 0 })
        .sum();
    let height = TITLE_H + rows_h + GAP + legend_h;
    let mut buf = vec![255u8; width * height * 3];
    let mut texts: Vec<(String, (i32, i32))> = Vec::new();
    let mut y0 = TITLE_H;
    for (row, zoom) in ex.rows.iter().zip(&zooms) {
        let mut tiles: Vec<Vec<u8>> = vec![row.image.clone(), colorize(&row.ground_truth, palette)];
        tiles.extend(row.predictions.iter().map(|p| colorize(p, palette)));
        for (ci, tile) in tiles.iter().enumerate() {
            let x0 = GAP + ci * (cw + GAP);
            blit(&mut buf, width, tile, w, (0, 0, w, h), (x0, y0, cw, ch));
            if let Some((_, (zx, zy, zw, zh))) = zoom {
                outline(
                    &mut buf,
                    width,
                    (x0 + zx * scale, y0 + zy * scale, zw * scale, zh * scale),
                );
            }
        }
        y0 += ch + GAP;
        if let Some((class, win)) = zoom {
            for (ci, tile) in tiles.iter().enumerate() {
                let x0 = GAP + ci * (cw + GAP);
                blit(&mut buf, width, tile, w, *win, (x0, y0, cw, ch));
            }
            let name = class_names.get(*class).map_or("?", |s| s.as_str());
            texts.push((format!("zoom: {name}"), (GAP as i32 + 4, y0 as i32 + 2)));
            y0 += ch + GAP;
        }
    }
    // Legend: a swatch and the name of each class shown.
    let ly = y0 + GAP;
    for (k, &c) in legend.iter().enumerate() {
        let x = GAP + (k % per_line) * LEGEND_ENTRY_W;
        let y = ly + (k / per_line) * LEGEND_ROW_H;
        for dy in 0..14 {
            for dx in 0..14 {
                let d = ((y + dy) * width + x + dx) * 3;
                buf[d..d + 3].copy_from_slice(&palette[c]);
            }
        }
        outline_colour(&mut buf, width, (x, y, 14, 14), [0, 0, 0]);
        let name = class_names.get(c).map_or("?", |s| s.as_str());
        texts.push((name.to_string(), (x as i32 + 18, y as i32)));
    }
    // Column titles and labels, drawn over the buffer with plotters' font rendering. Without a
    // usable system font the picture is still written, unlabelled (the report lists the columns
    // and the legend's colours are the palette's).
    let mut titles = vec!["image".to_string(), "ground truth".to_string()];
    titles.extend(ex.columns.iter().cloned());
    for (ci, t) in titles.into_iter().enumerate() {
        texts.push((t, ((GAP + ci * (cw + GAP) + 4) as i32, 6)));
    }
    let _ = crate::save::draw_texts(&mut buf, (width, height), &texts, 15.0);
    crate::save::save_rgb_png(path, &buf, width, height)
}

/// Copies the window `src_win` of an RGB tile of width `sw` into the rectangle `dst` of the
/// canvas (nearest neighbour).
fn blit(buf: &mut [u8], width: usize, tile: &[u8], sw: usize, src_win: Window, dst: Window) {
    let (sx, sy, swin, shin) = src_win;
    let (dx, dy, dw, dh) = dst;
    for y in 0..dh {
        let ty = sy + y * shin / dh;
        for x in 0..dw {
            let tx = sx + x * swin / dw;
            let s = (ty * sw + tx) * 3;
            let d = ((dy + y) * width + dx + x) * 3;
            buf[d..d + 3].copy_from_slice(&tile[s..s + 3]);
        }
    }
}

fn outline(buf: &mut [u8], width: usize, rect: Window) {
    outline_colour(buf, width, rect, ZOOM_OUTLINE);
}

fn outline_colour(buf: &mut [u8], width: usize, (x0, y0, w, h): Window, colour: [u8; 3]) {
    if w == 0 || h == 0 {
        return;
    }
    let mut put = |x: usize, y: usize| {
        let d = (y * width + x) * 3;
        if d + 3 <= buf.len() {
            buf[d..d + 3].copy_from_slice(&colour);
        }
    };
    for x in x0..x0 + w {
        put(x, y0);
        put(x, y0 + h - 1);
    }
    for y in y0..y0 + h {
        put(x0, y);
        put(x0 + w - 1, y);
    }
}
