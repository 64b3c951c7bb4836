//! A weighted sum of losses: [`CombinedLoss`].

use crate::{Kernel, LossError, LossOutput, LossTerm, Result, SegLoss, ShardStatistics, Sharding};
use candle_core::Tensor;

/// A weighted sum of losses, `L = Σ_i w_i L_i` (mmsegmentation's list of `loss_decode`, e.g.
/// `0.5 × recall_ce + 0.5 × lovasz`, or CE + Dice).
///
/// Each term keeps its own options, implementation choice and state (a Recall loss term with
/// a moving average carries it in checkpoints through [`SegLoss::state`]). Every step reports
/// each term's unweighted value ([`SegLoss::last_terms`], [`crate::LossOutput::terms`]); the
/// trainer logs them. Term keys are the losses' names, with `_2`, `_3`, … appended to repeats.
///
/// `last_class_weights` reports the weights of the only term that has any (e.g. the Recall term
/// of Recall + Lovász), `None` when no term or more than one term has them.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use recallseg_losses::{CombinedLoss, Lovasz, RecallCe, SegLoss};
///
/// let mut loss = CombinedLoss::new()
///     .with_term(0.5, Box::new(RecallCe::new(3)))?
///     .with_term(0.5, Box::new(Lovasz::new(3)))?;
/// let logits = Tensor::zeros((1, 3, 2, 2), candle_core::DType::F32, &Device::Cpu)?;
/// let target = Tensor::new(&[[[0u8, 1], [2, 255]]], &Device::Cpu)?;
/// let out = loss.forward_output(&logits, &target)?;
/// let terms = out.terms.unwrap();
/// assert_eq!(terms[0].name, "recall_ce");
/// assert_eq!(terms[1].name, "lovasz");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct CombinedLoss {
    terms: Vec<(String, f64, Box<dyn SegLoss>)>,
    last: Option<Vec<LossTerm>>,
}

impl Default for CombinedLoss {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for CombinedLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.terms.iter().map(|(n, w, _)| (n, w)))
            .finish()
    }
}

impl CombinedLoss {
    /// A sum without terms (add them with [`CombinedLoss::with_term`]; a forward pass needs at
    /// least one).
    pub fn new() -> Self {
        Self {
            terms: Vec::new(),
            last: None,
        }
    }

    /// Adds `weight × loss` (`weight` finite and `> 0`).
    pub fn with_term(
        mut self,
        weight: f64,
        loss: Box<dyn SegLoss>,
    ) -> std::result::Result<Self, LossError> {
        self.push(weight, loss)?;
        Ok(self)
    }

    pub(crate) fn push(
        &mut self,
        weight: f64,
        loss: Box<dyn SegLoss>,
    ) -> std::result::Result<(), LossError> {
        if !(weight.is_finite() && weight > 0.0) {
            return Err(LossError::InvalidParameter {
                loss: "combined",
                field: "weight",
                value: weight.to_string(),
                reason: format!(
                    "the weight of term `{}` must be finite and > 0",
                    loss.name()
                ),
            });
        }
        let base = loss.name().to_string();
        let mut key = base.clone();
        let mut k = 1;
        while self.terms.iter().any(|(n, _, _)| *n == key) {
            k += 1;
            key = format!("{base}_{k}");
        }
        self.terms.push((key, weight, loss));
        Ok(())
    }

    /// The terms' keys and weights, in order.
    pub fn terms(&self) -> Vec<(&str, f64)> {
        self.terms
            .iter()
            .map(|(n, w, _)| (n.as_str(), *w))
            .collect()
    }

    /// Which implementation each term ran on the last step ([`SegLoss::last_kernel`]).
    pub fn term_kernels(&self) -> Vec<(&str, Option<Kernel>)> {
        self.terms
            .iter()
            .map(|(n, _, l)| (n.as_str(), l.last_kernel()))
            .collect()
    }
}

/// The error of a combined loss without terms.
fn no_terms() -> LossError {
    LossError::InvalidParameter {
        loss: "combined",
        field: "terms",
        value: "[]".into(),
        reason: "a combined loss needs at least one term".into(),
    }
}

impl SegLoss for CombinedLoss {
    fn forward(&mut self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        if self.terms.is_empty() {
            return Err(no_terms());
        }
        self.last = None;
        let mut total: Option<Tensor> = None;
        let mut report = Vec::with_capacity(self.terms.len());
        for (name, weight, loss) in self.terms.iter_mut() {
            let l = loss.forward(logits, target)?;
            let value = l.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            report.push(LossTerm {
                name: name.clone(),
                weight: *weight,
                value,
            });
            let wl = l.affine(*weight, 0.0)?;
            total = Some(match total {
                None => wl,
                Some(t) => (t + wl)?,
            });
        }
        self.last = Some(report);
        // Non-empty: checked above.
        total.ok_or_else(no_terms)
    }

    fn name(&self) -> &str {
        "combined"
    }

    /// Exact when every term is ([`Sharding::Exact`], reading the logits when any term does);
    /// per shard otherwise.
    fn sharding(&self) -> Sharding {
        let mut needs = false;
        for (_, _, l) in &self.terms {
            match l.sharding() {
                Sharding::Exact { needs_logits } => needs |= needs_logits,
                Sharding::PerShard => return Sharding::PerShard,
            }
        }
        if self.terms.is_empty() {
            return Sharding::PerShard;
        }
        Sharding::Exact {
            needs_logits: needs,
        }
    }

    /// The terms' statistics one after the other, each preceded by its length, the whole
    /// preceded by 1: summed over `k` shards the first value is `k` and each length `k` times
    /// the length, so [`SegLoss::prepare_step`] can split the sum without knowing the terms'
    /// layouts.
    fn shard_statistics(&self, logits: &Tensor, target: &Tensor) -> Result<ShardStatistics> {
        if !matches!(self.sharding(), Sharding::Exact { .. }) {
            return Err(crate::options::per_shard_error("combined"));
        }
        let mut out = vec![1.0];
        for (_, _, l) in &self.terms {
            let st = l.shard_statistics(logits, target)?;
            out.push(st.0.len() as f64);
            out.extend(st.0);
        }
        Ok(ShardStatistics(out))
    }

    fn prepare_step(&mut self, batch: &ShardStatistics) -> Result<()> {
        if !matches!(self.sharding(), Sharding::Exact { .. }) {
            return Err(crate::options::per_shard_error("combined"));
        }
        let b = &batch.0;
        let bad = |reason: String| LossError::InvalidParameter {
            loss: "combined",
            field: "shard statistics",
            value: format!("{} values", b.len()),
            reason,
        };
        let shards = *b
            .first()
            .ok_or_else(|| bad("they are empty (not from shard_statistics)".into()))?;
        if !(shards >= 1.0 && shards.fract() == 0.0) {
            return Err(bad(format!("the shard count {shards} is not a count")));
        }
        let mut at = 1;
        let mut parts = Vec::with_capacity(self.terms.len());
        for (name, _, _) in &self.terms {
            let len = *b
                .get(at)
                .ok_or_else(|| bad(format!("they end before term `{name}`")))?
                / shards;
            if !(len >= 0.0 && len.fract() == 0.0) {
                return Err(bad(format!("term `{name}` has a bad length")));
            }
            let len = len as usize;
            let part = b
                .get(at + 1..at + 1 + len)
                .ok_or_else(|| bad(format!("they end inside term `{name}`")))?;
            parts.push(ShardStatistics(part.to_vec()));
            at += 1 + len;
        }
        if at != b.len() {
            return Err(bad("values are left over after the last term".into()));
        }
        for ((_, _, l), part) in self.terms.iter_mut().zip(&parts) {
            l.prepare_step(part)?;
        }
        self.last = None;
        Ok(())
    }

    /// `Σ_i w_i` times each term's share; the terms' values in [`LossOutput::terms`] are their
    /// shares.
    fn forward_shard(&mut self, logits: &Tensor, target: &Tensor) -> Result<LossOutput> {
        if !matches!(self.sharding(), Sharding::Exact { .. }) {
            return Err(crate::options::per_shard_error("combined"));
        }
        let mut total: Option<Tensor> = None;
        let mut report = Vec::with_capacity(self.terms.len());
        for (name, weight, loss) in self.terms.iter_mut() {
            let l = loss.forward_shard(logits, target)?.loss;
            let value = l.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            report.push(LossTerm {
                name: name.clone(),
                weight: *weight,
                value,
            });
            let wl = l.affine(*weight, 0.0)?;
            total = Some(match total {
                None => wl,
                Some(t) => (t + wl)?,
            });
        }
        self.last = Some(report);
        let loss = total.ok_or_else(no_terms)?;
        Ok(LossOutput {
            loss,
            class_weights: self.last_class_weights(),
            terms: self.last.clone(),
        })
    }

    fn last_class_weights(&self) -> Option<Vec<f32>> {
        let mut with: Vec<Vec<f32>> = self
            .terms
            .iter()
            .filter_map(|(_, _, l)| l.last_class_weights())
            .collect();
        if with.len() == 1 {
            with.pop()
        } else {
            None
        }
    }

    fn last_terms(&self) -> Option<Vec<LossTerm>> {
        self.last.clone()
    }

    /// The terms' states, each as its length followed by its values (`[0]` for a term
    /// without state); `None` when no term has state.
    fn state(&self) -> Option<Vec<f32>> {
        let states: Vec<Option<Vec<f32>>> = self.terms.iter().map(|(_, _, l)| l.state()).collect();
        if states.iter().all(Option::is_none) {
            return None;
        }
        let mut out = Vec::new();
        for s in states {
            let s = s.unwrap_or_default();
            out.push(s.len() as f32);
            out.extend(s);
        }
        Some(out)
    }

    fn load_state(&mut self, state: &[f32]) -> Result<()> {
        if state.is_empty() {
            for (_, _, l) in self.terms.iter_mut() {
                l.load_state(&[])?;
            }
            return Ok(());
        }
        let bad = |reason: String| LossError::InvalidParameter {
            loss: "combined",
            field: "state",
            value: format!("{} values", state.len()),
            reason,
        };
        let mut at = 0;
        let mut parts = Vec::with_capacity(self.terms.len());
        for (name, _, _) in &self.terms {
            let len = *state
                .get(at)
                .ok_or_else(|| bad(format!("it ends before term `{name}`")))?;
            if !(len >= 0.0 && len.fract() == 0.0) {
                return Err(bad(format!("term `{name}` has a bad length {len}")));
            }
            let len = len as usize;
            let part = state
                .get(at + 1..at + 1 + len)
                .ok_or_else(|| bad(format!("it ends inside term `{name}`")))?;
            parts.push(part);
            at += 1 + len;
        }
        if at != state.len() {
            return Err(bad("values are left over after the last term".into()));
        }
        for ((_, _, l), part) in self.terms.iter_mut().zip(parts) {
            l.load_state(part)?;
        }
        Ok(())
    }
}
