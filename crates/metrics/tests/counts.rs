//! Counting: exact counts on hand-built cases, ignore handling, errors, lenient mode, merge, and
//! the parallel / branch-free kernels against a naive serial count.

use recallseg_metrics::{ConfusionMatrix, LabelSource, MetricsError, MAX_CLASSES};

/// Deterministic pseudo-random generator (SplitMix64), so tests need no extra dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Naive serial count with the documented rules; `None` when a value is invalid.
fn naive(n: usize, ignore: Option<u32>, gt: &[u32], pred: &[u32]) -> (Vec<u64>, u64, u64) {
    let mut counts = vec![0u64; n * n];
    let (mut ignored, mut invalid) = (0, 0);
    let valid = |v: u32| (v as usize) < n || Some(v) == ignore;
    for (&g, &p) in gt.iter().zip(pred) {
        if !valid(g) || !valid(p) {
            invalid += 1;
        } else if Some(g) == ignore || Some(p) == ignore {
            ignored += 1;
        } else {
            counts[g as usize * n + p as usize] += 1;
        }
    }
    (counts, ignored, invalid)
}

#[test]
fn hand_built_counts() {
    // gt:   0 0 0 1 1 2 2 2
    // pred: 0 1 0 1 2 2 2 0
    let mut cm = ConfusionMatrix::new(3);
    cm.update::<u8>(&[0, 0, 0, 1, 1, 2, 2, 2], &[0, 1, 0, 1, 2, 2, 2, 0])
        .unwrap();
    assert_eq!(cm.counts(), &[2, 1, 0, 0, 1, 1, 1, 0, 2]);
    assert_eq!(cm.row(2), Some(&[1u64, 0, 2][..]));
    assert_eq!(cm.get(0, 1), Some(1));
    assert_eq!(cm.get(3, 0), None);
    assert_eq!(cm.total(), 8);
    assert_eq!(cm.gt_pixels(), vec![3, 2, 3]);
    assert_eq!(cm.pred_pixels(), vec![3, 2, 3]);
    assert_eq!(cm.true_positives(), vec![2, 1, 2]);
    assert_eq!((cm.ignored_pixels(), cm.invalid_pixels()), (0, 0));

    // A second update accumulates.
    cm.update::<u8>(&[1], &[0]).unwrap();
    assert_eq!(cm.get(1, 0), Some(1));
    assert_eq!(cm.total(), 9);
}

#[test]
fn every_label_type_counts_the_same() {
    let gt = [3u32, 0, 2, 2, 1, 255, 3, 0];
    let pred = [3u32, 1, 2, 0, 1, 3, 255, 0];
    let mut a = ConfusionMatrix::new(4);
    a.update(&gt, &pred).unwrap();
    let mut b = ConfusionMatrix::new(4);
    let g16: Vec<u16> = gt.iter().map(|&v| v as u16).collect();
    let p16: Vec<u16> = pred.iter().map(|&v| v as u16).collect();
    b.update(&g16, &p16).unwrap();
    let mut c = ConfusionMatrix::new(4);
    let g8: Vec<u8> = gt.iter().map(|&v| v as u8).collect();
    let p8: Vec<u8> = pred.iter().map(|&v| v as u8).collect();
    c.update(&g8, &p8).unwrap();
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_eq!(a.ignored_pixels(), 2);
    assert_eq!(a.total(), 6);
}

#[test]
fn ignore_index_is_skipped_in_either_map() {
    let mut cm = ConfusionMatrix::new(2);
    cm.update::<u8>(&[255, 0, 1, 255], &[0, 255, 1, 255])
        .unwrap();
    assert_eq!(cm.counts(), &[0, 0, 0, 1]);
    assert_eq!(cm.ignored_pixels(), 3);
}

#[test]
fn custom_and_absent_ignore_index() {
    // Ignore index 7 with 3 classes.
    let mut cm = ConfusionMatrix::with_ignore_index(3, Some(7));
    cm.update::<u16>(&[7, 2], &[0, 2]).unwrap();
    assert_eq!((cm.total(), cm.ignored_pixels()), (1, 1));
    // 255 is no longer the ignore index: it is invalid.
    assert!(cm.update::<u8>(&[255], &[0]).is_err());

    // No ignore index: every value outside 0..n is invalid.
    let mut cm = ConfusionMatrix::with_ignore_index(3, None);
    assert_eq!(cm.ignore_index(), None);
    let err = cm.update::<u32>(&[0, u32::MAX], &[0, 0]).unwrap_err();
    assert!(matches!(
        err,
        MetricsError::InvalidLabel {
            value: u32::MAX,
            position: 1,
            ..
        }
    ));
}

#[test]
fn ignore_index_inside_the_class_range() {
    // Class 0 is void: never counted, in either map.
    let mut cm = ConfusionMatrix::with_ignore_index(3, Some(0));
    cm.update::<u8>(&[0, 1, 2, 2], &[1, 0, 2, 1]).unwrap();
    assert_eq!(cm.counts(), &[0, 0, 0, 0, 0, 0, 0, 1, 1]);
    assert_eq!(cm.ignored_pixels(), 2);
    let r = cm.report();
    assert_eq!(r.classes[0].iou, None);
    assert_eq!(r.mean_iou.classes, 2);
}

#[test]
fn absent_classes_have_zero_rows_and_columns() {
    let mut cm = ConfusionMatrix::new(5);
    cm.update::<u8>(&[0, 0, 4], &[0, 4, 4]).unwrap();
    for c in 1..4 {
        assert_eq!(cm.row(c).unwrap().iter().sum::<u64>(), 0);
        assert_eq!(cm.pred_pixels()[c], 0);
    }
}

#[test]
fn empty_update_is_a_no_op() {
    let mut cm = ConfusionMatrix::new(3);
    cm.update::<u8>(&[], &[]).unwrap();
    assert_eq!(cm, ConfusionMatrix::new(3));
}

#[test]
fn length_mismatch_is_an_error() {
    let mut cm = ConfusionMatrix::new(3);
    let err = cm.update::<u8>(&[0, 1], &[0]).unwrap_err();
    assert_eq!(err, MetricsError::LengthMismatch { gt: 2, pred: 1 });
    assert!(err
        .to_string()
        .contains("2 ground-truth labels but 1 predictions"));
}

#[test]
fn invalid_label_names_value_and_position_and_leaves_matrix_unchanged() {
    let mut cm = ConfusionMatrix::new(3);
    cm.update::<u8>(&[0, 1], &[0, 1]).unwrap();
    let before = cm.clone();
    let err = cm
        .update::<u8>(&[0, 1, 2, 9, 1], &[0, 1, 2, 0, 7])
        .unwrap_err();
    assert_eq!(
        err,
        MetricsError::InvalidLabel {
            map: LabelSource::GroundTruth,
            value: 9,
            position: 3,
            n_classes: 3,
            ignore_index: Some(255),
        }
    );
    let msg = err.to_string();
    assert!(msg.contains("ground-truth label 9 at position 3"), "{msg}");
    assert!(msg.contains("0..3") && msg.contains("255"), "{msg}");
    assert_eq!(cm, before);

    let err = cm.update::<u16>(&[0, 1, 2], &[0, 300, 2]).unwrap_err();
    assert!(matches!(
        err,
        MetricsError::InvalidLabel {
            map: LabelSource::Prediction,
            value: 300,
            position: 1,
            ..
        }
    ));
    // At one position the ground truth is reported first.
    let err = cm.update::<u8>(&[5], &[6]).unwrap_err();
    assert!(matches!(err, MetricsError::InvalidLabel { value: 5, .. }));
    // A void pixel with an invalid prediction is still an error.
    let err = cm.update::<u8>(&[255], &[6]).unwrap_err();
    assert!(matches!(err, MetricsError::InvalidLabel { value: 6, .. }));
    assert_eq!(cm, before);
}

#[test]
fn lenient_mode_skips_and_counts_invalid_values() {
    let mut cm = ConfusionMatrix::new(3).lenient(true);
    assert!(cm.is_lenient());
    cm.update::<u8>(&[0, 9, 1, 255, 2], &[0, 0, 7, 1, 2])
        .unwrap();
    assert_eq!(cm.total(), 2);
    assert_eq!(cm.invalid_pixels(), 2);
    assert_eq!(cm.ignored_pixels(), 1);
    assert_eq!(cm.report().invalid_pixels, 2);
}

#[test]
fn merge_equals_update_on_concatenation() {
    let mut rng = Rng(7);
    let n = 6;
    let gt: Vec<u8> = (0..5000)
        .map(|_| {
            if rng.below(10) == 0 {
                255
            } else {
                rng.below(n) as u8
            }
        })
        .collect();
    let pred: Vec<u8> = (0..5000).map(|_| rng.below(n) as u8).collect();
    let mut whole = ConfusionMatrix::new(n as usize);
    whole.update(&gt, &pred).unwrap();
    let mut a = ConfusionMatrix::new(n as usize);
    let mut b = ConfusionMatrix::new(n as usize);
    a.update(&gt[..1234], &pred[..1234]).unwrap();
    b.update(&gt[1234..], &pred[1234..]).unwrap();
    a.merge(&b).unwrap();
    assert_eq!(a, whole);

    // Two updates into one matrix give the same result.
    let mut c = ConfusionMatrix::new(n as usize);
    c.update(&gt[..4000], &pred[..4000]).unwrap();
    c.update(&gt[4000..], &pred[4000..]).unwrap();
    assert_eq!(c, whole);
}

#[test]
fn merge_rejects_incompatible_matrices() {
    let mut a = ConfusionMatrix::new(3);
    let before = a.clone();
    assert!(matches!(
        a.merge(&ConfusionMatrix::new(4)),
        Err(MetricsError::Incompatible(_))
    ));
    assert!(matches!(
        a.merge(&ConfusionMatrix::with_ignore_index(3, None)),
        Err(MetricsError::Incompatible(_))
    ));
    assert_eq!(a, before);
}

#[test]
fn reset_clears_counts_and_keeps_settings() {
    let mut cm = ConfusionMatrix::with_ignore_index(3, Some(9)).lenient(true);
    cm.update::<u8>(&[0, 9, 200], &[1, 0, 0]).unwrap();
    cm.reset();
    assert_eq!(
        cm,
        ConfusionMatrix::with_ignore_index(3, Some(9)).lenient(true)
    );
}

#[test]
fn class_count_bounds() {
    assert!(matches!(
        ConfusionMatrix::try_new(0, None),
        Err(MetricsError::InvalidClassCount { n_classes: 0, .. })
    ));
    assert!(ConfusionMatrix::try_new(MAX_CLASSES + 1, None).is_err());
    assert!(ConfusionMatrix::try_new(MAX_CLASSES, None).is_ok());
}

#[test]
#[should_panic(expected = "invalid number of classes 0")]
fn new_panics_on_zero_classes() {
    let _ = ConfusionMatrix::new(0);
}

#[test]
fn u8_labels_with_more_than_256_classes() {
    let mut cm = ConfusionMatrix::with_ignore_index(300, None);
    cm.update::<u8>(&[255, 0], &[254, 255]).unwrap();
    assert_eq!(cm.get(255, 254), Some(1));
    assert_eq!(cm.get(0, 255), Some(1));
}

#[test]
fn serde_round_trip_and_validation() {
    let mut cm = ConfusionMatrix::new(3).lenient(true);
    cm.update::<u8>(&[0, 1, 2, 255, 9], &[0, 2, 2, 1, 1])
        .unwrap();
    let json = serde_json::to_string(&cm).unwrap();
    let back: ConfusionMatrix = serde_json::from_str(&json).unwrap();
    assert_eq!(back, cm);

    let bad = json.replace("\"n_classes\":3", "\"n_classes\":4");
    let err = serde_json::from_str::<ConfusionMatrix>(&bad).unwrap_err();
    assert!(err.to_string().contains("`counts` holds 9 values"), "{err}");
}

/// Random label maps with `ignore_frac` void pixels and optionally a few invalid values.
fn random_maps(rng: &mut Rng, len: usize, n: u64, invalid: bool) -> (Vec<u8>, Vec<u8>) {
    let mut gt = Vec::with_capacity(len);
    let mut pred = Vec::with_capacity(len);
    for _ in 0..len {
        // Runs of equal labels, as in real label maps, mixed with noise.
        let g = if rng.below(10) == 0 {
            255
        } else {
            rng.below(n) as u8
        };
        let run = 1 + rng.below(8) as usize;
        for _ in 0..run.min(len - gt.len()) {
            gt.push(g);
            pred.push(if rng.below(4) == 0 {
                rng.below(n) as u8
            } else {
                g.min(n as u8 - 1)
            });
        }
        if gt.len() == len {
            break;
        }
    }
    if invalid {
        for _ in 0..50 {
            let i = rng.below(len as u64) as usize;
            if rng.below(2) == 0 {
                gt[i] = (n + rng.below(255 - n)) as u8;
            } else {
                pred[i] = (n + rng.below(255 - n)) as u8;
            }
        }
    }
    (gt, pred)
}

fn widen(v: &[u8]) -> Vec<u32> {
    v.iter().map(|&x| u32::from(x)).collect()
}

/// Large input: the parallel split and the branch-free `u8` kernel, on a 4-thread pool so the
/// split happens whatever the machine, against the naive count.
#[test]
fn parallel_kernels_equal_naive_serial_count() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .unwrap();
    let mut rng = Rng(2022);
    let n = 19;
    let len = (1 << 21) + 12345; // several tasks, and a remainder that is not a multiple of 8
    let (gt, pred) = random_maps(&mut rng, len, n, false);
    let (want, ignored, invalid) = naive(n as usize, Some(255), &widen(&gt), &widen(&pred));
    assert_eq!(invalid, 0);

    let mut cm = ConfusionMatrix::new(n as usize);
    pool.install(|| cm.update(&gt, &pred)).unwrap();
    assert_eq!(cm.counts(), &want[..]);
    assert_eq!(cm.ignored_pixels(), ignored);

    // The same through the generic kernel (u16) and on the caller's default pool.
    let g16: Vec<u16> = gt.iter().map(|&v| u16::from(v)).collect();
    let p16: Vec<u16> = pred.iter().map(|&v| u16::from(v)).collect();
    let mut cm16 = ConfusionMatrix::new(n as usize);
    pool.install(|| cm16.update(&g16, &p16)).unwrap();
    assert_eq!(cm16, cm);
    let mut serial = ConfusionMatrix::new(n as usize);
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| serial.update(&gt, &pred))
        .unwrap();
    assert_eq!(serial, cm);
}

#[test]
fn parallel_kernels_find_the_first_invalid_value_and_count_them_leniently() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .unwrap();
    let mut rng = Rng(99);
    let n = 19;
    let len = 1 << 21;
    let (mut gt, mut pred) = random_maps(&mut rng, len, n, true);
    // Lenient: invalid pixels are skipped and counted, the rest is as the naive count.
    let (want, ignored, invalid) = naive(n as usize, Some(255), &widen(&gt), &widen(&pred));
    assert!(invalid > 0);
    for g16 in [false, true] {
        let mut cm = ConfusionMatrix::new(n as usize).lenient(true);
        if g16 {
            let a: Vec<u16> = gt.iter().map(|&v| u16::from(v)).collect();
            let b: Vec<u16> = pred.iter().map(|&v| u16::from(v)).collect();
            pool.install(|| cm.update(&a, &b)).unwrap();
        } else {
            pool.install(|| cm.update(&gt, &pred)).unwrap();
        }
        assert_eq!(cm.counts(), &want[..]);
        assert_eq!(
            (cm.ignored_pixels(), cm.invalid_pixels()),
            (ignored, invalid)
        );
    }

    // Strict: the error names the first invalid pixel, even when a later task also has one.
    let (g, p) = (widen(&gt), widen(&pred));
    let first = (0..len)
        .find(|&i| (g[i] as u64 >= n && g[i] != 255) || (p[i] as u64 >= n && p[i] != 255))
        .unwrap();
    let mut cm = ConfusionMatrix::new(n as usize);
    let err = pool.install(|| cm.update(&gt, &pred)).unwrap_err();
    let MetricsError::InvalidLabel {
        position,
        value,
        map,
        ..
    } = err
    else {
        panic!("unexpected error {err}");
    };
    assert_eq!(position, first);
    let expect = if (g[first] as u64) < n || g[first] == 255 {
        (LabelSource::Prediction, p[first])
    } else {
        (LabelSource::GroundTruth, g[first])
    };
    assert_eq!((map, value), expect);
    assert_eq!(cm, ConfusionMatrix::new(n as usize));

    // A single invalid prediction deep in the last task.
    let last = len - 3;
    for i in 0..len {
        if gt[i] != 255 && gt[i] as u64 >= n {
            gt[i] = 0;
        }
        if pred[i] != 255 && pred[i] as u64 >= n {
            pred[i] = 0;
        }
    }
    pred[last] = 200;
    let err = pool.install(|| cm.update(&gt, &pred)).unwrap_err();
    assert!(matches!(
        err,
        MetricsError::InvalidLabel { map: LabelSource::Prediction, value: 200, position, .. } if position == last
    ));
}

/// The branch-free `u8` kernel with unusual settings (ignore index inside the class range, no
/// ignore index, more classes than `u8` values) against the naive count.
#[test]
fn u8_kernel_with_unusual_settings_equals_naive_count() {
    let mut rng = Rng(5);
    let len = 100_000; // one range, above the size where the table kernel is used
    let gt: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
    let pred: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
    for (n, ignore) in [
        (200usize, Some(3u32)),
        (200, None),
        (300, None),
        (256, Some(255)),
    ] {
        let (want, ignored, invalid) = naive(n, ignore, &widen(&gt), &widen(&pred));
        let mut cm = ConfusionMatrix::with_ignore_index(n, ignore).lenient(true);
        cm.update(&gt, &pred).unwrap();
        assert_eq!(cm.counts(), &want[..], "n {n}, ignore {ignore:?}");
        assert_eq!(
            (cm.ignored_pixels(), cm.invalid_pixels()),
            (ignored, invalid)
        );
    }
}

#[test]
fn from_counts_rebuilds_a_matrix_and_rejects_a_wrong_length() {
    let mut m = ConfusionMatrix::new(3);
    m.update(&[0u8, 1, 2, 2, 1], &[0u8, 2, 2, 1, 1]).unwrap();
    let back = ConfusionMatrix::from_counts(3, Some(255), m.counts().to_vec()).unwrap();
    assert_eq!(back, m);
    assert_eq!(back.report(), m.report());
    let err = ConfusionMatrix::from_counts(3, Some(255), vec![0; 8]).unwrap_err();
    assert!(
        matches!(err, MetricsError::InvalidData(ref s) if s.contains("8 values")),
        "{err}"
    );
    assert!(ConfusionMatrix::from_counts(0, None, vec![]).is_err());
}
