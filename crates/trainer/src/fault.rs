//! Fault points for the crash tests: a named place in the trainer where the process can be made
//! to die as `kill -9` would, or to receive a signal, deterministically, so that a test can check
//! what a resume makes of exactly that interruption (e.g. between writing `best` and writing
//! `last`, or during the end-of-run test evaluation).
//!
//! `RECALLSEG_FAULT=NAME[:N][:ACTION]` acts the `N`-th time the point `NAME` is reached (`N` = 1
//! when omitted). `ACTION` is `abort` (the default: no unwinding, no destructors, no flushing,
//! as a `SIGKILL`), on Unix `term` (the process sends itself SIGTERM and goes on, as when a
//! scheduler stops it at that moment), or `wait` (the process says so on stderr and waits, up
//! to ten minutes, until a stop signal arrives, then goes on: a test that drives a real
//! scheduler sends its signal at exactly that moment). Unset, a point costs one lookup of a
//! value read once. Only tests set the variable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The variable that arms a fault point.
pub(crate) const FAULT_VAR: &str = "RECALLSEG_FAULT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Abort,
    Terminate,
    WaitForSignal,
}

#[derive(Debug)]
struct Armed {
    name: String,
    nth: u64,
    action: Action,
}

static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
static REACHED: AtomicU64 = AtomicU64::new(0);

fn armed() -> &'static Option<Armed> {
    ARMED.get_or_init(|| {
        let v = std::env::var(FAULT_VAR).ok()?;
        let mut parts = v.split(':');
        let name = parts.next()?.to_string();
        let mut nth = 1;
        let mut action = Action::Abort;
        for p in parts {
            match p {
                "abort" => action = Action::Abort,
                "term" => action = Action::Terminate,
                "wait" => action = Action::WaitForSignal,
                n => nth = n.parse().ok()?,
            }
        }
        Some(Armed { name, nth, action })
    })
}

/// Acts here when `RECALLSEG_FAULT` names this point and it is reached for the armed time.
pub(crate) fn point(name: &str) {
    let Some(a) = armed() else { return };
    if a.name != name || REACHED.fetch_add(1, Ordering::Relaxed) + 1 != a.nth {
        return;
    }
    match a.action {
        Action::Abort => {
            eprintln!("{FAULT_VAR}: aborting at {name} ({})", a.nth);
            std::process::abort();
        }
        Action::Terminate => {
            eprintln!("{FAULT_VAR}: SIGTERM at {name} ({})", a.nth);
            #[cfg(unix)]
            {
                let _ = signal_hook::low_level::raise(signal_hook::consts::SIGTERM);
            }
        }
        Action::WaitForSignal => {
            eprintln!(
                "{FAULT_VAR}: waiting for a stop signal at {name} ({})",
                a.nth
            );
            let t0 = std::time::Instant::now();
            while crate::signals::received_signal().is_none()
                && t0.elapsed() < std::time::Duration::from_secs(600)
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}
