//! DeepLabV3+ head: ASPP on the backbone output, a decoder with low-level features, classifier.
//!
//! * `aspp.*`: ASPP (see [`crate::aspp`]) with projection and dropout;
//! * `decoder.project.0|1`: layer1 features → 1×1 conv (no bias) to 48 channels → BN → ReLU;
//! * the ASPP output is bilinearly upsampled to the low-level size and concatenated before them;
//! * `decoder.fuse.0|1` and `decoder.fuse.4|5`: two 3×3 convs (no bias) to 256 channels, each
//!   followed by BN, ReLU and dropout (0.5, then 0.1 by default, as in the paper's code);
//! * `classifier.weight|bias`: 1×1 conv to the classes.

use crate::aspp::Aspp;
use crate::batch_norm::BatchNorm2d;
use crate::config::ModelConfig;
use crate::conv::Conv2d;
use crate::dropout::Dropout;
use crate::init::ParamBuilder;
use crate::ops::resize::resize_bilinear;
use crate::ModelError;
use candle_core::{Result, Tensor};

/// The DeepLabV3+ head (ASPP + decoder + classifier).
#[derive(Debug, Clone)]
pub struct DeepLabV3PlusHead {
    aspp: Aspp,
    low_conv: Conv2d,
    low_bn: BatchNorm2d,
    fuse1: Conv2d,
    fuse1_bn: BatchNorm2d,
    fuse1_dropout: Dropout,
    fuse2: Conv2d,
    fuse2_bn: BatchNorm2d,
    fuse2_dropout: Dropout,
    classifier: Conv2d,
}

impl DeepLabV3PlusHead {
    /// Names of the parameters whose shape depends on the class count.
    pub const CLASSIFIER_PARAMS: [&'static str; 2] = ["classifier.weight", "classifier.bias"];

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
        let fuse = dp.pp("fuse");
        Ok(Self {
            aspp: Aspp::new(
                &pb.pp("aspp"),
                high_channels,
                c,
                cfg.atrous_rates(),
                cfg.dropout,
                fb,
            )?,
            low_conv: Conv2d::same(&proj.pp(0), low_channels, l, 1, 1, 1, false)?,
            low_bn: BatchNorm2d::new(&proj.pp(1), l, fb)?,
            fuse1: Conv2d::same(&fuse.pp(0), c + l, c, 3, 1, 1, false)?,
            fuse1_bn: BatchNorm2d::new(&fuse.pp(1), c, fb)?,
            fuse1_dropout: Dropout::new(cfg.decoder_dropout[0], &fuse.full_name("3")),
            fuse2: Conv2d::same(&fuse.pp(4), c, c, 3, 1, 1, false)?,
            fuse2_bn: BatchNorm2d::new(&fuse.pp(5), c, fb)?,
            fuse2_dropout: Dropout::new(cfg.decoder_dropout[1], &fuse.full_name("7")),
            classifier: Conv2d::same(&pb.pp("classifier"), c, cfg.n_classes, 1, 1, 1, true)?,
        })
    }

    /// Logits at the low-level (stride 4) resolution.
    pub fn forward_t(
        &self,
        low_level: &Tensor,
        features: &Tensor,
        train: bool,
        dropout_seed: u64,
    ) -> Result<Tensor> {
        let (_, _, h, w) = low_level.dims4()?;
        let x = self.aspp.forward_t(features, train, dropout_seed)?;
        let x = resize_bilinear(&x, h, w, false)?;
        let low = self
            .low_bn
            .forward_relu_t(&self.low_conv.forward(low_level)?, train)?;
        let y = Tensor::cat(&[&x, &low], 1)?;
        let y = self
            .fuse1_bn
            .forward_relu_t(&self.fuse1.forward(&y)?, train)?;
        let y = self.fuse1_dropout.forward_t(&y, train, dropout_seed)?;
        let y = self
            .fuse2_bn
            .forward_relu_t(&self.fuse2.forward(&y)?, train)?;
        let y = self.fuse2_dropout.forward_t(&y, train, dropout_seed)?;
        self.classifier.forward(&y)
    }
}
