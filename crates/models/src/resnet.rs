//! ResNet-18/34 (basic blocks) and ResNet-50/101 (bottlenecks) backbones, dilated for output
//! stride 8 or 16, with torchvision/timm parameter names so ImageNet checkpoints load as they are.
//!
//! Dilation follows torchvision's `replace_stride_with_dilation` (and timm's `output_stride`):
//! at output stride 16 layer4 keeps stride 1 and dilation 2; at 8, layer3 has dilation 2 and
//! layer4 dilation 4. The first block of a dilated stage uses the previous stage's dilation in
//! its first 3×3 conv (basic: `conv1`; bottleneck: `conv2`), the other convs the new one. With
//! multi-grid rates `g`, every layer4 block `i` uses dilation `d₄ · g[i]` in all its 3×3 convs.
//! With `smp_dilation` (segmentation_models_pytorch's encoders) the first block's first 3×3 conv
//! of a dilated stage takes the stage's dilation too.

use crate::batch_norm::BatchNorm2d;
use crate::config::ModelConfig;
use crate::conv::Conv2d;
use crate::init::ParamBuilder;
use crate::ops::add_relu::add_relu;
use crate::ops::conv2d::Conv2dGeometry;
use crate::ops::max_pool::max_pool2d;
use crate::ModelError;
use candle_core::{Result, Tensor};

#[derive(Debug, Clone)]
struct Downsample {
    conv: Conv2d,
    bn: BatchNorm2d,
}

#[derive(Debug, Clone)]
enum Block {
    Basic {
        conv1: Conv2d,
        bn1: BatchNorm2d,
        conv2: Conv2d,
        bn2: BatchNorm2d,
        downsample: Option<Downsample>,
    },
    Bottleneck {
        conv1: Conv2d,
        bn1: BatchNorm2d,
        conv2: Conv2d,
        bn2: BatchNorm2d,
        conv3: Conv2d,
        bn3: BatchNorm2d,
        downsample: Option<Downsample>,
    },
}

impl Block {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Block::Basic {
                conv1,
                bn1,
                conv2,
                bn2,
                downsample,
            } => {
                let y = bn1.forward_after_conv_t(conv1, x, train, true)?;
                let y = bn2.forward_after_conv_t(conv2, &y, train, false)?;
                let identity = match downsample {
                    Some(d) => d.bn.forward_after_conv_t(&d.conv, x, train, false)?,
                    None => x.clone(),
                };
                add_relu(&y, &identity)
            }
            Block::Bottleneck {
                conv1,
                bn1,
                conv2,
                bn2,
                conv3,
                bn3,
                downsample,
            } => {
                let y = bn1.forward_after_conv_t(conv1, x, train, true)?;
                let y = bn2.forward_after_conv_t(conv2, &y, train, true)?;
                let y = bn3.forward_after_conv_t(conv3, &y, train, false)?;
                let identity = match downsample {
                    Some(d) => d.bn.forward_after_conv_t(&d.conv, x, train, false)?,
                    None => x.clone(),
                };
                add_relu(&y, &identity)
            }
        }
    }
}

/// Features a ResNet hands to a DeepLab head.
#[derive(Debug, Clone)]
pub struct ResNetFeatures {
    /// Output of layer1 (stride 4): DeepLabV3+'s low-level features.
    pub low_level: Tensor,
    /// Output of layer3 (stride 16, or 8 at output stride 8): the auxiliary head's input.
    pub layer3: Tensor,
    /// Output of layer4 (stride 8 or 16).
    pub out: Tensor,
}

/// A ResNet without its classifier (`fc`), as a dilated feature extractor.
#[derive(Debug, Clone)]
pub(crate) struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    layers: [Vec<Block>; 4],
    channels: [usize; 4],
}

impl ResNet {
    /// Builds the backbone described by `cfg` (depth, width, output stride, multi-grid, BN
    /// freezing) under the builder's prefix.
    pub(crate) fn new(
        pb: &ParamBuilder,
        cfg: &ModelConfig,
    ) -> std::result::Result<Self, ModelError> {
        let width = cfg.backbone_width;
        let frozen = cfg.freeze_bn;
        let conv1 = Conv2d::same(&pb.pp("conv1"), 3, width, 7, 2, 1, false)?;
        let bn1 = BatchNorm2d::new(&pb.pp("bn1"), width, frozen)?;
        // Which stages trade their stride for dilation.
        let dilate = match cfg.output_stride {
            8 => [false, false, true, true],
            16 => [false, false, false, true],
            _ => [false; 4],
        };
        let blocks = cfg.backbone.blocks();
        let bottleneck = cfg.backbone.is_bottleneck();
        let expansion = if bottleneck { 4 } else { 1 };
        let mut inplanes = width;
        let mut dilation = 1;
        let mut layers: [Vec<Block>; 4] = Default::default();
        let mut channels = [0; 4];
        for stage in 0..4 {
            let planes = width << stage;
            let mut stride = if stage == 0 { 1 } else { 2 };
            let previous_dilation = dilation;
            if dilate[stage] {
                dilation *= stride;
                stride = 1;
            }
            let lp = pb.pp(format!("layer{}", stage + 1));
            for b in 0..blocks[stage] {
                let bp = lp.pp(b);
                let (first_dil, dil, s) = match (&cfg.multi_grid, stage) {
                    (Some(grid), 3) => (
                        dilation * grid[b],
                        dilation * grid[b],
                        if b == 0 { stride } else { 1 },
                    ),
                    // torchvision and timm keep the previous dilation in the first block's first
                    // 3×3 convolution; smp's encoders dilate it too.
                    _ if b == 0 && cfg.smp_dilation => (dilation, dilation, stride),
                    _ if b == 0 => (previous_dilation, dilation, stride),
                    _ => (dilation, dilation, 1),
                };
                let downsample = if b == 0 && (s != 1 || inplanes != planes * expansion) {
                    let dp = bp.pp("downsample");
                    let geometry = Conv2dGeometry {
                        padding: 0,
                        stride: s,
                        dilation: 1,
                        groups: 1,
                    };
                    Some(Downsample {
                        conv: Conv2d::new(
                            &dp.pp(0),
                            inplanes,
                            planes * expansion,
                            1,
                            geometry,
                            false,
                        )?,
                        bn: BatchNorm2d::new(&dp.pp(1), planes * expansion, frozen)?,
                    })
                } else {
                    None
                };
                let block = if bottleneck {
                    Block::Bottleneck {
                        conv1: Conv2d::same(&bp.pp("conv1"), inplanes, planes, 1, 1, 1, false)?,
                        bn1: BatchNorm2d::new(&bp.pp("bn1"), planes, frozen)?,
                        conv2: Conv2d::same(
                            &bp.pp("conv2"),
                            planes,
                            planes,
                            3,
                            s,
                            first_dil,
                            false,
                        )?,
                        bn2: BatchNorm2d::new(&bp.pp("bn2"), planes, frozen)?,
                        conv3: Conv2d::same(&bp.pp("conv3"), planes, planes * 4, 1, 1, 1, false)?,
                        bn3: BatchNorm2d::new(&bp.pp("bn3"), planes * 4, frozen)?,
                        downsample,
                    }
                } else {
                    Block::Basic {
                        conv1: Conv2d::same(
                            &bp.pp("conv1"),
                            inplanes,
                            planes,
                            3,
                            s,
                            first_dil,
                            false,
                        )?,
                        bn1: BatchNorm2d::new(&bp.pp("bn1"), planes, frozen)?,
                        conv2: Conv2d::same(&bp.pp("conv2"), planes, planes, 3, 1, dil, false)?,
                        bn2: BatchNorm2d::new(&bp.pp("bn2"), planes, frozen)?,
                        downsample,
                    }
                };
                layers[stage].push(block);
                inplanes = planes * expansion;
            }
            channels[stage] = inplanes;
        }
        Ok(Self {
            conv1,
            bn1,
            layers,
            channels,
        })
    }

    /// Output channels of layer1..layer4.
    pub(crate) fn channels(&self) -> [usize; 4] {
        self.channels
    }

    /// Runs the stem and the four stages on `(N, 3, H, W)`.
    pub(crate) fn forward_t(&self, x: &Tensor, train: bool) -> Result<ResNetFeatures> {
        let x = self.bn1.forward_after_conv_t(&self.conv1, x, train, true)?;
        let mut x = max_pool2d(&x, 3, 2, 1)?;
        let mut low_level = None;
        let mut layer3 = None;
        for (i, layer) in self.layers.iter().enumerate() {
            for block in layer {
                x = block.forward_t(&x, train)?;
            }
            match i {
                0 => low_level = Some(x.clone()),
                2 => layer3 = Some(x.clone()),
                _ => {}
            }
        }
        Ok(ResNetFeatures {
            low_level: low_level.expect("layer1 always runs"),
            layer3: layer3.expect("layer3 always runs"),
            out: x,
        })
    }
}
