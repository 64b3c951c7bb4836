//! The antialiased resize (`ResizeMethod::Antialias`) against Pillow goldens
//! (tests/goldens/resize_antialias.json, made by make_resize_antialias.py), its properties, the
//! `ResizeMethod` dispatch and the loader option.

use crate::util::tiny_synthia;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recallseg_data::transform::{
    resize_antialias_rgb, resize_bilinear_rgb, resize_nearest, resize_nearest_centre, ResizeMethod,
};
use recallseg_data::{
    Loader, LoaderConfig, Normalize, SegDataset, Split, SynthiaDataset, SynthiaOptions,
};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;

fn goldens() -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/goldens/resize_antialias.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn u8s(v: &Value) -> Vec<u8> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u8)
        .collect()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn us(v: &Value) -> usize {
    v.as_u64().unwrap() as usize
}

/// One golden case: the source (the first `sh` rows of the golden image and label), the
/// target size and the case's JSON.
struct Case<'a> {
    sw: usize,
    sh: usize,
    img: Vec<u8>,
    lbl: Vec<u8>,
    dw: usize,
    dh: usize,
    json: &'a Value,
}

fn cases(g: &Value) -> Vec<Case<'_>> {
    let sw = us(&g["src_w"]);
    let (image, label) = (u8s(&g["image"]), u8s(&g["label"]));
    g["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let sh = us(&c["src_rows"]);
            Case {
                sw,
                sh,
                img: image[..sw * sh * 3].to_vec(),
                lbl: label[..sw * sh].to_vec(),
                dw: us(&c["dst_w"]),
                dh: us(&c["dst_h"]),
                json: c,
            }
        })
        .collect()
}

#[test]
fn antialias_matches_pillow_bilinear() {
    let g = goldens();
    let all = cases(&g);
    assert_eq!(all.len(), 5);
    let (mut total, mut exact, mut checked_torch) = (0usize, 0usize, 0usize);
    for Case {
        sw,
        sh,
        img,
        dw,
        dh,
        json: c,
        ..
    } in all
    {
        let want = u8s(&c["bilinear"]);
        let got = resize_antialias_rgb(&img, sw, sh, dw, dh).unwrap();
        assert_eq!(got.len(), want.len());
        for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
            assert!(
                a.abs_diff(b) <= 1,
                "{sw}x{sh}->{dw}x{dh} value {i} (pixel {}, {}): {a} vs Pillow {b}",
                i / 3 % dw,
                i / 3 / dw
            );
        }
        let same = got.iter().zip(&want).filter(|(a, b)| a == b).count();
        if sw == dw {
            // Pillow skips the horizontal pass, and with it its rounding to u8 in between:
            // only its fixed-point weights can then tip a value.
            assert!(same * 100 >= got.len() * 99, "{same} of {}", got.len());
        }
        total += got.len();
        exact += same;
        // The unrounded filter (PyTorch's antialias=True, which rounds nothing in between):
        // ours is its value rounded to nearest.
        if let Some(t) = c.get("torch_antialias") {
            let t = f32s(t);
            assert_eq!(t.len(), got.len());
            for (i, (&a, &b)) in got.iter().zip(&t).enumerate() {
                assert!(
                    (a as f32 - b).abs() <= 0.5 + 2e-3,
                    "{sw}x{sh}->{dw}x{dh} value {i}: {a} vs torch {b}"
                );
            }
            checked_torch += 1;
        }
        // Through the dispatch: the same bytes.
        assert_eq!(
            ResizeMethod::Antialias
                .resize_image(&img, sw, sh, dw, dh)
                .unwrap(),
            got
        );
    }
    assert_eq!(checked_torch, 2);
    // Elsewhere Pillow rounds its horizontal pass to u8 (±½ on what the vertical pass reads),
    // which tips about one value in six; a shifted or mis-scaled filter would be off by more
    // than 1 somewhere above.
    assert!(
        exact * 100 >= total * 75,
        "{exact} of {total} values equal Pillow's"
    );
}

#[test]
fn nearest_centre_matches_pillow_nearest() {
    let g = goldens();
    for Case {
        sw,
        sh,
        lbl,
        dw,
        dh,
        json: c,
        ..
    } in cases(&g)
    {
        let want = u8s(&c["nearest"]);
        assert_eq!(
            resize_nearest_centre(&lbl, sw, sh, dw, dh, 1).unwrap(),
            want,
            "{sw}x{sh}->{dw}x{dh}"
        );
        assert_eq!(
            ResizeMethod::Antialias
                .resize_label(&lbl, sw, sh, dw, dh, 1)
                .unwrap(),
            want
        );
        // Several channels: every channel picks the same source pixel.
        let two: Vec<u16> = lbl
            .iter()
            .flat_map(|&v| [v as u16, 1000 + v as u16])
            .collect();
        let got = resize_nearest_centre(&two, sw, sh, dw, dh, 2).unwrap();
        let split: Vec<u8> = got.chunks_exact(2).map(|p| p[0] as u8).collect();
        assert_eq!(split, want);
        assert!(got.chunks_exact(2).all(|p| p[1] == p[0] + 1000));
    }
}

#[test]
fn antialias_keeps_a_constant_image_constant() {
    for (sw, sh, dw, dh) in [
        (45, 37, 15, 12),
        (45, 37, 1, 1),
        (45, 37, 70, 50),
        (7, 300, 40, 3),
        (1, 1, 9, 4),
        (16, 16, 16, 16),
    ] {
        for px in [[0u8, 0, 0], [255, 255, 255], [17, 128, 254]] {
            let img: Vec<u8> = px.iter().copied().cycle().take(sw * sh * 3).collect();
            let out = resize_antialias_rgb(&img, sw, sh, dw, dh).unwrap();
            assert_eq!(out.len(), dw * dh * 3);
            assert!(
                out.chunks_exact(3).all(|p| p == px),
                "{sw}x{sh}->{dw}x{dh} of {px:?}"
            );
        }
    }
}

#[test]
fn two_tap_dispatch_equals_the_old_functions() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for (sw, sh, dw, dh) in [
        (45, 37, 15, 12),
        (45, 37, 16, 11),
        (45, 37, 70, 50),
        (20, 10, 20, 10),
        (13, 31, 40, 5),
    ] {
        let img: Vec<u8> = (0..sw * sh * 3).map(|_| rng.random()).collect();
        let lbl: Vec<u8> = (0..sw * sh).map(|_| rng.random_range(0..19)).collect();
        assert_eq!(
            ResizeMethod::TwoTap
                .resize_image(&img, sw, sh, dw, dh)
                .unwrap(),
            resize_bilinear_rgb(&img, sw, sh, dw, dh).unwrap()
        );
        assert_eq!(
            ResizeMethod::TwoTap
                .resize_label(&lbl, sw, sh, dw, dh, 1)
                .unwrap(),
            resize_nearest(&lbl, sw, sh, dw, dh, 1).unwrap()
        );
        assert_eq!(
            ResizeMethod::TwoTap
                .resize_label(&img, sw, sh, dw, dh, 3)
                .unwrap(),
            resize_nearest(&img, sw, sh, dw, dh, 3).unwrap()
        );
    }
    assert_eq!(ResizeMethod::default(), ResizeMethod::TwoTap);
}

/// Sums of the output rows of a 3× downscale of a black 30×6 image with one white column at
/// `col`, per channel value (every row of the output is the same).
fn line_row_sum(method: ResizeMethod, col: usize) -> u32 {
    let (sw, sh) = (30, 6);
    let mut img = vec![0u8; sw * sh * 3];
    for y in 0..sh {
        img[(y * sw + col) * 3..(y * sw + col + 1) * 3].fill(255);
    }
    let out = method.resize_image(&img, sw, sh, 10, 2).unwrap();
    let row0: u32 = out[..10 * 3].iter().step_by(3).map(|&v| v as u32).sum();
    let row1: u32 = out[10 * 3..].iter().step_by(3).map(|&v| v as u32).sum();
    assert_eq!(row0, row1);
    row0
}

#[test]
fn antialias_keeps_a_thin_line_that_two_tap_misses() {
    // Shrinking 3×, the line's intensity is spread over the output pixels whose footprint
    // covers it, a third of it in all (255 / 3 = 85), wherever the line lies (away from the
    // edges, where the filter is renormalised).
    for col in 4..26 {
        let s = line_row_sum(ResizeMethod::Antialias, col);
        assert!(
            (83..=87).contains(&s),
            "line at column {col}: the row sums to {s}"
        );
    }
    // The check fails for the two-tap filter: it reads columns 3k + 1 only, so a line at 3k
    // or 3k + 2 vanishes and one at 3k + 1 comes out at full intensity.
    let two_tap: Vec<u32> = (3..6)
        .map(|c| line_row_sum(ResizeMethod::TwoTap, c))
        .collect();
    assert_eq!(two_tap, [0, 255, 0]);
}

#[test]
fn nearest_centre_picks_the_pixel_under_the_centre() {
    // 3× down: the middle pixel of each 3-pixel block (resize_nearest takes the first).
    let src: Vec<u8> = (0..9).collect();
    assert_eq!(
        resize_nearest_centre(&src, 9, 1, 3, 1, 1).unwrap(),
        [1, 4, 7]
    );
    assert_eq!(resize_nearest(&src, 9, 1, 3, 1, 1).unwrap(), [0, 3, 6]);
    // 2× up: each source pixel twice, for both rules.
    assert_eq!(
        resize_nearest_centre(&src[..3], 3, 1, 6, 1, 1).unwrap(),
        [0, 0, 1, 1, 2, 2]
    );
    // Non-integer ratio, exact in integers: floor((2d + 1) · 5 / 8) for d = 0..4.
    assert_eq!(
        resize_nearest_centre(&src[..5], 1, 5, 1, 4, 1).unwrap(),
        [0, 1, 3, 4]
    );
}

#[test]
fn antialias_functions_check_their_input() {
    let img = vec![0u8; 4 * 3 * 3];
    for e in [
        resize_antialias_rgb(&img, 4, 4, 2, 2).unwrap_err(),
        resize_antialias_rgb(&img, 4, 3, 0, 2).unwrap_err(),
        resize_antialias_rgb(&img, 0, 3, 2, 2).unwrap_err(),
        resize_antialias_rgb(&img, 4, 3, 1 << 20, 1 << 20).unwrap_err(),
        resize_nearest_centre(&img, 4, 3, 2, 2, 4).unwrap_err(),
        resize_nearest_centre(&img, 4, 3, 2, 0, 3).unwrap_err(),
        resize_nearest_centre(&img, 4, 3, 2, 2, 0).unwrap_err(),
        resize_nearest_centre(&img, 4, 3, 1 << 20, 1 << 20, 3).unwrap_err(),
    ] {
        assert!(matches!(e, recallseg_data::DataError::Config { .. }), "{e}");
    }
    assert_eq!(resize_antialias_rgb(&img, 4, 3, 4, 3).unwrap(), img);
}

#[test]
fn resize_method_reads_from_config_files() {
    let cfg: LoaderConfig = serde_json::from_str(r#"{"resize_method": "antialias"}"#).unwrap();
    assert_eq!(cfg.resize_method, ResizeMethod::Antialias);
    let cfg: LoaderConfig = toml::from_str("resize_method = \"two_tap\"").unwrap();
    assert_eq!(cfg.resize_method, ResizeMethod::TwoTap);
    let cfg: LoaderConfig = toml::from_str("batch_size = 2").unwrap();
    assert_eq!(cfg.resize_method, ResizeMethod::TwoTap);
    assert!(toml::from_str::<LoaderConfig>("resize_method = \"lanczos\"").is_err());
    assert_eq!(
        serde_json::to_string(&ResizeMethod::Antialias).unwrap(),
        "\"antialias\""
    );
    assert_eq!(LoaderConfig::default().resize_method, ResizeMethod::TwoTap);
    assert_eq!(
        LoaderConfig::eval(4, Some((8, 8))).resize_method,
        ResizeMethod::TwoTap
    );
}

#[test]
fn loader_base_resize_uses_the_configured_method() {
    let dir = tempfile::tempdir().unwrap();
    tiny_synthia(dir.path(), &["Omni_F"], 4, 5);
    let ds: Arc<dyn SegDataset> = Arc::new(
        SynthiaDataset::open(dir.path(), Split::Train, SynthiaOptions::default()).unwrap(),
    );
    let (dw, dh) = (21, 11); // from 64×32: about 3× smaller
    let cfg = |method: ResizeMethod, cache: bool| LoaderConfig {
        normalize: Some(Normalize::NONE),
        resize_method: method,
        cache_resized: cache,
        num_threads: 1,
        ..LoaderConfig::eval(ds.len(), Some((dw, dh)))
    };
    let aa = Loader::new(ds.clone(), cfg(ResizeMethod::Antialias, false)).unwrap();
    let b = aa.load_batch(0, 0).unwrap();
    assert_eq!((b.n, b.width, b.height), (ds.len(), dw, dh));
    let plane = dw * dh;
    for (k, &index) in b.indices.iter().enumerate() {
        let s = ds.get(index).unwrap();
        let img = resize_antialias_rgb(&s.image, s.width, s.height, dw, dh).unwrap();
        let lbl = resize_nearest_centre(&s.label, s.width, s.height, dw, dh, 1).unwrap();
        let planar = &b.images[k * 3 * plane..(k + 1) * 3 * plane];
        for i in 0..plane {
            for c in 0..3 {
                assert_eq!(planar[c * plane + i], img[i * 3 + c] as f32, "item {index}");
            }
        }
        assert_eq!(
            &b.labels[k * plane..(k + 1) * plane],
            &lbl[..],
            "item {index}"
        );
    }
    // The cache keeps the method's values; the default (two-tap) gives other ones.
    let cached = Loader::new(ds.clone(), cfg(ResizeMethod::Antialias, true)).unwrap();
    assert_eq!(cached.load_batch(0, 0).unwrap(), b);
    assert_eq!(cached.load_batch(0, 0).unwrap(), b, "from the cache");
    let two = Loader::new(ds.clone(), cfg(ResizeMethod::TwoTap, true)).unwrap();
    let t = two.load_batch(0, 0).unwrap();
    assert_ne!(t.images, b.images);
    assert_ne!(t.labels, b.labels);
}
