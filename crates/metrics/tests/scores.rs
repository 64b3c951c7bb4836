//! Scores: hand-computed values, undefined cases, means and their coverage, subsets, serde, the
//! table printer, and property tests against the direct definitions.

use proptest::prelude::*;
use recallseg_metrics::{ConfusionMatrix, Mean, MetricsError, Report};

/// gt/pred over 4 classes; class 3 is absent from both, class 2 is only predicted:
///
/// ```text
///            pred 0  pred 1  pred 2
/// gt 0          3       1       0
/// gt 1          1       2       2
/// ```
fn example() -> ConfusionMatrix {
    let mut cm = ConfusionMatrix::new(4);
    let gt: [u8; 10] = [0, 0, 0, 0, 1, 1, 1, 1, 1, 255];
    let pred: [u8; 10] = [0, 0, 0, 1, 0, 1, 1, 2, 2, 3];
    cm.update(&gt, &pred).unwrap();
    cm
}

#[test]
fn hand_computed_scores() {
    let r = example()
        .report_with_names(&["road", "car", "bike", "train"])
        .unwrap();
    assert_eq!((r.pixels, r.ignored_pixels), (9, 1));
    let c = &r.classes;
    assert_eq!(c[0].name, "road");
    assert_eq!(
        (c[0].gt_pixels, c[0].pred_pixels, c[0].true_positives),
        (4, 4, 3)
    );
    assert_eq!(c[0].recall, Some(3.0 / 4.0));
    assert_eq!(c[0].precision, Some(3.0 / 4.0));
    assert_eq!(c[0].iou, Some(3.0 / 5.0));
    assert_eq!(c[0].dice, Some(6.0 / 8.0));
    assert_eq!(
        (c[1].gt_pixels, c[1].pred_pixels, c[1].true_positives),
        (5, 3, 2)
    );
    assert_eq!(c[1].recall, Some(2.0 / 5.0));
    assert_eq!(c[1].precision, Some(2.0 / 3.0));
    assert_eq!(c[1].iou, Some(2.0 / 6.0));
    assert_eq!(c[1].dice, Some(4.0 / 8.0));
    // Only predicted: recall undefined, precision/IoU/Dice zero.
    assert_eq!(c[2].recall, None);
    assert_eq!(c[2].precision, Some(0.0));
    assert_eq!(c[2].iou, Some(0.0));
    assert_eq!(c[2].dice, Some(0.0));
    // Absent from both: everything undefined.
    assert_eq!(
        (c[3].recall, c[3].precision, c[3].iou, c[3].dice),
        (None, None, None, None)
    );

    assert_eq!(r.pixel_accuracy, Some(5.0 / 9.0));
    assert_eq!(
        r.mean_accuracy,
        Mean {
            value: Some((0.75 + 0.4) / 2.0),
            classes: 2
        }
    );
    assert_eq!(
        r.mean_precision,
        Mean {
            value: Some((0.75 + 2.0 / 3.0 + 0.0) / 3.0),
            classes: 3
        }
    );
    assert_eq!(
        r.mean_iou,
        Mean {
            value: Some((0.6 + 2.0 / 6.0 + 0.0) / 3.0),
            classes: 3
        }
    );
    assert_eq!(
        r.mean_dice,
        Mean {
            value: Some((0.75 + 0.5 + 0.0) / 3.0),
            classes: 3
        }
    );
    let fw = 4.0 / 9.0 * 0.6 + 5.0 / 9.0 * (2.0 / 6.0);
    assert!((r.frequency_weighted_iou.value.unwrap() - fw).abs() < 1e-15);
    assert_eq!(r.frequency_weighted_iou.classes, 2);
}

#[test]
fn prediction_only_class_counts_in_miou_not_in_macc() {
    // numpy: acc = diag / sum(1) is nan for class 1, iou = 0 / (0 + 2 - 0) = 0.
    let mut cm = ConfusionMatrix::new(2);
    cm.update::<u8>(&[0, 0], &[1, 1]).unwrap();
    let r = cm.report();
    assert_eq!(
        r.mean_accuracy,
        Mean {
            value: Some(0.0),
            classes: 1
        }
    );
    assert_eq!(
        r.mean_iou,
        Mean {
            value: Some(0.0),
            classes: 2
        }
    );
}

#[test]
fn empty_matrix_has_no_defined_score() {
    let r = ConfusionMatrix::new(3).report();
    assert_eq!(r.pixel_accuracy, None);
    for m in [
        r.mean_accuracy,
        r.mean_precision,
        r.mean_iou,
        r.mean_dice,
        r.frequency_weighted_iou,
    ] {
        assert_eq!(
            m,
            Mean {
                value: None,
                classes: 0
            }
        );
    }
    assert!(r.to_string().contains("pixel accuracy"));
}

#[test]
fn perfect_prediction() {
    let mut cm = ConfusionMatrix::new(3);
    cm.update::<u8>(&[0, 1, 2, 2], &[0, 1, 2, 2]).unwrap();
    let r = cm.report();
    for m in [
        r.mean_accuracy,
        r.mean_precision,
        r.mean_iou,
        r.mean_dice,
        r.frequency_weighted_iou,
    ] {
        assert_eq!(
            m,
            Mean {
                value: Some(1.0),
                classes: 3
            }
        );
    }
}

#[test]
fn class_names_must_match_the_class_count() {
    let err = example().report_with_names(&["a", "b"]).unwrap_err();
    assert_eq!(
        err,
        MetricsError::ClassNames {
            names: 2,
            n_classes: 4
        }
    );
}

#[test]
fn subsets() {
    let r = example()
        .report_with_names(&["road", "car", "bike", "train"])
        .unwrap();
    let s = r.subset("minority", &[1, 2, 3]).unwrap();
    assert_eq!(
        s.mean_accuracy,
        Mean {
            value: Some(0.4),
            classes: 1
        }
    );
    assert_eq!(
        s.mean_precision,
        Mean {
            value: Some((2.0 / 3.0 + 0.0) / 2.0),
            classes: 2
        }
    );
    assert_eq!(
        s.mean_iou,
        Mean {
            value: Some((2.0 / 6.0 + 0.0) / 2.0),
            classes: 2
        }
    );
    assert_eq!(
        s.mean_dice,
        Mean {
            value: Some(0.25),
            classes: 2
        }
    );
    assert_eq!(
        r.subset_by_names("minority", &["car", "bike", "train"])
            .unwrap(),
        s
    );

    let err = |res: Result<_, MetricsError>| match res {
        Err(MetricsError::InvalidSubset { reason, .. }) => reason,
        other => panic!("expected InvalidSubset, got {other:?}"),
    };
    assert!(err(r.subset("x", &[])).contains("no class"));
    assert!(err(r.subset("x", &[1, 4])).contains("class index 4"));
    assert!(err(r.subset("x", &[1, 1])).contains("twice"));
    assert!(err(r.subset_by_names("x", &["car", "plane"])).contains("\"plane\""));

    let r = r.with_subset("minority", &[1, 2, 3]).unwrap();
    assert_eq!(r.subsets, vec![s]);
    let table = r.to_string();
    assert!(
        table.contains("subset \"minority\": car, bike, train"),
        "{table}"
    );
}

#[test]
fn serde_round_trip_with_nulls() {
    let r = example()
        .report()
        .with_subset("all", &[0, 1, 2, 3])
        .unwrap();
    let json = serde_json::to_string(&r).unwrap();
    assert!(json.contains("\"recall\":null"), "{json}");
    let back: Report = serde_json::from_str(&json).unwrap();
    assert_eq!(back, r);
}

#[test]
fn table_layout() {
    let r = example()
        .report_with_names(&["road", "car", "bike", "train"])
        .unwrap();
    let expected = "\
class  gt pixels  pred pixels   recall  precision      IoU     Dice
-------------------------------------------------------------------
road           4            4    75.00      75.00    60.00    75.00
car            5            3    40.00      66.67    33.33    50.00
bike           0            2        -       0.00     0.00     0.00
train          0            0        -          -        -        -
-------------------------------------------------------------------
pixel accuracy             55.56  (9 pixels counted, 1 ignored)
mean accuracy (recall)     57.50  (2 of 4 classes)
mean precision             47.22  (3 of 4 classes)
mean IoU                   31.11  (3 of 4 classes)
mean Dice                  41.67  (3 of 4 classes)
frequency-weighted IoU     45.19  (2 of 4 classes)
";
    assert_eq!(r.table(), expected, "\n{}", r.table());
}

/// Direct definitions, from the pixel lists rather than the matrix.
fn direct(n: usize, gt: &[u8], pred: &[u8]) -> Vec<(u64, u64, u64)> {
    (0..n as u8)
        .map(|c| {
            let pairs = gt.iter().zip(pred).filter(|(&g, &p)| g != 255 && p != 255);
            let (mut tp, mut fp, mut fn_) = (0, 0, 0);
            for (&g, &p) in pairs {
                match (g == c, p == c) {
                    (true, true) => tp += 1,
                    (false, true) => fp += 1,
                    (true, false) => fn_ += 1,
                    _ => {}
                }
            }
            (tp, fp, fn_)
        })
        .collect()
}

fn close(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => (a - b).abs() <= 1e-12,
        _ => false,
    }
}

fn div(a: u64, b: u64) -> Option<f64> {
    if b == 0 {
        None
    } else {
        Some(a as f64 / b as f64)
    }
}

fn nanmean(v: &[Option<f64>]) -> (Option<f64>, usize) {
    let d: Vec<f64> = v.iter().flatten().copied().collect();
    if d.is_empty() {
        (None, 0)
    } else {
        (Some(d.iter().sum::<f64>() / d.len() as f64), d.len())
    }
}

fn maps() -> impl Strategy<Value = (usize, Vec<u8>, Vec<u8>)> {
    (1usize..7).prop_flat_map(|n| {
        // Labels in 0..n, with the ignore index 255 now and then.
        let label = prop_oneof![8 => 0..n as u8, 1 => Just(255u8)];
        prop::collection::vec((label.clone(), label), 0..200).prop_map(move |v| {
            let (g, p): (Vec<u8>, Vec<u8>) = v.into_iter().unzip();
            (n, g, p)
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn scores_agree_with_direct_definitions((n, gt, pred) in maps(), split in 0usize..200) {
        let mut cm = ConfusionMatrix::new(n);
        cm.update(&gt, &pred).unwrap();
        // Merging two halves gives the same matrix.
        let split = split.min(gt.len());
        let mut a = ConfusionMatrix::new(n);
        let mut b = ConfusionMatrix::new(n);
        a.update(&gt[..split], &pred[..split]).unwrap();
        b.update(&gt[split..], &pred[split..]).unwrap();
        a.merge(&b).unwrap();
        prop_assert_eq!(&a, &cm);

        let r = cm.report();
        let d = direct(n, &gt, &pred);
        let counted = gt.iter().zip(&pred).filter(|(&g, &p)| g != 255 && p != 255).count() as u64;
        prop_assert_eq!(r.pixels, counted);
        prop_assert_eq!(r.ignored_pixels, gt.len() as u64 - counted);
        let mut recalls = vec![];
        let mut precisions = vec![];
        let mut ious = vec![];
        let mut dices = vec![];
        let mut fw = 0.0;
        let mut fw_classes = 0;
        for (c, &(tp, fp, fn_)) in d.iter().enumerate() {
            let s = &r.classes[c];
            prop_assert_eq!((s.true_positives, s.gt_pixels, s.pred_pixels), (tp, tp + fn_, tp + fp));
            let (rec, prec, iou, dice) =
                (div(tp, tp + fn_), div(tp, tp + fp), div(tp, tp + fp + fn_), div(2 * tp, 2 * tp + fp + fn_));
            prop_assert!(close(s.recall, rec), "recall {c}");
            prop_assert!(close(s.precision, prec), "precision {c}");
            prop_assert!(close(s.iou, iou), "iou {c}");
            prop_assert!(close(s.dice, dice), "dice {c}");
            if tp + fn_ > 0 {
                fw += (tp + fn_) as f64 / counted as f64 * iou.unwrap();
                fw_classes += 1;
            }
            recalls.push(rec);
            precisions.push(prec);
            ious.push(iou);
            dices.push(dice);
        }
        let tp_sum: u64 = d.iter().map(|t| t.0).sum();
        prop_assert!(close(r.pixel_accuracy, div(tp_sum, counted)));
        for (mean, values) in [
            (r.mean_accuracy, &recalls),
            (r.mean_precision, &precisions),
            (r.mean_iou, &ious),
            (r.mean_dice, &dices),
        ] {
            let (v, k) = nanmean(values);
            prop_assert!(close(mean.value, v));
            prop_assert_eq!(mean.classes, k);
        }
        prop_assert_eq!(r.frequency_weighted_iou.classes, fw_classes);
        prop_assert!(close(r.frequency_weighted_iou.value, (fw_classes > 0).then_some(fw)));

        // Every subset mean is the nanmean over the subset.
        let subset: Vec<usize> = (0..n).filter(|c| c % 2 == 1).collect();
        if !subset.is_empty() {
            let s = r.subset("odd", &subset).unwrap();
            let pick = |v: &[Option<f64>]| subset.iter().map(|&c| v[c]).collect::<Vec<_>>();
            for (mean, values) in [
                (s.mean_accuracy, pick(&recalls)),
                (s.mean_precision, pick(&precisions)),
                (s.mean_iou, pick(&ious)),
                (s.mean_dice, pick(&dices)),
            ] {
                let (v, k) = nanmean(&values);
                prop_assert!(close(mean.value, v));
                prop_assert_eq!(mean.classes, k);
            }
        }
    }
}
