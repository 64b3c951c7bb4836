//! The crate's API conventions (issue 26): one builder rule, one error type from build to
//! forward and backward, parameters kept in the precision given, the functional forms with
//! options, `WeightedCe` from explicit weights, OHEM keeping exactly `k` pixels, Lovász's
//! classes as a named choice.

use candle_core::{DType, Device, Tensor, Var};
use recallseg_losses::prelude::*;
use recallseg_losses::{
    functional, Dice, Focal, Jaccard, LossOptions, Lovasz, LovaszClasses, Ohem, OhemSelection,
    SoftIou, Tversky, WeightedCe,
};

fn inputs(dtype: DType) -> (Tensor, Tensor) {
    let dev = Device::Cpu;
    let (n, c, h, w) = (2, 4, 3, 5);
    let x: Vec<f64> = (0..n * c * h * w)
        .map(|i| ((i * 37 % 23) as f64 - 11.0) / 4.0)
        .collect();
    let y: Vec<u8> = (0..n * h * w)
        .map(|i| if i % 7 == 3 { 255 } else { (i * 5 % 4) as u8 })
        .collect();
    (
        Tensor::from_vec(x, (n, c, h, w), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap(),
        Tensor::from_vec(y, (n, h, w), &dev).unwrap(),
    )
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// The builder rule: `new(n_classes)` never fails (the paper's defaults); a `with_*` method
/// returns `Result` exactly when its argument can be invalid, and its error names the field.
#[test]
fn constructors_are_infallible_and_checked_setters_name_the_field() {
    // Every loss from its class count alone.
    let _: Vec<Box<dyn SegLoss>> = vec![
        Box::new(CrossEntropy::new(4)),
        Box::new(RecallCe::new(4)),
        Box::new(Focal::new(4)),
        Box::new(Ohem::new(4)),
        Box::new(Lovasz::new(4)),
        Box::new(Tversky::new(4)),
        Box::new(Dice::new(4)),
        Box::new(Jaccard::new(4)),
        Box::new(SoftIou::new(4)),
    ];
    assert_eq!(Focal::new(4).gamma(), Focal::DEFAULT_GAMMA);
    assert_eq!(Ohem::new(4).selection(), Ohem::DEFAULT_SELECTION);
    assert_eq!(Lovasz::new(4).classes(), LovaszClasses::Present);
    let field = |e: LossError| match e {
        LossError::InvalidParameter { field, .. } => field,
        other => panic!("not a parameter error: {other}"),
    };
    assert_eq!(field(Focal::new(4).with_gamma(-1.0).unwrap_err()), "gamma");
    assert_eq!(
        field(Tversky::new(4).with_alpha_beta(f64::NAN, 0.5).unwrap_err()),
        "alpha"
    );
    assert_eq!(
        field(
            Ohem::new(4)
                .with_selection(OhemSelection::KeepCount(0))
                .unwrap_err()
        ),
        "keep_count"
    );
    assert_eq!(
        field(RecallCe::new(4).with_label_smoothing(1.5).unwrap_err()),
        "label_smoothing"
    );
    assert!(matches!(
        CrossEntropy::new(4).with_class_weights(vec![1.0, -1.0, 1.0, 1.0]),
        Err(LossError::InvalidClassWeight { index: 1, .. })
    ));
    assert!(matches!(
        Focal::new(4).with_alpha(vec![1.0; 3]),
        Err(LossError::ClassCountMismatch { got: 3, .. })
    ));
}

/// Build, forward and backward in one `?` chain of a function returning `LossError`, and the
/// same loss inside a function returning candle's result.
#[test]
fn one_error_type_from_build_to_backward() {
    fn in_loss_error() -> Result<f64, LossError> {
        let (x, t) = inputs(DType::F64);
        let x = Var::from_tensor(&x)?;
        let mut loss = Focal::new(4)
            .with_gamma(0.3)?
            .with_class_weights(vec![0.1, 0.2, 1.0 / 3.0, 0.7])?
            .with_kernel(Kernel::Portable);
        let value = loss.forward(x.as_tensor(), &t)?;
        let grads = value.backward()?;
        let g = grads.get(&x).expect("a gradient");
        Ok(g.sqr()?.sum_all()?.to_scalar::<f64>()?)
    }
    fn in_candle_error() -> candle_core::Result<f64> {
        let (x, t) = inputs(DType::F32);
        let mut loss = RecallCe::new(4).with_label_smoothing(0.1)?;
        loss.forward(&x, &t)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()
    }
    assert!(in_loss_error().unwrap() > 0.0);
    assert!(in_candle_error().unwrap() > 0.0);
}

/// A label out of range is `LossError::LabelOutOfRange` on every path, though the fused kernels
/// raise it inside a candle custom op.
#[test]
fn forward_errors_keep_their_variant_on_every_path() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 3, 1, 2), DType::F32, &dev).unwrap();
    let t = Tensor::new(&[[[0u8, 7]]], &dev).unwrap();
    for kernel in [Kernel::Fused, Kernel::Portable] {
        let losses: Vec<Box<dyn SegLoss>> = vec![
            Box::new(CrossEntropy::new(3).with_kernel(kernel)),
            Box::new(Dice::new(3).with_kernel(kernel)),
            Box::new(Lovasz::new(3).with_kernel(kernel)),
        ];
        for mut loss in losses {
            let e = loss.forward(&x, &t).unwrap_err();
            assert!(
                matches!(
                    e,
                    LossError::LabelOutOfRange {
                        label: 7,
                        n_classes: 3,
                        ..
                    }
                ),
                "{} {kernel:?}: {e:?}",
                loss.name()
            );
            assert_eq!(
                e.to_string(),
                "target label 7 is out of range: expected 0..3 or the ignore index 255"
            );
        }
    }
    // Through candle and back: the same error.
    let back = LossError::from(candle_core::Error::from(LossError::NoClasses));
    assert_eq!(back.to_string(), LossError::NoClasses.to_string());
}

/// A candle error carries no backtrace into the message, whatever `RUST_BACKTRACE` says
/// (simulated: candle's `WithBacktrace` built by hand, so no process-wide variable is set).
#[test]
fn display_never_carries_a_backtrace() {
    let inner = candle_core::Error::Msg("device out of memory".into());
    let with_bt = candle_core::Error::WithBacktrace {
        inner: Box::new(inner),
        backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
    };
    assert!(
        with_bt.to_string().lines().count() > 1,
        "candle's own message has the backtrace"
    );
    let e = LossError::from(with_bt.context("step 3"));
    assert_eq!(e.to_string(), "step 3: device out of memory");
    match &e {
        LossError::Candle(c) => assert!(matches!(c.inner(), candle_core::Error::Context { .. })),
        other => panic!("{other:?}"),
    }
}

/// Parameters keep their precision: an f64 loss uses γ, α and the weights as given, an f32 loss
/// the same values rounded to f32 (so γ = 0.3 and γ = 0.3f32 are one f32 loss, two f64 losses).
#[test]
fn parameters_keep_the_precision_given() {
    let rounded = 0.3f32 as f64;
    for (dtype, same) in [(DType::F32, true), (DType::F64, false)] {
        let (x, t) = inputs(dtype);
        let value = |g: f64| {
            let mut l = Focal::new(4)
                .with_gamma(g)
                .unwrap()
                .with_alpha(vec![0.1, 1.0 / 3.0, 0.7, 0.45])
                .unwrap()
                .with_kernel(Kernel::Portable);
            scalar(&l.forward(&x, &t).unwrap())
        };
        assert_eq!(value(0.3) == value(rounded), same, "{dtype:?}");
    }
    let w = vec![0.1, 0.2, 1.0 / 3.0, 0.7];
    let loss = CrossEntropy::new(4).with_class_weights(w.clone()).unwrap();
    assert_eq!(loss.class_weights(), Some(&w[..]));
}

/// `WeightedCe::from_weights` is cross entropy with those static weights, reported as its
/// class weights.
#[test]
fn weighted_ce_from_explicit_weights() {
    let (x, t) = inputs(DType::F32);
    let w = vec![0.5, 2.0, 1.0, 0.25];
    let mut a = WeightedCe::from_weights(w.clone()).unwrap();
    let mut b = CrossEntropy::new(4).with_class_weights(w.clone()).unwrap();
    let (va, vb) = (a.forward(&x, &t).unwrap(), b.forward(&x, &t).unwrap());
    assert_eq!(scalar(&va).to_bits(), scalar(&vb).to_bits());
    assert_eq!(a.name(), "weighted_ce");
    let reported: Vec<f32> = w.iter().map(|&v| v as f32).collect();
    assert_eq!(a.last_class_weights(), Some(reported));
    assert!(WeightedCe::from_weights(vec![1.0, f64::INFINITY]).is_err());
}

/// OHEM with `KeepCount(k)`: the mean cross entropy of exactly the `k` hardest valid pixels,
/// on both implementations; all valid pixels when there are fewer.
#[test]
fn ohem_keeps_exactly_k_pixels() {
    let (x, t) = inputs(DType::F64);
    let ce = functional::cross_entropy(&x, &t, &LossOptions::new(4).with_kernel(Kernel::Portable))
        .unwrap();
    assert!(scalar(&ce) > 0.0);
    // Per-pixel CE by hand, sorted.
    let logp = candle_nn::ops::log_softmax(&x, 1).unwrap();
    let (lp, tv) = (
        logp.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
        t.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
    );
    let (c, hw) = (4, 15);
    let mut per_pixel: Vec<f64> = tv
        .iter()
        .enumerate()
        .filter(|(_, &y)| y != 255)
        .map(|(i, &y)| {
            let (img, p) = (i / hw, i % hw);
            -lp[img * c * hw + y as usize * hw + p]
        })
        .collect();
    per_pixel.sort_by(|a, b| b.total_cmp(a));
    let n_valid = per_pixel.len();
    for k in [1, 5, n_valid, n_valid + 10] {
        let kept = k.min(n_valid);
        let want: f64 = per_pixel[..kept].iter().sum::<f64>() / kept as f64;
        for (dtype, kernel, tol) in [
            (DType::F64, Kernel::Portable, 1e-12),
            (DType::F32, Kernel::Fused, 1e-5),
        ] {
            let mut l = Ohem::new(4)
                .with_selection(OhemSelection::KeepCount(k))
                .unwrap()
                .with_kernel(kernel);
            let got = scalar(&l.forward(&x.to_dtype(dtype).unwrap(), &t).unwrap());
            assert!(
                (got - want).abs() < tol,
                "k = {k} {kernel:?}: {got} vs {want}"
            );
            let kept_fraction: f64 = l
                .last_class_weights()
                .unwrap()
                .iter()
                .zip(0..c)
                .map(|(f, class)| {
                    let n = tv.iter().filter(|&&y| y as usize == class).count();
                    if n == 0 {
                        0.0
                    } else {
                        *f as f64 * n as f64
                    }
                })
                .sum();
            assert!(
                (kept_fraction - kept as f64).abs() < 1e-3,
                "k = {k}: {kept_fraction}"
            );
        }
    }
}

/// The functional forms: one per loss (Jaccard included, Lovász's classes named) and
/// `configured` for every option; each equals its loss object.
#[test]
fn functional_forms_cover_the_options() {
    let (x, t) = inputs(DType::F32);
    let opts = LossOptions::new(4);
    let f = functional::jaccard(&x, &t, &opts).unwrap();
    let o = Jaccard::new(4).forward(&x, &t).unwrap();
    assert_eq!(scalar(&f).to_bits(), scalar(&o).to_bits());
    // Class 3 absent: averaging over all classes differs from the present ones.
    let t3 = Tensor::from_vec(
        (0..30u8).map(|i| i % 3).collect::<Vec<_>>(),
        (2, 3, 5),
        &Device::Cpu,
    )
    .unwrap();
    let all = functional::lovasz(&x, &t3, LovaszClasses::All, &opts).unwrap();
    let present = functional::lovasz(&x, &t3, LovaszClasses::Present, &opts).unwrap();
    let o = Lovasz::new(4)
        .with_classes(LovaszClasses::All)
        .forward(&x, &t3)
        .unwrap();
    assert_eq!(scalar(&all).to_bits(), scalar(&o).to_bits());
    assert_ne!(scalar(&all), scalar(&present));
    let cfg: LossConfig =
        toml::from_str("name = \"dice\"\nsmooth = 1.0\nlog_loss = true\nclasses = [0, 2]").unwrap();
    let f = functional::configured(&cfg, &LossContext::new(4), &x, &t).unwrap();
    let o = Dice::new(4)
        .with_smooth(1.0)
        .unwrap()
        .with_log_loss(true)
        .with_classes(vec![0, 2])
        .unwrap()
        .forward(&x, &t)
        .unwrap();
    assert_eq!(scalar(&f).to_bits(), scalar(&o).to_bits());
    let cfg: LossConfig = toml::from_str("name = \"ohem\"\nkeep_count = 5").unwrap();
    let f = functional::configured(&cfg, &LossContext::new(4), &x, &t).unwrap();
    let o = functional::ohem(&x, &t, OhemSelection::KeepCount(5), &opts).unwrap();
    assert_eq!(scalar(&f).to_bits(), scalar(&o).to_bits());
    let bad: LossConfig =
        toml::from_str("name = \"ohem\"\nkeep_count = 5\nkeep_ratio = 0.5").unwrap();
    assert!(functional::configured(&bad, &LossContext::new(4), &x, &t).is_err());
}
