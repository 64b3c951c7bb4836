//! Tensor operations the models need beyond what candle offers (or faster than candle's).
//!
//! Every function takes and returns candle tensors in `(N, C, H, W)` layout. The CPU custom ops
//! (f32 on the CPU, with their own backward) are chosen per thread and scope by
//! [`with_cpu_kernels`]; elsewhere (other dtypes, GPU, kernels switched off) the same maths runs
//! as candle ops. The `*_portable` functions and [`conv2d_candle`] are those candle-op paths,
//! public as the references a kernel is checked against.
//!
//! * [`resize_bilinear`] (differentiable bilinear interpolation) and [`max_pool2d`]
//!   (differentiable max-pool): candle 0.11 has no backward for either in these configurations;
//! * [`conv2d`]: the single convolution entry point of the models ([`Conv2dGeometry`] describes
//!   padding, stride, dilation and groups; [`conv2d_path`] says which kernel a call takes);
//! * [`with_cpu_kernels`] / [`cpu_kernels`] / [`CpuKernels`]: which CPU custom ops run.

pub(crate) mod add_relu;
pub(crate) mod batch_norm_cpu;
pub(crate) mod buffers;
pub(crate) mod conv2d;
pub(crate) mod conv_bn;
mod kernel_choice;
pub(crate) mod max_pool;
pub(crate) mod resize;
#[cfg(test)]
pub(crate) mod test_values;

pub use conv2d::{conv2d, conv2d_affine, conv2d_candle, conv2d_path, Conv2dGeometry, Conv2dPath};
pub use kernel_choice::{cpu_kernels, with_cpu_kernels, CpuKernels};
pub use max_pool::{max_pool2d, max_pool2d_portable};
pub use resize::{resize_bilinear, resize_bilinear_portable};
