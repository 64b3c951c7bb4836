//! DeepLabV3 head (torchvision's `DeepLabHead`): ASPP → 3×3 conv (no bias) → BN → ReLU →
//! 1×1 classifier (with bias). Parameter names: `classifier.0.*` (ASPP), `classifier.1.weight`,
//! `classifier.2.*` (BN), `classifier.4.weight|bias`, exactly torchvision's
//! `deeplabv3_resnet50/101` layout.

use crate::aspp::Aspp;
use crate::batch_norm::BatchNorm2d;
use crate::config::ModelConfig;
use crate::conv::Conv2d;
use crate::init::ParamBuilder;
use crate::ModelError;
use candle_core::{Result, Tensor};

/// The DeepLabV3 head.
#[derive(Debug, Clone)]
pub(crate) struct DeepLabV3Head {
    aspp: Aspp,
    conv: Conv2d,
    bn: BatchNorm2d,
    classifier: Conv2d,
}

impl DeepLabV3Head {
    /// Names (relative to the model root) of the parameters whose shape depends on the class count.
    pub(crate) const CLASSIFIER_PARAMS: [&'static str; 2] =
        ["classifier.4.weight", "classifier.4.bias"];

    /// Builds the head on `in_channels` backbone channels; `pb` is the model root.
    pub(crate) fn new(
        pb: &ParamBuilder,
        cfg: &ModelConfig,
        in_channels: usize,
    ) -> std::result::Result<Self, ModelError> {
        let c = cfg.head_channels;
        let hp = pb.pp("classifier");
        Ok(Self {
            aspp: Aspp::new(
                &hp.pp(0),
                in_channels,
                c,
                cfg.atrous_rates(),
                cfg.separable,
                cfg.dropout,
                cfg.freeze_bn,
            )?,
            conv: Conv2d::same(&hp.pp(1), c, c, 3, 1, 1, false)?,
            bn: BatchNorm2d::new(&hp.pp(2), c, cfg.freeze_bn)?,
            classifier: Conv2d::classifier(&hp.pp(4), c, cfg.n_classes, cfg.init)?,
        })
    }

    /// Logits at the backbone's resolution.
    pub(crate) fn forward_t(
        &self,
        features: &Tensor,
        train: bool,
        dropout_seed: u64,
    ) -> Result<Tensor> {
        let y = self.aspp.forward_t(features, train, dropout_seed)?;
        let y = self.bn.forward_after_conv_t(&self.conv, &y, train, true)?;
        self.classifier.forward(&y)
    }
}
