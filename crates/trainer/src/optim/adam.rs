//! Adam and AdamW.

use super::{take_state, NamedVar, Optimizer};
use candle_core::{backprop::GradStore, Result, Tensor};
use std::collections::HashMap;

/// Adam (`decoupled = false`, L2 decay added to the gradient, as `torch.optim.Adam`) or AdamW
/// (`decoupled = true`, `θ ← θ(1 − lr·λ)` before the Adam step, as `torch.optim.AdamW`):
///
/// ```text
/// m ← β₁m + (1 − β₁)g        v ← β₂v + (1 − β₂)g²
/// θ ← θ − lr · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε)
/// ```
pub struct Adam {
    vars: Vec<NamedVar>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
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
        let m = vars
            .iter()
            .map(|v| v.var.as_tensor().zeros_like())
            .collect::<Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(Self {
            vars,
            m,
            v,
            beta1,
            beta2,
            eps,
            weight_decay,
            decoupled,
            t: 0,
        })
    }
}

impl Optimizer for Adam {
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.t += 1;
        let t = self.t as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        for (i, nv) in self.vars.iter().enumerate() {
            let theta = nv.var.as_tensor();
            let Some(g) = grads.get(theta) else { continue };
            let mut g = g.clone();
            let mut base = theta.clone();
            if self.weight_decay != 0.0 {
                if self.decoupled {
                    base = (theta * (1.0 - lr * self.weight_decay))?;
                } else {
                    g = (g + (theta * self.weight_decay)?)?;
                }
            }
            let m = ((&self.m[i] * self.beta1)? + (&g * (1.0 - self.beta1))?)?;
            let v = ((&self.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            // PyTorch: denom = sqrt(v) / sqrt(bc2) + eps; θ -= (lr / bc1) · m / denom.
            let denom = ((v.sqrt()? / bc2.sqrt())? + self.eps)?;
            let update = ((&m / &denom)? * (lr / bc1))?;
            nv.var.set(&(base - update)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    fn steps(&self) -> u64 {
        self.t
    }

    fn state(&self) -> (HashMap<String, Tensor>, u64) {
        let mut out = HashMap::new();
        for (i, nv) in self.vars.iter().enumerate() {
            out.insert(format!("m.{}", nv.name), self.m[i].clone());
            out.insert(format!("v.{}", nv.name), self.v[i].clone());
        }
        (out, self.t)
    }

    fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps: u64) -> Result<()> {
        for (i, nv) in self.vars.iter().enumerate() {
            let like = nv.var.as_tensor();
            self.m[i] = take_state(tensors, &format!("m.{}", nv.name), like)?;
            self.v[i] = take_state(tensors, &format!("v.{}", nv.name), like)?;
        }
        self.t = steps;
        Ok(())
    }
}
