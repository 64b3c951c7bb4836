//! A batch split into shards (data-parallel ranks, gradient-accumulation micro-batches): every
//! [`Sharding::Exact`] loss reproduces the loss of the whole batch. The reference is the same
//! loss's `forward_output` on the concatenated batch: the shares' values sum to it, each shard's
//! gradient is the slice of the whole batch's gradient, and the reported class weights and the
//! state (the recall moving average, which moves once per step) are the whole batch's. Both
//! implementations (fused and portable) and splits 2+2 and 1+2+1 (the last shard with every pixel
//! ignored) are checked.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{labels, logits};
use recallseg_losses::LovaszClasses;
use recallseg_losses::{
    BalancedCe, CombinedLoss, CrossEntropy, Dice, Focal, Jaccard, Kernel, LossBuilder, Lovasz,
    Ohem, OhemSelection, PrecisionCe, RecallCe, RecallVariant, SegLoss, ShardStatistics, Sharding,
    SoftIou, Tversky, WeightMode, WeightedCe,
};

const C: usize = 5;
const COUNTS: [u64; C] = [50, 20, 10, 5, 1];

/// A batch of 4 images, f32 logits; image 3 has every pixel ignored.
fn batch(seed: u64) -> (Tensor, Tensor) {
    let x = logits(seed, (4, C, 6, 7), 3.0)
        .to_dtype(DType::F32)
        .unwrap();
    let t = labels(seed, (4, 6, 7), C as u8, 0.2);
    let t = Tensor::cat(
        &[
            &t.narrow(0, 0, 3).unwrap(),
            &Tensor::full(255u8, (1, 6, 7), &Device::Cpu).unwrap(),
        ],
        0,
    )
    .unwrap();
    (x, t)
}

fn grad_of(l: &Tensor, v: &Var) -> Vec<f64> {
    l.backward()
        .unwrap()
        .get(v.as_tensor())
        .expect("the loss reaches the logits")
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

fn value(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// What one step gives: value, gradient, reported weights, state afterwards.
struct Step {
    value: f64,
    grad: Vec<f64>,
    weights: Option<Vec<f32>>,
    state: Option<Vec<f32>>,
}

fn whole(loss: &mut dyn SegLoss, x: &Tensor, t: &Tensor) -> Step {
    let v = Var::from_tensor(x).unwrap();
    let out = loss.forward_output(v.as_tensor(), t).unwrap();
    Step {
        value: value(&out.loss),
        grad: grad_of(&out.loss, &v),
        weights: out.class_weights,
        state: loss.state(),
    }
}

fn sharded(loss: &mut dyn SegLoss, x: &Tensor, t: &Tensor, split: &[usize]) -> Step {
    let mut parts = Vec::new();
    let mut at = 0;
    for &n in split {
        parts.push((
            x.narrow(0, at, n).unwrap().contiguous().unwrap(),
            t.narrow(0, at, n).unwrap().contiguous().unwrap(),
        ));
        at += n;
    }
    let mut sum: Option<ShardStatistics> = None;
    for (xs, ts) in &parts {
        let st = loss.shard_statistics(xs, ts).unwrap();
        match sum.as_mut() {
            None => sum = Some(st),
            Some(s) => s.add(&st).unwrap(),
        }
    }
    loss.prepare_step(&sum.unwrap()).unwrap();
    let (mut total, mut grad, mut weights) = (0.0, Vec::new(), None);
    for (xs, ts) in &parts {
        let v = Var::from_tensor(xs).unwrap();
        let out = loss.forward_shard(v.as_tensor(), ts).unwrap();
        total += value(&out.loss);
        grad.extend(grad_of(&out.loss, &v));
        weights = out.class_weights;
    }
    assert_eq!(weights, loss.last_class_weights());
    Step {
        value: total,
        grad,
        weights,
        state: loss.state(),
    }
}

fn close_f32(a: &Option<Vec<f32>>, b: &Option<Vec<f32>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.len() == b.len()
                && a.iter().zip(b).all(|(x, y)| {
                    (x.is_nan() && y.is_nan()) || (x - y).abs() <= 1e-6 * x.abs().max(1.0)
                })
        }
        _ => false,
    }
}

fn assert_same(name: &str, want: &Step, got: &Step) {
    let tol = 1e-6 * want.value.abs().max(1e-3);
    assert!(
        (want.value - got.value).abs() <= tol,
        "{name}: shares sum to {} but the whole batch gives {}",
        got.value,
        want.value
    );
    let gmax = want.grad.iter().fold(0f64, |m, v| m.max(v.abs()));
    let d = want
        .grad
        .iter()
        .zip(&got.grad)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    assert_eq!(want.grad.len(), got.grad.len());
    assert!(
        d <= 1e-6 * gmax.max(1e-6),
        "{name}: gradients differ by {d:e} (largest {gmax:e})"
    );
    assert!(gmax > 0.0, "{name}: zero gradient");
    assert!(
        close_f32(&want.weights, &got.weights),
        "{name}: weights {:?} vs {:?}",
        want.weights,
        got.weights
    );
    assert!(
        close_f32(&want.state, &got.state),
        "{name}: state {:?} vs {:?}",
        want.state,
        got.state
    );
}

type Make = Box<dyn Fn(Kernel) -> Box<dyn SegLoss>>;

fn sw() -> Vec<f64> {
    vec![1.0, 0.5, 2.0, 1.5, 0.0]
}

/// Every exact loss with some options, and whether its statistics read the logits.
fn exact_losses() -> Vec<(&'static str, bool, Make)> {
    let recall = |v: RecallVariant| -> Make {
        Box::new(move |k| Box::new(RecallCe::new(C).with_variant(v).with_kernel(k)))
    };
    vec![
        (
            "ce",
            false,
            Box::new(|k| Box::new(CrossEntropy::new(C).with_kernel(k))),
        ),
        (
            "ce weights smoothing",
            false,
            Box::new(|k| {
                Box::new(
                    CrossEntropy::new(C)
                        .with_label_smoothing(0.1)
                        .unwrap()
                        .with_class_weights(sw())
                        .unwrap()
                        .with_kernel(k),
                )
            }),
        ),
        (
            "weighted_ce",
            false,
            Box::new(|k| {
                Box::new(
                    WeightedCe::from_counts(&COUNTS, WeightMode::MedianFrequency)
                        .unwrap()
                        .with_kernel(k),
                )
            }),
        ),
        (
            "balanced_ce smoothing",
            false,
            Box::new(|k| {
                Box::new(
                    BalancedCe::from_counts(&COUNTS, None)
                        .unwrap()
                        .with_label_smoothing(0.05)
                        .unwrap()
                        .with_kernel(k),
                )
            }),
        ),
        ("recall eq5", true, recall(RecallVariant::Eq5)),
        (
            "recall weights smoothing",
            true,
            Box::new(|k| {
                Box::new(
                    RecallCe::new(C)
                        .with_label_smoothing(0.1)
                        .unwrap()
                        .with_class_weights(sw())
                        .unwrap()
                        .with_kernel(k),
                )
            }),
        ),
        ("recall paper_code", true, recall(RecallVariant::PaperCode)),
        (
            "recall paper_loss_py",
            true,
            recall(RecallVariant::PaperLossPy),
        ),
        (
            "recall paper_loss_py_blend weights",
            true,
            Box::new(|k| {
                Box::new(
                    RecallCe::new(C)
                        .with_variant(RecallVariant::PaperLossPyBlend)
                        .with_class_weights(sw())
                        .unwrap()
                        .with_kernel(k),
                )
            }),
        ),
        ("recall per_image", false, recall(RecallVariant::PerImage)),
        (
            "precision",
            true,
            Box::new(|k| Box::new(PrecisionCe::new(C).with_kernel(k))),
        ),
        (
            "focal",
            false,
            Box::new(|k| Box::new(Focal::new(C).with_gamma(2.0).unwrap().with_kernel(k))),
        ),
        (
            "focal alpha weights",
            false,
            Box::new(|k| {
                Box::new(
                    Focal::new(C)
                        .with_gamma(1.0)
                        .unwrap()
                        .with_alpha(vec![0.25, 1.0, 0.5, 2.0, 1.0])
                        .unwrap()
                        .with_class_weights(sw())
                        .unwrap()
                        .with_kernel(k),
                )
            }),
        ),
        (
            "ohem threshold weights",
            true,
            Box::new(|k| {
                Box::new(
                    Ohem::new(C)
                        .with_selection(OhemSelection::Threshold(0.3))
                        .unwrap()
                        .with_class_weights(sw())
                        .unwrap()
                        .with_kernel(k),
                )
            }),
        ),
        (
            "soft_iou",
            false,
            Box::new(|k| Box::new(SoftIou::new(C).with_kernel(k))),
        ),
        (
            "soft_iou weights",
            false,
            Box::new(|k| {
                Box::new(
                    SoftIou::new(C)
                        .with_class_weights(sw())
                        .unwrap()
                        .with_kernel(k),
                )
            }),
        ),
        (
            "lovasz per_image",
            false,
            Box::new(|k| {
                Box::new(
                    Lovasz::new(C)
                        .with_per_image(true)
                        .with_class_weights(sw())
                        .unwrap()
                        .with_kernel(k),
                )
            }),
        ),
        (
            "lovasz per_image all classes",
            false,
            Box::new(|k| {
                Box::new(
                    Lovasz::new(C)
                        .with_classes(LovaszClasses::All)
                        .with_per_image(true)
                        .with_kernel(k),
                )
            }),
        ),
        (
            "dice",
            true,
            Box::new(|k| Box::new(Dice::new(C).with_kernel(k))),
        ),
        (
            "dice smooth log classes",
            true,
            Box::new(|k| {
                Box::new(
                    Dice::new(C)
                        .with_smooth(1.0)
                        .unwrap()
                        .with_log_loss(true)
                        .with_classes(vec![0, 2, 3])
                        .unwrap()
                        .with_kernel(k),
                )
            }),
        ),
        (
            "tversky weights",
            true,
            Box::new(|k| {
                Box::new(
                    Tversky::new(C)
                        .with_alpha_beta(0.3, 0.7)
                        .unwrap()
                        .with_class_weights(sw())
                        .unwrap()
                        .with_kernel(k),
                )
            }),
        ),
        (
            "jaccard smooth",
            true,
            Box::new(|k| Box::new(Jaccard::new(C).with_smooth(0.5).unwrap().with_kernel(k))),
        ),
        (
            "combined recall + lovasz per_image",
            true,
            Box::new(|k| {
                Box::new(
                    CombinedLoss::new()
                        .with_term(0.5, Box::new(RecallCe::new(C).with_kernel(k)))
                        .unwrap()
                        .with_term(
                            0.5,
                            Box::new(Lovasz::new(C).with_per_image(true).with_kernel(k)),
                        )
                        .unwrap(),
                )
            }),
        ),
        (
            "combined ce + dice",
            true,
            Box::new(|k| {
                Box::new(
                    CombinedLoss::new()
                        .with_term(1.0, Box::new(CrossEntropy::new(C).with_kernel(k)))
                        .unwrap()
                        .with_term(2.0, Box::new(Dice::new(C).with_kernel(k)))
                        .unwrap(),
                )
            }),
        ),
        (
            "combined recall + ce",
            true,
            Box::new(|k| {
                Box::new(
                    CombinedLoss::new()
                        .with_term(0.7, Box::new(RecallCe::new(C).with_kernel(k)))
                        .unwrap()
                        .with_term(0.3, Box::new(CrossEntropy::new(C).with_kernel(k)))
                        .unwrap(),
                )
            }),
        ),
        (
            "combined ce + focal",
            false,
            Box::new(|k| {
                Box::new(
                    CombinedLoss::new()
                        .with_term(1.0, Box::new(CrossEntropy::new(C).with_kernel(k)))
                        .unwrap()
                        .with_term(
                            0.5,
                            Box::new(Focal::new(C).with_gamma(2.0).unwrap().with_kernel(k)),
                        )
                        .unwrap(),
                )
            }),
        ),
    ]
}

/// The kernels a loss runs under: the portable path always, the fused kernel unless the loss
/// has an option it does not cover (per-image recall, which `Kernel::Fused` rejects).
fn kernels(name: &str) -> Vec<Kernel> {
    if name.contains("per_image") {
        vec![Kernel::Portable, Kernel::Auto]
    } else {
        vec![Kernel::Fused, Kernel::Portable]
    }
}

#[test]
fn exact_losses_reproduce_the_whole_batch() {
    let (x, t) = batch(7);
    for (name, needs_logits, make) in exact_losses() {
        assert_eq!(
            make(Kernel::Auto).sharding(),
            Sharding::Exact { needs_logits },
            "{name}"
        );
        for k in kernels(name) {
            for split in [&[2usize, 2][..], &[1, 2, 1]] {
                let want = whole(make(k).as_mut(), &x, &t);
                let got = sharded(make(k).as_mut(), &x, &t, split);
                assert_same(&format!("{name} {k:?} {split:?}"), &want, &got);
            }
        }
    }
}

/// The recall moving average moves once per step, as over the whole batch, for several steps.
#[test]
fn recall_moving_average_moves_once_per_step() {
    for k in [Kernel::Fused, Kernel::Portable] {
        let make = || RecallCe::new(C).with_ema(0.8).unwrap().with_kernel(k);
        let (mut a, mut b) = (make(), make());
        for step in 0..3u64 {
            let (x, t) = batch(100 + step);
            let want = whole(&mut a, &x, &t);
            let got = sharded(&mut b, &x, &t, &[1, 2, 1]);
            assert_same(&format!("ema {k:?} step {step}"), &want, &got);
            assert!(want.state.is_some());
        }
    }
}

/// A loss whose statistics do not read the logits gives the same statistics for any values of
/// the right shape (a caller accumulating micro-batches needs no prediction pass first).
#[test]
fn label_only_statistics_ignore_the_logits_values() {
    let (x, t) = batch(3);
    let nan = Tensor::full(f32::NAN, x.shape(), &Device::Cpu).unwrap();
    for (name, needs_logits, make) in exact_losses() {
        let loss = make(Kernel::Auto);
        let real = loss.shard_statistics(&x, &t).unwrap();
        let other = loss.shard_statistics(&nan, &t).unwrap();
        if needs_logits {
            assert!(real != other, "{name}: statistics should read the logits");
        } else {
            assert_eq!(real, other, "{name}");
        }
    }
}

/// A batch without any valid pixel: every share is 0 with a zero gradient, no weights reported.
#[test]
fn a_batch_without_valid_pixels_gives_zero_shares() {
    let (x, _) = batch(5);
    let t = Tensor::full(255u8, (4, 6, 7), &Device::Cpu).unwrap();
    for (name, _, make) in exact_losses() {
        let mut loss = make(Kernel::Auto);
        let want = loss.forward_output(&x, &t).unwrap();
        let got = sharded(make(Kernel::Auto).as_mut(), &x, &t, &[2, 2]);
        assert_eq!(value(&want.loss), 0.0, "{name}");
        assert_eq!(got.value, 0.0, "{name}");
        assert!(got.grad.iter().all(|v| *v == 0.0), "{name}");
        assert!(close_f32(&want.class_weights, &got.weights), "{name}");
    }
}

#[test]
fn per_shard_losses_say_so_and_refuse_statistics() {
    let (x, t) = batch(9);
    let per_shard: Vec<Box<dyn SegLoss>> = vec![
        Box::new(
            Ohem::new(C)
                .with_selection(OhemSelection::KeepRatio(0.7))
                .unwrap(),
        ),
        Box::new(
            Ohem::new(C)
                .with_selection(OhemSelection::Mmseg {
                    threshold: Some(0.7),
                    min_kept: 10,
                    avg_non_ignore: false,
                })
                .unwrap(),
        ),
        Box::new(Lovasz::new(C)),
        Box::new(
            CombinedLoss::new()
                .with_term(1.0, Box::new(RecallCe::new(C)))
                .unwrap()
                .with_term(1.0, Box::new(Lovasz::new(C)))
                .unwrap(),
        ),
    ];
    for mut loss in per_shard {
        let name = loss.name().to_string();
        assert_eq!(loss.sharding(), Sharding::PerShard, "{name}");
        let err = loss.shard_statistics(&x, &t).unwrap_err().to_string();
        assert!(err.contains("per shard"), "{name}: {err}");
        assert!(loss.prepare_step(&ShardStatistics(vec![0.0])).is_err());
        assert!(loss.forward_shard(&x, &t).is_err(), "{name}");
    }
}

#[test]
fn misuse_is_an_error() {
    let (x, t) = batch(11);
    let mut loss = RecallCe::new(C);
    // forward_shard before prepare_step.
    let err = loss.forward_shard(&x, &t).unwrap_err().to_string();
    assert!(err.contains("prepare_step"), "{err}");
    // Statistics of the wrong length (another loss's).
    let other = CrossEntropy::new(C).shard_statistics(&x, &t).unwrap();
    let err = loss.prepare_step(&other).unwrap_err().to_string();
    assert!(err.contains("statistics"), "{err}");
    // Shapes are checked as in forward.
    let bad = x.narrow(1, 0, 3).unwrap();
    assert!(loss.shard_statistics(&bad, &t).is_err());
    // Combined: statistics that are not its own.
    let mut comb = CombinedLoss::new()
        .with_term(1.0, Box::new(RecallCe::new(C)))
        .unwrap();
    assert!(comb.prepare_step(&ShardStatistics(vec![1.0, 5.0])).is_err());
    assert!(comb.prepare_step(&ShardStatistics(vec![])).is_err());
}

/// On the CPU the shares run the fused kernel under `Kernel::Auto` (the training hot path); an
/// option it lacks (per-image recall) falls back to the portable path, as in `forward`.
#[test]
fn shares_take_the_fused_kernel_on_the_cpu() {
    let (x, t) = batch(13);
    let cases: Vec<(Box<dyn SegLoss>, Kernel)> = vec![
        (Box::new(RecallCe::new(C)), Kernel::Fused),
        (
            Box::new(Focal::new(C).with_gamma(2.0).unwrap()),
            Kernel::Fused,
        ),
        (
            Box::new(RecallCe::new(C).with_variant(RecallVariant::PerImage)),
            Kernel::Portable,
        ),
    ];
    for (mut loss, want) in cases {
        sharded(loss.as_mut(), &x, &t, &[2, 2]);
        assert_eq!(loss.last_kernel(), Some(want), "{}", loss.name());
    }
}

/// The argmax statistics are the same from the fused kernel's counting pass (CPU) and from
/// candle's argmax (the portable path), ties included (first maximum), over several pixel blocks.
#[test]
fn fused_and_portable_statistics_agree() {
    // Logits rounded to integers in [-2, 2]: many ties between classes.
    let x = (logits(21, (2, C, 17, 19), 2.5).round().unwrap())
        .to_dtype(DType::F32)
        .unwrap();
    let t = labels(21, (2, 17, 19), C as u8, 0.1);
    let makes: Vec<Make> = vec![
        Box::new(|k| Box::new(RecallCe::new(C).with_kernel(k))),
        Box::new(|k| Box::new(PrecisionCe::new(C).with_kernel(k))),
        Box::new(|k| Box::new(Dice::new(C).with_kernel(k))),
    ];
    for make in makes {
        let f = make(Kernel::Fused).shard_statistics(&x, &t).unwrap();
        let p = make(Kernel::Portable).shard_statistics(&x, &t).unwrap();
        let name = make(Kernel::Auto).name().to_string();
        assert_eq!(f.0.len(), p.0.len());
        for (a, b) in f.0.iter().zip(&p.0) {
            assert!(
                (a - b).abs() <= 1e-9 + 1e-6 * a.abs(),
                "{name}: {f:?} vs {p:?}"
            );
        }
        // Recall's and Precision's counts are integers and equal exactly.
        if name != "dice" {
            assert_eq!(f, p, "{name}");
        }
    }
}
