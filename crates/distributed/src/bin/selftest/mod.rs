//! What the self-test binaries (`recallseg-mpi-selftest`, `recallseg-nccl-selftest`) share:
//! counting checks, and ending the whole job on an error no check expected.

use recallseg_distributed::{Communicator, MpiCommunicator};

/// The checks one rank ran: how many passed, and what failed (each printed as it fails).
pub(crate) struct Checks {
    name: &'static str,
    rank: usize,
    pub(crate) passed: usize,
    pub(crate) failed: Vec<String>,
}

impl Checks {
    /// No check yet, on rank `rank` of the binary `name` (the prefix of its lines).
    pub(crate) fn new(name: &'static str, rank: usize) -> Self {
        Self {
            name,
            rank,
            passed: 0,
            failed: Vec::new(),
        }
    }

    /// How many checks failed on all ranks together (an all-reduce that every rank joins; an
    /// error ends the job).
    pub(crate) fn failed_on_all_ranks(&self, mpi: &MpiCommunicator) -> u64 {
        let mut failures = [self.failed.len() as u64];
        let r = mpi.all_reduce_sum_u64(&mut failures);
        ok_or_abort(self.name, mpi, r, "u64 all-reduce");
        failures[0]
    }

    /// Counts a check; a failed one is printed with `what` and remembered.
    pub(crate) fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if ok {
            self.passed += 1;
        } else {
            let w = what();
            eprintln!("{}: rank {}: FAILED: {w}", self.name, self.rank);
            self.failed.push(w);
        }
    }
}

/// `r`'s value, or the whole job ends (`MPI_Abort`) after printing `what` and the error: an
/// operation failed where none should.
pub(crate) fn ok_or_abort<T>(
    name: &str,
    mpi: &MpiCommunicator,
    r: candle_core::Result<T>,
    what: &str,
) -> T {
    match r {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{name}: rank {}: {what}: {e}", mpi.rank());
            mpi.abort(1)
        }
    }
}
