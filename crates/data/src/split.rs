//! The deterministic shuffle and the 70/10/20 cut of the Synthia split protocol.
//!
//! The paper's code shuffles each camera folder with Python's `random.shuffle` after
//! `random.seed(0)`; Python's Mersenne Twister cannot be matched bit for bit here, so the
//! shuffle is our own, fully specified one (and pinned by tests):
//!
//! * RNG: `ChaCha8Rng::seed_from_u64(seed)` (rand_chacha 0.9), re-seeded for every folder.
//! * Fisher–Yates from the last position down: for `i = n-1 … 1`, draw `j` uniform in `0..=i`
//!   with [`uniform_below`] (Lemire's widening multiply with rejection on `next_u64`) and swap
//!   positions `i` and `j`.
//! * Cut: `n_train = floor(0.7 n)`, `n_val = floor(0.1 n)`, test = the rest (the
//!   same `f64` products as the paper's Python `int(0.7 * n)`).

use crate::dataset::Split;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A uniform integer in `0..n` (`n > 0`) from 64-bit draws, without modulo bias.
pub(crate) fn uniform_below<R: RngCore + ?Sized>(rng: &mut R, n: u64) -> u64 {
    assert!(n > 0, "uniform_below needs n > 0");
    let threshold = n.wrapping_neg() % n;
    loop {
        let m = (rng.next_u64() as u128) * (n as u128);
        if (m as u64) >= threshold {
            return (m >> 64) as u64;
        }
    }
}

/// Shuffles `items` in place with the Fisher–Yates scheme described in the module docs.
pub(crate) fn shuffle<T, R: RngCore + ?Sized>(items: &mut [T], rng: &mut R) {
    for i in (1..items.len()).rev() {
        let j = uniform_below(rng, i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// The permutation of `0..n` given by [`shuffle`] with `ChaCha8Rng::seed_from_u64(seed)`.
pub(crate) fn shuffled_indices(n: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    shuffle(&mut idx, &mut rng);
    idx
}

/// Fractions of the train and validation parts (the test part is the rest).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SplitFractions {
    /// Fraction for training (paper: 0.7).
    pub train: f64,
    /// Fraction for validation (paper: 0.1).
    pub val: f64,
}

impl Default for SplitFractions {
    fn default() -> Self {
        SplitFractions {
            train: 0.7,
            val: 0.1,
        }
    }
}

impl SplitFractions {
    /// Checks `0 <= train`, `0 <= val`, `train + val <= 1`.
    pub fn validate(&self) -> Result<(), crate::DataError> {
        let ok = self.train.is_finite()
            && self.val.is_finite()
            && self.train >= 0.0
            && self.val >= 0.0
            && self.train + self.val <= 1.0 + 1e-12;
        if ok {
            Ok(())
        } else {
            Err(crate::DataError::config(
                "split fractions",
                format!("train {} val {}", self.train, self.val),
                "need train >= 0, val >= 0, train + val <= 1",
            ))
        }
    }

    /// The index range of `split` in a shuffled list of `n` items.
    pub fn range(&self, n: usize, split: Split) -> std::ops::Range<usize> {
        let n_train = (self.train * n as f64).floor() as usize;
        let n_val = (self.val * n as f64).floor() as usize;
        let n_train = n_train.min(n);
        let n_val = n_val.min(n - n_train);
        match split {
            Split::Train => 0..n_train,
            Split::Val => n_train..n_train + n_val,
            Split::Test => n_train + n_val..n,
        }
    }
}

/// The items of `split` out of the sorted list `sorted`: shuffled with `seed`, then cut.
pub(crate) fn select_split<T: Clone>(
    sorted: &[T],
    split: Split,
    seed: u64,
    fractions: &SplitFractions,
) -> Vec<T> {
    let perm = shuffled_indices(sorted.len(), seed);
    perm[fractions.range(sorted.len(), split)]
        .iter()
        .map(|&i| sorted[i].clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_is_a_permutation_and_uniform_below_is_in_range() {
        for n in [0usize, 1, 2, 10, 97] {
            let mut p = shuffled_indices(n, 3);
            p.sort();
            assert_eq!(p, (0..n).collect::<Vec<_>>());
        }
        assert_ne!(shuffled_indices(50, 0), shuffled_indices(50, 1));
        assert_eq!(shuffled_indices(50, 7), shuffled_indices(50, 7));
        // Each position of a 4-element shuffle holds each value about 1/4 of the time.
        let mut counts = [[0u32; 4]; 4];
        for seed in 0..4000 {
            for (pos, v) in shuffled_indices(4, seed).into_iter().enumerate() {
                counts[pos][v] += 1;
            }
        }
        for row in counts {
            for c in row {
                assert!((850..1150).contains(&c), "{c} of 4000 (expected ~1000)");
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for n in [1u64, 2, 3, 1000, u64::MAX] {
            for _ in 0..100 {
                assert!(uniform_below(&mut rng, n) < n);
            }
        }
    }
}
