//! Output buffers of the CPU kernels.
//!
//! `vec![0f32; n]` zero-fills on the calling thread: for activation-sized outputs that is a serial
//! memset of megabytes between parallel kernels, during which the other cores wait (it was 4.5%
//! of the training step's samples, all on the main thread). [`zeroed`] fills large buffers in
//! parallel instead.

use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Below this many floats a buffer is zero-filled on the calling thread.
const PARALLEL_MIN: usize = 1 << 16;

/// Floats per parallel task.
const CHUNK: usize = 1 << 15;

/// `n` zeros, filled in parallel when `n` is large.
pub(crate) fn zeroed(n: usize) -> Vec<f32> {
    if n < PARALLEL_MIN {
        return vec![0.0; n];
    }
    let mut v: Vec<f32> = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n]
        .par_chunks_mut(CHUNK)
        .for_each(|c| c.fill(MaybeUninit::new(0.0)));
    // SAFETY: the first `n` elements were all initialised just above.
    unsafe { v.set_len(n) };
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_buffers_have_the_length_and_are_zero() {
        for n in [0, 1, PARALLEL_MIN - 1, PARALLEL_MIN, 3 * CHUNK + 7] {
            let v = zeroed(n);
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|&x| x == 0.0 && x.is_sign_positive()));
        }
    }
}
