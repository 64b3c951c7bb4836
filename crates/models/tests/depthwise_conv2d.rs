//! The depthwise CPU convolution (`groups == C_in == C_out`) against PyTorch goldens (float64,
//! `conv2d_golden/make_depthwise_golden.py`) and candle's grouped convolution: values and
//! gradients (input, weight, bias) over a grid of kernels, strides, paddings, dilations (taps that
//! only read padding included), odd sizes, batch 1 and 2; element-wise and directional finite
//! differences; bitwise determinism (across runs and rayon thread counts); an untracked input;
//! the fused affine + ReLU entry point; and the dispatch rule.

mod conv_common;

use candle_core::{DType, Device, Tensor, Var};
use conv_common::{assert_close, dot, golden, max_abs_diff, run, tensor, to_vec, tol};
use recallseg_models::ops::{
    conv2d, conv2d_affine, conv2d_candle, conv2d_path, Conv2dGeometry, Conv2dPath,
};

/// Depthwise geometry for `c` channels.
fn dw(c: usize, padding: usize, stride: usize, dilation: usize) -> Conv2dGeometry {
    Conv2dGeometry {
        padding,
        stride,
        dilation,
        groups: c,
    }
}

/// Every case of the PyTorch golden grid: kernels 3×3, 5×5, 1×1, 3×1; strides 1 and 2; paddings
/// 0–3, 6 and 12; dilations 1, 2, 6, 12 (with taps that only read padding); odd sizes; batch 1
/// and 2; with and without bias. The depthwise op must match PyTorch's float64 value and
/// gradients, and candle's grouped convolution (value and gradients).
#[test]
fn values_and_gradients_match_pytorch_and_candle_over_a_grid() {
    let gold = golden("depthwise_golden.safetensors");
    let mut cases = 0;
    let mut worst = 0f32;
    while let Some(x) = gold.get(&format!("case{cases:02}.x")) {
        let t = |name: &str| gold[&format!("case{cases:02}.{name}")].clone();
        let geo = t("geom").to_vec1::<i64>().unwrap();
        let c = x.dims()[1];
        let g = dw(c, geo[0] as usize, geo[1] as usize, geo[2] as usize);
        let (w, r) = (t("w"), t("r"));
        let b = (geo[3] == 1).then(|| t("b"));
        let label = format!("case {cases}: x {:?} w {:?} {g:?}", x.dims(), w.dims());
        assert_eq!(
            conv2d_path(x, &w, b.as_ref(), g).unwrap(),
            Conv2dPath::CpuDepthwise,
            "{label}"
        );
        let k = w.dims()[2] * w.dims()[3];
        let k_w = x.dims()[0] * r.dims()[2] * r.dims()[3];

        let (y, gx, gw, gb) = run(conv2d, x, &w, b.as_ref(), &r, g).unwrap();
        let mut check = |what: &str, got: &Tensor, want: &Tensor, k: usize| {
            assert_close(what, &label, got, want, k);
            worst = worst.max(max_abs_diff(got, want) / tol(want, k));
        };
        check("forward vs PyTorch", &y, &t("y"), k);
        check("input grad vs PyTorch", &gx, &t("gx"), k);
        check("weight grad vs PyTorch", &gw, &t("gw"), k_w);
        if let Some(gb) = &gb {
            check("bias grad vs PyTorch", gb, &t("gb"), k_w);
        }

        let (cy, cx, cw, cb) = run(conv2d_candle, x, &w, b.as_ref(), &r, g).unwrap();
        check("forward vs candle", &y, &cy, k);
        check("input grad vs candle", &gx, &cx, k);
        check("weight grad vs candle", &gw, &cw, k_w);
        if let (Some(a), Some(c)) = (&gb, &cb) {
            check("bias grad vs candle", a, c, k_w);
        }
        cases += 1;
    }
    assert_eq!(cases, 20, "golden grid size");
    eprintln!("largest error / tolerance over the grid: {worst:.3}");
}

/// `L = Σ conv(x, w, b)·r` is linear in each argument, so central differences with any step are
/// exact up to rounding: directional derivatives along random directions must match the backward
/// pass, without reference to candle or PyTorch.
#[test]
fn gradients_match_directional_central_differences() {
    for (xs, k, g, seed) in [
        ([2, 16, 23, 19], (3, 3), dw(16, 1, 1, 1), 1),
        ([2, 16, 23, 19], (3, 3), dw(16, 1, 2, 1), 10),
        ([1, 8, 17, 26], (5, 5), dw(8, 4, 1, 2), 20),
        ([2, 6, 12, 24], (3, 3), dw(6, 12, 1, 12), 30),
        ([1, 5, 14, 11], (3, 1), dw(5, 2, 2, 3), 40),
    ] {
        let ws = [xs[1], 1, k.0, k.1];
        let (x, w, b) = (
            tensor(&xs, seed),
            tensor(&ws, seed + 1),
            tensor(&[xs[1]], seed + 2),
        );
        let label = format!("x {xs:?} w {ws:?} {g:?}");
        let y = conv2d(&x, &w, Some(&b), g).unwrap();
        let r = tensor(y.dims(), seed + 3);
        let (_, gx, gw, gb) = run(conv2d, &x, &w, Some(&b), &r, g).unwrap();
        let loss = |x: &Tensor, w: &Tensor, b: &Tensor| dot(&conv2d(x, w, Some(b), g).unwrap(), &r);
        let (vx, vw, vb) = (
            tensor(x.dims(), seed + 4),
            tensor(w.dims(), seed + 5),
            tensor(b.dims(), seed + 6),
        );
        let shift = |t: &Tensor, v: &Tensor, s: f64| (t + (v * s).unwrap()).unwrap();
        let fd_x = (loss(&shift(&x, &vx, 1.0), &w, &b) - loss(&shift(&x, &vx, -1.0), &w, &b)) / 2.0;
        let fd_w = (loss(&x, &shift(&w, &vw, 1.0), &b) - loss(&x, &shift(&w, &vw, -1.0), &b)) / 2.0;
        let fd_b = (loss(&x, &w, &shift(&b, &vb, 1.0)) - loss(&x, &w, &shift(&b, &vb, -1.0))) / 2.0;
        for (what, fd, an) in [
            ("input", fd_x, dot(&gx, &vx)),
            ("weight", fd_w, dot(&gw, &vw)),
            ("bias", fd_b, dot(gb.as_ref().unwrap(), &vb)),
        ] {
            assert!(
                (fd - an).abs() < 2e-5 * (1.0 + fd.abs()),
                "{what} gradient, {label}: directional difference {fd} vs backward {an}"
            );
        }
    }
}

/// Element-wise central differences on a small strided, dilated case: every single entry of the
/// three gradients.
#[test]
fn gradients_match_elementwise_central_differences() {
    let g = dw(3, 2, 2, 2);
    let (xs, ws) = ([2, 3, 7, 6], [3, 1, 3, 3]);
    let x = Var::from_tensor(&tensor(&xs, 7)).unwrap();
    let w = Var::from_tensor(&tensor(&ws, 8)).unwrap();
    let b = Var::from_tensor(&tensor(&[3], 9)).unwrap();
    let y = conv2d(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), g).unwrap();
    let r = tensor(y.dims(), 10);
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let loss = |args: [&Tensor; 3]| dot(&conv2d(args[0], args[1], Some(args[2]), g).unwrap(), &r);
    let vars = [&x, &w, &b];
    for (which, var) in vars.iter().enumerate() {
        let analytic = to_vec(grads.get(var.as_tensor()).unwrap());
        let base = to_vec(var.as_tensor());
        for i in 0..base.len() {
            let shifted = |delta: f32| {
                let mut v = base.clone();
                v[i] += delta;
                Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap()
            };
            let at = |t: Tensor| {
                let mut args = [x.as_tensor(), w.as_tensor(), b.as_tensor()];
                args[which] = &t;
                loss(args)
            };
            let fd = (at(shifted(0.5)) - at(shifted(-0.5))) / 1.0;
            assert!(
                (fd - analytic[i] as f64).abs() < 2e-5 * (1.0 + fd.abs()),
                "argument {which}, element {i}: finite difference {fd} vs backward {}",
                analytic[i]
            );
        }
    }
}

/// Two runs give the same bits, and so do runs on rayon pools of 1 and 3 threads (every sum has
/// a fixed order that does not depend on the scheduling).
#[test]
fn results_are_bitwise_deterministic() {
    let (x, w, b) = (
        tensor(&[2, 24, 21, 30], 11),
        tensor(&[24, 1, 3, 3], 12),
        tensor(&[24], 13),
    );
    let r = tensor(&[2, 24, 11, 15], 14);
    let g = dw(24, 2, 2, 2);
    let bits = || {
        let (y, gx, gw, gb) = run(conv2d, &x, &w, Some(&b), &r, g).unwrap();
        [y, gx, gw, gb.unwrap()]
            .iter()
            .map(|t| to_vec(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    };
    let first = bits();
    assert_eq!(first, bits(), "two runs");
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        assert_eq!(first, pool.install(bits), "{threads} rayon threads");
    }
}

/// An input that does not track gradients gets none; the weight and bias gradients are those of
/// the tracked case.
#[test]
fn an_untracked_input_gets_no_gradient_but_the_weight_does() {
    let x = tensor(&[2, 5, 9, 8], 1);
    let (w0, b0) = (tensor(&[5, 1, 3, 3], 2), tensor(&[5], 3));
    let g = dw(5, 1, 2, 1);
    let r = tensor(&[2, 5, 5, 4], 4);
    let (w, b) = (
        Var::from_tensor(&w0).unwrap(),
        Var::from_tensor(&b0).unwrap(),
    );
    let y = conv2d(&x, w.as_tensor(), Some(b.as_tensor()), g).unwrap();
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&x).is_none());
    let (_, _, gw, gb) = run(conv2d, &x, &w0, Some(&b0), &r, g).unwrap();
    assert_eq!(to_vec(grads.get(w.as_tensor()).unwrap()), to_vec(&gw));
    assert_eq!(
        to_vec(grads.get(b.as_tensor()).unwrap()),
        to_vec(&gb.unwrap())
    );
}

/// `conv2d_affine` on a depthwise convolution (scale folded into the weight, shift as bias, ReLU
/// epilogue) against the composition of candle ops it replaces, values and all four gradients.
#[test]
fn fused_affine_and_relu_match_the_composed_ops() {
    for (relu, stride, seed) in [(true, 1, 50), (false, 2, 60)] {
        let c = 7;
        let g = dw(c, 2, stride, 2);
        let label = format!("relu {relu} {g:?}");
        let x = Var::from_tensor(&tensor(&[2, c, 11, 9], seed)).unwrap();
        let w = Var::from_tensor(&tensor(&[c, 1, 3, 3], seed + 1)).unwrap();
        let scale = Var::from_tensor(&tensor(&[c], seed + 2)).unwrap();
        let shift = Var::from_tensor(&tensor(&[c], seed + 3)).unwrap();
        let want = conv2d_candle(x.as_tensor(), w.as_tensor(), None, g)
            .unwrap()
            .broadcast_mul(&scale.as_tensor().reshape((1, c, 1, 1)).unwrap())
            .unwrap()
            .broadcast_add(&shift.as_tensor().reshape((1, c, 1, 1)).unwrap())
            .unwrap();
        let want = if relu { want.relu().unwrap() } else { want };
        let got = conv2d_affine(
            x.as_tensor(),
            w.as_tensor(),
            scale.as_tensor(),
            shift.as_tensor(),
            g,
            relu,
        )
        .unwrap();
        assert_close("fused forward", &label, &got, &want, 9);
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
}

/// Non-contiguous operands are made contiguous first.
#[test]
fn non_contiguous_operands_are_accepted() {
    let x = tensor(&[2, 9, 4, 6], 1).transpose(1, 3).unwrap(); // (2, 6, 4, 9), strided
    let w = tensor(&[3, 1, 6, 3], 2).transpose(0, 2).unwrap(); // (6, 1, 3, 3), strided
    let g = dw(6, 1, 1, 1);
    assert_eq!(
        conv2d_path(&x, &w, None, g).unwrap(),
        Conv2dPath::CpuDepthwise
    );
    let a = conv2d(&x, &w, None, g).unwrap();
    let b = conv2d_candle(&x, &w, None, g).unwrap();
    assert_close("forward", "non-contiguous", &a, &b, 9);
}

/// Only channel multiplier 1 on CPU f32 takes the depthwise op; other grouped convolutions
/// (channel multiplier 2, groups < C_in) and dtypes take candle's path, and give candle's result.
#[test]
fn dispatch_rule() {
    let x = tensor(&[1, 4, 6, 5], 1);
    let dense = dw(1, 1, 1, 1);
    let w_dense = tensor(&[3, 4, 3, 3], 2);
    assert_eq!(
        conv2d_path(&x, &w_dense, None, dense).unwrap(),
        Conv2dPath::CpuDense
    );
    let w_dw = tensor(&[4, 1, 3, 3], 3);
    assert_eq!(
        conv2d_path(&x, &w_dw, None, dw(4, 1, 1, 1)).unwrap(),
        Conv2dPath::CpuDepthwise
    );
    for (w, groups) in [(tensor(&[8, 1, 3, 3], 4), 4), (tensor(&[4, 2, 3, 3], 5), 2)] {
        let g = dw(groups, 1, 1, 1);
        assert_eq!(conv2d_path(&x, &w, None, g).unwrap(), Conv2dPath::Candle);
        let (a, b) = (
            conv2d(&x, &w, None, g).unwrap(),
            conv2d_candle(&x, &w, None, g).unwrap(),
        );
        assert_eq!(max_abs_diff(&a, &b), 0.0);
    }
    let (x64, w64) = (
        x.to_dtype(DType::F64).unwrap(),
        w_dw.to_dtype(DType::F64).unwrap(),
    );
    assert_eq!(
        conv2d_path(&x64, &w64, None, dw(4, 1, 1, 1)).unwrap(),
        Conv2dPath::Candle
    );
    let y = conv2d(&x64, &w64, None, dw(4, 1, 1, 1)).unwrap();
    assert_eq!((y.dtype(), y.dims()), (DType::F64, &[1, 4, 6, 5][..]));
    // A depthwise weight that does not match the channels is a clear error.
    let e = conv2d(&x, &tensor(&[4, 1, 3, 3], 6), None, dw(2, 1, 1, 1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("groups = 2"), "{e}");
    let e = conv2d(&x, &tensor(&[4, 1, 9, 3], 6), None, dw(4, 1, 1, 1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not fit"), "{e}");
}
