//! Example predictions side by side (the paper's Fig. 3) and palette colouring.

use plotters::prelude::*;
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

/// Colours a label map with a palette; ids outside the palette (the ignore index) are black.
pub fn colorize(labels: &[u8], palette: &[[u8; 3]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(labels.len() * 3);
    for &l in labels {
        out.extend_from_slice(palette.get(l as usize).unwrap_or(&[0, 0, 0]));
    }
    out
}

const TITLE_H: usize = 28;
const GAP: usize = 4;

/// Renders the examples as one PNG: a title row, then per example the image, the colourised
/// ground truth and each prediction, scaled up (nearest neighbour) to at least 192 pixels wide.
pub fn render_examples(
    ex: &ExampleSet,
    _class_names: &[String],
    palette: &[[u8; 3]],
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
    let height = TITLE_H + ex.rows.len() * (ch + GAP) + GAP;
    let mut buf = vec![255u8; width * height * 3];
    for (ri, row) in ex.rows.iter().enumerate() {
        let mut tiles: Vec<Vec<u8>> = vec![row.image.clone(), colorize(&row.ground_truth, palette)];
        tiles.extend(row.predictions.iter().map(|p| colorize(p, palette)));
        let y0 = TITLE_H + ri * (ch + GAP);
        for (ci, tile) in tiles.iter().enumerate() {
            let x0 = GAP + ci * (cw + GAP);
            for y in 0..ch {
                for x in 0..cw {
                    let s = ((y / scale) * w + x / scale) * 3;
                    let d = ((y0 + y) * width + x0 + x) * 3;
                    buf[d..d + 3].copy_from_slice(&tile[s..s + 3]);
                }
            }
        }
    }
    // Column titles, drawn over the buffer with plotters' font rendering. Without a usable
    // system font the picture is still written, untitled (the report lists the columns).
    let mut titles = vec!["image".to_string(), "ground truth".to_string()];
    titles.extend(ex.columns.iter().cloned());
    let _ = draw_titles(&mut buf, (width, height), cw, &titles);
    image::save_buffer(
        path,
        &buf,
        width as u32,
        height as u32,
        image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| e.to_string())
}

fn draw_titles(
    buf: &mut [u8],
    (width, height): (usize, usize),
    cw: usize,
    titles: &[String],
) -> Result<(), String> {
    let root = BitMapBackend::with_buffer(buf, (width as u32, height as u32)).into_drawing_area();
    for (ci, t) in titles.iter().enumerate() {
        let x = (GAP + ci * (cw + GAP) + 4) as i32;
        root.draw(&Text::new(
            t.clone(),
            (x, 6),
            ("sans-serif", 16).into_font().color(&BLACK),
        ))
        .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}
