//! Learning-rate schedules.

use crate::config::{ScheduleConfig, ScheduleKind};

/// The learning rate as a function of the step (0-based: the rate used by step `s + 1`).
#[derive(Debug, Clone, PartialEq)]
pub struct LrSchedule {
    base: f64,
    iters: usize,
    cfg: ScheduleConfig,
}

impl LrSchedule {
    /// A schedule with base rate `base` over `iters` steps.
    pub fn new(base: f64, iters: usize, cfg: &ScheduleConfig) -> Self {
        Self {
            base,
            iters: iters.max(1),
            cfg: cfg.clone(),
        }
    }

    /// Rate for the step that starts after `step` completed steps.
    ///
    /// Warm-up: `base · (step + 1) / warmup_iters` for the first `warmup_iters` steps; after it
    /// the schedule is evaluated at the same (absolute) `step`.
    /// Constant: `base`. Poly: `base · (1 − step / iters)^power`.
    /// Cosine: `min_lr + (base − min_lr) · (1 + cos(π · step / iters)) / 2` (PyTorch's
    /// `CosineAnnealingLR` with `T_max = iters`; held at `min_lr` past `iters`).
    /// Multi-step: `base · gamma^k`, `k` = the number of milestones `≤ step` (PyTorch's
    /// `MultiStepLR`).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.cfg.warmup_iters {
            return self.base * (step + 1) as f64 / self.cfg.warmup_iters as f64;
        }
        let frac = (step.min(self.iters) as f64) / self.iters as f64;
        match self.cfg.kind {
            ScheduleKind::Constant => self.base,
            ScheduleKind::Poly => self.base * (1.0 - frac).powf(self.cfg.power),
            ScheduleKind::Cosine => {
                let min = self.cfg.min_lr;
                min + (self.base - min) * (1.0 + (std::f64::consts::PI * frac).cos()) / 2.0
            }
            ScheduleKind::MultiStep => {
                let k = self.cfg.milestones.partition_point(|&m| m <= step);
                self.base * self.cfg.gamma.powi(k as i32)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_poly_and_warmup() {
        let c = LrSchedule::new(1e-3, 100, &ScheduleConfig::default());
        assert_eq!(c.lr(0), 1e-3);
        assert_eq!(c.lr(99), 1e-3);
        let p = LrSchedule::new(
            1.0,
            100,
            &ScheduleConfig {
                kind: ScheduleKind::Poly,
                power: 0.9,
                warmup_iters: 0,
                ..ScheduleConfig::default()
            },
        );
        assert_eq!(p.lr(0), 1.0);
        assert!((p.lr(50) - 0.5f64.powf(0.9)).abs() < 1e-15);
        assert_eq!(p.lr(100), 0.0);
        let w = LrSchedule::new(
            2.0,
            100,
            &ScheduleConfig {
                kind: ScheduleKind::Constant,
                power: 0.9,
                warmup_iters: 4,
                ..ScheduleConfig::default()
            },
        );
        assert_eq!(
            (0..6).map(|s| w.lr(s)).collect::<Vec<_>>(),
            vec![0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
        );
    }

    /// Cosine and multi-step against `torch.optim.lr_scheduler` (goldens written by
    /// `tests/golden/make_schedule_golden.py`), with and without warm-up.
    #[test]
    fn cosine_and_multi_step_match_pytorch() {
        #[derive(serde::Deserialize)]
        struct Case {
            name: String,
            kind: ScheduleKind,
            base: f64,
            iters: usize,
            warmup_iters: usize,
            min_lr: f64,
            milestones: Vec<usize>,
            gamma: f64,
            steps: Vec<usize>,
            lrs: Vec<f64>,
        }
        let cases: Vec<Case> =
            serde_json::from_str(include_str!("../../tests/golden/schedule_golden.json")).unwrap();
        assert!(cases.len() >= 4);
        for c in cases {
            let cfg = ScheduleConfig {
                kind: c.kind,
                warmup_iters: c.warmup_iters,
                min_lr: c.min_lr,
                milestones: c.milestones.clone(),
                gamma: c.gamma,
                ..ScheduleConfig::default()
            };
            let sched = LrSchedule::new(c.base, c.iters, &cfg);
            assert_eq!(c.steps.len(), c.lrs.len());
            for (&s, &want) in c.steps.iter().zip(&c.lrs) {
                let got = sched.lr(s);
                assert!(
                    (got - want).abs() <= 1e-12 * c.base,
                    "{}: step {s}: {got} vs PyTorch {want}",
                    c.name
                );
            }
        }
    }
}
