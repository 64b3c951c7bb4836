//! Fault points for the crash tests: a named place in the trainer where the process can be made
//! to die as `kill -9` would, deterministically, so that a test can check what a resume makes of
//! exactly that interruption (e.g. between writing `best` and writing `last`).
//!
//! `RECALLSEG_FAULT=NAME:N` aborts the process (no unwinding, no destructors, no flushing: as a
//! `SIGKILL`) the `N`-th time the point `NAME` is reached (`N` = 1 when omitted). Unset, a
//! point costs one relaxed atomic load. Only tests set the variable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The variable that arms a fault point.
pub(crate) const FAULT_VAR: &str = "RECALLSEG_FAULT";

static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
static REACHED: AtomicU64 = AtomicU64::new(0);

fn armed() -> &'static Option<(String, u64)> {
    ARMED.get_or_init(|| {
        let v = std::env::var(FAULT_VAR).ok()?;
        let (name, n) = match v.split_once(':') {
            Some((name, n)) => (name.to_string(), n.parse().ok()?),
            None => (v, 1),
        };
        Some((name, n))
    })
}

/// Aborts the process here when `RECALLSEG_FAULT` names this point and it is reached for the
/// armed time.
pub(crate) fn point(name: &str) {
    if let Some((armed_name, n)) = armed() {
        if armed_name == name && REACHED.fetch_add(1, Ordering::Relaxed) + 1 == *n {
            eprintln!("{FAULT_VAR}: aborting at {name} ({n})");
            std::process::abort();
        }
    }
}
