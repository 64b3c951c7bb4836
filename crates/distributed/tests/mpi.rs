//! The MPI backend on real processes: `recallseg-mpi-selftest` under `mpirun` (Open MPI).
//!
//! Skipped, with a message, when `mpirun` is not on `PATH`, unless `RECALLSEG_REQUIRE_MPI=1`
//! (CI sets it after installing Open MPI). Every run has a deadline, so a hang fails the test
//! instead of blocking CI.
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const SELFTEST: &str = env!("CARGO_BIN_EXE_recallseg-mpi-selftest");
/// Far above the few seconds a run takes on a busy 2-core machine.
const DEADLINE: Duration = Duration::from_secs(120);

/// `mpirun` on `PATH`, or `None` (and a message) when the test should be skipped.
fn mpirun() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("mpirun"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("RECALLSEG_REQUIRE_MPI").as_deref() != Ok("1"),
            "mpirun is not on PATH but RECALLSEG_REQUIRE_MPI=1 (install libopenmpi-dev openmpi-bin)"
        );
        eprintln!("skipped: mpirun is not on PATH (install openmpi-bin to run the MPI tests)");
    }
    found
}

/// Runs `cmd` to its end, or kills it at the deadline and panics with what it printed.
fn run_with_deadline(mut cmd: Command, what: &str) -> Output {
    // As root, Open MPI refuses to start without these (harmless otherwise).
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let pid = child.id().to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(out) => out.unwrap_or_else(|e| panic!("{what}: {e}")),
        Err(_) => {
            // SIGTERM lets mpirun take its ranks down with it; SIGKILL if it does not go.
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let out = rx
                .recv_timeout(Duration::from_secs(10))
                .ok()
                .and_then(|o| o.ok());
            if out.is_none() {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
            let printed = out.map(|o| text(&o)).unwrap_or_default();
            panic!("{what}: still running after {DEADLINE:?} (a hang?); killed. {printed}");
        }
    }
}

fn mpirun_selftest(mpirun: &Path, ranks: usize, args: &[&str]) -> Output {
    let mut cmd = Command::new(mpirun);
    cmd.args(["-np", &ranks.to_string(), "--oversubscribe", SELFTEST])
        .args(args);
    run_with_deadline(
        cmd,
        &format!("mpirun -np {ranks} recallseg-mpi-selftest {args:?}"),
    )
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every rank reports that no check failed anywhere, and the job succeeded.
fn assert_all_passed(out: &Output, ranks: usize) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let good = (0..ranks)
        .filter(|r| {
            stdout.lines().any(|l| {
                l.starts_with(&format!("mpi_selftest: rank {r} of {ranks}: "))
                    && l.contains(" 0 failed on all ranks")
            })
        })
        .count();
    assert!(
        out.status.success() && good == ranks,
        "{ranks} ranks: {}",
        text(out)
    );
}

#[test]
fn every_collective_on_two_and_three_ranks() {
    let Some(mpirun) = mpirun() else { return };
    for ranks in [2, 3] {
        let out = mpirun_selftest(&mpirun, ranks, &[]);
        assert_all_passed(&out, ranks);
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
    assert_all_passed(&out, 1);
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
