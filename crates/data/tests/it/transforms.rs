//! Transforms against PyTorch goldens (tests/goldens/, made by make_goldens.py) and geometry
//! consistency between image and label.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use recallseg_data::png_io::decode_rgb8;
use recallseg_data::transform::Augment;
use recallseg_data::transform::{
    color_jitter, crop_pad, hflip, normalize_chw, resize_bilinear_rgb, resize_bilinear_rgb_f32,
    resize_bilinear_rgb_window, resize_nearest, resize_nearest_window,
};
use recallseg_data::Normalize;
use serde_json::Value;
use std::path::PathBuf;

fn goldens() -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/goldens/transforms.json");
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

#[test]
fn bilinear_and_nearest_match_pytorch() {
    let g = goldens();
    for case in g["resize"].as_array().unwrap() {
        let (sw, sh, dw, dh) = (
            us(&case["src_w"]),
            us(&case["src_h"]),
            us(&case["dst_w"]),
            us(&case["dst_h"]),
        );
        let img = u8s(&case["image"]);
        let want = f32s(&case["bilinear"]);
        let got = resize_bilinear_rgb_f32(&img, sw, sh, dw, dh).unwrap();
        assert_eq!(got.len(), want.len());
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() < 2e-3,
                "{sw}x{sh}->{dw}x{dh} value {i}: {a} vs torch {b}"
            );
        }
        // The u8 path rounds the same values.
        let got8 = resize_bilinear_rgb(&img, sw, sh, dw, dh).unwrap();
        for (a, b) in got8.iter().zip(&want) {
            assert!((*a as f32 - b).abs() <= 0.5 + 1e-3, "{a} vs {b}");
        }
        let lbl = u8s(&case["label"]);
        assert_eq!(
            resize_nearest(&lbl, sw, sh, dw, dh, 1).unwrap(),
            u8s(&case["nearest"])
        );
    }
}

#[test]
fn color_jitter_matches_torchvision() {
    let g = goldens();
    for case in g["jitter"].as_array().unwrap() {
        let mut img = u8s(&case["image"]);
        let f = |k: &str| case[k].as_f64().unwrap() as f32;
        color_jitter(&mut img, f("brightness"), f("contrast"), f("saturation"));
        for (a, b) in img.iter().zip(f32s(&case["out"])) {
            assert!(
                (*a as f32 - b).abs() <= 0.5 + 0.02,
                "{a} vs torchvision {b}"
            );
        }
    }
}

#[test]
fn jpeg_decodes_like_libjpeg() {
    let g = goldens();
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/goldens/tiny.jpg");
    let img = decode_rgb8(&p).unwrap();
    assert_eq!(
        (img.width, img.height),
        (us(&g["jpeg"]["w"]), us(&g["jpeg"]["h"]))
    );
    let want = u8s(&g["jpeg"]["pixels"]);
    let max = img
        .data
        .iter()
        .zip(&want)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(max <= 3, "JPEG decoders differ by {max}");
}

#[test]
fn small_ops_do_what_they_say() {
    // 3x2 image, 1 channel.
    let mut a = vec![1, 2, 3, 4, 5, 6];
    hflip(&mut a, 3, 2, 1).unwrap();
    assert_eq!(a, [3, 2, 1, 6, 5, 4]);
    let mut rgb = vec![1, 2, 3, 4, 5, 6];
    hflip(&mut rgb, 2, 1, 3).unwrap();
    assert_eq!(rgb, [4, 5, 6, 1, 2, 3]);
    let c = crop_pad(&[1, 2, 3, 4, 5, 6], 3, 2, 1, -1, 1, 3, 2, &[9]).unwrap();
    assert_eq!(c, [9, 4, 5, 9, 9, 9]);
    let norm = Normalize {
        mean: [10.0, 20.0, 30.0],
        std: [2.0, 4.0, 5.0],
    };
    let mut out = vec![0f32; 6];
    normalize_chw(&[12, 24, 40, 10, 20, 30], 2, 1, &norm, &mut out).unwrap();
    assert_eq!(out, [1.0, 0.0, 1.0, 0.0, 2.0, 0.0]);
}

#[test]
fn windowed_resize_equals_resize_then_crop() {
    let (sw, sh) = (23usize, 17usize);
    let img: Vec<u8> = (0..sw * sh * 3).map(|i| (i * 37 % 251) as u8).collect();
    let lbl: Vec<u8> = (0..sw * sh).map(|i| (i * 7 % 19) as u8).collect();
    for &(dw, dh, x0, y0, cw, ch) in &[
        (40, 30, 5, 3, 20, 10),
        (40, 30, -4, -2, 50, 40),
        (11, 9, -3, 2, 12, 6),
        (23, 17, 0, 0, 23, 17),
        (30, 12, 25, 8, 9, 9),
    ] {
        let full = resize_bilinear_rgb(&img, sw, sh, dw, dh).unwrap();
        let want = crop_pad(&full, dw, dh, 3, x0, y0, cw, ch, &[1, 2, 3]).unwrap();
        let got =
            resize_bilinear_rgb_window(&img, sw, sh, dw, dh, x0, y0, cw, ch, [1, 2, 3]).unwrap();
        assert_eq!(
            got, want,
            "bilinear window {dw}x{dh} at ({x0},{y0}) {cw}x{ch}"
        );
        let full = resize_nearest(&lbl, sw, sh, dw, dh, 1).unwrap();
        let want = crop_pad(&full, dw, dh, 1, x0, y0, cw, ch, &[255]).unwrap();
        let got = resize_nearest_window(&lbl, sw, sh, dw, dh, 1, x0, y0, cw, ch, &[255]).unwrap();
        assert_eq!(got, want, "nearest window");
        let full = resize_nearest(&img, sw, sh, dw, dh, 3).unwrap();
        let want = crop_pad(&full, dw, dh, 3, x0, y0, cw, ch, &[9, 9, 9]).unwrap();
        let got =
            resize_nearest_window(&img, sw, sh, dw, dh, 3, x0, y0, cw, ch, &[9, 9, 9]).unwrap();
        assert_eq!(got, want, "nearest window, 3 channels");
    }
}

/// Every labelled output pixel must show image content from the same source place: the label
/// encodes a 4×5 source block, the image encodes the source coordinates.
#[test]
fn augmentation_moves_image_and_label_together() {
    let (w, h) = (40usize, 30usize);
    let mut img = vec![0u8; w * h * 3];
    let mut lbl = vec![0u8; w * h];
    for y in 0..h {
        for x in 0..w {
            img[(y * w + x) * 3] = (6 * x + 3) as u8;
            img[(y * w + x) * 3 + 1] = (8 * y + 3) as u8;
            lbl[y * w + x] = (x / 4 + 10 * (y / 5)) as u8;
        }
    }
    let aug = Augment {
        scale: Some((0.6, 1.8)),
        scale_step: None,
        crop: Some((32, 24)),
        hflip: true,
        color_jitter: None,
    };
    let (mut flips, mut pads) = (0, 0);
    for seed in 0..40 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (oi, ol, ow, oh) = aug
            .apply(&img, &lbl, w, h, [7, 7, 7], 255, &mut rng)
            .unwrap();
        assert_eq!((ow, oh), (32, 24));
        let mut flipped = None;
        for y in 0..oh {
            for x in 0..ow {
                let l = ol[y * ow + x];
                let p = &oi[(y * ow + x) * 3..(y * ow + x) * 3 + 3];
                if l == 255 {
                    assert_eq!(p, [7, 7, 7], "padding must match");
                    pads += 1;
                    continue;
                }
                let (bx, by) = ((l % 10) as f32, (l / 10) as f32);
                let sx = (p[0] as f32 - 3.0) / 6.0;
                let sy = (p[1] as f32 - 3.0) / 8.0;
                let (cx, cy) = (bx * 4.0 + 1.5, by * 5.0 + 2.0);
                assert!((sx - cx).abs() <= 3.5, "seed {seed}: x {sx} vs block {cx}");
                assert!((sy - cy).abs() <= 4.0, "seed {seed}: y {sy} vs block {cy}");
                if x + 1 < ow && ol[y * ow + x + 1] != 255 {
                    let right = oi[(y * ow + x + 1) * 3] as i32;
                    if right != p[0] as i32 {
                        flipped.get_or_insert(right < p[0] as i32);
                    }
                }
            }
        }
        flips += flipped.unwrap_or(false) as usize;
    }
    assert!(
        flips > 5 && flips < 35,
        "flip should happen about half the time ({flips}/40)"
    );
    assert!(pads > 0, "down-scales below the crop size should pad");
}

/// Sizes and buffers that do not fit are errors, not panics (a 0×0 buffer used to panic in
/// `resize_nearest`, a short buffer asserted in `resize_bilinear_rgb`).
#[test]
fn bad_sizes_are_errors_not_panics() {
    let e = resize_nearest::<u8>(&[], 0, 0, 4, 4, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("0x0"), "{e}");
    assert!(resize_nearest(&[1u8; 4], 2, 2, 0, 3, 1).is_err());
    let e = resize_bilinear_rgb(&[0u8; 10], 2, 2, 4, 4)
        .unwrap_err()
        .to_string();
    assert!(e.contains("10 values"), "{e}");
    // The same size as the target used to skip the check.
    assert!(resize_bilinear_rgb(&[0u8; 10], 2, 2, 2, 2).is_err());
    assert!(resize_bilinear_rgb_f32(&[0u8; 12], 2, 2, 0, 0).is_err());
    assert!(resize_nearest_window(&[1u8; 4], 2, 2, 2, 2, 1, 0, 0, 2, 2, &[0, 0]).is_err());
    assert!(resize_bilinear_rgb_window(&[0u8; 12], 2, 2, 3, 3, 0, 0, 3, 3, [0; 3]).is_ok());
    let aug = recallseg_data::transform::Augment::default();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    assert!(aug
        .apply(&[0u8; 5], &[0u8; 4], 2, 2, [0; 3], 255, &mut rng)
        .is_err());
    assert!(aug.apply(&[], &[], 0, 0, [0; 3], 255, &mut rng).is_err());

    // Every public transform that takes sizes: zero sizes, zero channels, buffers that do not
    // match, padding of the wrong length, windows and targets too large to allocate, offsets
    // that overflow. Each is an error naming what is wrong; none panics or aborts.
    let img = [7u8; 2 * 2 * 3];
    let lbl = [1u8; 4];
    for (sw, sh) in [(0, 0), (0, 2), (2, 0)] {
        assert!(resize_bilinear_rgb(&[], sw, sh, 4, 4).is_err());
        assert!(resize_bilinear_rgb_f32(&[], sw, sh, 4, 4).is_err());
        assert!(resize_nearest::<u8>(&[], sw, sh, 4, 4, 1).is_err());
        assert!(resize_bilinear_rgb(&img, 2, 2, sw, sh).is_err());
        assert!(resize_nearest(&lbl, 2, 2, sw, sh, 1).is_err());
        assert!(crop_pad::<u8>(&[], sw, sh, 1, 0, 0, 2, 2, &[0]).is_err());
        assert!(crop_pad(&lbl, 2, 2, 1, 0, 0, sw, sh, &[0]).is_err());
        assert!(hflip::<u8>(&mut [], sw, sh, 1).is_err());
    }
    let e = resize_nearest::<u8>(&[], 2, 2, 4, 4, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("channel"), "{e}");
    assert!(resize_nearest_window::<u8>(&[], 2, 2, 4, 4, 0, 0, 0, 1, 1, &[]).is_err());
    // Targets and windows of 10¹⁰ pixels (30 GB) would abort in the allocator.
    let e = resize_bilinear_rgb(&img, 2, 2, 100_000, 100_000)
        .unwrap_err()
        .to_string();
    assert!(e.contains("100000x100000") && e.contains("limit"), "{e}");
    assert!(resize_bilinear_rgb_f32(&img, 2, 2, 100_000, 100_000).is_err());
    assert!(resize_nearest(&lbl, 2, 2, 100_000, 100_000, 1).is_err());
    assert!(resize_nearest(&lbl, 2, 2, usize::MAX, usize::MAX, 1).is_err());
    assert!(resize_bilinear_rgb_window(&img, 2, 2, 4, 4, 0, 0, 100_000, 100_000, [0; 3]).is_err());
    assert!(resize_nearest_window(&lbl, 2, 2, 4, 4, 1, 0, 0, usize::MAX, 2, &[0]).is_err());
    assert!(crop_pad(&lbl, 2, 2, 1, 0, 0, 100_000, 100_000, &[0]).is_err());
    // Offsets whose window end overflows.
    let e = crop_pad(&lbl, 2, 2, 1, isize::MAX, 0, 2, 2, &[0])
        .unwrap_err()
        .to_string();
    assert!(e.contains("offset"), "{e}");
    assert!(resize_nearest_window(&lbl, 2, 2, 4, 4, 1, 0, isize::MAX, 2, 2, &[0]).is_err());
    assert!(resize_bilinear_rgb_window(&img, 2, 2, 4, 4, isize::MAX - 1, 0, 2, 2, [0; 3]).is_err());
    // Extreme but valid offsets just pad.
    let w = resize_nearest_window(&lbl, 2, 2, 4, 4, 1, isize::MIN, 0, 2, 1, &[9]).unwrap();
    assert_eq!(w, [9, 9]);
    // Wrong padding lengths, wrong buffers.
    assert!(crop_pad(&lbl, 2, 2, 1, 0, 0, 2, 2, &[0, 0]).is_err());
    assert!(crop_pad(&lbl[..3], 2, 2, 1, 0, 0, 2, 2, &[0]).is_err());
    assert!(hflip(&mut [0u8; 5], 2, 2, 1).is_err());
    assert!(hflip(&mut [0u8; 4], usize::MAX, 2, 1).is_err());
    let mut out = vec![0f32; 12];
    let e = normalize_chw(&img[..11], 2, 2, &Normalize::IMAGENET, &mut out)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("normalize input") && e.contains("11 values"),
        "{e}"
    );
    assert!(normalize_chw(&img, 2, 2, &Normalize::IMAGENET, &mut out[..8]).is_err());
    assert!(normalize_chw(&[], 0, 0, &Normalize::IMAGENET, &mut []).is_err());
    // Augmentation settings that would panic in the RNG, and crops too large to allocate.
    let bad_scale = Augment {
        scale: Some((2.0, f32::NAN)),
        scale_step: None,
        ..Augment::default()
    };
    let e = bad_scale
        .apply(&img, &lbl, 2, 2, [0; 3], 255, &mut rng)
        .unwrap_err()
        .to_string();
    assert!(e.contains("augment.scale"), "{e}");
    let reversed = Augment {
        scale: Some((2.0, 1.0)),
        scale_step: None,
        ..Augment::default()
    };
    assert!(reversed
        .apply(&img, &lbl, 2, 2, [0; 3], 255, &mut rng)
        .is_err());
    let jitter = Augment {
        color_jitter: Some(-1.0),
        ..Augment::default()
    };
    assert!(jitter
        .apply(&img, &lbl, 2, 2, [0; 3], 255, &mut rng)
        .is_err());
    for scale in [None, Some((1.0, 1.0)), Some((0.5, 2.0))] {
        let huge_crop = Augment {
            scale,
            crop: Some((100_000, 100_000)),
            ..Augment::default()
        };
        let e = huge_crop
            .apply(&img, &lbl, 2, 2, [0; 3], 255, &mut rng)
            .unwrap_err()
            .to_string();
        assert!(e.contains("limit"), "{e}");
    }
}

/// `scale_step` draws the scale from the grid, as the paper's Cityscapes code does
/// ({0.75, 1.0, …, 2.0}); without it the scale is uniform in the range.
#[test]
fn scale_steps_draw_from_the_grid() {
    let aug = Augment {
        scale: Some((0.75, 2.0)),
        scale_step: Some(0.25),
        ..Augment::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..300 {
        let s = aug.sample_scale(&mut rng).unwrap();
        let k = (s - 0.75) / 0.25;
        assert!(
            (k - k.round()).abs() < 1e-5 && (-0.01..=5.01).contains(&k),
            "{s}"
        );
        seen.insert((k.round()) as i32);
    }
    assert_eq!(seen.len(), 6, "every grid point is drawn: {seen:?}");
    let uniform = Augment {
        scale_step: None,
        ..aug
    };
    let off_grid = (0..50)
        .map(|_| uniform.sample_scale(&mut rng).unwrap())
        .filter(|s| ((s - 0.75) / 0.25 - ((s - 0.75) / 0.25).round()).abs() > 1e-3)
        .count();
    assert!(off_grid > 40);
    assert!(Augment {
        scale_step: Some(0.0),
        ..aug
    }
    .validate()
    .is_err());
}
