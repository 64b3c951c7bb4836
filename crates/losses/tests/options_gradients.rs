//! Finite-difference checks of the gradients of the issue-17 loss options (portable path, f64
//! logits), and the fused kernels' gradients against the portable ones for the options they
//! cover.

mod common;

use common::{check_fused_matches_portable, check_gradient, labels, logits};
use recallseg_losses::LovaszClasses;
use recallseg_losses::{
    CrossEntropy, Dice, Focal, Jaccard, Kernel, LossBuilder, LossConfig, LossContext, Lovasz, Ohem,
    OhemSelection, RecallCe, RecallVariant, SegLoss, Tversky,
};

const CONFIGS: &[&str] = &[
    "name = \"focal\"\ngamma = 2.0\nalpha = [0.2, 1.0, 0.6]",
    "name = \"cross_entropy\"\nlabel_smoothing = 0.15",
    "name = \"weighted_ce\"\nlabel_smoothing = 0.1",
    "name = \"balanced_ce\"\nlabel_smoothing = 0.1",
    "name = \"precision_ce\"\nlabel_smoothing = 0.1",
    "name = \"recall_ce\"\nlabel_smoothing = 0.1",
    "name = \"recall_ce\"\nvariant = \"per_image\"",
    "name = \"recall_ce\"\nvariant = \"paper_loss_py\"",
    "name = \"recall_ce\"\nvariant = \"paper_loss_py_blend\"",
    "name = \"lovasz\"\nper_image = true",
    "name = \"lovasz\"\nper_image = true\npresent_only = false",
    "name = \"ohem\"\nthreshold = 0.6\nmin_kept = 2",
    "name = \"ohem\"\nmin_kept = 3\navg_non_ignore = true",
    "name = \"dice\"\nsmooth = 1.0\nlog_loss = true\nclasses = [0, 2]",
    "name = \"tversky\"\nsmooth = 0.5\nlog_loss = true",
    "name = \"jaccard\"\nsmooth = 1.0",
    "name = \"jaccard\"\nlog_loss = true\nclasses = [1]",
    "name = \"combined\"\n[[terms]]\nweight = 0.5\nname = \"recall_ce\"\n\
     [[terms]]\nweight = 0.5\nname = \"lovasz\"",
    "name = \"combined\"\n[[terms]]\nweight = 1.0\nname = \"weighted_ce\"\n\
     [[terms]]\nweight = 0.3\nname = \"dice\"\nsmooth = 1.0",
];

#[test]
fn option_gradients_match_finite_differences() {
    let x = logits(41, (2, 3, 3, 4), 2.0);
    let t = labels(41, (2, 3, 4), 3, 0.2);
    let ctx = LossContext::new(3)
        .with_class_pixel_counts(vec![40, 15, 6])
        .with_class_weights(vec![1.0, 1.5, 0.5]);
    for text in CONFIGS {
        let cfg: LossConfig = toml::from_str(text).unwrap();
        let make = || cfg.build(&ctx).unwrap();
        // Catch the panic to name the config.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_gradient(&make, &x, &t, 2e-6)
        }));
        assert!(r.is_ok(), "finite differences disagree for:\n{text}");
    }
}

/// The fused kernels cover focal α, label smoothing, Lovász per image, mmseg's OHEM, the
/// Dice/Tversky/Jaccard options and the `paper_loss_py` recall variants: same value and gradient as the portable path.
#[test]
fn fused_kernels_cover_the_new_options() {
    let x = logits(43, (2, 4, 5, 6), 3.0);
    let t = labels(43, (2, 5, 6), 4, 0.15);
    type Make = Box<dyn Fn(Kernel) -> Box<dyn SegLoss>>;
    let makers: Vec<Make> = vec![
        Box::new(|k| {
            Box::new(
                Focal::new(4)
                    .with_gamma(2.0)
                    .unwrap()
                    .with_alpha(vec![0.1, 0.5, 1.0, 2.0])
                    .unwrap()
                    .with_kernel(k),
            )
        }),
        Box::new(|k| Box::new(Lovasz::new(4).with_per_image(true).with_kernel(k))),
        Box::new(|k| {
            Box::new(
                Lovasz::new(4)
                    .with_classes(LovaszClasses::All)
                    .with_per_image(true)
                    .with_kernel(k),
            )
        }),
        Box::new(|k| {
            Box::new(
                Ohem::new(4)
                    .with_selection(OhemSelection::Mmseg {
                        threshold: Some(0.7),
                        min_kept: 5,
                        avg_non_ignore: false,
                    })
                    .unwrap()
                    .with_kernel(k),
            )
        }),
        Box::new(|k| {
            Box::new(
                Dice::new(4)
                    .with_smooth(1.0)
                    .unwrap()
                    .with_log_loss(true)
                    .with_classes(vec![1, 3])
                    .unwrap()
                    .with_kernel(k),
            )
        }),
        Box::new(|k| {
            Box::new(
                Tversky::new(4)
                    .with_alpha_beta(0.3, 0.7)
                    .unwrap()
                    .with_smooth(0.5)
                    .unwrap()
                    .with_kernel(k),
            )
        }),
        Box::new(|k| Box::new(Jaccard::new(4).with_log_loss(true).with_kernel(k))),
        Box::new(|k| {
            Box::new(
                RecallCe::new(4)
                    .with_variant(RecallVariant::PaperLossPyBlend)
                    .with_class_weights(vec![1.0, 2.0, 0.5, 1.0])
                    .unwrap()
                    .with_kernel(k),
            )
        }),
    ];
    let mut makers = makers;
    makers.push(Box::new(|k| {
        Box::new(
            RecallCe::new(4)
                .with_label_smoothing(0.2)
                .unwrap()
                .with_class_weights(vec![1.0, 2.0, 0.5, 1.0])
                .unwrap()
                .with_kernel(k),
        )
    }));
    makers.push(Box::new(|k| {
        Box::new(
            CrossEntropy::new(4)
                .with_label_smoothing(0.1)
                .unwrap()
                .with_kernel(k),
        )
    }));
    for make in &makers {
        check_fused_matches_portable(make.as_ref(), &x, &t, 2e-5);
    }
}

#[test]
fn bad_option_values_are_errors_naming_the_field() {
    let ctx = LossContext::new(3);
    for (text, field) in [
        (
            "name = \"cross_entropy\"\nlabel_smoothing = 1.0",
            "label_smoothing",
        ),
        (
            "name = \"recall_ce\"\nlabel_smoothing = -0.1",
            "label_smoothing",
        ),
        ("name = \"focal\"\nalpha = [1.0, -1.0, 1.0]", "alpha"),
        ("name = \"focal\"\nalpha = [1.0, 1.0]", "alpha"),
        (
            "name = \"ohem\"\nkeep_ratio = 0.5\nmin_kept = 3",
            "min_kept",
        ),
        ("name = \"ohem\"\nmin_kept = 0", "min_kept"),
        (
            "name = \"ohem\"\nthreshold = 0.5\navg_non_ignore = true",
            "avg_non_ignore",
        ),
        ("name = \"dice\"\nsmooth = -1.0", "smooth"),
        ("name = \"dice\"\nclasses = [0, 3]", "classes"),
        ("name = \"jaccard\"\nclasses = [1, 1]", "classes"),
        ("name = \"tversky\"\nclasses = []", "classes"),
        (
            "name = \"recall_ce\"\nvariant = \"per_image\"\nema = 0.9",
            "ema",
        ),
        ("name = \"combined\"\nterms = []", "terms"),
        (
            "name = \"combined\"\n[[terms]]\nweight = 0.0\nname = \"dice\"",
            "weight",
        ),
        (
            "name = \"combined\"\n[[terms]]\nweight = 1.0\nname = \"combined\"\nterms = []",
            "terms",
        ),
    ] {
        let cfg: LossConfig = toml::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let err = match cfg.build(&ctx) {
            Ok(_) => panic!("{text}: accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(field), "{text}: {err}");
    }
    // Unknown fields inside a term are errors too, as is a term without weight; options of one
    // loss are not accepted by another.
    for text in [
        "name = \"combined\"\n[[terms]]\nweight = 1.0\nname = \"dice\"\nsmoth = 1.0",
        "name = \"combined\"\n[[terms]]\nname = \"dice\"",
        "name = \"soft_iou\"\nsmooth = 1.0",
        "name = \"focal\"\nlabel_smoothing = 0.1",
    ] {
        assert!(toml::from_str::<LossConfig>(text).is_err(), "{text}");
    }
    // Label smoothing on members it does not apply to is an error of the builder.
    assert!(Focal::new(3).with_gamma(1.0).is_ok());
    // Combined terms round-trip through serde.
    let text = "name = \"combined\"\n[[terms]]\nweight = 0.5\nname = \"recall_ce\"\n\
                [[terms]]\nweight = 0.5\nname = \"lovasz\"\nper_image = true";
    let cfg: LossConfig = toml::from_str(text).unwrap();
    let back: LossConfig = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(cfg, back);
    assert!(!cfg.needs_pixel_counts());
    let wce: LossConfig =
        toml::from_str("name = \"combined\"\n[[terms]]\nweight = 1.0\nname = \"weighted_ce\"")
            .unwrap();
    assert!(wce.needs_pixel_counts());
    assert!(matches!(
        wce.build(&ctx),
        Err(recallseg_losses::LossError::MissingPixelCounts { .. })
    ));
}

/// A combined loss carries its terms' state (Recall's moving average) through
/// `state`/`load_state`, and rejects a malformed one.
#[test]
fn combined_state_round_trips() {
    let text = "name = \"combined\"\n[[terms]]\nweight = 1.0\nname = \"recall_ce\"\nema = 0.9\n\
                [[terms]]\nweight = 1.0\nname = \"dice\"";
    let cfg: LossConfig = toml::from_str(text).unwrap();
    let ctx = LossContext::new(3);
    let x = logits(7, (1, 3, 4, 4), 2.0);
    let t = labels(7, (1, 4, 4), 3, 0.0);
    let mut a = cfg.build(&ctx).unwrap();
    assert_eq!(a.state(), None);
    a.forward(&x, &t).unwrap();
    let st = a.state().unwrap();
    assert_eq!(st.len(), 1 + 3 + 1);
    let mut b = cfg.build(&ctx).unwrap();
    b.load_state(&st).unwrap();
    let x2 = logits(8, (1, 3, 4, 4), 2.0);
    let va = a.forward(&x2, &t).unwrap().to_scalar::<f64>().unwrap();
    let vb = b.forward(&x2, &t).unwrap().to_scalar::<f64>().unwrap();
    assert_eq!(va, vb);
    assert!(b.load_state(&st[..3]).is_err());
    assert!(b.load_state(&[3.0, 0.5, 0.5, 0.5, 0.0, 1.0]).is_err());
    assert_eq!(a.name(), "combined");
    assert_eq!(a.last_kernel(), None);
}
