//! Sweeps on a cluster (`recallseg_compare::sweep`): the Slurm scripts of a loss × backbone
//! sweep, their array tasks run one after another by hand (`SLURM_ARRAY_TASK_ID=k bash
//! array.sbatch`, no Slurm needed) with the real `recallseg` binary, then the report step's
//! collection: the same report as the comparison run in one process.

mod common;

use common::{quiet, table_rows, tiny_config, tiny_dataset, without_times};
use recallseg_compare::sweep::{write_slurm, ReportStep, SlurmOptions};
use recallseg_compare::{
    collect_comparison, loss_run, run_comparison, CompareOptions, CompareOutcome, ComparisonPlan,
    Evaluate,
};
use recallseg_trainer::train::{train, TrainOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One plan per backbone, each comparing CE and Recall, written under `out`.
fn plans(data: &Path, out: &Path) -> Vec<ComparisonPlan> {
    ["resnet18", "resnet34"]
        .iter()
        .map(|b| {
            let base = tiny_config(
                data,
                &out.join("unused"),
                &[&format!("model.backbone={b:?}")],
            );
            let mut plan = ComparisonPlan::new(
                base,
                vec![loss_run("ce").unwrap(), loss_run("recall").unwrap()],
                out.join(b),
            )
            .with_evaluate(Evaluate::Both);
            plan.examples = 1;
            plan
        })
        .collect()
}

fn opts(dir: &Path) -> SlurmOptions {
    let mut o = SlurmOptions::new(
        "sweep-test",
        PathBuf::from(env!("CARGO_BIN_EXE_recallseg")),
        dir.to_path_buf(),
        ReportStep {
            program: PathBuf::from("/opt/it's here/xtask"),
            args: vec!["reproduce".into(), "synthia".into(), "--report-only".into()],
        },
    );
    o.partition = Some("gpu".into());
    o.time = Some("12:00:00".into());
    o
}

fn bash_n(script: &Path) {
    let out = Command::new("bash").arg("-n").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "bash -n {}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_task(script: &Path, k: usize) -> std::process::Output {
    Command::new("bash")
        .arg(script)
        .env("SLURM_ARRAY_TASK_ID", k.to_string())
        .output()
        .unwrap()
}

#[test]
fn slurm_array_tasks_run_by_hand_give_the_comparisons_report() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    tiny_dataset(&data);
    let q = CompareOptions {
        quiet: true,
        ..CompareOptions::default()
    };

    // The reference: the comparison in this process, as `cargo xtask reproduce` runs it.
    let reference = plans(&data, &tmp.path().join("reference"));
    let mut expected = Vec::new();
    for plan in &reference {
        let CompareOutcome::Done(cmp, _) = run_comparison(plan, &q).unwrap() else {
            panic!("interrupted")
        };
        let md = std::fs::read_to_string(plan.out_dir.join("report.md")).unwrap();
        expected.push((cmp, md));
    }

    // The sweep as Slurm scripts.
    let sweep = plans(&data, &tmp.path().join("sweep"));
    let scripts = tmp.path().join("sweep").join("slurm");
    let files = write_slurm(&sweep, &opts(tmp.path()), &scripts).unwrap();
    for f in [&files.array, &files.report, &files.submit] {
        bash_n(f);
    }
    let array = std::fs::read_to_string(&files.array).unwrap();
    assert!(array.contains("#SBATCH --array=0-3\n"), "{array}");
    assert!(array.contains("#SBATCH --signal=B:TERM@120\n"));
    assert!(array.contains("#SBATCH --partition=gpu\n#SBATCH --time=12:00:00\n"));
    // Every run of the sweep is named exactly once, by one array task.
    assert_eq!(files.runs.len(), 4);
    let tasks: Vec<&str> = array
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(tasks.len(), 4, "{array}");
    for plan in &sweep {
        for loss in &plan.losses {
            let dir = plan.out_dir.join("runs").join(loss.loss.name());
            let dir = dir.to_str().unwrap();
            assert_eq!(array.matches(dir).count(), 1, "{dir} in\n{array}");
        }
    }
    let report = std::fs::read_to_string(&files.report).unwrap();
    assert!(
        report.contains(
            "\"${REPORT_BIN:-'/opt/it'\\''s here/xtask'}\" reproduce synthia --report-only"
        ),
        "{report}"
    );
    let submit = std::fs::read_to_string(&files.submit).unwrap();
    assert!(
        submit.contains("--dependency=afterany:\"$array\""),
        "{submit}"
    );

    // Run 0 was interrupted half-way (a time limit): its checkpoint is at step 2 of 4.
    let first = &files.runs[0];
    let half = train(
        &first.config,
        &TrainOptions {
            stop_after: Some(2),
            skip_test: true,
            ..quiet()
        },
    )
    .unwrap();
    assert!(!half.finished && half.step == 2);
    // Nothing of the first backbone has finished: the report step says which and why.
    let err = collect_comparison(&sweep[0], &q).unwrap_err().to_string();
    assert!(
        err.contains("CE") && err.contains("stopped at step 2 of 4"),
        "{err}"
    );
    assert!(
        err.contains("Recall") && err.contains("not started"),
        "{err}"
    );

    // The array tasks, one after another on this machine.
    for k in 0..files.runs.len() {
        let out = run_task(&files.array, k);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "task {k}: {err}");
        // Task 0 continues the interrupted run from its checkpoint.
        assert_eq!(err.contains("resumed from"), k == 0, "task {k}: {err}");
    }
    let log = files.runs[0].dir.join("log.jsonl");
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("\"step\":4"));
    // A finished run is reused: running its task again trains nothing.
    let before = std::fs::read(&log).unwrap();
    let out = run_task(&files.array, 0);
    assert!(out.status.success());
    assert_eq!(std::fs::read(&log).unwrap(), before, "retrained");
    // A task that is not a run fails with a message.
    let out = run_task(&files.array, 4);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such run (0-3)"));

    // The report step: the same runs and the same tables as the comparison in one process.
    for (plan, (cmp, md)) in sweep.iter().zip(&expected) {
        let c = collect_comparison(plan, &q).unwrap();
        assert!(c.missing.is_empty(), "{:?}", c.missing);
        assert_eq!(without_times(&c.comparison.runs), without_times(&cmp.runs));
        let got = std::fs::read_to_string(plan.out_dir.join("report.md")).unwrap();
        let rows = table_rows(md);
        assert!(rows.iter().any(|r| r.starts_with("| Recall |")), "{md}");
        assert_eq!(table_rows(&got), rows);
        assert!(got.contains("collected"), "{got}");
    }
}

#[test]
fn the_array_task_forwards_slurms_sigterm_and_returns_the_runs_status() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // The scripts only: no dataset needed, the plan is never trained.
    std::fs::create_dir_all(&data).unwrap();
    let sweep = plans(&data, &tmp.path().join("sweep"));
    // A stand-in for recallseg that, like it, stops on SIGTERM with status 143.
    let fake = tmp.path().join("fake-recallseg");
    let ready = tmp.path().join("ready");
    let got = tmp.path().join("got-term");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/bash\ntrap 'echo \"$*\" > {got:?}; exit 143' TERM\ntouch {ready:?}\n\
             while :; do sleep 0.05; done\n"
        ),
    )
    .unwrap();
    let mut o = opts(tmp.path());
    o.recallseg = fake.clone();
    let files = write_slurm(&sweep, &o, &tmp.path().join("slurm")).unwrap();
    let exec = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755);
    std::fs::set_permissions(&fake, exec).unwrap();
    let mut child = Command::new("bash")
        .arg(&files.array)
        .env("SLURM_ARRAY_TASK_ID", "2")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait (up to a minute) for the stand-in to start, then signal the batch shell only, as
    // `#SBATCH --signal=B:TERM@…` does.
    for _ in 0..1200 {
        if ready.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(ready.exists(), "the array task did not start the run");
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    let args = std::fs::read_to_string(&got).unwrap();
    let config = files.runs[2].config_file.as_str();
    assert!(
        args.starts_with("train --config ")
            && args.contains(config)
            && args.trim_end().ends_with("--resume --no-progress"),
        "{args}"
    );
}
