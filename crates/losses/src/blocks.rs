//! The pixel-block toolkit the fused loss kernels share: the block size, the fixed grouping of
//! blocks into parallel tasks, the per-pixel maximum (and argmax) over classes of a block, and
//! the label check, the softmax of a block into a kept buffer.

use crate::fast_math::fast_exp;
use recallseg_kernels::SyncPtr;

/// Pixels per work item.
pub(crate) const BLOCK: usize = 256;

/// Blocks accumulated together by one parallel task before the per-task sums are merged in task
/// order (a shape-only constant: the reduction order never depends on the thread count).
pub(crate) const TASKS_PER_GROUP: usize = 16;

/// Per-pixel maximum and argmax over classes of one block (first maximum on ties, as
/// `argmax`). Branch-free so that it vectorises.
#[inline(always)]
pub(crate) fn block_max(
    img: &[f32],
    hw: usize,
    c: usize,
    a: usize,
    mx: &mut [f32],
    am: &mut [u32],
) {
    let l = mx.len();
    mx.copy_from_slice(&img[a..a + l]);
    am.iter_mut().for_each(|v| *v = 0);
    for k in 1..c {
        let row = &img[k * hw + a..k * hw + a + l];
        let kk = k as u32;
        for ((m, i), &v) in mx.iter_mut().zip(am.iter_mut()).zip(row) {
            let better = (v > *m) as u32;
            *i = (*i).wrapping_add(better.wrapping_mul(kk.wrapping_sub(*i)));
            *m = if v > *m { v } else { *m };
        }
    }
}

/// Per-pixel maximum over classes of one block.
#[inline(always)]
pub(crate) fn block_max_only(img: &[f32], hw: usize, c: usize, a: usize, mx: &mut [f32]) {
    let l = mx.len();
    mx.copy_from_slice(&img[a..a + l]);
    for k in 1..c {
        let row = &img[k * hw + a..k * hw + a + l];
        for (m, &v) in mx.iter_mut().zip(row) {
            *m = if v > *m { v } else { *m };
        }
    }
}

/// Label of pixel `i` as `Some(class)`, `None` when ignored, or `Err(label)` when out of range.
#[inline(always)]
pub(crate) fn class_of(
    label: i64,
    ignore: i64,
    c: usize,
) -> std::result::Result<Option<usize>, i64> {
    if label == ignore {
        Ok(None)
    } else if label < 0 || label >= c as i64 {
        Err(label)
    } else {
        Ok(Some(label as usize))
    }
}

/// The softmax of one block's `l = mx.len()` pixels written to the kept buffer at
/// `pp + base + k·hw + a` for every class `k`; `sm` receives the sums of exponentials.
///
/// # Safety
/// The caller owns `pp[base + k·hw + a .. + l]` for every `k < c` (no other thread writes them).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn softmax_into(
    pp: SyncPtr,
    base: usize,
    img: &[f32],
    hw: usize,
    c: usize,
    a: usize,
    mx: &[f32],
    sm: &mut [f32],
) {
    let l = mx.len();
    sm.iter_mut().for_each(|v| *v = 0.0);
    for k in 0..c {
        let row = &img[k * hw + a..k * hw + a + l];
        // SAFETY: owned by the caller (see above).
        let pr = unsafe { std::slice::from_raw_parts_mut(pp.get().add(base + k * hw + a), l) };
        for p in 0..l {
            let e = fast_exp(row[p] - mx[p]);
            pr[p] = e;
            sm[p] += e;
        }
    }
    let mut inv = [0f32; BLOCK];
    for p in 0..l {
        inv[p] = 1.0 / sm[p];
    }
    for k in 0..c {
        // SAFETY: as above.
        let pr = unsafe { std::slice::from_raw_parts_mut(pp.get().add(base + k * hw + a), l) };
        for p in 0..l {
            pr[p] *= inv[p];
        }
    }
}
