//! The label types a [`ConfusionMatrix`](crate::ConfusionMatrix) can count.

use crate::kernel::{self, Partial, Spec};

mod sealed {
    use crate::kernel::{Partial, Spec};

    /// Implementation details of [`Label`](super::Label); not implementable outside this crate.
    pub trait Sealed: Sized {
        /// Number of distinct values of the type, capped at `usize::MAX`.
        const VALUES: usize;
        /// Counts one contiguous range; `offset` is the range's start in the whole input.
        fn count(gt: &[Self], pred: &[Self], offset: usize, spec: &Spec, k: usize) -> Partial;
        /// Pixels per parallel task below which splitting does not pay.
        fn min_task_len(k: usize) -> usize;
    }
}

/// An unsigned integer type usable as a class label: `u8`, `u16` or `u32`.
///
/// Sealed: the fast paths of [`ConfusionMatrix::update`](crate::ConfusionMatrix::update) are
/// chosen per type. `u8` (the type the rest of recallseg uses for train ids) takes a branch-free
/// 256×256 histogram kernel; `u16` and `u32` a generic one-branch kernel.
pub trait Label: sealed::Sealed + Copy + Send + Sync + std::fmt::Debug + 'static {
    /// The value as `u32`.
    fn to_u32(self) -> u32;
}

/// Smallest input for which the `u8` kernel's table flush (≈ 2^18 cell reads) is worth it.
const DIRECT_U8_MIN: usize = 1 << 16;

impl sealed::Sealed for u8 {
    const VALUES: usize = 1 << 8;
    fn count(gt: &[u8], pred: &[u8], offset: usize, spec: &Spec, k: usize) -> Partial {
        if gt.len() >= DIRECT_U8_MIN {
            kernel::count_direct_u8(gt, pred, offset, spec, k)
        } else {
            kernel::count_simple(gt, pred, offset, spec, k)
        }
    }
    fn min_task_len(_k: usize) -> usize {
        1 << 19
    }
}

impl Label for u8 {
    #[inline]
    fn to_u32(self) -> u32 {
        u32::from(self)
    }
}

impl sealed::Sealed for u16 {
    const VALUES: usize = 1 << 16;
    fn count(gt: &[u16], pred: &[u16], offset: usize, spec: &Spec, k: usize) -> Partial {
        kernel::count_simple(gt, pred, offset, spec, k)
    }
    fn min_task_len(k: usize) -> usize {
        (1usize << 18).max(k.saturating_mul(k).saturating_mul(4))
    }
}

impl Label for u16 {
    #[inline]
    fn to_u32(self) -> u32 {
        u32::from(self)
    }
}

impl sealed::Sealed for u32 {
    const VALUES: usize = usize::MAX;
    fn count(gt: &[u32], pred: &[u32], offset: usize, spec: &Spec, k: usize) -> Partial {
        kernel::count_simple(gt, pred, offset, spec, k)
    }
    fn min_task_len(k: usize) -> usize {
        (1usize << 18).max(k.saturating_mul(k).saturating_mul(4))
    }
}

impl Label for u32 {
    #[inline]
    fn to_u32(self) -> u32 {
        self
    }
}
