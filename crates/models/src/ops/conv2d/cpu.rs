//! candle glue of the CPU convolution: custom ops whose forward runs [`super::kernels`] and whose
//! backward returns the input, weight (and bias) gradients, themselves computed by custom ops
//! without backward.

use super::kernels::{self, ConvShape};
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor,
};
use recallseg_kernels::storage::contiguous_f32;

/// The forward convolution (`apply_op2` without bias, `apply_op3` with bias).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Conv2dCpu {
    /// Zero padding on each side.
    pub padding: usize,
    /// Stride.
    pub stride: usize,
    /// Dilation.
    pub dilation: usize,
    /// Apply a ReLU to the output (epilogue of the forward pass; the backward masks `dy`).
    pub relu: bool,
}

impl Conv2dCpu {
    /// The convolution's shape from the input and weight dimensions.
    fn shape(&self, x: &[usize], w: &[usize]) -> Result<ConvShape> {
        let (&[n, c_in, h, wd], &[c_out, wc_in, kh, kw]) = (x, w) else {
            bail!("recallseg conv2d: input {x:?} and weight {w:?} must both have rank 4")
        };
        if wc_in != c_in {
            bail!(
                "recallseg conv2d: input has {c_in} channels but the weight {w:?} expects {wc_in}"
            )
        }
        Ok(ConvShape {
            n,
            c_in,
            h,
            w: wd,
            c_out,
            kh,
            kw,
            stride: self.stride,
            pad_h: self.padding,
            pad_w: self.padding,
            dil: self.dilation,
        })
    }
}

impl Conv2dCpu {
    /// The forward convolution on CPU storage (bias optional, ReLU epilogue if `relu`).
    pub(crate) fn forward(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let s = self.shape(xl.dims(), wl.dims())?;
        let x = contiguous_f32(xs, xl, "recallseg conv2d: input")?;
        let w = contiguous_f32(ws, wl, "recallseg conv2d: weight")?;
        let b = match bias {
            Some((bs, bl)) => {
                let b = contiguous_f32(bs, bl, "recallseg conv2d: bias")?;
                if b.len() != s.c_out {
                    bail!(
                        "recallseg conv2d: bias has {} elements, expected {}",
                        b.len(),
                        s.c_out
                    )
                }
                Some(b)
            }
            None => None,
        };
        let mut y = kernels::conv_forward(&s, x, w, b);
        if self.relu {
            kernels::relu_in_place(&mut y);
        }
        Ok((
            CpuStorage::F32(y),
            Shape::from((s.n, s.c_out, s.oh(), s.ow())),
        ))
    }

    /// The output gradient as seen before the ReLU epilogue (if any), contiguous.
    fn pre_relu_grad(&self, res: &Tensor, dy: &Tensor) -> Result<Tensor> {
        if self.relu {
            dy.mul(&res.gt(0f32)?.to_dtype(dy.dtype())?)?.contiguous()
        } else {
            dy.contiguous()
        }
    }

    /// Input and weight gradients from the (pre-ReLU, contiguous) output gradient.
    pub(crate) fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Tensor)> {
        // The image fed to the first layer needs no gradient: skip its (large) computation.
        let dx = if x.track_op() {
            Some(dy.apply_op2_no_bwd(
                w,
                &InputGrad {
                    conv: *self,
                    x_dims: x.dims4()?,
                },
            )?)
        } else {
            None
        };
        let dw = x.apply_op2_no_bwd(
            dy,
            &WeightGrad {
                conv: *self,
                w_dims: w.dims4()?,
            },
        )?;
        Ok((dx, dw))
    }
}

impl CustomOp2 for Conv2dCpu {
    fn name(&self) -> &'static str {
        "recallseg-conv2d"
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
        let (dx, dw) = self.grads(x, w, &dy)?;
        Ok((dx, Some(dw)))
    }
}

impl CustomOp3 for Conv2dCpu {
    fn name(&self) -> &'static str {
        "recallseg-conv2d-bias"
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
        let (dx, dw) = self.grads(x, w, &dy)?;
        let db = dy.apply_op1_no_bwd(&BiasGrad)?;
        Ok((dx, Some(dw), Some(db)))
    }
}

/// `dx` from (`dy`, `weight`).
struct InputGrad {
    conv: Conv2dCpu,
    x_dims: (usize, usize, usize, usize),
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "recallseg-conv2d-input-grad"
    }

    fn cpu_fwd(
        &self,
        dys: &CpuStorage,
        dyl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = self.x_dims;
        let s = self.conv.shape(&[n, c, h, w], wl.dims())?;
        let dy = contiguous_f32(dys, dyl, "recallseg conv2d: output gradient")?;
        let wt = contiguous_f32(ws, wl, "recallseg conv2d: weight")?;
        if dyl.dims() != [s.n, s.c_out, s.oh(), s.ow()] {
            bail!(
                "recallseg conv2d: output gradient has shape {:?}, expected {:?}",
                dyl.dims(),
                [s.n, s.c_out, s.oh(), s.ow()]
            )
        }
        let dx = kernels::conv_input_grad(&s, dy, wt);
        Ok((CpuStorage::F32(dx), Shape::from(self.x_dims)))
    }
}

/// `dW` from (`x`, `dy`).
struct WeightGrad {
    conv: Conv2dCpu,
    w_dims: (usize, usize, usize, usize),
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
        let (co, ci, kh, kw) = self.w_dims;
        let s = self.conv.shape(xl.dims(), &[co, ci, kh, kw])?;
        let x = contiguous_f32(xs, xl, "recallseg conv2d: input")?;
        let dy = contiguous_f32(dys, dyl, "recallseg conv2d: output gradient")?;
        if dyl.dims() != [s.n, s.c_out, s.oh(), s.ow()] {
            bail!(
                "recallseg conv2d: output gradient has shape {:?}, expected {:?}",
                dyl.dims(),
                [s.n, s.c_out, s.oh(), s.ow()]
            )
        }
        let dw = kernels::conv_weight_grad(&s, x, dy);
        Ok((CpuStorage::F32(dw), Shape::from(self.w_dims)))
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
