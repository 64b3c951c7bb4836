//! Agreement with the numpy reference (`fast_hist` + `nanmean`, cross-checked by torchmetrics).
//! The numbers come from `tests/golden/make_golden.py`; this test only reads them.

use recallseg_metrics::{ConfusionMatrix, Mean, Report};
use serde_json::Value;

const GOLDEN: &str = include_str!("golden/metrics_golden.json");

fn labels(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("label array")
        .iter()
        .map(|x| u32::try_from(x.as_u64().expect("label")).expect("u32 label"))
        .collect()
}

fn opt(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn opts(v: &Value) -> Vec<Option<f64>> {
    v.as_array().expect("score array").iter().map(opt).collect()
}

/// Relative agreement (numpy sums pairwise; the last bits of a mean may differ).
fn assert_close(what: &str, got: Option<f64>, want: Option<f64>) {
    match (got, want) {
        (None, None) => {}
        (Some(g), Some(w)) => assert!(
            (g - w).abs() <= 1e-12 * w.abs().max(1.0),
            "{what}: got {g}, numpy {w}"
        ),
        _ => panic!("{what}: got {got:?}, numpy {want:?}"),
    }
}

fn update(cm: &mut ConfusionMatrix, dtype: &str, gt: &[u32], pred: &[u32]) {
    match dtype {
        "u8" => {
            let g: Vec<u8> = gt.iter().map(|&v| u8::try_from(v).unwrap()).collect();
            let p: Vec<u8> = pred.iter().map(|&v| u8::try_from(v).unwrap()).collect();
            cm.update(&g, &p).unwrap();
        }
        "u16" => {
            let g: Vec<u16> = gt.iter().map(|&v| u16::try_from(v).unwrap()).collect();
            let p: Vec<u16> = pred.iter().map(|&v| u16::try_from(v).unwrap()).collect();
            cm.update(&g, &p).unwrap();
        }
        "u32" => cm.update(gt, pred).unwrap(),
        other => panic!("unknown dtype {other}"),
    }
}

fn check_mean(what: &str, m: &Mean, want: &Value) {
    assert_close(what, m.value, opt(want));
}

#[test]
fn matches_numpy_reference() {
    let golden: Value = serde_json::from_str(GOLDEN).unwrap();
    let cases = golden["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let n = case["n_classes"].as_u64().unwrap() as usize;
        let ignore = case["ignore_index"].as_u64().map(|v| v as u32);
        let gt = labels(&case["gt"]);
        let pred = labels(&case["pred"]);
        let exp = &case["expected"];

        let mut cm = ConfusionMatrix::with_ignore_index(n, ignore);
        update(&mut cm, case["dtype"].as_str().unwrap(), &gt, &pred);

        let mut want = vec![0u64; n * n];
        for cell in exp["confusion_nonzero"].as_array().unwrap() {
            let c: Vec<u64> = cell
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap())
                .collect();
            want[c[0] as usize * n + c[1] as usize] = c[2];
        }
        assert_eq!(cm.counts(), &want[..], "{name}: counts");

        let r: Report = cm.report();
        for (key, got) in [
            (
                "recall",
                r.classes.iter().map(|c| c.recall).collect::<Vec<_>>(),
            ),
            ("precision", r.classes.iter().map(|c| c.precision).collect()),
            ("iou", r.classes.iter().map(|c| c.iou).collect()),
            ("dice", r.classes.iter().map(|c| c.dice).collect()),
        ] {
            let want = opts(&exp[key]);
            assert_eq!(got.len(), want.len());
            for (c, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_close(&format!("{name}: {key}[{c}]"), *g, *w);
            }
        }
        assert_close(
            &format!("{name}: pixel accuracy"),
            r.pixel_accuracy,
            opt(&exp["pixel_accuracy"]),
        );
        check_mean(
            &format!("{name}: mAcc"),
            &r.mean_accuracy,
            &exp["mean_accuracy"],
        );
        check_mean(
            &format!("{name}: mPrec"),
            &r.mean_precision,
            &exp["mean_precision"],
        );
        check_mean(&format!("{name}: mIoU"), &r.mean_iou, &exp["mean_iou"]);
        check_mean(&format!("{name}: mDice"), &r.mean_dice, &exp["mean_dice"]);
        check_mean(
            &format!("{name}: fwIoU"),
            &r.frequency_weighted_iou,
            &exp["frequency_weighted_iou"],
        );

        let subset: Vec<usize> = exp["subset"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        let s = r.subset("minority", &subset).unwrap();
        check_mean(
            &format!("{name}: subset mAcc"),
            &s.mean_accuracy,
            &exp["subset_mean_accuracy"],
        );
        check_mean(
            &format!("{name}: subset mPrec"),
            &s.mean_precision,
            &exp["subset_mean_precision"],
        );
        check_mean(
            &format!("{name}: subset mIoU"),
            &s.mean_iou,
            &exp["subset_mean_iou"],
        );
        check_mean(
            &format!("{name}: subset mDice"),
            &s.mean_dice,
            &exp["subset_mean_dice"],
        );
    }
}

/// Pins a few headline numbers of the first case, so that regenerating the golden file with a
/// changed generator does not silently move them.
#[test]
fn pinned_headline_numbers() {
    let golden: Value = serde_json::from_str(GOLDEN).unwrap();
    let case = &golden["cases"][0];
    let gt: Vec<u8> = labels(&case["gt"]).iter().map(|&v| v as u8).collect();
    let pred: Vec<u8> = labels(&case["pred"]).iter().map(|&v| v as u8).collect();
    let mut cm = ConfusionMatrix::new(6);
    cm.update(&gt, &pred).unwrap();
    let r = cm.report();
    assert_eq!(
        (r.pixels, r.ignored_pixels, r.invalid_pixels),
        (2702, 298, 0)
    );
    assert_close("pixel accuracy", r.pixel_accuracy, Some(0.7912657290895633));
    assert_close("mAcc", r.mean_accuracy.value, Some(0.7890639803245578));
    assert_close("mIoU", r.mean_iou.value, Some(0.45169164807786943));
    // Class 4 is absent from both maps; class 5 is only predicted.
    assert_eq!((r.mean_accuracy.classes, r.mean_iou.classes), (4, 5));
    assert_eq!(r.classes[4].iou, None);
    assert_eq!(r.classes[5].recall, None);
    assert_eq!(r.classes[5].iou, Some(0.0));
}
