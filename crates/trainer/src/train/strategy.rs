//! The small decisions of the training loop, each in one place: which validation result is
//! kept as `best.safetensors` ([`KeepBest`]) and when a run stops before `train.iters`
//! ([`StopRule`]).

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
