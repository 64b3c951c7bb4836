//! `mpirun -np 2 recallseg train …`: two processes train one model. The result equals one
//! process accumulating two micro-batches; killing one rank stops the job with the last
//! checkpoint intact, and the run resumes.
//!
//! Needs the `mpi` feature and Open MPI's `mpirun` (skipped with a message when it is missing,
//! unless `RECALLSEG_REQUIRE_MPI=1`, which CI sets). Every launch has a deadline, so a hang
//! fails instead of blocking CI.
#![cfg(feature = "mpi")]

mod common;

use candle_core::Device;
use common::{max_rel_diff, quiet, tiny_config, tiny_dataset, train_records, trained_params};
use recallseg_trainer::checkpoint::Checkpoint;
use recallseg_trainer::train::{train, TrainOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const RECALLSEG: &str = env!("CARGO_BIN_EXE_recallseg");
const DEADLINE: Duration = Duration::from_secs(180);

fn mpirun() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("mpirun"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("RECALLSEG_REQUIRE_MPI").as_deref() != Ok("1"),
            "mpirun is not on PATH but RECALLSEG_REQUIRE_MPI=1"
        );
        eprintln!("skipped: mpirun is not on PATH (install openmpi-bin)");
    }
    found
}

/// `mpirun -np 2 recallseg train --config CONFIG`, one thread per rank.
fn launch(mpirun: &Path, config: &Path) -> Child {
    Command::new(mpirun)
        .args([
            "-np",
            "2",
            "--oversubscribe",
            "-x",
            "RAYON_NUM_THREADS=1",
            RECALLSEG,
        ])
        .args(["train", "--no-progress", "--config"])
        .arg(config)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting mpirun")
}

/// Waits for `child` until the deadline (then kills it and panics).
fn wait(mut child: Child) -> (std::process::ExitStatus, String) {
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return (status, text);
        }
        if t0.elapsed() > DEADLINE {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "mpirun still running after {DEADLINE:?}; killed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn write_config(root: &Path, out: &Path, extra: &[&str], path: &Path) {
    let cfg = tiny_config(root, out, extra);
    std::fs::write(path, cfg.to_toml().unwrap()).unwrap();
}

const RUN: &[&str] = &[
    "loss.name=recall_ce",
    "optim.kind=sgd",
    "optim.lr=0.01",
    "optim.momentum=0.9",
    "train.batch_size=4",
    "train.iters=3",
    "train.val_every=3",
    "train.checkpoint_every=1",
];

#[test]
fn two_processes_train_the_model_of_one_accumulating_process() {
    let Some(mpirun) = mpirun() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_dataset(&root);
    let (single, dp) = (dir.path().join("single"), dir.path().join("dp"));
    let mut one: Vec<&str> = RUN.to_vec();
    one.push("train.accumulate=2");
    train(&tiny_config(&root, &single, &one), &quiet()).unwrap();
    let config = dir.path().join("dp.toml");
    let mut two: Vec<&str> = RUN.to_vec();
    two.push("train.check_replicas_every=1");
    write_config(&root, &dp, &two, &config);
    let (status, text) = wait(launch(&mpirun, &config));
    assert!(status.success(), "mpirun failed:\n{text}");
    // Rank 0 alone reported the run.
    assert_eq!(text.matches("finished at step 3").count(), 1, "{text}");
    let diff = max_rel_diff(
        &trained_params(&single.join("last.safetensors")),
        &trained_params(&dp.join("last.safetensors")),
    );
    assert!(
        diff < 1e-5,
        "2 processes vs accumulate = 2: relative difference {diff}"
    );
    let weights = |out: &Path| -> Vec<_> { train_records(out).into_iter().map(|r| r.2).collect() };
    let (a, b) = (weights(&single), weights(&dp));
    assert_eq!(a.len(), 3);
    assert_eq!(a, b, "recall weights from the all-reduced counts");
}

/// The PIDs of `parent`'s children that are MPI rank `rank`.
fn rank_pid(parent: u32, rank: usize) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // `pid (comm) state ppid …`; comm may hold spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(parent) {
            continue;
        }
        let env = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let want = format!("OMPI_COMM_WORLD_RANK={rank}");
        if env.split(|b| *b == 0).any(|v| v == want.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

#[test]
fn killing_one_rank_stops_the_job_with_the_last_checkpoint_intact() {
    let Some(mpirun) = mpirun() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_dataset(&root);
    let out = dir.path().join("run");
    let config = dir.path().join("run.toml");
    let mut run: Vec<&str> = RUN.to_vec();
    run.extend(["train.iters=400", "train.val_every=0"]);
    write_config(&root, &out, &run, &config);
    let child = launch(&mpirun, &config);
    let last = out.join("last.safetensors");
    let t0 = Instant::now();
    while !last.exists() {
        assert!(t0.elapsed() < DEADLINE, "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    let victim = loop {
        if let Some(pid) = rank_pid(child.id(), 1) {
            break pid;
        }
        assert!(t0.elapsed() < DEADLINE, "rank 1 not found");
        std::thread::sleep(Duration::from_millis(50));
    };
    let killed = Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let (status, text) = wait(child);
    assert!(!status.success(), "the job ends with an error:\n{text}");
    // mpirun ended, so every rank is gone; the last checkpoint loads and the run resumes on
    // one process.
    let ck = Checkpoint::load(&last, &Device::Cpu).expect("last checkpoint intact");
    assert!(
        ck.meta.step >= 1 && ck.meta.step < 400,
        "step {}",
        ck.meta.step
    );
    let o = train(
        &tiny_config(&root, &out, &run),
        &TrainOptions {
            resume: true,
            stop_after: Some(1),
            ..quiet()
        },
    )
    .unwrap();
    assert_eq!(o.step, ck.meta.step + 1);
}

#[test]
fn an_error_on_the_ranks_is_printed_before_the_job_ends() {
    let Some(mpirun) = mpirun() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_dataset(&root);
    // A batch of 3 does not divide over 2 ranks: every rank fails in `Trainer::open`, and the
    // job is aborted (MPI_Abort) when its communicator drops; the reason must reach the user.
    let config = dir.path().join("bad.toml");
    let mut bad: Vec<&str> = RUN.to_vec();
    bad.push("train.batch_size=3");
    write_config(&root, &dir.path().join("run"), &bad, &config);
    let (status, text) = wait(launch(&mpirun, &config));
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("error: rank ")
            && text.contains("train.batch_size: 3 does not divide into 2 rank(s)"),
        "{text}"
    );
}
