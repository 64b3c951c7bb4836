//! F-beta and the averaging modes against numpy (float64 definitions), torchmetrics 1.x and
//! sklearn. The expected numbers come from `tests/golden/make_golden_averaging.py` on the label
//! maps of `tests/golden/metrics_golden.json`; this test only reads them.

use recallseg_metrics::{
    Average, Averaged, Averaging, ConfusionMatrix, MetricsError, Report, Score, ZeroDivision,
};
use serde_json::Value;

const DATA: &str = include_str!("golden/metrics_golden.json");
const GOLDEN: &str = include_str!("golden/averaging_golden.json");

/// numpy and Rust both divide exact counts in float64; only the order of a sum differs.
const NUMPY_REL: f64 = 1e-12;
/// torchmetrics works in float32.
const TORCHMETRICS_ABS: f64 = 2e-6;

fn report_of(case: &Value) -> Report {
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
    let mut cm = ConfusionMatrix::with_ignore_index(n, ignore);
    cm.update(&labels("gt"), &labels("pred")).unwrap();
    cm.report()
}

fn score(name: &str) -> Score {
    match name {
        "recall" => Score::Recall,
        "precision" => Score::Precision,
        "iou" => Score::Iou,
        "dice" => Score::Dice,
        "fbeta" => Score::FBeta,
        other => panic!("unknown score {other}"),
    }
}

fn zero_division(v: &Value) -> ZeroDivision {
    match v {
        Value::String(s) => s.parse().unwrap(),
        Value::Number(x) => ZeroDivision::fill(x.as_f64().unwrap()).unwrap(),
        other => panic!("bad zero_division {other}"),
    }
}

fn check(what: &str, got: Option<f64>, want: Option<f64>, abs: f64, rel: f64) {
    match (got, want) {
        (None, None) => {}
        (Some(g), Some(w)) => assert!(
            (g - w).abs() <= abs + rel * w.abs(),
            "{what}: got {g}, want {w}"
        ),
        _ => panic!("{what}: got {got:?}, want {want:?}"),
    }
}

fn compare(what: &str, got: &Averaged, want: &Value, abs: f64, rel: f64) {
    match (got, want) {
        (Averaged::PerClass(g), Value::Array(w)) => {
            assert_eq!(g.len(), w.len(), "{what}: class count");
            for (c, (g, w)) in g.iter().zip(w).enumerate() {
                check(&format!("{what}[{c}]"), *g, w.as_f64(), abs, rel);
            }
        }
        (Averaged::Mean(m), w) => check(what, m.value, w.as_f64(), abs, rel),
        _ => panic!("{what}: got {got:?}, want {want}"),
    }
}

#[test]
fn matches_numpy_torchmetrics_and_sklearn() {
    let data: Value = serde_json::from_str(DATA).unwrap();
    let golden: Value = serde_json::from_str(GOLDEN).unwrap();
    let cases = golden["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    let mut checked = [0usize; 3];
    for (case, g) in data["cases"].as_array().unwrap().iter().zip(cases) {
        let name = g["name"].as_str().unwrap();
        assert_eq!(case["name"], g["name"]);
        let base = report_of(case);
        for e in g["entries"].as_array().unwrap() {
            let beta = e["beta"].as_f64().unwrap();
            let report = base.clone().with_beta(beta).unwrap();
            let average: Average = e["average"].as_str().unwrap().parse().unwrap();
            let averaging = Averaging::new(average, zero_division(&e["zero_division"]));
            let s = score(e["score"].as_str().unwrap());
            let got = report.average(s, averaging);
            let what = format!("{name}: {s:?} β={beta} {}", averaging.label());
            compare(&what, &got, &e["value"], 0.0, NUMPY_REL);
            checked[0] += 1;
            if !e["torchmetrics"].is_null() {
                compare(
                    &format!("{what} (torchmetrics)"),
                    &got,
                    &e["torchmetrics"],
                    TORCHMETRICS_ABS,
                    0.0,
                );
                checked[1] += 1;
            }
            if !e["sklearn"].is_null() {
                compare(
                    &format!("{what} (sklearn)"),
                    &got,
                    &e["sklearn"],
                    0.0,
                    NUMPY_REL,
                );
                checked[2] += 1;
            }
        }
    }
    // 7 score/β pairs × 4 modes × 3 rules per case; torchmetrics for the 2 fill rules, sklearn
    // for the non-macro ones.
    assert_eq!(checked, [3 * 84, 3 * 56, 3 * 42]);
}

/// The default averaging is the report's own means, bit for bit, and the other modes meet the
/// scores they reduce to: micro recall/precision/F-beta = pixel accuracy (every counted pixel is
/// one prediction), weighted recall = pixel accuracy, weighted IoU = frequency-weighted IoU.
#[test]
fn modes_meet_the_report_scores() {
    let data: Value = serde_json::from_str(DATA).unwrap();
    for case in data["cases"].as_array().unwrap() {
        let r = report_of(case).with_beta(2.0).unwrap();
        let m = |s, a: Averaging| r.average(s, a).mean().copied().unwrap();
        let nan = Averaging::default();
        assert_eq!(nan, Averaging::NANMEAN);
        assert_eq!(m(Score::Recall, nan), r.mean_accuracy);
        assert_eq!(m(Score::Precision, nan), r.mean_precision);
        assert_eq!(m(Score::Iou, nan), r.mean_iou);
        assert_eq!(m(Score::Dice, nan), r.mean_dice);
        assert_eq!(m(Score::FBeta, nan), r.mean_fbeta);
        let micro = Averaging::new(Average::Micro, ZeroDivision::Skip);
        let pa = r.pixel_accuracy.unwrap();
        for s in [Score::Recall, Score::Precision, Score::Dice, Score::FBeta] {
            let v = m(s, micro).value.unwrap();
            assert!(
                (v - pa).abs() < 1e-15,
                "{s:?}: micro {v} vs pixel accuracy {pa}"
            );
        }
        let w = Averaging::new(Average::Weighted, ZeroDivision::Fill(0.0));
        assert!((m(Score::Recall, w).value.unwrap() - pa).abs() < 1e-15);
        let fw = r.frequency_weighted_iou.value.unwrap();
        assert!((m(Score::Iou, w).value.unwrap() - fw).abs() < 1e-15);
        // With β = 1, F-beta is Dice.
        let r1 = r.clone().with_beta(1.0).unwrap();
        for c in &r1.classes {
            assert_eq!(c.fbeta, c.dice);
        }
    }
}

/// The difference the docs state: torchmetrics' macro recall counts a class that is only
/// predicted (absent from the ground truth) as 0; the paper's nanmean leaves it out.
#[test]
fn torchmetrics_default_differs_from_nanmean_on_prediction_only_classes() {
    // Class 0: 2 of 3 right; class 1: only predicted (once); class 2: absent from both.
    let mut cm = ConfusionMatrix::new(3);
    cm.update(&[0u8, 0, 0], &[0u8, 0, 1]).unwrap();
    let r = cm.report();
    let nanmean = r.average(Score::Recall, Averaging::NANMEAN);
    let tm = r.average(Score::Recall, Averaging::TORCHMETRICS);
    assert_eq!(nanmean.mean().unwrap().value, Some(2.0 / 3.0));
    assert_eq!(nanmean.mean().unwrap().classes, 1);
    assert_eq!(tm.mean().unwrap().value, Some(1.0 / 3.0));
    assert_eq!(tm.mean().unwrap().classes, 2);
    // `none` fills every undefined class, the absent one too.
    let none = r.average(
        Score::Recall,
        Averaging::new(Average::None, ZeroDivision::Fill(1.0)),
    );
    assert_eq!(
        none.per_class().unwrap(),
        &[Some(2.0 / 3.0), Some(1.0), Some(1.0)]
    );
    let none = r.average(
        Score::Recall,
        Averaging::new(Average::None, ZeroDivision::Skip),
    );
    assert_eq!(none.per_class().unwrap(), &[Some(2.0 / 3.0), None, None]);
    // Nothing counted: micro is undefined (or the fill value).
    let empty = ConfusionMatrix::new(2).report();
    let micro = |z| empty.average(Score::Iou, Averaging::new(Average::Micro, z));
    assert_eq!(micro(ZeroDivision::Skip).value(), None);
    assert_eq!(micro(ZeroDivision::Fill(1.0)).value(), Some(1.0));
}

#[test]
fn options_parse_serialise_and_reject_bad_values() {
    assert_eq!("weighted".parse::<Average>().unwrap(), Average::Weighted);
    let err = "mean".parse::<Average>().unwrap_err();
    assert!(err.to_string().contains("`average`") && err.to_string().contains("mean"));
    assert_eq!("skip".parse::<ZeroDivision>().unwrap(), ZeroDivision::Skip);
    assert_eq!(
        "1".parse::<ZeroDivision>().unwrap(),
        ZeroDivision::Fill(1.0)
    );
    for bad in ["2", "-0.5", "NaN", "zero"] {
        let e = bad.parse::<ZeroDivision>().unwrap_err();
        assert!(
            matches!(
                e,
                MetricsError::InvalidOption {
                    option: "zero_division",
                    ..
                }
            ),
            "{bad}"
        );
    }
    let a: Averaging = serde_json::from_str(r#"{"average":"micro","zero_division":0.0}"#).unwrap();
    assert_eq!(a, Averaging::new(Average::Micro, ZeroDivision::Fill(0.0)));
    let a: Averaging = serde_json::from_str(r#"{"zero_division":"skip"}"#).unwrap();
    assert_eq!(a, Averaging::NANMEAN);
    assert!(serde_json::from_str::<Averaging>(r#"{"zero_division":3}"#).is_err());
    assert!(serde_json::from_str::<Averaging>(r#"{"average":"macro","x":1}"#).is_err());
    let json = serde_json::to_string(&Averaging::TORCHMETRICS).unwrap();
    assert_eq!(json, r#"{"average":"macro","zero_division":0.0}"#);

    let r = ConfusionMatrix::new(2).report();
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let e = r.clone().with_beta(bad).unwrap_err();
        assert!(e.to_string().contains("`beta`"), "{e}");
    }
    let e = r
        .with_averaging(Averaging::new(Average::Macro, ZeroDivision::Fill(7.0)))
        .unwrap_err();
    assert!(e.to_string().contains("zero_division"), "{e}");
}

/// Averages stored in a report are printed and survive a JSON round trip; an F-beta column
/// appears only when β ≠ 1. A report serialised before F-beta existed still loads.
#[test]
fn stored_averages_print_and_round_trip() {
    let mut cm = ConfusionMatrix::new(3);
    cm.update(&[0u8, 0, 1, 1, 2], &[0u8, 1, 1, 1, 0]).unwrap();
    let r = cm
        .report()
        .with_averaging(Averaging::TORCHMETRICS)
        .unwrap()
        .with_averaging(Averaging::new(Average::None, ZeroDivision::Skip))
        .unwrap()
        .with_beta(2.0)
        .unwrap();
    // with_beta recomputes the stored averages' F-beta.
    assert_eq!(
        r.averages[0].fbeta,
        r.average(Score::FBeta, Averaging::TORCHMETRICS)
    );
    let text = r.to_string();
    assert!(text.contains("     F2"), "{text}");
    assert!(text.contains("mean F2"), "{text}");
    assert!(
        text.contains("averaged (macro, zero_division 0):"),
        "{text}"
    );
    assert!(text.contains("averaged (none):"), "{text}");
    // serde_json (without `float_roundtrip`) may move a float's last bit: compare the settings
    // and the printed table.
    let back: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(back.beta, r.beta);
    let settings = |r: &Report| r.averages.iter().map(|a| a.averaging).collect::<Vec<_>>();
    assert_eq!(settings(&back), settings(&r));
    assert_eq!(back.to_string(), text);
    // Old JSON: no beta, fbeta, mean_fbeta or averages.
    let mut old: Value = serde_json::to_value(cm.report()).unwrap();
    for k in ["beta", "mean_fbeta", "averages"] {
        old.as_object_mut().unwrap().remove(k);
    }
    for c in old["classes"].as_array_mut().unwrap() {
        c.as_object_mut().unwrap().remove("fbeta");
    }
    let back: Report = serde_json::from_value(old).unwrap();
    assert_eq!(back.beta, 1.0);
    assert!(back.averages.is_empty());
    assert!(!cm.report().to_string().contains("F1"));
}
