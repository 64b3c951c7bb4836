//! Runtime selection of AVX2 + FMA builds of the CPU kernels' inner loops.
//!
//! The crate is compiled for the baseline x86-64 (SSE2), so element-wise loops in `f64` or with
//! selects vectorise poorly. [`dispatch!`] defines a wrapper that runs a kernel compiled with
//! `#[target_feature(enable = "avx2,fma")]` when [`use_avx2`] says the CPU has both, and the
//! baseline build otherwise. Rust never contracts `a·b + c` into a fused multiply-add on its own,
//! so both builds compute the same bits; the AVX2 one just uses wider vectors.

/// Whether the CPU runs the AVX2 + FMA builds of the kernels.
pub(crate) fn use_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `dispatch!(name, kernel, (arg: Type, ...) [-> Ret])` defines `name(avx2, args...)`, which runs
/// `kernel` compiled for AVX2 + FMA when `avx2` is set (as reported by [`use_avx2`]) and the
/// baseline build otherwise.
macro_rules! dispatch {
    ($name:ident, $plain:ident, ($($arg:ident: $ty:ty),*)) => {
        dispatch!(@define $name, $plain, ($($arg: $ty),*), ());
    };
    ($name:ident, $plain:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        dispatch!(@define $name, $plain, ($($arg: $ty),*), $ret);
    };
    (@define $name:ident, $plain:ident, ($($arg:ident: $ty:ty),*), $ret:ty) => {
        #[inline]
        #[allow(clippy::unused_unit)]
        fn $name(avx2: bool, $($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::unused_unit)]
                unsafe fn fast($($arg: $ty),*) -> $ret {
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
}
pub(crate) use dispatch;
