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
    /// Warm-up: `base · (step + 1) / warmup_iters` for the first `warmup_iters` steps.
    /// Constant: `base`. Poly: `base · (1 − step / iters)^power`.
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.cfg.warmup_iters {
            return self.base * (step + 1) as f64 / self.cfg.warmup_iters as f64;
        }
        match self.cfg.kind {
            ScheduleKind::Constant => self.base,
            ScheduleKind::Poly => {
                let frac = (step.min(self.iters) as f64) / self.iters as f64;
                self.base * (1.0 - frac).powf(self.cfg.power)
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
            },
        );
        assert_eq!(
            (0..6).map(|s| w.lr(s)).collect::<Vec<_>>(),
            vec![0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
        );
    }
}
