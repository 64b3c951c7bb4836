//! Borrowing the data of a custom op's operands: contiguous slices out of a candle
//! [`CpuStorage`] and its [`Layout`].
//!
//! Every CPU kernel of the workspace works on contiguous buffers of one element type. These
//! accessors check both and report a violation with one message each:
//!
//! * `"{what}: expected F32 data, got U8"` for a wrong dtype;
//! * `"{what}: expected a contiguous layout, got shape [..] with strides [..] (make the tensor
//!   contiguous before the op)"` for a strided view.
//!
//! `what` names the op and operand, e.g. `"recallseg conv2d: input"`; it is any [`Display`], so
//! `format_args!("{op}: input")` builds it without an allocation (it is only formatted on error).

use candle_core::{bail, CpuStorage, DType, Layout, Result};
use std::fmt::Display;

/// An element type a CPU kernel reads: it knows its [`CpuStorage`] variant.
pub trait CpuElement: Copy + Send + Sync + 'static {
    /// The candle dtype of this element type.
    const DTYPE: DType;

    /// The whole buffer of `storage` if it holds this type.
    fn buffer(storage: &CpuStorage) -> Option<&[Self]>;
}

macro_rules! cpu_element {
    ($t:ty, $variant:ident) => {
        impl CpuElement for $t {
            const DTYPE: DType = DType::$variant;

            #[inline]
            fn buffer(storage: &CpuStorage) -> Option<&[Self]> {
                match storage {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}

cpu_element!(f32, F32);
cpu_element!(f64, F64);
cpu_element!(u8, U8);
cpu_element!(u32, U32);
cpu_element!(i64, I64);

/// The elements of a contiguous tensor of element type `T`, in layout order (the slice
/// `layout.contiguous_offsets()` of the buffer).
///
/// # Errors
/// The storage holds another dtype, or the layout is not contiguous (see the module
/// documentation for the messages).
pub fn contiguous<'a, T: CpuElement>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: impl Display,
) -> Result<&'a [T]> {
    let Some(data) = T::buffer(storage) else {
        bail!(
            "{what}: expected {:?} data, got {:?}",
            T::DTYPE,
            storage_dtype(storage)
        )
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!(
            "{what}: expected a contiguous layout, got shape {:?} with strides {:?} (make the \
             tensor contiguous before the op)",
            layout.dims(),
            layout.stride()
        ),
    }
}

/// [`contiguous`] for `f32`, the type of every activation and logit buffer.
///
/// # Errors
/// As [`contiguous`].
#[inline]
pub fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: impl Display,
) -> Result<&'a [f32]> {
    contiguous(storage, layout, what)
}

/// The dtype of a CPU storage.
fn storage_dtype(storage: &CpuStorage) -> DType {
    use candle_core::backend::BackendStorage;
    storage.dtype()
}

/// An integer class label, as the fused losses read it: `u8`, `u32` or `i64`.
pub trait Label: CpuElement + Into<i64> {}

impl Label for u8 {}
impl Label for u32 {}
impl Label for i64 {}

/// Borrowed class labels of any supported integer type.
#[derive(Debug, Clone, Copy)]
pub enum Labels<'a> {
    /// `u8` labels.
    U8(&'a [u8]),
    /// `u32` labels.
    U32(&'a [u32]),
    /// `i64` labels.
    I64(&'a [i64]),
}

impl<'a> Labels<'a> {
    /// The labels of a contiguous `u8`, `u32` or `i64` tensor.
    ///
    /// # Errors
    /// Another dtype, or a layout that is not contiguous.
    pub fn of(storage: &'a CpuStorage, layout: &Layout, what: impl Display) -> Result<Self> {
        Ok(match storage {
            CpuStorage::U8(_) => Labels::U8(contiguous(storage, layout, &what)?),
            CpuStorage::U32(_) => Labels::U32(contiguous(storage, layout, &what)?),
            CpuStorage::I64(_) => Labels::I64(contiguous(storage, layout, &what)?),
            other => bail!(
                "{what}: expected U8, U32 or I64 labels, got {:?}",
                storage_dtype(other)
            ),
        })
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        match self {
            Labels::U8(v) => v.len(),
            Labels::U32(v) => v.len(),
            Labels::I64(v) => v.len(),
        }
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn with_storage<R>(t: &Tensor, f: impl FnOnce(&CpuStorage, &Layout) -> R) -> R {
        let (s, l) = t.storage_and_layout();
        match &*s {
            candle_core::Storage::Cpu(s) => f(s, l),
            _ => unreachable!("CPU tensors only"),
        }
    }

    #[test]
    fn slices_follow_the_layout_offset() {
        let t = Tensor::arange(0f32, 12., &Device::Cpu).unwrap();
        let t = t.reshape((3, 4)).unwrap().narrow(0, 1, 2).unwrap();
        let v = with_storage(&t, |s, l| contiguous_f32(s, l, "x").unwrap().to_vec());
        assert_eq!(v, [4., 5., 6., 7., 8., 9., 10., 11.]);
    }

    #[test]
    fn wrong_dtype_and_strided_layouts_have_clear_messages() {
        let t = Tensor::zeros((2, 3), DType::U8, &Device::Cpu).unwrap();
        let e = with_storage(&t, |s, l| contiguous_f32(s, l, "op: input").unwrap_err());
        assert!(
            e.to_string()
                .contains("op: input: expected F32 data, got U8"),
            "{e}"
        );
        let t = Tensor::zeros((2, 3), DType::F32, &Device::Cpu)
            .unwrap()
            .t()
            .unwrap();
        let e = with_storage(&t, |s, l| contiguous_f32(s, l, "op: input").unwrap_err());
        let e = e.to_string();
        assert!(e.contains("op: input: expected a contiguous layout"), "{e}");
        assert!(!e.contains("expected F32 data"), "{e}");
    }

    #[test]
    fn labels_of_every_supported_type() {
        for dt in [DType::U8, DType::U32, DType::I64] {
            let t = Tensor::ones((2, 2), dt, &Device::Cpu).unwrap();
            let n = with_storage(&t, |s, l| Labels::of(s, l, "target").unwrap().len());
            assert_eq!(n, 4);
        }
        let t = Tensor::ones(3, DType::F32, &Device::Cpu).unwrap();
        let e = with_storage(&t, |s, l| Labels::of(s, l, "target").unwrap_err());
        assert!(
            e.to_string()
                .contains("expected U8, U32 or I64 labels, got F32"),
            "{e}"
        );
    }
}
