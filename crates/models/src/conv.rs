//! `Conv2d` layer: a weight (and optional bias) applied through [`crate::ops::conv2d::conv2d`].

use crate::config::InitScheme;
use crate::init::{ParamBuilder, ParamInit, ParamKind};
use crate::ops::conv2d::{conv2d, Conv2dGeometry};
use crate::ModelError;
use candle_core::{Result, Tensor, Var};

/// A 2-D convolution with square kernel. Weight layout `(C_out, C_in, k, k)` as in PyTorch;
/// the weight starts as the builder's convolution init says (Kaiming-normal fan-out unless the
/// model's [`InitScheme`](crate::InitScheme) sets another for the head), the bias (if any) zero.
#[derive(Debug, Clone)]
pub(crate) struct Conv2d {
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
        let bias_init = bias.then_some(ParamInit::Const(0.0));
        Self::with_init(
            pb,
            [in_channels, out_channels, kernel],
            geometry,
            pb.conv_init(),
            bias_init,
        )
    }

    /// A convolution with explicit initialisers for its weight and (when `bias_init` is given)
    /// its bias; `[in_channels, out_channels, kernel]`.
    pub(crate) fn with_init(
        pb: &ParamBuilder,
        [in_channels, out_channels, kernel]: [usize; 3],
        geometry: Conv2dGeometry,
        weight_init: ParamInit,
        bias_init: Option<ParamInit>,
    ) -> std::result::Result<Self, ModelError> {
        let weight = pb.param(
            "weight",
            &[out_channels, in_channels / geometry.groups, kernel, kernel],
            ParamKind::Weight,
            weight_init,
        )?;
        let bias = bias_init
            .map(|init| pb.param("bias", &[out_channels], ParamKind::Weight, init))
            .transpose()?;
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

    /// The 1×1 classifier of a segmentation head (with bias), initialised as `scheme` says.
    pub(crate) fn classifier(
        pb: &ParamBuilder,
        in_channels: usize,
        n_classes: usize,
        scheme: InitScheme,
    ) -> std::result::Result<Self, ModelError> {
        let (weight_init, bias_init) = scheme.classifier(in_channels);
        Self::with_init(
            pb,
            [in_channels, n_classes, 1],
            Conv2dGeometry {
                padding: 0,
                stride: 1,
                dilation: 1,
                groups: 1,
            },
            weight_init,
            Some(bias_init),
        )
    }

    /// The weight variable.
    pub(crate) fn weight(&self) -> &Var {
        &self.weight
    }

    /// Whether the convolution adds a bias.
    pub(crate) fn has_bias(&self) -> bool {
        self.bias.is_some()
    }

    /// The geometry (padding, stride, dilation, groups).
    pub(crate) fn geometry(&self) -> Conv2dGeometry {
        self.geometry
    }

    /// Applies the convolution to `(N, C_in, H, W)`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        conv2d(
            x,
            self.weight.as_tensor(),
            self.bias.as_ref().map(|b| b.as_tensor()),
            self.geometry,
        )
    }
}
