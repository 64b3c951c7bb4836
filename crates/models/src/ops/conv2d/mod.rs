//! 2-D convolution used by every model layer.
//!
//! [`conv2d`] is the single entry point the model code calls. On the CPU with `f32` tensors and
//! `groups == 1` it runs this crate's own kernels as a candle custom op with its own backward
//! (im2col / col2im tiles and large `gemm` matrix products, parallel over images and tiles with
//! rayon; Winograd F(2×2, 3×3) for large 3×3 stride-1 layers; kernel taps that only read padding
//! skipped; see `docs/conv.md`); on other devices, dtypes or group counts it uses candle's
//! convolution. Both paths are differentiable and agree within `f32` rounding
//! (`tests/conv2d.rs`). [`conv2d_candle`] always takes candle's path. [`conv2d_affine`] fuses a
//! following per-channel affine map (evaluation-mode BatchNorm) and ReLU into the convolution.

mod cpu;
mod kernels;
mod winograd;

use candle_core::{bail, DType, Device, Result, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};

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

/// Whether [`conv2d`] may use the CPU kernels (on by default).
static CPU_KERNEL: AtomicBool = AtomicBool::new(true);

/// Enables or disables the CPU custom op process-wide (for A/B comparisons and debugging; when
/// disabled, [`conv2d`] behaves like [`conv2d_candle`]).
pub fn set_cpu_kernel_enabled(enabled: bool) {
    CPU_KERNEL.store(enabled, Ordering::Relaxed);
}

/// Whether the CPU custom op is enabled (see [`set_cpu_kernel_enabled`]).
pub fn cpu_kernel_enabled() -> bool {
    CPU_KERNEL.load(Ordering::Relaxed)
}

/// Checks shapes and geometry, returning a clear error for anything candle would reject or
/// silently mis-handle. Returns the number of output channels.
fn validate(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    g: Conv2dGeometry,
) -> Result<usize> {
    let (&[_, c_in, h, w], &[c_out, wc_in, kh, kw]) = (input.dims(), weight.dims()) else {
        bail!(
            "conv2d: input {:?} must be (N, C_in, H, W) and weight {:?} (C_out, C_in/groups, K_h, K_w)",
            input.dims(),
            weight.dims()
        )
    };
    if g.stride == 0 || g.dilation == 0 || g.groups == 0 {
        bail!("conv2d: stride, dilation and groups must be at least 1, got {g:?}")
    }
    if c_in % g.groups != 0 || c_out % g.groups != 0 || wc_in * g.groups != c_in {
        bail!(
            "conv2d: input has {c_in} channels and weight {:?}, which does not match groups = {}",
            weight.dims(),
            g.groups
        )
    }
    if kh == 0 || kw == 0 {
        bail!("conv2d: empty kernel {:?}", weight.dims())
    }
    let (reach_h, reach_w) = (g.dilation * (kh - 1) + 1, g.dilation * (kw - 1) + 1);
    if reach_h > h + 2 * g.padding || reach_w > w + 2 * g.padding {
        bail!(
            "conv2d: the {kh}×{kw} kernel with dilation {} does not fit the {h}×{w} input padded by {}",
            g.dilation,
            g.padding
        )
    }
    if let Some(b) = bias {
        if b.dims() != [c_out] {
            bail!("conv2d: bias has shape {:?}, expected ({c_out})", b.dims())
        }
    }
    Ok(c_out)
}

/// Convolves `input` `(N, C_in, H, W)` with `weight` `(C_out, C_in / groups, K_h, K_w)`, adding
/// `bias` `(C_out)` when given. Differentiable on every device.
///
/// On the CPU with `f32` operands and `groups == 1` this runs the custom op (forward, input and
/// weight gradients as tiled matrix products; bias fused into the forward pass); everywhere else
/// it is [`conv2d_candle`].
///
/// # Errors
/// Shapes that do not describe a convolution (wrong ranks, channel counts that do not match the
/// groups, a dilated kernel larger than the padded input, a bias of the wrong length, zero
/// stride/dilation/groups), or an error from candle (mismatched devices or dtypes).
pub fn conv2d(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    geometry: Conv2dGeometry,
) -> Result<Tensor> {
    validate(input, weight, bias, geometry)?;
    if !use_cpu_kernel(input, weight, bias, geometry) {
        return conv2d_candle(input, weight, bias, geometry);
    }
    apply_cpu(input, weight, bias, geometry, false)
}

/// Runs the CPU custom op (the caller has validated the operands).
fn apply_cpu(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    geometry: Conv2dGeometry,
    relu: bool,
) -> Result<Tensor> {
    let op = cpu::Conv2dCpu {
        padding: geometry.padding,
        stride: geometry.stride,
        dilation: geometry.dilation,
        relu,
    };
    let (x, w) = (input.contiguous()?, weight.contiguous()?);
    match bias {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
        None => x.apply_op2(&w, op),
    }
}

/// Whether the CPU custom op handles these operands.
fn use_cpu_kernel(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    geometry: Conv2dGeometry,
) -> bool {
    let cpu_f32 = |t: &Tensor| matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32;
    cpu_kernel_enabled()
        && geometry.groups == 1
        && cpu_f32(input)
        && cpu_f32(weight)
        && bias.is_none_or(cpu_f32)
}

/// `relu?(conv(input, weight)·scale + shift)` per output channel, as one convolution: `scale` is
/// folded into the weight (`W'[co] = W[co]·scale[co]`) and `shift` becomes the bias; on the CPU
/// custom op the ReLU is applied in place to the convolution's output. This is a convolution
/// followed by an evaluation-mode BatchNorm (`scale = γ/√(σ² + ε)`, `shift = β − μ·scale`) and an
/// optional ReLU, without the three full passes (and allocations) of the separate ops.
/// Differentiable with respect to every argument.
///
/// # Errors
/// As [`conv2d`], and `scale`/`shift` must both have shape `(C_out)`.
pub fn conv2d_affine(
    input: &Tensor,
    weight: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    geometry: Conv2dGeometry,
    relu: bool,
) -> Result<Tensor> {
    let c_out = validate(input, weight, Some(shift), geometry)?;
    if scale.dims() != [c_out] {
        bail!(
            "conv2d_affine: scale has shape {:?}, expected ({c_out})",
            scale.dims()
        )
    }
    let folded = weight.broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?;
    if use_cpu_kernel(input, &folded, Some(shift), geometry) {
        return apply_cpu(input, &folded, Some(shift), geometry, relu);
    }
    let y = conv2d_candle(input, &folded, Some(shift), geometry)?;
    if relu {
        y.relu()
    } else {
        Ok(y)
    }
}

/// The portable path: candle's own convolution, then a broadcast bias add. Used on non-CPU
/// devices and for groups > 1, and as the reference the CPU kernels are tested against.
///
/// # Errors
/// As [`conv2d`].
pub fn conv2d_candle(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    geometry: Conv2dGeometry,
) -> Result<Tensor> {
    let c_out = validate(input, weight, bias, geometry)?;
    let (_, _, h, w) = input.dims4()?;
    let (_, _, k_h, k_w) = weight.dims4()?;
    let Conv2dGeometry {
        padding: p,
        stride: s,
        dilation: d,
        groups,
    } = geometry;
    let (used_h, used_w) = (read_extent(h, p, k_h, d, s), read_extent(w, p, k_w, d, s));
    let out = if used_h == h + 2 * p && used_w == w + 2 * p {
        input.conv2d(weight, p, s, d, groups)?
    } else {
        // The last rows/columns of the padded input are read by no window. candle 0.11's
        // convolution backward then returns an input gradient of the wrong size ("shape
        // mismatch in add"), so pad explicitly and drop what no window reads: the same result,
        // and a backward that candle gets right on every device.
        input
            .pad_with_zeros(2, p, p)?
            .pad_with_zeros(3, p, p)?
            .narrow(2, 0, used_h)?
            .narrow(3, 0, used_w)?
            .conv2d(weight, 0, s, d, groups)?
    };
    match bias {
        Some(b) => out.broadcast_add(&b.reshape((1, c_out, 1, 1))?),
        None => Ok(out),
    }
}

/// Length of the padded input actually read by the convolution windows along one axis: the
/// padded length minus the remainder that no stride step reaches.
fn read_extent(len: usize, padding: usize, kernel: usize, dilation: usize, stride: usize) -> usize {
    let span = dilation * (kernel - 1) + 1;
    let padded = len + 2 * padding;
    (padded - span) / stride * stride + span
}
