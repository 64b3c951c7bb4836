//! SGD with momentum.

use super::{
    first_non_finite, take_state, NamedVar, NonFiniteSource, NonFiniteUpdate, Optimizer,
    StepOutcome,
};
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
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<StepOutcome> {
        // Every new value is computed first and checked; only then is anything written.
        let mut pending: Vec<(usize, &Tensor, Tensor, Option<Tensor>)> = Vec::new();
        for (i, nv) in self.vars.iter().enumerate() {
            let theta = nv.var.as_tensor();
            let Some(g0) = grads.get(theta) else { continue };
            let mut g = g0.clone();
            if self.weight_decay != 0.0 {
                g = (g + (theta * self.weight_decay)?)?;
            }
            let mut new_buf = None;
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
                new_buf = Some(b);
            }
            pending.push((i, g0, (theta - (g * lr)?)?, new_buf));
        }
        let grads_of: Vec<&Tensor> = pending.iter().map(|p| p.1).collect();
        if let Some((k, count)) = first_non_finite(&grads_of)? {
            return Ok(StepOutcome::Rejected(NonFiniteUpdate {
                param: self.vars[pending[k].0].name.clone(),
                source: NonFiniteSource::Gradient,
                count,
            }));
        }
        // θ' then, where there is momentum, the new buffer of each parameter.
        let mut outputs: Vec<&Tensor> = Vec::new();
        let mut owner: Vec<usize> = Vec::new();
        for (k, p) in pending.iter().enumerate() {
            outputs.push(&p.2);
            owner.push(k);
            if let Some(b) = &p.3 {
                outputs.push(b);
                owner.push(k);
            }
        }
        if let Some((j, count)) = first_non_finite(&outputs)? {
            return Ok(StepOutcome::Rejected(NonFiniteUpdate {
                param: self.vars[pending[owner[j]].0].name.clone(),
                source: NonFiniteSource::Update,
                count,
            }));
        }
        for (i, _, new_theta, new_buf) in pending {
            self.vars[i].var.set(&new_theta)?;
            if new_buf.is_some() {
                self.buf[i] = new_buf;
            }
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
