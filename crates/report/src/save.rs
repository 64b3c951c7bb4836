//! Writing figures: every figure (SVG or PNG) is drawn in memory and written atomically
//! (`recallseg-files`), so a report's files are never half-written; and black text drawn into
//! an RGB buffer with the embedded font.

use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// Result of a drawing step: the error is a message (plotters' errors are not `'static`).
pub(crate) type PlotResult = Result<(), String>;

/// Draws a `size` figure with `draw` (SVG) or `draw_png` (PNG) as `path`'s extension says, in
/// memory, then writes it atomically.
pub(crate) fn with_backend(
    path: &Path,
    size: (u32, u32),
    draw: impl Fn(DrawingArea<SVGBackend, Shift>) -> PlotResult,
    draw_png: impl Fn(DrawingArea<BitMapBackend, Shift>) -> PlotResult,
) -> PlotResult {
    crate::font::register_fonts()?;
    match path.extension().and_then(|x| x.to_str()) {
        Some("svg") => {
            let mut svg = String::new();
            draw(SVGBackend::with_string(&mut svg, size).into_drawing_area())?;
            recallseg_files::write_bytes_atomic(path, svg.as_bytes()).map_err(|e| e.to_string())
        }
        Some("png") => {
            // Drawn into memory and encoded by `image` 0.25, so plotters' own encoder (and the
            // second `image`/`png` versions it pulls in) is not needed.
            let mut rgb = vec![255u8; size.0 as usize * size.1 as usize * 3];
            draw_png(BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area())?;
            save_rgb_png(path, &rgb, size.0 as usize, size.1 as usize)
        }
        other => Err(format!("unsupported plot format {other:?} (svg or png)")),
    }
}

/// Encodes `rgb` (`height × width × 3`) as a PNG and writes it atomically; the error names the
/// file.
pub fn save_rgb_png(path: &Path, rgb: &[u8], width: usize, height: usize) -> PlotResult {
    let mut bytes = Vec::new();
    image::write_buffer_with_format(
        &mut std::io::Cursor::new(&mut bytes),
        rgb,
        width as u32,
        height as u32,
        image::ExtendedColorType::Rgb8,
        image::ImageFormat::Png,
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    recallseg_files::write_bytes_atomic(path, &bytes).map_err(|e| e.to_string())
}

/// Draws black text at the given top-left positions into an RGB buffer of `width × height`,
/// with the embedded font ([`crate::font`]) at `font_px` pixels.
pub(crate) fn draw_texts(
    buf: &mut [u8],
    (width, height): (usize, usize),
    texts: &[(String, (i32, i32))],
    font_px: f64,
) -> PlotResult {
    crate::font::register_fonts()?;
    let root = BitMapBackend::with_buffer(buf, (width as u32, height as u32)).into_drawing_area();
    for (t, pos) in texts {
        root.draw(&Text::new(
            t.clone(),
            *pos,
            (crate::font::FAMILY, font_px).into_font().color(&BLACK),
        ))
        .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}
