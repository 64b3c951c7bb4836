//! The auxiliary FCN head on layer3 that mmsegmentation trains DeepLabV3 with
//! (`auxiliary_head = dict(type='FCNHead', in_index=2, channels=256, num_convs=1,
//! concat_input=False, dropout_ratio=0.1, loss_decode=dict(loss_weight=0.4))` in
//! `configs/_base_/models/deeplabv3_r50-d8.py`): 3×3 conv (no bias) → BN → ReLU → channel
//! dropout → 1×1 classifier (with bias). It only adds a training signal: the trainer adds
//! `loss_weight × loss(aux logits)` to the main loss, and inference never runs it.
//!
//! Parameter names follow torchvision's `FCNHead` in `deeplabv3_resnet*(aux_loss=True)`, the
//! same layer sequence: `aux_classifier.0.weight` (conv), `aux_classifier.1.*` (BN),
//! `aux_classifier.4.weight|bias` (classifier). Its trainable parameter count is mmseg's
//! `in·channels·9 + 2·channels + channels·classes + classes`.

use crate::batch_norm::BatchNorm2d;
use crate::config::AuxHeadConfig;
use crate::config::{InitScheme, ModelConfig};
use crate::conv::Conv2d;
use crate::dropout::Dropout;
use crate::init::ParamBuilder;
use crate::ModelError;
use candle_core::{Result, Tensor};

/// The auxiliary FCN head.
#[derive(Debug, Clone)]
pub(crate) struct AuxHead {
    conv: Conv2d,
    bn: BatchNorm2d,
    dropout: Dropout,
    classifier: Conv2d,
}

impl AuxHead {
    /// Names (relative to the model root) of the parameters whose shape depends on the class
    /// count.
    pub(crate) const CLASSIFIER_PARAMS: [&'static str; 2] =
        ["aux_classifier.4.weight", "aux_classifier.4.bias"];

    /// Builds the head on `in_channels` layer3 channels; `pb` is the model root (with the head's
    /// convolution initialiser).
    pub(crate) fn new(
        pb: &ParamBuilder,
        cfg: &ModelConfig,
        aux: &AuxHeadConfig,
        in_channels: usize,
        init: InitScheme,
    ) -> std::result::Result<Self, ModelError> {
        let hp = pb.pp("aux_classifier");
        let c = aux.channels;
        Ok(Self {
            conv: Conv2d::same(&hp.pp(0), in_channels, c, 3, 1, 1, false)?,
            bn: BatchNorm2d::new(&hp.pp(1), c, cfg.freeze_bn)?,
            dropout: Dropout::new(aux.dropout, "aux_classifier.3"),
            classifier: Conv2d::classifier(&hp.pp(4), c, cfg.n_classes, init)?,
        })
    }

    /// Logits at layer3's resolution from layer3's features.
    pub(crate) fn forward_t(
        &self,
        layer3: &Tensor,
        train: bool,
        dropout_seed: u64,
    ) -> Result<Tensor> {
        let y = self
            .bn
            .forward_after_conv_t(&self.conv, layer3, train, true)?;
        let y = self.dropout.forward_channels_t(&y, train, dropout_seed)?;
        self.classifier.forward(&y)
    }
}

#[cfg(test)]
mod tests {
    use super::AuxHead;

    #[test]
    fn the_classifier_is_the_last_1x1_convolution() {
        // The names re-initialised when a checkpoint's class count differs.
        assert_eq!(
            AuxHead::CLASSIFIER_PARAMS,
            ["aux_classifier.4.weight", "aux_classifier.4.bias"]
        );
    }
}
