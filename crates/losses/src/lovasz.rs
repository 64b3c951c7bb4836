//! Lovász-Softmax loss (Berman, Rannen Triki & Blaschko, CVPR 2018).

use crate::fused_lovasz::FusedLovasz;
use crate::input::{checked_labels_u32, one_hot, prepare};
use crate::options::{per_shard_error, Engine, EngineLoss, LossOptions};
use crate::sharding::ImageMeanStep;
use crate::Kernel;
use crate::{ShardStatistics, Sharding};
use candle_core::{DType, Device, Result, Tensor};
use recallseg_kernels::fused::FusedOp;
use std::sync::Arc;

/// The Lovász extension's gradient for the foreground flags of one class sorted by decreasing
/// error: `g_k = J_k - J_{k-1}` with `J_k = 1 - (G - Σ_{m<=k} fg_m) / (G + Σ_{m<=k} (1 - fg_m))`
/// (Berman et al., Alg. 1). Works on any iterator of flags; the result is written to `out`.
pub(crate) fn lovasz_grad(fg_sorted: impl Iterator<Item = bool>, gts: f64, out: &mut Vec<f64>) {
    out.clear();
    let (mut cum_fg, mut cum_bg) = (0.0f64, 0.0f64);
    let mut prev = 0.0;
    for fg in fg_sorted {
        if fg {
            cum_fg += 1.0;
        } else {
            cum_bg += 1.0;
        }
        let j = 1.0 - (gts - cum_fg) / (gts + cum_bg);
        out.push(j - prev);
        prev = j;
    }
}

/// Which classes the Lovász-Softmax loss averages over (smp's `classes = "present"` or
/// `"all"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LovaszClasses {
    /// The classes present in the valid target (of the batch, or of the image with
    /// [`Lovasz::with_per_image`]); the authors' and smp's default.
    #[default]
    Present,
    /// Every class, an absent one contributing its (false-positive) term too.
    All,
}

/// Lovász-Softmax: a convex surrogate of `1 - IoU` per class, over the batch.
///
/// For each class `c` (classes present in the batch's valid target by default, all classes
/// with [`LovaszClasses::All`]), the errors `e_i = |t_{i,c} - p_{i,c}|` of the valid pixels are
/// sorted in decreasing order and
///
/// ```text
/// loss_c = Σ_k e_(k) g_k,        g = lovasz_grad(t sorted by error)
/// L      = Σ_{c ∈ K} s_c loss_c / Σ_{c ∈ K} s_c       (0 when K is empty)
/// ```
///
/// `p` are softmax probabilities and `s` static class weights (1 by default, giving the mean over
/// `K`). This is `segmentation_models_pytorch.losses.LovaszLoss("multiclass", ignore_index=255)`
/// (`per_image = False`, `classes = "present"`), which follows the authors' code. The sort is a
/// constant of the step, so `∂L/∂p_{i,c} = (s_c / Σ s) g_{rank(i)} sign(p_{i,c} - t_{i,c})`,
/// propagated through the softmax.
///
/// With [`Lovasz::with_per_image`] the loss is computed for each image on its own valid pixels
/// (its present classes, its own sort) and averaged over the `N` images, an image without valid
/// pixels counting 0: smp's and the authors' `per_image=True`, and what the paper's code
/// (`LovaszSoftmax` in `ptsemseg/loss/lovasz_loss.py`) computes. The presets in
/// `crates/trainer/configs` use the per-batch default.
///
/// The fused CPU kernel sorts each class (of each image, per image) with a parallel radix sort;
/// the portable path ranks the errors on the host (they are copied there once per step).
#[derive(Debug, Clone)]
pub struct Lovasz {
    pub(crate) opts: LossOptions,
    pub(crate) present_only: bool,
    pub(crate) per_image: bool,
    last_kernel: Option<Kernel>,
    /// The current sharded step (`per_image`: a mean over images).
    step: Option<ImageMeanStep>,
}

impl Lovasz {
    /// Lovász-Softmax over `n_classes` classes, averaged over the classes present in the batch
    /// ([`Lovasz::with_classes`] changes that), per batch.
    pub fn new(n_classes: usize) -> Self {
        Self {
            opts: LossOptions::new(n_classes),
            present_only: true,
            per_image: false,
            last_kernel: None,
            step: None,
        }
    }

    /// Computes the loss per image and averages over the images (smp's `per_image=True`);
    /// default `false`, the per-batch form. Covered by the fused kernel.
    pub fn with_per_image(mut self, per_image: bool) -> Self {
        self.per_image = per_image;
        self
    }

    /// Which classes the loss averages over (default [`LovaszClasses::Present`]).
    pub fn with_classes(mut self, classes: LovaszClasses) -> Self {
        self.present_only = classes == LovaszClasses::Present;
        self
    }

    /// Which classes the loss averages over.
    pub fn classes(&self) -> LovaszClasses {
        if self.present_only {
            LovaszClasses::Present
        } else {
            LovaszClasses::All
        }
    }

    /// Whether the loss is computed per image.
    pub fn per_image(&self) -> bool {
        self.per_image
    }

    /// Which classes enter the average, and the normaliser `Σ_{c∈K} s_c`.
    pub(crate) fn considered(&self, counts: &[f64], s: &[f64]) -> (Vec<bool>, f64) {
        let k: Vec<bool> = counts
            .iter()
            .map(|&g| !self.present_only || g > 0.0)
            .collect();
        let norm: f64 = k.iter().zip(s).filter(|(k, _)| **k).map(|(_, s)| s).sum();
        (k, norm)
    }

    fn forward_portable(&self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        let c = self.opts.n_classes();
        let ignore_index = self.opts.ignore_index();
        let dtype = logits.dtype();
        let dev = logits.device();
        let labels = checked_labels_u32(target, c, ignore_index)?;
        let oh = one_hot(&labels, c, ignore_index, dtype)?;
        let prob = candle_nn::ops::softmax(logits, 1)?;
        let errors = (&oh - &prob)?.abs()?;
        let (n, _, h, w) = logits.dims4()?;
        let hw = h * w;
        let lab = labels.flatten_all()?.to_vec1::<u32>()?;
        let err = errors
            .detach()
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let s = self.opts.static_weights(dtype);
        let mut wmap = vec![0.0f64; n * c * hw];
        let mut g = Vec::new();
        // One group of pixels per image (per_image) or the whole batch; groups are averaged.
        let (groups, div) = if self.per_image {
            (
                (0..n).map(|i| (i * hw, (i + 1) * hw)).collect::<Vec<_>>(),
                n as f64,
            )
        } else {
            (vec![(0, n * hw)], 1.0)
        };
        for (start, end) in groups {
            let valid: Vec<usize> = (start..end)
                .filter(|&i| lab[i] != ignore_index && (lab[i] as usize) < c)
                .collect();
            if valid.is_empty() {
                continue;
            }
            let mut counts = vec![0.0; c];
            for &i in &valid {
                counts[lab[i] as usize] += 1.0;
            }
            let (k, norm) = self.considered(&counts, &s);
            for cls in 0..c {
                if !k[cls] || norm <= 0.0 {
                    continue;
                }
                let at = |i: usize| (i / hw) * c * hw + cls * hw + i % hw;
                let mut order = valid.clone();
                order.sort_by(|&a, &b| err[at(b)].total_cmp(&err[at(a)]));
                lovasz_grad(
                    order.iter().map(|&i| lab[i] as usize == cls),
                    counts[cls],
                    &mut g,
                );
                let f = s[cls] / norm / div;
                for (r, &i) in order.iter().enumerate() {
                    wmap[at(i)] = f * g[r];
                }
            }
        }
        let wt = Tensor::from_vec(wmap, (n, c, h, w), &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(dev)?;
        (errors * wt)?.sum_all()
    }
}

impl Engine for Lovasz {
    fn options(&self) -> &LossOptions {
        &self.opts
    }

    fn options_mut(&mut self) -> &mut LossOptions {
        &mut self.opts
    }

    fn name(&self) -> &'static str {
        "lovasz"
    }

    fn forward(&mut self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        let p = prepare(
            logits,
            target,
            self.opts.n_classes(),
            self.opts.ignore_index(),
            self.opts.kernel(),
            None,
        )?;
        if p.empty {
            self.last_kernel = None;
            return crate::input::zero_loss(&p.logits);
        }
        self.last_kernel = Some(if p.fused {
            Kernel::Fused
        } else {
            Kernel::Portable
        });
        if p.fused {
            let op = FusedLovasz {
                n_classes: self.opts.n_classes(),
                ignore_index: self.opts.ignore_index(),
                static_w: self.opts.static_weights(DType::F32),
                present_only: self.present_only,
                per_image: self.per_image,
                dldp: Default::default(),
                keep: p.logits.track_op(),
                probs: Default::default(),
            };
            p.logits
                .apply_op2_arc(&p.target, Arc::new(Box::new(FusedOp(op))))
        } else {
            self.forward_portable(&p.logits, &p.target)
        }
    }

    /// The static class weights if any were given; Lovász has no dynamic per-class weights.
    fn last_class_weights(&self) -> Option<Vec<f32>> {
        self.opts.class_weights_f32()
    }

    fn last_kernel(&self) -> Option<Kernel> {
        self.last_kernel
    }

    /// Exact with `per_image` (a mean over images of per-image terms: a shard of `N_s` whole
    /// images contributes `N_s / N` times its own loss; statistics `[images, valid pixels]`
    /// from the labels); per shard over the batch, whose sort of each class's errors spans the
    /// batch.
    fn sharding(&self) -> Sharding {
        if self.per_image {
            Sharding::Exact {
                needs_logits: false,
            }
        } else {
            Sharding::PerShard
        }
    }

    fn shard_statistics(&self, logits: &Tensor, target: &Tensor) -> Result<ShardStatistics> {
        if !self.per_image {
            return Err(per_shard_error("lovasz").into_candle());
        }
        ImageMeanStep::statistics(
            logits,
            target,
            self.opts.n_classes(),
            self.opts.ignore_index(),
        )
    }

    fn prepare_step(&mut self, batch: &ShardStatistics) -> Result<()> {
        if !self.per_image {
            return Err(per_shard_error("lovasz").into_candle());
        }
        self.step = Some(ImageMeanStep::from_statistics("lovasz", batch)?);
        Ok(())
    }

    fn forward_shard(&mut self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        if !self.per_image {
            return Err(per_shard_error("lovasz").into_candle());
        }
        let Some(step) = self.step else {
            return Err(crate::LossError::StepNotPrepared {
                loss: "lovasz".into(),
            }
            .into_candle());
        };
        let (n_s, _, _, _) = crate::input::check_inputs(logits, target, self.opts.n_classes())?;
        // An image without valid pixels counts 0, as in `forward`.
        let l = Engine::forward(self, logits, target)?;
        step.share(Some(l.clone()), || Ok(l), n_s, 0.0)
    }
}

impl EngineLoss for Lovasz {
    type Engine = Self;

    fn engine(&self) -> &Self {
        self
    }

    fn engine_mut(&mut self) -> &mut Self {
        self
    }
}
