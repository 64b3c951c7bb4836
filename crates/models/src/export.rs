//! Export to PyTorch: a model's parameters and BatchNorm statistics under the state-dict names
//! of segmentation_models_pytorch's `DeepLabV3Plus` or torchvision's `deeplabv3_resnet50/101`,
//! in a safetensors file that `model.load_state_dict(safetensors.torch.load_file(f),
//! strict=True)` accepts.
//!
//! | ours | smp `DeepLabV3Plus` | torchvision `deeplabv3_resnet*` |
//! |---|---|---|
//! | `backbone.*` | `encoder.*` | `backbone.*` |
//! | `aspp.*` | `decoder.aspp.0.*` | `classifier.0.*` |
//! | `decoder.aspp_conv.0.*`, `.1.*` | `decoder.aspp.1.*`, `decoder.aspp.2.*` | – |
//! | `decoder.project.*` | `decoder.block1.*` | – |
//! | `decoder.fuse.0.*`, `.1.*` | `decoder.block2.0.*`, `.1.*` | – |
//! | `classifier.{weight,bias}` (V3+) | `segmentation_head.0.*` | – |
//! | `classifier.{1,2,4}.*` (V3) | – | `classifier.{1,2,4}.*` |
//!
//! An auxiliary FCN head (`ModelConfig::aux_head`, training only) is not exported.
//!
//! PyTorch's BatchNorm also has a `num_batches_tracked` buffer, which the file gets (one value
//! for all, the caller's: the number of training steps); it only matters to a BatchNorm with
//! `momentum=None`, which neither library uses.
//!
//! Only a configuration with a counterpart exports ([`check_compatible`]): smp needs the
//! smp layout ([`ModelConfig::smp_layout`]: separable ASPP and decoder, the convolution after
//! the ASPP, one decoder convolution, `align_corners`, smp's dilation rule), the standard
//! backbone width 64, 48 low-level channels and output stride 8 or 16; torchvision needs a
//! DeepLabV3 head on ResNet-50 or -101 at output stride 8, dense convolutions, 256 head channels,
//! atrous rates 12/24/36 and torchvision's dilation rule. The file's metadata holds the PyTorch
//! constructor's arguments (`format`, `encoder_name`, `encoder_output_stride`,
//! `decoder_channels`, `decoder_atrous_rates`, `classes` for smp; `format`, `constructor`,
//! `num_classes` for torchvision).

use crate::config::{Backbone, Head, ModelConfig};
use crate::deeplab::DeepLab;
use crate::init::ParamKind;
use crate::ModelError;
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// A PyTorch model family to export to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExportFormat {
    /// segmentation_models_pytorch's `DeepLabV3Plus`.
    Smp,
    /// torchvision's `deeplabv3_resnet50` / `deeplabv3_resnet101` (without the auxiliary head).
    Torchvision,
}

impl ExportFormat {
    /// `smp` or `torchvision`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "smp" => Ok(ExportFormat::Smp),
            "torchvision" => Ok(ExportFormat::Torchvision),
            other => Err(format!(
                "unknown export format `{other}`; use smp or torchvision"
            )),
        }
    }

    /// The name used on the command line and in the file's metadata.
    pub fn name(self) -> &'static str {
        match self {
            ExportFormat::Smp => "smp",
            ExportFormat::Torchvision => "torchvision",
        }
    }
}

fn incompatible(field: &'static str, message: String) -> ModelError {
    ModelError::Config { field, message }
}

/// Checks that `config` has a counterpart in `format` (see the module documentation) and
/// returns the PyTorch constructor's arguments, as stored in the exported file's metadata. The
/// error names the first field without a counterpart.
pub fn check_compatible(
    config: &ModelConfig,
    format: ExportFormat,
) -> Result<BTreeMap<String, String>, ModelError> {
    config.validate()?;
    need(
        format,
        config.backbone_width == 64,
        "backbone_width",
        &format!(
            "the standard ResNet width 64, got {}",
            config.backbone_width
        ),
    )?;
    need(
        format,
        config.multi_grid.is_none(),
        "multi_grid",
        "no multi-grid rates (neither library has them)",
    )?;
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), format.name().to_string());
    match format {
        ExportFormat::Smp => smp_arguments(config, &mut meta)?,
        ExportFormat::Torchvision => torchvision_arguments(config, &mut meta)?,
    }
    Ok(meta)
}

/// `Ok` when `ok`, else the error that `format`'s export needs `what` (naming `field`).
fn need(format: ExportFormat, ok: bool, field: &'static str, what: &str) -> Result<(), ModelError> {
    if ok {
        Ok(())
    } else {
        Err(incompatible(
            field,
            format!("{} export needs {what}", format.name()),
        ))
    }
}

/// The constructor arguments of smp's `DeepLabV3Plus` for `config`, after checking that it
/// has them.
fn smp_arguments(
    config: &ModelConfig,
    meta: &mut BTreeMap<String, String>,
) -> Result<(), ModelError> {
    let format = ExportFormat::Smp;
    need(
        format,
        config.head == Head::DeepLabV3Plus,
        "head",
        "the deeplabv3plus head (smp's DeepLabV3Plus; for a DeepLabV3 use torchvision)",
    )?;
    need(
        format,
        [8, 16].contains(&config.output_stride),
        "output_stride",
        &format!("output stride 8 or 16, got {}", config.output_stride),
    )?;
    let smp = config.clone().smp_layout();
    need(
        format,
        config.separable == smp.separable
            && config.aspp_conv == smp.aspp_conv
            && config.decoder_convs == smp.decoder_convs
            && config.align_corners == smp.align_corners,
        "separable",
        "the smp layout (model.layout = \"smp\": separable = true, aspp_conv = true, \
         decoder_convs = 1, align_corners = true)",
    )?;
    need(
        format,
        config.smp_dilation,
        "smp_dilation",
        "smp's backbone dilation rule (smp_dilation = true, part of model.layout = \
         \"smp\"); with torchvision's rule smp would load the weights but compute \
         different features",
    )?;
    need(
        format,
        config.low_level_channels == 48,
        "low_level_channels",
        &format!(
            "48 low-level channels (fixed in smp), got {}",
            config.low_level_channels
        ),
    )?;
    let [a, b, c] = config.atrous_rates();
    meta.insert("encoder_name".into(), config.backbone.name().to_string());
    meta.insert(
        "encoder_output_stride".into(),
        config.output_stride.to_string(),
    );
    meta.insert("decoder_channels".into(), config.head_channels.to_string());
    meta.insert("decoder_atrous_rates".into(), format!("[{a}, {b}, {c}]"));
    meta.insert("classes".into(), config.n_classes.to_string());
    Ok(())
}

/// The constructor of torchvision's `deeplabv3_resnet*` for `config`, after checking that it
/// has one.
fn torchvision_arguments(
    config: &ModelConfig,
    meta: &mut BTreeMap<String, String>,
) -> Result<(), ModelError> {
    let format = ExportFormat::Torchvision;
    need(
        format,
        config.head == Head::DeepLabV3,
        "head",
        "the deeplabv3 head (torchvision's deeplabv3_resnet*; for DeepLabV3+ use smp)",
    )?;
    need(
        format,
        matches!(config.backbone, Backbone::Resnet50 | Backbone::Resnet101),
        "backbone",
        &format!(
            "resnet50 or resnet101 (torchvision has no deeplabv3_{}), got {}",
            config.backbone.name(),
            config.backbone.name()
        ),
    )?;
    need(
        format,
        config.output_stride == 8,
        "output_stride",
        &format!("output stride 8, got {}", config.output_stride),
    )?;
    need(
        format,
        !config.separable,
        "separable",
        "dense convolutions (separable = false)",
    )?;
    need(
        format,
        config.head_channels == 256,
        "head_channels",
        &format!("256 head channels, got {}", config.head_channels),
    )?;
    need(
        format,
        config.atrous_rates() == [12, 24, 36],
        "aspp_rates",
        &format!("atrous rates [12, 24, 36], got {:?}", config.atrous_rates()),
    )?;
    need(
        format,
        !config.align_corners,
        "align_corners",
        "align_corners = false (torchvision's upsampling)",
    )?;
    need(
        format,
        !config.smp_dilation,
        "smp_dilation",
        "torchvision's dilation rule (smp_dilation = false)",
    )?;
    meta.insert(
        "constructor".into(),
        format!("deeplabv3_{}", config.backbone.name()),
    );
    meta.insert("num_classes".into(), config.n_classes.to_string());
    Ok(())
}

/// The PyTorch name of our parameter `name` in `format`, or `None` when it has none.
pub fn to_pytorch_name(name: &str, format: ExportFormat) -> Option<String> {
    let swap = |from: &str, to: &str| name.strip_prefix(from).map(|rest| format!("{to}{rest}"));
    match format {
        ExportFormat::Smp => swap("backbone.", "encoder.")
            .or_else(|| swap("aspp.", "decoder.aspp.0."))
            .or_else(|| swap("decoder.aspp_conv.0.", "decoder.aspp.1."))
            .or_else(|| swap("decoder.aspp_conv.1.", "decoder.aspp.2."))
            .or_else(|| swap("decoder.project.", "decoder.block1."))
            .or_else(|| swap("decoder.fuse.0.", "decoder.block2.0."))
            .or_else(|| swap("decoder.fuse.1.", "decoder.block2.1."))
            .or_else(|| match name {
                "classifier.weight" => Some("segmentation_head.0.weight".into()),
                "classifier.bias" => Some("segmentation_head.0.bias".into()),
                _ => None,
            }),
        ExportFormat::Torchvision => (name.starts_with("backbone.")
            || name.starts_with("classifier."))
        .then(|| name.to_string()),
    }
}

/// Our name of the PyTorch parameter `name` in `format` (the inverse of [`to_pytorch_name`]),
/// or `None` when it has none (`num_batches_tracked`, an auxiliary classifier).
pub fn from_pytorch_name(name: &str, format: ExportFormat) -> Option<String> {
    if name.ends_with(".num_batches_tracked") {
        return None;
    }
    let swap = |from: &str, to: &str| name.strip_prefix(from).map(|rest| format!("{to}{rest}"));
    match format {
        ExportFormat::Smp => swap("encoder.", "backbone.")
            .or_else(|| swap("decoder.aspp.0.", "aspp."))
            .or_else(|| swap("decoder.aspp.1.", "decoder.aspp_conv.0."))
            .or_else(|| swap("decoder.aspp.2.", "decoder.aspp_conv.1."))
            .or_else(|| swap("decoder.block1.", "decoder.project."))
            .or_else(|| swap("decoder.block2.0.", "decoder.fuse.0."))
            .or_else(|| swap("decoder.block2.1.", "decoder.fuse.1."))
            .or_else(|| match name {
                "segmentation_head.0.weight" => Some("classifier.weight".into()),
                "segmentation_head.0.bias" => Some("classifier.bias".into()),
                _ => None,
            }),
        ExportFormat::Torchvision => (name.starts_with("backbone.")
            || (name.starts_with("classifier.")))
        .then(|| name.to_string()),
    }
}

/// Names of the auxiliary FCN head's parameters (training only, not exported).
const AUX_PREFIX: &str = "aux_classifier.";

/// Every tensor of `model` under `format`'s names (the auxiliary training head left out:
/// torchvision loads the file with `aux_loss=False`), on the CPU, plus a `num_batches_tracked`
/// (i64 scalar, `batches_tracked`) per BatchNorm; sorted by name. Fails when the model's
/// configuration has no counterpart ([`check_compatible`]).
pub fn export_tensors(
    model: &DeepLab,
    format: ExportFormat,
    batches_tracked: i64,
) -> Result<Vec<(String, Tensor)>, ModelError> {
    check_compatible(model.config(), format)?;
    let mut out = BTreeMap::new();
    for nv in model.named_vars() {
        if nv.name.starts_with(AUX_PREFIX) {
            continue; // training only; PyTorch's models are built without it
        }
        let name = to_pytorch_name(&nv.name, format).ok_or_else(|| {
            incompatible(
                "head",
                format!("parameter `{}` has no {} name", nv.name, format.name()),
            )
        })?;
        out.insert(
            name.clone(),
            nv.var.as_tensor().to_device(&Device::Cpu)?.contiguous()?,
        );
        if nv.kind == ParamKind::BnStat && name.ends_with(".running_mean") {
            let bn = name.trim_end_matches(".running_mean");
            out.insert(
                format!("{bn}.num_batches_tracked"),
                Tensor::new(batches_tracked, &Device::Cpu)?,
            );
        }
    }
    Ok(out.into_iter().collect())
}

/// Writes [`export_tensors`] to a safetensors file whose metadata holds the PyTorch
/// constructor's arguments ([`check_compatible`]) plus `extra` entries.
pub fn save_exported(
    model: &DeepLab,
    format: ExportFormat,
    batches_tracked: i64,
    extra: &BTreeMap<String, String>,
    path: &Path,
) -> Result<(), ModelError> {
    let mut meta = check_compatible(model.config(), format)?;
    meta.extend(extra.clone());
    let tensors = export_tensors(model, format, batches_tracked)?;
    let file_err = |message: String| ModelError::WriteFile {
        path: path.to_path_buf(),
        message,
    };
    let data: Vec<(String, Vec<u8>, safetensors::Dtype, Vec<usize>)> = tensors
        .iter()
        .map(|(name, t)| {
            let (dtype, bytes) = match t.dtype() {
                DType::F32 => (
                    safetensors::Dtype::F32,
                    t.flatten_all()?
                        .to_vec1::<f32>()?
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect(),
                ),
                DType::I64 => (
                    safetensors::Dtype::I64,
                    t.flatten_all()?
                        .to_vec1::<i64>()?
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect(),
                ),
                other => candle_core::bail!("export: unexpected dtype {other:?} of `{name}`"),
            };
            Ok((name.clone(), bytes, dtype, t.dims().to_vec()))
        })
        .collect::<candle_core::Result<_>>()?;
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(name, bytes, dtype, shape)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| file_err(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let meta: HashMap<String, String> = meta.into_iter().collect();
    let bytes =
        safetensors::tensor::serialize(views, Some(meta)).map_err(|e| file_err(e.to_string()))?;
    recallseg_files::write_bytes_atomic(path, &bytes).map_err(|e| file_err(e.source.to_string()))
}

/// Reads a file written by [`save_exported`] (or any state dict of `format` saved as
/// safetensors) back under our names; `num_batches_tracked` and tensors without a counterpart
/// are left out.
pub fn load_exported(
    path: &Path,
    format: ExportFormat,
) -> Result<HashMap<String, Tensor>, ModelError> {
    Ok(crate::pretrained::read_safetensors(path)?
        .into_iter()
        .filter_map(|(name, t)| from_pytorch_name(&name, format).map(|n| (n, t)))
        .collect())
}
