//! The one font every figure is drawn with, embedded in the binary.
//!
//! plotters renders text through `ab_glyph` from fonts registered at run time (its `ab_glyph`
//! feature), not through the system's font-kit/freetype/fontconfig: figures have their titles and
//! labels on any machine, and nothing is built in C. The font is DejaVu Sans
//! (`assets/fonts/DejaVuSans.ttf`, Bitstream Vera licence with public-domain DejaVu changes, see
//! `assets/fonts/DejaVuSans-LICENSE.txt`), registered under the family name [`FAMILY`] (and
//! `"DejaVu Sans"`) for every style; bold and italic fall back to the regular face.
//!
//! Every drawing function of the trainer calls [`register_fonts`] first; code that draws with
//! plotters on its own calls it too.

use plotters::style::{register_font, FontStyle};
use std::sync::OnceLock;

/// The family name figures use: `("sans-serif", size)` in plotters' text styles.
pub const FAMILY: &str = "sans-serif";

/// The embedded font file (DejaVu Sans).
pub const DEJAVU_SANS: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");

/// Registers the embedded font with plotters under [`FAMILY`] and `"DejaVu Sans"` (once per
/// process; later calls return the first call's result). Without it, plotters' `ab_glyph`
/// backend has no font and every text element fails to draw.
pub fn register_fonts() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        for name in [FAMILY, "DejaVu Sans"] {
            register_font(name, FontStyle::Normal, DEJAVU_SANS)
                .map_err(|_| "the embedded DejaVu Sans font does not parse".to_string())?;
        }
        Ok(())
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use plotters::prelude::*;

    #[test]
    fn text_renders_with_the_embedded_font() {
        register_fonts().unwrap();
        let (w, h) = (120u32, 40u32);
        let mut buf = vec![255u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            root.draw(&Text::new(
                "Recall 42",
                (5, 10),
                (FAMILY, 20).into_font().color(&BLACK),
            ))
            .unwrap();
            root.present().unwrap();
        }
        let dark = buf.chunks(3).filter(|p| p[0] < 128).count();
        // Ink, but not a filled box: a rendered line of glyphs covers a small part of the canvas.
        assert!(
            dark > 50 && dark < (w * h / 3) as usize,
            "{dark} dark pixels"
        );
        // A wider string is measured wider (layout uses the font's advances).
        let f = (FAMILY, 20).into_font();
        let (a, b) = (f.box_size("ii").unwrap().0, f.box_size("WWWWWW").unwrap().0);
        assert!(b > 3 * a, "{a} vs {b}");
    }
}
