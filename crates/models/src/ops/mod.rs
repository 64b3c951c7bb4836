//! Tensor operations the models need beyond what candle offers (or faster than candle's).

pub mod add_relu;
pub mod batch_norm_cpu;
pub(crate) mod buffers;
pub mod conv2d;
pub mod conv_bn;
mod kernel_choice;
pub mod max_pool;
pub mod resize;
#[cfg(test)]
pub(crate) mod test_values;

pub use kernel_choice::{cpu_kernels, with_cpu_kernels, CpuKernels};
