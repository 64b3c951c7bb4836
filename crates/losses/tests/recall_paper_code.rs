//! The paper code's Recall loss variant (`variant = "paper_code"`) against goldens from an
//! independent PyTorch implementation (`goldens/make_recall_paper_code.py`): ignored pixels, a
//! class without false negatives (weight 1/N_c), the mean over every pixel. Fused f32 and
//! portable f64 paths.

use candle_core::{DType, Device, Tensor, Var};
use recallseg_losses::{RecallCe, RecallVariant, SegLoss};

#[test]
fn paper_code_variant_matches_pytorch() {
    let text = include_str!("goldens/recall_paper_code.json");
    let cases: serde_json::Value = serde_json::from_str(text).unwrap();
    for (k, case) in cases.as_array().unwrap().iter().enumerate() {
        let dims: Vec<usize> = serde_json::from_value(case["dims"].clone()).unwrap();
        let x: Vec<f64> = serde_json::from_value(case["logits"].clone()).unwrap();
        let y: Vec<u32> = serde_json::from_value(case["target"].clone()).unwrap();
        let want: f64 = case["loss"].as_f64().unwrap();
        let want_g: Vec<f64> = serde_json::from_value(case["grad"].clone()).unwrap();
        let want_w: Vec<f64> = serde_json::from_value(case["weights"].clone()).unwrap();
        let dev = Device::Cpu;
        let t = Tensor::from_vec(y.clone(), (dims[0], dims[2], dims[3]), &dev).unwrap();
        let x64 = Tensor::from_vec(x, dims.as_slice(), &dev).unwrap();
        for (dtype, tol) in [(DType::F32, 2e-5), (DType::F64, 1e-10)] {
            let var = Var::from_tensor(&x64.to_dtype(dtype).unwrap()).unwrap();
            let mut loss = RecallCe::new(dims[1]).with_variant(RecallVariant::PaperCode);
            let l = loss.forward(var.as_tensor(), &t).unwrap();
            let v = l.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
            assert!((v - want).abs() < tol, "case {k} {dtype:?}: {v} vs {want}");
            let g: Vec<f64> = l
                .backward()
                .unwrap()
                .get(var.as_tensor())
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for (i, (a, b)) in g.iter().zip(&want_g).enumerate() {
                assert!(
                    (a - b).abs() < tol,
                    "case {k} {dtype:?} grad {i}: {a} vs {b}"
                );
            }
            // The weights reported for the classes present are the code's counters' ratio.
            let w = loss.last_class_weights().unwrap();
            for (c, (a, b)) in w.iter().zip(&want_w).enumerate() {
                if a.is_finite() {
                    assert!(
                        (*a as f64 - b).abs() < 1e-6,
                        "case {k} class {c}: {a} vs {b}"
                    );
                }
            }
        }
    }
    // Eq. 5 stays the default and differs (a class without false negatives weighs 0 there).
    let cfg: recallseg_losses::LossConfig =
        toml::from_str("name = \"recall_ce\"\nvariant = \"paper_code\"").unwrap();
    assert_eq!(cfg.name(), "recall_ce");
    let bad: Result<recallseg_losses::LossConfig, _> =
        toml::from_str("name = \"recall_ce\"\nvariant = \"nope\"");
    assert!(bad.is_err());
}
