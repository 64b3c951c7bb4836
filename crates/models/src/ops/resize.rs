//! Differentiable bilinear resize of `(N, C, H, W)` tensors.
//!
//! candle 0.11's `upsample_bilinear2d` has no backward pass. Bilinear interpolation is separable
//! and linear in the input, so resizing is two matrix products with interpolation matrices:
//! `out = A_h · x · A_wᵀ`, where row `i` of `A_h` (`H_out × H_in`) holds the two weights that
//! output row `i` takes from the input rows (likewise for `A_w`). The backward pass is then
//! candle's own matmul backward, exact on every device. The matrices are built on the host (they
//! are tiny) and follow PyTorch's `F.interpolate(mode="bilinear")` conventions exactly:
//!
//! * `align_corners = false`: source coordinate `s = (d + 0.5) · in / out − 0.5`, clamped at 0;
//! * `align_corners = true`: `s = d · (in − 1) / (out − 1)` (0 when `out == 1`);
//!
//! then `i0 = ⌊s⌋`, `i1 = min(i0 + 1, in − 1)`, `λ = s − i0`, weights `1 − λ` and `λ`.

use candle_core::{DType, Device, Result, Tensor};

/// The `(out_len × in_len)` interpolation weights for one axis, row-major, in f64.
pub fn interpolation_weights(in_len: usize, out_len: usize, align_corners: bool) -> Vec<f64> {
    let mut m = vec![0.0f64; out_len * in_len];
    if in_len == 0 || out_len == 0 {
        return m;
    }
    for d in 0..out_len {
        let src = if align_corners {
            if out_len > 1 {
                d as f64 * (in_len as f64 - 1.0) / (out_len as f64 - 1.0)
            } else {
                0.0
            }
        } else {
            ((d as f64 + 0.5) * in_len as f64 / out_len as f64 - 0.5).max(0.0)
        };
        let i0 = (src.floor() as usize).min(in_len - 1);
        let i1 = (i0 + 1).min(in_len - 1);
        let lambda = src - i0 as f64;
        m[d * in_len + i0] += 1.0 - lambda;
        m[d * in_len + i1] += lambda;
    }
    m
}

fn weights_tensor(
    in_len: usize,
    out_len: usize,
    align_corners: bool,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let w = interpolation_weights(in_len, out_len, align_corners);
    Tensor::from_vec(w, (out_len, in_len), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)
}

/// Bilinearly resizes `x` `(N, C, H, W)` to `(N, C, out_h, out_w)`, differentiably.
///
/// Matches PyTorch's `F.interpolate(x, size=(out_h, out_w), mode="bilinear",
/// align_corners=align_corners)`. Returns `x` unchanged when the size already matches.
pub fn resize_bilinear(
    x: &Tensor,
    out_h: usize,
    out_w: usize,
    align_corners: bool,
) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if out_h == 0 || out_w == 0 {
        candle_core::bail!("resize_bilinear: output size must be positive, got {out_h}x{out_w}")
    }
    if h == out_h && w == out_w {
        return Ok(x.clone());
    }
    if h == 1 && w == 1 {
        // Every output pixel equals the single input pixel: a broadcast (differentiable).
        return x.broadcast_as((n, c, out_h, out_w))?.contiguous();
    }
    let (dtype, device) = (x.dtype(), x.device());
    // Width: (N·C·H, W) × (W, W_out).
    let aw_t = weights_tensor(w, out_w, align_corners, dtype, device)?.t()?;
    let y = x
        .contiguous()?
        .reshape((n * c * h, w))?
        .matmul(&aw_t.contiguous()?)?;
    // Height: bring H last, (N·C·W_out, H) × (H, H_out), then back.
    let y = y
        .reshape((n * c, h, out_w))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((n * c * out_w, h))?;
    let ah_t = weights_tensor(h, out_h, align_corners, dtype, device)?
        .t()?
        .contiguous()?;
    y.matmul(&ah_t)?
        .reshape((n * c, out_w, out_h))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((n, c, out_h, out_w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_sum_to_one() {
        for &(i, o, ac) in &[
            (5, 9, false),
            (5, 9, true),
            (9, 4, false),
            (7, 1, true),
            (1, 3, false),
        ] {
            let m = interpolation_weights(i, o, ac);
            for r in 0..o {
                let s: f64 = m[r * i..(r + 1) * i].iter().sum();
                assert!(
                    (s - 1.0).abs() < 1e-12,
                    "{i}->{o} ac={ac} row {r} sums to {s}"
                );
            }
        }
    }

    #[test]
    fn identity_size_is_identity() -> Result<()> {
        let x = Tensor::arange(0f32, 24., &Device::Cpu)?.reshape((1, 2, 3, 4))?;
        let y = resize_bilinear(&x, 3, 4, false)?;
        let d = (x - y)?.abs()?.sum_all()?.to_scalar::<f32>()?;
        assert_eq!(d, 0.0);
        Ok(())
    }

    #[test]
    fn align_corners_keeps_corners() -> Result<()> {
        let x = Tensor::new(&[[1f64, 2.], [3., 4.]], &Device::Cpu)?.reshape((1, 1, 2, 2))?;
        let y = resize_bilinear(&x, 3, 3, true)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        assert_eq!(y, vec![1.0, 1.5, 2.0, 2.0, 2.5, 3.0, 3.0, 3.5, 4.0]);
        Ok(())
    }
}
