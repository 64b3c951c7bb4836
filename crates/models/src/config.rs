//! `ModelConfig`: which DeepLab to build (serde, validated with clear errors).

use crate::init::ParamInit;
use crate::ModelError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// ResNet depth of the backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backbone {
    /// ResNet-18: basic blocks `[2, 2, 2, 2]`.
    Resnet18,
    /// ResNet-34: basic blocks `[3, 4, 6, 3]`.
    Resnet34,
    /// ResNet-50: bottlenecks `[3, 4, 6, 3]`.
    Resnet50,
    /// ResNet-101: bottlenecks `[3, 4, 23, 3]`.
    Resnet101,
}

impl Backbone {
    /// Number of residual blocks in each of the four stages.
    pub fn blocks(self) -> [usize; 4] {
        match self {
            Backbone::Resnet18 => [2, 2, 2, 2],
            Backbone::Resnet34 | Backbone::Resnet50 => [3, 4, 6, 3],
            Backbone::Resnet101 => [3, 4, 23, 3],
        }
    }

    /// Whether the stages use bottleneck blocks (expansion 4) rather than basic blocks.
    pub fn is_bottleneck(self) -> bool {
        matches!(self, Backbone::Resnet50 | Backbone::Resnet101)
    }

    /// Output channels of stage `i` (0-based) for a base width `width`.
    pub fn stage_channels(self, i: usize, width: usize) -> usize {
        let planes = width << i;
        if self.is_bottleneck() {
            planes * 4
        } else {
            planes
        }
    }

    /// The name used in configs and hub repositories (`"resnet18"`, …).
    pub fn name(self) -> &'static str {
        match self {
            Backbone::Resnet18 => "resnet18",
            Backbone::Resnet34 => "resnet34",
            Backbone::Resnet50 => "resnet50",
            Backbone::Resnet101 => "resnet101",
        }
    }

    /// Default ImageNet weights on the Hugging Face hub: timm's ports of the torchvision
    /// checkpoints (`timm/resnet18.tv_in1k`, …), whose tensor names are torchvision's.
    pub fn default_hub_repo(self) -> String {
        format!("timm/{}.tv_in1k", self.name())
    }
}

/// Segmentation head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Head {
    /// DeepLabV3: ASPP, 3×3 conv, classifier, upsampled ×OS (torchvision's `DeepLabHead`).
    #[serde(rename = "deeplabv3")]
    DeepLabV3,
    /// DeepLabV3+: ASPP, low-level decoder with two 3×3 convs, classifier, upsampled ×4.
    #[serde(rename = "deeplabv3plus")]
    DeepLabV3Plus,
}

/// How the parameters of a model start (before any pretrained weights are loaded).
///
/// The backbone always starts as torchvision's ResNet does: every convolution Kaiming-normal in
/// fan-out mode, BatchNorm scale 1 and shift 0. The schemes differ in the head, and most in the
/// classifier, whose scale sets the first losses: with 256 input channels and 16 classes, the
/// fan-out classifier starts with logits several times larger than the other two, and the first
/// cross-entropy loss near 6 to 8 instead of about `ln 16 ≈ 2.8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitScheme {
    /// Every convolution, the head's and the classifier's included, Kaiming-normal in fan-out
    /// mode, like the backbone; classifier bias 0 (recallseg's scheme until this option; the
    /// `synthia-quick` preset keeps it, as its published figures were measured with it).
    KaimingFanOut,
    /// PyTorch's default initialisation of `nn.Conv2d` for the whole head: weights and the
    /// classifier's bias `U(−1/√fan_in, 1/√fan_in)`. This is what segmentation_models_pytorch's
    /// DeepLabV3 and DeepLabV3Plus start from (0.6 never calls their `initialize()`, so its
    /// Kaiming/Xavier decoder and head initialisers are not applied to them).
    PytorchDefault,
    /// The paper's code (PotatoTian/recall-semseg, the `_init_weight` of the ASPP and decoder
    /// in `ptsemseg/models/deeplab_utils`): every head convolution, the classifier included,
    /// `kaiming_normal_` with PyTorch's defaults (fan-in, gain √2); the classifier's bias keeps
    /// PyTorch's default `U(−1/√fan_in, 1/√fan_in)`. The default: the paper's model, and at
    /// equal budget it trains better than `kaiming_fan_out` (docs/reproduction.md, parity).
    #[default]
    PaperCode,
}

impl InitScheme {
    /// How the head's convolution weights (ASPP, decoder, projections) start.
    pub fn head_conv(self) -> ParamInit {
        match self {
            InitScheme::KaimingFanOut => ParamInit::KaimingNormalFanOut,
            InitScheme::PytorchDefault => ParamInit::PytorchDefault,
            InitScheme::PaperCode => ParamInit::KaimingNormalFanIn,
        }
    }

    /// How the 1×1 classifier's weight and bias start, for `in_channels` inputs.
    pub fn classifier(self, in_channels: usize) -> (ParamInit, ParamInit) {
        let default_bias = ParamInit::Uniform(1.0 / (in_channels.max(1) as f64).sqrt());
        match self {
            InitScheme::KaimingFanOut => (ParamInit::KaimingNormalFanOut, ParamInit::Const(0.0)),
            InitScheme::PytorchDefault => (ParamInit::PytorchDefault, default_bias),
            InitScheme::PaperCode => (ParamInit::KaimingNormalFanIn, default_bias),
        }
    }
}

impl Head {
    /// The name used in configs (`"deeplabv3"`, `"deeplabv3plus"`).
    pub fn name(self) -> &'static str {
        match self {
            Head::DeepLabV3 => "deeplabv3",
            Head::DeepLabV3Plus => "deeplabv3plus",
        }
    }
}

/// Where pretrained weights come from.
///
/// In TOML: `pretrained = "imagenet"`, `pretrained = { path = "w.safetensors" }` or
/// `pretrained = { hub = { repo = "timm/resnet18.tv_in1k", file = "model.safetensors" } }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PretrainedSource {
    /// The backbone's default ImageNet weights on the hub ([`Backbone::default_hub_repo`]).
    Imagenet,
    /// A safetensors file in a Hugging Face hub repository.
    Hub(HubFile),
    /// A local safetensors file: ImageNet ResNet weights or a full DeepLab checkpoint.
    Path(PathBuf),
}

/// A file in a Hugging Face hub model repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubFile {
    /// Repository id, e.g. `timm/resnet18.tv_in1k`.
    pub repo: String,
    /// File name in the repository (default `model.safetensors`).
    #[serde(default = "default_hub_file")]
    pub file: String,
    /// Git revision (default `main`).
    #[serde(default)]
    pub revision: Option<String>,
}

impl std::fmt::Display for PretrainedSource {
    /// `imagenet`, the path, or `hub:<repo>/<file>[@<revision>]`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PretrainedSource::Imagenet => f.write_str("imagenet"),
            PretrainedSource::Path(p) => write!(f, "{}", p.display()),
            PretrainedSource::Hub(h) => {
                write!(f, "hub:{}/{}", h.repo, h.file)?;
                match &h.revision {
                    Some(r) => write!(f, "@{r}"),
                    None => Ok(()),
                }
            }
        }
    }
}

fn default_hub_file() -> String {
    "model.safetensors".to_string()
}

/// Which DeepLab to build. `Default` is the paper's model: DeepLabV3+, ResNet-18, output stride 16.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Backbone depth (default `resnet18`).
    pub backbone: Backbone,
    /// Head (default `deeplabv3plus`).
    pub head: Head,
    /// Output stride of the backbone: 16 (layer4 dilated) or 8 (layer3 and layer4 dilated); 32
    /// (the undilated ImageNet ResNet) is accepted too.
    pub output_stride: usize,
    /// Number of classes of the classifier (default 19, Cityscapes' train ids).
    pub n_classes: usize,
    /// Pretrained weights loaded by `DeepLab::from_pretrained` (none by default).
    pub pretrained: Option<PretrainedSource>,
    /// Freeze BatchNorm: always normalise with the running statistics and keep the affine
    /// parameters out of `trainable_vars`.
    pub freeze_bn: bool,
    /// Multi-grid unit rates of layer4 (e.g. `[1, 2, 4]`), multiplied by its dilation; one rate
    /// per layer4 block (2 for ResNet-18, 3 otherwise).
    pub multi_grid: Option<Vec<usize>>,
    /// Dropout probability after the ASPP projection (default 0.5, as torchvision's ASPP and the
    /// paper's code).
    pub dropout: f64,
    /// Dropout probabilities after the first and second 3×3 decoder convolutions of DeepLabV3+
    /// (default `[0.5, 0.1]`, as the paper's code). Unused by DeepLabV3.
    pub decoder_dropout: [f64; 2],
    /// Base channel count of the ResNet (stem and layer1 planes). 64 is the real ResNet and the
    /// only width pretrained weights fit; 16 or 32 give thin ResNets for fast CPU experiments.
    pub backbone_width: usize,
    /// Channels of the ASPP branches, projection and decoder convolutions (default 256).
    pub head_channels: usize,
    /// Channels of the DeepLabV3+ low-level projection (default 48).
    pub low_level_channels: usize,
    /// Depthwise-separable 3×3 convolutions in the ASPP's atrous branches and the DeepLabV3+
    /// decoder (default `false`, the paper's code: dense convolutions). DeepLabV3+ as published
    /// (Chen et al. 2018) and segmentation_models_pytorch use separable ones: about 2.2× fewer
    /// FLOPs for the whole DeepLabV3+-ResNet-18 at the same accuracy class.
    pub separable: bool,
    /// Number of 3×3 convolutions in the DeepLabV3+ decoder: 2 (default, the paper's code) or 1
    /// (segmentation_models_pytorch). Unused by DeepLabV3.
    pub decoder_convs: usize,
    /// ASPP atrous rates; `None` (default) takes them from the output stride
    /// ([`ModelConfig::atrous_rates`]). segmentation_models_pytorch uses `[12, 24, 36]` at 16.
    pub aspp_rates: Option<[usize; 3]>,
    /// A 3×3 convolution → BN → ReLU on the ASPP output before it is upsampled (DeepLabV3+
    /// only; separable when `separable` is set). segmentation_models_pytorch's DeepLabV3Plus
    /// has it; the paper's code and the published DeepLabV3+ do not (default `false`).
    #[serde(default)]
    pub aspp_conv: bool,
    /// How the parameters start ([`InitScheme`]; default `paper_code`).
    #[serde(default)]
    pub init: InitScheme,
    /// Seed of the parameter initialisation; same seed, same parameters.
    pub init_seed: u64,
    /// Bilinear upsampling of the head (DeepLabV3+'s decoder input and the final logits) with
    /// `align_corners = true`, as the paper's code (PotatoTian/recall-semseg) and
    /// segmentation_models_pytorch's DeepLabV3+ do; `false` (default) is torchvision's choice.
    /// It moves every upsampled logit, hence the argmax and Recall loss's weights.
    #[serde(default)]
    pub align_corners: bool,
    /// An auxiliary FCN head on layer3 for training (mmsegmentation's standard for DeepLabV3;
    /// see [`AuxHeadConfig`]); `None` (default) builds none. Its logits come from
    /// [`crate::DeepLab::forward_t_with_aux`]; inference ignores it.
    #[serde(default)]
    pub aux_head: Option<AuxHeadConfig>,
    /// segmentation_models_pytorch's dilation rule for the backbone: every 3×3 convolution of a
    /// dilated stage takes the stage's dilation, the first block's first one included (smp's
    /// `replace_strides_with_dilation` on its encoders). `false` (default) is torchvision's and
    /// timm's rule: that one convolution keeps the previous stage's dilation. Set by
    /// [`ModelConfig::smp_layout`]; it changes the features of layer4 (and layer3 at output
    /// stride 8), not the parameters.
    #[serde(default)]
    pub smp_dilation: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            backbone: Backbone::Resnet18,
            head: Head::DeepLabV3Plus,
            output_stride: 16,
            n_classes: 19,
            pretrained: None,
            freeze_bn: false,
            multi_grid: None,
            dropout: 0.5,
            decoder_dropout: [0.5, 0.1],
            backbone_width: 64,
            head_channels: 256,
            low_level_channels: 48,
            separable: false,
            decoder_convs: 2,
            aspp_rates: None,
            aspp_conv: false,
            init: InitScheme::PaperCode,
            init_seed: 0,
            align_corners: false,
            aux_head: None,
            smp_dilation: false,
        }
    }
}

fn bad(field: &'static str, message: impl Into<String>) -> ModelError {
    ModelError::Config {
        field,
        message: message.into(),
    }
}

impl ModelConfig {
    /// segmentation_models_pytorch's `DeepLabV3Plus` on this config's backbone, output stride and
    /// classes: separable ASPP and decoder, the separable convolution after the ASPP, one
    /// decoder convolution, atrous rates 12/24/36, no decoder dropout, `align_corners`
    /// upsampling, smp's backbone dilation rule (`smp_dilation`) and PyTorch's default head
    /// initialisation (what smp's model starts from). The same parameters, by count and shape,
    /// and the same function as `smp.DeepLabV3Plus` (checked through
    /// [`crate::save_exported`]'s golden).
    pub fn smp_layout(self) -> Self {
        Self {
            head: Head::DeepLabV3Plus,
            separable: true,
            aspp_conv: true,
            decoder_convs: 1,
            aspp_rates: Some([12, 24, 36]),
            decoder_dropout: [0.0, 0.0],
            align_corners: true,
            smp_dilation: true,
            init: InitScheme::PytorchDefault,
            ..self
        }
    }

    /// Checks every field; the error names the field and the bad value.
    pub fn validate(&self) -> Result<(), ModelError> {
        if ![8, 16, 32].contains(&self.output_stride) {
            return Err(bad(
                "output_stride",
                format!("must be 8 or 16 (or 32), got {}", self.output_stride),
            ));
        }
        if self.n_classes == 0 {
            return Err(bad("n_classes", "must be at least 1, got 0"));
        }
        if self.backbone_width == 0 {
            return Err(bad("backbone_width", "must be at least 1, got 0"));
        }
        if self.head_channels == 0 {
            return Err(bad("head_channels", "must be at least 1, got 0"));
        }
        if self.low_level_channels == 0 {
            return Err(bad("low_level_channels", "must be at least 1, got 0"));
        }
        let p_ok = |p: f64| p.is_finite() && (0.0..1.0).contains(&p);
        if !p_ok(self.dropout) {
            return Err(bad(
                "dropout",
                format!("must be in [0, 1), got {}", self.dropout),
            ));
        }
        for p in self.decoder_dropout {
            if !p_ok(p) {
                return Err(bad(
                    "decoder_dropout",
                    format!("each value must be in [0, 1), got {p}"),
                ));
            }
        }
        if let Some(aux) = &self.aux_head {
            if aux.channels == 0 {
                return Err(bad("aux_head.channels", "must be at least 1, got 0"));
            }
            if !p_ok(aux.dropout) {
                return Err(bad(
                    "aux_head.dropout",
                    format!("must be in [0, 1), got {}", aux.dropout),
                ));
            }
        }
        if !(1..=2).contains(&self.decoder_convs) {
            return Err(bad(
                "decoder_convs",
                format!("must be 1 or 2, got {}", self.decoder_convs),
            ));
        }
        if let Some(rates) = self.aspp_rates {
            if rates.contains(&0) {
                return Err(bad(
                    "aspp_rates",
                    format!("rates must be ≥ 1, got {rates:?}"),
                ));
            }
        }
        if let Some(grid) = &self.multi_grid {
            let n = self.backbone.blocks()[3];
            if grid.len() != n {
                return Err(bad(
                    "multi_grid",
                    format!(
                        "needs one rate per layer4 block of {} ({n}), got {} ({grid:?})",
                        self.backbone.name(),
                        grid.len()
                    ),
                ));
            }
            if grid.contains(&0) {
                return Err(bad(
                    "multi_grid",
                    format!("rates must be ≥ 1, got {grid:?}"),
                ));
            }
        }
        if self.pretrained.is_some() && self.backbone_width != 64 {
            return Err(bad(
                "backbone_width",
                format!(
                    "pretrained weights need the standard width 64, got {}",
                    self.backbone_width
                ),
            ));
        }
        if let Some(PretrainedSource::Hub(h)) = &self.pretrained {
            if h.repo.trim().is_empty() {
                return Err(bad("pretrained.hub.repo", "must not be empty"));
            }
            if h.file.trim().is_empty() {
                return Err(bad("pretrained.hub.file", "must not be empty"));
            }
        }
        Ok(())
    }

    /// ASPP atrous rates: `aspp_rates` when set, otherwise 6/12/18 at output stride 16,
    /// 12/24/36 at 8 (3/6/9 at 32).
    pub fn atrous_rates(&self) -> [usize; 3] {
        if let Some(rates) = self.aspp_rates {
            return rates;
        }
        match self.output_stride {
            8 => [12, 24, 36],
            32 => [3, 6, 9],
            _ => [6, 12, 18],
        }
    }
}

/// Shape of the auxiliary head ([`ModelConfig::aux_head`]); the defaults are mmseg's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuxHeadConfig {
    /// Channels of its 3×3 convolution (mmseg: 256).
    pub channels: usize,
    /// Channel-dropout probability before the classifier (mmseg: 0.1, `nn.Dropout2d`).
    pub dropout: f64,
}

impl Default for AuxHeadConfig {
    fn default() -> Self {
        Self {
            channels: 256,
            dropout: 0.1,
        }
    }
}

impl AuxHeadConfig {
    /// Trainable parameters of the head on `in_channels` layer3 channels for `n_classes`
    /// classes: mmseg's `FCNHead` (`num_convs = 1`, `concat_input = False`, BN), i.e.
    /// `in·c·9` (conv, no bias) `+ 2c` (BN scale, shift) `+ c·n + n` (classifier).
    pub fn parameter_count(&self, in_channels: usize, n_classes: usize) -> usize {
        let c = self.channels;
        in_channels * c * 9 + 2 * c + c * n_classes + n_classes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_the_papers_model_and_valid() {
        let c = ModelConfig::default();
        assert_eq!(c.backbone, Backbone::Resnet18);
        assert_eq!(c.head, Head::DeepLabV3Plus);
        assert_eq!(c.output_stride, 16);
        c.validate().unwrap();
    }

    #[test]
    fn json_round_trip_and_names() {
        let c = ModelConfig {
            backbone: Backbone::Resnet101,
            head: Head::DeepLabV3,
            pretrained: Some(PretrainedSource::Hub(HubFile {
                repo: "timm/resnet101.tv_in1k".into(),
                file: "model.safetensors".into(),
                revision: None,
            })),
            multi_grid: Some(vec![1, 2, 4]),
            ..ModelConfig::default()
        };
        let s = serde_json::to_string(&c).unwrap();
        assert!(
            s.contains("\"resnet101\"") && s.contains("\"deeplabv3\""),
            "{s}"
        );
        let back: ModelConfig = serde_json::from_str(&s).unwrap();
        assert_eq!(back, c);
        let p: ModelConfig = serde_json::from_str(r#"{"pretrained":"imagenet"}"#).unwrap();
        assert_eq!(p.pretrained, Some(PretrainedSource::Imagenet));
        let p: ModelConfig =
            serde_json::from_str(r#"{"pretrained":{"path":"w.safetensors"}}"#).unwrap();
        assert_eq!(
            p.pretrained,
            Some(PretrainedSource::Path("w.safetensors".into()))
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let e = serde_json::from_str::<ModelConfig>(r#"{"bakbone":"resnet18"}"#).unwrap_err();
        assert!(e.to_string().contains("bakbone"), "{e}");
        let e = serde_json::from_str::<ModelConfig>(r#"{"backbone":"resnet19"}"#).unwrap_err();
        assert!(e.to_string().contains("resnet19"), "{e}");
    }

    #[test]
    fn validation_names_the_field() {
        let cases: Vec<(ModelConfig, &str)> = vec![
            (
                ModelConfig {
                    output_stride: 4,
                    ..Default::default()
                },
                "output_stride",
            ),
            (
                ModelConfig {
                    n_classes: 0,
                    ..Default::default()
                },
                "n_classes",
            ),
            (
                ModelConfig {
                    dropout: 1.0,
                    ..Default::default()
                },
                "dropout",
            ),
            (
                ModelConfig {
                    decoder_dropout: [0.5, -0.1],
                    ..Default::default()
                },
                "decoder_dropout",
            ),
            (
                ModelConfig {
                    multi_grid: Some(vec![1, 2, 4]),
                    ..Default::default()
                },
                "multi_grid",
            ),
            (
                ModelConfig {
                    decoder_convs: 3,
                    ..Default::default()
                },
                "decoder_convs",
            ),
            (
                ModelConfig {
                    aspp_rates: Some([6, 0, 18]),
                    ..Default::default()
                },
                "aspp_rates",
            ),
            (
                ModelConfig {
                    backbone_width: 0,
                    ..Default::default()
                },
                "backbone_width",
            ),
            (
                ModelConfig {
                    backbone_width: 16,
                    pretrained: Some(PretrainedSource::Imagenet),
                    ..Default::default()
                },
                "backbone_width",
            ),
        ];
        for (c, field) in cases {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e} should name {field}");
        }
        ModelConfig {
            multi_grid: Some(vec![1, 2]),
            ..Default::default()
        }
        .validate()
        .unwrap();
    }
}
