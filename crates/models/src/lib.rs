//! DeepLabV3 / DeepLabV3+ on ResNet backbones in candle, with pretrained ImageNet weights.
//!
//! * [`ModelConfig`] chooses backbone, head, output stride, classes and pretrained source;
//! * [`DeepLab::new`] builds the model on a `VarMap`-backed `VarBuilder` with seeded
//!   initialisation ([`DeepLab::new_with`] adds [`BuildOptions`] such as SyncBatchNorm over a
//!   `recallseg_distributed` communicator); [`DeepLab::forward_t`] maps `(N, 3, H, W)` to
//!   logits `(N, C, H, W)`;
//! * [`DeepLab::trainable_vars`] is what the optimiser updates; the `VarMap` holds everything to
//!   checkpoint, BatchNorm running statistics included;
//! * [`ops`] holds the differentiable bilinear resize and max-pool candle lacks, and the single
//!   convolution entry point.
//!
//! Start from [`ModelConfig`] (with [`Backbone`], [`Head`], [`PretrainedSource`],
//! [`InitScheme`], [`AuxHeadConfig`]) and [`DeepLab`]; weights load into it with a
//! [`LoadReport`] ([`CheckpointLayout`]), and [`ExportFormat`] / [`save_exported`] write them
//! under PyTorch's names. Every fallible call returns [`ModelError`]. Tensors are candle's:
//! images `(N, 3, H, W)` and logits `(N, C, H, W)` in the `VarBuilder`'s float dtype (f32 or
//! f64; f32 on the CPU takes the custom kernels). Each public item has one path: the crate root,
//! or [`ops`] for the tensor operations.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use recallseg_models::{DeepLab, ModelConfig};
//!
//! let cfg = ModelConfig { n_classes: 4, backbone_width: 8, head_channels: 16,
//!                         low_level_channels: 8, ..ModelConfig::default() };
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
//! let model = DeepLab::new(&cfg, vb)?;
//! let x = Tensor::zeros((1, 3, 32, 32), DType::F32, &Device::Cpu)?;
//! let logits = model.forward_t(&x, false)?;
//! assert_eq!(logits.dims(), &[1, 4, 32, 32]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod aspp;
mod aux_head;
mod batch_norm;
mod config;
mod conv;
mod deeplab;
mod deeplabv3;
mod deeplabv3plus;
mod dropout;
mod error;
mod export;
mod init;
pub mod ops;
mod pretrained;
mod resnet;
mod separable_conv;

pub use batch_norm::BatchNorm2d;
pub use config::{
    AuxHeadConfig, Backbone, Head, HubFile, InitScheme, ModelConfig, PretrainedSource,
};
pub use deeplab::{BuildOptions, DeepLab};
pub use error::ModelError;
pub use export::{
    check_compatible, export_tensors, from_pytorch_name, load_exported, save_exported,
    to_pytorch_name, ExportFormat,
};
pub use init::{NamedVar, ParamInit, ParamKind};
pub use pretrained::{CheckpointLayout, LoadReport};
pub use resnet::ResNetFeatures;
