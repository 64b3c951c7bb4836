//! Training configuration: a TOML file, validated up front, with command-line overrides.
//!
//! A configuration has seven sections — `[data]`, `[model]`, `[loss]`, `[optim]`, `[schedule]`,
//! `[train]` and the optional `[inference]` (how `eval` and `predict` run the model:
//! [`crate::inference::InferenceConfig`]) — each documented field by field below and in the commented preset files under
//! `crates/trainer/configs/`. Unknown keys are errors, and [`TrainConfig::validate`] rejects bad
//! values with a message that names the field (`model.output_stride: must be 8 or 16 (or 32), got 12`).
//!
//! Overrides (`--set train.iters=200`) are applied to the parsed TOML table before it is turned
//! into a [`TrainConfig`], so an override is type-checked exactly like the file.

use recallseg_losses::LossConfig;
use recallseg_models::{Backbone, Head, PretrainedSource};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Errors raised while reading, overriding or validating a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The text is not valid TOML or does not match the schema (unknown key, wrong type).
    #[error("{origin}: {message}")]
    Parse {
        /// Where the text came from (file path or preset name).
        origin: String,
        /// The parser's message (it names the key and the line).
        message: String,
    },
    /// A `--set key=value` override is malformed or names no field.
    #[error("override `{spec}`: {message}")]
    Override {
        /// The override as given.
        spec: String,
        /// What is wrong with it.
        message: String,
    },
    /// A field holds a value outside its allowed range.
    #[error("{field}: {message}")]
    Invalid {
        /// Dotted path of the field (`model.output_stride`).
        field: String,
        /// What is wrong with its value.
        message: String,
    },
    /// A value error ([`ConfigError::Invalid`]) located at a line of the configuration text.
    #[error("{origin}, line {line}: {error}")]
    AtLine {
        /// Where the text came from (file path or preset name).
        origin: String,
        /// 1-based line of the offending key.
        line: usize,
        /// The error itself.
        #[source]
        error: Box<ConfigError>,
    },
    /// No preset of that name.
    #[error("unknown preset `{0}`; known presets: synthia, synthia-quick, cityscapes")]
    UnknownPreset(String),
}

fn invalid(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_string(),
        message: message.into(),
    }
}

/// Which dataset format to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetKind {
    /// SYNTHIA-sequence layout (`RGB/`, `GT/LABELS/`), also what the synthetic generator writes.
    Synthia,
    /// Cityscapes layout (`leftImg8bit/`, `gtFine/`).
    Cityscapes,
    /// Your own data: `root` is the dataset's description file (`.toml` or `.json`, not its
    /// folder) naming the classes and the image and mask folders, relative to the file
    /// (`recallseg_data::FolderDataset`, docs/data.md).
    Folder,
}

/// `[data]`: where the images come from and how they are shaped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Dataset format.
    pub kind: DatasetKind,
    /// Dataset root folder (`kind = "folder"`: the dataset description `.toml` file).
    pub root: PathBuf,
    /// Generate the synthetic Synthia-format dataset at `root` if it is absent (`kind = "synthia"`
    /// only). Used by the quick presets so that a fresh clone trains without a download.
    #[serde(default)]
    pub generate_synthetic: bool,
    /// Split trained on.
    #[serde(default = "default_train_split")]
    pub train_split: String,
    /// Split validated on during training (best checkpoint by mean IoU).
    #[serde(default = "default_val_split")]
    pub val_split: String,
    /// Split evaluated with the final weights when `recallseg train` ends (`test.json` and a
    /// `test` log line; skipped with a note when the dataset has no such split).
    #[serde(default = "default_test_split")]
    pub test_split: String,
    /// Network input height in pixels: images are resized to `height × width` (Synthia), or
    /// random crops of this size are taken (`crop = true`, Cityscapes).
    pub height: usize,
    /// Network input width in pixels.
    pub width: usize,
    /// How whole images and label maps are resized to `height × width` (and to the evaluation
    /// size): `two_tap` (default; bilinear without antialiasing, labels sampled at
    /// `floor(x · scale)`) or `antialias` (what PIL's `Image.resize` and so most PyTorch data
    /// pipelines do: every source pixel of the footprint contributes, labels sampled at pixel
    /// centres). The random-scale augmentation (`scale`) always resamples with `two_tap`. See
    /// `recallseg_data::transform::ResizeMethod`.
    #[serde(default)]
    pub resize_method: recallseg_data::transform::ResizeMethod,
    /// Take random `height × width` crops for training instead of resizing whole images;
    /// evaluation then resizes to `eval_height × eval_width`.
    #[serde(default)]
    pub crop: bool,
    /// Evaluation height (defaults to `height`).
    #[serde(default)]
    pub eval_height: Option<usize>,
    /// Evaluation width (defaults to `width`).
    #[serde(default)]
    pub eval_width: Option<usize>,
    /// Random horizontal flips during training.
    #[serde(default)]
    pub hflip: bool,
    /// Random scale range `[min, max]` of training images (uniform; applied before the crop).
    /// The paper's Cityscapes code draws from {0.75, 1.0, …, 2.0}; the preset uses `[0.75, 2.0]`.
    #[serde(default)]
    pub scale: Option<[f32; 2]>,
    /// Draw the random scale from `min, min + step, …, max` instead of uniformly in the range
    /// (the paper's Cityscapes code: `scale = [0.75, 2.0]`, `scale_step = 0.25`).
    #[serde(default)]
    pub scale_step: Option<f32>,
    /// Colour jitter strength `j` of training images: brightness, contrast and saturation
    /// factors drawn in `[1 − j, 1 + j]`, applied in that order (the paper's Cityscapes code
    /// uses 0.5).
    #[serde(default)]
    pub color_jitter: Option<f32>,
    /// Loader worker threads (0 = load on the training thread).
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Use at most this many training images (0 = all). Handy for smoke tests.
    #[serde(default)]
    pub max_train_images: usize,
    /// Use at most this many validation / test images (0 = all).
    #[serde(default)]
    pub max_eval_images: usize,
    /// Largest image or label map (width × height) the decoders accept; a file whose header
    /// claims more is an error naming it instead of an allocation that could abort the process
    /// (`recallseg_data::png_io::DecodeLimits`). Default 64 megapixels.
    #[serde(default = "default_max_image_pixels")]
    pub max_image_pixels: u64,
}

fn default_max_image_pixels() -> u64 {
    recallseg_data::png_io::DecodeLimits::DEFAULT_MAX_PIXELS
}

fn default_train_split() -> String {
    "train".into()
}
fn default_val_split() -> String {
    "val".into()
}
fn default_test_split() -> String {
    "test".into()
}
fn default_workers() -> usize {
    2
}

impl DataConfig {
    /// Evaluation size `(height, width)`.
    pub fn eval_size(&self) -> (usize, usize) {
        (
            self.eval_height.unwrap_or(self.height),
            self.eval_width.unwrap_or(self.width),
        )
    }
}

/// `[model]`: the segmentation network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Backbone: `resnet18`, `resnet34`, `resnet50` or `resnet101`.
    pub backbone: Backbone,
    /// Head: `deeplabv3` or `deeplabv3plus`.
    pub head: Head,
    /// Output stride of the backbone: 8 or 16 (32, the undilated ResNet, is accepted too).
    pub output_stride: usize,
    /// Pretrained weights: `"none"` (default), `"imagenet"` (the backbone's ImageNet weights
    /// through the Hugging Face hub), a path to a safetensors file (`"w.safetensors"` or
    /// `{ path = "w.safetensors" }`) or `{ hub = { repo = "…", file = "…" } }`.
    #[serde(default, with = "pretrained_field")]
    pub pretrained: Option<PretrainedSource>,
    /// Freeze BatchNorm statistics and affine parameters of the backbone.
    #[serde(default)]
    pub freeze_bn: bool,
    /// Width of the first ResNet stage (64 = the standard network; 8 or 16 give thin networks
    /// for quick CPU runs; pretrained weights need 64).
    #[serde(default = "default_backbone_width")]
    pub backbone_width: usize,
    /// Channels of the ASPP branches and decoder convolutions (256 in DeepLab; smaller for
    /// quick CPU runs).
    #[serde(default = "default_head_channels")]
    pub head_channels: usize,
    /// Channels of the DeepLabV3+ low-level projection (48 in DeepLab).
    #[serde(default = "default_low_level_channels")]
    pub low_level_channels: usize,
    /// Dropout probability after the ASPP projection (0.5 in the paper's code; 0 disables it).
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// Dropout probabilities after the two DeepLabV3+ decoder convolutions (`[0.5, 0.1]` in the
    /// paper's code).
    #[serde(default = "default_decoder_dropout")]
    pub decoder_dropout: [f64; 2],
    /// Depthwise-separable 3×3 convolutions in the ASPP and the DeepLabV3+ decoder (DeepLabV3+
    /// as published and segmentation_models_pytorch; about 2.2× fewer FLOPs). Default `false`:
    /// dense, as the paper's code.
    #[serde(default)]
    pub separable: bool,
    /// Number of 3×3 DeepLabV3+ decoder convolutions: 2 (default, the paper's code) or 1
    /// (segmentation_models_pytorch).
    #[serde(default = "default_decoder_convs")]
    pub decoder_convs: usize,
    /// ASPP atrous rates (default: 6, 12, 18 at output stride 16; 12, 24, 36 at 8).
    #[serde(default)]
    pub aspp_rates: Option<[usize; 3]>,
    /// Bilinear upsampling of the head with `align_corners = true` (the paper's code and
    /// segmentation_models_pytorch; the `synthia` and `cityscapes` presets set it). Default
    /// `false` (torchvision).
    #[serde(default)]
    pub align_corners: bool,
    /// A 3×3 conv → BN → ReLU after the DeepLabV3+ ASPP (segmentation_models_pytorch's layout).
    /// Default `false`, as the paper's code.
    #[serde(default)]
    pub aspp_conv: bool,
    /// How the head's parameters start: `paper_code` (default; the paper's `kaiming_normal_`
    /// fan-in head), `pytorch_default` (what segmentation_models_pytorch's DeepLabV3+ starts
    /// from) or `kaiming_fan_out` (`recallseg_models::InitScheme`).
    #[serde(default)]
    pub init: recallseg_models::InitScheme,
    /// segmentation_models_pytorch's backbone dilation rule: the first block of a dilated stage
    /// dilates its first 3×3 convolution too (default `false`: torchvision's and timm's rule;
    /// `recallseg_models::ModelConfig::smp_dilation`). Part of `layout = "smp"`.
    #[serde(default)]
    pub smp_dilation: bool,
    /// A whole head layout in one word: `paper` (default: the fields as written) or `smp`
    /// (segmentation_models_pytorch's `DeepLabV3Plus`, `recallseg_models::ModelConfig::smp_layout`:
    /// separable ASPP and decoder, `aspp_conv`, one decoder convolution, rates 12/24/36, no
    /// decoder dropout, `align_corners`, `smp_dilation`; and `pytorch_default` init unless `init` is set to
    /// another scheme than the default). With `smp`, those layout fields must be left out (or
    /// hold smp's values) and `head` must be `deeplabv3plus`; the configuration a run writes
    /// spells them out.
    #[serde(default)]
    pub layout: ModelLayout,
    /// An auxiliary FCN head on layer3, trained with its own loss weight
    /// (`[model.aux_head]`, mmsegmentation's standard for DeepLabV3; absent = none, the
    /// default). `aux_head = {}` takes mmseg's values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aux_head: Option<AuxHeadSection>,
}

/// `[model.aux_head]`: the auxiliary FCN head (`recallseg_models::AuxHeadConfig`) and its loss
/// weight. The defaults are mmseg's `deeplabv3_r50-d8.py`: `channels = 256`, `dropout = 0.1`,
/// `loss_weight = 0.4`. Training minimises `loss(main) + loss_weight · loss(aux)` with the same
/// `[loss]` for both; evaluation and prediction ignore the head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuxHeadSection {
    /// Channels of its 3×3 convolution.
    #[serde(default = "default_aux_channels")]
    pub channels: usize,
    /// Channel-dropout probability before its classifier.
    #[serde(default = "default_aux_dropout")]
    pub dropout: f64,
    /// Weight of its loss in the training objective.
    #[serde(default = "default_aux_loss_weight")]
    pub loss_weight: f64,
}

fn default_aux_channels() -> usize {
    256
}
fn default_aux_dropout() -> f64 {
    0.1
}
fn default_aux_loss_weight() -> f64 {
    0.4
}

impl Default for AuxHeadSection {
    fn default() -> Self {
        Self {
            channels: default_aux_channels(),
            dropout: default_aux_dropout(),
            loss_weight: default_aux_loss_weight(),
        }
    }
}

/// `[model] layout`: a named head layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelLayout {
    /// The fields as written (their defaults are the paper code's model).
    #[default]
    Paper,
    /// segmentation_models_pytorch's `DeepLabV3Plus` (`ModelConfig::smp_layout`).
    Smp,
}

impl ModelLayout {
    /// The name used in configs.
    pub fn name(self) -> &'static str {
        match self {
            ModelLayout::Paper => "paper",
            ModelLayout::Smp => "smp",
        }
    }
}

impl ModelSection {
    /// The section with its layout applied: for `layout = "smp"`, the fields
    /// `ModelConfig::smp_layout` sets hold smp's values; otherwise unchanged.
    pub fn resolved(&self) -> ModelSection {
        let mut m = self.clone();
        if m.layout == ModelLayout::Smp {
            let smp = recallseg_models::ModelConfig::default().smp_layout();
            m.head = smp.head;
            m.separable = smp.separable;
            m.aspp_conv = smp.aspp_conv;
            m.decoder_convs = smp.decoder_convs;
            m.aspp_rates = smp.aspp_rates;
            m.decoder_dropout = smp.decoder_dropout;
            m.align_corners = smp.align_corners;
            m.smp_dilation = smp.smp_dilation;
            // How the parameters start is not the layout: an explicit scheme is kept.
            if m.init == recallseg_models::InitScheme::default() {
                m.init = smp.init;
            }
        }
        m
    }

    /// With `layout = "smp"`: the first field set to something other than its default or smp's
    /// value (the error names it).
    fn layout_conflict(&self) -> Result<(), ConfigError> {
        if self.layout != ModelLayout::Smp {
            return Ok(());
        }
        if self.head != Head::DeepLabV3Plus {
            return Err(invalid(
                "model.head",
                format!(
                    "`{}` conflicts with model.layout = \"smp\" (smp's layout is a DeepLabV3+); \
                     set head = \"deeplabv3plus\" or layout = \"paper\"",
                    self.head.name()
                ),
            ));
        }
        for (field, value, default, smp_value) in self.layout_fields() {
            if value != default && value != smp_value {
                return Err(layout_error(field, &value, &smp_value));
            }
        }
        Ok(())
    }

    /// With `layout = "smp"`: a field of the layout that the configuration writes (its file or
    /// a `--set`: `written` is the `[model]` table as read) with a value other than smp's is an
    /// error, also when that value is the field's default — presence counts, not the value.
    fn layout_conflict_written(&self, written: &toml::Table) -> Result<(), ConfigError> {
        if self.layout != ModelLayout::Smp {
            return Ok(());
        }
        for (field, value, _, smp_value) in self.layout_fields() {
            if written.contains_key(field) && value != smp_value {
                return Err(layout_error(field, &value, &smp_value));
            }
        }
        Ok(())
    }

    /// Each field `layout = "smp"` sets: its name, its value as written, its default and smp's
    /// value.
    fn layout_fields(&self) -> [(&'static str, String, String, String); 7] {
        let smp = self.resolved();
        [
            (
                "separable",
                self.separable.to_string(),
                false.to_string(),
                smp.separable.to_string(),
            ),
            (
                "aspp_conv",
                self.aspp_conv.to_string(),
                false.to_string(),
                smp.aspp_conv.to_string(),
            ),
            (
                "decoder_convs",
                self.decoder_convs.to_string(),
                default_decoder_convs().to_string(),
                smp.decoder_convs.to_string(),
            ),
            (
                "aspp_rates",
                format!("{:?}", self.aspp_rates),
                format!("{:?}", None::<[usize; 3]>),
                format!("{:?}", smp.aspp_rates),
            ),
            (
                "decoder_dropout",
                format!("{:?}", self.decoder_dropout),
                format!("{:?}", default_decoder_dropout()),
                format!("{:?}", smp.decoder_dropout),
            ),
            (
                "align_corners",
                self.align_corners.to_string(),
                false.to_string(),
                smp.align_corners.to_string(),
            ),
            (
                "smp_dilation",
                self.smp_dilation.to_string(),
                false.to_string(),
                smp.smp_dilation.to_string(),
            ),
        ]
    }
}

/// The error of a field that contradicts `layout = "smp"`.
fn layout_error(field: &str, value: &str, smp_value: &str) -> ConfigError {
    invalid(
        &format!("model.{field}"),
        format!(
            "{value} conflicts with model.layout = \"smp\", which sets it to {smp_value}; leave \
             it out, or use layout = \"paper\" and set the fields one by one"
        ),
    )
}

/// `[model] pretrained` in a config file: `"none"`, `"imagenet"`, a bare path string, or the
/// tables of [`PretrainedSource`].
mod pretrained_field {
    use recallseg_models::PretrainedSource;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::path::PathBuf;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Field {
        Name(String),
        Table(PretrainedSource),
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<PretrainedSource>, D::Error> {
        Ok(match Field::deserialize(d)? {
            Field::Name(s) if s == "none" => None,
            Field::Name(s) if s == "imagenet" => Some(PretrainedSource::Imagenet),
            Field::Name(s) => Some(PretrainedSource::Path(PathBuf::from(s))),
            Field::Table(t) => Some(t),
        })
    }

    pub(super) fn serialize<S: Serializer>(
        v: &Option<PretrainedSource>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            None => "none".serialize(s),
            Some(PretrainedSource::Imagenet) => "imagenet".serialize(s),
            // A bare string unless it would read back as one of the names.
            Some(PretrainedSource::Path(p))
                if p.to_str().is_some_and(|t| t != "none" && t != "imagenet") =>
            {
                p.serialize(s)
            }
            Some(other) => other.serialize(s),
        }
    }
}

fn default_decoder_convs() -> usize {
    2
}

fn default_head_channels() -> usize {
    256
}
fn default_low_level_channels() -> usize {
    48
}
fn default_dropout() -> f64 {
    0.5
}
fn default_decoder_dropout() -> [f64; 2] {
    [0.5, 0.1]
}

fn default_backbone_width() -> usize {
    64
}

/// Optimiser kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimKind {
    /// Adam (Kingma & Ba) with L2 weight decay added to the gradient, as `torch.optim.Adam`.
    Adam,
    /// AdamW: Adam with decoupled weight decay, as `torch.optim.AdamW`.
    Adamw,
    /// SGD with (optionally Nesterov) momentum, as `torch.optim.SGD`.
    Sgd,
}

/// `[optim]`: the optimiser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// `adam`, `adamw` or `sgd`.
    pub kind: OptimKind,
    /// Base learning rate.
    pub lr: f64,
    /// Adam β₁.
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    /// Adam β₂.
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// Adam ε.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Weight decay (L2 for Adam and SGD, decoupled for AdamW).
    #[serde(default)]
    pub weight_decay: f64,
    /// SGD momentum.
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    /// SGD Nesterov momentum.
    #[serde(default)]
    pub nesterov: bool,
}

fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}
fn default_momentum() -> f64 {
    0.9
}

/// Learning-rate schedule kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// The base rate throughout (the paper: "without annealing").
    Constant,
    /// `lr · (1 − step/iters)^power` (DeepLab's poly decay).
    Poly,
    /// Cosine annealing over the run: `min_lr + (lr − min_lr) · (1 + cos(π · step/iters)) / 2`
    /// (`torch.optim.lr_scheduler.CosineAnnealingLR` with `T_max = train.iters`,
    /// `eta_min = min_lr`, stepped every iteration as the paper's code does).
    Cosine,
    /// `lr · gamma^k` where `k` is the number of `milestones` at or below the step
    /// (`torch.optim.lr_scheduler.MultiStepLR`, stepped every iteration as the paper's code does).
    MultiStep,
}

/// `[schedule]`: how the learning rate changes over training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// `constant`, `poly`, `cosine` or `multi_step`.
    pub kind: ScheduleKind,
    /// Exponent of the poly schedule.
    #[serde(default = "default_power")]
    pub power: f64,
    /// Linear warm-up from 0 over this many steps (0 = none): step `s < warmup_iters` uses
    /// `lr · (s + 1) / warmup_iters`; the schedule then continues at step `warmup_iters` as if
    /// there had been no warm-up (its clock counts from the first step).
    #[serde(default)]
    pub warmup_iters: usize,
    /// The rate the cosine schedule ends at (`eta_min`; default 0). Must not exceed `optim.lr`.
    #[serde(default)]
    pub min_lr: f64,
    /// Steps after which the multi-step schedule multiplies the rate by `gamma`: strictly
    /// increasing, each in `1..train.iters` (e.g. `[60000, 80000]`).
    #[serde(default)]
    pub milestones: Vec<usize>,
    /// The multi-step schedule's factor per milestone (default 0.1, PyTorch's).
    #[serde(default = "default_gamma")]
    pub gamma: f64,
}

fn default_power() -> f64 {
    0.9
}
fn default_gamma() -> f64 {
    0.1
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            kind: ScheduleKind::Constant,
            power: default_power(),
            warmup_iters: 0,
            min_lr: 0.0,
            milestones: Vec::new(),
            gamma: default_gamma(),
        }
    }
}

/// `[train]`: the loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Number of optimiser steps.
    pub iters: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Validate every this many steps (0 = only at the end).
    #[serde(default)]
    pub val_every: usize,
    /// Log the loss every this many steps.
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    /// Write `last.safetensors` every this many steps (0 = only at the end and on a stop
    /// signal). Absent: every [`DEFAULT_CHECKPOINT_EVERY`] steps, so that a run killed without
    /// warning (`kill -9`, the out-of-memory killer) can still be resumed.
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: usize,
    /// Seed of every random choice (model init, data order, augmentation, dropout).
    #[serde(default)]
    pub seed: u64,
    /// Device: `cpu`, `cuda`, `cuda:N` or `metal`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Output folder of the run (checkpoints, `log.jsonl`, `config.toml`).
    pub out_dir: PathBuf,
    /// Stop before `iters` when the validation metric has not improved for `patience`
    /// validations (`[train.early_stop]`; absent = never). Needs `val_every > 0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stop: Option<EarlyStopConfig>,
    /// Gradient accumulation: each step's batch is computed as this many micro-batches (on
    /// each data-parallel rank) whose gradients are summed before the one update. The batch
    /// (`batch_size`, the global batch over every rank) must divide into `ranks × accumulate`
    /// equal micro-batches. BatchNorm sees one micro-batch at a time, as it sees one rank's
    /// shard under data parallelism; batch statistics of the loss span the whole batch where
    /// the loss is exact under sharding (`docs/losses.md`). Default 1.
    #[serde(default = "default_accumulate", skip_serializing_if = "is_one")]
    pub accumulate: usize,
    /// SyncBatchNorm under data parallelism: BatchNorm's batch moments are summed over every
    /// rank, so normalisation uses the whole batch rather than each rank's shard. No effect on
    /// one process. Default false (per-rank statistics, as PyTorch DDP).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sync_batch_norm: bool,
    /// Under data parallelism, check every this many steps that all ranks hold bit-identical
    /// model and optimiser states (a digest compared across ranks; an error names the step).
    /// `0` (the default) checks at every checkpoint only.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub check_replicas_every: usize,
}

/// `train.checkpoint_every` of a configuration that does not set it.
pub const DEFAULT_CHECKPOINT_EVERY: usize = 1000;

fn default_checkpoint_every() -> usize {
    DEFAULT_CHECKPOINT_EVERY
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

fn default_accumulate() -> usize {
    1
}

fn is_one(v: &usize) -> bool {
    *v == 1
}

/// The validation figure early stopping watches (higher is better).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EarlyStopMetric {
    /// Mean IoU over classes (what `best.safetensors` keeps; default).
    #[default]
    MeanIou,
    /// Mean accuracy (mean per-class recall), the paper's headline figure.
    MeanAccuracy,
    /// Pixel accuracy.
    PixelAccuracy,
}

impl EarlyStopMetric {
    /// The name used in configs and messages.
    pub fn name(self) -> &'static str {
        match self {
            EarlyStopMetric::MeanIou => "mean_iou",
            EarlyStopMetric::MeanAccuracy => "mean_accuracy",
            EarlyStopMetric::PixelAccuracy => "pixel_accuracy",
        }
    }

    /// The figure in a validation report (`None` when undefined, e.g. no labelled pixel).
    pub fn value(self, report: &recallseg_metrics::Report) -> Option<f64> {
        match self {
            EarlyStopMetric::MeanIou => report.mean_iou.value,
            EarlyStopMetric::MeanAccuracy => report.mean_accuracy.value,
            EarlyStopMetric::PixelAccuracy => report.pixel_accuracy,
        }
    }
}

/// `[train.early_stop]`: early stopping on a validation metric (Keras' / Lightning's rule).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopConfig {
    /// Validations in a row without improvement after which the run stops (at least 1).
    pub patience: usize,
    /// The watched figure (default `mean_iou`).
    #[serde(default)]
    pub metric: EarlyStopMetric,
    /// A validation improves when its figure exceeds the best so far by more than this
    /// (default 0: any increase).
    #[serde(default)]
    pub min_delta: f64,
}

fn default_log_every() -> usize {
    10
}
fn default_device() -> String {
    "cpu".into()
}

/// A whole training configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// `[data]`.
    pub data: DataConfig,
    /// `[model]`.
    pub model: ModelSection,
    /// `[loss]`: `name` (`cross_entropy`, `weighted_ce`, `balanced_ce`, `focal`, `ohem`,
    /// `soft_iou`, `lovasz`, `dice`, `tversky`, `recall_ce`, `precision_ce`) and that loss's
    /// parameters (`recallseg_losses::LossConfig`).
    pub loss: LossConfig,
    /// `[optim]`.
    pub optim: OptimConfig,
    /// `[schedule]`.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// `[train]`.
    pub train: TrainSection,
    /// `[inference]`: whole-image or sliding-window inference and test-time augmentation for
    /// `eval`, `predict` and a comparison's test evaluation (default: one whole-image pass).
    #[serde(default)]
    pub inference: crate::inference::InferenceConfig,
    /// `[metrics]`: how evaluation reports average their scores (optional; its defaults are
    /// the paper's `nanmean`, and a default section is not written out).
    #[serde(
        default,
        skip_serializing_if = "recallseg_metrics::ReportSettings::is_default"
    )]
    pub metrics: recallseg_metrics::ReportSettings,
}

/// Built-in presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// The paper's Synthia protocol.
    Synthia,
    /// The scaled-down CPU protocol on synthetic Synthia-format data.
    SynthiaQuick,
    /// The paper's Cityscapes protocol.
    Cityscapes,
}

impl Preset {
    /// All presets.
    pub const ALL: [Preset; 3] = [Preset::Synthia, Preset::SynthiaQuick, Preset::Cityscapes];

    /// Preset by name (`synthia`, `synthia-quick`, `cityscapes`).
    pub fn from_name(name: &str) -> Result<Self, ConfigError> {
        match name {
            "synthia" => Ok(Preset::Synthia),
            "synthia-quick" | "synthia_quick" | "quick" => Ok(Preset::SynthiaQuick),
            "cityscapes" => Ok(Preset::Cityscapes),
            other => Err(ConfigError::UnknownPreset(other.to_string())),
        }
    }

    /// The preset's name.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Synthia => "synthia",
            Preset::SynthiaQuick => "synthia-quick",
            Preset::Cityscapes => "cityscapes",
        }
    }

    /// The preset's commented TOML text.
    pub fn toml(self) -> &'static str {
        match self {
            Preset::Synthia => include_str!("../configs/synthia.toml"),
            Preset::SynthiaQuick => include_str!("../configs/synthia-quick.toml"),
            Preset::Cityscapes => include_str!("../configs/cityscapes.toml"),
        }
    }

    /// The preset, parsed and validated, with overrides applied.
    pub fn config(self, overrides: &[String]) -> Result<TrainConfig, ConfigError> {
        TrainConfig::from_toml_str(self.toml(), &format!("preset {}", self.name()), overrides)
    }
}

impl TrainConfig {
    /// Reads, overrides and validates a TOML file.
    pub fn from_file(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text, &path.display().to_string(), overrides)
    }

    /// Parses TOML text, applies `key=value` overrides (dotted keys, TOML values; a bare word
    /// is taken as a string) and validates the result. `origin` names the text in errors.
    pub fn from_toml_str(
        text: &str,
        origin: &str,
        overrides: &[String],
    ) -> Result<Self, ConfigError> {
        let file_table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim().to_string(),
        })?;
        let with_overrides = |skip: Option<usize>| -> Result<toml::Table, ConfigError> {
            let mut table = file_table.clone();
            for (i, spec) in overrides.iter().enumerate() {
                if Some(i) != skip {
                    apply_override(&mut table, spec)?;
                }
            }
            Ok(table)
        };
        let schema = |table: toml::Table| -> Result<TrainConfig, toml::de::Error> {
            toml::Value::Table(table).try_into()
        };
        let merged = with_overrides(None)?;
        let written_model = merged
            .get("model")
            .and_then(toml::Value::as_table)
            .cloned()
            .unwrap_or_default();
        let cfg = match schema(merged) {
            Ok(cfg) => cfg,
            Err(e) => {
                return Err(Self::schema_error(
                    text,
                    origin,
                    overrides,
                    e,
                    with_overrides,
                ))
            }
        };
        if let Err(e) = cfg
            .model
            .layout_conflict_written(&written_model)
            .and_then(|()| cfg.validate())
        {
            // Point at the line of the offending key when the file (not an override) set it.
            if let ConfigError::Invalid { field, .. } = &e {
                // A value set by `--set` is named by its field, as typed.
                let overridden = overrides.iter().any(|spec| {
                    spec.split_once('=')
                        .is_some_and(|(k, _)| field.starts_with(k.trim()))
                });
                if !overridden {
                    if let Some(line) = line_of_key(text, field) {
                        return Err(ConfigError::AtLine {
                            origin: origin.to_string(),
                            line,
                            error: Box::new(e),
                        });
                    }
                }
            }
            return Err(e);
        }
        // Spell out what a named layout sets, so `config.toml` shows the model that ran.
        let mut cfg = cfg;
        cfg.model = cfg.model.resolved();
        Ok(cfg)
    }

    /// The error for a configuration that does not match the schema: blamed on the file (with
    /// its line and column, from parsing the text itself) when the file alone has the same
    /// problem, otherwise on the `--set` override without which the problem goes away.
    fn schema_error(
        text: &str,
        origin: &str,
        overrides: &[String],
        merged: toml::de::Error,
        with_overrides: impl Fn(Option<usize>) -> Result<toml::Table, ConfigError>,
    ) -> ConfigError {
        let message = merged.message().trim().to_string();
        let file_error = toml::from_str::<TrainConfig>(text).err();
        let file_says_so = file_error
            .as_ref()
            .is_some_and(|fe| fe.message().trim() == message);
        if overrides.is_empty() || file_says_so {
            return ConfigError::Parse {
                origin: origin.to_string(),
                message: file_error
                    .filter(|_| file_says_so)
                    .map_or_else(|| merged.to_string(), |fe| fe.to_string())
                    .trim()
                    .to_string(),
            };
        }
        // The override without which this error disappears (or changes) is the culprit.
        let culprit = (0..overrides.len()).find(|&i| {
            with_overrides(Some(i)).is_ok_and(|t| {
                toml::Value::Table(t)
                    .try_into::<TrainConfig>()
                    .err()
                    .is_none_or(|e| e.message().trim() != message)
            })
        });
        ConfigError::Override {
            spec: culprit.map_or_else(|| overrides.join(" "), |i| overrides[i].clone()),
            message: merged.to_string().trim().to_string(),
        }
    }

    /// The configuration as TOML text (what a run writes to `out_dir/config.toml`). Fails only
    /// for what TOML cannot hold, such as a path that is not valid UTF-8 (which
    /// [`TrainConfig::validate`] rejects first, naming the field).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        self.validate_paths()?;
        toml::to_string_pretty(self).map_err(|e| invalid("config", e.to_string()))
    }

    /// The loss name (`loss.name`).
    pub fn loss_name(&self) -> &str {
        self.loss.name()
    }

    /// Paths must be valid UTF-8: the configuration is stored as TOML text (in `config.toml` and
    /// in every checkpoint), and a lossy conversion would name another folder.
    fn validate_paths(&self) -> Result<(), ConfigError> {
        for (field, path) in [
            ("data.root", &self.data.root),
            ("train.out_dir", &self.train.out_dir),
        ] {
            if path.to_str().is_none() {
                return Err(invalid(
                    field,
                    format!(
                        "{:?} is not valid UTF-8; the configuration is stored as TOML text, so \
                         use a path whose name is UTF-8 (e.g. a symbolic link to it)",
                        path
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks every value; the error names the first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_paths()?;
        self.metrics
            .validate()
            .map_err(|(field, message)| invalid(&format!("metrics.{field}"), message))?;
        self.validate_data()?;
        self.validate_model()?;
        self.validate_loss()?;
        self.validate_optim()?;
        self.validate_schedule_and_train()?;
        self.inference
            .plan(
                (self.data.height, self.data.width),
                self.model.align_corners,
            )
            .map_err(|(field, m)| invalid(&format!("inference.{field}"), m))?;
        Ok(())
    }

    /// `[data]`.
    fn validate_data(&self) -> Result<(), ConfigError> {
        let d = &self.data;
        if let Some([lo, hi]) = d.scale {
            if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi && hi <= 16.0) {
                return Err(invalid(
                    "data.scale",
                    format!("[{lo}, {hi}] needs 0 < min <= max <= 16"),
                ));
            }
        }
        if let Some(step) = d.scale_step {
            if !(step.is_finite() && step > 0.0) || d.scale.is_none() {
                return Err(invalid(
                    "data.scale_step",
                    format!("{step} needs data.scale and a finite value > 0"),
                ));
            }
        }
        if let Some(j) = d.color_jitter {
            if !(j.is_finite() && (0.0..=1.0).contains(&j)) {
                return Err(invalid(
                    "data.color_jitter",
                    format!("{j} is not in [0, 1]"),
                ));
            }
        }
        if d.max_image_pixels == 0 {
            return Err(invalid("data.max_image_pixels", "must be at least 1"));
        }
        if d.root.as_os_str().is_empty() {
            return Err(invalid("data.root", "must not be empty"));
        }
        if d.generate_synthetic && d.kind != DatasetKind::Synthia {
            return Err(invalid(
                "data.generate_synthetic",
                "the synthetic generator writes the Synthia layout; set data.kind = \"synthia\"",
            ));
        }
        for (field, v) in [("data.height", d.height), ("data.width", d.width)] {
            check_size(field, v)?;
        }
        if let Some(h) = d.eval_height {
            check_size("data.eval_height", h)?;
        }
        if let Some(w) = d.eval_width {
            check_size("data.eval_width", w)?;
        }
        for (field, v) in [
            ("data.train_split", &d.train_split),
            ("data.val_split", &d.val_split),
            ("data.test_split", &d.test_split),
        ] {
            if v.is_empty() {
                return Err(invalid(field, "must not be empty"));
            }
        }
        if d.workers > 64 {
            return Err(invalid(
                "data.workers",
                format!("{} is more than 64", d.workers),
            ));
        }

        Ok(())
    }

    /// `[model]`: what the model's own validation does not say in the config's terms first,
    /// then the model's validation.
    fn validate_model(&self) -> Result<(), ConfigError> {
        let m = &self.model;
        m.layout_conflict()?;
        if m.backbone_width == 0 || !m.backbone_width.is_multiple_of(4) || m.backbone_width > 64 {
            return Err(invalid(
                "model.backbone_width",
                format!(
                    "{} is not a multiple of 4 between 4 and 64",
                    m.backbone_width
                ),
            ));
        }
        if let Some(aux) = &m.aux_head {
            if !(aux.loss_weight.is_finite() && aux.loss_weight >= 0.0) {
                return Err(invalid(
                    "model.aux_head.loss_weight",
                    format!("{} is negative or not finite", aux.loss_weight),
                ));
            }
            if aux.channels > 4096 {
                return Err(invalid(
                    "model.aux_head.channels",
                    format!("{} is more than 4096", aux.channels),
                ));
            }
        }
        for (field, v) in [
            ("model.head_channels", m.head_channels),
            ("model.low_level_channels", m.low_level_channels),
        ] {
            if v > 4096 {
                return Err(invalid(field, format!("{v} is more than 4096")));
            }
        }
        // Everything else is the model's own validation, with its messages.
        match crate::config::model_config(self, 1).validate() {
            Ok(()) => {}
            Err(recallseg_models::ModelError::Config { field, message }) => {
                return Err(invalid(&format!("model.{field}"), message))
            }
            Err(other) => return Err(invalid("model", other.to_string())),
        }

        Ok(())
    }

    /// `[loss]`, by the loss library's own checks.
    fn validate_loss(&self) -> Result<(), ConfigError> {
        self.loss.validate().map_err(|e| match e {
            recallseg_losses::LossError::InvalidParameter {
                field,
                value,
                reason,
                ..
            } => invalid(&format!("loss.{field}"), format!("{value} {reason}")),
            other => invalid("loss", other.to_string()),
        })?;

        Ok(())
    }

    /// `[optim]`.
    fn validate_optim(&self) -> Result<(), ConfigError> {
        let o = &self.optim;
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return Err(invalid(
                "optim.lr",
                format!("{} is not a positive number", o.lr),
            ));
        }
        for (field, v) in [("optim.beta1", o.beta1), ("optim.beta2", o.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(invalid(field, format!("{v} is not in [0, 1)")));
            }
        }
        if !(o.eps.is_finite() && o.eps > 0.0) {
            return Err(invalid(
                "optim.eps",
                format!("{} is not a positive number", o.eps),
            ));
        }
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return Err(invalid(
                "optim.weight_decay",
                format!("{} is negative or not finite", o.weight_decay),
            ));
        }
        if !(0.0..1.0).contains(&o.momentum) {
            return Err(invalid(
                "optim.momentum",
                format!("{} is not in [0, 1)", o.momentum),
            ));
        }
        if o.nesterov && (o.kind != OptimKind::Sgd || o.momentum == 0.0) {
            return Err(invalid(
                "optim.nesterov",
                "needs optim.kind = \"sgd\" and a non-zero optim.momentum",
            ));
        }

        Ok(())
    }

    /// `[schedule]` and `[train]` (the schedule is checked against `train.iters`).
    fn validate_schedule_and_train(&self) -> Result<(), ConfigError> {
        let o = &self.optim;
        let s = &self.schedule;
        if !(s.power.is_finite() && s.power > 0.0) {
            return Err(invalid(
                "schedule.power",
                format!("{} is not a positive number", s.power),
            ));
        }

        let t = &self.train;
        if t.iters == 0 {
            return Err(invalid("train.iters", "must be at least 1"));
        }
        if s.warmup_iters >= t.iters {
            return Err(invalid(
                "schedule.warmup_iters",
                format!("{} is not below train.iters ({})", s.warmup_iters, t.iters),
            ));
        }
        if !(s.min_lr.is_finite() && s.min_lr >= 0.0 && s.min_lr <= o.lr) {
            return Err(invalid(
                "schedule.min_lr",
                format!("{} is not in [0, optim.lr = {}]", s.min_lr, o.lr),
            ));
        }
        if !(s.gamma.is_finite() && s.gamma > 0.0) {
            return Err(invalid(
                "schedule.gamma",
                format!("{} is not a positive number", s.gamma),
            ));
        }
        if s.kind == ScheduleKind::MultiStep && s.milestones.is_empty() {
            return Err(invalid(
                "schedule.milestones",
                "schedule.kind = \"multi_step\" needs at least one milestone, e.g. [60000, 80000]",
            ));
        }
        for (i, &m) in s.milestones.iter().enumerate() {
            if m == 0 || m >= t.iters {
                return Err(invalid(
                    "schedule.milestones",
                    format!("{m} is not in 1..train.iters ({})", t.iters),
                ));
            }
            if i > 0 && m <= s.milestones[i - 1] {
                return Err(invalid(
                    "schedule.milestones",
                    format!("{:?} is not strictly increasing", s.milestones),
                ));
            }
        }
        if t.batch_size == 0 {
            return Err(invalid("train.batch_size", "must be at least 1"));
        }
        if t.accumulate == 0 || !t.batch_size.is_multiple_of(t.accumulate) {
            return Err(invalid(
                "train.accumulate",
                format!(
                    "{} does not divide train.batch_size = {} into equal micro-batches",
                    t.accumulate, t.batch_size
                ),
            ));
        }
        if t.log_every == 0 {
            return Err(invalid("train.log_every", "must be at least 1"));
        }
        if let Some(es) = &t.early_stop {
            if es.patience == 0 {
                return Err(invalid("train.early_stop.patience", "must be at least 1"));
            }
            if !(es.min_delta.is_finite() && es.min_delta >= 0.0) {
                return Err(invalid(
                    "train.early_stop.min_delta",
                    format!("{} is negative or not finite", es.min_delta),
                ));
            }
            if t.val_every == 0 {
                return Err(invalid(
                    "train.early_stop",
                    "needs train.val_every > 0 (it watches the periodic validations)",
                ));
            }
        }
        DeviceSpec::parse(&t.device).map_err(|m| invalid("train.device", m))?;
        if t.out_dir.as_os_str().is_empty() {
            return Err(invalid("train.out_dir", "must not be empty"));
        }
        Ok(())
    }
}

fn check_size(field: &str, v: usize) -> Result<(), ConfigError> {
    if !(16..=8192).contains(&v) {
        return Err(invalid(field, format!("{v} is not between 16 and 8192")));
    }
    if !v.is_multiple_of(8) && v % 8 != 1 {
        // DeepLab sizes are multiples of 8 or of 8 plus one (769).
        return Err(invalid(
            field,
            format!("{v} is neither a multiple of 8 nor a multiple of 8 plus 1"),
        ));
    }
    Ok(())
}

/// The 1-based line of a dotted key (`model.output_stride`) in TOML text, if the text sets it.
fn line_of_key(text: &str, dotted: &str) -> Option<usize> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut span = None;
    for part in dotted.split('.') {
        let (key, value) = table.iter().find(|(k, _)| k.get_ref().as_ref() == part)?;
        span = Some(key.span());
        match value.get_ref().as_table() {
            Some(t) => table = t,
            None => break,
        }
    }
    let start = span?.start.min(text.len());
    Some(text[..start].matches('\n').count() + 1)
}

/// Applies one `key=value` override to a TOML table.
///
/// The key is a dotted path (`train.iters`, `loss.gamma`); the value is parsed as a TOML value
/// (`200`, `1e-4`, `true`, `"text"`, `[1, 2]`) and, if that fails, taken as a bare string
/// (`cuda:0`). The section must exist; the leaf may be new (serde then rejects unknown keys).
pub fn apply_override(table: &mut toml::Table, spec: &str) -> Result<(), ConfigError> {
    let err = |message: &str| ConfigError::Override {
        spec: spec.to_string(),
        message: message.to_string(),
    };
    let (key, raw) = spec
        .split_once('=')
        .ok_or_else(|| err("expected KEY=VALUE, e.g. train.iters=200"))?;
    let key = key.trim();
    let raw = raw.trim();
    if key.is_empty() {
        return Err(err("empty key"));
    }
    let value = parse_value(raw);
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(err("empty component in the key"));
    }
    let mut cur = table;
    for (i, part) in parts[..parts.len() - 1].iter().enumerate() {
        let section = parts[..=i].join(".");
        cur = match cur.get_mut(*part) {
            Some(toml::Value::Table(t)) => t,
            Some(_) => return Err(err(&format!("`{section}` is not a section"))),
            None => return Err(err(&format!("no section `{section}` in the config"))),
        };
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// A parsed `--device` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The CPU.
    Cpu,
    /// CUDA device with this ordinal.
    Cuda(usize),
    /// Apple Metal device 0.
    Metal,
}

impl DeviceSpec {
    /// Parses `cpu`, `cuda`, `cuda:N` or `metal`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            "metal" => Ok(DeviceSpec::Metal),
            _ => {
                if let Some(n) = s.strip_prefix("cuda:") {
                    n.parse::<usize>()
                        .map(DeviceSpec::Cuda)
                        .map_err(|_| format!("`{s}`: the CUDA ordinal `{n}` is not a number"))
                } else {
                    Err(format!("`{s}` is not one of cpu, cuda, cuda:N, metal"))
                }
            }
        }
    }

    /// Opens the device. CUDA and Metal need the crate's `cuda` / `metal` feature.
    pub fn open(self) -> candle_core::Result<candle_core::Device> {
        match self {
            DeviceSpec::Cpu => Ok(candle_core::Device::Cpu),
            DeviceSpec::Cuda(n) => {
                if cfg!(feature = "cuda") {
                    // The driver's error without candle's backtrace: what to check, in one line.
                    candle_core::Device::new_cuda(n).map_err(|e| {
                        let cause = e.to_string();
                        let cause = cause.lines().next().unwrap_or("").trim();
                        candle_core::Error::Msg(format!(
                            "cannot open CUDA device {n}: {cause} (is an NVIDIA driver installed \
                             and the GPU visible, e.g. in nvidia-smi and CUDA_VISIBLE_DEVICES?)"
                        ))
                    })
                } else {
                    Err(candle_core::Error::Msg(format!(
                        "device cuda:{n} needs recallseg built with the `cuda` feature \
                         (cargo build --release --features cuda)"
                    )))
                }
            }
            DeviceSpec::Metal => {
                if cfg!(feature = "metal") {
                    candle_core::Device::new_metal(0)
                } else {
                    Err(candle_core::Error::Msg(
                        "device metal needs recallseg built with the `metal` feature \
                         (cargo build --release --features metal)"
                            .into(),
                    ))
                }
            }
        }
    }
}

/// The model configuration of a training configuration for a dataset of `n_classes` classes.
pub fn model_config(cfg: &TrainConfig, n_classes: usize) -> recallseg_models::ModelConfig {
    let m = &cfg.model.resolved();
    recallseg_models::ModelConfig {
        backbone: m.backbone,
        head: m.head,
        output_stride: m.output_stride,
        n_classes,
        pretrained: m.pretrained.clone(),
        freeze_bn: m.freeze_bn,
        multi_grid: None,
        dropout: m.dropout,
        decoder_dropout: m.decoder_dropout,
        backbone_width: m.backbone_width,
        head_channels: m.head_channels,
        low_level_channels: m.low_level_channels,
        separable: m.separable,
        decoder_convs: m.decoder_convs,
        aspp_rates: m.aspp_rates,
        aspp_conv: m.aspp_conv,
        init: m.init,
        init_seed: cfg.train.seed,
        align_corners: m.align_corners,
        aux_head: m
            .aux_head
            .as_ref()
            .map(|a| recallseg_models::AuxHeadConfig {
                channels: a.channels,
                dropout: a.dropout,
            }),
        smp_dilation: m.smp_dilation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick(overrides: &[&str]) -> Result<TrainConfig, ConfigError> {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        Preset::SynthiaQuick.config(&o)
    }

    fn err_text(overrides: &[&str]) -> String {
        quick(overrides).unwrap_err().to_string()
    }

    #[test]
    fn presets_parse_and_validate() {
        for p in Preset::ALL {
            let cfg = p.config(&[]).unwrap();
            // Round trip through the serialised form.
            let back =
                TrainConfig::from_toml_str(&cfg.to_toml().unwrap(), "round trip", &[]).unwrap();
            assert_eq!(cfg, back, "preset {}", p.name());
        }
    }

    #[test]
    fn pretrained_reads_names_paths_and_tables_and_writes_them_back() {
        let with = |v: &str| {
            Preset::SynthiaQuick
                .config(&[
                    format!("model.pretrained={v}"),
                    "model.backbone_width=64".into(),
                ])
                .unwrap()
        };
        let cases = [
            ("\"none\"", None),
            ("\"imagenet\"", Some(PretrainedSource::Imagenet)),
            (
                "\"w.safetensors\"",
                Some(PretrainedSource::Path("w.safetensors".into())),
            ),
            (
                "{ path = \"imagenet\" }",
                Some(PretrainedSource::Path("imagenet".into())),
            ),
            (
                "{ hub = { repo = \"timm/resnet18.tv_in1k\" } }",
                Some(PretrainedSource::Hub(recallseg_models::HubFile {
                    repo: "timm/resnet18.tv_in1k".into(),
                    file: "model.safetensors".into(),
                    revision: None,
                })),
            ),
        ];
        for (text, want) in cases {
            let cfg = with(text);
            assert_eq!(cfg.model.pretrained, want, "{text}");
            let back =
                TrainConfig::from_toml_str(&cfg.to_toml().unwrap(), "round trip", &[]).unwrap();
            assert_eq!(back.model.pretrained, want, "{text} after a round trip");
        }
    }

    #[test]
    fn paper_protocols_are_the_presets() {
        let s = Preset::Synthia.config(&[]).unwrap();
        assert_eq!((s.data.width, s.data.height), (768, 384));
        assert_eq!(s.model.backbone, Backbone::Resnet18);
        assert_eq!(s.model.head, Head::DeepLabV3Plus);
        assert_eq!(s.model.output_stride, 16);
        assert_eq!(s.model.pretrained, Some(PretrainedSource::Imagenet));
        assert_eq!(s.train.batch_size, 6);
        assert_eq!(s.optim.kind, OptimKind::Adam);
        assert_eq!(s.optim.lr, 1e-3);
        assert_eq!(s.schedule.kind, ScheduleKind::Constant);
        assert_eq!(s.train.iters, 100_000);
        let c = Preset::Cityscapes.config(&[]).unwrap();
        assert_eq!((c.data.width, c.data.height, c.data.crop), (769, 769, true));
        assert_eq!(c.optim.lr, 1e-4);
        assert_eq!(c.train.iters, 90_000);
        // The paper's code upsamples with align_corners = True and initialises its head with
        // kaiming_normal_ (fan-in).
        assert!(s.model.align_corners && c.model.align_corners);
        assert_eq!(s.model.init, recallseg_models::InitScheme::PaperCode);
        assert_eq!(c.model.init, recallseg_models::InitScheme::PaperCode);
        // Its Cityscapes training augmentation: flip, random scale 0.75-2, colour jitter 0.5.
        assert!(c.data.hflip);
        assert_eq!(c.data.scale, Some([0.75, 2.0]));
        assert_eq!(c.data.scale_step, Some(0.25));
        assert_eq!(c.data.color_jitter, Some(0.5));
        // Synthia's code only resizes.
        assert_eq!((s.data.scale, s.data.color_jitter), (None, None));
        assert!(
            !Preset::SynthiaQuick
                .config(&[])
                .unwrap()
                .model
                .align_corners
        );
    }

    #[test]
    fn augmentation_keys_are_checked() {
        assert!(err_text(&["data.scale=[0.0, 2.0]"]).starts_with("data.scale:"));
        assert!(err_text(&["data.scale=[2.0, 1.0]"]).starts_with("data.scale:"));
        assert!(err_text(&["data.color_jitter=1.5"]).starts_with("data.color_jitter:"));
        let c = quick(&["data.scale=[0.5, 1.5]", "data.color_jitter=0.25"]).unwrap();
        assert_eq!(c.data.scale, Some([0.5, 1.5]));
    }

    #[test]
    fn bad_values_name_their_field() {
        assert_eq!(
            err_text(&["model.output_stride=12"]),
            "model.output_stride: must be 8 or 16 (or 32), got 12"
        );
        assert!(err_text(&["optim.lr=-1"]).starts_with("optim.lr:"));
        assert!(err_text(&["train.iters=0"]).starts_with("train.iters:"));
        assert!(err_text(&["train.batch_size=0"]).starts_with("train.batch_size:"));
        assert!(err_text(&["data.width=50"]).starts_with("data.width:"));
        assert!(err_text(&["train.device=gpu"]).starts_with("train.device:"));
        assert!(err_text(&["train.device=cuda:x"]).contains("ordinal"));
        let e = err_text(&["loss.name=\"nope\""]);
        assert!(e.contains("`loss.name`") && e.contains("recall_ce"), "{e}");
        let e = err_text(&["model.backbone=vgg"]);
        assert!(
            e.contains("`model.backbone`") && e.contains("resnet101"),
            "{e}"
        );
        assert!(err_text(&["optim.beta2=1.0"]).starts_with("optim.beta2:"));
        assert!(err_text(&["optim.nesterov=true"]).starts_with("optim.nesterov:"));
        assert!(err_text(&["model.pretrained=imagenet"]).contains("line 29: model.backbone_width:"));
        assert!(err_text(&["schedule.warmup_iters=100000"]).starts_with("schedule.warmup_iters:"));
        assert!(err_text(&["model.dropout=1.5"]).starts_with("model.dropout:"));
        assert!(err_text(&["model.head_channels=0"]).starts_with("model.head_channels:"));
        assert_eq!(
            err_text(&["model.decoder_convs=3"]),
            "model.decoder_convs: must be 1 or 2, got 3"
        );
        assert!(err_text(&["model.aspp_rates=[6, 0, 18]"]).starts_with("model.aspp_rates:"));
        assert_eq!(
            err_text(&["loss.name=focal", "loss.gamma=-1.0"]),
            "loss.gamma: -1 must be finite and >= 0"
        );
        let e = err_text(&["loss.name=focal", "loss.gama=1.0"]);
        assert!(e.contains("`loss`") && e.contains("gama"), "{e}");
    }

    #[test]
    fn schedule_and_early_stop_keys_are_checked() {
        let e = err_text(&["schedule.kind=multi_step"]);
        assert!(
            e.starts_with("schedule.milestones:") && e.contains("at least one"),
            "{e}"
        );
        let e = err_text(&["schedule.kind=multi_step", "schedule.milestones=[20, 10]"]);
        assert!(e.contains("strictly increasing"), "{e}");
        let e = err_text(&["schedule.milestones=[0]"]);
        assert!(
            e.starts_with("schedule.milestones: 0 is not in 1..train.iters"),
            "{e}"
        );
        assert!(err_text(&["schedule.gamma=0.0"]).starts_with("schedule.gamma:"));
        assert!(err_text(&["schedule.min_lr=1.0"]).starts_with("schedule.min_lr:"));
        let c = quick(&[
            "schedule.kind=multi_step",
            "schedule.milestones=[300, 500]",
            "schedule.gamma=0.5",
        ])
        .unwrap();
        assert_eq!(c.schedule.kind, ScheduleKind::MultiStep);
        assert_eq!(c.schedule.milestones, vec![300, 500]);
        assert_eq!(
            quick(&["schedule.kind=cosine"]).unwrap().schedule.kind,
            ScheduleKind::Cosine
        );

        assert_eq!(
            err_text(&["train.early_stop={ patience = 0 }"]),
            "train.early_stop.patience: must be at least 1"
        );
        let e = err_text(&["train.early_stop={ patience = 3 }", "train.val_every=0"]);
        assert!(
            e.starts_with("train.early_stop:") && e.contains("val_every"),
            "{e}"
        );
        let e = err_text(&["train.early_stop={ patience = 3, metric = \"miou\" }"]);
        assert!(e.contains("mean_iou"), "{e}");
        let c = quick(&["train.early_stop={ patience = 3 }"]).unwrap();
        let es = c.train.early_stop.clone().unwrap();
        assert_eq!(
            (es.patience, es.metric, es.min_delta),
            (3, EarlyStopMetric::MeanIou, 0.0)
        );
        let back = TrainConfig::from_toml_str(&c.to_toml().unwrap(), "round trip", &[]).unwrap();
        assert_eq!(back, c);
        assert!(!quick(&[])
            .unwrap()
            .to_toml()
            .unwrap()
            .contains("early_stop"));
    }

    #[test]
    fn aux_head_keys_are_checked() {
        let c = quick(&["model.aux_head={}"]).unwrap();
        assert_eq!(c.model.aux_head, Some(AuxHeadSection::default()));
        let m = crate::config::model_config(&c, 5).aux_head.unwrap();
        assert_eq!((m.channels, m.dropout), (256, 0.1));
        let back = TrainConfig::from_toml_str(&c.to_toml().unwrap(), "round trip", &[]).unwrap();
        assert_eq!(back, c);
        assert!(quick(&[]).unwrap().model.aux_head.is_none());
        assert!(err_text(&["model.aux_head={ loss_weight = -1.0 }"])
            .starts_with("model.aux_head.loss_weight:"));
        assert!(
            err_text(&["model.aux_head={ dropout = 1.0 }"]).starts_with("model.aux_head.dropout:")
        );
        assert!(
            err_text(&["model.aux_head={ channels = 0 }"]).starts_with("model.aux_head.channels:")
        );
        assert!(err_text(&["model.aux_head={ weight = 0.4 }"]).contains("weight"));
    }

    /// A field of smp's layout that the configuration writes is checked against the layout by
    /// its presence, not its value: a default value written explicitly (`separable = false`,
    /// `decoder_convs = 2`, `align_corners = false`) contradicts `layout = "smp"` and is an
    /// error naming it, instead of being replaced silently.
    #[test]
    fn an_explicit_field_that_contradicts_the_smp_layout_is_an_error() {
        for (set, field) in [
            ("model.separable=false", "model.separable"),
            ("model.decoder_convs=2", "model.decoder_convs"),
            ("model.align_corners=false", "model.align_corners"),
            ("model.decoder_dropout=[0.5, 0.1]", "model.decoder_dropout"),
        ] {
            let e = err_text(&["model.layout=smp", set]);
            assert!(
                e.starts_with(field) && e.contains("conflicts with model.layout"),
                "{set}: {e}"
            );
        }
        // Written in a file: the same, pointing at the line.
        let text = Preset::SynthiaQuick.toml().replace(
            "[model]\n",
            "[model]\nlayout = \"smp\"\nseparable = false\n",
        );
        let e = TrainConfig::from_toml_str(&text, "my.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model.separable") && e.contains("my.toml"),
            "{e}"
        );
        // The presets write none of the layout's fields, so the layout alone sets them all.
        let m = crate::config::model_config(&quick(&["model.layout=smp"]).unwrap(), 5);
        assert_eq!(m.decoder_dropout, [0.0, 0.0]);
        assert!(m.separable && m.align_corners && m.decoder_convs == 1);
    }

    #[test]
    fn smp_layout_is_one_key() {
        let c = quick(&["model.layout=smp"]).unwrap();
        assert_eq!(c.model.layout, ModelLayout::Smp);
        let m = crate::config::model_config(&c, 5);
        let want = crate::config::model_config(&quick(&["model.init=paper_code"]).unwrap(), 5)
            .smp_layout();
        // The quick preset leaves `init` at its default, so smp's own (PyTorch's) applies.
        assert_eq!(m, want);
        // An explicit other scheme is kept: how parameters start is not the layout.
        let kept = quick(&["model.layout=smp", "model.init=kaiming_fan_out"]).unwrap();
        let m = crate::config::model_config(&kept, 5);
        assert_eq!(m.init, recallseg_models::InitScheme::KaimingFanOut);
        assert_eq!(
            m,
            recallseg_models::ModelConfig {
                init: m.init,
                ..want.clone()
            }
        );
        let c2 = quick(&["model.layout=smp", "model.init=paper_code"]).unwrap();
        assert_eq!(crate::config::model_config(&c2, 5), want);
        // The stored configuration spells the fields out and reads back the same.
        let text = c.to_toml().unwrap();
        assert!(text.contains("separable = true") && text.contains("layout = \"smp\""));
        let back = TrainConfig::from_toml_str(&text, "round trip", &[]).unwrap();
        assert_eq!(back, c);
        // Fields the layout sets may repeat smp's values, not contradict them.
        assert!(quick(&["model.layout=smp", "model.separable=true"]).is_ok());
        let e = err_text(&[
            "model.layout=smp",
            "model.decoder_convs=1",
            "model.aspp_rates=[6, 12, 18]",
        ]);
        assert!(
            e.starts_with("model.aspp_rates: Some([6, 12, 18]) conflicts"),
            "{e}"
        );
        let e = err_text(&["model.layout=smp", "model.head=deeplabv3"]);
        assert!(
            e.starts_with("model.head:") && e.contains("DeepLabV3+"),
            "{e}"
        );
        assert!(err_text(&["model.layout=mmseg"]).contains("paper"));
        // The default is the fields as written.
        assert_eq!(quick(&[]).unwrap().model.layout, ModelLayout::Paper);
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_errors() {
        let e = err_text(&["train.itters=5"]);
        assert!(e.contains("itters"), "{e}");
        let e = err_text(&["train.iters=\"many\""]);
        assert!(e.contains("iters") || e.contains("invalid type"), "{e}");
        let e = TrainConfig::from_toml_str("[data]\nkind = 3", "x.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("x.toml:"), "{e}");
    }

    #[test]
    fn metrics_section_is_optional_checked_and_not_part_of_the_run() {
        use recallseg_metrics::{Average, ZeroDivision};
        let c = quick(&[]).unwrap();
        assert!(c.metrics.is_default());
        assert_eq!(c.metrics.averaging(), recallseg_metrics::Averaging::NANMEAN);
        // A default section is not written out, so stored configurations keep their text.
        assert!(!c.to_toml().unwrap().contains("[metrics]"));
        let t = quick(&[
            "metrics.average=micro",
            "metrics.zero_division=0",
            "metrics.beta=0.5",
            "metrics.confusion_normalize=pred",
        ])
        .unwrap();
        assert_eq!(
            t.metrics.confusion_normalize,
            recallseg_metrics::Normalize::Pred
        );
        assert_eq!(t.metrics.average, Average::Micro);
        assert_eq!(t.metrics.zero_division, ZeroDivision::Fill(0.0));
        assert_eq!(t.metrics.beta, 0.5);
        let back = TrainConfig::from_toml_str(&t.to_toml().unwrap(), "written", &[]).unwrap();
        assert_eq!(back.metrics, t.metrics);
        assert!(
            crate::train::same_run(&c, &t),
            "metrics never change training"
        );
        assert_eq!(
            quick(&["metrics.zero_division=\"skip\""])
                .unwrap()
                .metrics
                .zero_division,
            ZeroDivision::Skip
        );
        for (o, field) in [
            ("metrics.average=none", "metrics.average"),
            ("metrics.beta=0", "metrics.beta"),
            ("metrics.beta=-2", "metrics.beta"),
        ] {
            let e = err_text(&[o]);
            assert!(e.contains(field), "{o}: {e}");
        }
        for o in [
            "metrics.average=mean",
            "metrics.zero_division=2",
            "metrics.zero_division=\"nan\"",
            "metrics.bogus=1",
            "metrics.confusion_normalize=rows",
        ] {
            let e = err_text(&[o]);
            assert!(
                ["average", "zero_division", "bogus", "confusion_normalize"]
                    .iter()
                    .any(|k| e.contains(k)),
                "{o}: {e}"
            );
        }
        // A configuration without the section (written before it existed) reads as the default.
        let text = Preset::SynthiaQuick.toml();
        let cut = &text[..text.find("[metrics]").unwrap()];
        let old = TrainConfig::from_toml_str(cut, "old", &[]).unwrap();
        assert!(old.metrics.is_default());
    }

    #[test]
    fn overrides_apply_with_types() {
        let c = quick(&[
            "train.iters=7",
            "optim.lr=2.5e-4",
            "optim.kind=sgd",
            "schedule.kind=poly",
            "train.device=cuda:1",
            "loss.name=focal",
            "loss.gamma=1.0",
        ])
        .unwrap();
        assert_eq!(c.train.iters, 7);
        assert_eq!(c.optim.lr, 2.5e-4);
        assert_eq!(c.optim.kind, OptimKind::Sgd);
        assert_eq!(c.schedule.kind, ScheduleKind::Poly);
        assert_eq!(c.train.device, "cuda:1");
        assert_eq!(c.loss_name(), "focal");
        assert_eq!(
            c.loss,
            LossConfig::Focal {
                gamma: 1.0,
                alpha: None
            }
        );
        let c = quick(&[
            "model.separable=true",
            "model.decoder_convs=1",
            "model.aspp_rates=[12, 24, 36]",
        ])
        .unwrap();
        let m = crate::config::model_config(&c, 5);
        assert!(m.separable);
        assert_eq!(m.decoder_convs, 1);
        assert_eq!(m.atrous_rates(), [12, 24, 36]);
    }

    #[test]
    fn errors_are_blamed_on_the_override_or_on_the_file_line() {
        // An unknown key given by --set is the override's fault, not the file's.
        let e = err_text(&["train.iters=5", "train.iterz=3"]);
        assert!(e.starts_with("override `train.iterz=3`:"), "{e}");
        // A bad value given by --set is named by its field, with no line.
        let e = err_text(&["model.output_stride=12"]);
        assert!(e.starts_with("model.output_stride:"), "{e}");
        // The same mistakes in the file give its line.
        let text = Preset::SynthiaQuick.toml();
        let line = |key: &str| {
            1 + text
                .lines()
                .position(|l| l.starts_with(key))
                .expect("the preset sets the key")
        };
        let bad = text.replacen("output_stride = 16", "output_stride = 12", 1);
        let e = TrainConfig::from_toml_str(&bad, "my.toml", &[])
            .unwrap_err()
            .to_string();
        let want = format!(
            "my.toml, line {}: model.output_stride:",
            line("output_stride")
        );
        assert!(e.starts_with(&want), "{e}");
        let bad = text.replacen("\niters =", "\niterz =", 1);
        let e = TrainConfig::from_toml_str(&bad, "my.toml", &["train.iters=4".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("line {}", line("iters ="))) && e.contains("iterz"),
            "{e}"
        );
    }

    #[test]
    fn malformed_overrides_are_errors() {
        assert!(err_text(&["train.iters"]).contains("KEY=VALUE"));
        assert!(err_text(&["nosection.x=1"]).contains("no section `nosection`"));
        assert!(err_text(&["train.iters.x=1"]).contains("not a section"));
        assert!(err_text(&["=1"]).contains("empty key"));
    }

    #[test]
    fn device_specs() {
        assert_eq!(DeviceSpec::parse("cpu"), Ok(DeviceSpec::Cpu));
        assert_eq!(DeviceSpec::parse("cuda"), Ok(DeviceSpec::Cuda(0)));
        assert_eq!(DeviceSpec::parse("cuda:3"), Ok(DeviceSpec::Cuda(3)));
        assert_eq!(DeviceSpec::parse("metal"), Ok(DeviceSpec::Metal));
        assert!(DeviceSpec::parse("tpu").is_err());
        assert!(DeviceSpec::Cpu.open().is_ok());
        #[cfg(not(feature = "cuda"))]
        assert!(DeviceSpec::Cuda(0)
            .open()
            .unwrap_err()
            .to_string()
            .contains("cuda` feature"));
    }
}
