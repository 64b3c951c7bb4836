//! candle glue of the two CPU convolutions, dense ([`Dense`], [`super::kernels`]) and depthwise
//! ([`super::depthwise::Depthwise`]): custom ops whose forward runs the algorithm's kernel and
//! whose backward returns the input, weight (and bias) gradients, themselves computed by custom
//! ops without backward.
//!
//! The glue is written once, generic in the algorithm ([`Algo`]): [`CpuConv`] is the forward op
//! (`apply_op2` without bias, `apply_op3` with bias, optional ReLU epilogue) and [`InputGrad`] its
//! input gradient. Only the weight (and bias) gradients differ in structure and stay with each
//! algorithm ([`Algo::param_grads`]).
//!
//! Shapes are checked once, by `super::validate`; the op is built for the validated geometry
//! ([`CpuConv::new`]) and its passes only check that their operands have the planned dimensions.

use super::geometry::ConvShape;
use super::kernels;
use super::Conv2dGeometry;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor,
};
use recallseg_kernels::storage::contiguous_f32;
use std::fmt::Debug;

/// A CPU convolution algorithm: its geometry type, kernels and weight-gradient ops.
pub(crate) trait Algo: Copy + Debug + Send + Sync + 'static {
    /// Geometry of one convolution (built from validated operands).
    type Shape: Copy + Debug + Send + Sync + 'static;
    /// Prefix of error messages.
    const WHAT: &'static str;
    /// Names of the forward op without and with bias, and of the input-gradient op.
    const NAMES: [&'static str; 3];

    /// The geometry of a convolution of `x` `(N, C_in, H, W)` with `w` that `super::validate`
    /// accepted.
    fn shape(g: Conv2dGeometry, x: [usize; 4], w: [usize; 4]) -> Self::Shape;
    /// Input dimensions `(N, C_in, H, W)`.
    fn x_dims(s: &Self::Shape) -> [usize; 4];
    /// Weight dimensions.
    fn w_dims(s: &Self::Shape) -> [usize; 4];
    /// Output dimensions `(N, C_out, OH, OW)`.
    fn y_dims(s: &Self::Shape) -> [usize; 4];
    /// The forward kernel.
    fn forward(s: &Self::Shape, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32>;
    /// The ReLU epilogue, in place.
    fn relu(y: &mut [f32]);
    /// The input-gradient kernel.
    fn input_grad(s: &Self::Shape, dy: &[f32], w: &[f32]) -> Vec<f32>;
    /// The weight gradient (and the bias gradient when `with_bias`) from the input `x` and the
    /// (pre-ReLU, contiguous) output gradient `dy`.
    fn param_grads(
        s: &Self::Shape,
        x: &Tensor,
        dy: &Tensor,
        with_bias: bool,
    ) -> Result<(Tensor, Option<Tensor>)>;
}

/// Checks that an operand has the dimensions the op was planned for.
pub(super) fn expect_dims<A: Algo>(what: &str, got: &[usize], want: [usize; 4]) -> Result<()> {
    if got != want {
        bail!(
            "{}: the {what} has shape {got:?}, the op was planned for {want:?}",
            A::WHAT
        )
    }
    Ok(())
}

/// The forward convolution (`apply_op2` without bias, `apply_op3` with bias).
#[derive(Clone, Copy, Debug)]
pub(crate) struct CpuConv<A: Algo> {
    /// The geometry the op was planned for.
    s: A::Shape,
    /// Apply a ReLU to the output (epilogue of the forward pass; the backward masks `dy`).
    relu: bool,
}

/// The dense CPU convolution op.
pub(crate) type Conv2dCpu = CpuConv<Dense>;

impl<A: Algo> CpuConv<A> {
    /// The op for a convolution of `input` with `weight` that `super::validate` accepted.
    pub(super) fn new(
        geometry: Conv2dGeometry,
        input: &Tensor,
        weight: &Tensor,
        relu: bool,
    ) -> Result<Self> {
        let s = A::shape(geometry, dims4(input)?, dims4(weight)?);
        Ok(Self { s, relu })
    }

    /// The forward convolution on CPU storage (bias optional, ReLU epilogue if `relu`).
    pub(crate) fn forward(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let s = &self.s;
        expect_dims::<A>("input", xl.dims(), A::x_dims(s))?;
        expect_dims::<A>("weight", wl.dims(), A::w_dims(s))?;
        let x = contiguous_f32(xs, xl, format_args!("{}: input", A::WHAT))?;
        let w = contiguous_f32(ws, wl, format_args!("{}: weight", A::WHAT))?;
        let y_dims = A::y_dims(s);
        let b = match bias {
            Some((bs, bl)) => {
                let b = contiguous_f32(bs, bl, format_args!("{}: bias", A::WHAT))?;
                if b.len() != y_dims[1] {
                    bail!(
                        "{}: bias has {} elements, expected {}",
                        A::WHAT,
                        b.len(),
                        y_dims[1]
                    )
                }
                Some(b)
            }
            None => None,
        };
        let mut y = A::forward(s, x, w, b);
        if self.relu {
            A::relu(&mut y);
        }
        Ok((CpuStorage::F32(y), Shape::from(y_dims.to_vec())))
    }

    /// The output gradient as seen before the ReLU epilogue (if any), contiguous.
    fn pre_relu_grad(&self, res: &Tensor, dy: &Tensor) -> Result<Tensor> {
        if self.relu {
            dy.mul(&res.gt(0f32)?.to_dtype(dy.dtype())?)?.contiguous()
        } else {
            dy.contiguous()
        }
    }

    /// Input, weight and (when `with_bias`) bias gradients from the pre-ReLU, contiguous output
    /// gradient `dy`.
    pub(crate) fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        with_bias: bool,
    ) -> Result<(Option<Tensor>, Tensor, Option<Tensor>)> {
        // The image fed to the first layer needs no gradient: skip its (large) computation.
        let dx = if x.track_op() {
            Some(dy.apply_op2_no_bwd(w, &InputGrad::<A> { s: self.s })?)
        } else {
            None
        };
        let (dw, db) = A::param_grads(&self.s, x, dy, with_bias)?;
        Ok((dx, dw, db))
    }
}

/// The dimensions of a rank-4 tensor.
fn dims4(t: &Tensor) -> Result<[usize; 4]> {
    let (a, b, c, d) = t.dims4()?;
    Ok([a, b, c, d])
}

impl<A: Algo> CustomOp2 for CpuConv<A> {
    fn name(&self) -> &'static str {
        A::NAMES[0]
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward(xs, xl, ws, wl, None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = self.pre_relu_grad(res, dy)?;
        let (dx, dw, _) = self.grads(x, w, &dy, false)?;
        Ok((dx, Some(dw)))
    }
}

impl<A: Algo> CustomOp3 for CpuConv<A> {
    fn name(&self) -> &'static str {
        A::NAMES[1]
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward(xs, xl, ws, wl, Some((bs, bl)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = self.pre_relu_grad(res, dy)?;
        let (dx, dw, db) = self.grads(x, w, &dy, true)?;
        Ok((dx, Some(dw), db))
    }
}

/// `dx` from (`dy`, `weight`).
struct InputGrad<A: Algo> {
    s: A::Shape,
}

impl<A: Algo> CustomOp2 for InputGrad<A> {
    fn name(&self) -> &'static str {
        A::NAMES[2]
    }

    fn cpu_fwd(
        &self,
        dys: &CpuStorage,
        dyl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let s = &self.s;
        expect_dims::<A>("output gradient", dyl.dims(), A::y_dims(s))?;
        expect_dims::<A>("weight", wl.dims(), A::w_dims(s))?;
        let dy = contiguous_f32(dys, dyl, format_args!("{}: output gradient", A::WHAT))?;
        let wt = contiguous_f32(ws, wl, format_args!("{}: weight", A::WHAT))?;
        let dx = A::input_grad(s, dy, wt);
        Ok((CpuStorage::F32(dx), Shape::from(A::x_dims(s).to_vec())))
    }
}

/// The dense convolution (`groups == 1`): im2col + gemm and Winograd ([`super::kernels`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dense;

impl Algo for Dense {
    type Shape = ConvShape;
    const WHAT: &'static str = "recallseg conv2d";
    const NAMES: [&'static str; 3] = [
        "recallseg-conv2d",
        "recallseg-conv2d-bias",
        "recallseg-conv2d-input-grad",
    ];

    fn shape(g: Conv2dGeometry, x: [usize; 4], w: [usize; 4]) -> ConvShape {
        let ([n, c_in, h, wd], [c_out, _, kh, kw]) = (x, w);
        ConvShape {
            n,
            c_in,
            h,
            w: wd,
            c_out,
            kh,
            kw,
            stride: g.stride,
            pad_h: g.padding,
            pad_w: g.padding,
            dil: g.dilation,
        }
    }

    fn x_dims(s: &ConvShape) -> [usize; 4] {
        [s.n, s.c_in, s.h, s.w]
    }

    fn w_dims(s: &ConvShape) -> [usize; 4] {
        [s.c_out, s.c_in, s.kh, s.kw]
    }

    fn y_dims(s: &ConvShape) -> [usize; 4] {
        [s.n, s.c_out, s.oh(), s.ow()]
    }

    fn forward(s: &ConvShape, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
        kernels::conv_forward(s, x, w, bias)
    }

    fn relu(y: &mut [f32]) {
        kernels::relu_in_place(y);
    }

    fn input_grad(s: &ConvShape, dy: &[f32], w: &[f32]) -> Vec<f32> {
        kernels::conv_input_grad(s, dy, w)
    }

    fn param_grads(
        s: &ConvShape,
        x: &Tensor,
        dy: &Tensor,
        with_bias: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let dw = x.apply_op2_no_bwd(dy, &WeightGrad { s: *s })?;
        let db = if with_bias {
            Some(dy.apply_op1_no_bwd(&BiasGrad)?)
        } else {
            None
        };
        Ok((dw, db))
    }
}

/// `dW` from (`x`, `dy`).
struct WeightGrad {
    s: ConvShape,
}

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "recallseg-conv2d-weight-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        dys: &CpuStorage,
        dyl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let s = &self.s;
        expect_dims::<Dense>("input", xl.dims(), Dense::x_dims(s))?;
        expect_dims::<Dense>("output gradient", dyl.dims(), Dense::y_dims(s))?;
        let x = contiguous_f32(xs, xl, "recallseg conv2d: input")?;
        let dy = contiguous_f32(dys, dyl, "recallseg conv2d: output gradient")?;
        let dw = kernels::conv_weight_grad(s, x, dy);
        Ok((CpuStorage::F32(dw), Shape::from(Dense::w_dims(s).to_vec())))
    }
}

/// `db` from `dy`: the sum over batch and pixels.
struct BiasGrad;

impl CustomOp1 for BiasGrad {
    fn name(&self) -> &'static str {
        "recallseg-conv2d-bias-grad"
    }

    fn cpu_fwd(&self, dys: &CpuStorage, dyl: &Layout) -> Result<(CpuStorage, Shape)> {
        let &[n, c, h, w] = dyl.dims() else {
            bail!(
                "recallseg conv2d: output gradient must have rank 4, got {:?}",
                dyl.dims()
            )
        };
        let dy = contiguous_f32(dys, dyl, "recallseg conv2d: output gradient")?;
        let db = kernels::conv_bias_grad(n, c, h * w, dy);
        Ok((CpuStorage::F32(db), Shape::from(c)))
    }
}
