//! The CPU convolution custom op against PyTorch goldens (float64) and candle's convolution:
//! values and gradients (input, weight, bias) over a grid of shapes, strides, paddings, dilations,
//! odd sizes and batch 1; finite-difference checks (exact, the loss being linear in each argument)
//! on larger, many-tile and Winograd-sized shapes; the fused affine + ReLU entry point; and error
//! handling.

mod conv_common;

use candle_core::{DType, Device, Tensor, Var};
use conv_common::{assert_close, dot, golden, max_abs_diff, run, tensor};
use recallseg_models::ops::{conv2d, conv2d_affine, conv2d_candle, Conv2dGeometry};

fn geom(padding: usize, stride: usize, dilation: usize) -> Conv2dGeometry {
    Conv2dGeometry {
        padding,
        stride,
        dilation,
        groups: 1,
    }
}

/// Every case of the PyTorch golden grid (`conv2d_golden/make_golden.py`: shapes, strides,
/// paddings, dilations, odd sizes, batch 1 and 2, with and without bias). The custom op's value
/// and gradients must match PyTorch's float64 results, and candle's where candle computes them.
#[test]
fn values_and_gradients_match_pytorch_and_candle_over_a_grid() {
    let gold = golden("conv2d_golden.safetensors");
    let mut cases = 0;
    let mut candle_backward_failures = Vec::new();
    while let Some(x) = gold.get(&format!("case{cases:02}.x")) {
        let t = |name: &str| gold[&format!("case{cases:02}.{name}")].clone();
        let geo = t("geom").to_vec1::<i64>().unwrap();
        let g = geom(geo[0] as usize, geo[1] as usize, geo[2] as usize);
        let (w, r) = (t("w"), t("r"));
        let b = (geo[3] == 1).then(|| t("b"));
        let label = format!("case {cases}: x {:?} w {:?} {g:?}", x.dims(), w.dims());
        let k = w.dims()[1..].iter().product::<usize>();
        let k_w = x.dims()[0] * r.dims()[2] * r.dims()[3];
        let k_x = w.dims()[0] * w.dims()[2] * w.dims()[3];

        let (y, gx, gw, gb) = run(conv2d, x, &w, b.as_ref(), &r, g).unwrap();
        assert_close("forward vs PyTorch", &label, &y, &t("y"), k);
        assert_close("input grad vs PyTorch", &label, &gx, &t("gx"), k_x);
        assert_close("weight grad vs PyTorch", &label, &gw, &t("gw"), k_w);
        if let Some(gb) = &gb {
            assert_close("bias grad vs PyTorch", &label, gb, &t("gb"), k_w);
        }

        let y_candle = conv2d_candle(x, &w, b.as_ref(), g).unwrap();
        assert_close("forward vs candle", &label, &y, &y_candle, k);
        // The portable path (candle's convolution, trimmed so that candle 0.11's backward gets
        // strided odd sizes right) must match PyTorch on the whole grid too.
        match run(conv2d_candle, x, &w, b.as_ref(), &r, g) {
            Ok((_, cx, cw, cb)) => {
                assert_close("portable input grad vs PyTorch", &label, &cx, &t("gx"), k_x);
                assert_close(
                    "portable weight grad vs PyTorch",
                    &label,
                    &cw,
                    &t("gw"),
                    k_w,
                );
                if let (Some(a), Some(c)) = (&gb, &cb) {
                    assert_close("portable bias grad vs candle", &label, a, c, k_w);
                }
            }
            Err(e) => candle_backward_failures.push((cases, e.to_string())),
        }
        cases += 1;
    }
    assert_eq!(cases, 32, "golden grid size");
    assert!(
        candle_backward_failures.is_empty(),
        "{candle_backward_failures:?}"
    );
}

/// Forward against candle; gradients against directional central differences, exact up to
/// rounding because `sum(conv(x, w, b) * r)` is linear in each argument.
fn check_forward_and_directional_differences(
    xs: [usize; 4],
    ws: [usize; 4],
    g: Conv2dGeometry,
    seed: u64,
) {
    let (x, w, b) = (
        tensor(&xs, seed),
        tensor(&ws, seed + 1),
        tensor(&[ws[0]], seed + 2),
    );
    let y = conv2d(&x, &w, Some(&b), g).unwrap();
    let label = format!("x {xs:?} w {ws:?} {g:?}");
    let k = ws[1] * ws[2] * ws[3];
    let y_candle = conv2d_candle(&x, &w, Some(&b), g).unwrap();
    assert_close("forward vs candle", &label, &y, &y_candle, k);
    let r = tensor(y.dims(), seed + 3);
    let (_, gx, gw, gb) = run(conv2d, &x, &w, Some(&b), &r, g).unwrap();
    // candle's gradients (f32, direct convolution) as a second, independent reference.
    let (_, cx, cw, _) = run(conv2d_candle, &x, &w, Some(&b), &r, g).unwrap();
    let k_w = xs[0] * y.dims()[2] * y.dims()[3];
    assert_close(
        "input grad vs candle",
        &label,
        &gx,
        &cx,
        ws[0] * ws[2] * ws[3],
    );
    assert_close("weight grad vs candle", &label, &gw, &cw, k_w);
    let loss = |x: &Tensor, w: &Tensor, b: &Tensor| dot(&conv2d(x, w, Some(b), g).unwrap(), &r);
    let step = 1.0;
    let (vx, vw, vb) = (
        tensor(x.dims(), seed + 4),
        tensor(w.dims(), seed + 5),
        tensor(b.dims(), seed + 6),
    );
    let shift = |t: &Tensor, v: &Tensor, s: f64| (t + (v * s).unwrap()).unwrap();
    let fd_x =
        (loss(&shift(&x, &vx, step), &w, &b) - loss(&shift(&x, &vx, -step), &w, &b)) / (2.0 * step);
    let fd_w =
        (loss(&x, &shift(&w, &vw, step), &b) - loss(&x, &shift(&w, &vw, -step), &b)) / (2.0 * step);
    let fd_b =
        (loss(&x, &w, &shift(&b, &vb, step)) - loss(&x, &w, &shift(&b, &vb, -step))) / (2.0 * step);
    // The directional derivative is a sum with much cancellation over up to ~10⁵ terms: its f32
    // rounding scales with the sum of the terms' magnitudes, not with its value.
    let abs = |t: &Tensor| t.abs().unwrap();
    for (what, fd, an, magnitude) in [
        ("input", fd_x, dot(&gx, &vx), dot(&abs(&gx), &abs(&vx))),
        ("weight", fd_w, dot(&gw, &vw), dot(&abs(&gw), &abs(&vw))),
        ("bias", fd_b, dot(gb.as_ref().unwrap(), &vb), 0.0),
    ] {
        assert!(
            (fd - an).abs() < 2e-5 * (1.0 + fd.abs()) + 2e-8 * magnitude,
            "{what} gradient, {label}: directional difference {fd} vs backward {an}"
        );
    }
}

/// Shapes large enough that the kernels split every image into several tiles and the weight
/// gradient into several chunks.
#[test]
fn many_tiles_match_candle_and_directional_differences() {
    for (g, seed) in [(geom(1, 1, 1), 1), (geom(1, 2, 1), 2), (geom(2, 1, 2), 3)] {
        check_forward_and_directional_differences([2, 24, 40, 33], [20, 24, 3, 3], g, seed);
    }
}

/// Sizes at which the forward pass, the stride-1 input gradient and the weight gradient take the
/// Winograd F(2×2, 3×3) path (≥ 64 channels, ≥ 32 tiles over the batch and the dilation phases):
/// a large map with an odd width (partial tiles, several blocks of tiles), and 128 channels on
/// small maps with dilation 2 (layer4 of ResNet at output stride 16) at batch 1 and 2.
#[test]
fn winograd_sized_convolutions_match_candle_and_directional_differences() {
    check_forward_and_directional_differences([1, 128, 32, 33], [128, 128, 3, 3], geom(1, 1, 1), 4);
    check_forward_and_directional_differences([2, 128, 12, 14], [128, 128, 3, 3], geom(2, 1, 2), 5);
    check_forward_and_directional_differences([1, 128, 13, 15], [96, 128, 3, 3], geom(2, 1, 2), 6);
}

/// Inputs of the Winograd golden cases: `((i·2654435761 + 97·seed) mod 2³² >> 8) mod 1000 / 500
/// − 1` in f32, as `make_golden_winograd.py` generates them.
fn formula_values(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let v = (i as u32)
                .wrapping_mul(2654435761)
                .wrapping_add(seed.wrapping_mul(97));
            ((v >> 8) % 1000) as f32 / 500.0 - 1.0
        })
        .collect()
}

/// Shapes on which the forward pass, the input gradient and the weight gradient all take the
/// Winograd F(2×2, 3×3) path (64 channels; a small map with dilation 2 at batch 2, and batch 1
/// with dilation 1; the unit test of `winograd::applies` checks that they do), against PyTorch's
/// float64 results (`conv2d_golden/make_golden_winograd.py`).
#[test]
fn winograd_paths_match_pytorch() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/conv2d_golden/conv2d_golden_winograd.safetensors"
    );
    let gold = candle_core::safetensors::load(path, &Device::Cpu).expect("golden file");
    let mut cases = 0;
    while let Some(geo) = gold.get(&format!("case{cases:02}.geom")) {
        let t = |name: &str| gold[&format!("case{cases:02}.{name}")].clone();
        let geo: Vec<usize> = geo
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|v| v as usize)
            .collect();
        let &[n, ci, co, h, w, p, d] = &geo[..] else {
            panic!("geometry {geo:?}")
        };
        let seed = 10 * cases as u32;
        let (oh, ow) = (h + 2 * p - 2 * d, w + 2 * p - 2 * d);
        let make = |dims: &[usize], s: u32| {
            let len = dims.iter().product();
            Tensor::from_vec(formula_values(len, seed + s), dims, &Device::Cpu).unwrap()
        };
        let (x, wt, b, r) = (
            make(&[n, ci, h, w], 1),
            make(&[co, ci, 3, 3], 2),
            make(&[co], 3),
            make(&[n, co, oh, ow], 4),
        );
        let g = geom(p, 1, d);
        let label = format!(
            "winograd case {cases}: x {:?} w {:?} {g:?}",
            x.dims(),
            wt.dims()
        );
        let (y, gx, gw, gb) = run(conv2d, &x, &wt, Some(&b), &r, g).unwrap();
        assert_close("forward vs PyTorch", &label, &y, &t("y"), ci * 9);
        assert_close("input grad vs PyTorch", &label, &gx, &t("gx"), co * 9);
        assert_close("weight grad vs PyTorch", &label, &gw, &t("gw"), n * oh * ow);
        assert_close(
            "bias grad vs PyTorch",
            &label,
            &gb.unwrap(),
            &t("gb"),
            n * oh * ow,
        );
        cases += 1;
    }
    assert_eq!(cases, 2, "golden cases");
}

/// `conv2d_affine` (scale folded into the weight, shift as bias, ReLU epilogue) against the
/// composition of candle ops it replaces, values and the gradients of all four arguments.
#[test]
fn fused_affine_and_relu_match_the_composed_ops() {
    for (relu, g, seed) in [
        (true, geom(1, 1, 1), 50),
        (false, geom(1, 2, 1), 60),
        (true, geom(2, 1, 2), 70),
    ] {
        let label = format!("relu {relu} {g:?}");
        let x = Var::from_tensor(&tensor(&[2, 6, 11, 9], seed)).unwrap();
        let w = Var::from_tensor(&tensor(&[7, 6, 3, 3], seed + 1)).unwrap();
        let scale = Var::from_tensor(&tensor(&[7], seed + 2)).unwrap();
        let shift = Var::from_tensor(&tensor(&[7], seed + 3)).unwrap();
        let reference = || -> candle_core::Result<Tensor> {
            let y = conv2d_candle(x.as_tensor(), w.as_tensor(), None, g)?
                .broadcast_mul(&scale.as_tensor().reshape((1, 7, 1, 1))?)?
                .broadcast_add(&shift.as_tensor().reshape((1, 7, 1, 1))?)?;
            if relu {
                y.relu()
            } else {
                Ok(y)
            }
        };
        let fused = || {
            conv2d_affine(
                x.as_tensor(),
                w.as_tensor(),
                scale.as_tensor(),
                shift.as_tensor(),
                g,
                relu,
            )
        };
        let (want, got) = (reference().unwrap(), fused().unwrap());
        assert_close("fused forward", &label, &got, &want, 54);
        if relu {
            let negatives = got.lt(0f32).unwrap().to_dtype(DType::F32).unwrap();
            assert_eq!(
                negatives.sum_all().unwrap().to_scalar::<f32>().unwrap(),
                0.0
            );
        }
        let r = tensor(want.dims(), seed + 4);
        let gw = (&want * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gg = (&got * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (what, v) in [
            ("input", &x),
            ("weight", &w),
            ("scale", &scale),
            ("shift", &shift),
        ] {
            let (a, b) = (
                gg.get(v.as_tensor()).unwrap(),
                gw.get(v.as_tensor()).unwrap(),
            );
            assert_close(&format!("{what} grad"), &label, a, b, 2 * 11 * 9);
        }
    }
    let x = tensor(&[1, 2, 4, 4], 1);
    let e = conv2d_affine(
        &x,
        &tensor(&[3, 2, 3, 3], 2),
        &tensor(&[2], 3),
        &tensor(&[3], 4),
        geom(1, 1, 1),
        true,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("scale"), "{e}");
}

#[test]
fn non_contiguous_operands_are_accepted() {
    let x = tensor(&[2, 9, 3, 6], 1).transpose(1, 3).unwrap(); // (2, 6, 3, 9), strided
    let w = tensor(&[4, 3, 6, 2], 2).transpose(1, 2).unwrap(); // (4, 6, 3, 2), strided
    let g = geom(1, 1, 1);
    let a = conv2d(&x, &w, None, g).unwrap();
    let b = conv2d_candle(&x, &w, None, g).unwrap();
    assert!(max_abs_diff(&a, &b) < 1e-4);
}

/// `L(x, w) = Σ conv(x, w)·r` is linear in `x` and in `w`, so a central difference with any step
/// is exact up to rounding: it checks the backward pass without reference to candle.
#[test]
fn gradients_match_central_differences() {
    let g = geom(1, 2, 1);
    let xs = [1, 2, 5, 6];
    let ws = [3, 2, 3, 3];
    let x = Var::from_tensor(&tensor(&xs, 7)).unwrap();
    let w = Var::from_tensor(&tensor(&ws, 8)).unwrap();
    let b = Var::from_tensor(&tensor(&[3], 9)).unwrap();
    let y = conv2d(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), g).unwrap();
    let r = tensor(y.dims(), 10);
    let loss = |x: &Tensor, w: &Tensor, b: &Tensor| -> f64 {
        let y = conv2d(x, w, Some(b), g).unwrap();
        (&y * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    };
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let step = 0.5f32;
    for (var, dims) in [(&x, &xs[..]), (&w, &ws[..]), (&b, &[3][..])] {
        let analytic = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap();
        let analytic = analytic.to_vec1::<f32>().unwrap();
        let base = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for i in 0..base.len() {
            let shifted = |delta: f32| {
                let mut v = base.clone();
                v[i] += delta;
                Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
            };
            let (plus, minus) = (shifted(step), shifted(-step));
            let (lp, lm) = if std::ptr::eq(var, &x) {
                (
                    loss(&plus, w.as_tensor(), b.as_tensor()),
                    loss(&minus, w.as_tensor(), b.as_tensor()),
                )
            } else if std::ptr::eq(var, &w) {
                (
                    loss(x.as_tensor(), &plus, b.as_tensor()),
                    loss(x.as_tensor(), &minus, b.as_tensor()),
                )
            } else {
                (
                    loss(x.as_tensor(), w.as_tensor(), &plus),
                    loss(x.as_tensor(), w.as_tensor(), &minus),
                )
            };
            let fd = (lp - lm) / (2.0 * step as f64);
            assert!(
                (fd - analytic[i] as f64).abs() < 2e-4 * (1.0 + fd.abs()),
                "element {i} of {dims:?}: finite difference {fd} vs backward {}",
                analytic[i]
            );
        }
    }
}

#[test]
fn an_untracked_input_gets_no_gradient_but_the_weight_does() {
    let x = tensor(&[1, 3, 6, 6], 1);
    let w = Var::from_tensor(&tensor(&[2, 3, 3, 3], 2)).unwrap();
    let y = conv2d(&x, w.as_tensor(), None, geom(1, 2, 1)).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&x).is_none());
    assert_eq!(grads.get(w.as_tensor()).unwrap().dims(), &[2, 3, 3, 3]);
}

#[test]
fn other_dtypes_and_groups_take_candles_path() {
    let x = tensor(&[1, 4, 5, 5], 1);
    let w = tensor(&[4, 2, 3, 3], 2);
    let g = Conv2dGeometry {
        groups: 2,
        ..geom(1, 1, 1)
    };
    let a = conv2d(&x, &w, None, g).unwrap();
    let b = conv2d_candle(&x, &w, None, g).unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    let (x64, w64) = (
        x.to_dtype(DType::F64).unwrap(),
        tensor(&[3, 4, 3, 3], 3).to_dtype(DType::F64).unwrap(),
    );
    let y = conv2d(&x64, &w64, None, geom(0, 1, 1)).unwrap();
    assert_eq!((y.dtype(), y.dims()), (DType::F64, &[1, 3, 3, 3][..]));
}

#[test]
fn bad_shapes_are_clear_errors() {
    let x = tensor(&[1, 4, 5, 5], 1);
    let err =
        |x: &Tensor, w: &Tensor, b: Option<&Tensor>, g| conv2d(x, w, b, g).unwrap_err().to_string();
    let e = err(&x, &tensor(&[2, 3, 3, 3], 2), None, geom(1, 1, 1));
    assert!(e.contains("4 channels"), "{e}");
    let e = err(&x, &tensor(&[2, 4, 7, 7], 2), None, geom(0, 1, 1));
    assert!(e.contains("does not fit"), "{e}");
    let e = err(&x, &tensor(&[2, 4, 3, 3], 2), None, geom(1, 0, 1));
    assert!(e.contains("at least 1"), "{e}");
    let e = err(
        &x,
        &tensor(&[2, 4, 3, 3], 2),
        Some(&tensor(&[3], 3)),
        geom(1, 1, 1),
    );
    assert!(e.contains("bias"), "{e}");
    let e = err(
        &tensor(&[4, 5, 5], 1),
        &tensor(&[2, 4, 3, 3], 2),
        None,
        geom(1, 1, 1),
    );
    assert!(e.contains("(N, C_in, H, W)"), "{e}");
}
