//! A DeepLabV3+ on a ResNet-18 backbone whose pretrained weights come from a local file: one
//! training step's forward and backward pass.
//!
//! ```text
//! cargo run -p recallseg-models --example pretrained_backbone
//! ```
//!
//! The example writes its own "pretrained" file first: a torchvision-style `resnet18` state dict
//! (`conv1.weight`, `bn1.running_mean`, `layer1.0.conv1.weight`, …, `fc.weight`, random values)
//! as safetensors in a temporary folder; a real torchvision or timm `resnet18` file loads the same
//! way. Pretrained weights need the standard backbone width (64); to stay fast the head is thin
//! and the input 64×64.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use recallseg_models::{Backbone, DeepLab, Head, ModelConfig, PretrainedSource};
use std::collections::HashMap;
use std::path::Path;

/// Classes of the toy segmentation task.
const CLASSES: usize = 5;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let weights = dir.path().join("resnet18.safetensors");
    let cfg = ModelConfig {
        backbone: Backbone::Resnet18,
        head: Head::DeepLabV3Plus,
        n_classes: CLASSES,
        head_channels: 32,
        low_level_channels: 8,
        pretrained: Some(PretrainedSource::Path(weights.clone())),
        ..ModelConfig::default()
    };
    write_resnet18_state_dict(&cfg, &weights)?;

    // Build the model and load the backbone from the local file.
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let (model, report) = DeepLab::from_pretrained(&cfg, vb)?;
    if let Some(report) = report {
        println!("{report}");
    }

    // Forward: images (N, 3, H, W) f32 → logits (N, C, H, W); labels (N, H, W) u32 class ids.
    let (n, h, w) = (2, 64, 64);
    let x = Tensor::randn(0f32, 1.0, (n, 3, h, w), &Device::Cpu)?;
    let labels: Vec<u32> = (0..n * h * w).map(|i| ((i / w) % CLASSES) as u32).collect();
    let labels = Tensor::from_vec(labels, n * h * w, &Device::Cpu)?;
    let logits = model.forward_t(&x, true)?;
    println!("logits {:?}", logits.dims());

    // Cross-entropy over every pixel: (N, C, H, W) → (N·H·W, C).
    let flat = logits.permute((0, 2, 3, 1))?.reshape(((), CLASSES))?;
    let loss = candle_nn::loss::cross_entropy(&flat, &labels)?;
    let grads = loss.backward()?;

    let conv1 = model
        .named_vars()
        .iter()
        .find(|v| v.name == "backbone.conv1.weight")
        .ok_or("no backbone.conv1.weight")?;
    let g = grads
        .get(conv1.var.as_tensor())
        .ok_or("no gradient for backbone.conv1.weight")?;
    let norm = g.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
    println!(
        "loss {:.4}; |d loss / d backbone.conv1.weight| = {norm:.4e} (shape {:?})",
        loss.to_scalar::<f32>()?,
        g.dims()
    );
    Ok(())
}

/// Writes random tensors under torchvision's `resnet18` names and shapes (`cfg`'s backbone width),
/// with the classifier (`fc.*`) and the `num_batches_tracked` counters a real state dict has.
fn write_resnet18_state_dict(
    cfg: &ModelConfig,
    path: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let dev = Device::Cpu;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut bn = |name: &str, c: usize| -> candle_core::Result<()> {
        tensors.insert(format!("{name}.weight"), Tensor::ones(c, DType::F32, &dev)?);
        tensors.insert(format!("{name}.bias"), Tensor::zeros(c, DType::F32, &dev)?);
        let mean = Tensor::randn(0f32, 0.1, c, &dev)?;
        tensors.insert(format!("{name}.running_mean"), mean);
        let var = Tensor::rand(0.5f32, 1.5, c, &dev)?;
        tensors.insert(format!("{name}.running_var"), var);
        let count = Tensor::new(&[0i64], &dev)?.squeeze(0)?;
        tensors.insert(format!("{name}.num_batches_tracked"), count);
        Ok(())
    };
    let mut convs: Vec<(String, [usize; 4])> = Vec::new();
    let width = cfg.backbone_width;
    convs.push(("conv1.weight".into(), [width, 3, 7, 7]));
    bn("bn1", width)?;
    let mut in_c = width;
    for (stage, blocks) in Backbone::Resnet18.blocks().into_iter().enumerate() {
        let out_c = Backbone::Resnet18.stage_channels(stage, width);
        for block in 0..blocks {
            let p = format!("layer{}.{block}", stage + 1);
            convs.push((format!("{p}.conv1.weight"), [out_c, in_c, 3, 3]));
            bn(&format!("{p}.bn1"), out_c)?;
            convs.push((format!("{p}.conv2.weight"), [out_c, out_c, 3, 3]));
            bn(&format!("{p}.bn2"), out_c)?;
            if block == 0 && in_c != out_c {
                convs.push((format!("{p}.downsample.0.weight"), [out_c, in_c, 1, 1]));
                bn(&format!("{p}.downsample.1"), out_c)?;
            }
            in_c = out_c;
        }
    }
    for (name, shape) in convs {
        let fan_in = (shape[1] * shape[2] * shape[3]) as f64;
        let std = (2.0 / fan_in).sqrt() as f32;
        tensors.insert(name, Tensor::randn(0f32, std, &shape, &dev)?);
    }
    tensors.insert(
        "fc.weight".into(),
        Tensor::randn(0f32, 0.01, (1000, in_c), &dev)?,
    );
    tensors.insert("fc.bias".into(), Tensor::zeros(1000, DType::F32, &dev)?);
    candle_core::safetensors::save(&tensors, path)?;
    Ok(())
}
