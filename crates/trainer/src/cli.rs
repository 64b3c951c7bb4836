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
    /// Replace the run OUT already holds (its checkpoints and log are removed first). Without
    /// it or --resume, a folder holding a run is refused.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Plain log lines even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
}

impl TrainArgs {
    /// The overrides these arguments stand for, in order (`--set` first, shorthands after).
    /// Fails for a path that is not valid UTF-8 (the configuration is TOML text; a lossy
    /// conversion would name another folder).
    pub fn overrides(&self) -> anyhow::Result<Vec<String>> {
        let mut o = self.set.clone();
        let q = |flag: &str, p: &std::path::Path| -> anyhow::Result<String> {
            let s = p.to_str().ok_or_else(|| {
                anyhow::anyhow!(
                    "{flag}: {p:?} is not valid UTF-8; the configuration is stored as TOML text, \
                     so use a path whose name is UTF-8 (e.g. a symbolic link to it)"
                )
            })?;
            // A TOML basic string: quotes, backslashes and control characters escaped.
            Ok(toml::Value::String(s.to_string()).to_string())
        };
        if let Some(l) = &self.loss {
            // Switching the loss drops the old loss's parameters.
            o.push(format!("loss={{ name = {l:?} }}"));
        }
        if let Some(d) = &self.data {
            o.push(format!("data.root={}", q("--data", d)?));
        }
        if let Some(d) = &self.out {
            o.push(format!("train.out_dir={}", q("--out", d)?));
        }
        if let Some(n) = self.iters {
            o.push(format!("train.iters={n}"));
        }
        if let Some(d) = &self.device {
            o.push(format!("train.device={d:?}"));
        }
        Ok(o)
    }

    /// The configuration these arguments describe, validated.
    pub fn config(&self) -> anyhow::Result<TrainConfig> {
        let o = self.overrides()?;
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
    /// Images to segment (PNG or JPEG, recognised by content whatever the extension).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Output folder for the colourised segmentations (`<image stem>.png`). Nothing is ever
    /// written over an input image, and two inputs with the same file stem are refused.
    #[arg(short = 'o', long = "out")]
    pub out: PathBuf,
    /// Device: cpu, cuda, cuda:N, metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Also write the raw train ids as a grey-level PNG (`<stem>_labels.png`).
    #[arg(long)]
    pub labels: bool,
}

/// Runs a parsed command line; returns the process exit status: 0 when the command completed,
/// `128 + signal` when a signal stopped a training run (130 for Ctrl-C, 143 for SIGTERM, 129 for
/// SIGHUP; its checkpoint is written).
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Train(a) => train(&a),
        Command::Eval(a) => eval(&a).map(|()| 0),
        Command::Predict(a) => predict(&a).map(|()| 0),
        Command::Preset { name } => {
            print!("{}", Preset::from_name(&name)?.toml());
            Ok(0)
        }
    }
}

/// `recallseg train`; returns the exit status (see [`run`]).
pub fn train(a: &TrainArgs) -> anyhow::Result<i32> {
    let cfg = a.config()?;
    install_ctrlc();
    let opts = TrainOptions {
        resume: a.resume,
        overwrite: a.overwrite,
        interrupt: Some(interrupt_flag()),
        progress_bar: !a.no_progress && crate::log::Progress::stderr_is_terminal(),
        quiet: false,
        label: None,
        stop_after: None,
    };
    let o = crate::train::train(&cfg, &opts)?;
    eprintln!(
        "{} at step {}: {} (best validation mean IoU {})",
        match (o.finished, o.stop_signal) {
            (true, _) if o.early_stopped => "stopped early (train.early_stop)".to_string(),
            (true, _) => "finished".to_string(),
            (false, Some(s)) => format!("stopped by {}", s.name()),
            (false, None) => "stopped".to_string(),
        },
        o.step,
        o.last_checkpoint.display(),
        o.best.map_or("-".into(), |(v, s)| format!(
            "{:.2}% at step {s}",
            100.0 * v
        ))
    );
    Ok(if o.finished {
        0
    } else {
        o.stop_signal
            .map_or(crate::signals::StopSignal::Interrupt.exit_code(), |s| {
                s.exit_code()
            })
    })
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
    recallseg_data::png_io::set_max_pixels(cfg.data.max_image_pixels)?;
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

/// The files `recallseg predict` writes for each input: the colour image and, with `--labels`,
/// the label map. Refuses (before anything is computed) when two outputs would have the same
/// path or an output would replace an input image.
pub fn predict_outputs(a: &PredictArgs) -> anyhow::Result<Vec<(PathBuf, Option<PathBuf>)>> {
    let outputs: Vec<(PathBuf, Option<PathBuf>)> = a
        .images
        .iter()
        .map(|path| {
            let stem = path
                .file_stem()
                .map(|s| s.to_os_string())
                .unwrap_or_else(|| "image".into());
            let with = |suffix: &str| {
                let mut name = stem.clone();
                name.push(suffix);
                a.out.join(name)
            };
            (with(".png"), a.labels.then(|| with("_labels.png")))
        })
        .collect();
    // Compare canonical paths where the file exists (symbolic links, `./`), the plain path
    // otherwise; the output folder is canonicalised when it exists.
    let canon = |p: &std::path::Path| -> PathBuf {
        if let Ok(c) = p.canonicalize() {
            return c;
        }
        match (p.parent(), p.file_name()) {
            (Some(dir), Some(name)) => dir
                .canonicalize()
                .map_or_else(|_| p.to_path_buf(), |d| d.join(name)),
            _ => p.to_path_buf(),
        }
    };
    let mut seen: std::collections::HashMap<PathBuf, &std::path::Path> =
        std::collections::HashMap::new();
    for input in &a.images {
        seen.insert(canon(input), input);
    }
    for (input, (colour, labels)) in a.images.iter().zip(&outputs) {
        for out in std::iter::once(colour).chain(labels.as_ref()) {
            if let Some(other) = seen.insert(canon(out), input) {
                if a.images.iter().any(|i| canon(i) == canon(out)) {
                    anyhow::bail!(
                        "{} would be written over the input image {}; choose another output \
                         folder (-o)",
                        out.display(),
                        other.display()
                    );
                }
                anyhow::bail!(
                    "{} and {} would both be written to {}; segment them into different output \
                     folders or rename one",
                    other.display(),
                    input.display(),
                    out.display()
                );
            }
        }
    }
    Ok(outputs)
}

/// `recallseg predict`.
pub fn predict(a: &PredictArgs) -> anyhow::Result<()> {
    let outputs = predict_outputs(a)?;
    let device = DeviceSpec::parse(&a.device)
        .map_err(|m| anyhow::anyhow!("--device: {m}"))?
        .open()?;
    let (built, cfg, classes, norm) = load_for_inference(&a.checkpoint, &device)?;
    recallseg_data::png_io::set_max_pixels(cfg.data.max_image_pixels)?;
    let (net_h, net_w) = cfg.data.eval_size();
    std::fs::create_dir_all(&a.out)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", a.out.display()))?;
    for (path, (colour_path, labels_path)) in a.images.iter().zip(&outputs) {
        // By content (PNG or JPEG), whatever the extension; with the data crate's size limits.
        let img = recallseg_data::png_io::decode_rgb8(path)?;
        let (w, h) = (img.width, img.height);
        let labels = crate::predict::predict_rgb(
            &built.model,
            &device,
            &norm,
            &img.data,
            w,
            h,
            net_h,
            net_w,
        )?;
        let colour = crate::report::colorize(&labels, &classes.palette);
        image::save_buffer(
            colour_path,
            &colour,
            w as u32,
            h as u32,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| anyhow::anyhow!("{}: {e}", colour_path.display()))?;
        if let Some(dst) = labels_path {
            image::save_buffer(
                dst,
                &labels,
                w as u32,
                h as u32,
                image::ExtendedColorType::L8,
            )
            .map_err(|e| anyhow::anyhow!("{}: {e}", dst.display()))?;
        }
        eprintln!("{} -> {}", path.display(), colour_path.display());
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
            "model.output_stride: must be 8 or 16 (or 32), got 12"
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

    /// `--out`/`--data` with a name that is not UTF-8 used to be converted lossily (U+FFFD),
    /// writing into another folder; a config with such a path panicked in `to_toml`.
    #[cfg(unix)]
    #[test]
    fn non_utf8_paths_are_clear_errors() {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt;
        let bad = PathBuf::from(OsString::from_vec(b"runs/x\xff".to_vec()));
        for flag in ["--out", "--data"] {
            let cli = Cli::try_parse_from([
                OsString::from("recallseg"),
                "train".into(),
                "--preset".into(),
                "synthia-quick".into(),
                flag.into(),
                bad.clone().into_os_string(),
            ])
            .unwrap();
            let Command::Train(a) = cli.command else {
                panic!()
            };
            let e = a.config().unwrap_err().to_string();
            assert!(e.contains(flag) && e.contains("not valid UTF-8"), "{e}");
        }
        let mut cfg = Preset::SynthiaQuick.config(&[]).unwrap();
        cfg.train.out_dir = bad;
        let e = cfg.validate().unwrap_err().to_string();
        assert!(
            e.starts_with("train.out_dir:") && e.contains("UTF-8"),
            "{e}"
        );
        assert!(cfg.to_toml().is_err());
    }

    #[test]
    fn quotes_and_backslashes_in_paths_survive_the_overrides() {
        let Command::Train(a) = parse(&[
            "train",
            "--preset",
            "synthia-quick",
            "--out",
            r#"runs/a "b" \c"#,
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        assert_eq!(
            a.config().unwrap().train.out_dir,
            PathBuf::from(r#"runs/a "b" \c"#)
        );
    }

    #[test]
    fn predict_never_writes_over_an_input_nor_twice_to_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("a")).unwrap();
        std::fs::create_dir_all(d.join("b")).unwrap();
        for f in ["a/street.png", "b/street.jpg", "a/x.png", "a/x_labels.png"] {
            std::fs::write(d.join(f), b"img").unwrap();
        }
        let args = |images: &[&str], out: &str, labels: bool| PredictArgs {
            checkpoint: d.join("c.safetensors"),
            images: images.iter().map(|i| d.join(i)).collect(),
            out: d.join(out),
            device: "cpu".into(),
            labels,
        };
        // -o is the input's folder: the output would replace the input.
        let e = predict_outputs(&args(&["a/street.png"], "a", false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("over the input image"), "{e}");
        // Also through another spelling of the folder.
        let e = predict_outputs(&args(&["a/street.png"], "b/../a", false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("over the input image"), "{e}");
        // Two inputs with the same stem.
        let e = predict_outputs(&args(&["a/street.png", "b/street.jpg"], "out", false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("would both be written to"), "{e}");
        // `x.png --labels` writes x_labels.png: the input of that name is protected.
        let e = predict_outputs(&args(&["a/x.png", "a/x_labels.png"], "a", true))
            .unwrap_err()
            .to_string();
        assert!(e.contains("over the input image"), "{e}");
        // Distinct stems into a new folder: fine.
        let outs = predict_outputs(&args(&["a/street.png", "a/x.png"], "out", true)).unwrap();
        assert_eq!(outs.len(), 2);
        assert_eq!(outs[1].0, d.join("out/x.png"));
        assert_eq!(
            outs[1].1.as_deref(),
            Some(d.join("out/x_labels.png").as_path())
        );
    }
}
