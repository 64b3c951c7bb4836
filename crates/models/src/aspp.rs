//! Atrous Spatial Pyramid Pooling (DeepLabV3), with torchvision's parameter names.
//!
//! Five parallel branches on the backbone output, each conv (no bias) + BN + ReLU:
//! `convs.0` 1×1; `convs.1..=3` 3×3 with dilation `r₁, r₂, r₃` (6/12/18 at output stride 16,
//! 12/24/36 at 8); `convs.4` image pooling (global average → 1×1 conv → BN → ReLU → broadcast back
//! to the feature size). Concatenated (5·C channels) and projected by `project.0` (1×1, no bias)
//! + `project.1` (BN) + ReLU to `C` channels, then dropout.
//!
//! With `separable`, the three atrous branches are depthwise-separable
//! ([`crate::separable_conv::SeparableConv2d`]: `convs.i.0.0.weight` depthwise,
//! `convs.i.0.1.weight` pointwise), as in DeepLabV3+ (Chen et al. 2018) and
//! segmentation_models_pytorch's ASPP.

use crate::batch_norm::BatchNorm2d;
use crate::dropout::Dropout;
use crate::init::ParamBuilder;
use crate::separable_conv::HeadConv;
use crate::ModelError;
use candle_core::{Result, Tensor};

#[derive(Debug, Clone)]
struct ConvBn {
    conv: HeadConv,
    bn: BatchNorm2d,
}

impl ConvBn {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.conv.forward_bn_t(&self.bn, x, train, true)
    }
}

/// The ASPP module.
#[derive(Debug, Clone)]
pub(crate) struct Aspp {
    branches: Vec<ConvBn>,
    pooling: ConvBn,
    project: ConvBn,
    dropout: Dropout,
}

impl Aspp {
    /// Builds ASPP from `in_channels` to `channels` with the three atrous `rates`
    /// (depthwise-separable atrous branches when `separable`).
    pub(crate) fn new(
        pb: &ParamBuilder,
        in_channels: usize,
        channels: usize,
        rates: [usize; 3],
        separable: bool,
        dropout: f64,
        frozen_bn: bool,
    ) -> std::result::Result<Self, ModelError> {
        let convs = pb.pp("convs");
        let mut branches = Vec::with_capacity(4);
        for (i, rate) in [1usize].iter().chain(rates.iter()).enumerate() {
            let bp = convs.pp(i);
            let k = if i == 0 { 1 } else { 3 };
            branches.push(ConvBn {
                conv: HeadConv::same(&bp.pp(0), in_channels, channels, k, *rate, separable)?,
                bn: BatchNorm2d::new(&bp.pp(1), channels, frozen_bn)?,
            });
        }
        let pp = convs.pp(4);
        let pooling = ConvBn {
            conv: HeadConv::same(&pp.pp(1), in_channels, channels, 1, 1, false)?,
            bn: BatchNorm2d::new(&pp.pp(2), channels, frozen_bn)?,
        };
        let proj = pb.pp("project");
        let project = ConvBn {
            conv: HeadConv::same(&proj.pp(0), 5 * channels, channels, 1, 1, false)?,
            bn: BatchNorm2d::new(&proj.pp(1), channels, frozen_bn)?,
        };
        Ok(Self {
            branches,
            pooling,
            project,
            dropout: Dropout::new(dropout, &pb.full_name("project.3")),
        })
    }

    /// Applies ASPP to `(N, C_in, H, W)`, giving `(N, channels, H, W)`.
    pub(crate) fn forward_t(&self, x: &Tensor, train: bool, dropout_seed: u64) -> Result<Tensor> {
        let (n, _, h, w) = x.dims4()?;
        let mut outs = Vec::with_capacity(5);
        for b in &self.branches {
            outs.push(b.forward_t(x, train)?);
        }
        let pooled = self.pooling.forward_t(&x.mean_keepdim((2, 3))?, train)?;
        let c = pooled.dim(1)?;
        outs.push(pooled.broadcast_as((n, c, h, w))?.contiguous()?);
        let y = Tensor::cat(&outs, 1)?;
        let y = self.project.forward_t(&y, train)?;
        self.dropout.forward_t(&y, train, dropout_seed)
    }
}
