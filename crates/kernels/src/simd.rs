//! Run-time selection of AVX2 + FMA builds of the CPU kernels' inner loops.
//!
//! The workspace is compiled for the baseline x86-64 (SSE2), so element-wise loops in `f64`, with
//! selects or with `exp` polynomials vectorise poorly. [`dispatch!`](crate::dispatch) defines a
//! wrapper that runs a kernel compiled with `#[target_feature(enable = "avx2,fma")]` when
//! [`use_avx2`] says the CPU has both, and the baseline build otherwise. Rust never contracts
//! `a·b + c` into a fused multiply-add on its own, so both builds compute the same bits; the AVX2
//! one just uses wider vectors. Call [`use_avx2`] once per kernel call (not per element) and pass
//! the answer down; the wrapper then costs one predictable branch per call.

/// Whether the CPU runs the AVX2 + FMA builds of the kernels (`false` off x86-64).
#[inline]
pub fn use_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines a function that runs a kernel's AVX2 + FMA build or its baseline build.
///
/// `dispatch!(name, kernel, (arg: Type, ...) [-> Ret])` defines `fn name(avx2: bool, args...)`,
/// which runs `kernel` compiled for AVX2 + FMA when `avx2` is set (as reported by
/// [`simd::use_avx2`](crate::simd::use_avx2)) and the baseline build otherwise. `kernel` should be
/// `#[inline(always)]`, so that its body is compiled into each build.
///
/// * `dispatch!(name, kernel, [L: Bound, ...], (args...) [-> Ret])`: the same for a generic
///   kernel (each parameter with one bound path, e.g. [`Label`](crate::storage::Label));
/// * `dispatch!(name, kernel, fast = kernel_avx2, [generics], (args...) [-> Ret])`: also names the
///   AVX2 build, `unsafe fn kernel_avx2(args...)` at module level (x86-64 only), for tests that
///   compare the two builds directly.
///
/// ```
/// use recallseg_kernels::{dispatch, simd::use_avx2};
///
/// #[inline(always)]
/// fn scale(a: f32, x: &mut [f32]) {
///     x.iter_mut().for_each(|v| *v *= a);
/// }
/// dispatch!(scale_dispatch, scale, (a: f32, x: &mut [f32]));
///
/// let mut x = [1.0, 2.0];
/// scale_dispatch(use_avx2(), 3.0, &mut x);
/// assert_eq!(x, [3.0, 6.0]);
/// ```
#[macro_export]
macro_rules! dispatch {
    ($name:ident, $plain:ident, ($($arg:ident: $ty:ty),* $(,)?)) => {
        $crate::dispatch!(@nested $name, $plain, [], ($($arg: $ty),*), ());
    };
    ($name:ident, $plain:ident, ($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty) => {
        $crate::dispatch!(@nested $name, $plain, [], ($($arg: $ty),*), $ret);
    };
    ($name:ident, $plain:ident, [$($g:ident: $b:path),* $(,)?], ($($arg:ident: $ty:ty),* $(,)?)) => {
        $crate::dispatch!(@nested $name, $plain, [$($g: $b),*], ($($arg: $ty),*), ());
    };
    ($name:ident, $plain:ident, [$($g:ident: $b:path),* $(,)?], ($($arg:ident: $ty:ty),* $(,)?)
        -> $ret:ty) => {
        $crate::dispatch!(@nested $name, $plain, [$($g: $b),*], ($($arg: $ty),*), $ret);
    };
    ($name:ident, $plain:ident, fast = $fast:ident, [$($g:ident: $b:path),* $(,)?],
        ($($arg:ident: $ty:ty),* $(,)?)) => {
        $crate::dispatch!(@named $name, $plain, $fast, [$($g: $b),*], ($($arg: $ty),*), ());
    };
    ($name:ident, $plain:ident, fast = $fast:ident, [$($g:ident: $b:path),* $(,)?],
        ($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty) => {
        $crate::dispatch!(@named $name, $plain, $fast, [$($g: $b),*], ($($arg: $ty),*), $ret);
    };
    (@nested $name:ident, $plain:ident, [$($g:ident: $b:path),*], ($($arg:ident: $ty:ty),*),
        $ret:ty) => {
        #[inline]
        #[allow(clippy::unused_unit, clippy::too_many_arguments)]
        fn $name<$($g: $b),*>(avx2: bool, $($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::unused_unit, clippy::too_many_arguments)]
                unsafe fn fast<$($g: $b),*>($($arg: $ty),*) -> $ret {
                    $plain($($arg),*)
                }
                if avx2 {
                    // SAFETY: `avx2` is only set when the CPU has AVX2 and FMA (`use_avx2`).
                    return unsafe { fast($($arg),*) };
                }
            }
            let _ = avx2;
            $plain($($arg),*)
        }
    };
    (@named $name:ident, $plain:ident, $fast:ident, [$($g:ident: $b:path),*],
        ($($arg:ident: $ty:ty),*), $ret:ty) => {
        #[doc = concat!("`", stringify!($plain), "` compiled for AVX2 + FMA.")]
        ///
        /// # Safety
        /// The CPU must support AVX2 and FMA (`recallseg_kernels::simd::use_avx2`).
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::unused_unit, clippy::too_many_arguments)]
        unsafe fn $fast<$($g: $b),*>($($arg: $ty),*) -> $ret {
            $plain($($arg),*)
        }

        #[inline]
        #[allow(clippy::unused_unit, clippy::too_many_arguments)]
        fn $name<$($g: $b),*>(avx2: bool, $($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: `avx2` is only set when the CPU has AVX2 and FMA (`use_avx2`).
                return unsafe { $fast($($arg),*) };
            }
            let _ = avx2;
            $plain($($arg),*)
        }
    };
}

#[cfg(test)]
mod tests {
    use super::use_avx2;
    use crate::storage::Label;

    #[inline(always)]
    fn sum_labels<L: Label>(xs: &[L]) -> i64 {
        xs.iter().map(|&x| x.into()).sum()
    }
    crate::dispatch!(sum_dispatch, sum_labels, [L: Label], (xs: &[L]) -> i64);
    crate::dispatch!(sum_named, sum_labels, fast = sum_labels_avx2, [L: Label], (xs: &[L]) -> i64);

    #[inline(always)]
    fn add_one(x: &mut [f64]) {
        x.iter_mut().for_each(|v| *v += 1.0);
    }
    crate::dispatch!(add_one_dispatch, add_one, (x: &mut [f64]));

    #[test]
    fn both_builds_agree() {
        let avx2 = use_avx2();
        for flag in [false, avx2] {
            assert_eq!(sum_dispatch(flag, &[1u8, 2, 3]), 6);
            assert_eq!(sum_named(flag, &[4i64, -5]), -1);
            let mut x = [0.5f64; 3];
            add_one_dispatch(flag, &mut x);
            assert_eq!(x, [1.5; 3]);
        }
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            assert_eq!(unsafe { sum_labels_avx2(&[7u32, 8]) }, 15);
        }
    }
}
