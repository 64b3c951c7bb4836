//! Branch-free `exp` for the fused kernels, written so that loops over slices auto-vectorise.
//!
//! `exp(x) = 2^k · e^r` with `k = round(x / ln 2)` and `|r| <= ln 2 / 2`; `e^r` is a degree-6
//! polynomial (Taylor coefficients, whose truncation error `r^7/7! < 1.3e-7` is below half an
//! `f32` ulp of the result's mantissa range) evaluated in Horner form. Inputs are clamped to
//! `[-87, 0]`, the range the kernels use (logits minus their per-pixel maximum); below `-87`
//! the result is ~1e-38, negligible next to the `exp(0) = 1` term of every softmax sum.

/// `e^x` for `x <= 0`, relative error below 2e-7; `fast_exp(0.0) == 1.0` exactly.
#[inline(always)]
pub(crate) fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split into a part with few mantissa bits (exact products k·LN2_HI) and a remainder.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2^23: adding and subtracting it rounds to the nearest integer (ties to even).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 0.0);
    let k = (x * LOG2E + ROUND) - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // k is in [-126, 0], so 2^k is a normal float built from its exponent bits.
    let scale = f32::from_bits(((k as i32 + 127) as u32) << 23);
    p * scale
}

#[cfg(test)]
mod tests {
    use super::fast_exp;

    #[test]
    fn matches_std_exp_over_the_kernel_range() {
        assert_eq!(fast_exp(0.0), 1.0);
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let want = (x as f64).exp();
            let got = fast_exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_37;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        // Clamped inputs stay finite and tiny.
        assert!(fast_exp(-1000.0) < 1e-37);
        assert!(fast_exp(-1000.0) >= 0.0);
    }
}
