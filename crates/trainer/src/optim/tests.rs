//! Optimisers against PyTorch goldens (`tests/golden/make_optim_golden.py`) and state round trips.

use super::*;
use candle_core::{DType, Device};

const GOLDEN: &str = include_str!("../../tests/golden/optim_golden.json");

#[derive(serde::Deserialize)]
struct Golden {
    theta0: Vec<f64>,
    a: Vec<f64>,
    g: Vec<Vec<f64>>,
    lrs: Vec<f64>,
    cases: Vec<serde_json::Value>,
}

fn make(case: &serde_json::Value, vars: Vec<NamedVar>) -> Box<dyn Optimizer + Send> {
    let name = case["name"].as_str().unwrap();
    let f = |k: &str, d: f64| case.get(k).and_then(|v| v.as_f64()).unwrap_or(d);
    let wd = f("weight_decay", 0.0);
    if name.starts_with("adam") {
        let betas = case["betas"].as_array().unwrap();
        Box::new(
            Adam::new(
                vars,
                betas[0].as_f64().unwrap(),
                betas[1].as_f64().unwrap(),
                f("eps", 1e-8),
                wd,
                name.starts_with("adamw"),
            )
            .unwrap(),
        )
    } else {
        let nesterov = case
            .get("nesterov")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        Box::new(Sgd::new(vars, f("momentum", 0.0), wd, nesterov).unwrap())
    }
}

/// One step of the golden's loss Σ ½aθ² + g_kθ.
fn step(opt: &mut dyn Optimizer, var: &Var, g: &Golden, k: usize) {
    let dev = Device::Cpu;
    let a = Tensor::new(g.a.as_slice(), &dev).unwrap();
    let gk = Tensor::new(g.g[k].as_slice(), &dev).unwrap();
    let th = var.as_tensor();
    let loss = ((th.sqr().unwrap() * &a).unwrap() * 0.5)
        .unwrap()
        .add(&(th * &gk).unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    assert_eq!(opt.step(&grads, g.lrs[k]).unwrap(), StepOutcome::Applied);
}

fn named(theta: &[f64]) -> (Var, Vec<NamedVar>) {
    let var = Var::new(theta, &Device::Cpu).unwrap();
    let nv = vec![NamedVar {
        name: "p".into(),
        var: var.clone(),
    }];
    (var, nv)
}

#[test]
fn trajectories_match_pytorch() {
    let g: Golden = serde_json::from_str(GOLDEN).unwrap();
    assert_eq!(g.cases.len(), 6);
    for case in &g.cases {
        let (var, nv) = named(&g.theta0);
        assert_eq!(var.dtype(), DType::F64);
        let mut opt = make(case, nv);
        for (k, want) in case["trajectory"].as_array().unwrap().iter().enumerate() {
            step(opt.as_mut(), &var, &g, k);
            let got: Vec<f64> = var.as_tensor().to_vec1().unwrap();
            for (i, (x, w)) in got.iter().zip(want.as_array().unwrap()).enumerate() {
                let w = w.as_f64().unwrap();
                assert!(
                    (x - w).abs() <= 1e-12 * (1.0 + w.abs()),
                    "{} step {k} element {i}: {x} vs torch {w}",
                    case["name"]
                );
            }
        }
        assert_eq!(opt.steps(), 5);
    }
}

#[test]
fn state_round_trip_resumes_exactly() {
    let g: Golden = serde_json::from_str(GOLDEN).unwrap();
    for case in &g.cases {
        // Straight through.
        let (var, nv) = named(&g.theta0);
        let mut opt = make(case, nv);
        for k in 0..5 {
            step(opt.as_mut(), &var, &g, k);
        }
        let straight: Vec<f64> = var.as_tensor().to_vec1().unwrap();
        // Two steps, save, rebuild, load, three more.
        let (var1, nv1) = named(&g.theta0);
        let mut opt1 = make(case, nv1);
        for k in 0..2 {
            step(opt1.as_mut(), &var1, &g, k);
        }
        let (state, steps) = opt1.state();
        let theta_mid: Vec<f64> = var1.as_tensor().to_vec1().unwrap();
        let (var2, nv2) = named(&theta_mid);
        let mut opt2 = make(case, nv2);
        opt2.load_state(&state, steps).unwrap();
        for k in 2..5 {
            step(opt2.as_mut(), &var2, &g, k);
        }
        let resumed: Vec<f64> = var2.as_tensor().to_vec1().unwrap();
        assert_eq!(straight, resumed, "{}", case["name"]);
    }
}

#[test]
fn load_state_names_missing_and_misshaped_tensors() {
    let (_var, nv) = named(&[1.0, 2.0]);
    let mut opt = Adam::new(nv, 0.9, 0.999, 1e-8, 0.0, false).unwrap();
    let e = opt.load_state(&HashMap::new(), 3).unwrap_err().to_string();
    assert!(e.contains("`m.p` missing"), "{e}");
    let mut bad = HashMap::new();
    let t = Tensor::zeros(3, DType::F64, &Device::Cpu).unwrap();
    bad.insert("m.p".to_string(), t.clone());
    bad.insert("v.p".to_string(), t);
    let e = opt.load_state(&bad, 3).unwrap_err().to_string();
    assert!(e.contains("shape"), "{e}");
}

#[test]
fn parameters_without_gradient_are_untouched() {
    let dev = Device::Cpu;
    let used = Var::new(&[1.0f32, 2.0], &dev).unwrap();
    let unused = Var::new(&[5.0f32], &dev).unwrap();
    let vars = vec![
        NamedVar {
            name: "used".into(),
            var: used.clone(),
        },
        NamedVar {
            name: "unused".into(),
            var: unused.clone(),
        },
    ];
    let mut opt = Adam::new(vars, 0.9, 0.999, 1e-8, 0.1, true).unwrap();
    let grads = used.as_tensor().sum_all().unwrap().backward().unwrap();
    assert_eq!(opt.step(&grads, 0.1).unwrap(), StepOutcome::Applied);
    assert_eq!(unused.as_tensor().to_vec1::<f32>().unwrap(), vec![5.0]);
    assert_ne!(used.as_tensor().to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
}

/// `n` f32 values in [-1, 1) from a fixed formula (no RNG dependency).
fn f32_values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed.wrapping_mul(40_503));
            (x >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

/// Five steps of Σ ½aθ² + g_kθ on a 70 001-element f32 parameter (several parallel chunks and a
/// ragged tail) with the fused CPU update on or off.
fn f32_trajectory(adamw: bool, wd: f64, fused: bool) -> (Vec<f32>, HashMap<String, Tensor>) {
    let dev = Device::Cpu;
    let n = 70_001;
    let var = Var::from_slice(&f32_values(n, 1), n, &dev).unwrap();
    let nv = vec![NamedVar {
        name: "p".into(),
        var: var.clone(),
    }];
    let mut opt = Adam::new(nv, 0.9, 0.999, 1e-8, wd, adamw)
        .unwrap()
        .with_fused_cpu(fused)
        .unwrap();
    assert_eq!(opt.fused_cpu_params(), usize::from(fused));
    let a = Tensor::from_slice(&f32_values(n, 2), n, &dev).unwrap();
    for k in 0..5u32 {
        let gk = Tensor::from_slice(&f32_values(n, 10 + k), n, &dev).unwrap();
        let th = var.as_tensor();
        let loss = ((th.sqr().unwrap() * &a).unwrap() * 0.5)
            .unwrap()
            .add(&(th * &gk).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        assert_eq!(
            opt.step(&grads, 1e-3 * (1.0 + k as f64)).unwrap(),
            StepOutcome::Applied
        );
    }
    (var.as_tensor().to_vec1().unwrap(), opt.state().0)
}

#[test]
fn fused_cpu_update_equals_the_portable_path() {
    for (adamw, wd) in [(false, 0.0), (false, 0.05), (true, 0.05), (true, 0.0)] {
        let (fused, fused_state) = f32_trajectory(adamw, wd, true);
        let (portable, portable_state) = f32_trajectory(adamw, wd, false);
        // Same f32 operations in the same order: equal to the bit.
        assert_eq!(fused, portable, "adamw {adamw} wd {wd}: parameters");
        for key in ["m.p", "v.p"] {
            let f: Vec<f32> = fused_state[key].to_vec1().unwrap();
            let p: Vec<f32> = portable_state[key].to_vec1().unwrap();
            assert_eq!(f, p, "adamw {adamw} wd {wd}: {key}");
        }
        assert!(fused.iter().all(|x| x.is_finite()));
    }
}

#[test]
fn fused_cpu_state_round_trip_resumes_exactly() {
    let dev = Device::Cpu;
    let n = 1000;
    let run = |split: Option<usize>| -> Vec<f32> {
        let var = Var::from_slice(&f32_values(n, 3), n, &dev).unwrap();
        let nv = || {
            vec![NamedVar {
                name: "p".into(),
                var: var.clone(),
            }]
        };
        let mut opt = Adam::new(nv(), 0.9, 0.99, 1e-8, 0.01, true).unwrap();
        for k in 0..6usize {
            if split == Some(k) {
                let (state, steps) = opt.state();
                opt = Adam::new(nv(), 0.9, 0.99, 1e-8, 0.01, true).unwrap();
                opt.load_state(&state, steps).unwrap();
            }
            let gk = Tensor::from_slice(&f32_values(n, 20 + k as u32), n, &dev).unwrap();
            let grads = (var.as_tensor() * &gk)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            assert_eq!(opt.step(&grads, 1e-2).unwrap(), StepOutcome::Applied);
        }
        var.as_tensor().to_vec1().unwrap()
    };
    assert_eq!(run(None), run(Some(3)));
}
