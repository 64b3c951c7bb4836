//! The small decisions of the training loop, each in one place: which validation result is
//! kept as `best.safetensors` ([`KeepBest`]), when a run stops before `train.iters`
//! ([`StopRule`]) and when validation has stopped improving ([`EarlyStop`]).

use crate::checkpoint::EarlyStopState;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Keeps the checkpoint of the best validation mean IoU: a result is the new best when it is
/// strictly above every earlier one (the first result always is).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct KeepBest {
    best: Option<(f64, u64)>,
}

impl KeepBest {
    /// Starts from a stored best `(mean IoU, step)` (a resumed run) or none.
    pub fn new(best: Option<(f64, u64)>) -> Self {
        Self { best }
    }

    /// The best `(mean IoU, step)` so far.
    pub fn best(&self) -> Option<(f64, u64)> {
        self.best
    }

    /// Offers the mean IoU measured after `step`; returns whether it is the new best (then
    /// its checkpoint should be written).
    pub fn offer(&mut self, mean_iou: f64, step: u64) -> bool {
        let is_best = self.best.is_none_or(|(b, _)| mean_iou > b);
        if is_best {
            self.best = Some((mean_iou, step));
        }
        is_best
    }
}

/// Early stopping (Keras' `EarlyStopping`, Lightning's rule): a validation improves when its
/// figure exceeds the best so far by more than `min_delta` (the first one always does); after
/// `patience` validations in a row without improvement the run stops. An undefined figure
/// (NaN, `None`) never improves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EarlyStop {
    patience: usize,
    min_delta: f64,
    state: Option<EarlyStopState>,
}

impl EarlyStop {
    /// A rule with `patience` (at least 1) and `min_delta`, starting from a stored state (a
    /// resumed run) or none.
    pub fn new(patience: usize, min_delta: f64, state: Option<EarlyStopState>) -> Self {
        Self {
            patience: patience.max(1),
            min_delta,
            state,
        }
    }

    /// Offers the figure measured after `step`; returns whether the run should stop now.
    pub fn offer(&mut self, value: Option<f64>, step: u64) -> bool {
        let value = value.filter(|v| !v.is_nan());
        match (&mut self.state, value) {
            (None, Some(v)) => {
                self.state = Some(EarlyStopState {
                    best: v,
                    best_step: step,
                    since_best: 0,
                })
            }
            (None, None) => {
                self.state = Some(EarlyStopState {
                    best: f64::NEG_INFINITY,
                    best_step: step,
                    since_best: 1,
                })
            }
            (Some(st), Some(v)) if v > st.best + self.min_delta => {
                *st = EarlyStopState {
                    best: v,
                    best_step: step,
                    since_best: 0,
                }
            }
            (Some(st), _) => st.since_best += 1,
        }
        self.should_stop()
    }

    /// Whether `patience` validations in a row have not improved.
    pub fn should_stop(&self) -> bool {
        self.state.is_some_and(|s| s.since_best >= self.patience)
    }

    /// The state to store in a checkpoint.
    pub fn state(&self) -> Option<EarlyStopState> {
        self.state
    }
}

/// Why a run stops before `train.iters`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopping {
    /// The interrupt flag was set (a signal or the caller): checkpoint, log and return.
    Interrupted,
    /// This invocation ran its allowed number of steps: checkpoint and return quietly.
    StepBudget,
}

/// A rule checked before every step that can end the run early.
#[derive(Debug, Clone)]
pub enum StopRule {
    /// Stop when the flag becomes true (see [`crate::signals`]).
    Interrupt(Arc<AtomicBool>),
    /// Stop after this many steps of this invocation (tests of resuming).
    AfterSteps(u64),
}

impl StopRule {
    /// Whether the rule stops the run now, `steps_this_call` steps after this invocation began.
    pub fn check(&self, steps_this_call: u64) -> Option<Stopping> {
        match self {
            StopRule::Interrupt(flag) => {
                flag.load(Ordering::SeqCst).then_some(Stopping::Interrupted)
            }
            StopRule::AfterSteps(n) => (steps_this_call >= *n).then_some(Stopping::StepBudget),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_best_takes_strict_improvements_only() {
        let mut k = KeepBest::new(None);
        assert!(k.offer(0.2, 10));
        assert!(!k.offer(0.2, 20));
        assert!(!k.offer(0.1, 30));
        assert!(k.offer(0.3, 40));
        assert_eq!(k.best(), Some((0.3, 40)));
        assert!(!KeepBest::new(Some((0.5, 7))).offer(0.4, 8));
    }

    #[test]
    fn early_stop_counts_validations_without_improvement() {
        let mut e = EarlyStop::new(2, 0.01, None);
        assert!(!e.offer(Some(0.30), 10)); // first: the best
        assert!(!e.offer(Some(0.305), 20)); // +0.005 <= min_delta: no improvement (1)
        assert!(!e.offer(Some(0.32), 30)); // +0.02: improvement, counter reset
        assert_eq!(e.state().unwrap().best_step, 30);
        assert!(!e.offer(Some(0.10), 40)); // 1
        assert!(e.offer(None, 50)); // undefined never improves: 2 = patience
        assert!(e.should_stop());
        // Resumed from the stored state, it still says stop; from an earlier state it goes on.
        assert!(EarlyStop::new(2, 0.01, e.state()).should_stop());
        let mut r = EarlyStop::new(3, 0.0, e.state());
        assert!(!r.should_stop());
        assert!(r.offer(Some(f64::NAN), 60));
        // Any increase counts with min_delta = 0; equal values do not.
        let mut z = EarlyStop::new(1, 0.0, None);
        assert!(!z.offer(Some(0.5), 1));
        assert!(!z.offer(Some(0.5000001), 2));
        assert!(z.offer(Some(0.5000001), 3));
    }

    #[test]
    fn stop_rules_fire_when_they_should() {
        let flag = Arc::new(AtomicBool::new(false));
        let rule = StopRule::Interrupt(flag.clone());
        assert_eq!(rule.check(100), None);
        flag.store(true, Ordering::SeqCst);
        assert_eq!(rule.check(0), Some(Stopping::Interrupted));
        let budget = StopRule::AfterSteps(3);
        assert_eq!(budget.check(2), None);
        assert_eq!(budget.check(3), Some(Stopping::StepBudget));
    }
}
