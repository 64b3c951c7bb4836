//! Checking and preparing `(logits, target)` pairs; label helpers shared by the portable paths.

use crate::{Kernel, LossError};
use candle_core::{DType, Device, Result, Tensor};

/// Validated inputs of one forward call.
pub(crate) struct Prepared {
    /// Logits in the compute dtype (`f32`, or `f64` for `f64` input), still on the graph.
    pub logits: Tensor,
    /// The target as given (contiguous when `fused`).
    pub target: Tensor,
    /// Whether the fused CPU kernel applies.
    pub fused: bool,
    /// The batch has no valid pixel (no pixel at all, or every one ignored): the loss is 0 and
    /// its gradient zero ([`zero_loss`]), on every path.
    pub empty: bool,
}

/// The loss of a batch without valid pixels: 0, connected to `logits` so that the gradient
/// exists and is zero everywhere (as PyTorch's sum-reduced losses behave).
pub(crate) fn zero_loss(logits: &Tensor) -> Result<Tensor> {
    // Σ (x − x) over the (finite, sanitised) logits: exactly 0, with a gradient of 1 − 1 = 0 for
    // every element (candle prunes `0 · x` from the graph, which would leave no gradient at
    // all); an empty sum when there are none.
    let x = logits.flatten_all()?;
    x.sub(&x)?.sum_keepdim(0)?.squeeze(0)
}

/// Whether every element of a contiguous f32 CPU tensor is finite (checked in parallel).
fn cpu_f32_all_finite(t: &Tensor) -> bool {
    use rayon::prelude::*;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => {
            let o = layout.start_offset();
            v[o..o + t.elem_count()]
                .par_chunks(1 << 15)
                .all(|c| c.iter().fold(true, |ok, x| ok & x.is_finite()))
        }
        _ => false,
    }
}

/// Checks the shapes and dtypes of a `(logits, target)` pair without reading any value:
/// logits `(N, C, H, W)` with `C = n_classes` (at least 1) in `f32`/`f64`/`f16`/`bf16`, target
/// `(N, H, W)` of `u8`/`u32`/`i64`. Returns `(N, C, H, W)`.
pub(crate) fn check_inputs(
    logits: &Tensor,
    target: &Tensor,
    n_classes: usize,
) -> Result<(usize, usize, usize, usize)> {
    let (n, c, h, w) = match logits.dims() {
        &[n, c, h, w] => (n, c, h, w),
        d => {
            return Err(
                LossError::Shape(format!("logits must be (N, C, H, W), got {d:?}")).into_candle(),
            )
        }
    };
    if n_classes == 0 {
        return Err(LossError::Shape(
            "the loss was built for 0 classes; a segmentation loss needs at least one".into(),
        )
        .into_candle());
    }
    if c != n_classes {
        return Err(LossError::Shape(format!(
            "logits have {c} channels but the loss was built for {n_classes} classes"
        ))
        .into_candle());
    }
    if target.dims() != [n, h, w] {
        return Err(LossError::Shape(format!(
            "target must be (N, H, W) = ({n}, {h}, {w}) to match logits {:?}, got {:?}",
            logits.dims(),
            target.dims()
        ))
        .into_candle());
    }
    match target.dtype() {
        DType::U8 | DType::U32 | DType::I64 => {}
        d => {
            return Err(LossError::DType(format!(
                "target must be u8, u32 or i64 class indices, got {d:?}"
            ))
            .into_candle())
        }
    }
    match logits.dtype() {
        DType::F32 | DType::F64 | DType::F16 | DType::BF16 => Ok((n, c, h, w)),
        d => Err(
            LossError::DType(format!("logits must be f32, f64, f16 or bf16, got {d:?}"))
                .into_candle(),
        ),
    }
}

/// Checks ranks, sizes and dtypes, converts half-precision logits to `f32`, and decides which
/// implementation runs.
///
/// `fused_gap` names an option of the loss that the fused kernel does not cover (e.g.
/// recall's `variant = "per_image"`): [`Kernel::Auto`] then runs the portable path (the choice is reported by
/// `SegLoss::last_kernel`) and [`Kernel::Fused`] is an error naming the option.
///
/// Ignored pixels contribute nothing, whatever their logits: when the logits are not all finite,
/// those of ignored pixels are replaced by 0 (a `where` select, so a NaN there cannot reach the
/// loss or its gradient through a `0 · NaN`); a NaN on a valid pixel still propagates, as in
/// PyTorch. Finite logits on the CPU (the fused kernels' case) are not copied.
pub(crate) fn prepare(
    logits: &Tensor,
    target: &Tensor,
    n_classes: usize,
    ignore_index: u32,
    kernel: Kernel,
    fused_gap: Option<&str>,
) -> Result<Prepared> {
    let (n, _, h, w) = check_inputs(logits, target, n_classes)?;
    let logits = match logits.dtype() {
        DType::F32 | DType::F64 => logits.clone(),
        DType::F16 | DType::BF16 => logits.to_dtype(DType::F32)?,
        d => {
            return Err(LossError::DType(format!(
                "logits must be f32, f64, f16 or bf16, got {d:?}"
            ))
            .into_candle())
        }
    };
    let applicable =
        logits.device().is_cpu() && logits.dtype() == DType::F32 && logits.is_contiguous();
    let keep = not_ignored(target, ignore_index)?;
    // Ignored pixels' logits become 0, so that their value (NaN included) cannot matter.
    let zero_ignored = |logits: &Tensor| {
        keep.unsqueeze(1)?
            .broadcast_as(logits.shape())?
            .where_cond(logits, &logits.zeros_like()?)
    };
    let empty = |logits: Tensor| Prepared {
        logits,
        target: target.clone(),
        fused: false,
        empty: true,
    };
    if n * h * w == 0 {
        return Ok(empty(logits));
    }
    let valid = keep.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()?;
    if valid == 0 {
        // Every pixel ignored: whatever the logits hold, the loss is 0 (a NaN there must not
        // reach it either).
        return Ok(empty(zero_ignored(&logits)?));
    }
    // The fused kernels assume finite logits (their fast exp clamps its argument), so a NaN or
    // infinite logit would vanish from the loss. The portable path propagates it, as PyTorch does.
    let mut finite = applicable && cpu_f32_all_finite(&logits);
    let mut logits = logits;
    if !finite {
        // Not known to be finite: only valid pixels' logits may reach the loss.
        logits = zero_ignored(&logits)?;
        if applicable {
            logits = logits.contiguous()?;
            finite = cpu_f32_all_finite(&logits);
        }
    }
    if let (Kernel::Fused, Some(option)) = (kernel, fused_gap) {
        return Err(LossError::InvalidParameter {
            loss: "kernel",
            field: "kernel",
            value: "fused".into(),
            reason: format!(
                "the fused CPU kernel does not cover `{option}`; use Kernel::Auto (which falls \
                 back to the portable path) or Kernel::Portable"
            ),
        }
        .into_candle());
    }
    let fused = match kernel {
        Kernel::Auto => applicable && finite && fused_gap.is_none(),
        Kernel::Portable => false,
        Kernel::Fused if finite => true,
        Kernel::Fused if applicable => {
            return Err(LossError::DType(
                "Kernel::Fused needs finite logits; they contain NaN or infinite values".into(),
            )
            .into_candle())
        }
        Kernel::Fused => {
            return Err(LossError::DType(format!(
                "Kernel::Fused needs contiguous f32/f16/bf16 logits on the CPU, got {:?} on {:?} \
                 (contiguous: {})",
                logits.dtype(),
                logits.device().location(),
                logits.is_contiguous()
            ))
            .into_candle())
        }
    };
    let target = if fused {
        target.contiguous()?
    } else {
        target.clone()
    };
    Ok(Prepared {
        logits,
        target,
        fused,
        empty: false,
    })
}

/// The `u8` mask `(N, H, W)` of pixels whose label is not the ignore index, compared in the
/// target's own dtype: an `i64` label such as `2^32 + 255` is not taken for the ignore index 255
/// (a conversion to `u32` first would wrap it), and an ignore index above 255 matches no `u8`
/// label.
pub(crate) fn not_ignored(target: &Tensor, ignore_index: u32) -> Result<Tensor> {
    match target.dtype() {
        DType::U8 => match u8::try_from(ignore_index) {
            Ok(ig) => target.ne(ig),
            Err(_) => target.ones_like(),
        },
        DType::I64 => target.ne(ignore_index as i64),
        _ => target.ne(ignore_index),
    }
}

/// Labels for the portable path: the target as `u32` `(N, H, W)`, after checking that every
/// label is a class index or the ignore index.
pub(crate) fn checked_labels_u32(
    target: &Tensor,
    n_classes: usize,
    ignore_index: u32,
) -> Result<Tensor> {
    if target.dtype() == DType::I64 {
        // Checked in i64 before the conversion, which would wrap labels outside the u32 range
        // (2^32 would become class 0) where the fused kernels reject them.
        let bad = (target.lt(0i64)?
            + (target.ge(n_classes as i64)? * target.ne(ignore_index as i64)?)?)?
        .to_dtype(DType::U32)?
        .sum_all()?;
        if bad.to_scalar::<u32>()? > 0 {
            return Err(first_bad_label(target, n_classes, ignore_index)?);
        }
    }
    let t = target.to_dtype(DType::U32)?;
    let too_big = t.ge(n_classes as u32)?;
    let not_ignored = t.ne(ignore_index)?;
    let bad = (too_big * not_ignored)?.to_dtype(DType::U32)?.sum_all()?;
    if bad.to_scalar::<u32>()? > 0 {
        return Err(first_bad_label(target, n_classes, ignore_index)?);
    }
    Ok(t)
}

/// The error naming the first offending label (error path only: copies the target to the host).
fn first_bad_label(
    target: &Tensor,
    n_classes: usize,
    ignore_index: u32,
) -> Result<candle_core::Error> {
    let all = target
        .to_dtype(DType::I64)?
        .flatten_all()?
        .to_vec1::<i64>()?;
    let label = all
        .into_iter()
        .find(|&l| l != ignore_index as i64 && (l < 0 || l >= n_classes as i64))
        .unwrap_or(-1);
    Ok(LossError::LabelOutOfRange {
        label,
        n_classes,
        ignore_index,
    }
    .into_candle())
}

/// One-hot encoding `(N, C, H, W)` in `dtype` of checked `u32` labels; ignored pixels are all
/// zero (also when the ignore index is itself below `C`).
pub(crate) fn one_hot(
    labels: &Tensor,
    n_classes: usize,
    ignore_index: u32,
    dtype: DType,
) -> Result<Tensor> {
    let classes = class_column(n_classes, labels.device())?;
    let l = labels.unsqueeze(1)?;
    let mut oh = l.broadcast_eq(&classes)?.to_dtype(dtype)?;
    if (ignore_index as usize) < n_classes {
        let keep = l.ne(ignore_index)?.to_dtype(dtype)?;
        oh = oh.broadcast_mul(&keep)?;
    }
    Ok(oh)
}

/// `[0, 1, …, C-1]` as a `(1, C, 1, 1)` `u32` tensor.
pub(crate) fn class_column(n_classes: usize, device: &Device) -> Result<Tensor> {
    Tensor::arange(0u32, n_classes as u32, device)?.reshape((1, n_classes, 1, 1))
}

/// Per-class sums over batch and pixels of an `(N, C, H, W)` tensor, on the host, as `f64`.
pub(crate) fn per_class_host(x: &Tensor) -> Result<Vec<f64>> {
    x.sum((0, 2, 3))?.to_dtype(DType::F64)?.to_vec1::<f64>()
}

/// A `(C,)` host vector as a tensor of `dtype` on `device` (no gradient).
pub(crate) fn class_vector(v: &[f64], dtype: DType, device: &Device) -> Result<Tensor> {
    Tensor::from_vec(v.to_vec(), v.len(), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)
}
