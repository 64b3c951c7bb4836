//! The `recallseg` command line (clap): `train`, `eval`, `predict`, `preset`.

use crate::config::{DeviceSpec, Preset, TrainConfig};
use crate::eval::evaluate;
use crate::train::{install_ctrlc, interrupt_flag, load_for_inference, open_eval, TrainOptions};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Train, evaluate and run DeepLab segmentation models with Recall loss (Tian et al., ICRA 2022).
///
/// Start with `recallseg preset synthia-quick > my.toml`, edit it, then
/// `recallseg train --config my.toml`. `cargo xtask reproduce synthia --quick` runs the paper's
/// whole loss comparison on generated data.
#[derive(Parser, Debug)]
#[command(name = "recallseg", version, about, long_about)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model from a TOML config (or a preset), writing checkpoints and a log.
    Train(TrainArgs),
    /// Evaluate a checkpoint on a dataset split and print per-class accuracy and IoU.
    Eval(EvalArgs),
    /// Segment images with a checkpoint and write colourised PNGs.
    Predict(PredictArgs),
    /// Print a preset configuration (synthia, synthia-quick, cityscapes) as commented TOML.
    Preset {
        /// synthia (the paper's protocol), synthia-quick (minutes on a CPU), cityscapes.
        name: String,
    },
}

/// `recallseg train`.
#[derive(Args, Debug, Clone)]
#[command(after_help = "Examples:\n  \
    recallseg train --preset synthia-quick\n  \
    recallseg train --config my.toml --set train.iters=2000 --set loss.name=focal\n  \
    recallseg train --config my.toml --resume        # continue after Ctrl-C\n")]
pub struct TrainArgs {
    /// The TOML configuration (see `recallseg preset synthia`).
    #[arg(long, conflicts_with = "preset")]
    pub config: Option<PathBuf>,
    /// A built-in configuration instead of a file: synthia, synthia-quick, cityscapes.
    #[arg(long)]
    pub preset: Option<String>,
    /// Override a config field, e.g. `--set optim.lr=1e-4` (repeatable; TOML values).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Loss to train with (shorthand for `--set loss.name=…`): cross_entropy, weighted_ce,
    /// balanced_ce, focal, ohem, soft_iou, lovasz, dice, tversky, recall_ce, precision_ce.
    #[arg(long)]
    pub loss: Option<String>,
    /// Dataset root (shorthand for `--set data.root=…`).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Output folder (shorthand for `--set train.out_dir=…`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Number of steps (shorthand for `--set train.iters=…`).
    #[arg(long)]
    pub iters: Option<usize>,
    /// Device: cpu, cuda, cuda:N, metal (shorthand for `--set train.device=…`).
    #[arg(long)]
    pub device: Option<String>,
    /// Continue from `OUT/last.safetensors` (bit for bit on the CPU).
    #[arg(long)]
    pub resume: bool,
    /// Plain log lines even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
}

impl TrainArgs {
    /// The overrides these arguments stand for, in order (`--set` first, shorthands after).
    pub fn overrides(&self) -> Vec<String> {
        let mut o = self.set.clone();
        let q = |p: &std::path::Path| format!("{:?}", p.display().to_string());
        if let Some(l) = &self.loss {
            // Switching the loss drops the old loss's parameters.
            o.push(format!("loss={{ name = {l:?} }}"));
        }
        if let Some(d) = &self.data {
            o.push(format!("data.root={}", q(d)));
        }
        if let Some(d) = &self.out {
            o.push(format!("train.out_dir={}", q(d)));
        }
        if let Some(n) = self.iters {
            o.push(format!("train.iters={n}"));
        }
        if let Some(d) = &self.device {
            o.push(format!("train.device={d:?}"));
        }
        o
    }

    /// The configuration these arguments describe, validated.
    pub fn config(&self) -> anyhow::Result<TrainConfig> {
        let o = self.overrides();
        Ok(match (&self.config, &self.preset) {
            (Some(path), _) => TrainConfig::from_file(path, &o)?,
            (None, Some(p)) => Preset::from_name(p)?.config(&o)?,
            (None, None) => anyhow::bail!(
                "give --config FILE or --preset NAME (synthia, synthia-quick, cityscapes)"
            ),
        })
    }
}

/// `recallseg eval`.
#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Example:\n  recallseg eval --checkpoint runs/synthia/best.safetensors --split test\n"
)]
pub struct EvalArgs {
    /// A checkpoint written by `recallseg train` (`last.safetensors` or `best.safetensors`).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Dataset root (default: the one the checkpoint was trained on).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Split to evaluate: train, val or test.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Device: cpu, cuda, cuda:N, metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Evaluate at most this many images (0 = all).
    #[arg(long, default_value_t = 0)]
    pub max_images: usize,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `recallseg predict`.
#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Example:\n  recallseg predict --checkpoint runs/synthia/best.safetensors street.png -o out/\n"
)]
pub struct PredictArgs {
    /// A checkpoint written by `recallseg train`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Images to segment (PNG or JPEG).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Output folder for the colourised segmentations (`<image stem>.png`).
    #[arg(short = 'o', long = "out")]
    pub out: PathBuf,
    /// Device: cpu, cuda, cuda:N, metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Also write the raw train ids as a grey-level PNG (`<stem>_labels.png`).
    #[arg(long)]
    pub labels: bool,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(a) => train(&a),
        Command::Eval(a) => eval(&a),
        Command::Predict(a) => predict(&a),
        Command::Preset { name } => {
            print!("{}", Preset::from_name(&name)?.toml());
            Ok(())
        }
    }
}

/// `recallseg train`.
pub fn train(a: &TrainArgs) -> anyhow::Result<()> {
    let cfg = a.config()?;
    install_ctrlc();
    let opts = TrainOptions {
        resume: a.resume,
        interrupt: Some(interrupt_flag()),
        progress_bar: !a.no_progress && crate::log::Progress::stderr_is_terminal(),
        quiet: false,
        label: None,
        stop_after: None,
    };
    let o = crate::train::train(&cfg, &opts)?;
    eprintln!(
        "{} at step {}: {} (best validation mean IoU {})",
        if o.finished { "finished" } else { "stopped" },
        o.step,
        o.last_checkpoint.display(),
        o.best.map_or("-".into(), |(v, s)| format!(
            "{:.2}% at step {s}",
            100.0 * v
        ))
    );
    Ok(())
}

/// `recallseg eval`.
pub fn eval(a: &EvalArgs) -> anyhow::Result<()> {
    let (report, images) = eval_checkpoint(a)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} ({} split, {images} images):\n",
            a.checkpoint.display(),
            a.split
        );
        print!("{report}");
    }
    Ok(())
}

/// Evaluates a checkpoint as `recallseg eval` does; returns the report and the image count.
pub fn eval_checkpoint(a: &EvalArgs) -> anyhow::Result<(recallseg_metrics::Report, usize)> {
    let device = DeviceSpec::parse(&a.device)
        .map_err(|m| anyhow::anyhow!("--device: {m}"))?
        .open()?;
    let (built, mut cfg, classes, _) = load_for_inference(&a.checkpoint, &device)?;
    if let Some(d) = &a.data {
        cfg.data.root = d.clone();
    }
    cfg.data.max_eval_images = a.max_images;
    let (ds, loader) = open_eval(&cfg, &a.split)?;
    if ds.class_info().names != classes.names {
        anyhow::bail!(
            "{} has classes {:?}, the checkpoint was trained on {:?}",
            cfg.data.root.display(),
            ds.class_info().names,
            classes.names
        );
    }
    let out = evaluate(&built.model, &loader, &device, 0)?;
    let report = out.matrix.report_with_names(&classes.names)?;
    Ok((report, out.images))
}

/// `recallseg predict`.
pub fn predict(a: &PredictArgs) -> anyhow::Result<()> {
    let device = DeviceSpec::parse(&a.device)
        .map_err(|m| anyhow::anyhow!("--device: {m}"))?
        .open()?;
    let (built, cfg, classes, norm) = load_for_inference(&a.checkpoint, &device)?;
    let (net_h, net_w) = cfg.data.eval_size();
    std::fs::create_dir_all(&a.out)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", a.out.display()))?;
    for path in &a.images {
        let img = image::open(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            .to_rgb8();
        let (w, h) = (img.width() as usize, img.height() as usize);
        let labels = crate::predict::predict_rgb(
            &built.model,
            &device,
            &norm,
            img.as_raw(),
            w,
            h,
            net_h,
            net_w,
        )?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        let colour = crate::report::colorize(&labels, &classes.palette);
        let dst = a.out.join(format!("{stem}.png"));
        image::save_buffer(
            &dst,
            &colour,
            w as u32,
            h as u32,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| anyhow::anyhow!("{}: {e}", dst.display()))?;
        if a.labels {
            let dst = a.out.join(format!("{stem}_labels.png"));
            image::save_buffer(
                &dst,
                &labels,
                w as u32,
                h as u32,
                image::ExtendedColorType::L8,
            )
            .map_err(|e| anyhow::anyhow!("{}: {e}", dst.display()))?;
        }
        eprintln!(
            "{} -> {}",
            path.display(),
            a.out.join(format!("{stem}.png")).display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("recallseg").chain(args.iter().copied()))
    }

    #[test]
    fn train_flags_become_overrides() {
        let cli = parse(&[
            "train",
            "--preset",
            "synthia-quick",
            "--set",
            "optim.lr=2e-4",
            "--loss",
            "focal",
            "--iters",
            "12",
            "--device",
            "cuda:1",
            "--out",
            "runs/x",
            "--resume",
        ])
        .unwrap();
        let Command::Train(a) = cli.command else {
            panic!("not train")
        };
        assert!(a.resume);
        let cfg = a.config().unwrap();
        assert_eq!(cfg.optim.lr, 2e-4);
        assert_eq!(cfg.loss_name(), "focal");
        assert_eq!(cfg.train.iters, 12);
        assert_eq!(cfg.train.device, "cuda:1");
        assert_eq!(cfg.train.out_dir, PathBuf::from("runs/x"));
    }

    #[test]
    fn train_needs_a_config_and_reports_bad_fields() {
        let Command::Train(a) = parse(&["train"]).unwrap().command else {
            panic!()
        };
        assert!(a
            .config()
            .unwrap_err()
            .to_string()
            .contains("--config FILE"));
        let Command::Train(a) = parse(&[
            "train",
            "--preset",
            "synthia",
            "--set",
            "model.output_stride=12",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        assert_eq!(
            a.config().unwrap_err().to_string(),
            "model.output_stride: 12 is not one of 8, 16"
        );
        assert!(parse(&["train", "--config", "a.toml", "--preset", "synthia"]).is_err());
        let Command::Train(a) = parse(&["train", "--config", "/nonexistent/x.toml"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert!(a
            .config()
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/x.toml"));
    }

    #[test]
    fn eval_and_predict_arguments() {
        let Command::Eval(e) = parse(&["eval", "--checkpoint", "c.safetensors"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(e.split, "test");
        assert_eq!(e.device, "cpu");
        let Command::Predict(p) = parse(&[
            "predict",
            "--checkpoint",
            "c.safetensors",
            "a.png",
            "b.png",
            "-o",
            "out",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        assert_eq!(p.images.len(), 2);
        assert_eq!(p.out, PathBuf::from("out"));
        // An image is required.
        assert!(parse(&["predict", "--checkpoint", "c", "-o", "out"]).is_err());
        assert!(parse(&["eval"]).is_err());
    }

    #[test]
    fn help_is_complete() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        for w in ["train", "eval", "predict", "preset"] {
            assert!(help.contains(w), "{w}");
        }
    }
}
