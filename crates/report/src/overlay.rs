//! A prediction drawn over its image: the blend ([`overlay`]) and the picture `recallseg
//! predict` writes ([`render_overlay`]: the blend and a legend strip with each class present,
//! its colour, name and share of the pixels, as mmsegmentation's visualiser labels a
//! prediction).

use crate::ReportError;
use recallseg_data::png_io::RgbImage;
use recallseg_data::{ClassInfo, LabelMap};
use std::path::Path;

/// How [`render_overlay`] draws a prediction over its image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OverlayOptions {
    /// Weight of the class colour in the blend, in `[0, 1]`: 0 shows the image alone, 1 the
    /// colour mask alone (default 0.5, mmsegmentation's `show_result_pyplot` opacity).
    pub alpha: f32,
    /// Draw the legend strip (class colours, names and pixel shares) under the image
    /// (default `true`).
    pub legend: bool,
}

impl Default for OverlayOptions {
    fn default() -> Self {
        Self {
            alpha: 0.5,
            legend: true,
        }
    }
}

/// An RGB picture: `height × width × 3` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picture {
    /// RGB bytes, row by row.
    pub data: Vec<u8>,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Whether every text of the picture was drawn (`false` when no font could be used: the
    /// colours and layout are there, the names are not).
    pub text_drawn: bool,
}

impl Picture {
    /// Writes the picture as an RGB PNG, atomically; the error names the file.
    pub fn save_png(&self, path: &Path) -> Result<(), ReportError> {
        crate::save::save_rgb_png(path, &self.data, self.width, self.height)
            .map_err(ReportError::Invalid)
    }
}

/// The image blended with the colourised labels: each pixel
/// `round((1 − alpha) · image + alpha · palette[label])`; pixels whose label has no colour
/// (the ignore index) keep the image's colour. Errors when the sizes differ or `alpha` is not in
/// `[0, 1]`.
pub fn overlay(
    image: &RgbImage,
    labels: &LabelMap,
    palette: &[[u8; 3]],
    alpha: f32,
) -> Result<Vec<u8>, ReportError> {
    if !(alpha.is_finite() && (0.0..=1.0).contains(&alpha)) {
        return Err(ReportError::Invalid(format!(
            "overlay alpha {alpha} is not in [0, 1]"
        )));
    }
    if (image.width, image.height) != (labels.width, labels.height)
        || image.data.len() != image.width * image.height * 3
        || labels.label.len() != labels.width * labels.height
    {
        return Err(ReportError::Invalid(format!(
            "overlay: image {}x{} and label map {}x{} differ in size",
            image.width, image.height, labels.width, labels.height
        )));
    }
    let mut out = image.data.clone();
    for (px, &l) in out.chunks_exact_mut(3).zip(&labels.label) {
        if let Some(c) = palette.get(l as usize) {
            for (v, &k) in px.iter_mut().zip(c) {
                *v = ((1.0 - alpha) * *v as f32 + alpha * k as f32).round() as u8;
            }
        }
    }
    Ok(out)
}

/// The classes of a legend: each class present in `labels`, in train-id order, with its share
/// of the labelled pixels in percent.
pub fn legend_entries(labels: &LabelMap, n_classes: usize) -> Vec<(usize, f64)> {
    let counts = labels.class_pixels(n_classes);
    let total: u64 = counts.iter().sum();
    counts
        .iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        .map(|(c, &n)| (c, 100.0 * n as f64 / total as f64))
        .collect()
}

const LEGEND_MIN_WIDTH: usize = 240;

/// The overlay picture `recallseg predict` writes (`<stem>_overlay.png`): the image blended
/// with the prediction ([`overlay`]) and, with `opts.legend`, a white strip under it with one
/// entry per class present ([`legend_entries`]): its colour swatch, its name and its share of
/// the pixels, as mmsegmentation's visualiser labels a prediction. The strip is at least
/// 240 pixels wide (a narrower image sits at its left) and its text grows with the image.
pub fn render_overlay(
    image: &RgbImage,
    labels: &LabelMap,
    classes: &ClassInfo,
    opts: &OverlayOptions,
) -> Result<Picture, ReportError> {
    let blended = overlay(image, labels, &classes.palette, opts.alpha)?;
    let (w, h) = (image.width, image.height);
    if !opts.legend {
        return Ok(Picture {
            data: blended,
            width: w,
            height: h,
            text_drawn: true,
        });
    }
    let entries = legend_entries(labels, classes.n_classes());
    let texts: Vec<String> = entries
        .iter()
        .map(|&(c, share)| {
            let name = classes.names.get(c).map_or("?", |s| s.as_str());
            if share < 0.05 {
                format!("{name} <0.1%")
            } else {
                format!("{name} {share:.1}%")
            }
        })
        .collect();
    let font = (w / 48).clamp(13, 32);
    let row_h = font + font / 2;
    let pad = font / 2;
    let swatch = font;
    // Text width estimated from the longest label (about 0.6 em per character of a sans
    // font), so columns line up.
    let longest = texts.iter().map(|t| t.chars().count()).max().unwrap_or(0);
    let entry_w = pad + swatch + pad + (longest * font * 3).div_ceil(5) + 2 * pad;
    let width = w.max(LEGEND_MIN_WIDTH).max(entry_w + pad);
    let per_line = ((width - pad) / entry_w).max(1);
    let lines = entries.len().div_ceil(per_line);
    let strip_h = lines * row_h + 2 * pad;
    let height = h + strip_h;
    let mut buf = vec![255u8; width * height * 3];
    for y in 0..h {
        buf[y * width * 3..y * width * 3 + w * 3]
            .copy_from_slice(&blended[y * w * 3..(y + 1) * w * 3]);
    }
    let mut placed = Vec::with_capacity(entries.len());
    for (k, (&(c, _), text)) in entries.iter().zip(&texts).enumerate() {
        let x = pad + (k % per_line) * entry_w;
        let y = h + pad + (k / per_line) * row_h + (row_h - swatch) / 2;
        let colour = classes.palette.get(c).copied().unwrap_or([0, 0, 0]);
        for dy in 0..swatch {
            for dx in 0..swatch {
                let border = dy == 0 || dx == 0 || dy + 1 == swatch || dx + 1 == swatch;
                let d = ((y + dy) * width + x + dx) * 3;
                buf[d..d + 3].copy_from_slice(if border { &[0, 0, 0] } else { &colour });
            }
        }
        placed.push((text.clone(), ((x + swatch + pad) as i32, y as i32)));
    }
    let text_drawn =
        crate::save::draw_texts(&mut buf, (width, height), &placed, font as f64).is_ok();
    Ok(Picture {
        data: buf,
        width,
        height,
        text_drawn,
    })
}
#[cfg(test)]
mod tests {
    use super::*;

    fn classes() -> ClassInfo {
        ClassInfo {
            names: vec!["sky".into(), "road".into(), "pedestrian".into()],
            palette: vec![[0, 0, 255], [128, 64, 128], [220, 20, 60]],
            ignore_index: 255,
        }
    }

    #[test]
    fn overlay_blends_and_keeps_void_pixels() {
        let image = RgbImage {
            data: vec![100, 200, 0, 10, 10, 10, 255, 255, 255],
            width: 3,
            height: 1,
        };
        let labels = LabelMap {
            width: 3,
            height: 1,
            label: vec![0, 255, 2],
        };
        let p = classes().palette;
        let o = overlay(&image, &labels, &p, 0.25).unwrap();
        // 0.75 · 100 + 0.25 · 0 = 75, 0.75 · 200 = 150, 0.75 · 0 + 0.25 · 255 = 63.75 → 64.
        assert_eq!(&o[0..3], &[75, 150, 64]);
        assert_eq!(&o[3..6], &[10, 10, 10], "void keeps the image");
        assert_eq!(&o[6..9], &[246, 196, 206]);
        assert_eq!(overlay(&image, &labels, &p, 0.0).unwrap(), image.data);
        assert_eq!(&overlay(&image, &labels, &p, 1.0).unwrap()[6..9], &p[2]);
        assert!(overlay(&image, &labels, &p, 1.5)
            .unwrap_err()
            .to_string()
            .contains("1.5"));
        let small = LabelMap {
            width: 2,
            height: 1,
            label: vec![0, 0],
        };
        assert!(overlay(&image, &small, &p, 0.5).is_err());
    }

    #[test]
    fn legend_lists_the_classes_present_with_their_share() {
        let labels = LabelMap {
            width: 4,
            height: 2,
            label: vec![0, 0, 0, 0, 0, 2, 2, 255],
        };
        let e = legend_entries(&labels, 3);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].0, 0);
        assert!((e[0].1 - 500.0 / 7.0).abs() < 1e-9);
        assert_eq!(e[1].0, 2);
        // The picture: the blended image on top, a white strip with one swatch per class.
        let image = RgbImage {
            data: vec![0; 4 * 2 * 3],
            width: 4,
            height: 2,
        };
        let pic = render_overlay(&image, &labels, &classes(), &OverlayOptions::default()).unwrap();
        assert_eq!(pic.width, LEGEND_MIN_WIDTH);
        assert!(pic.height > 2 + 13);
        let px =
            |x: usize, y: usize| &pic.data[(y * pic.width + x) * 3..(y * pic.width + x) * 3 + 3];
        assert_eq!(px(0, 0), &[0, 0, 128]);
        assert_eq!(px(3, 1), &[0, 0, 0], "void pixel keeps the image");
        assert_eq!(px(100, 0), &[255, 255, 255], "right of a narrow image");
        let n = |c: [u8; 3]| pic.data.chunks(3).filter(|p| *p == c).count();
        // Swatches: 13 px squares with a 1 px border, 11×11 inside.
        assert_eq!(n(classes().palette[0]), 121);
        assert_eq!(n(classes().palette[2]), 121);
        assert_eq!(n(classes().palette[1]), 0, "road is not in the prediction");
        // The names are drawn (the embedded font): dark ink right of the swatches.
        assert!(pic.text_drawn);
        let ink = (2..pic.height)
            .flat_map(|y| (20..pic.width).map(move |x| (x, y)))
            .filter(|&(x, y)| px(x, y)[0] < 100)
            .count();
        assert!(ink > 40, "{ink} dark pixels in the legend");
        // Without the legend: the blend alone.
        let bare = render_overlay(
            &image,
            &labels,
            &classes(),
            &OverlayOptions {
                legend: false,
                ..OverlayOptions::default()
            },
        )
        .unwrap();
        assert_eq!((bare.width, bare.height), (4, 2));
    }
}
