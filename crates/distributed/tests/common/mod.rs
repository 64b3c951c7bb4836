//! What the tests that start real MPI jobs share: finding `mpirun`, running a job with a
//! deadline, and printing what it wrote.
#![allow(dead_code)] // each test file uses its own part

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Far above the few seconds a run takes on a busy 2-core machine.
pub(crate) const DEADLINE: Duration = Duration::from_secs(120);

/// `mpirun` on `PATH`, or `None` (and a message) when the test should be skipped.
pub(crate) fn mpirun() -> Option<PathBuf> {
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
pub(crate) fn run_with_deadline(mut cmd: Command, what: &str) -> Output {
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

pub(crate) fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The job succeeded and every rank printed its summary line (`{prefix}: rank r of {ranks}…`)
/// saying that no check failed on any rank.
pub(crate) fn assert_all_passed(out: &Output, ranks: usize, prefix: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let good = (0..ranks)
        .filter(|r| {
            stdout.lines().any(|l| {
                l.starts_with(&format!("{prefix}: rank {r} of {ranks}"))
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
