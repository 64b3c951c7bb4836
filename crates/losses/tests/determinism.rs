//! The fused kernels' value and gradient are bitwise the same whatever the thread count and
//! scheduling: their reductions run over fixed groups merged in a fixed order.

mod common;

use candle_core::{DType, Var};
use common::{labels, logits};
use recallseg_losses::{LossConfig, LossContext};

fn value_and_grad_bits(name: &str) -> (u64, Vec<u32>) {
    // Large enough for many groups of blocks (2 × 37 × 91 pixels, 256 per block).
    let x = logits(5, (2, 6, 37, 91), 3.0).to_dtype(DType::F32).unwrap();
    let t = labels(5, (2, 37, 91), 6, 0.1);
    let ctx = LossContext::new(6).with_class_pixel_counts(vec![50, 20, 10, 5, 3, 1]);
    let mut loss = LossConfig::from_name(name).unwrap().build(&ctx).unwrap();
    let var = Var::from_tensor(&x).unwrap();
    let l = loss.forward(var.as_tensor(), &t).unwrap();
    let v = l.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    let g: Vec<f32> = l
        .backward()
        .unwrap()
        .get(var.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    (v.to_bits(), g.iter().map(|x| x.to_bits()).collect())
}

#[test]
fn fused_losses_are_bitwise_equal_across_thread_counts_and_under_load() {
    let names = ["ce", "recall", "focal", "ohem", "dice", "iou", "lovasz"];
    let reference: Vec<_> = names.iter().map(|n| value_and_grad_bits(n)).collect();
    for threads in [1, 2, 3, 5] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for (n, r) in names.iter().zip(&reference) {
            let got = pool.install(|| value_and_grad_bits(n));
            assert!(&got == r, "{n}: {threads} threads differ");
        }
    }
    // Under concurrent load on the global pool.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                }
                x
            })
        })
        .collect();
    for _ in 0..5 {
        for (n, r) in names.iter().zip(&reference) {
            assert!(&value_and_grad_bits(n) == r, "{n}: differs under load");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for b in busy {
        b.join().unwrap();
    }
}
