//! The NCCL backend on real GPUs: `recallseg-nccl-selftest` under `mpirun`, one rank per GPU.
//!
//! Needs a machine with NVIDIA GPUs (counted with `nvidia-smi -L`; `RECALLSEG_NCCL_RANKS`
//! overrides), Open MPI and NCCL. Skipped, with a message, when any is missing, unless
//! `RECALLSEG_REQUIRE_NCCL=1`. One GPU is enough to exercise the path (a world of one rank
//! still runs every NCCL call); two or more check the sums across GPUs.
#![cfg(feature = "nccl")]

mod common;

use common::{assert_all_passed, mpirun, run_with_deadline};
use std::process::Command;

const SELFTEST: &str = env!("CARGO_BIN_EXE_recallseg-nccl-selftest");

/// How many ranks to start: one per GPU, or `None` (and a message) to skip.
fn ranks() -> Option<usize> {
    let required = std::env::var("RECALLSEG_REQUIRE_NCCL").as_deref() == Ok("1");
    let counted = std::env::var("RECALLSEG_NCCL_RANKS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .or_else(|| {
            let out = Command::new("nvidia-smi").arg("-L").output().ok()?;
            let gpus = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.starts_with("GPU "))
                .count();
            out.status.success().then_some(gpus)
        })
        .filter(|&n| n > 0);
    if counted.is_none() {
        assert!(
            !required,
            "no NVIDIA GPU found (nvidia-smi -L) but RECALLSEG_REQUIRE_NCCL=1"
        );
        eprintln!("skipped: no NVIDIA GPU (the NCCL backend needs one GPU per rank)");
    }
    counted
}

#[test]
fn every_operation_on_one_rank_per_gpu() {
    let Some(ranks) = ranks() else { return };
    let Some(mpirun) = mpirun() else { return };
    let mut cmd = Command::new(mpirun);
    cmd.args(["-np", &ranks.to_string(), SELFTEST]);
    let out = run_with_deadline(cmd, &format!("mpirun -np {ranks} recallseg-nccl-selftest"));
    assert_all_passed(&out, ranks, "nccl_selftest");
    print!("{}", String::from_utf8_lossy(&out.stdout));
}
