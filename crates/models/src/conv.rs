//! `Conv2d` layer: a weight (and optional bias) applied through [`crate::ops::conv2d::conv2d`].

use crate::init::{ParamBuilder, ParamInit, ParamKind};
use crate::ops::conv2d::{conv2d, Conv2dGeometry};
use crate::ModelError;
use candle_core::{Result, Tensor, Var};

/// A 2-D convolution with square kernel. Weight layout `(C_out, C_in, k, k)` as in PyTorch;
/// Kaiming-normal (fan-out) initialised, bias (if any) zero.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Var,
    bias: Option<Var>,
    geometry: Conv2dGeometry,
}

impl Conv2d {
    /// Creates `{prefix}.weight` (and `{prefix}.bias` when `bias`).
    pub(crate) fn new(
        pb: &ParamBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        geometry: Conv2dGeometry,
        bias: bool,
    ) -> std::result::Result<Self, ModelError> {
        let weight = pb.param(
            "weight",
            &[out_channels, in_channels / geometry.groups, kernel, kernel],
            ParamKind::Weight,
            ParamInit::KaimingNormalFanOut,
        )?;
        let bias = if bias {
            Some(pb.param(
                "bias",
                &[out_channels],
                ParamKind::Weight,
                ParamInit::Const(0.0),
            )?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            geometry,
        })
    }

    /// A `k×k` convolution with stride, dilation and "same" padding `dilation · (k − 1) / 2`.
    pub(crate) fn same(
        pb: &ParamBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        dilation: usize,
        bias: bool,
    ) -> std::result::Result<Self, ModelError> {
        let geometry = Conv2dGeometry {
            padding: dilation * (kernel - 1) / 2,
            stride,
            dilation,
            groups: 1,
        };
        Self::new(pb, in_channels, out_channels, kernel, geometry, bias)
    }

    /// The weight variable.
    pub fn weight(&self) -> &Var {
        &self.weight
    }

    /// Whether the convolution adds a bias.
    pub fn has_bias(&self) -> bool {
        self.bias.is_some()
    }

    /// The geometry (padding, stride, dilation, groups).
    pub fn geometry(&self) -> Conv2dGeometry {
        self.geometry
    }

    /// Applies the convolution to `(N, C_in, H, W)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        conv2d(
            x,
            self.weight.as_tensor(),
            self.bias.as_ref().map(|b| b.as_tensor()),
            self.geometry,
        )
    }
}
