//! Deterministic dropout: masks come from ChaCha8 streams seeded by `(dropout seed, site, chunk)`,
//! not from candle's unseedable CPU generator, so a training step is reproducible bit for bit
//! (whatever the number of threads).

use crate::init::{fnv1a64, splitmix64, unit_f64};
use candle_core::{Device, Result, Tensor};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Elements per independently seeded chunk of a dropout mask.
const MASK_CHUNK: usize = 1 << 16;

/// Inverted dropout with probability `p` at a named site.
#[derive(Debug, Clone)]
pub(crate) struct Dropout {
    p: f64,
    site: u64,
}

impl Dropout {
    /// Dropout with probability `p` (in `[0, 1)`); `site` names the layer so that two layers
    /// given the same step seed draw different masks.
    pub(crate) fn new(p: f64, site: &str) -> Self {
        Self {
            p,
            site: fnv1a64(site),
        }
    }

    /// In training, zeroes each element with probability `p` and scales the rest by `1/(1 − p)`;
    /// the mask is a pure function of `(seed, site, shape)`. Identity in evaluation.
    pub(crate) fn forward_t(&self, x: &Tensor, train: bool, seed: u64) -> Result<Tensor> {
        if !train || self.p == 0.0 {
            return Ok(x.clone());
        }
        // Chunks of the mask come from independent streams seeded by (seed, site, chunk index),
        // so they are drawn in parallel yet do not depend on the thread count.
        let base = splitmix64(seed) ^ self.site;
        let (p, keep) = (self.p, (1.0 / (1.0 - self.p)) as f32);
        let mut mask = vec![0f32; x.elem_count()];
        mask.par_chunks_mut(MASK_CHUNK)
            .enumerate()
            .for_each(|(chunk, out)| {
                let mut rng = ChaCha8Rng::seed_from_u64(base ^ splitmix64(chunk as u64));
                for m in out.iter_mut() {
                    *m = if unit_f64(rng.next_u64()) < p {
                        0.0
                    } else {
                        keep
                    };
                }
            });
        let mask = Tensor::from_vec(mask, x.shape(), &Device::Cpu)?
            .to_dtype(x.dtype())?
            .to_device(x.device())?;
        x * mask
    }

    /// Channel dropout (PyTorch's `nn.Dropout2d`, what mmsegmentation's decode heads use): in
    /// training, zeroes whole `(n, c)` feature maps of `(N, C, H, W)` with probability `p` and
    /// scales the rest by `1/(1 − p)`; the `N × C` mask is a pure function of
    /// `(seed, site, N, C)`. Identity in evaluation.
    pub(crate) fn forward_channels_t(&self, x: &Tensor, train: bool, seed: u64) -> Result<Tensor> {
        if !train || self.p == 0.0 {
            return Ok(x.clone());
        }
        let (n, c, _, _) = x.dims4()?;
        let ones = Tensor::ones((n, c, 1, 1), x.dtype(), x.device())?;
        let mask = self.forward_t(&ones, true, seed)?;
        x.broadcast_mul(&mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    #[test]
    fn masks_are_seeded_and_scaled() -> Result<()> {
        let x = Tensor::ones((4, 8, 16, 16), DType::F32, &Device::Cpu)?;
        let d = Dropout::new(0.25, "a");
        let a = d.forward_t(&x, true, 1)?.flatten_all()?.to_vec1::<f32>()?;
        let b = d.forward_t(&x, true, 1)?.flatten_all()?.to_vec1::<f32>()?;
        let c = d.forward_t(&x, true, 2)?.flatten_all()?.to_vec1::<f32>()?;
        let other = Dropout::new(0.25, "b").forward_t(&x, true, 1)?;
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, other.flatten_all()?.to_vec1::<f32>()?);
        let dropped = a.iter().filter(|&&v| v == 0.0).count() as f64 / a.len() as f64;
        assert!((dropped - 0.25).abs() < 0.03, "dropped {dropped}");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 4.0 / 3.0).abs() < 1e-6));
        let e = d.forward_t(&x, false, 1)?.flatten_all()?.to_vec1::<f32>()?;
        assert!(e.iter().all(|&v| v == 1.0));
        Ok(())
    }

    #[test]
    fn channel_masks_drop_whole_maps() -> Result<()> {
        let x = Tensor::ones((4, 32, 3, 5), DType::F32, &Device::Cpu)?;
        let d = Dropout::new(0.5, "aux");
        let y = d.forward_channels_t(&x, true, 9)?;
        let maps: Vec<Vec<f32>> = y.flatten_from(2)?.flatten_to(1)?.to_vec2()?;
        let mut dropped = 0;
        for m in &maps {
            // Each (n, c) map is all 0 or all 1/(1 - p).
            assert!(
                m.iter().all(|&v| v == m[0]) && (m[0] == 0.0 || m[0] == 2.0),
                "{m:?}"
            );
            dropped += usize::from(m[0] == 0.0);
        }
        assert!(
            (40..=88).contains(&dropped),
            "{dropped} of 128 maps dropped"
        );
        assert_eq!(
            y.flatten_all()?.to_vec1::<f32>()?,
            d.forward_channels_t(&x, true, 9)?
                .flatten_all()?
                .to_vec1::<f32>()?
        );
        let e = d.forward_channels_t(&x, false, 9)?;
        assert_eq!(
            e.flatten_all()?.to_vec1::<f32>()?,
            x.flatten_all()?.to_vec1::<f32>()?
        );
        Ok(())
    }

    #[test]
    fn large_masks_do_not_depend_on_the_thread_count() -> Result<()> {
        let n = 3 * MASK_CHUNK + 17;
        let x = Tensor::ones(n, DType::F32, &Device::Cpu)?;
        let d = Dropout::new(0.5, "big");
        let many = d.forward_t(&x, true, 11)?.to_vec1::<f32>()?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let one = pool
            .install(|| d.forward_t(&x, true, 11))?
            .to_vec1::<f32>()?;
        assert_eq!(many, one);
        // Chunks draw from different streams.
        assert_ne!(many[..MASK_CHUNK], many[MASK_CHUNK..2 * MASK_CHUNK]);
        let dropped = many.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
        assert!((dropped - 0.5).abs() < 0.01, "dropped {dropped}");
        Ok(())
    }
}
