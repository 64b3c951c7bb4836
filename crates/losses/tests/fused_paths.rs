//! The fused kernels' two backward strategies agree: the first backward pass turns the softmax
//! kept by the forward pass into the gradient in place; a second backward pass over the same
//! graph recomputes it from the logits. A forward pass on logits outside any graph keeps nothing
//! and gives the same value.

mod common;

use candle_core::{DType, Tensor, Var};
use common::{labels, logits, max_abs_diff, scalar};
use recallseg_losses::{Kernel, LossConfig, LossContext};

#[test]
fn kept_and_recomputed_backward_passes_agree() {
    let x = logits(31, (2, 5, 9, 37), 3.0).to_dtype(DType::F32).unwrap();
    let t = labels(31, (2, 9, 37), 4, 0.15);
    let ctx = LossContext::new(5).with_class_pixel_counts(vec![50, 20, 10, 5, 0]);
    for name in [
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
    ] {
        let mut loss = LossConfig::from_name(name).unwrap().build(&ctx).unwrap();
        let var = Var::from_tensor(&x).unwrap();
        let l = loss.forward(var.as_tensor(), &t).unwrap();
        let grad = |g: candle_core::backprop::GradStore| {
            g.get(var.as_tensor())
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
        };
        let g1 = grad(l.backward().unwrap());
        let g2 = grad(l.backward().unwrap());
        assert!(g1.iter().any(|v| *v != 0.0), "{name}: zero gradient");
        let d = max_abs_diff(&g1, &g2);
        assert!(
            d < 1e-7,
            "{name}: kept vs recomputed backward differ by {d:e}"
        );
        // Scaling the loss scales the gradient (the incoming gradient is honoured).
        let l3 = loss.forward(var.as_tensor(), &t).unwrap();
        let g3 = grad((l3 * 3.0).unwrap().backward().unwrap());
        let g1x3: Vec<f64> = g1.iter().map(|v| v * 3.0).collect();
        assert!(max_abs_diff(&g3, &g1x3) < 1e-6, "{name}: scaled gradient");
        // No graph: same value.
        let plain = loss.forward(&x, &t).unwrap();
        assert!((scalar(&plain) - scalar(&l)).abs() < 1e-7, "{name}");
        // Non-contiguous logits take the portable path under Kernel::Auto and agree.
        let xt: Tensor = x
            .transpose(2, 3)
            .unwrap()
            .contiguous()
            .unwrap()
            .transpose(2, 3)
            .unwrap();
        assert!(!xt.is_contiguous());
        let v_nc = scalar(&loss.forward(&xt, &t).unwrap());
        assert!(
            (v_nc - scalar(&l)).abs() < 1e-5,
            "{name}: {v_nc} vs {}",
            scalar(&l)
        );
    }
    let _ = Kernel::Auto;
}
