//! Adam and AdamW.

use super::adam_cpu::{AdamScalars, FusedAdamCheck, FusedAdamStep};
use super::{
    first_non_finite, take_state, NamedVar, NonFiniteSource, NonFiniteUpdate, Optimizer,
    StepOutcome,
};
use candle_core::{backprop::GradStore, DType, Device, Result, Tensor};
use std::collections::HashMap;
use std::sync::Mutex;

/// The moment estimates of one parameter.
enum Moments {
    /// Candle tensors, updated by the portable path (any device or dtype).
    Tensors { m: Tensor, v: Tensor },
    /// Host vectors, updated in place by the fused CPU kernel (`f32` parameters on the CPU).
    Host { m: Vec<f32>, v: Vec<f32> },
}

impl Moments {
    /// Zero moments for `theta`: host vectors when the fused kernel can update it.
    fn zeros(theta: &Tensor, fused: bool) -> Result<Self> {
        Ok(if fused && fused_applies(theta) {
            let n = theta.elem_count();
            Moments::Host {
                m: vec![0.0; n],
                v: vec![0.0; n],
            }
        } else {
            // Two separate allocations: the moments are distinct tensors.
            Moments::Tensors {
                m: theta.zeros_like()?,
                v: theta.zeros_like()?,
            }
        })
    }

    /// `(m, v)` as tensors shaped like `theta`.
    fn tensors(&self, theta: &Tensor) -> Result<(Tensor, Tensor)> {
        match self {
            Moments::Tensors { m, v } => Ok((m.clone(), v.clone())),
            Moments::Host { m, v } => Ok((
                Tensor::from_slice(m, theta.shape(), theta.device())?,
                Tensor::from_slice(v, theta.shape(), theta.device())?,
            )),
        }
    }
}

/// Whether the fused CPU kernel handles this parameter.
fn fused_applies(theta: &Tensor) -> bool {
    matches!(theta.device(), Device::Cpu) && theta.dtype() == DType::F32 && theta.is_contiguous()
}

/// Adam (`decoupled = false`, L2 decay added to the gradient, as `torch.optim.Adam`) or AdamW
/// (`decoupled = true`, `θ ← θ(1 − lr·λ)` before the Adam step, as `torch.optim.AdamW`):
///
/// ```text
/// m ← β₁m + (1 − β₁)g        v ← β₂v + (1 − β₂)g²
/// θ ← θ − lr · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε)
/// ```
///
/// `f32` parameters on the CPU are updated by one fused in-place pass (`adam_cpu.rs`) with the
/// same `f32` arithmetic as the portable candle-ops path used everywhere else
/// ([`Adam::with_fused_cpu`] turns it off).
pub struct Adam {
    vars: Vec<NamedVar>,
    moments: Vec<Moments>,
    fused: bool,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    decoupled: bool,
    t: u64,
}

impl Adam {
    /// A new optimiser with zero moments.
    pub fn new(
        vars: Vec<NamedVar>,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
        decoupled: bool,
    ) -> Result<Self> {
        let moments = vars
            .iter()
            .map(|v| Moments::zeros(v.var.as_tensor(), true))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            vars,
            moments,
            fused: true,
            beta1,
            beta2,
            eps,
            weight_decay,
            decoupled,
            t: 0,
        })
    }

    /// Enables (default) or disables the fused CPU update; with it off every parameter takes the
    /// portable candle-ops path. Call before the first step (the moments are reset to zero).
    pub fn with_fused_cpu(mut self, fused: bool) -> Result<Self> {
        self.fused = fused;
        self.moments = self
            .vars
            .iter()
            .map(|v| Moments::zeros(v.var.as_tensor(), fused))
            .collect::<Result<Vec<_>>>()?;
        Ok(self)
    }

    /// How many parameters the fused CPU kernel updates (the rest take the portable path).
    pub fn fused_cpu_params(&self) -> usize {
        self.moments
            .iter()
            .filter(|m| matches!(m, Moments::Host { .. }))
            .count()
    }

    /// The fused kernel's constants for this step, computed like the portable path's scalars.
    fn scalars(&self, lr: f64, bc1: f64, bc2: f64) -> AdamScalars {
        let wd = self.weight_decay;
        AdamScalars {
            beta1: self.beta1 as f32,
            one_minus_beta1: (1.0 - self.beta1) as f32,
            beta2: self.beta2 as f32,
            one_minus_beta2: (1.0 - self.beta2) as f32,
            inv_sqrt_bc2: (1.0 / bc2.sqrt()) as f32,
            eps: self.eps as f32,
            step_size: (lr / bc1) as f32,
            l2: if self.decoupled { 0.0 } else { wd as f32 },
            decay: (1.0 - lr * wd) as f32,
            decoupled: self.decoupled && wd != 0.0,
        }
    }
}

impl Optimizer for Adam {
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<StepOutcome> {
        let t = (self.t + 1) as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        let scalars = self.scalars(lr, bc1, bc2);
        // Phase 1: every update is computed (portable path) or simulated (fused path: a
        // read-only pass with the same arithmetic) and checked; nothing is written yet.
        let mut portable: Vec<(usize, &Tensor, Tensor, Tensor, Tensor)> = Vec::new();
        for (i, nv) in self.vars.iter().enumerate() {
            let theta = nv.var.as_tensor();
            let Some(g) = grads.get(theta) else { continue };
            let (m, v) = match &self.moments[i] {
                Moments::Host { m, v } if g.dtype() == DType::F32 && g.device().is_cpu() => {
                    let op = FusedAdamCheck {
                        scalars,
                        moments: (m.as_slice(), v.as_slice()),
                        result: Mutex::new((0, 0)),
                    };
                    theta.inplace_op2(&g.contiguous()?, &op)?;
                    let (bad_g, bad_out) = *op
                        .result
                        .lock()
                        .map_err(|_| candle_core::Error::Msg("Adam: check lock poisoned".into()))?;
                    if bad_g > 0 || bad_out > 0 {
                        return Ok(StepOutcome::Rejected(NonFiniteUpdate {
                            param: nv.name.clone(),
                            source: if bad_g > 0 {
                                NonFiniteSource::Gradient
                            } else {
                                NonFiniteSource::Update
                            },
                            count: if bad_g > 0 { bad_g } else { bad_out },
                        }));
                    }
                    continue;
                }
                Moments::Host { .. } => {
                    candle_core::bail!("Adam: gradient of {} is not f32 on the CPU", nv.name)
                }
                Moments::Tensors { m, v } => (m, v),
            };
            let g0 = g;
            let mut g = g.clone();
            let mut base = theta.clone();
            if self.weight_decay != 0.0 {
                if self.decoupled {
                    base = (theta * (1.0 - lr * self.weight_decay))?;
                } else {
                    g = (g + (theta * self.weight_decay)?)?;
                }
            }
            let new_m = ((m * self.beta1)? + (&g * (1.0 - self.beta1))?)?;
            let new_v = ((v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            // PyTorch: denom = sqrt(v) / sqrt(bc2) + eps; θ -= (lr / bc1) · m / denom.
            let denom = ((new_v.sqrt()? / bc2.sqrt())? + self.eps)?;
            let update = ((&new_m / &denom)? * (lr / bc1))?;
            portable.push((i, g0, (base - update)?, new_m, new_v));
        }
        let grads_of: Vec<&Tensor> = portable.iter().map(|p| p.1).collect();
        if let Some((k, count)) = first_non_finite(&grads_of)? {
            return Ok(StepOutcome::Rejected(NonFiniteUpdate {
                param: self.vars[portable[k].0].name.clone(),
                source: NonFiniteSource::Gradient,
                count,
            }));
        }
        let outputs: Vec<&Tensor> = portable.iter().flat_map(|p| [&p.2, &p.3, &p.4]).collect();
        if let Some((j, count)) = first_non_finite(&outputs)? {
            return Ok(StepOutcome::Rejected(NonFiniteUpdate {
                param: self.vars[portable[j / 3].0].name.clone(),
                source: NonFiniteSource::Update,
                count,
            }));
        }
        // Phase 2: apply.
        for (i, nv) in self.vars.iter().enumerate() {
            let theta = nv.var.as_tensor();
            let Some(g) = grads.get(theta) else { continue };
            if let Moments::Host { m, v } = &mut self.moments[i] {
                let op = FusedAdamStep {
                    scalars,
                    moments: Mutex::new((m.as_mut_slice(), v.as_mut_slice())),
                };
                theta.inplace_op2(&g.contiguous()?, &op)?;
            }
        }
        for (i, _, new_theta, new_m, new_v) in portable {
            self.vars[i].var.set(&new_theta)?;
            self.moments[i] = Moments::Tensors { m: new_m, v: new_v };
        }
        self.t += 1;
        Ok(StepOutcome::Applied)
    }

    fn steps(&self) -> u64 {
        self.t
    }

    fn state(&self) -> (HashMap<String, Tensor>, u64) {
        let mut out = HashMap::new();
        for (i, nv) in self.vars.iter().enumerate() {
            // Host moments always convert (the shape and element count are the parameter's).
            let Ok((m, v)) = self.moments[i].tensors(nv.var.as_tensor()) else {
                continue;
            };
            out.insert(format!("m.{}", nv.name), m);
            out.insert(format!("v.{}", nv.name), v);
        }
        (out, self.t)
    }

    fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps: u64) -> Result<()> {
        for (i, nv) in self.vars.iter().enumerate() {
            let like = nv.var.as_tensor();
            let m = take_state(tensors, &format!("m.{}", nv.name), like)?;
            let v = take_state(tensors, &format!("v.{}", nv.name), like)?;
            self.moments[i] = match self.moments[i] {
                Moments::Host { .. } => Moments::Host {
                    m: m.flatten_all()?.to_vec1()?,
                    v: v.flatten_all()?.to_vec1()?,
                },
                // Copies, so the moments never share storage with the caller's tensors.
                Moments::Tensors { .. } => Moments::Tensors {
                    m: m.copy()?,
                    v: v.copy()?,
                },
            };
        }
        self.t = steps;
        Ok(())
    }
}
