//! `BatchNorm2d` with PyTorch semantics, running statistics kept as variables in the `VarMap`.
//!
//! * Training: normalise with the batch mean and biased variance over `(N, H, W)`; update
//!   `running_mean ← (1 − m)·running_mean + m·mean` and
//!   `running_var ← (1 − m)·running_var + m·var·n/(n − 1)` (unbiased), `m = 0.1`.
//! * Evaluation (or frozen): `y = x·s + (β − μ·s)`, `s = γ / √(σ² + ε)` with running statistics.
//! * Frozen: running statistics in training too, `γ`, `β` detached (not trained).
//!
//! Parameter names are PyTorch's: `weight`, `bias`, `running_mean`, `running_var`.

use crate::conv::Conv2d;
use crate::init::{ParamBuilder, ParamInit, ParamKind};
use crate::ops::{batch_norm_cpu, conv_bn};
use crate::ModelError;
use candle_core::{DType, Result, Tensor, Var};

/// PyTorch's default BatchNorm epsilon.
pub const BN_EPS: f64 = 1e-5;
/// PyTorch's default BatchNorm momentum.
pub const BN_MOMENTUM: f64 = 0.1;

/// 2-D batch normalisation over `(N, C, H, W)`.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    weight: Var,
    bias: Var,
    running_mean: Var,
    running_var: Var,
    channels: usize,
    frozen: bool,
}

impl BatchNorm2d {
    /// Creates the four tensors under the builder's prefix (γ = 1, β = 0, μ = 0, σ² = 1).
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
        })
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
    pub fn forward_after_conv_t(
        &self,
        conv: &Conv2d,
        x: &Tensor,
        train: bool,
        relu: bool,
    ) -> Result<Tensor> {
        if train && !self.frozen && !conv.has_bias() && crate::ops::cpu_kernels().batch_norm {
            let fused = conv_bn::conv_bn_train(
                x,
                conv.weight().as_tensor(),
                self.weight.as_tensor(),
                self.bias.as_tensor(),
                conv.geometry(),
                BN_EPS,
                relu,
            )?;
            if let Some((y, stats)) = fused {
                self.check(&y)?;
                let (n, _, h, w) = y.dims4()?;
                self.update_running(&stats, (n * h * w) as f64)?;
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

    /// The portable (candle ops) path, whatever the device: used off the CPU and by the tests
    /// that check the fused CPU op against it.
    pub fn forward_portable_t(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        let y = self.forward_candle(x, train)?;
        if relu {
            y.relu()
        } else {
            Ok(y)
        }
    }

    fn forward_impl(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        let (n, _, h, w) = x.dims4()?;
        if train
            && !self.frozen
            && crate::ops::cpu_kernels().batch_norm
            && batch_norm_cpu::supported(x)
        {
            self.check(x)?;
            let (y, stats) = batch_norm_cpu::batch_norm_train(
                x,
                self.weight.as_tensor(),
                self.bias.as_tensor(),
                BN_EPS,
                relu,
            )?;
            self.update_running(&stats, (n * h * w) as f64)?;
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
