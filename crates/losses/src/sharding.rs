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
        /// Whether the statistics read the logits (the argmax: Recall, Precision) or only the
        /// labels (the normaliser of plain and weighted cross entropy). A caller holding
        /// micro-batches one at a time needs a prediction pass first only in the first case.
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
