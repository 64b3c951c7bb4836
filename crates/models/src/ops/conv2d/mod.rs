//! 2-D convolution used by every model layer.
//!
//! [`conv2d`] is the single entry point the model code calls. On the CPU with `f32` tensors it
//! runs this crate's own kernels as candle custom ops with their own backward:
//!
//! * `groups == 1`: im2col / col2im tiles and large `gemm` matrix products, parallel over images
//!   and tiles with rayon; Winograd F(2×2, 3×3) for large 3×3 stride-1 layers; kernel taps that
//!   only read padding skipped;
//! * depthwise (`groups == C_in == C_out`, weight `(C, 1, K_h, K_w)`): a direct algorithm,
//!   parallel over the `(image, channel)` planes (forward, input gradient) or channels (weight
//!   and bias gradients), whose inner loops are multiply-adds over the contiguous run of output
//!   columns each kernel tap reaches;
//!
//! see `docs/conv.md`. On other devices, dtypes or group counts it uses candle's convolution. All
//! paths are differentiable and agree within `f32` rounding (`tests/conv2d.rs`,
//! `tests/depthwise_conv2d.rs`). [`conv2d_candle`] always takes candle's path. [`conv2d_affine`]
//! fuses a following per-channel affine map (evaluation-mode BatchNorm) and ReLU into the
//! convolution.

pub(crate) mod cpu;
mod depthwise;
mod geometry;
mod kernels;
mod winograd;

use candle_core::{bail, DType, Device, Result, Tensor};

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
/// On the CPU with `f32` operands this runs a custom op (bias fused into the forward pass; no
/// input gradient computed for an input that does not track gradients):
///
/// * `groups == 1`: forward, input and weight gradients as tiled matrix products;
/// * depthwise, `groups == C_in == C_out` with weight `(C, 1, K_h, K_w)` (channel multiplier 1):
///   a direct per-plane algorithm for the forward pass and every gradient.
///
/// Everywhere else (other devices or dtypes, other group counts, channel multipliers above 1) it
/// is [`conv2d_candle`]. `CpuKernels { conv: false, .. }` in
/// [`crate::ops::with_cpu_kernels`] turns both custom ops off on the calling thread.
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
    match cpu_kernel(input, weight, bias, geometry) {
        Some(kind) => apply_cpu(kind, input, weight, bias, geometry, false),
        None => conv2d_candle(input, weight, bias, geometry),
    }
}

/// Which CPU custom op handles a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CpuKernel {
    /// `groups == 1`: [`cpu::Conv2dCpu`].
    Dense,
    /// `groups == C_in == C_out`: [`cpu::CpuConv`]`<`[`depthwise::Depthwise`]`>`.
    Depthwise,
}

/// The implementation [`conv2d`] runs for given operands (see [`conv2d_path`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conv2dPath {
    /// The dense CPU custom op (`groups == 1`: im2col + gemm, Winograd).
    CpuDense,
    /// The depthwise CPU custom op (`groups == C_in == C_out`).
    CpuDepthwise,
    /// candle's convolution ([`conv2d_candle`]).
    Candle,
}

/// Which implementation [`conv2d`] would run for these operands, without running it (for
/// benchmarks, diagnostics and tests; it follows [`crate::ops::with_cpu_kernels`]).
///
/// # Errors
/// As [`conv2d`], for operands that do not describe a convolution.
pub fn conv2d_path(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    geometry: Conv2dGeometry,
) -> Result<Conv2dPath> {
    validate(input, weight, bias, geometry)?;
    Ok(match cpu_kernel(input, weight, bias, geometry) {
        Some(CpuKernel::Dense) => Conv2dPath::CpuDense,
        Some(CpuKernel::Depthwise) => Conv2dPath::CpuDepthwise,
        None => Conv2dPath::Candle,
    })
}

/// The dense CPU op for `geometry` when [`conv2d`] would run it on these operands (validated
/// first), for ops that fuse the convolution with what follows it.
pub(crate) fn dense_cpu_op(
    input: &Tensor,
    weight: &Tensor,
    geometry: Conv2dGeometry,
) -> Result<Option<cpu::Conv2dCpu>> {
    validate(input, weight, None, geometry)?;
    if cpu_kernel(input, weight, None, geometry) != Some(CpuKernel::Dense) {
        return Ok(None);
    }
    Ok(Some(cpu::Conv2dCpu::new(geometry, input, weight, false)?))
}

/// Runs a CPU custom op (the caller has validated the operands).
fn apply_cpu(
    kind: CpuKernel,
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    geometry: Conv2dGeometry,
    relu: bool,
) -> Result<Tensor> {
    match kind {
        CpuKernel::Dense => apply_op::<cpu::Dense>(input, weight, bias, geometry, relu),
        CpuKernel::Depthwise => {
            apply_op::<depthwise::Depthwise>(input, weight, bias, geometry, relu)
        }
    }
}

/// Runs the CPU custom op of algorithm `A` (the caller has validated the operands).
fn apply_op<A: cpu::Algo>(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    geometry: Conv2dGeometry,
    relu: bool,
) -> Result<Tensor> {
    let (x, w) = (input.contiguous()?, weight.contiguous()?);
    let op = cpu::CpuConv::<A>::new(geometry, &x, &w, relu)?;
    match bias {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
        None => x.apply_op2(&w, op),
    }
}

/// Which CPU custom op, if any, handles these (validated) operands.
fn cpu_kernel(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    geometry: Conv2dGeometry,
) -> Option<CpuKernel> {
    let cpu_f32 = |t: &Tensor| matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32;
    if !(crate::ops::cpu_kernels().conv
        && cpu_f32(input)
        && cpu_f32(weight)
        && bias.is_none_or(cpu_f32))
    {
        return None;
    }
    let (c_in, c_out) = (input.dims()[1], weight.dims()[0]);
    if geometry.groups == 1 {
        Some(CpuKernel::Dense)
    } else if geometry.groups == c_in && c_out == c_in {
        // `validate` has checked that the weight is (C, C_in / groups = 1, K_h, K_w).
        Some(CpuKernel::Depthwise)
    } else {
        None
    }
}

/// `relu?(conv(input, weight)·scale + shift)` per output channel, as one convolution: `scale` is
/// folded into the weight (`W'[co] = W[co]·scale[co]`) and `shift` becomes the bias; on the CPU
/// custom ops (dense and depthwise) the ReLU is applied in place to the convolution's output.
/// This is a convolution followed by an evaluation-mode BatchNorm (`scale = γ/√(σ² + ε)`,
/// `shift = β − μ·scale`) and an optional ReLU, without the three full passes (and allocations)
/// of the separate ops.
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
    if let Some(kind) = cpu_kernel(input, &folded, Some(shift), geometry) {
        return apply_cpu(kind, input, &folded, Some(shift), geometry, relu);
    }
    let y = conv2d_candle(input, &folded, Some(shift), geometry)?;
    if relu {
        y.relu()
    } else {
        Ok(y)
    }
}

/// The portable path: candle's own convolution, then a broadcast bias add. Used on non-CPU
/// devices, for dtypes other than `f32` and for grouped convolutions other than depthwise ones,
/// and as the reference the CPU kernels are tested against. (candle runs each group as a
/// separate convolution, so a depthwise convolution on this path is very slow.)
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
