//! Per-image IoU against torchmetrics' `mean_iou` / `MeanIoU` (float32: within 1e-6), made by
//! `tests/golden/make_golden_per_image.py` on the label maps of `tests/golden/metrics_golden.json`
//! cut into images.

use recallseg_metrics::{ConfusionMatrix, MetricsError, PerImageIou};
use serde_json::Value;

const DATA: &str = include_str!("golden/metrics_golden.json");
const GOLDEN: &str = include_str!("golden/per_image_golden.json");
const TOL: f64 = 1e-6;

fn close(what: &str, got: Option<f64>, want: Option<f64>) {
    match (got, want) {
        (None, None) => {}
        (Some(g), Some(w)) => assert!((g - w).abs() <= TOL, "{what}: got {g}, torchmetrics {w}"),
        _ => panic!("{what}: got {got:?}, torchmetrics {want:?}"),
    }
}

#[test]
fn matches_torchmetrics_mean_iou() {
    let data: Value = serde_json::from_str(DATA).unwrap();
    let golden: Value = serde_json::from_str(GOLDEN).unwrap();
    for (case, g) in data["cases"]
        .as_array()
        .unwrap()
        .iter()
        .zip(golden["cases"].as_array().unwrap())
    {
        let name = g["name"].as_str().unwrap();
        let n = case["n_classes"].as_u64().unwrap() as usize;
        let ignore = case["ignore_index"].as_u64().map(|v| v as u32);
        let labels = |k: &str| -> Vec<u32> {
            case[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        };
        let (gt, pred) = (labels("gt"), labels("pred"));
        let k = g["pixels_per_image"].as_u64().unwrap() as usize;
        let mut pi = PerImageIou::new(n, ignore).unwrap();
        let total = pi.update(&gt, &pred, k).unwrap();
        // The summed matrix is the dataset-wide one.
        let mut whole = ConfusionMatrix::with_ignore_index(n, ignore);
        whole.update(&gt, &pred).unwrap();
        assert_eq!(total, whole, "{name}");
        let rows = g["per_image_class"].as_array().unwrap();
        assert_eq!(pi.len(), rows.len(), "{name}: images");
        for (i, row) in rows.iter().enumerate() {
            for (c, w) in row.as_array().unwrap().iter().enumerate() {
                close(
                    &format!("{name}: image {i} class {c}"),
                    pi.image(i).unwrap()[c],
                    w.as_f64(),
                );
            }
        }
        let s = pi.scores();
        assert_eq!(s.images, rows.len());
        for (i, w) in g["per_image"].as_array().unwrap().iter().enumerate() {
            close(&format!("{name}: image {i}"), s.per_image[i], w.as_f64());
        }
        close(
            &format!("{name}: mean of images"),
            s.mean_of_images.value,
            g["mean_of_images"].as_f64(),
        );
        close(
            &format!("{name}: pooled"),
            s.pooled.value,
            g["pooled"].as_f64(),
        );
        for (c, w) in g["per_class"].as_array().unwrap().iter().enumerate() {
            close(&format!("{name}: class {c}"), s.per_class[c], w.as_f64());
        }
    }
}

#[test]
fn images_count_alike_whatever_their_size() {
    // Image 1: class 0 everywhere, right (IoU 1). Image 2: four pixels, half wrong.
    let mut pi = PerImageIou::new(2, None).unwrap();
    let mut big = ConfusionMatrix::with_ignore_index(2, None);
    big.update(&[0u8; 96], &[0u8; 96]).unwrap();
    pi.push_matrix(&big).unwrap();
    let mut small = ConfusionMatrix::with_ignore_index(2, None);
    small.update(&[1u8, 1, 1, 1], &[1u8, 1, 0, 0]).unwrap();
    pi.push_matrix(&small).unwrap();
    let s = pi.scores();
    // Image 2: class 0 IoU 0/2, class 1 IoU 2/4.
    assert_eq!(s.per_image, [Some(1.0), Some(0.25)]);
    assert_eq!(s.mean_of_images.value, Some(0.625));
    // Pooled over (image, class) pairs: (1 + 0 + 0.5) / 3.
    assert_eq!(s.pooled.value, Some(0.5));
    assert_eq!(s.pooled.classes, 3);
    // Per class over the images where present: class 0 (1 + 0) / 2, class 1 0.5 / 1.
    assert_eq!(s.per_class, [Some(0.5), Some(0.5)]);
    // The dataset-wide matrix weights by pixels: mIoU (96/98 + 2/4) / 2.
    let mut all = big.clone();
    all.merge(&small).unwrap();
    assert!((all.report().mean_iou.value.unwrap() - (96.0 / 98.0 + 0.5) / 2.0).abs() < 1e-15);
}

#[test]
fn bad_input_is_an_error_and_adds_nothing() {
    let mut pi = PerImageIou::new(3, Some(255)).unwrap();
    let e = pi.update(&[0u8; 10], &[0u8; 10], 3).unwrap_err();
    assert!(matches!(e, MetricsError::InvalidData(_)), "{e}");
    assert!(pi.update(&[0u8; 10], &[0u8; 10], 0).is_err());
    assert!(matches!(
        pi.update(&[0u8; 4], &[0u8; 2], 2),
        Err(MetricsError::LengthMismatch { .. })
    ));
    // The second image holds an invalid label: neither image is added.
    let e = pi.update(&[0u8, 1, 7, 0], &[0u8, 1, 0, 0], 2).unwrap_err();
    assert!(
        matches!(e, MetricsError::InvalidLabel { value: 7, .. }),
        "{e}"
    );
    assert!(pi.is_empty());
    assert!(pi.push_matrix(&ConfusionMatrix::new(4)).is_err());
    assert!(PerImageIou::new(0, None).is_err());
    // An image with only ignored pixels has no mean IoU and leaves the means alone.
    pi.update(&[255u8, 255, 0, 1], &[0u8, 0, 0, 1], 2).unwrap();
    let s = pi.scores();
    assert_eq!(s.per_image, [None, Some(1.0)]);
    assert_eq!(
        (s.mean_of_images.value, s.mean_of_images.classes),
        (Some(1.0), 1)
    );
}
