//! Property tests: on random shapes (block boundaries, tiny images, single classes), random
//! ignore fractions and random logits, the fused kernels agree with the portable path, and the
//! losses stay finite and non-negative.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{max_abs_diff, value_and_grad};
use proptest::prelude::*;
use recallseg_losses::LossBuilder;
use recallseg_losses::LovaszClasses;
use recallseg_losses::{
    Dice, Focal, Kernel, Lovasz, Ohem, OhemSelection, RecallCe, SegLoss, SoftIou, Tversky,
};

fn build(which: u8, c: usize, k: Kernel) -> Box<dyn SegLoss> {
    match which % 7 {
        0 => Box::new(RecallCe::new(c).with_kernel(k)),
        1 => Box::new(Focal::new(c).with_gamma(1.5).unwrap().with_kernel(k)),
        2 => Box::new(
            Ohem::new(c)
                .with_selection(OhemSelection::KeepRatio(0.5))
                .unwrap()
                .with_kernel(k),
        ),
        3 => Box::new(SoftIou::new(c).with_kernel(k)),
        4 => Box::new(Dice::new(c).with_kernel(k)),
        5 => Box::new(
            Tversky::new(c)
                .with_alpha_beta(0.3, 0.7)
                .unwrap()
                .with_kernel(k),
        ),
        _ => Box::new(
            Lovasz::new(c)
                .with_classes(if which % 2 == 0 {
                    LovaszClasses::Present
                } else {
                    LovaszClasses::All
                })
                .with_kernel(k),
        ),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn fused_matches_portable_on_random_shapes(
        n in 1usize..3,
        c in 1usize..6,
        h in 1usize..5,
        w in 1usize..140,
        which in 0u8..14,
        ignore_pct in 0u32..60,
        seed in 0u64..1_000_000,
    ) {
        let x64 = common::logits(seed, (n, c, h, w), 4.0);
        let t = common::labels(seed, (n, h, w), c as u8, ignore_pct as f64 / 100.0);
        let x32 = x64.to_dtype(DType::F32).unwrap();
        let x64r = x32.to_dtype(DType::F64).unwrap();
        let (vp, gp) = value_and_grad(build(which, c, Kernel::Portable).as_mut(), &x64r, &t);
        let (vf, gf) = value_and_grad(build(which, c, Kernel::Fused).as_mut(), &x32, &t);
        prop_assert!(vp.is_finite() && vf.is_finite());
        prop_assert!(vp >= -1e-6, "loss {} is negative", vp);
        prop_assert!((vp - vf).abs() < 2e-5 * vp.abs().max(1.0), "values {} vs {}", vp, vf);
        let d = max_abs_diff(&gp, &gf);
        prop_assert!(d < 2e-5, "gradients differ by {}", d);
    }
}

#[test]
fn single_pixel_single_class() {
    let x = Tensor::new(&[[[[0.3f32]]]], &Device::Cpu).unwrap();
    let t = Tensor::new(&[[[0u8]]], &Device::Cpu).unwrap();
    for which in 0..7 {
        for k in [Kernel::Portable, Kernel::Fused] {
            let (v, g) = value_and_grad(build(which, 1, k).as_mut(), &x, &t);
            assert!(v.is_finite() && v.abs() < 1e-6, "{which} {k:?}: {v}");
            assert!(g.iter().all(|v| v.abs() < 1e-6));
        }
    }
}
