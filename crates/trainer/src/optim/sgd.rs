//! SGD with momentum.

use super::{take_state, NamedVar, Optimizer};
use candle_core::{backprop::GradStore, Result, Tensor};
use std::collections::HashMap;

/// SGD with momentum as `torch.optim.SGD` (dampening 0):
///
/// ```text
/// g ← g + λθ          b ← g (first step), μb + g (later)
/// g ← g + μb (Nesterov) or b           θ ← θ − lr·g
/// ```
pub struct Sgd {
    vars: Vec<NamedVar>,
    buf: Vec<Option<Tensor>>,
    momentum: f64,
    weight_decay: f64,
    nesterov: bool,
    t: u64,
}

impl Sgd {
    /// A new optimiser with empty momentum buffers.
    pub fn new(
        vars: Vec<NamedVar>,
        momentum: f64,
        weight_decay: f64,
        nesterov: bool,
    ) -> Result<Self> {
        let buf = vec![None; vars.len()];
        Ok(Self {
            vars,
            buf,
            momentum,
            weight_decay,
            nesterov,
            t: 0,
        })
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.t += 1;
        for (i, nv) in self.vars.iter().enumerate() {
            let theta = nv.var.as_tensor();
            let Some(g) = grads.get(theta) else { continue };
            let mut g = g.clone();
            if self.weight_decay != 0.0 {
                g = (g + (theta * self.weight_decay)?)?;
            }
            if self.momentum != 0.0 {
                let b = match &self.buf[i] {
                    None => g.clone(),
                    Some(b) => ((b * self.momentum)? + &g)?,
                };
                g = if self.nesterov {
                    (g + (&b * self.momentum)?)?
                } else {
                    b.clone()
                };
                self.buf[i] = Some(b);
            }
            nv.var.set(&(theta - (g * lr)?)?)?;
        }
        Ok(())
    }

    fn steps(&self) -> u64 {
        self.t
    }

    fn state(&self) -> (HashMap<String, Tensor>, u64) {
        let mut out = HashMap::new();
        for (i, nv) in self.vars.iter().enumerate() {
            if let Some(b) = &self.buf[i] {
                out.insert(format!("buf.{}", nv.name), b.clone());
            }
        }
        (out, self.t)
    }

    fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps: u64) -> Result<()> {
        for (i, nv) in self.vars.iter().enumerate() {
            let key = format!("buf.{}", nv.name);
            // A parameter that never had a gradient has no buffer: that is not an error.
            self.buf[i] = if tensors.contains_key(&key) {
                Some(take_state(tensors, &key, nv.var.as_tensor())?)
            } else {
                None
            };
        }
        self.t = steps;
        Ok(())
    }
}
