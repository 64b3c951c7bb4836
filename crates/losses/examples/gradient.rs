//! A loss and its gradient with respect to the logits: the first thing a user of a loss library
//! does. Run with `cargo run -p recallseg-losses --example gradient`.
//!
//! The logits are a candle `Var` (a tensor autograd tracks); `backward()` returns the gradient
//! store, and `.get(&var)` the gradient of the loss with respect to it, of the logits' shape.

use candle_core::{DType, Device, Tensor, Var};
use recallseg_losses::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dev = Device::Cpu;
    // One image of 2×3 pixels, 3 classes; the last pixel is void (255: no loss, no gradient).
    let logits = Var::from_tensor(&Tensor::new(
        &[[
            [[2.0f32, 0.5, -1.0], [0.0, 1.0, 0.3]],
            [[0.1, 1.5, 0.2], [2.0, -0.5, 0.3]],
            [[-1.0, 0.0, 2.5], [0.4, 0.2, 0.3]],
        ]],
        &dev,
    )?)?;
    // Pixel (1, 1) is a pole (class 2) the logits call road: class 2's recall on the batch is
    // 1/2, so its pixels weigh 1 − 1/2; classes 0 and 1 are all found and weigh 0.
    let target = Tensor::new(&[[[0u8, 1, 2], [1, 2, 255]]], &dev)?;

    let mut loss = RecallCe::new(3).with_ignore_index(255);
    let value = loss.forward(logits.as_tensor(), &target)?;
    let grads = value.backward()?;
    let grad = grads
        .get(logits.as_tensor())
        .ok_or("the logits got no gradient")?;

    println!("recall CE = {:.6}", value.to_scalar::<f32>()?);
    println!("d loss / d logits, shape {:?}:", grad.dims());
    for c in 0..3 {
        let plane: Vec<Vec<f32>> = grad.get(0)?.get(c)?.to_vec2()?;
        println!("  class {c}: {plane:?}");
    }
    assert!(value.to_scalar::<f32>()? > 0.0);
    // The void pixel has no gradient in any class.
    let void: f32 = grad
        .narrow(2, 1, 1)?
        .narrow(3, 2, 1)?
        .abs()?
        .sum_all()?
        .to_scalar()?;
    assert_eq!(void, 0.0);
    // Per class, the gradient sums to 0 over classes at each pixel (softmax).
    let per_pixel = grad
        .sum(1)?
        .abs()?
        .to_dtype(DType::F64)?
        .sum_all()?
        .to_scalar::<f64>()?;
    assert!(per_pixel < 1e-6, "{per_pixel}");
    Ok(())
}
