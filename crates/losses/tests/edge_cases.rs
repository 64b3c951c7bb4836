//! One behaviour per edge case, on every path of every loss: empty and fully ignored batches,
//! non-finite inputs, extreme parameters.
//!
//! Paths: the fused CPU kernel (forced with `Kernel::Fused`, f32), the portable candle-ops path
//! in f32 and f64 (forced with `Kernel::Portable`), and f16 logits on the automatic choice
//! (computed in f32). Rules, checked for value and gradient (candle's backward; the gradient
//! entry of the logits must exist):
//!
//! * a batch without pixels (`N`, `H` or `W` = 0) or with every pixel ignored gives 0 with a zero
//!   gradient, whatever the ignored pixels' logits hold (NaN and infinities included);
//! * the logits of an ignored pixel do not matter: a NaN or an infinity there gives the value and
//!   gradient that any finite logits give, with a zero gradient on that pixel (as PyTorch's
//!   `cross_entropy(..., ignore_index=255)` and smp's Lovász);
//! * valid pixels whose static class weights are all 0 give the loss's value without them (0;
//!   SoftIoU 1, absent classes count) with a zero gradient that exists;
//! * a NaN on a valid pixel propagates to the loss (the forced fused kernel refuses it).
//!
//! And bad input is an error naming the offending value, never a panic.

use candle_core::{DType, Device, Tensor, Var};
use recallseg_losses::LossBuilder;
use recallseg_losses::LovaszClasses;
use recallseg_losses::{
    BalancedCe, CrossEntropy, Dice, Focal, Kernel, Lovasz, Ohem, OhemSelection, PrecisionCe,
    RecallCe, SegLoss, SoftIou, Tversky, WeightMode, WeightedCe,
};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Every loss of the crate, with the variants whose code paths differ.
const LOSSES: [&str; 16] = [
    "cross_entropy",
    "weighted_ce",
    "balanced_ce",
    "recall_ce",
    "recall_ce_ema",
    "precision_ce",
    "focal",
    "focal_g2",
    "ohem",
    "ohem_threshold",
    "soft_iou",
    "dice",
    "tversky",
    "lovasz",
    "lovasz_all",
    "cross_entropy_weighted",
];

/// Loss `name` over `c` classes with `kernel`, and static class weights `w` if given.
fn build(name: &str, c: usize, kernel: Kernel, w: Option<Vec<f64>>) -> Box<dyn SegLoss> {
    macro_rules! fin {
        ($l:expr) => {{
            let l = $l.with_kernel(kernel);
            match w {
                Some(w) => Box::new(l.with_class_weights(w).unwrap()) as Box<dyn SegLoss>,
                None => Box::new(l) as Box<dyn SegLoss>,
            }
        }};
    }
    let counts: Vec<u64> = (1..=c as u64).map(|k| 10 * k).collect();
    match name {
        "cross_entropy" => fin!(CrossEntropy::new(c)),
        "cross_entropy_weighted" => {
            let s = (0..c).map(|k| 0.5 + k as f64).collect();
            fin!(CrossEntropy::new(c).with_class_weights(s).unwrap())
        }
        "weighted_ce" => {
            fin!(WeightedCe::from_counts(&counts, WeightMode::MedianFrequency).unwrap())
        }
        "balanced_ce" => fin!(BalancedCe::from_counts(&counts, None).unwrap()),
        "recall_ce" => fin!(RecallCe::new(c)),
        "recall_ce_ema" => fin!(RecallCe::new(c).with_ema(0.5).unwrap()),
        "precision_ce" => fin!(PrecisionCe::new(c)),
        "focal" => fin!(Focal::new(c).with_gamma(1.0).unwrap()),
        "focal_g2" => fin!(Focal::new(c).with_gamma(2.0).unwrap()),
        "ohem" => fin!(Ohem::new(c)
            .with_selection(OhemSelection::KeepRatio(0.7))
            .unwrap()),
        "ohem_threshold" => fin!(Ohem::new(c)
            .with_selection(OhemSelection::Threshold(0.9))
            .unwrap()),
        "soft_iou" => fin!(SoftIou::new(c)),
        "dice" => fin!(Dice::new(c)),
        "tversky" => fin!(Tversky::new(c).with_alpha_beta(0.3, 0.7).unwrap()),
        "lovasz" => fin!(Lovasz::new(c)),
        "lovasz_all" => fin!(Lovasz::new(c).with_classes(LovaszClasses::All)),
        _ => unreachable!("{name}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Path {
    /// The fused CPU kernel, forced.
    FusedF32,
    PortableF32,
    PortableF64,
    /// f16 logits, automatic choice (converted to f32).
    AutoF16,
}

const PATHS: [Path; 4] = [
    Path::FusedF32,
    Path::PortableF32,
    Path::PortableF64,
    Path::AutoF16,
];

impl Path {
    fn kernel(self) -> Kernel {
        match self {
            Path::FusedF32 => Kernel::Fused,
            Path::PortableF32 | Path::PortableF64 => Kernel::Portable,
            Path::AutoF16 => Kernel::Auto,
        }
    }
    fn dtype(self) -> DType {
        match self {
            Path::FusedF32 | Path::PortableF32 => DType::F32,
            Path::PortableF64 => DType::F64,
            Path::AutoF16 => DType::F16,
        }
    }
}

/// One batch: logits `(N, C, H, W)` (row-major values) and labels `(N, H, W)`.
#[derive(Debug, Clone)]
struct Batch {
    dims: (usize, usize, usize, usize),
    logits: Vec<f64>,
    labels: Vec<i64>,
}

/// `(value, gradient of the logits)` of `loss` on `b`, along `path`, with the target in
/// `tdtype`; an error as text (a panic fails the test).
fn run(
    loss: &mut dyn SegLoss,
    path: Path,
    b: &Batch,
    tdtype: DType,
) -> Result<(f64, Vec<f64>), String> {
    let dev = Device::Cpu;
    let (n, _, h, w) = b.dims;
    let t = Tensor::from_vec(b.labels.clone(), (n, h, w), &dev)
        .unwrap()
        .to_dtype(tdtype)
        .unwrap();
    let x = Tensor::from_vec(b.logits.clone(), b.dims, &dev)
        .unwrap()
        .to_dtype(path.dtype())
        .unwrap();
    let var = Var::from_tensor(&x).unwrap();
    let l = loss
        .forward(var.as_tensor(), &t)
        .map_err(|e| e.to_string())?;
    assert_eq!(l.dims(), &[] as &[usize], "a loss is a scalar");
    let value = l.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    let grads = l.backward().map_err(|e| format!("backward: {e}"))?;
    let g = grads
        .get(var.as_tensor())
        .ok_or_else(|| "no gradient entry for the logits".to_string())?;
    let g = g
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    Ok((value, g))
}

/// What a case expects.
#[derive(Debug, Clone)]
enum Expect {
    /// Value `v`, a gradient of zeros (present, one per logit).
    ZeroGrad(f64),
    /// The value and gradient of the reference batch (the same with finite logits on the ignored
    /// pixels), finite, with a zero gradient on every ignored pixel's logits.
    SameAs(Batch),
    /// A NaN value (an error for the forced fused kernel).
    Nan,
}

/// Logits `(N, C, H, W)` with `v(n, c, i)` at pixel `i` of image `n`.
fn logits_from(
    dims: (usize, usize, usize, usize),
    v: impl Fn(usize, usize, usize) -> f64,
) -> Vec<f64> {
    let (n, c, h, w) = dims;
    let mut out = Vec::with_capacity(n * c * h * w);
    for b in 0..n {
        for k in 0..c {
            for i in 0..h * w {
                out.push(v(b, k, i));
            }
        }
    }
    out
}

/// The table: (case name, batch, static weights, expectation).
fn cases() -> Vec<(String, Batch, Option<Vec<f64>>, Expect)> {
    let mut out = Vec::new();
    // No pixel at all.
    for dims in [(0, 3, 2, 2), (2, 3, 0, 2), (1, 3, 2, 0)] {
        let b = Batch {
            dims,
            logits: vec![],
            labels: vec![],
        };
        out.push((format!("empty {dims:?}"), b, None, Expect::ZeroGrad(0.0)));
    }
    // Every pixel ignored, with finite and non-finite logits.
    for (what, bad) in [("finite", 0.5), ("NaN", f64::NAN), ("+inf", f64::INFINITY)] {
        let dims = (2, 3, 1, 2);
        let b = Batch {
            dims,
            logits: logits_from(dims, |n, k, i| {
                if n == 1 && i == 0 {
                    bad
                } else {
                    k as f64 * 0.3 - 0.2
                }
            }),
            labels: vec![255; 4],
        };
        out.push((
            format!("all ignored, {what} logits"),
            b,
            None,
            Expect::ZeroGrad(0.0),
        ));
    }
    // The reported minimal case: class planes [0, NaN] and [1, 0], target [[[0, 255]]]; then
    // infinities, a whole ignored pixel of NaN, and three classes over two images.
    let reference = |dims, labels: Vec<i64>, at: &dyn Fn(usize, usize, usize) -> f64| Batch {
        dims,
        logits: logits_from(dims, at),
        labels,
    };
    let minimal = |x: f64, y: f64| {
        reference((1, 2, 1, 2), vec![0, 255], &move |_, k, i| match (k, i) {
            (0, 0) => 0.0,
            (0, _) => x,
            (_, 0) => 1.0,
            _ => y,
        })
    };
    for (what, x, y) in [
        ("NaN", f64::NAN, 0.0),
        ("+inf", f64::INFINITY, 0.0),
        ("-inf", f64::NEG_INFINITY, 0.0),
        ("NaN, NaN", f64::NAN, f64::NAN),
        ("+inf, -inf", f64::INFINITY, f64::NEG_INFINITY),
    ] {
        out.push((
            format!("minimal case, {what} on the ignored pixel"),
            minimal(x, y),
            None,
            Expect::SameAs(minimal(3.0, -2.0)),
        ));
    }
    let dims = (2, 3, 2, 2);
    let labels = vec![0, 255, 1, 2, 255, 1, 1, 0];
    let at = |bad: f64| {
        move |n: usize, k: usize, i: usize| {
            if (n, i) == (0, 1) || (n, i) == (1, 0) {
                if k == 1 {
                    bad
                } else {
                    -bad
                }
            } else {
                ((n * 7 + k * 3 + i * 5) % 11) as f64 * 0.4 - 2.0
            }
        }
    };
    out.push((
        "two images, NaN and -NaN on ignored pixels".into(),
        reference(dims, labels.clone(), &at(f64::NAN)),
        None,
        Expect::SameAs(reference(dims, labels.clone(), &at(1.5))),
    ));
    // Valid pixels, all static weights 0: Z = 0 (portable focal lost its gradient entry).
    let dims = (1, 3, 2, 2);
    let b = reference(dims, vec![0, 1, 255, 2], &|_, k, i| {
        (k as f64 - i as f64) * 0.7
    });
    out.push((
        "valid pixels, static weights all 0".into(),
        b,
        Some(vec![0.0; 3]),
        Expect::ZeroGrad(0.0),
    ));
    // A NaN on a valid pixel must still show.
    let b = reference(dims, vec![0, 1, 255, 2], &|_, k, i| {
        if (k, i) == (2, 3) {
            f64::NAN
        } else {
            k as f64 * 0.5 - i as f64 * 0.25
        }
    });
    out.push(("NaN on a valid pixel".into(), b, None, Expect::Nan));
    out
}

#[test]
fn every_loss_path_and_edge_case_behaves_the_same() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for (case, batch, weights, expect) in cases() {
        let c = batch.dims.1;
        for name in LOSSES {
            for path in PATHS {
                for tdtype in [DType::U8, DType::I64] {
                    let what = format!("{case} | {name} {path:?} target {tdtype:?}");
                    let mut loss = build(name, c, path.kernel(), weights.clone());
                    let got = catch_unwind(AssertUnwindSafe(|| {
                        run(loss.as_mut(), path, &batch, tdtype)
                    }));
                    let got = match got {
                        Ok(r) => r,
                        Err(_) => {
                            failures.push(format!("{what}: panicked"));
                            continue;
                        }
                    };
                    checked += 1;
                    let problem = match (&expect, got) {
                        (Expect::Nan, Err(e)) if path == Path::FusedF32 => {
                            (!e.contains("finite")).then(|| format!("unexpected error {e}"))
                        }
                        (Expect::Nan, Ok((v, _))) if path != Path::FusedF32 => {
                            (!v.is_nan()).then(|| format!("value {v}, expected NaN"))
                        }
                        (Expect::Nan, r) => Some(format!("got {r:?}")),
                        (_, Err(e)) => Some(format!("error: {e}")),
                        (Expect::ZeroGrad(want), Ok((v, g))) => {
                            let want = if name == "soft_iou" && weights.is_some() {
                                // SoftIoU counts every class, so 1 - 0 with all weights 0.
                                1.0
                            } else {
                                *want
                            };
                            if v != want
                                || g.len() != batch.logits.len()
                                || g.iter().any(|x| *x != 0.0)
                            {
                                Some(format!("value {v} (want {want}), gradient {g:?}"))
                            } else {
                                None
                            }
                        }
                        (Expect::SameAs(r), Ok((v, g))) => {
                            let mut fresh = build(name, c, path.kernel(), weights.clone());
                            let (v0, g0) = run(fresh.as_mut(), path, r, tdtype).unwrap();
                            let tol = if path == Path::AutoF16 { 1e-3 } else { 1e-6 };
                            let hw = batch.dims.2 * batch.dims.3;
                            let ignored_grad_zero = g.iter().enumerate().all(|(j, x)| {
                                let (n, i) = (j / (c * hw), j % hw);
                                batch.labels[n * hw + i] != 255 || *x == 0.0
                            });
                            let same = v.is_finite()
                                && (v - v0).abs() <= tol * v0.abs().max(1.0)
                                && g.len() == g0.len()
                                && g.iter().zip(&g0).all(|(a, b)| (a - b).abs() <= tol);
                            (!same || !ignored_grad_zero)
                                .then(|| format!("{v} vs {v0}, gradient {g:?} vs {g0:?}"))
                        }
                    };
                    if let Some(p) = problem {
                        failures.push(format!("{what}: {p}"));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(checked, cases().len() * LOSSES.len() * PATHS.len() * 2);
}

/// A bad input: logits, target and the class count the loss is built for, the path it takes,
/// and a fragment the error must contain (the offending value).
struct Bad {
    what: &'static str,
    logits: Tensor,
    target: Tensor,
    n_classes: usize,
    /// `None`: every path (forced fused and portable); `Some(k)`: that kernel only.
    kernel: Option<Kernel>,
    names: &'static str,
}

fn bad_inputs() -> Vec<Bad> {
    let dev = Device::Cpu;
    let x = |d: (usize, usize, usize, usize)| Tensor::zeros(d, DType::F32, &dev).unwrap();
    let t = |d: (usize, usize, usize)| Tensor::zeros(d, DType::U8, &dev).unwrap();
    let t64 = |v: [i64; 4]| Tensor::from_vec(v.to_vec(), (1, 2, 2), &dev).unwrap();
    let bad = |what, logits, target, n_classes, names| Bad {
        what,
        logits,
        target,
        n_classes,
        kernel: None,
        names,
    };
    let mut nan = x((1, 2, 2, 2))
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    nan[0] = f32::NAN;
    let nan = Tensor::from_vec(nan, (1, 2, 2, 2), &dev).unwrap();
    vec![
        // `CrossEntropy::new(0)` used to panic (`range end index 4 out of range`).
        bad(
            "zero classes",
            x((1, 2, 2, 2)),
            t((1, 2, 2)),
            0,
            "0 classes",
        ),
        bad(
            "zero classes and channels",
            x((1, 0, 2, 2)),
            t((1, 2, 2)),
            0,
            "0 classes",
        ),
        bad(
            "channels != classes",
            x((1, 2, 2, 2)),
            t((1, 2, 2)),
            3,
            "2 channels",
        ),
        bad(
            "logits rank 3",
            x((1, 2, 2, 2)).squeeze(0).unwrap(),
            t((1, 2, 2)),
            2,
            "[2, 2, 2]",
        ),
        bad(
            "logits rank 5",
            x((1, 2, 2, 2)).unsqueeze(0).unwrap(),
            t((1, 2, 2)),
            2,
            "[1, 1, 2, 2, 2]",
        ),
        bad(
            "logits rank 0",
            Tensor::new(0f32, &dev).unwrap(),
            t((1, 2, 2)),
            2,
            "[]",
        ),
        bad(
            "target rank 2",
            x((1, 2, 2, 2)),
            t((1, 2, 2)).squeeze(0).unwrap(),
            2,
            "[2, 2]",
        ),
        bad("target size", x((1, 2, 2, 2)), t((1, 2, 3)), 2, "[1, 2, 3]"),
        bad(
            "target size, empty batch",
            x((0, 2, 2, 2)),
            t((0, 2, 3)),
            2,
            "[0, 2, 3]",
        ),
        bad(
            "target f32",
            x((1, 2, 2, 2)),
            x((1, 1, 2, 2)).squeeze(1).unwrap(),
            2,
            "F32",
        ),
        bad(
            "target f32, empty batch",
            x((0, 2, 2, 2)),
            x((0, 1, 2, 2)).squeeze(1).unwrap(),
            2,
            "F32",
        ),
        bad(
            "logits u8",
            t((1, 2, 2))
                .unsqueeze(1)
                .unwrap()
                .repeat((1, 2, 1, 1))
                .unwrap(),
            t((1, 2, 2)),
            2,
            "U8",
        ),
        bad(
            "logits i64",
            t64([0; 4])
                .unsqueeze(1)
                .unwrap()
                .repeat((1, 2, 1, 1))
                .unwrap(),
            t((1, 2, 2)),
            2,
            "I64",
        ),
        bad(
            "u8 label >= C",
            x((1, 2, 2, 2)),
            Tensor::new(&[[[0u8, 7], [1, 255]]], &dev).unwrap(),
            2,
            "label 7",
        ),
        bad(
            "u32 label >= C",
            x((1, 2, 2, 2)),
            Tensor::new(&[[[0u32, 1000], [1, 255]]], &dev).unwrap(),
            2,
            "label 1000",
        ),
        bad(
            "i64 label -1",
            x((1, 2, 2, 2)),
            t64([0, -1, 1, 255]),
            2,
            "label -1",
        ),
        bad(
            "i64 label MIN",
            x((1, 2, 2, 2)),
            t64([0, i64::MIN, 1, 255]),
            2,
            "label -9223372036854775808",
        ),
        // Wrapped to class 0 by a u32 conversion on the portable path.
        bad(
            "i64 label 2^32",
            x((1, 2, 2, 2)),
            t64([0, 1 << 32, 1, 255]),
            2,
            "label 4294967296",
        ),
        // Wrapped to the ignore index: taken for an all-ignored batch (loss 0) on every path.
        bad(
            "i64 labels 2^32 + 255",
            x((1, 2, 2, 2)),
            t64([(1 << 32) + 255; 4]),
            2,
            "label 4294967551",
        ),
        Bad {
            kernel: Some(Kernel::Fused),
            ..bad(
                "forced fused, f64 logits",
                x((1, 2, 2, 2)).to_dtype(DType::F64).unwrap(),
                t((1, 2, 2)),
                2,
                "F64",
            )
        },
        Bad {
            kernel: Some(Kernel::Fused),
            ..bad(
                "forced fused, NaN on a valid pixel",
                nan,
                t((1, 2, 2)),
                2,
                "finite",
            )
        },
    ]
}

/// Bad input through `forward` is an error naming the offending value on every path of every
/// loss, never a panic and never a silently computed loss.
#[test]
fn bad_inputs_are_errors_naming_the_value() {
    let mut failures = Vec::new();
    let mut tried = 0;
    for b in bad_inputs() {
        for name in LOSSES {
            let kernels = match b.kernel {
                Some(k) => vec![k],
                None => vec![Kernel::Fused, Kernel::Portable, Kernel::Auto],
            };
            for kernel in kernels {
                // Zero classes: the losses built from counts or weights refuse to be built
                // (`tests/config.rs`, `class_weights`), so there is nothing to call.
                if b.n_classes == 0
                    && matches!(
                        name,
                        "weighted_ce" | "balanced_ce" | "cross_entropy_weighted"
                    )
                {
                    continue;
                }
                tried += 1;
                let r = catch_unwind(AssertUnwindSafe(|| {
                    let mut loss = build(name, b.n_classes, kernel, None);
                    loss.forward(&b.logits, &b.target).map(|v| format!("{v}"))
                }));
                let what = format!("{} | {name} {kernel:?}", b.what);
                match r {
                    Err(_) => failures.push(format!("{what}: panicked")),
                    Ok(Ok(v)) => failures.push(format!("{what}: accepted, gave {v}")),
                    Ok(Err(e)) if !e.to_string().contains(b.names) => {
                        failures.push(format!("{what}: error does not name `{}`: {e}", b.names))
                    }
                    Ok(Err(_)) => {}
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {tried}:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Tversky weights are bounded: α or β of 1e200 made the denominator overflow into NaN, with the
/// fused and portable paths disagreeing.
#[test]
fn absurd_tversky_weights_are_refused() {
    use recallseg_losses::{LossConfig, LossContext, Tversky};
    let e = Tversky::new(4)
        .with_alpha_beta(1e200, 0.5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("alpha") && e.contains("1000000"), "{e}");
    assert!(Tversky::new(4).with_alpha_beta(0.5, 2e6).is_err());
    assert!(Tversky::new(4).with_alpha_beta(0.3, 0.7).is_ok());
    let cfg: LossConfig = toml::from_str("name = \"tversky\"\nalpha = 1e300\nbeta = 0.5").unwrap();
    let e = match cfg.build(&LossContext::new(4)) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("alpha = 1e300 was accepted"),
    };
    assert!(e.contains("alpha"), "{e}");
}

#[test]
fn a_batch_without_valid_pixels_reports_no_stale_weights() {
    for name in ["recall_ce", "precision_ce", "focal", "ohem"] {
        for kernel in [Kernel::Fused, Kernel::Portable] {
            let mut loss = build(name, 3, kernel, None);
            let dev = Device::Cpu;
            let logits = Tensor::new(&[[[[1f32, 0.0]], [[0.0, 1.0]], [[0.5, 0.5]]]], &dev).unwrap();
            let labels = Tensor::new(&[[[0u8, 1]]], &dev).unwrap();
            loss.forward(&logits, &labels).unwrap();
            assert!(loss.last_class_weights().is_some(), "{name} {kernel:?}");
            let ignored = Tensor::new(&[[[255u8, 255]]], &dev).unwrap();
            loss.forward(&logits, &ignored).unwrap();
            assert_eq!(loss.last_class_weights(), None, "{name} {kernel:?}");
        }
    }
}
