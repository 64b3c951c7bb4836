//! `BatchNorm2d` with PyTorch semantics, running statistics kept as variables in the `VarMap`.
//!
//! * Training: normalise with the batch mean and biased variance over `(N, H, W)`; update
//!   `running_mean ← (1 − m)·running_mean + m·mean` and
//!   `running_var ← (1 − m)·running_var + m·var·n/(n − 1)` (unbiased), `m = 0.1`.
//! * Evaluation (or frozen): `y = x·s + (β − μ·s)`, `s = γ / √(σ² + ε)` with running statistics.
//! * Frozen: running statistics in training too, `γ`, `β` detached (not trained).
//! * Synchronised (SyncBatchNorm, [`BatchNorm2d::with_communicator`] with more than one rank):
//!   in training (not frozen) the mean and variance are those of the *global* batch, the
//!   concatenation of every rank's batch, and the running statistics move towards them
//!   (unbiased with the global count), so they stay identical on every rank. See
//!   [`BatchNorm2d::with_communicator`].
//!
//! Parameter names are PyTorch's: `weight`, `bias`, `running_mean`, `running_var`.

use crate::conv::Conv2d;
use crate::init::{ParamBuilder, ParamInit, ParamKind};
use crate::ops::{batch_norm_cpu, conv_bn};
use crate::ModelError;
use candle_core::{DType, Result, Tensor, Var};
use candle_nn::VarBuilder;
use recallseg_distributed::{all_reduce_sum_autograd, SharedCommunicator};

/// PyTorch's default BatchNorm epsilon.
pub(crate) const BN_EPS: f64 = 1e-5;
/// PyTorch's default BatchNorm momentum.
pub(crate) const BN_MOMENTUM: f64 = 0.1;

/// 2-D batch normalisation over `(N, C, H, W)`.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    weight: Var,
    bias: Var,
    running_mean: Var,
    running_var: Var,
    channels: usize,
    frozen: bool,
    sync: Option<SharedCommunicator>,
}

impl BatchNorm2d {
    /// Creates the four tensors under the builder's prefix (γ = 1, β = 0, μ = 0, σ² = 1),
    /// synchronised over the builder's SyncBatchNorm communicator if it has one.
    pub(crate) fn new(
        pb: &ParamBuilder,
        channels: usize,
        frozen: bool,
    ) -> std::result::Result<Self, ModelError> {
        let c = [channels];
        Ok(Self {
            weight: pb.param("weight", &c, ParamKind::BnAffine, ParamInit::Const(1.0))?,
            bias: pb.param("bias", &c, ParamKind::BnAffine, ParamInit::Const(0.0))?,
            running_mean: pb.param("running_mean", &c, ParamKind::BnStat, ParamInit::Const(0.0))?,
            running_var: pb.param("running_var", &c, ParamKind::BnStat, ParamInit::Const(1.0))?,
            channels,
            frozen,
            sync: pb.sync_batch_norm().cloned(),
        })
    }

    /// A stand-alone layer of `channels` channels whose four tensors (`weight` γ = 1, `bias`
    /// β = 0, `running_mean` 0, `running_var` 1) are created under `vb`'s prefix; `vb` must be
    /// backed by a `VarMap` (the running statistics are updated in place). `frozen`: running
    /// statistics in training too. Not synchronised: see [`BatchNorm2d::with_communicator`].
    pub fn from_var_builder(
        vb: VarBuilder,
        channels: usize,
        frozen: bool,
    ) -> std::result::Result<Self, ModelError> {
        Self::new(&ParamBuilder::new(vb, 0), channels, frozen)
    }

    /// This layer synchronised over `comm` (SyncBatchNorm), or per process with `None`.
    ///
    /// With a communicator of more than one rank, training mode (not frozen) normalises with the
    /// mean and biased variance of the global batch: each rank contributes its per-channel sum
    /// `Σx`, centred sum of squares `Σ(x − x̄_r)²`, `(Σx)²/n_r` and element count `n_r` in one
    /// all-reduce through [`all_reduce_sum_autograd`], so the backward pass is exact (the
    /// gradient of the global loss, summed over ranks, reaches each rank's input). Every rank
    /// must then run the layer, forward and backward, in the same order (as data-parallel
    /// training does). The running statistics move towards the global moments, unbiased with
    /// the global count, and stay identical on every rank. On the CPU in f32 the fused kernels
    /// (BatchNorm, and convolution + BatchNorm, chosen by [`crate::ops::CpuKernels`]) do the same with f64 sums and one f64
    /// all-reduce each way; elsewhere (or with those kernels switched off) candle ops do it. All
    /// ranks must take the same path (same device, dtype and [`crate::ops::cpu_kernels`]), as
    /// ranks of one data-parallel run do. Evaluation, frozen layers and a single rank are
    /// unchanged.
    pub fn with_communicator(mut self, comm: Option<SharedCommunicator>) -> Self {
        self.sync = comm;
        self
    }

    /// The communicator the layer synchronises over, if any.
    pub fn communicator(&self) -> Option<&SharedCommunicator> {
        self.sync.as_ref()
    }

    /// The communicator when training statistics are synchronised in this call.
    fn synced(&self, train: bool) -> Option<&SharedCommunicator> {
        match &self.sync {
            Some(c) if train && !self.frozen && c.size() > 1 => Some(c),
            _ => None,
        }
    }

    /// The running mean (a view of the variable).
    pub fn running_mean(&self) -> &Tensor {
        self.running_mean.as_tensor()
    }

    /// The running variance (a view of the variable).
    pub fn running_var(&self) -> &Tensor {
        self.running_var.as_tensor()
    }

    /// Normalises `x`; in training (and not frozen) with batch statistics, updating the running
    /// statistics in place.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_impl(x, train, false)
    }

    /// `relu(self.forward_t(x, train))`, fused into one op on the CPU in training mode.
    pub fn forward_relu_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_impl(x, train, true)
    }

    /// `self.forward_t(conv.forward(x))` (then ReLU when `relu`): in training mode on the CPU with
    /// a dense convolution without bias, one fused op ([`crate::ops::conv_bn`]) whose backward
    /// skips candle's materialised gradient of the convolution's output; the same numbers.
    pub(crate) fn forward_after_conv_t(
        &self,
        conv: &Conv2d,
        x: &Tensor,
        train: bool,
        relu: bool,
    ) -> Result<Tensor> {
        if train && !self.frozen && !conv.has_bias() && crate::ops::cpu_kernels().batch_norm {
            let sync = self.synced(train);
            let fused = conv_bn::conv_bn_train_synced(
                x,
                conv.weight().as_tensor(),
                self.weight.as_tensor(),
                self.bias.as_tensor(),
                conv.geometry(),
                BN_EPS,
                relu,
                sync,
            )?;
            if let Some((y, stats, count)) = fused {
                match sync {
                    None => self.check(&y)?,
                    Some(comm) => self.check_global(comm, &y, count)?,
                }
                self.update_running(&stats, count)?;
                return Ok(y);
            }
        }
        self.forward_impl(&conv.forward(x)?, train, relu)
    }

    /// Moves the running statistics towards a batch's (`count` values per channel).
    fn update_running(&self, stats: &batch_norm_cpu::BatchStats, count: f64) -> Result<()> {
        let m = BN_MOMENTUM;
        let rm = self.running_mean.as_tensor();
        let rv = self.running_var.as_tensor();
        let mean = Tensor::new(stats.mean.as_slice(), rm.device())?.to_dtype(rm.dtype())?;
        let var = Tensor::new(stats.var.as_slice(), rv.device())?.to_dtype(rv.dtype())?;
        let new_mean = ((rm.detach() * (1.0 - m))? + (mean * m)?)?;
        let new_var = ((rv.detach() * (1.0 - m))? + (var * (m * count / (count - 1.0)))?)?;
        self.running_mean.set(&new_mean)?;
        self.running_var.set(&new_var)
    }

    /// The portable (candle ops) path, whatever the device (synchronised too): used off the CPU
    /// and by the tests that check the fused CPU ops against it.
    pub(crate) fn forward_portable_t(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        let y = match self.synced(train) {
            Some(comm) => self.forward_sync(comm, x)?,
            None => self.forward_candle(x, train)?,
        };
        if relu {
            y.relu()
        } else {
            Ok(y)
        }
    }

    fn forward_impl(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        if train
            && !self.frozen
            && crate::ops::cpu_kernels().batch_norm
            && batch_norm_cpu::supported(x)
        {
            let sync = self.synced(train);
            match sync {
                None => self.check(x)?,
                Some(_) => self.check_channels(x)?,
            }
            let (y, stats, count) = batch_norm_cpu::batch_norm_train_synced(
                x,
                self.weight.as_tensor(),
                self.bias.as_tensor(),
                BN_EPS,
                relu,
                sync,
            )?;
            if let Some(comm) = sync {
                self.check_global(comm, x, count)?;
            }
            self.update_running(&stats, count)?;
            return Ok(y);
        }
        if crate::ops::cpu_kernels().batch_norm && batch_norm_cpu::supported(x) {
            // Evaluation (or frozen) on the CPU: one fused pass with the running statistics.
            self.check_channels(x)?;
            let stats = batch_norm_cpu::BatchStats {
                mean: self
                    .running_mean
                    .as_tensor()
                    .to_dtype(DType::F64)?
                    .to_vec1()?,
                var: self
                    .running_var
                    .as_tensor()
                    .to_dtype(DType::F64)?
                    .to_vec1()?,
            };
            let (gamma, beta) = if self.frozen {
                (
                    self.weight.as_tensor().detach(),
                    self.bias.as_tensor().detach(),
                )
            } else {
                (
                    self.weight.as_tensor().clone(),
                    self.bias.as_tensor().clone(),
                )
            };
            return batch_norm_cpu::batch_norm_eval(x, &gamma, &beta, stats, BN_EPS, relu);
        }
        self.forward_portable_t(x, train, relu)
    }

    /// Training with the global batch's statistics (see [`BatchNorm2d::with_communicator`]).
    fn forward_sync(&self, comm: &SharedCommunicator, x: &Tensor) -> Result<Tensor> {
        self.check_channels(x)?;
        let (n, c, h, w) = x.dims4()?;
        let local = n * h * w;
        // Statistics in f32 at least (f64 for f64 models): the count must be exact.
        let stat_dtype = if x.dtype() == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let xs = x.to_dtype(stat_dtype)?;
        let sum = xs.sum_keepdim((0, 2, 3))?;
        // Centred on this rank's mean: Σ(x − x̄_r)² has no cancellation; the spread of the
        // ranks' means comes back through Σ_r (Σx)_r² / n_r − (Σx)² / n.
        let local_mean = (&sum / local.max(1) as f64)?;
        let m2 = xs
            .broadcast_sub(&local_mean)?
            .sqr()?
            .sum_keepdim((0, 2, 3))?;
        let q = (sum.sqr()? / local.max(1) as f64)?;
        let count = Tensor::new(&[local as f32], x.device())?.to_dtype(stat_dtype)?;
        let packed = Tensor::cat(
            &[
                sum.flatten_all()?,
                m2.flatten_all()?,
                q.flatten_all()?,
                count,
            ],
            0,
        )?;
        let global = all_reduce_sum_autograd(comm, &packed)?;
        let total = global
            .narrow(0, 3 * c, 1)?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?[0];
        self.check_global(comm, x, total)?;
        let g_sum = global.narrow(0, 0, c)?;
        let g_m2 = global.narrow(0, c, c)?;
        let g_q = global.narrow(0, 2 * c, c)?;
        let mean = (&g_sum / total)?;
        let var = ((((g_m2 + g_q)? - (g_sum.sqr()? / total)?)?) / total)?;
        let shape = (1, c, 1, 1);
        let gamma = self.weight.as_tensor().to_dtype(stat_dtype)?;
        let beta = self.bias.as_tensor().to_dtype(stat_dtype)?;
        let scale = (var.affine(1.0, BN_EPS)?.sqrt()?.recip()? * gamma)?;
        let y = xs
            .broadcast_sub(&mean.reshape(shape)?)?
            .broadcast_mul(&scale.reshape(shape)?)?
            .broadcast_add(&beta.reshape(shape)?)?
            .to_dtype(x.dtype())?;
        let m = BN_MOMENTUM;
        let rm = self.running_mean.as_tensor();
        let rv = self.running_var.as_tensor();
        let new_mean = ((rm.detach() * (1.0 - m))? + (mean.detach().to_dtype(rm.dtype())? * m)?)?;
        let new_var = ((rv.detach() * (1.0 - m))?
            + (var.detach().to_dtype(rv.dtype())? * (m * total / (total - 1.0)))?)?;
        self.running_mean.set(&new_mean)?;
        self.running_var.set(&new_var)?;
        Ok(y)
    }

    /// The training-mode check of a synchronised layer: more than one value per channel over
    /// all ranks (`total`), whatever this rank holds.
    fn check_global(&self, comm: &SharedCommunicator, x: &Tensor, total: f64) -> Result<()> {
        if total < 2.0 {
            candle_core::bail!(
                "batch norm in training mode needs more than one value per channel over all {} \
                 ranks, got input {:?} here and {total} values in all",
                comm.size(),
                x.dims()
            )
        }
        Ok(())
    }

    fn check_channels(&self, x: &Tensor) -> Result<()> {
        if x.dim(1)? != self.channels {
            candle_core::bail!(
                "batch norm expects {} channels, got input {:?}",
                self.channels,
                x.dims()
            )
        }
        Ok(())
    }

    /// Shape checks of training mode.
    fn check(&self, x: &Tensor) -> Result<()> {
        self.check_channels(x)?;
        let (n, _, h, w) = x.dims4()?;
        if n * h * w < 2 {
            candle_core::bail!(
                "batch norm in training mode needs more than one value per channel, got input {:?} \
                 (use a batch of at least 2, or evaluation mode)",
                x.dims()
            )
        }
        Ok(())
    }

    fn forward_candle(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        self.check_channels(x)?;
        let shape = (1, c, 1, 1);
        let (gamma, beta) = if self.frozen {
            (
                self.weight.as_tensor().detach(),
                self.bias.as_tensor().detach(),
            )
        } else {
            (
                self.weight.as_tensor().clone(),
                self.bias.as_tensor().clone(),
            )
        };
        if train && !self.frozen {
            self.check(x)?;
            let count = n * h * w;
            let mean = x.mean_keepdim((0, 2, 3))?;
            let xc = x.broadcast_sub(&mean)?;
            let var = xc.sqr()?.mean_keepdim((0, 2, 3))?;
            let scale = (var.affine(1.0, BN_EPS)?.sqrt()?.recip()?)
                .broadcast_mul(&gamma.reshape(shape)?)?;
            let y = xc
                .broadcast_mul(&scale)?
                .broadcast_add(&beta.reshape(shape)?)?;
            let m = BN_MOMENTUM;
            let unbias = count as f64 / (count as f64 - 1.0);
            let new_mean = ((self.running_mean.as_tensor().detach() * (1.0 - m))?
                + (mean.detach().flatten_all()? * m)?)?;
            let new_var = ((self.running_var.as_tensor().detach() * (1.0 - m))?
                + (var.detach().flatten_all()? * (m * unbias))?)?;
            self.running_mean.set(&new_mean)?;
            self.running_var.set(&new_var)?;
            Ok(y)
        } else {
            let rm = self.running_mean.as_tensor().detach();
            let rv = self.running_var.as_tensor().detach();
            let s = (rv.affine(1.0, BN_EPS)?.sqrt()?.recip()? * gamma)?;
            let shift = (beta - (rm * &s)?)?;
            x.broadcast_mul(&s.reshape(shape)?)?
                .broadcast_add(&shift.reshape(shape)?)
        }
    }
}
