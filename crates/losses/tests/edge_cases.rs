//! One behaviour per edge case, on every path (fused CPU f32, portable f32, portable f64) of
//! every loss: a NaN logit on an ignored pixel contributes nothing (as PyTorch's
//! `cross_entropy(..., ignore_index=255)` and smp's Lovász), an empty batch and a batch whose
//! pixels are all ignored give 0 with a zero gradient that exists.

use candle_core::{DType, Device, Tensor, Var};
use recallseg_losses::{LossConfig, LossContext};

const LOSSES: [&str; 11] = [
    "ce",
    "wce",
    "balanced",
    "recall",
    "precision",
    "focal",
    "ohem",
    "iou",
    "dice",
    "tversky",
    "lovasz",
];

#[derive(Debug, Clone, Copy)]
enum Path {
    FusedF32,
    PortableF32,
    PortableF64,
}

const PATHS: [Path; 3] = [Path::FusedF32, Path::PortableF32, Path::PortableF64];

/// `(value, gradient)` of loss `name` on `logits` (N, C, H, W) as f64 values, taking `path`.
fn run(
    name: &str,
    path: Path,
    logits: &[f64],
    dims: (usize, usize, usize, usize),
    target: &[u8],
) -> (f64, Vec<f64>) {
    let (n, c, h, w) = dims;
    let ctx = LossContext::new(c).with_class_pixel_counts(vec![10; c]);
    let mut loss = LossConfig::from_name(name).unwrap().build(&ctx).unwrap();
    let dev = Device::Cpu;
    let t = Tensor::from_vec(target.to_vec(), (n, h, w), &dev).unwrap();
    let base = Tensor::from_vec(logits.to_vec(), dims, &dev).unwrap();
    let (var, x) = match path {
        Path::FusedF32 => {
            let v = Var::from_tensor(&base.to_dtype(DType::F32).unwrap()).unwrap();
            let x = v.as_tensor().clone();
            (v, x)
        }
        Path::PortableF64 => {
            let v = Var::from_tensor(&base).unwrap();
            let x = v.as_tensor().clone();
            (v, x)
        }
        Path::PortableF32 => {
            // Stored as (N, C, W, H) and transposed: not contiguous, so the portable path.
            let stored = base.transpose(2, 3).unwrap().contiguous().unwrap();
            let v = Var::from_tensor(&stored.to_dtype(DType::F32).unwrap()).unwrap();
            let x = v.as_tensor().transpose(2, 3).unwrap();
            (v, x)
        }
    };
    let l = loss
        .forward(&x, &t)
        .unwrap_or_else(|e| panic!("{name} {path:?}: forward failed: {e}"));
    let value = l.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    let grads = l
        .backward()
        .unwrap_or_else(|e| panic!("{name} {path:?}: backward failed: {e}"));
    let g = grads
        .get(var.as_tensor())
        .unwrap_or_else(|| panic!("{name} {path:?} {dims:?}: no gradient entry"));
    let g = match path {
        Path::PortableF32 => g.transpose(2, 3).unwrap(),
        _ => g.clone(),
    };
    let g: Vec<f64> = g
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    (value, g)
}

#[test]
fn a_nan_logit_on_an_ignored_pixel_changes_nothing() {
    // Two classes, pixels (valid: label 0, logits (0, 1)) and (ignored, logits (NaN, 0)).
    let dims = (1, 2, 1, 2);
    let with_nan = [0.0, f64::NAN, 1.0, 0.0];
    let finite = [0.0, 0.0, 1.0, 0.0];
    let target = [0u8, 255];
    let mut failures = Vec::new();
    for name in LOSSES {
        for path in PATHS {
            let (v, g) = run(name, path, &with_nan, dims, &target);
            let (v0, g0) = run(name, path, &finite, dims, &target);
            let same = v.is_finite()
                && (v - v0).abs() <= 1e-6 * v0.abs().max(1.0)
                && g.iter().zip(&g0).all(|(a, b)| (a - b).abs() <= 1e-6)
                && g[1] == 0.0
                && g[3] == 0.0;
            if !same {
                failures.push(format!(
                    "{name} {path:?}: {v} vs {v0}, grad {g:?} vs {g0:?}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn empty_and_all_ignored_batches_give_zero_with_a_zero_gradient() {
    let mut failures = Vec::new();
    for name in LOSSES {
        for path in PATHS {
            // No pixel at all, then pixels that are all ignored.
            for (dims, logits, target) in [
                ((0, 3, 2, 2), vec![], vec![]),
                ((2, 3, 1, 2), vec![0.5; 12], vec![255u8; 4]),
            ] {
                let r = std::panic::catch_unwind(|| run(name, path, &logits, dims, &target));
                match r {
                    Ok((v, g))
                        if v == 0.0 && g.len() == logits.len() && g.iter().all(|x| *x == 0.0) => {}
                    Ok((v, g)) => {
                        failures.push(format!("{name} {path:?} {dims:?}: {v}, grad {g:?}"))
                    }
                    Err(e) => failures.push(format!(
                        "{name} {path:?} {dims:?}: {}",
                        e.downcast_ref::<String>().cloned().unwrap_or_default()
                    )),
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Bad inputs through the public API are errors naming the problem, not panics:
/// `CrossEntropy::new(0)` used to panic on forward (`range end index 4 out of range`).
#[test]
fn bad_inputs_are_errors() {
    use recallseg_losses::{CrossEntropy, SegLoss};
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 2, 2, 2), DType::F32, &dev).unwrap();
    let t = Tensor::zeros((1, 2, 2), DType::U8, &dev).unwrap();
    let e = CrossEntropy::new(0)
        .forward(&x, &t)
        .unwrap_err()
        .to_string();
    assert!(e.contains("0 classes"), "{e}");
    let x0 = Tensor::zeros((1, 0, 2, 2), DType::F32, &dev).unwrap();
    assert!(CrossEntropy::new(0).forward(&x0, &t).is_err());
    // Channels that do not match the class count, a target of the wrong shape or dtype, a
    // label beyond the classes: errors on every path.
    let mut ce = CrossEntropy::new(3);
    assert!(ce
        .forward(&x, &t)
        .unwrap_err()
        .to_string()
        .contains("3 classes"));
    let mut ce = CrossEntropy::new(2);
    let bad_t = Tensor::zeros((1, 3, 2), DType::U8, &dev).unwrap();
    assert!(ce.forward(&x, &bad_t).is_err());
    let float_t = Tensor::zeros((1, 2, 2), DType::F32, &dev).unwrap();
    assert!(ce.forward(&x, &float_t).is_err());
    let big = Tensor::new(&[[[0u8, 7], [1, 255]]], &dev).unwrap();
    for xs in [x.clone(), x.to_dtype(DType::F64).unwrap()] {
        let e = ce.forward(&xs, &big).unwrap_err().to_string();
        assert!(e.contains('7'), "{e}");
    }
}
