//! Losses over a batch split into shards: data-parallel ranks each holding part of the batch,
//! or gradient-accumulation micro-batches. See [`crate::SegLoss::sharding`].

/// How a loss behaves when one batch is split into shards that are computed separately
/// (data-parallel ranks, gradient-accumulation micro-batches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharding {
    /// The loss of the whole batch is reproduced exactly: every shard contributes additive
    /// statistics ([`crate::SegLoss::shard_statistics`]), their sum over all shards fixes the
    /// step's batch-level quantities ([`crate::SegLoss::prepare_step`]: recall weights,
    /// normaliser, moving average), and each shard's share ([`crate::SegLoss::forward_shard`])
    /// sums over the shards to the loss of the concatenated batch, in value and gradient.
    Exact {
        /// Whether the statistics read the logits (Recall's and Precision's argmax counts, the
        /// soft sums of Dice/Tversky/Jaccard, OHEM's kept pixels) or only the labels (the
        /// normaliser of plain, weighted and focal cross entropy, per-image Recall, the image
        /// count of SoftIoU and per-image Lovász). A caller holding micro-batches one at a time
        /// needs a prediction pass first only in the first case.
        needs_logits: bool,
    },
    /// Statistics that span the batch (OHEM's ranking, Lovász's sorted errors, …) are taken
    /// per shard: each shard computes the loss of its own pixels, and the caller averages the
    /// shards (equal shards: the mean of the per-shard losses, as PyTorch DDP does).
    PerShard,
}

/// Additive statistics of one shard of a batch (summed elementwise over the shards before
/// [`crate::SegLoss::prepare_step`]). Their layout is the loss's own; only their length and
/// their sum matter to a caller.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ShardStatistics(pub Vec<f64>);

impl ShardStatistics {
    /// Adds `other` elementwise; an error when the lengths differ.
    pub fn add(&mut self, other: &ShardStatistics) -> Result<(), crate::LossError> {
        if self.0.len() != other.0.len() {
            return Err(crate::LossError::InvalidParameter {
                loss: "shard statistics",
                field: "length",
                value: other.0.len().to_string(),
                reason: format!("the statistics being summed have {} values", self.0.len()),
            });
        }
        self.0.iter_mut().zip(&other.0).for_each(|(a, b)| *a += b);
        Ok(())
    }
}

/// The step of a loss that is a mean over the images of the batch of a per-image loss (SoftIoU,
/// Lovász with `per_image`): each image's term depends on that image alone, so only the image
/// count `N` spans the batch, and a shard of `N_s` whole images contributes `N_s / N` times its
/// own loss. Statistics: `[images, valid pixels]` (labels only).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ImageMeanStep {
    /// Images in the batch.
    pub images: f64,
    /// The batch has no valid pixel: every share is 0 (as `forward` of the whole batch).
    pub empty: bool,
}

impl ImageMeanStep {
    /// A shard's statistics `[images, valid pixels]`, from the labels alone.
    pub(crate) fn statistics(
        logits: &candle_core::Tensor,
        target: &candle_core::Tensor,
        n_classes: usize,
        ignore_index: u32,
    ) -> candle_core::Result<ShardStatistics> {
        let (n, _, _, _) = crate::input::check_inputs(logits, target, n_classes)?;
        let valid = valid_pixels(target, n_classes, ignore_index)?;
        Ok(ShardStatistics(vec![n as f64, valid as f64]))
    }

    /// The step from the summed statistics.
    pub(crate) fn from_statistics(
        loss: &'static str,
        batch: &ShardStatistics,
    ) -> candle_core::Result<Self> {
        check_statistics(loss, batch, 2)?;
        Ok(Self {
            images: batch.0[0],
            empty: batch.0[1] == 0.0,
        })
    }

    /// The share of a shard of `shard_images` images whose own loss is `own` (`None` when the
    /// shard has no valid pixel: `zero` is then its zero loss, connected to its logits, and each
    /// of its images counts `empty_image`, the loss of an image without valid pixels).
    pub(crate) fn share(
        &self,
        own: Option<candle_core::Tensor>,
        zero: impl FnOnce() -> candle_core::Result<candle_core::Tensor>,
        shard_images: usize,
        empty_image: f64,
    ) -> candle_core::Result<candle_core::Tensor> {
        if self.empty || shard_images == 0 {
            return zero();
        }
        let f = shard_images as f64 / self.images;
        match own {
            Some(l) => l.affine(f, 0.0),
            None if empty_image == 0.0 => zero(),
            None => zero()?.affine(1.0, f * empty_image),
        }
    }
}

/// The valid pixels of a target (labels that are a class and not the ignore index), checked as
/// `forward` checks them.
pub(crate) fn valid_pixels(
    target: &candle_core::Tensor,
    n_classes: usize,
    ignore_index: u32,
) -> candle_core::Result<usize> {
    if target.elem_count() == 0 {
        return Ok(0);
    }
    let labels = crate::input::checked_labels_u32(target, n_classes, ignore_index)?
        .flatten_all()?
        .to_vec1::<u32>()?;
    Ok(labels
        .iter()
        .filter(|&&l| l != ignore_index && (l as usize) < n_classes)
        .count())
}

/// Checks summed statistics: the loss's length, finite non-negative values where `counts`.
pub(crate) fn check_statistics(
    loss: &'static str,
    batch: &ShardStatistics,
    len: usize,
) -> candle_core::Result<()> {
    if batch.0.len() != len {
        return Err(crate::LossError::InvalidParameter {
            loss,
            field: "shard statistics",
            value: format!("{} values", batch.0.len()),
            reason: format!("this loss's statistics have {len} values (from its shard_statistics)"),
        }
        .into_candle());
    }
    if let Some(v) = batch.0.iter().find(|v| !(v.is_finite() && **v >= 0.0)) {
        return Err(crate::LossError::InvalidParameter {
            loss,
            field: "shard statistics",
            value: v.to_string(),
            reason: "statistics are sums of counts and probabilities: finite and >= 0".into(),
        }
        .into_candle());
    }
    Ok(())
}
