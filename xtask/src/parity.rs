//! `cargo xtask parity`: the same-budget training comparison with PyTorch and
//! segmentation_models_pytorch (smp).
//!
//! 1. Generates the synthetic Synthia-format dataset at 480×384 (`data/synthia-parity/`), so that
//!    the 160×128 network input is a 3× downscale, as with real driving images.
//! 2. Writes the peer's view of the split: `results/parity/peer/split.json` (image paths and
//!    8-bit train-id label maps under `peer/labels/`, the same items and order as ours).
//! 3. Trains the PyTorch side, `xtask/peer/parity_smp.py`, once per seed and loss (skipped when
//!    no Python is given and `.venv-peer/bin/python` does not exist).
//! 4. Trains ours from `xtask/peer/parity.toml` (the same architecture, budget and flips) through
//!    the comparison runner, once per seed.
//! 5. Scores both sides with recallseg-metrics (the peer writes its test confusion matrix) and
//!    writes `results/parity/parity.md`: mean ± standard deviation over the seeds.
//!
//! Finished runs on either side are reused, so the command can be re-run to add seeds.

use anyhow::Context;
use clap::Args;
use recallseg_compare::{loss_run, run_comparison, CompareOptions, ComparisonPlan};
use recallseg_compare::{CompareOutcome, Evaluate};
use recallseg_data::png_io::{write_gray8, PngSpeed};
use recallseg_data::Split;
use recallseg_data::{generate_synthia, SyntheticConfig};
use recallseg_metrics::ConfusionMatrix;
use recallseg_trainer::config::TrainConfig;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Arguments of `cargo xtask parity`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    cargo xtask parity                                  # 3 seeds of CE, both sides\n  \
    cargo xtask parity --losses cross_entropy,recall_ce # and Recall loss\n  \
    cargo xtask parity --side ours --seeds 0,1,2,3,4\n  \
    cargo xtask parity --side peer --python /opt/venv/bin/python")]
pub(crate) struct ParityArgs {
    /// Seeds (each side trains every loss once per seed).
    #[arg(long, value_delimiter = ',', default_values_t = [0u64, 1, 2])]
    pub seeds: Vec<u64>,
    /// Losses: cross_entropy (default), recall_ce (the two the peer script implements).
    #[arg(long, value_delimiter = ',', default_values_t = ["cross_entropy".to_string()])]
    pub losses: Vec<String>,
    /// Which side to train: ours, peer, both, or none (only the report); the report uses
    /// whatever is finished.
    #[arg(long, default_value = "both")]
    pub side: String,
    /// The Python with torch and segmentation-models-pytorch (default `.venv-peer/bin/python`).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Further options for the peer script, e.g. `--peer-arg=--image-resize=two_tap`.
    #[arg(long = "peer-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub peer_args: Vec<String>,
    /// Config overrides of our side, e.g. `--set model.init=\"kaiming_fan_out\"` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Output folder.
    #[arg(long, default_value = "results/parity")]
    pub out: PathBuf,
}

const DATA_ROOT: &str = "data/synthia-parity";
const CONFIG: &str = include_str!("../peer/parity.toml");

/// The generated dataset: the default synthetic scenes at 480×384.
fn synthetic_config() -> SyntheticConfig {
    SyntheticConfig {
        width: 480,
        height: 384,
        ..SyntheticConfig::default()
    }
}

/// Entry point of `cargo xtask parity`.
pub(crate) fn run(args: &ParityArgs) -> anyhow::Result<()> {
    let root = crate::workspace::root();
    std::env::set_current_dir(&root)?;
    let (ours, peer) = match args.side.as_str() {
        "ours" => (true, false),
        "peer" => (false, true),
        "both" => (true, true),
        "none" => (false, false),
        other => anyhow::bail!("--side {other}: expected ours, peer, both or none (report only)"),
    };
    for l in &args.losses {
        if l != "cross_entropy" && l != "recall_ce" {
            anyhow::bail!(
                "--losses: {l} is not one the peer script has (cross_entropy, recall_ce)"
            );
        }
    }
    let base = TrainConfig::from_toml_str(CONFIG, "xtask/peer/parity.toml", &args.set)?;
    let peer_dir = args.out.join("peer");
    let synth = synthetic_config();
    let generated = Path::new(DATA_ROOT).join(&synth.sequence).join("RGB");
    if (ours || peer) && !generated.is_dir() {
        eprintln!("generating {DATA_ROOT} (480x384) ...");
        generate_synthia(Path::new(DATA_ROOT), &synth)?;
    }
    if peer {
        let split_json = write_peer_split(&base, &peer_dir)?;
        let python = args
            .python
            .clone()
            .unwrap_or_else(|| PathBuf::from(".venv-peer/bin/python"));
        if !python.exists() {
            anyhow::bail!(
                "{} does not exist: make the peer's environment (see ../shared/peer/README.md: \
                 `python3 -m venv .venv-peer && .venv-peer/bin/pip install torch \
                 segmentation-models-pytorch`), pass --python, or run --side ours",
                python.display()
            );
        }
        for &seed in &args.seeds {
            for loss in &args.losses {
                let out = peer_result_path(&peer_dir, loss, seed);
                if out.is_file() {
                    continue;
                }
                eprintln!("[peer {loss} seed {seed}] training ...");
                let tmp = out.with_extension("json.tmp");
                let status = Command::new(&python)
                    .arg("xtask/peer/parity_smp.py")
                    .arg("--split")
                    .arg(&split_json)
                    .args(["--seed", &seed.to_string(), "--loss", loss])
                    .args(["--iters", &base.train.iters.to_string()])
                    .args(["--batch", &base.train.batch_size.to_string()])
                    .args(["--lr", &base.optim.lr.to_string()])
                    .args(&args.peer_args)
                    .arg("--out")
                    .arg(&tmp)
                    .status()
                    .with_context(|| format!("running {}", python.display()))?;
                if !status.success() {
                    anyhow::bail!("the peer script failed ({status}) for {loss}, seed {seed}");
                }
                std::fs::rename(&tmp, &out)?;
            }
        }
    }
    if ours {
        recallseg_trainer::train::install_ctrlc();
        for &seed in &args.seeds {
            let mut cfg = base.clone();
            cfg.train.seed = seed;
            let plan = ComparisonPlan {
                title: format!("parity, recallseg side, seed {seed}"),
                base: cfg,
                losses: args
                    .losses
                    .iter()
                    .map(|n| loss_run(n))
                    .collect::<anyhow::Result<Vec<_>>>()?,
                out_dir: args.out.join("ours").join(format!("seed{seed}")),
                examples: 0,
                synthetic: true,
                notes: vec![],
                evaluate: Evaluate::Final,
            };
            let opts = CompareOptions {
                progress_bar: recallseg_trainer::log::Progress::stderr_is_terminal(),
                interrupt: Some(recallseg_trainer::signals::interrupt_flag()),
                quiet: false,
                overwrite: false,
            };
            if let CompareOutcome::Interrupted(label) = run_comparison(&plan, &opts)? {
                anyhow::bail!("interrupted during {label}; run the same command again to resume");
            }
        }
    }
    let report = report(args, &peer_dir)?;
    std::fs::write(args.out.join("parity.md"), &report)?;
    println!("{report}");
    Ok(())
}

fn peer_result_path(peer_dir: &Path, loss: &str, seed: u64) -> PathBuf {
    peer_dir.join(format!("{loss}-seed{seed}.json"))
}

/// Writes `split.json` and the 8-bit label maps the peer reads (train and test splits, our
/// items in our order); returns the JSON's path.
fn write_peer_split(base: &TrainConfig, peer_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = peer_dir.join("split.json");
    if path.is_file() {
        return Ok(path);
    }
    let mut json = serde_json::Map::new();
    let mut n_classes = 0;
    for (name, split) in [("train", Split::Train), ("test", Split::Test)] {
        let ds = recallseg_trainer::data::open_split(&base.data, split)?;
        n_classes = ds.class_info().n_classes();
        let dir = peer_dir.join("labels").join(name);
        std::fs::create_dir_all(&dir)?;
        let mut items = Vec::new();
        for i in 0..ds.len() {
            let image = ds
                .source(i)
                .ok_or_else(|| anyhow::anyhow!("{name} item {i} has no image file"))?;
            let label = ds.get_label(i)?;
            let label_path = dir.join(format!("{i:04}.png"));
            write_gray8(
                &label_path,
                label.width,
                label.height,
                &label.label,
                PngSpeed::Fast,
            )?;
            items.push(serde_json::json!({
                "image": std::fs::canonicalize(&image)?,
                "label": std::fs::canonicalize(&label_path)?,
            }));
        }
        json.insert(name.into(), items.into());
    }
    json.insert("width".into(), base.data.width.into());
    json.insert("height".into(), base.data.height.into());
    json.insert("n_classes".into(), n_classes.into());
    json.insert(
        "ignore_index".into(),
        recallseg_data::DEFAULT_IGNORE_INDEX.into(),
    );
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    Ok(path)
}

/// One finished run: (mean accuracy %, mean IoU %, mean loss of the first 50 steps, train
/// seconds).
type Scores = (f64, f64, Option<f64>, f64);

fn peer_scores(path: &Path) -> anyhow::Result<Option<Scores>> {
    if !path.is_file() {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)
        .with_context(|| path.display().to_string())?;
    let n = v["n_classes"].as_u64().unwrap_or(0) as usize;
    let counts: Vec<u64> = serde_json::from_value(v["confusion"].clone())
        .with_context(|| format!("{}: confusion", path.display()))?;
    let m = ConfusionMatrix::from_counts(n, None, counts)
        .with_context(|| path.display().to_string())?;
    let r = m.report();
    let first = v["losses"][0][1].as_f64();
    Ok(Some((
        100.0 * r.mean_accuracy.value.unwrap_or(f64::NAN),
        100.0 * r.mean_iou.value.unwrap_or(f64::NAN),
        first,
        v["train_seconds"].as_f64().unwrap_or(f64::NAN),
    )))
}

fn our_scores(out: &Path, loss: &str, seed: u64) -> anyhow::Result<Option<Scores>> {
    let dir = out
        .join("ours")
        .join(format!("seed{seed}"))
        .join("runs")
        .join(loss);
    let path = dir.join("summary.json");
    if !path.is_file() {
        return Ok(None);
    }
    let rec: recallseg_compare::RunRecord = serde_json::from_str(&std::fs::read_to_string(&path)?)
        .with_context(|| path.display().to_string())?;
    let first = recallseg_trainer::log::read_log(&dir.join("log.jsonl"))
        .ok()
        .and_then(|records| {
            records.into_iter().find_map(|r| match r {
                recallseg_trainer::log::LogRecord::Train { loss, .. } => Some(loss),
                _ => None,
            })
        });
    Ok(Some((
        rec.summary.mean_acc_pct(),
        rec.summary.mean_iou_pct(),
        first,
        rec.summary.train_seconds,
    )))
}

/// Mean and sample standard deviation.
fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

fn report(args: &ParityArgs, peer_dir: &Path) -> anyhow::Result<String> {
    let mut s = String::new();
    writeln!(
        s,
        "# Parity: recallseg vs PyTorch/smp, same budget\n\nDeepLabV3+-ResNet-18 from scratch, \
         160x128 inputs (3x downscale of the generated 480x384 images), batch 8, Adam 1e-3, \
         1500 steps, horizontal flips; test split of `data/synthia-parity` (16 classes). \
         Figures: mean accuracy / mean IoU in %, then the mean training loss of the first 50 \
         steps and the training time.\n"
    )?;
    writeln!(
        s,
        "| loss | side | seed | mean acc | mean IoU | loss, steps 1-50 | train s |\n|---|---|---|---|---|---|---|"
    )?;
    let mut summary = String::new();
    writeln!(
        summary,
        "\n| loss | side | seeds | mean acc (mean ± sd) | mean IoU (mean ± sd) |\n|---|---|---|---|---|"
    )?;
    for loss in &args.losses {
        for side in ["recallseg", "PyTorch/smp"] {
            let mut acc = Vec::new();
            let mut iou = Vec::new();
            for &seed in &args.seeds {
                let sc = if side == "recallseg" {
                    our_scores(&args.out, loss, seed)?
                } else {
                    peer_scores(&peer_result_path(peer_dir, loss, seed))?
                };
                if let Some((a, i, first, secs)) = sc {
                    acc.push(a);
                    iou.push(i);
                    writeln!(
                        s,
                        "| {loss} | {side} | {seed} | {a:.2} | {i:.2} | {} | {secs:.0} |",
                        first.map_or("-".into(), |f| format!("{f:.3}"))
                    )?;
                }
            }
            if !acc.is_empty() {
                let (am, asd) = mean_std(&acc);
                let (im, isd) = mean_std(&iou);
                writeln!(
                    summary,
                    "| {loss} | {side} | {} | {am:.2} ± {asd:.2} | {im:.2} ± {isd:.2} |",
                    acc.len()
                )?;
            }
        }
    }
    s.push_str(&summary);
    Ok(s)
}
