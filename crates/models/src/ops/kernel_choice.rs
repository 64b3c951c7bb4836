//! Which CPU custom ops the model code may use: a per-thread, scoped choice (for A/B comparisons,
//! debugging and tests), instead of process-wide switches that a test or a library would flip
//! under the feet of every other thread.
//!
//! The choice is read where an op is *picked*, i.e. by [`crate::ops::conv2d::conv2d`],
//! [`crate::ops::conv2d::conv2d_affine`] and [`crate::batch_norm::BatchNorm2d`] on the thread that
//! builds the forward pass; the backward pass follows whatever the forward pass picked, and the
//! kernels' rayon workers never read it. Code run inside [`with_cpu_kernels`] on other threads
//! (spawned threads, rayon tasks that run model code) sees the default: everything enabled.

use std::cell::Cell;

/// The CPU custom ops (f32, CPU tensors) the model code may use instead of compositions of
/// candle ops. Every field is `true` by default; a `false` one makes the model take the portable
/// path, as on other devices and dtypes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuKernels {
    /// The convolution ops (dense im2col/Winograd and depthwise) behind
    /// [`crate::ops::conv2d`] and [`crate::ops::conv2d_affine`]; `false` makes
    /// them behave like [`crate::ops::conv2d_candle`].
    pub conv: bool,
    /// The fused BatchNorm (+ ReLU) op in [`crate::BatchNorm2d`], in
    /// training and evaluation mode.
    pub batch_norm: bool,
    /// The fused convolution + training-mode BatchNorm (+ ReLU) op (in the ResNet and heads);
    /// it also needs `conv` and `batch_norm`.
    pub conv_bn: bool,
}

impl CpuKernels {
    /// Every CPU custom op (the default).
    pub const ALL: Self = Self {
        conv: true,
        batch_norm: true,
        conv_bn: true,
    };
    /// None: the model runs on candle's ops only.
    pub const NONE: Self = Self {
        conv: false,
        batch_norm: false,
        conv_bn: false,
    };
}

impl Default for CpuKernels {
    fn default() -> Self {
        Self::ALL
    }
}

thread_local! {
    static CHOICE: Cell<CpuKernels> = const { Cell::new(CpuKernels::ALL) };
}

/// The choice in effect on this thread ([`CpuKernels::ALL`] outside [`with_cpu_kernels`]).
pub fn cpu_kernels() -> CpuKernels {
    CHOICE.with(Cell::get)
}

/// Runs `f` with `kernels` as this thread's choice of CPU custom ops, then restores the previous
/// choice (also when `f` panics). Scopes nest. Other threads are not affected, so concurrent
/// users of the crate (tests in one binary, several models in one process) cannot change each
/// other's numbers.
///
/// ```
/// use recallseg_models::ops::{cpu_kernels, with_cpu_kernels, CpuKernels};
///
/// let portable = CpuKernels { conv: false, ..CpuKernels::ALL };
/// with_cpu_kernels(portable, || {
///     assert!(!cpu_kernels().conv); // candle's convolution for the model code run here
/// });
/// assert!(cpu_kernels().conv);
/// ```
pub fn with_cpu_kernels<R>(kernels: CpuKernels, f: impl FnOnce() -> R) -> R {
    struct Restore(CpuKernels);
    impl Drop for Restore {
        fn drop(&mut self) {
            CHOICE.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CHOICE.with(|c| c.replace(kernels)));
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest_restore_on_panic_and_stay_on_their_thread() {
        assert_eq!(cpu_kernels(), CpuKernels::ALL);
        with_cpu_kernels(CpuKernels::NONE, || {
            assert_eq!(cpu_kernels(), CpuKernels::NONE);
            let other = std::thread::spawn(cpu_kernels).join().unwrap();
            assert_eq!(other, CpuKernels::ALL);
            let conv_only = CpuKernels {
                conv: true,
                ..CpuKernels::NONE
            };
            with_cpu_kernels(conv_only, || assert_eq!(cpu_kernels(), conv_only));
            assert_eq!(cpu_kernels(), CpuKernels::NONE);
        });
        assert_eq!(cpu_kernels(), CpuKernels::ALL);
        let r = std::panic::catch_unwind(|| {
            with_cpu_kernels(CpuKernels::NONE, || panic!("inside the scope"))
        });
        assert!(r.is_err());
        assert_eq!(cpu_kernels(), CpuKernels::ALL);
    }
}
