//! DeepLabV3+ head: ASPP on the backbone output, a decoder with low-level features, classifier.
//!
//! * `aspp.*`: ASPP (see [`crate::aspp`]) with projection and dropout;
//! * `decoder.aspp_conv.0|1` (with `aspp_conv`, segmentation_models_pytorch's layout): a 3×3
//!   conv (no bias) → BN → ReLU on the ASPP output;
//! * `decoder.project.0|1`: layer1 features → 1×1 conv (no bias) to 48 channels → BN → ReLU;
//! * the ASPP output is bilinearly upsampled to the low-level size and concatenated before them;
//! * `decoder.fuse.0|1` and `decoder.fuse.4|5`: two 3×3 convs (no bias) to 256 channels, each
//!   followed by BN, ReLU and dropout (0.5, then 0.1 by default, as in the paper's code); with
//!   `decoder_convs = 1` only the first (segmentation_models_pytorch's layout);
//! * with `separable`, the ASPP's atrous branches and the decoder convs are depthwise-separable
//!   (`decoder.fuse.0.0.weight` depthwise, `decoder.fuse.0.1.weight` pointwise; see
//!   [`crate::separable_conv`]);
//! * `classifier.weight|bias`: 1×1 conv to the classes.

use crate::aspp::Aspp;
use crate::batch_norm::BatchNorm2d;
use crate::config::ModelConfig;
use crate::conv::Conv2d;
use crate::dropout::Dropout;
use crate::init::ParamBuilder;
use crate::ops::resize::resize_bilinear;
use crate::separable_conv::HeadConv;
use crate::ModelError;
use candle_core::{Result, Tensor};

/// The DeepLabV3+ head (ASPP + decoder + classifier).
#[derive(Debug, Clone)]
pub(crate) struct DeepLabV3PlusHead {
    aspp: Aspp,
    aspp_conv: Option<AsppConv>,
    low_conv: Conv2d,
    low_bn: BatchNorm2d,
    fuse: Vec<FuseConv>,
    classifier: Conv2d,
    align_corners: bool,
}

/// The optional 3×3 conv (no bias) → BN → ReLU after the ASPP (`ModelConfig::aspp_conv`).
#[derive(Debug, Clone)]
struct AsppConv {
    conv: HeadConv,
    bn: BatchNorm2d,
}

/// One decoder convolution: 3×3 conv (no bias) → BN → ReLU → dropout.
#[derive(Debug, Clone)]
struct FuseConv {
    conv: HeadConv,
    bn: BatchNorm2d,
    dropout: Dropout,
}

impl DeepLabV3PlusHead {
    /// Names of the parameters whose shape depends on the class count.
    pub(crate) const CLASSIFIER_PARAMS: [&'static str; 2] =
        ["classifier.weight", "classifier.bias"];

    /// Builds the head for `low_channels` layer1 channels and `high_channels` layer4 channels;
    /// `pb` is the model root.
    pub(crate) fn new(
        pb: &ParamBuilder,
        cfg: &ModelConfig,
        low_channels: usize,
        high_channels: usize,
    ) -> std::result::Result<Self, ModelError> {
        let c = cfg.head_channels;
        let l = cfg.low_level_channels;
        let fb = cfg.freeze_bn;
        let dp = pb.pp("decoder");
        let proj = dp.pp("project");
        let fp = dp.pp("fuse");
        let mut fuse = Vec::with_capacity(cfg.decoder_convs);
        for i in 0..cfg.decoder_convs {
            let c_in = if i == 0 { c + l } else { c };
            fuse.push(FuseConv {
                conv: HeadConv::same(&fp.pp(4 * i), c_in, c, 3, 1, cfg.separable)?,
                bn: BatchNorm2d::new(&fp.pp(4 * i + 1), c, fb)?,
                dropout: Dropout::new(
                    cfg.decoder_dropout[i],
                    &fp.full_name(&(4 * i + 3).to_string()),
                ),
            });
        }
        let aspp_conv = if cfg.aspp_conv {
            let ap = dp.pp("aspp_conv");
            Some(AsppConv {
                conv: HeadConv::same(&ap.pp(0), c, c, 3, 1, cfg.separable)?,
                bn: BatchNorm2d::new(&ap.pp(1), c, fb)?,
            })
        } else {
            None
        };
        Ok(Self {
            aspp_conv,
            align_corners: cfg.align_corners,
            aspp: Aspp::new(
                &pb.pp("aspp"),
                high_channels,
                c,
                cfg.atrous_rates(),
                cfg.separable,
                cfg.dropout,
                fb,
            )?,
            low_conv: Conv2d::same(&proj.pp(0), low_channels, l, 1, 1, 1, false)?,
            low_bn: BatchNorm2d::new(&proj.pp(1), l, fb)?,
            fuse,
            classifier: Conv2d::classifier(&pb.pp("classifier"), c, cfg.n_classes, cfg.init)?,
        })
    }

    /// Logits at the low-level (stride 4) resolution.
    pub(crate) fn forward_t(
        &self,
        low_level: &Tensor,
        features: &Tensor,
        train: bool,
        dropout_seed: u64,
    ) -> Result<Tensor> {
        let (_, _, h, w) = low_level.dims4()?;
        let mut x = self.aspp.forward_t(features, train, dropout_seed)?;
        if let Some(a) = &self.aspp_conv {
            x = a.conv.forward_bn_t(&a.bn, &x, train, true)?;
        }
        let x = resize_bilinear(&x, h, w, self.align_corners)?;
        let low = self
            .low_bn
            .forward_after_conv_t(&self.low_conv, low_level, train, true)?;
        let mut y = Tensor::cat(&[&x, &low], 1)?;
        for f in &self.fuse {
            y = f.conv.forward_bn_t(&f.bn, &y, train, true)?;
            y = f.dropout.forward_t(&y, train, dropout_seed)?;
        }
        self.classifier.forward(&y)
    }
}
