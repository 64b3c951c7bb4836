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

/// `ln x` for normal positive `x` (the kernels use it on softmax sums, `x >= 1`), absolute
/// error below 1e-6 relative to `max(1, |ln x|)`.
///
/// `x = 2^e · m` with `m ∈ [√½, √2)`, `ln m = 2 atanh(t)`, `t = (m-1)/(m+1) ∈ [-0.172, 0.172]`,
/// and `atanh` as its odd series up to `t^9` (truncation below `0.172^11/11 < 5e-10`).
#[inline(always)]
pub(crate) fn fast_ln(x: f32) -> f32 {
    const LN2: f32 = std::f32::consts::LN_2;
    let bits = x.to_bits();
    // Exponent relative to √½: shift the mantissa range to [√½, √2).
    let adj = bits.wrapping_sub(0x3f35_04f3);
    let e = ((adj as i32) >> 23) as f32;
    let m = f32::from_bits((adj & 0x007f_ffff).wrapping_add(0x3f35_04f3));
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let s = 1.0 / 9.0;
    let s = s * t2 + 1.0 / 7.0;
    let s = s * t2 + 1.0 / 5.0;
    let s = s * t2 + 1.0 / 3.0;
    let s = s * t2 + 1.0;
    e * LN2 + 2.0 * t * s
}

/// A zeroed `f32` buffer for the fused kernels. On Linux, buffers of 4 MiB and more are advised
/// to use transparent huge pages before they are first touched, which turns ~250 page faults per
/// MiB into one per 2 MiB (their first-touch cost is a large share of a loss step otherwise).
pub(crate) fn kernel_buffer(len: usize) -> Vec<f32> {
    let v = vec![0f32; len];
    #[cfg(target_os = "linux")]
    if len * 4 >= 4 << 20 {
        const HUGE: usize = 2 << 20;
        let p = v.as_ptr() as usize;
        let start = (p + HUGE - 1) & !(HUGE - 1);
        let end = (p + len * 4) & !(HUGE - 1);
        if end > start {
            // SAFETY: an advisory call on whole pages inside memory this vector owns; it changes
            // no contents and its failure is harmless.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::{fast_exp, fast_ln};

    #[test]
    fn fast_ln_matches_std_ln() {
        let mut worst = 0.0f64;
        let mut x = 1e-3f32;
        while x < 1e4 {
            let want = (x as f64).ln();
            let got = fast_ln(x) as f64;
            worst = worst.max((got - want).abs() / want.abs().max(1.0));
            x *= 1.000_37;
        }
        assert!(worst < 1e-6, "worst error {worst}");
        assert_eq!(fast_ln(1.0), 0.0);
    }

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
