//! Stopping a run cleanly on the signals that schedulers and terminals send: SIGINT (Ctrl-C),
//! SIGTERM (Slurm, Docker, Kubernetes, systemd) and SIGHUP (a closed terminal).
//!
//! [`install_signal_handlers`] makes each of them set [`interrupt_flag`] and record which signal
//! arrived ([`received_signal`]); the training loop sees the flag at the next step boundary,
//! writes `last.safetensors` and returns an unfinished outcome, and the command line exits with
//! `128 + signal number` (130, 143, 129), so a finished run (exit 0) and an interrupted one are
//! told apart by their exit status. A second Ctrl-C (SIGINT) while the first is being handled
//! exits at once, without a checkpoint: someone at the terminal asked twice. Repeated SIGTERM
//! or SIGHUP never do: Slurm signals every process of a job on `scancel`, requeue, preemption
//! and its time limit, and a batch script's trap forwards another TERM, so a repeated TERM is
//! the same request, and the checkpoint it asked for is written.
//!
//! The handlers only store to atomics (async-signal-safe; `signal-hook` does the registration).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// A signal that asks a run to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGINT: Ctrl-C.
    Interrupt,
    /// SIGTERM: what job schedulers and service managers send.
    Terminate,
    /// SIGHUP: the controlling terminal went away.
    Hangup,
}

impl StopSignal {
    /// Every signal handled, in registration order.
    pub const ALL: [StopSignal; 3] = [
        StopSignal::Interrupt,
        StopSignal::Terminate,
        StopSignal::Hangup,
    ];

    /// The conventional name (`SIGTERM`).
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Interrupt => "SIGINT",
            StopSignal::Terminate => "SIGTERM",
            StopSignal::Hangup => "SIGHUP",
        }
    }

    /// The POSIX signal number (2, 15, 1).
    pub fn number(self) -> i32 {
        match self {
            StopSignal::Interrupt => 2,
            StopSignal::Terminate => 15,
            StopSignal::Hangup => 1,
        }
    }

    /// The exit status of a process stopped by this signal, as shells report it: `128 + number`.
    pub fn exit_code(self) -> i32 {
        128 + self.number()
    }

    /// The signal with POSIX number `n`, if it is one of these.
    pub fn from_number(n: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.number() == n)
    }
}

/// The process-wide interrupt flag: set by any handled signal once [`install_signal_handlers`]
/// ran (library users may also set it themselves to stop a run).
pub fn interrupt_flag() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
        .clone()
}

fn signal_slot() -> Arc<AtomicUsize> {
    static SLOT: OnceLock<Arc<AtomicUsize>> = OnceLock::new();
    SLOT.get_or_init(|| Arc::new(AtomicUsize::new(0))).clone()
}

/// The last stop signal received since the handlers were installed, if any.
pub fn received_signal() -> Option<StopSignal> {
    StopSignal::from_number(signal_slot().load(Ordering::SeqCst) as i32)
}

/// Installs the handlers described in the module documentation. Installing twice is harmless;
/// the error says which signal could not be handled.
pub fn install_signal_handlers() -> std::io::Result<()> {
    static RESULT: OnceLock<Result<(), String>> = OnceLock::new();
    RESULT
        .get_or_init(|| {
            let flag = interrupt_flag();
            let slot = signal_slot();
            for s in StopSignal::ALL {
                #[cfg(not(unix))]
                if s == StopSignal::Hangup {
                    continue;
                }
                let n = s.number();
                let reg = || -> std::io::Result<()> {
                    // Order matters: the conditional exit checks the flag before the second
                    // registration sets it, so only a repeated Ctrl-C exits at once.
                    if s == StopSignal::Interrupt {
                        signal_hook::flag::register_conditional_shutdown(
                            n,
                            s.exit_code(),
                            flag.clone(),
                        )?;
                    }
                    signal_hook::flag::register_usize(n, slot.clone(), n as usize)?;
                    signal_hook::flag::register(n, flag.clone())?;
                    Ok(())
                };
                reg().map_err(|e| format!("cannot handle {}: {e}", s.name()))?;
            }
            Ok(())
        })
        .clone()
        .map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_exit_codes() {
        assert_eq!(StopSignal::Terminate.exit_code(), 143);
        assert_eq!(StopSignal::Interrupt.exit_code(), 130);
        assert_eq!(StopSignal::Hangup.exit_code(), 129);
        for s in StopSignal::ALL {
            assert_eq!(StopSignal::from_number(s.number()), Some(s));
        }
        assert_eq!(StopSignal::from_number(9), None);
        assert_eq!(StopSignal::from_number(0), None);
    }
}
