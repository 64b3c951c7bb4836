//! PNG colour types and bit depths the readers accept, and the split helpers.

use recallseg_data::png_io::{decode_label, decode_rgb8};
use recallseg_data::Split;
use recallseg_data::SplitFractions;
use std::path::Path;

fn write(
    path: &Path,
    w: u32,
    h: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    data: &[u8],
    palette: Option<Vec<u8>>,
) {
    let f = std::fs::File::create(path).unwrap();
    let mut e = png::Encoder::new(std::io::BufWriter::new(f), w, h);
    e.set_color(color);
    e.set_depth(depth);
    if let Some(p) = palette {
        e.set_palette(p);
    }
    let mut wr = e.write_header().unwrap();
    wr.write_image_data(data).unwrap();
    wr.finish().unwrap();
}

#[test]
fn images_of_every_colour_type_decode_to_rgb() {
    use png::{BitDepth::*, ColorType::*};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("i.png");
    // 2x1 pixels each time.
    write(&p, 2, 1, Grayscale, Eight, &[10, 200], None);
    assert_eq!(decode_rgb8(&p).unwrap().data, [10, 10, 10, 200, 200, 200]);
    write(&p, 2, 1, GrayscaleAlpha, Eight, &[10, 255, 200, 0], None);
    assert_eq!(decode_rgb8(&p).unwrap().data, [10, 10, 10, 200, 200, 200]);
    write(&p, 2, 1, Rgba, Eight, &[1, 2, 3, 4, 5, 6, 7, 8], None);
    assert_eq!(decode_rgb8(&p).unwrap().data, [1, 2, 3, 5, 6, 7]);
    write(
        &p,
        2,
        1,
        Rgb,
        Sixteen,
        &[1, 0, 2, 0, 3, 0, 250, 9, 251, 9, 252, 9],
        None,
    );
    assert_eq!(decode_rgb8(&p).unwrap().data, [1, 2, 3, 250, 251, 252]);
    write(
        &p,
        2,
        1,
        Indexed,
        Eight,
        &[1, 0],
        Some(vec![9, 9, 9, 40, 50, 60]),
    );
    assert_eq!(decode_rgb8(&p).unwrap().data, [40, 50, 60, 9, 9, 9]);
}

#[test]
fn labels_keep_raw_values_of_every_layout() {
    use png::{BitDepth::*, ColorType::*};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("l.png");
    // 16-bit grey: full value.
    write(&p, 2, 1, Grayscale, Sixteen, &[1, 2, 0, 7], None);
    assert_eq!(decode_label(&p).unwrap().data, [258, 7]);
    // 16-bit RGBA: first channel.
    write(
        &p,
        1,
        1,
        Rgba,
        Sixteen,
        &[0, 15, 0, 3, 0, 0, 255, 255],
        None,
    );
    assert_eq!(decode_label(&p).unwrap().data, [15]);
    // Palette: the index, not the colour.
    write(&p, 3, 1, Indexed, Eight, &[2, 0, 1], Some(vec![0; 9]));
    assert_eq!(decode_label(&p).unwrap().data, [2, 0, 1]);
    // 4-bit palette, odd width (rows padded to a byte): 5 pixels per row, 2 rows.
    let rows = [[0x12, 0x34, 0x50], [0xfe, 0xdc, 0xb0]];
    write(
        &p,
        5,
        2,
        Indexed,
        Four,
        &rows.concat(),
        Some(vec![0; 16 * 3]),
    );
    assert_eq!(
        decode_label(&p).unwrap().data,
        [1, 2, 3, 4, 5, 15, 14, 13, 12, 11]
    );
    // 2-bit grey.
    write(&p, 4, 1, Grayscale, Two, &[0b00_01_10_11], None);
    assert_eq!(decode_label(&p).unwrap().data, [0, 1, 2, 3]);
    // 1-bit grey.
    write(&p, 9, 1, Grayscale, One, &[0b1010_0000, 0b1000_0000], None);
    assert_eq!(decode_label(&p).unwrap().data, [1, 0, 1, 0, 0, 0, 0, 0, 1]);
}

#[test]
fn split_fractions_follow_pythons_int_products() {
    let f = SplitFractions::default();
    // Python: int(0.7 * n), int(0.1 * n).
    for (n, tr, va) in [
        (10, 7, 1),
        (3, 2, 0),
        (1, 0, 0),
        (225, 157, 22),
        (799, 559, 79),
        (6296, 4407, 629),
    ] {
        assert_eq!(f.range(n, Split::Train), 0..tr, "n = {n}");
        assert_eq!(f.range(n, Split::Val), tr..tr + va, "n = {n}");
        assert_eq!(f.range(n, Split::Test), tr + va..n, "n = {n}");
    }
    assert!(SplitFractions {
        train: 0.8,
        val: 0.3
    }
    .validate()
    .is_err());
    assert_eq!("val".parse::<Split>().unwrap(), Split::Val);
    assert!("training"
        .parse::<Split>()
        .unwrap_err()
        .to_string()
        .contains("training"));
}

/// `decode_rgb8` decides by the file's content (PNG or JPEG signature), never by its name: a
/// JPEG named `.png`, a PNG named `.jpg` and a JPEG named `.jpg` all decode, to the same pixels
/// as their content decoded directly; a file that is neither is an error naming it.
#[test]
fn images_decode_by_content_not_extension() {
    use recallseg_data::png_io::{decode_jpeg_bytes, write_rgb8, PngSpeed};
    let dir = tempfile::tempdir().unwrap();
    let jpeg = std::fs::read(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/goldens/tiny.jpg"),
    )
    .unwrap();
    let want_jpeg = decode_jpeg_bytes(&jpeg).unwrap();
    for name in ["photo.jpg", "photo.JPEG", "jpeg-named.png", "no-extension"] {
        let p = dir.path().join(name);
        std::fs::write(&p, &jpeg).unwrap();
        assert_eq!(decode_rgb8(&p).unwrap(), want_jpeg, "{name}");
    }
    let rgb: Vec<u8> = (0..5 * 3 * 3).map(|i| (i * 11) as u8).collect();
    let png_path = dir.path().join("real.png");
    write_rgb8(&png_path, 5, 3, &rgb, PngSpeed::Fast).unwrap();
    let png_bytes = std::fs::read(&png_path).unwrap();
    for name in ["png-named.jpg", "png-named.jpeg", "real.png"] {
        let p = dir.path().join(name);
        std::fs::write(&p, &png_bytes).unwrap();
        let img = decode_rgb8(&p).unwrap();
        assert_eq!(
            (img.width, img.height, img.data.as_slice()),
            (5, 3, rgb.as_slice())
        );
    }
    let p = dir.path().join("text.jpg");
    std::fs::write(&p, b"GIF89a, or anything else").unwrap();
    let e = decode_rgb8(&p).unwrap_err().to_string();
    assert!(e.contains("text.jpg"), "{e}");
}
