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

pub mod aspp;
pub mod aux_head;
pub mod batch_norm;
pub mod config;
pub mod conv;
pub mod deeplab;
pub mod deeplabv3;
pub mod deeplabv3plus;
pub mod dropout;
mod error;
pub mod export;
pub mod init;
pub mod ops;
pub mod pretrained;
pub mod resnet;
pub mod separable_conv;

pub use aux_head::AuxHead;
pub use config::{
    AuxHeadConfig, Backbone, Head, HubFile, InitScheme, ModelConfig, PretrainedSource,
};
pub use deeplab::{BuildOptions, DeepLab};
pub use error::ModelError;
pub use pretrained::{CheckpointLayout, LoadReport};
