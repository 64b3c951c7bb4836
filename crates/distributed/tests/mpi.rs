//! The MPI backend on real processes: `recallseg-mpi-selftest` under `mpirun` (Open MPI).
//!
//! Skipped, with a message, when `mpirun` is not on `PATH`, unless `RECALLSEG_REQUIRE_MPI=1`
//! (CI sets it after installing Open MPI). Every run has a deadline, so a hang fails the test
//! instead of blocking CI.
#![cfg(feature = "mpi")]

mod common;

use common::{assert_all_passed, mpirun, run_with_deadline, text};
use std::path::Path;
use std::process::{Command, Output};

const SELFTEST: &str = env!("CARGO_BIN_EXE_recallseg-mpi-selftest");

fn mpirun_selftest(mpirun: &Path, ranks: usize, args: &[&str]) -> Output {
    let mut cmd = Command::new(mpirun);
    cmd.args(["-np", &ranks.to_string(), "--oversubscribe", SELFTEST])
        .args(args);
    run_with_deadline(
        cmd,
        &format!("mpirun -np {ranks} recallseg-mpi-selftest {args:?}"),
    )
}

#[test]
fn every_collective_on_two_and_three_ranks() {
    let Some(mpirun) = mpirun() else { return };
    for ranks in [2, 3] {
        let out = mpirun_selftest(&mpirun, ranks, &[]);
        assert_all_passed(&out, ranks, "mpi_selftest");
    }
}

#[test]
fn a_process_without_a_launcher_is_a_world_of_one() {
    if mpirun().is_none() {
        return;
    }
    let out = run_with_deadline(
        Command::new(SELFTEST),
        "recallseg-mpi-selftest as a singleton",
    );
    assert_all_passed(&out, 1, "mpi_selftest");
}

#[test]
fn a_rank_that_leaves_ends_the_job_instead_of_hanging() {
    let Some(mpirun) = mpirun() else { return };
    // exit: dies without finalising (as a killed process); panic / drop: the communicator is
    // dropped without `finish` and aborts the job.
    for how in ["exit", "panic", "drop"] {
        let out = mpirun_selftest(&mpirun, 2, &["--break-rank1", how]);
        assert!(!out.status.success(), "--break-rank1 {how}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("the collective returned"),
            "--break-rank1 {how}: rank 0 came back from its all-reduce: {}",
            text(&out)
        );
        if how != "exit" {
            assert!(
                stderr.contains("aborting the job"),
                "--break-rank1 {how}: {}",
                text(&out)
            );
        }
    }
}
