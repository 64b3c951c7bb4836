//! Seeded parameter creation: every parameter is a `Var` in the caller's `VarMap`, initialised from
//! its own ChaCha8 stream seeded by `(init_seed, parameter name)`.
//!
//! candle's CPU random generator cannot be seeded, so initialisation never uses it. Seeding each
//! parameter by its name makes the values independent of construction order: the same seed gives
//! bit-identical parameters, on every device, and a re-initialised classifier gets the values a
//! fresh model would have.

use crate::ModelError;
use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recallseg_distributed::SharedCommunicator;
use std::cell::RefCell;
use std::rc::Rc;

/// What a parameter is, which decides whether the optimiser sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// A convolution weight or bias: always trainable.
    Weight,
    /// A BatchNorm scale or shift: trainable unless BN is frozen.
    BnAffine,
    /// A BatchNorm running mean or variance: checkpointed, never trained.
    BnStat,
}

/// How a parameter starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamInit {
    /// Kaiming (He) normal in fan-out mode for ReLU: `N(0, 2 / fan_out)`, like torchvision's
    /// ResNet; `fan_out = out_channels · k_h · k_w`.
    KaimingNormalFanOut,
    /// Kaiming (He) normal in fan-in mode for ReLU: `N(0, 2 / fan_in)`, PyTorch's
    /// `kaiming_normal_` with its defaults; `fan_in = (in_channels / groups) · k_h · k_w`.
    KaimingNormalFanIn,
    /// PyTorch's default for a convolution weight (`kaiming_uniform_(a=√5)`): `U(−b, b)` with
    /// `b = 1 / √fan_in`.
    PytorchDefault,
    /// Uniform in `[−bound, bound)`.
    Uniform(f64),
    /// Every element equal to the value.
    Const(f64),
}

/// `(fan_in, fan_out)` of a weight of shape `(C_out, C_in / groups, k_h, k_w)` (PyTorch's
/// `_calculate_fan_in_and_fan_out`); a 1-D shape counts as `(len, len)`.
pub(crate) fn fans(shape: &[usize]) -> (usize, usize) {
    let receptive: usize = shape.iter().skip(2).product();
    match shape {
        [] => (1, 1),
        [n] => (*n, *n),
        [out, inp, ..] => (inp * receptive, out * receptive),
    }
}

/// A parameter with its full name (its key in the `VarMap` and in checkpoints).
#[derive(Debug, Clone)]
pub struct NamedVar {
    /// Dotted name, e.g. `backbone.layer1.0.conv1.weight`.
    pub name: String,
    /// The variable (shares storage with the `VarMap` entry).
    pub var: Var,
    /// Its role.
    pub kind: ParamKind,
    /// How it was initialised (used to re-initialise a classifier).
    pub init: ParamInit,
}

/// 64-bit FNV-1a hash of a string (stable across platforms and releases).
pub(crate) fn fnv1a64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64 finaliser: a bijective mixer used to combine seeds.
pub(crate) fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Uniform `[0, 1)` double from 53 random bits.
pub(crate) fn unit_f64(bits: u64) -> f64 {
    (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// The initial values of one parameter, as f32, in row-major order.
pub(crate) fn init_values(name: &str, shape: &[usize], init: ParamInit, seed: u64) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let (fan_in, fan_out) = fans(shape);
    let (fan_in, fan_out) = (fan_in.max(1) as f64, fan_out.max(1) as f64);
    let mut rng = ChaCha8Rng::seed_from_u64(splitmix64(seed) ^ fnv1a64(name));
    match init {
        ParamInit::Const(v) => vec![v as f32; n],
        ParamInit::Uniform(bound) => uniform_values(n, bound, &mut rng),
        ParamInit::PytorchDefault => uniform_values(n, 1.0 / fan_in.sqrt(), &mut rng),
        ParamInit::KaimingNormalFanOut => normal_values(n, (2.0 / fan_out).sqrt(), &mut rng),
        ParamInit::KaimingNormalFanIn => normal_values(n, (2.0 / fan_in).sqrt(), &mut rng),
    }
}

/// `n` uniform draws in `[−bound, bound)`.
fn uniform_values(n: usize, bound: f64, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..n)
        .map(|_| ((2.0 * unit_f64(rng.next_u64()) - 1.0) * bound) as f32)
        .collect()
}

/// `n` normal draws of standard deviation `std` (Box–Muller, two per pair of uniforms).
fn normal_values(n: usize, std: f64, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let u1 = 1.0 - unit_f64(rng.next_u64()); // (0, 1]
        let u2 = unit_f64(rng.next_u64());
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push((r * t.cos() * std) as f32);
        if out.len() < n {
            out.push((r * t.sin() * std) as f32);
        }
    }
    out
}

/// Builds a tensor of the initial values on `device` in `dtype`.
pub(crate) fn init_tensor(
    name: &str,
    shape: &[usize],
    init: ParamInit,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    Tensor::from_vec(init_values(name, shape, init, seed), shape, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)
}

/// Creates parameters under a name prefix and records them.
#[derive(Clone)]
pub(crate) struct ParamBuilder<'a> {
    vb: VarBuilder<'a>,
    seed: u64,
    conv_init: ParamInit,
    sync_batch_norm: Option<SharedCommunicator>,
    registry: Rc<RefCell<Vec<NamedVar>>>,
}

impl<'a> ParamBuilder<'a> {
    pub(crate) fn new(vb: VarBuilder<'a>, seed: u64) -> Self {
        Self {
            vb,
            seed,
            conv_init: ParamInit::KaimingNormalFanOut,
            sync_batch_norm: None,
            registry: Rc::new(RefCell::new(Vec::new())),
        }
    }

    /// This builder with `init` for the convolution weights created through it and its
    /// sub-builders (default Kaiming-normal fan-out).
    pub(crate) fn with_conv_init(mut self, init: ParamInit) -> Self {
        self.conv_init = init;
        self
    }

    /// This builder with the communicator over which the BatchNorm layers created through it
    /// and its sub-builders synchronise their training statistics (`None`: per process).
    pub(crate) fn with_sync_batch_norm(mut self, comm: Option<SharedCommunicator>) -> Self {
        self.sync_batch_norm = comm;
        self
    }

    /// The communicator of SyncBatchNorm, if any.
    pub(crate) fn sync_batch_norm(&self) -> Option<&SharedCommunicator> {
        self.sync_batch_norm.as_ref()
    }

    /// How convolution weights created through this builder start.
    pub(crate) fn conv_init(&self) -> ParamInit {
        self.conv_init
    }

    /// A builder for the sub-module `name`.
    pub(crate) fn pp(&self, name: impl ToString) -> Self {
        Self {
            vb: self.vb.pp(name),
            seed: self.seed,
            conv_init: self.conv_init,
            sync_batch_norm: self.sync_batch_norm.clone(),
            registry: self.registry.clone(),
        }
    }

    pub(crate) fn dtype(&self) -> DType {
        self.vb.dtype()
    }

    pub(crate) fn device(&self) -> &Device {
        self.vb.device()
    }

    /// Full dotted name of `name` under this builder's prefix.
    pub(crate) fn full_name(&self, name: &str) -> String {
        let p = self.vb.prefix();
        if p.is_empty() {
            name.to_string()
        } else {
            format!("{p}.{name}")
        }
    }

    /// Creates (or fetches) the variable `name`, sets its seeded initial value and records it.
    pub(crate) fn param(
        &self,
        name: &str,
        shape: &[usize],
        kind: ParamKind,
        init: ParamInit,
    ) -> Result<Var, ModelError> {
        let full = self.full_name(name);
        let t = self
            .vb
            .get_with_hints(Shape::from(shape.to_vec()), name, Init::Const(0.0))?;
        if !t.is_variable() {
            return Err(ModelError::NotAVarMap { name: full });
        }
        let var = Var::from_tensor(&t)?;
        var.set(&init_tensor(
            &full,
            shape,
            init,
            self.seed,
            self.dtype(),
            self.device(),
        )?)?;
        self.registry.borrow_mut().push(NamedVar {
            name: full,
            var: var.clone(),
            kind,
            init,
        });
        Ok(var)
    }

    /// Every parameter created so far through this builder or its clones.
    pub(crate) fn take_registry(&self) -> Vec<NamedVar> {
        std::mem::take(&mut self.registry.borrow_mut())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_and_splitmix_reference_values() {
        // FNV-1a test vectors.
        assert_eq!(fnv1a64(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64("a"), 0xaf63_dc4c_8601_ec8c);
        // SplitMix64 with state 0 yields this first output (Vigna's reference).
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn kaiming_values_have_the_right_scale_and_depend_on_name_and_seed() {
        let shape = [64, 32, 3, 3];
        let a = init_values("w", &shape, ParamInit::KaimingNormalFanOut, 7);
        let b = init_values("w", &shape, ParamInit::KaimingNormalFanOut, 7);
        let c = init_values("v", &shape, ParamInit::KaimingNormalFanOut, 7);
        let d = init_values("w", &shape, ParamInit::KaimingNormalFanOut, 8);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        let n = a.len() as f64;
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        let want = 2.0 / (64.0 * 9.0);
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var / want - 1.0).abs() < 0.05, "var {var} want {want}");
    }

    /// Mean and variance of the values.
    fn moments(v: &[f32]) -> (f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        (mean, var)
    }

    #[test]
    fn fan_in_initialisers_have_pytorchs_scales() {
        // (C_out, C_in, k, k) = (64, 32, 3, 3): fan_in 288; a depthwise (512, 1, 3, 3): fan_in 9.
        for shape in [[64usize, 32, 3, 3], [512, 1, 3, 3]] {
            let fan_in = (shape[1] * 9) as f64;
            let n = shape.iter().product::<usize>() as f64;
            let normal = init_values("w", &shape, ParamInit::KaimingNormalFanIn, 3);
            let (mean, var) = moments(&normal);
            let mean_tolerance = 4.0 * (2.0 / fan_in / n).sqrt();
            assert!(mean.abs() < mean_tolerance, "{shape:?} mean {mean}");
            assert!(
                (var * fan_in / 2.0 - 1.0).abs() < 0.1,
                "{shape:?} var {var}"
            );

            let uniform = init_values("w", &shape, ParamInit::PytorchDefault, 3);
            let bound = 1.0 / fan_in.sqrt();
            assert!(uniform.iter().all(|&x| (x as f64).abs() <= bound));
            let (_, var) = moments(&uniform);
            assert!(
                (var * 3.0 * fan_in - 1.0).abs() < 0.1,
                "{shape:?} var {var}"
            );
        }
        let b = init_values("b", &[1000], ParamInit::Uniform(0.25), 1);
        assert!(b.iter().all(|&x| (-0.25..0.25).contains(&x)));
        assert!(b.iter().any(|&x| x < -0.2) && b.iter().any(|&x| x > 0.2));
        assert_eq!(fans(&[16, 256, 1, 1]), (256, 16));
        assert_eq!(fans(&[7]), (7, 7));
    }
}
