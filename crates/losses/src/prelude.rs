//! The traits a user of a loss needs in scope for its methods to resolve ([`SegLoss`]:
//! `forward`, `forward_output`; [`LossBuilder`]: `with_ignore_index`, `with_class_weights`,
//! `with_kernel`), and the types most programs start from.
//!
//! ```
//! use recallseg_losses::prelude::*;
//!
//! let mut loss = RecallCe::new(3).with_ignore_index(255);
//! # let dev = candle_core::Device::Cpu;
//! # let logits = candle_core::Tensor::zeros((1, 3, 2, 2), candle_core::DType::F32, &dev)?;
//! # let target = candle_core::Tensor::new(&[[[0u8, 1], [2, 255]]], &dev)?;
//! let value = loss.forward(&logits, &target)?;
//! # assert_eq!(value.dims(), &[] as &[usize]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub use crate::{
    CrossEntropy, Kernel, LossBuilder, LossConfig, LossContext, LossError, RecallCe, SegLoss,
};
