//! The normalised confusion matrix against sklearn's `confusion_matrix(normalize=...)`
//! (cross-checked by torchmetrics when the golden file was made by
//! `tests/golden/make_golden_confusion.py`, on the label maps of `tests/golden/metrics_golden.json`).

use recallseg_metrics::{ConfusionMatrix, Normalize};
use serde_json::Value;

const DATA: &str = include_str!("golden/metrics_golden.json");
const GOLDEN: &str = include_str!("golden/confusion_golden.json");

fn matrix(case: &Value) -> ConfusionMatrix {
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
    cm
}

#[test]
fn matches_sklearn() {
    let data: Value = serde_json::from_str(DATA).unwrap();
    let golden: Value = serde_json::from_str(GOLDEN).unwrap();
    let cases = golden["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for (case, g) in data["cases"].as_array().unwrap().iter().zip(cases) {
        let name = g["name"].as_str().unwrap();
        let cm = matrix(case);
        let n = cm.n_classes();
        for norm in [Normalize::True, Normalize::Pred, Normalize::All] {
            let got = cm.normalized(norm);
            assert_eq!((got.normalize, got.n_classes), (norm, n));
            let mut want = vec![0.0; n * n];
            for cell in g["normalized"][norm.name()].as_array().unwrap() {
                let (r, c) = (
                    cell[0].as_u64().unwrap() as usize,
                    cell[1].as_u64().unwrap() as usize,
                );
                want[r * n + c] = cell[2].as_f64().unwrap();
            }
            for (i, (a, b)) in got.values.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-15,
                    "{name} {norm}: cell ({}, {}) = {a}, sklearn {b}",
                    i / n,
                    i % n
                );
            }
        }
    }
}

#[test]
fn rows_columns_and_total_sum_to_one_and_empty_ones_are_zero() {
    // Class 2 is never in the ground truth (only predicted), class 3 absent from both.
    let mut cm = ConfusionMatrix::new(4);
    cm.update(&[0u8, 0, 0, 1, 1, 1], &[0u8, 1, 2, 1, 1, 0])
        .unwrap();
    let t = cm.normalized(Normalize::True);
    assert_eq!(t.row(0).unwrap(), &[1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0, 0.0]);
    assert_eq!(t.row(2).unwrap(), &[0.0; 4]);
    // The diagonal of `true` is the recall, of `pred` the precision.
    let r = cm.report();
    for c in 0..2 {
        assert_eq!(Some(t.get(c, c).unwrap()), r.classes[c].recall);
    }
    let p = cm.normalized(Normalize::Pred);
    for c in 0..3 {
        assert_eq!(Some(p.get(c, c).unwrap()), r.classes[c].precision);
        let col: f64 = (0..4).map(|g| p.get(g, c).unwrap()).sum();
        assert!((col - 1.0).abs() < 1e-15);
    }
    assert_eq!((0..4).map(|g| p.get(g, 3).unwrap()).sum::<f64>(), 0.0);
    let a = cm.normalized(Normalize::All);
    assert!((a.values.iter().sum::<f64>() - 1.0).abs() < 1e-15);
    assert_eq!(a.get(0, 0), Some(1.0 / 6.0));
    let none = cm.normalized(Normalize::None);
    assert_eq!(none.get(1, 1), Some(2.0));
    assert_eq!(none.get(4, 0), None);
    // An empty matrix is all zeros in every mode.
    for norm in Normalize::ALL {
        assert!(ConfusionMatrix::new(3)
            .normalized(norm)
            .values
            .iter()
            .all(|&v| v == 0.0));
    }
}

#[test]
fn normalize_parses_and_serialises_by_its_sklearn_name() {
    for norm in Normalize::ALL {
        assert_eq!(norm.name().parse::<Normalize>().unwrap(), norm);
        assert_eq!(
            serde_json::to_string(&norm).unwrap(),
            format!("\"{}\"", norm.name())
        );
    }
    let e = "rows".parse::<Normalize>().unwrap_err().to_string();
    assert!(e.contains("`normalize`") && e.contains("rows"), "{e}");
}
