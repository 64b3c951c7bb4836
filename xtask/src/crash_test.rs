//! `cargo xtask crash-test`: kills `recallseg train` with SIGKILL at random moments, many of them
//! during checkpoint writes, and checks what the trainer promises (docs/training.md, "When things
//! go wrong"): `last` and `best` always load (no corrupt file), each restart resumes, and the run
//! finished through all the kills is bit for bit the run that was never killed.
//!
//! Orchestration only: the run is the `recallseg` binary on a tiny generated dataset; the checks
//! use the trainer library's checkpoint reader.

use anyhow::Context;
use clap::Args;
use rand::{Rng, SeedableRng};
use recallseg_trainer::checkpoint::Checkpoint;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// `cargo xtask crash-test`.
#[derive(Args, Debug)]
pub(crate) struct CrashTestArgs {
    /// How many times to kill the run.
    #[arg(long, default_value_t = 50)]
    kills: usize,
    /// Seed of the kill delays.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Steps of the run (a checkpoint after every step, validation every 10).
    #[arg(long, default_value_t = 1000)]
    iters: usize,
    /// Working folder (default: target/crash-test).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print one JSON object of the figures on stdout.
    #[arg(long)]
    json: bool,
}

/// The `recallseg` binary next to this xtask (same target folder), built if missing.
fn recallseg_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .context("xtask has no folder")?
        .join(format!("recallseg{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        let release = exe.components().any(|c| c.as_os_str() == "release");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "-p", "recallseg-trainer", "--bin", "recallseg"]);
        if release {
            cmd.arg("--release");
        }
        anyhow::ensure!(cmd.status()?.success(), "building recallseg failed");
    }
    Ok(bin)
}

fn write_config(root: &Path, out: &Path, iters: usize, path: &Path) -> anyhow::Result<()> {
    let q = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    let overrides = [
        format!("data.root={}", q(root)),
        "data.generate_synthetic=false".into(),
        "data.height=32".into(),
        "data.width=64".into(),
        "data.workers=1".into(),
        "model.backbone_width=4".into(),
        "model.head_channels=8".into(),
        "model.low_level_channels=4".into(),
        "train.batch_size=2".into(),
        format!("train.iters={iters}"),
        "train.val_every=10".into(),
        "train.log_every=1".into(),
        "train.checkpoint_every=1".into(),
        "train.seed=7".into(),
        format!("train.out_dir={}", q(out)),
    ];
    let cfg = recallseg_trainer::config::Preset::SynthiaQuick.config(&overrides)?;
    std::fs::write(path, cfg.to_toml()?)?;
    Ok(())
}

/// The highest training step in a log, tolerating a torn last line.
fn last_logged_step(log: &Path) -> u64 {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "train")
        .filter_map(|v| v["step"].as_u64())
        .max()
        .unwrap_or(0)
}

/// Model and optimiser tensors as bytes, sorted by name.
fn state_bytes(path: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let ck = Checkpoint::load(path, &candle_core::Device::Cpu)?;
    let mut v = Vec::new();
    for (prefix, map) in [("model.", &ck.model), ("optim.", &ck.optim)] {
        for (k, t) in map {
            let f: Vec<f32> = t.flatten_all()?.to_vec1()?;
            v.push((
                format!("{prefix}{k}"),
                f.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ));
        }
    }
    v.sort();
    Ok(v)
}

/// Temporary files of interrupted checkpoint writes in `dir`.
fn temp_files(dir: &Path) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| recallseg_files::is_temp_file_name(&e.file_name()))
        .count())
}

fn train(bin: &Path, cfg: &Path, resume: bool) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["train", "--no-progress", "--config"]).arg(cfg);
    if resume {
        cmd.arg("--resume");
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    cmd
}

/// Runs the crash test and prints its figures.
pub(crate) fn run(args: &CrashTestArgs) -> anyhow::Result<()> {
    let bin = recallseg_binary()?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/crash-test"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let root = dir.join("data");
    recallseg_data::generate_synthia(
        &root,
        &recallseg_data::SyntheticConfig {
            seed: 3,
            width: 64,
            height: 32,
            cameras: vec!["Omni_F".into()],
            sides: vec!["Stereo_Left".into()],
            frames_per_folder: 10,
            ..recallseg_data::SyntheticConfig::default()
        },
    )?;
    // The reference: never killed.
    let (ref_out, ref_cfg) = (dir.join("reference"), dir.join("reference.toml"));
    write_config(&root, &ref_out, args.iters, &ref_cfg)?;
    let t0 = std::time::Instant::now();
    anyhow::ensure!(
        train(&bin, &ref_cfg, false).status()?.success(),
        "the reference run failed"
    );
    let run_ms = t0.elapsed().as_millis().max(200) as u64;

    let (out, cfg) = (dir.join("killed"), dir.join("killed.toml"));
    write_config(&root, &out, args.iters, &cfg)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    let (mut kills, mut corrupt, mut lost, mut finished_early) = (0usize, 0usize, 0u64, 0usize);
    let mut during_write = 0usize;
    let mut problems = Vec::new();
    for k in 0..args.kills {
        let mut child = train(&bin, &cfg, k > 0).spawn()?;
        // Start-up, steps or checkpoint writes: up to a 40th of the whole run.
        std::thread::sleep(Duration::from_millis(
            rng.random_range(10..run_ms / 40 + 30),
        ));
        if child.try_wait()?.is_some() {
            finished_early += 1;
            break;
        }
        child.kill()?; // SIGKILL on Unix
        child.wait()?;
        kills += 1;
        let logged = last_logged_step(&out.join("log.jsonl"));
        if temp_files(&out)? > 0 {
            during_write += 1;
        }
        for f in ["last.safetensors", "best.safetensors"] {
            let p = out.join(f);
            if p.exists() {
                if let Err(e) = Checkpoint::load(&p, &candle_core::Device::Cpu) {
                    corrupt += 1;
                    problems.push(format!("kill {k}: {e}"));
                }
            }
        }
        if let Ok(ck) = Checkpoint::load(&out.join("last.safetensors"), &candle_core::Device::Cpu) {
            lost += logged.saturating_sub(ck.meta.step);
        }
        if !args.json && (k + 1) % 10 == 0 {
            eprintln!("{} kills, {corrupt} corrupt files so far", k + 1);
        }
    }
    let status = train(&bin, &cfg, true).status()?;
    anyhow::ensure!(
        status.success(),
        "the final resume failed ({status}); see {}",
        out.display()
    );
    let leftovers = temp_files(&out)?;
    let bit_exact = state_bytes(&ref_out.join("last.safetensors"))?
        == state_bytes(&out.join("last.safetensors"))?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "kills": kills,
                "kills_during_a_checkpoint_write": during_write,
                "corrupt_files": corrupt,
                "steps_lost_total": lost,
                "temporary_files_left": leftovers,
                "final_state_bit_exact": bit_exact,
                "reference_run_ms": run_ms,
            })
        );
    } else {
        println!(
            "{kills} kills (SIGKILL), {during_write} of them during a checkpoint write: {corrupt} \
             corrupt checkpoints, {lost} steps lost in all \
             (redone after resuming), {leftovers} temporary files left, final state bit for bit \
             the uninterrupted run's: {bit_exact}"
        );
        if finished_early > 0 {
            println!("(the run finished before the last kill)");
        }
    }
    for p in &problems {
        eprintln!("{p}");
    }
    anyhow::ensure!(
        corrupt == 0 && bit_exact && leftovers == 0,
        "the crash test failed"
    );
    Ok(())
}
