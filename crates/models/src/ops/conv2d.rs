//! 2-D convolution used by every model layer.
//!
//! [`conv2d`] is the single entry point the model code calls. It currently delegates to candle's
//! own convolution on every device; a fast CPU path (custom op with its own backward) replaces the
//! CPU branch in issue #7 without changing this signature.

use candle_core::{Result, Tensor};

/// Geometry of a 2-D convolution (square kernels are given by the weight's shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dGeometry {
    /// Zero padding on each side, in pixels.
    pub padding: usize,
    /// Stride in both directions.
    pub stride: usize,
    /// Dilation in both directions.
    pub dilation: usize,
    /// Number of groups (1 for a dense convolution).
    pub groups: usize,
}

impl Default for Conv2dGeometry {
    fn default() -> Self {
        Self {
            padding: 0,
            stride: 1,
            dilation: 1,
            groups: 1,
        }
    }
}

/// Convolves `input` `(N, C_in, H, W)` with `weight` `(C_out, C_in / groups, K_h, K_w)`, adding
/// `bias` `(C_out)` when given. Differentiable on every device.
pub fn conv2d(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    geometry: Conv2dGeometry,
) -> Result<Tensor> {
    let out = input.conv2d(
        weight,
        geometry.padding,
        geometry.stride,
        geometry.dilation,
        geometry.groups,
    )?;
    match bias {
        Some(b) => out.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?),
        None => Ok(out),
    }
}
