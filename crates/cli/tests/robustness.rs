//! What a run survives: diverging updates, failing data, reused folders, concurrent runs,
//! leftovers of killed writes, full disks, signals. Each test reproduces a failure reported
//! against an earlier version and checks that nothing is lost or silently wrong.

mod common;

use candle_core::Device;
use common::{model_bytes, quiet, tiny_config, tiny_dataset, train_losses};
use recallseg_data::Split;
use recallseg_trainer::checkpoint::Checkpoint;
use recallseg_trainer::log::{read_log, LogRecord};
use recallseg_trainer::train::{train, TrainOptions};
use std::path::Path;

/// Every checkpoint in `dir` loads (so holds only finite model and optimiser tensors: loading
/// refuses anything else).
fn checkpoints_are_finite(dir: &Path) {
    for f in ["last.safetensors", "best.safetensors"] {
        let p = dir.join(f);
        if p.exists() {
            Checkpoint::load(&p, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

/// The reported case: SGD with lr = 1e6 made the weights infinite from step 3 while the loss
/// stayed finite (ReLU maps NaN to 0), the run finished with exit code 0 and `last`/`best` held
/// ~39k non-finite values. Now the run stops with a clear message and every checkpoint is finite.
#[test]
fn diverging_sgd_stops_and_no_checkpoint_holds_non_finite_values() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_dataset(&root);
    let out = dir.path().join("run");
    let cfg = tiny_config(
        &root,
        &out,
        &[
            "optim.kind=sgd",
            "optim.lr=1e6",
            "train.iters=30",
            "train.val_every=1",
            "train.checkpoint_every=1",
            "loss.name=cross_entropy",
        ],
    );
    let e = train(&cfg, &quiet()).unwrap_err().to_string();
    assert!(
        e.contains("NaN or infinite") || e.contains("the loss became"),
        "{e}"
    );
    assert!(e.contains("Try a lower optim.lr"), "{e}");
    checkpoints_are_finite(&out);
    let ck = Checkpoint::load(&out.join("last.safetensors"), &Device::Cpu).unwrap();
    let log = read_log(&out.join("log.jsonl")).unwrap();
    let Some(LogRecord::Stopped { step, .. }) = log.last() else {
        panic!("no stop record: {log:?}")
    };
    // The last good state (every step before the failing one) is what `last` holds.
    assert_eq!(ck.meta.step, *step);
    assert!(*step < 30);
}

/// An image that cannot be read in the middle of a run (reported: 619 steps lost). The state
/// after the last completed step is saved; once the file is repaired, the resumed run is bit for
/// bit the run that never failed (the failing step's RNG draw and BatchNorm update are undone).
#[test]
fn a_data_error_mid_run_saves_the_last_good_state_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_dataset(&root);
    let extra = [
        "train.iters=5",
        "train.checkpoint_every=0",
        "train.val_every=0",
        "loss.name=recall_ce",
    ];
    // Reference: the uninterrupted run.
    let a = dir.path().join("a");
    train(&tiny_config(&root, &a, &extra), &quiet()).unwrap();

    // The third batch of epoch 0 holds a file we damage.
    let b = dir.path().join("b");
    let cfg = tiny_config(&root, &b, &extra);
    let data = recallseg_trainer::train::open_run_data(&cfg).unwrap();
    let third = data.train.epoch(0).nth(2).unwrap().unwrap();
    let ds = recallseg_trainer::data::open_split(&cfg.data, Split::Train).unwrap();
    let victim = ds.source(third.indices[0]).unwrap();
    let good = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, b"not an image").unwrap();
    let e = train(&cfg, &quiet()).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains(&victim.display().to_string()), "{msg}");
    assert!(msg.contains("training stopped at step 3"), "{msg}");
    assert!(msg.contains("the state after step 2 was saved"), "{msg}");
    let ck = Checkpoint::load(&b.join("last.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(ck.meta.step, 2);

    std::fs::write(&victim, good).unwrap();
    let o = train(
        &cfg,
        &TrainOptions {
            resume: true,
            ..quiet()
        },
    )
    .unwrap();
    assert!(o.finished);
    assert_eq!(
        model_bytes(&a.join("last.safetensors")),
        model_bytes(&b.join("last.safetensors"))
    );
    assert_eq!(train_losses(&a), train_losses(&b));
}

/// `train` into a folder holding a run, without --resume: refused, nothing touched (it used to
/// truncate the log and replace an 11% mIoU model by a 5-step one). --overwrite replaces it.
#[test]
fn a_finished_run_is_not_overwritten_without_asking() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_dataset(&root);
    let out = dir.path().join("run");
    let cfg = tiny_config(&root, &out, &["train.iters=2"]);
    train(&cfg, &quiet()).unwrap();
    let before: Vec<Vec<u8>> = ["last.safetensors", "best.safetensors", "log.jsonl"]
        .iter()
        .map(|f| std::fs::read(out.join(f)).unwrap())
        .collect();
    let e = train(&cfg, &quiet()).unwrap_err().to_string();
    assert!(
        e.contains("holds a run") && e.contains("--overwrite"),
        "{e}"
    );
    let after: Vec<Vec<u8>> = ["last.safetensors", "best.safetensors", "log.jsonl"]
        .iter()
        .map(|f| std::fs::read(out.join(f)).unwrap())
        .collect();
    assert!(before == after, "the refused run changed the folder");
    // --overwrite: a new run, with no file of the old one left (a stale `best` would lie).
    let one = tiny_config(&root, &out, &["train.iters=1", "train.val_every=0"]);
    std::fs::remove_file(out.join("last.safetensors")).unwrap();
    let o = train(
        &one,
        &TrainOptions {
            overwrite: true,
            ..quiet()
        },
    )
    .unwrap();
    assert_eq!(o.step, 1);
    let ck = Checkpoint::load(&out.join("last.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(ck.meta.step, 1);
    let best = Checkpoint::load(&out.join("best.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(best.meta.step, 1, "best.safetensors is the new run's");
}

/// Two runs in one folder: the second is refused while the first holds the folder's lock.
#[test]
fn a_locked_run_folder_refuses_a_second_run() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_dataset(&root);
    let out = dir.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    let held = recallseg_trainer::run_dir::RunLock::acquire(&out).unwrap();
    let cfg = tiny_config(&root, &out, &["train.iters=1"]);
    let e = train(&cfg, &quiet()).unwrap_err().to_string();
    assert!(e.contains("in use by another run"), "{e}");
    assert!(!out.join("log.jsonl").exists());
    drop(held);
    train(&cfg, &quiet()).unwrap();
}

/// Temporary files of killed checkpoint writes are removed when the next run starts.
#[test]
fn stale_temporary_files_are_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_dataset(&root);
    let out = dir.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    let orphan = out.join(".last.safetensors.tmp-4242-7");
    std::fs::write(&orphan, vec![0u8; 1000]).unwrap();
    let keep = out.join("notes.tmp-1-2.txt");
    std::fs::write(&keep, b"mine").unwrap();
    let cfg = tiny_config(&root, &out, &["train.iters=1"]);
    train(&cfg, &quiet()).unwrap();
    assert!(!orphan.exists());
    assert!(
        keep.exists(),
        "only the trainer's own temporary files are removed"
    );
}

/// The records of a run's log that an interruption must not change: everything but the times,
/// the `resumed` and `stopped` lines of the interrupted invocations and the throughput.
fn lasting_records(out: &Path) -> Vec<String> {
    read_log(&out.join("log.jsonl"))
        .unwrap()
        .into_iter()
        .filter(|r| match r {
            LogRecord::Resumed { .. } | LogRecord::Stopped { .. } => false,
            // The checkpoints an interruption itself wrote.
            LogRecord::Checkpoint { reason, .. } => reason == "periodic" || reason == "final",
            _ => true,
        })
        .map(|r| {
            let mut v = serde_json::to_value(&r).unwrap();
            if let Some(o) = v.as_object_mut() {
                o.remove("steps_per_s");
                o.remove("path");
            }
            v.to_string()
        })
        .collect()
}

/// The files a resumed run must share with one that was never interrupted.
fn assert_same_run(a: &Path, b: &Path) {
    for f in ["last.safetensors", "best.safetensors"] {
        assert_eq!(model_bytes(&a.join(f)), model_bytes(&b.join(f)), "{f}");
    }
    assert_eq!(lasting_records(a), lasting_records(b));
    let rows = |d: &Path| -> Vec<String> {
        std::fs::read_to_string(d.join("metrics.csv"))
            .unwrap()
            .lines()
            .map(|l| {
                let mut f: Vec<&str> = l.split(',').collect();
                f.drain(1..3); // time, elapsed_s
                f.join(",")
            })
            .collect()
    };
    assert_eq!(rows(a), rows(b));
}

/// When `best` cannot be written (a full disk), the state after that step is not saved: `last`
/// stays at the previous checkpoint and the log has no record of the step's validation, so the
/// resume, once the disk has room, repeats the step and ends with the files and records of a
/// run that was never interrupted.
#[test]
fn a_failed_best_write_is_redone_by_the_resume() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_dataset(&root);
    let args = [
        "train.iters=3",
        "train.val_every=0",
        "train.checkpoint_every=0",
    ];
    let reference = dir.path().join("reference");
    train(&tiny_config(&root, &reference, &args), &quiet()).unwrap();
    let out = dir.path().join("run");
    let cfg = tiny_config(&root, &out, &args);
    let first = train(
        &cfg,
        &TrainOptions {
            stop_after: Some(1),
            ..quiet()
        },
    )
    .unwrap();
    assert_eq!(first.step, 1);
    // A folder where `best` goes: renaming the new checkpoint over it fails.
    std::fs::create_dir(out.join("best.safetensors")).unwrap();
    let resume = TrainOptions {
        resume: true,
        ..quiet()
    };
    let msg = format!("{:#}", train(&cfg, &resume).unwrap_err());
    assert!(msg.contains("best.safetensors"), "{msg}");
    assert!(msg.contains("training stopped after step 3"), "{msg}");
    assert!(msg.contains("not saved") && msg.contains("step 1"), "{msg}");
    let ck = Checkpoint::load(&out.join("last.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(
        ck.meta.step, 1,
        "the state after an unrecorded validation was saved"
    );
    let log = read_log(&out.join("log.jsonl")).unwrap();
    assert!(
        !log.iter().any(|r| matches!(r, LogRecord::Val { .. })),
        "{log:?}"
    );
    // The disk has room again.
    std::fs::remove_dir(out.join("best.safetensors")).unwrap();
    let o = train(&cfg, &resume).unwrap();
    assert!(o.finished);
    assert_same_run(&reference, &out);
}

/// A process killed (as by `kill -9`) between writing `best` and writing `last` at a
/// validation step: the resume ends with exactly the files and records of a run that was
/// never interrupted. The kill is placed by the `RECALLSEG_FAULT` fault point.
#[cfg(unix)]
#[test]
fn a_kill_between_best_and_last_resumes_to_the_uninterrupted_run() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_dataset(&root);
    // Validations at steps 2 and 4 (both new bests in this run), checkpoints at 2 and 4.
    let reference = dir.path().join("reference");
    train(&tiny_config(&root, &reference, &[]), &quiet()).unwrap();
    let best_steps: Vec<u64> = read_log(&reference.join("log.jsonl"))
        .unwrap()
        .iter()
        .filter_map(|r| match r {
            LogRecord::Val {
                step, best: true, ..
            } => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(
        best_steps,
        [2, 4],
        "the test needs a new best at both validations"
    );
    let out = dir.path().join("run");
    let cfg_path = dir.path().join("run.toml");
    std::fs::write(&cfg_path, tiny_config(&root, &out, &[]).to_toml().unwrap()).unwrap();
    let bin = env!("CARGO_BIN_EXE_recallseg");
    // Killed right after the second `best` (step 4) is written, before `last`.
    let killed = Command::new(bin)
        .args(["train", "--no-progress", "--config"])
        .arg(&cfg_path)
        .env("RECALLSEG_FAULT", "after-best:2")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!killed.status.success());
    assert!(
        String::from_utf8_lossy(&killed.stderr).contains("aborting at after-best"),
        "{}",
        String::from_utf8_lossy(&killed.stderr)
    );
    assert_eq!(
        Checkpoint::load(&out.join("last.safetensors"), &Device::Cpu)
            .unwrap()
            .meta
            .step,
        2
    );
    let status = Command::new(bin)
        .args(["train", "--no-progress", "--resume", "--config"])
        .arg(&cfg_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert_same_run(&reference, &out);
}

/// `--resume` never deletes: a folder with `best` and a log but no `last` (a run killed before
/// its first checkpoint), or with a dangling `last` link, is refused, naming what it holds;
/// `--overwrite` replaces it. A folder whose log has no step at all holds nothing to lose.
#[test]
fn resume_refuses_a_run_it_cannot_continue_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_dataset(&root);
    let out = dir.path().join("run");
    let cfg = tiny_config(&root, &out, &["train.iters=2"]);
    train(&cfg, &quiet()).unwrap();
    std::fs::remove_file(out.join("last.safetensors")).unwrap();
    let files = |d: &Path| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap())
            // The lock file is stamped by whoever takes the lock (pid, time): not run data.
            .filter(|e| e.file_type().unwrap().is_file() && e.file_name() != "run.lock")
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = files(&out);
    let resume = TrainOptions {
        resume: true,
        ..quiet()
    };
    let e = format!("{:#}", train(&cfg, &resume).unwrap_err());
    assert!(
        e.contains("cannot be resumed")
            && e.contains("best.safetensors, log.jsonl")
            && e.contains("no last.safetensors")
            && e.contains("--overwrite"),
        "{e}"
    );
    assert!(
        files(&out) == before,
        "the refused resume changed the folder"
    );
    // A dangling link where `last` was.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(dir.path().join("gone"), out.join("last.safetensors")).unwrap();
        let e = format!("{:#}", train(&cfg, &resume).unwrap_err());
        assert!(e.contains("not a readable file"), "{e}");
        assert!(files(&out) == before);
        std::fs::remove_file(out.join("last.safetensors")).unwrap();
    }
    // --overwrite replaces it.
    let o = train(
        &cfg,
        &TrainOptions {
            overwrite: true,
            resume: true,
            ..quiet()
        },
    )
    .unwrap();
    assert!(o.finished);
    // A log without a single step (stopped while starting): a fresh run starts.
    let fresh = dir.path().join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    let header = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
    std::fs::write(fresh.join("log.jsonl"), header.lines().next().unwrap()).unwrap();
    let o = train(&tiny_config(&root, &fresh, &["train.iters=1"]), &resume).unwrap();
    assert_eq!((o.step, o.finished), (1, true));
}

/// A log line cut short by a full disk (no newline, not JSON) after the checkpoint's step does
/// not block the resume: it is dropped, and the run ends as if never interrupted.
#[test]
fn a_truncated_last_log_line_is_dropped_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_dataset(&root);
    let reference = dir.path().join("reference");
    train(&tiny_config(&root, &reference, &[]), &quiet()).unwrap();
    let out = dir.path().join("run");
    let cfg = tiny_config(&root, &out, &[]);
    train(
        &cfg,
        &TrainOptions {
            stop_after: Some(3),
            ..quiet()
        },
    )
    .unwrap();
    let log = out.join("log.jsonl");
    let mut text = std::fs::read(&log).unwrap();
    text.extend_from_slice(br#"{"time":"2026-12-07T10:00:00.000Z","elapsed_s":1.0,"kind":"tra"#);
    std::fs::write(&log, &text).unwrap();
    // Reading the log as a whole still names the damaged line.
    let e = read_log(&log).unwrap_err().to_string();
    assert!(e.contains("log.jsonl:"), "{e}");
    let o = train(
        &cfg,
        &TrainOptions {
            resume: true,
            ..quiet()
        },
    )
    .unwrap();
    assert!(o.finished);
    assert_same_run(&reference, &out);
}

/// A synthetic dataset is published whole: an interrupted generation leaves only a hidden
/// temporary folder, which the next run ignores (it generates again); a sequence folder with
/// missing images is refused with the counts instead of being trained on.
#[test]
fn a_half_generated_synthetic_dataset_is_never_used() {
    use recallseg_data::{generate_synthia, SyntheticConfig};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("synth");
    let small = SyntheticConfig {
        width: 64,
        height: 32,
        frames_per_folder: 4,
        cameras: vec!["Omni_F".into()],
        sides: vec!["Stereo_Left".into()],
        ..SyntheticConfig::default()
    };
    let report = generate_synthia(&root, &small).unwrap();
    assert_eq!(report.sequence_dir, root.join(&small.sequence));
    assert_eq!(report.images, 4);
    // Nothing but the sequence folder is left: the temporary folder was renamed.
    let names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, std::slice::from_ref(&small.sequence));
    // The quick preset's dataset folder with a third of its images: refused, with the counts.
    let quick_root = dir.path().join("quick");
    let quick = recallseg_trainer::data::quick_synthetic_config();
    let rgb = quick_root
        .join(&quick.sequence)
        .join("RGB")
        .join(&quick.sides[0])
        .join(&quick.cameras[0]);
    std::fs::create_dir_all(&rgb).unwrap();
    std::fs::write(rgb.join("000000.png"), b"x").unwrap();
    let out = dir.path().join("run");
    let cfg = recallseg_trainer::config::Preset::SynthiaQuick
        .config(&[
            format!("data.root={:?}", quick_root.display().to_string()),
            format!("train.out_dir={:?}", out.display().to_string()),
        ])
        .unwrap();
    let e = format!("{:#}", train(&cfg, &quiet()).unwrap_err());
    assert!(
        e.contains("incomplete synthetic dataset")
            && e.contains("1 images")
            && e.contains("of 320"),
        "{e}"
    );
}

/// SIGTERM and SIGHUP (what Slurm, Docker, Kubernetes and systemd send) stop a run like Ctrl-C:
/// a checkpoint is written and the exit status is 128 + the signal, not 0, also when the signal
/// comes twice in a row; a finished run exits with 0.
#[cfg(unix)]
#[test]
fn signals_write_a_checkpoint_and_exit_non_zero() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_dataset(&root);
    let out = dir.path().join("run");
    let cfg = tiny_config(
        &root,
        &out,
        &[
            "train.iters=100000",
            "train.val_every=0",
            "train.checkpoint_every=0",
        ],
    );
    let cfg_path = dir.path().join("run.toml");
    std::fs::write(&cfg_path, cfg.to_toml().unwrap()).unwrap();
    let bin = env!("CARGO_BIN_EXE_recallseg");
    for (signal, code, resume) in [("TERM", 143, false), ("HUP", 129, true)] {
        let mut cmd = Command::new(bin);
        cmd.args(["train", "--no-progress", "--config"])
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if resume {
            cmd.arg("--resume");
        }
        let mut child = cmd.spawn().unwrap();
        // Wait until training steps are being logged (beyond the resumed step).
        let t0 = Instant::now();
        let train_records = || {
            read_log(&out.join("log.jsonl"))
                .map(|l| {
                    l.iter()
                        .filter(|r| matches!(r, LogRecord::Train { .. }))
                        .count()
                })
                .unwrap_or(0)
        };
        let start = train_records();
        loop {
            let n = train_records();
            if n > start + 1 {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "training did not start"
            );
            assert!(child.try_wait().unwrap().is_none(), "exited early");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Twice, as Slurm does (it signals every process of the job, and the batch script's
        // trap forwards another TERM): the repeat must not cancel the checkpoint.
        for _ in 0..2 {
            let st = Command::new("kill")
                .args([format!("-{signal}"), child.id().to_string()])
                .status()
                .unwrap();
            assert!(st.success());
        }
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "SIG{signal}: {stderr}");
        assert!(stderr.contains(&format!("SIG{signal}")), "{stderr}");
        let ck = Checkpoint::load(&out.join("last.safetensors"), &Device::Cpu).unwrap();
        assert!(ck.meta.step >= 2);
        let log = read_log(&out.join("log.jsonl")).unwrap();
        match log.last() {
            Some(LogRecord::Stopped { reason, step }) => {
                assert!(reason.contains(&format!("SIG{signal}")), "{reason}");
                assert_eq!(*step, ck.meta.step);
            }
            r => panic!("last record {r:?}"),
        }
    }
    // A finished run exits with 0.
    let status = Command::new(bin)
        .args(["train", "--no-progress", "--overwrite", "--config"])
        .arg(&cfg_path)
        .args(["--iters", "1", "--set", "train.val_every=0"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// `predict` decodes by content, as training does: a PNG named `.jpg` (or any extension) is an
/// image; output over an input or two inputs with one stem are refused before any work.
#[test]
fn predict_decodes_by_content_and_never_overwrites_an_input() {
    use recallseg_cli::{predict, PredictArgs};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_dataset(&root);
    let out = dir.path().join("run");
    train(
        &tiny_config(&root, &out, &["train.iters=1", "train.val_every=0"]),
        &quiet(),
    )
    .unwrap();
    let img = std::fs::read_dir(root.join("SYNTHIA-SEQS-05-SUMMER/RGB/Stereo_Left/Omni_F"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let inputs = dir.path().join("in");
    std::fs::create_dir_all(&inputs).unwrap();
    let disguised = inputs.join("street.jpg");
    std::fs::copy(&img, &disguised).unwrap();
    let args = |images: Vec<std::path::PathBuf>, out: &Path| PredictArgs {
        checkpoint: dir.path().join("run/last.safetensors"),
        images,
        out: out.to_path_buf(),
        device: "cpu".into(),
        labels: false,
        no_overlay: false,
        alpha: 0.5,
        inference: Default::default(),
    };
    predict(&args(vec![disguised.clone()], &dir.path().join("pred"))).unwrap();
    assert!(dir.path().join("pred/street.png").is_file());
    // Into the inputs' folder, an input named like the output: refused, the input intact.
    let victim = inputs.join("street.png");
    std::fs::copy(&img, &victim).unwrap();
    let before = std::fs::read(&victim).unwrap();
    let e = predict(&args(vec![victim.clone()], &inputs))
        .unwrap_err()
        .to_string();
    assert!(e.contains("over the input image"), "{e}");
    assert_eq!(std::fs::read(&victim).unwrap(), before);
    // Not an image at all: the error names the file.
    let junk = inputs.join("notes.png");
    std::fs::write(&junk, b"hello").unwrap();
    let e = predict(&args(vec![junk], &dir.path().join("pred2")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("notes.png"), "{e}");
}

/// The download instructions appear only when the dataset is not there: an empty split or an
/// image without its label used to be followed by a misleading "SYNTHIA was not found".
#[test]
fn dataset_errors_do_not_suggest_a_download_when_the_dataset_is_there() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_dataset(&root);
    let cfg = tiny_config(&root, &dir.path().join("run"), &[]);
    let seq = root.join("SYNTHIA-SEQS-05-SUMMER");
    // An image without its label.
    let first_label = std::fs::read_dir(seq.join("GT/LABELS/Stereo_Left/Omni_F"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap();
    std::fs::remove_file(&first_label).unwrap();
    let open = |d: &recallseg_trainer::config::DataConfig| {
        let mut msgs = Vec::new();
        for split in [Split::Train, Split::Val, Split::Test] {
            if let Err(e) = recallseg_trainer::data::open_split(d, split) {
                msgs.push(format!("{e:#}"));
            }
        }
        msgs.join("\n")
    };
    let e = open(&cfg.data);
    assert!(e.contains("no matching label"), "{e}");
    assert!(!e.contains("was not found"), "{e}");
    // An empty split: the layout is there, without images.
    let empty = dir.path().join("empty");
    for d in ["RGB/Stereo_Left/Omni_F", "GT/LABELS/Stereo_Left/Omni_F"] {
        std::fs::create_dir_all(empty.join("SEQ").join(d)).unwrap();
    }
    let mut c = cfg.data.clone();
    c.root = empty.clone();
    let e = open(&c);
    assert!(e.contains("is empty"), "{e}");
    assert!(!e.contains("was not found"), "{e}");
    // A folder without the layout: the instructions are what helps.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    c.root = other;
    let e = open(&c);
    assert!(e.contains("was not found"), "{e}");
}

/// `[data] scale` and `color_jitter` reach the training loader: batches keep the configured size
/// and differ from unaugmented ones; the same seed gives the same batch.
#[test]
fn augmentation_keys_reach_the_loader() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_dataset(&root);
    let batch = |extra: &[&str]| {
        let cfg = tiny_config(&root, &dir.path().join("run"), extra);
        let data = recallseg_trainer::train::open_run_data(&cfg).unwrap();
        data.train.epoch(0).next().unwrap().unwrap()
    };
    let plain = batch(&["data.hflip=false"]);
    let aug = batch(&[
        "data.hflip=false",
        "data.scale=[0.5, 1.5]",
        "data.color_jitter=0.5",
    ]);
    assert_eq!((aug.height, aug.width), (32, 64));
    assert_eq!(aug.images.len(), plain.images.len());
    assert_ne!(aug.images, plain.images);
    let again = batch(&[
        "data.hflip=false",
        "data.scale=[0.5, 1.5]",
        "data.color_jitter=0.5",
    ]);
    assert_eq!(aug.images, again.images);
}

/// A closed or full standard output or error never panics: a command whose output cannot be
/// written fails with an error that says so (not exit 101), and a training run whose standard
/// error was closed (`recallseg train … 2>&1 | head -3`) trains to the end and writes its
/// checkpoints.
#[cfg(unix)]
#[test]
fn closed_or_full_output_streams_do_not_panic_or_lose_the_run() {
    use std::process::{Command, Stdio};
    let bin = env!("CARGO_BIN_EXE_recallseg");
    if let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") {
        let o = Command::new(bin)
            .args(["preset", "synthia-quick"])
            .stdout(full)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains("writing to standard output"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_dataset(&root);
    let out = dir.path().join("run");
    let cfg_path = dir.path().join("run.toml");
    let cfg = tiny_config(&root, &out, &["train.iters=3"]);
    std::fs::write(&cfg_path, cfg.to_toml().unwrap()).unwrap();
    let mut child = Command::new(bin)
        .args(["train", "--no-progress", "--config"])
        .arg(&cfg_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away at once, as `head` does after its lines.
    drop(child.stdout.take());
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let ck = Checkpoint::load(&out.join("last.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(ck.meta.step, 3);
}

/// `export` refuses to write over a file of a run folder (`last`, `best`, the log, …): exported
/// weights in place of `last` would break the run's resume.
#[test]
fn export_refuses_to_replace_a_run_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_dataset(&root);
    let out = dir.path().join("run");
    let cfg = tiny_config(
        &root,
        &out,
        &[
            "train.iters=1",
            "train.val_every=0",
            "model.layout=\"smp\"",
            "model.backbone_width=64",
            "model.head_channels=16",
            "model.low_level_channels=48",
            "model.decoder_dropout=[0.0, 0.0]",
            "data.width=32",
        ],
    );
    train(&cfg, &quiet()).unwrap();
    let before = std::fs::read(out.join("last.safetensors")).unwrap();
    for target in ["last.safetensors", "best.safetensors", "log.jsonl"] {
        let e = recallseg_trainer::export::export_checkpoint(
            &out,
            recallseg_models::ExportFormat::Smp,
            &out.join(target),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("is a file of the run"), "{target}: {e}");
    }
    assert_eq!(std::fs::read(out.join("last.safetensors")).unwrap(), before);
    // Another name in the same folder is fine.
    recallseg_trainer::export::export_checkpoint(
        &out,
        recallseg_models::ExportFormat::Smp,
        &out.join("smp.safetensors"),
    )
    .unwrap();
    let ck = Checkpoint::load(&out.join("last.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(ck.meta.step, 1, "the run's own checkpoint is untouched");
    // A write that fails says it was a write, names the file, once, on one line, also with
    // RUST_BACKTRACE=1 (no library backtrace after the message).
    std::fs::write(dir.path().join("a-file"), b"").unwrap();
    let target = dir.path().join("a-file").join("m.safetensors");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_recallseg"))
        .args(["export", "--format", "smp", "--checkpoint"])
        .arg(&out)
        .arg("--out")
        .arg(&target)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error: exporting ")
            && err.contains(&format!(": cannot write weights to {}: ", target.display())),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(err.matches(&*target.to_string_lossy()).count(), 1, "{err}");
}

/// A stop signal during the end-of-run test evaluation is acknowledged: the evaluation stops,
/// the exit status is 128 + the signal, no `test.json` is written, and `--resume` redoes only
/// the evaluation (no step is trained again) and exits 0. The signal is placed by the
/// `RECALLSEG_FAULT` fault point at the evaluation's start.
#[cfg(unix)]
#[test]
fn a_signal_during_the_test_evaluation_stops_it_and_resume_redoes_it() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_dataset(&root);
    let out = dir.path().join("run");
    let cfg_path = dir.path().join("run.toml");
    let cfg = tiny_config(&root, &out, &["train.iters=2", "train.val_every=0"]);
    std::fs::write(&cfg_path, cfg.to_toml().unwrap()).unwrap();
    let bin = env!("CARGO_BIN_EXE_recallseg");
    let o = Command::new(bin)
        .args(["train", "--no-progress", "--config"])
        .arg(&cfg_path)
        .env("RECALLSEG_FAULT", "test-evaluation:term")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(143), "{err}");
    assert!(err.contains("test evaluation was stopped"), "{err}");
    assert!(!out.join("test.json").exists());
    let log_before = read_log(&out.join("log.jsonl")).unwrap();
    assert!(matches!(
        log_before.last(),
        Some(LogRecord::Stopped { step: 2, .. })
    ));
    let o = Command::new(bin)
        .args(["train", "--no-progress", "--resume", "--config"])
        .arg(&cfg_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let test: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("test.json")).unwrap()).unwrap();
    assert_eq!(test["step"], 2);
    let log = read_log(&out.join("log.jsonl")).unwrap();
    let trained = log
        .iter()
        .filter(|r| matches!(r, LogRecord::Train { .. }))
        .count();
    assert_eq!(trained, 2, "a step was trained again");
    assert!(
        matches!(log.last(), Some(LogRecord::Test { step: 2, .. })),
        "{log:?}"
    );
}

/// Sliding-window inference keeps memory bounded whatever the number of windows (no autograd
/// graph kept, no full-size copy per window): the peak resident memory of `recallseg eval`
/// with 16×16 windows every 4 pixels of a 384×192 input (4,185 windows) stays within that of
/// every 16 pixels (288 windows) plus a margin. (Before, memory grew with each window: 16×16
/// windows every 4 pixels of one such image took 2.5 GB, every 2 pixels aborted.)
#[cfg(target_os = "linux")]
#[test]
fn sliding_window_memory_does_not_grow_with_the_number_of_windows() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_dataset(&root);
    let out = dir.path().join("run");
    let cfg = tiny_config(
        &root,
        &out,
        &[
            "train.iters=1",
            "train.val_every=0",
            "data.height=192",
            "data.width=384",
        ],
    );
    train(&cfg, &quiet()).unwrap();
    let bin = env!("CARGO_BIN_EXE_recallseg");
    // Peak resident memory (VmHWM, kB) of `recallseg eval` with windows every `stride` pixels.
    let peak_kb = |stride: usize| -> u64 {
        let mut child = Command::new(bin)
            .args(["eval", "--split", "val", "--window", "16x16", "--stride"])
            .arg(format!("{stride}x{stride}"))
            .arg("--checkpoint")
            .arg(out.join("last.safetensors"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status_path = format!("/proc/{}/status", child.id());
        let mut peak = 0;
        loop {
            if let Ok(text) = std::fs::read_to_string(&status_path) {
                if let Some(kb) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                {
                    peak = peak.max(kb);
                }
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        peak
    };
    let few = peak_kb(16);
    let many = peak_kb(4);
    eprintln!("peak RSS: {few} kB with 288 windows, {many} kB with 4185 windows");
    assert!(few > 0 && many > 0);
    assert!(
        many < few + 100 * 1024,
        "peak RSS grew with the windows: {few} kB -> {many} kB"
    );
}
