//! A sweep on a real Slurm cluster: the scripts of `recallseg_compare::sweep::write_slurm`
//! submitted with `sbatch` to the one-node cluster `scripts/slurm-local.sh` starts (Debian's
//! slurm-wlm and munge), one array task cancelled with `scancel --signal=TERM --full` in the
//! middle of its run (Slurm signals the batch shell and the run, and the shell's trap forwards
//! another TERM: the repeated TERM of issue 24, case 13), then `submit.sh` again: the cancelled
//! run resumes from its stop checkpoint, and the report job's report equals the same comparison
//! run in one process without Slurm.
//!
//! Runs when a cluster answers (`sinfo` finds an idle node); otherwise it says so and passes,
//! unless `RECALLSEG_REQUIRE_SLURM=1` (CI sets it after starting the cluster), where it fails.

mod common;

use common::{table_rows, tiny_config, tiny_dataset, train_losses};
use recallseg_compare::sweep::{write_slurm, ReportStep, SlurmOptions};
use recallseg_compare::{
    loss_run, run_comparison, run_dir, CompareOptions, CompareOutcome, ComparisonPlan, Evaluate,
};
use recallseg_trainer::checkpoint::Checkpoint;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const JOB_NAME: &str = "recallseg-cluster-test";

/// Whether a Slurm cluster answers here with a usable node.
fn cluster_is_up() -> bool {
    Command::new("sinfo")
        .args(["-h", "-o", "%t"])
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| matches!(l.trim(), "idle" | "mix" | "alloc"))
        })
        .unwrap_or(false)
}

fn slurm(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The plan: CE and Recall on the tiny dataset, 6 steps each, validated at step 4, no periodic
/// checkpoint (so a `last.safetensors` at step 3 can only be the stop checkpoint).
fn plan(data: &Path, out: &Path) -> ComparisonPlan {
    let base = tiny_config(
        data,
        &out.join("unused"),
        &[
            "train.iters=6",
            "train.val_every=4",
            "train.checkpoint_every=0",
        ],
    );
    let mut plan = ComparisonPlan::new(
        base,
        vec![loss_run("ce").unwrap(), loss_run("recall").unwrap()],
        out.to_path_buf(),
    )
    .with_evaluate(Evaluate::Both);
    plan.examples = 1;
    plan
}

/// The contents of the job logs in `logs` whose names end with `suffix`, concatenated.
fn job_logs(logs: &Path, suffix: &str) -> String {
    let mut text = String::new();
    let Ok(entries) = std::fs::read_dir(logs) else {
        return text;
    };
    let mut names: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    names.sort();
    for p in names {
        if p.to_string_lossy().ends_with(suffix) {
            text += &format!("== {}\n", p.display());
            text += &std::fs::read_to_string(&p).unwrap_or_default();
        }
    }
    text
}

/// Waits (up to `limit`) for `done`, failing with the jobs' logs.
fn wait_for(what: &str, limit: Duration, logs: &Path, mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        if t0.elapsed() > limit {
            panic!(
                "timed out after {limit:?} waiting for {what}\nsqueue:\n{}\nlogs:\n{}",
                slurm("squeue", &[]),
                job_logs(logs, ".out")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn our_jobs_left() -> bool {
    !slurm("squeue", &["-h", "-o", "%i %j"])
        .lines()
        .any(|l| l.contains(JOB_NAME))
}

#[test]
fn a_sweep_on_a_slurm_cluster_survives_a_cancel_and_reports_as_one_process() {
    if !cluster_is_up() {
        assert!(
            std::env::var("RECALLSEG_REQUIRE_SLURM").as_deref() != Ok("1"),
            "RECALLSEG_REQUIRE_SLURM=1 but no Slurm cluster answers (`sinfo`): start one with \
             `source scripts/slurm-local.sh`"
        );
        eprintln!("no Slurm cluster answers (sinfo): skipped (scripts/slurm-local.sh starts one)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    tiny_dataset(&data);

    // The reference: the comparison in this process.
    let reference = plan(&data, &tmp.path().join("reference"));
    let q = CompareOptions {
        quiet: true,
        ..CompareOptions::default()
    };
    let CompareOutcome::Done(_, _) = run_comparison(&reference, &q).unwrap() else {
        panic!("interrupted")
    };
    let expected_md = std::fs::read_to_string(reference.out_dir.join("report.md")).unwrap();

    // The sweep, on a CPU cluster: one rank per run, one CPU each, the report by
    // `recallseg compare --report-only` from the shared configuration.
    let out = tmp.path().join("sweep");
    let sweep = plan(&data, &out);
    let base_file = tmp.path().join("base.toml");
    std::fs::write(&base_file, sweep.base.to_toml().unwrap()).unwrap();
    let recallseg = PathBuf::from(env!("CARGO_BIN_EXE_recallseg"));
    let report = ReportStep {
        program: recallseg.clone(),
        args: [
            "compare",
            "--config",
            base_file.to_str().unwrap(),
            "--losses",
            "ce,recall",
            "--out",
            out.to_str().unwrap(),
            "--evaluate",
            "both",
            "--examples",
            "1",
            "--no-progress",
            "--report-only",
        ]
        .map(String::from)
        .to_vec(),
    };
    let mut opts = SlurmOptions::new(JOB_NAME, recallseg, tmp.path().to_path_buf(), report);
    opts.gpus_per_run = 0;
    opts.cpus_per_task = Some(1);
    let scripts = out.join("slurm");
    let files = write_slurm(&[sweep], &opts, &scripts).unwrap();
    let logs = scripts.join("logs");
    let array = files.array.to_str().unwrap();

    // 1. Task 0 alone, made to wait after its third step, then cancelled with TERM.
    let job = slurm(
        "sbatch",
        &[
            "--parsable",
            "--array=0",
            "--export=ALL,RECALLSEG_FAULT=step-end:3:wait",
            array,
        ],
    );
    let task = format!("{}_0", job.trim().split(';').next().unwrap());
    wait_for(
        "task 0 to reach step 3",
        Duration::from_secs(180),
        &logs,
        || job_logs(&logs, "_0.out").contains("waiting for a stop signal at step-end (3)"),
    );
    slurm("scancel", &["--signal=TERM", "--full", &task]);
    wait_for(
        "the cancelled task to end",
        Duration::from_secs(60),
        &logs,
        our_jobs_left,
    );
    let first = &files.runs[0];
    let ck = Checkpoint::load(
        &first.dir.join("last.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap_or_else(|e| {
        panic!(
            "no stop checkpoint after the TERM: {e}\n{}",
            job_logs(&logs, ".out")
        )
    });
    assert_eq!(ck.meta.step, 3, "{}", job_logs(&logs, ".out"));
    let log = std::fs::read_to_string(first.dir.join("log.jsonl")).unwrap();
    assert!(log.contains("SIGTERM"), "{log}");

    // 2. The whole sweep submitted again: task 0 resumes, task 1 trains, the report follows.
    let submit = Command::new("bash").arg(&files.submit).output().unwrap();
    assert!(
        submit.status.success(),
        "submit.sh: {}",
        String::from_utf8_lossy(&submit.stderr)
    );
    wait_for(
        "the array and the report job",
        Duration::from_secs(300),
        &logs,
        our_jobs_left,
    );
    let task_logs = job_logs(&logs, "_0.out");
    assert!(task_logs.contains("resumed from"), "{task_logs}");
    let report_log = job_logs(&logs, ".out");
    let got_md = std::fs::read_to_string(out.join("report.md"))
        .unwrap_or_else(|e| panic!("no report.md ({e}): {report_log}"));
    assert!(got_md.contains("collected"), "{got_md}");
    let rows = table_rows(&expected_md);
    assert!(
        rows.iter().any(|r| r.starts_with("| Recall |")),
        "{expected_md}"
    );
    assert_eq!(table_rows(&got_md), rows, "{report_log}");
    // The interrupted and resumed run trained exactly as the uninterrupted one.
    for (a, b) in files.runs.iter().zip(&reference.losses) {
        assert_eq!(
            train_losses(&a.dir),
            train_losses(&run_dir(&reference, b)),
            "{}",
            a.label
        );
    }
}
