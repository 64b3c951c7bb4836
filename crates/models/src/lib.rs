//! DeepLabV3 / DeepLabV3+ on ResNet backbones in candle.

pub mod ops;
