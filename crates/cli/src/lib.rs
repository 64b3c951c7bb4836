//! The `recallseg` command line (clap): `train`, `eval`, `predict`, `compare`, `export`,
//! `stats`, `plot`, `preset`. A binary crate: this library target exists for the binary and its
//! tests, not as an API (the libraries are `recallseg-trainer`, `recallseg-compare` and
//! `recallseg-report`).

#![warn(missing_docs)]

/// `eprintln!` that never panics (`recallseg_trainer::console::note_line`).
macro_rules! note {
    ($($arg:tt)*) => { ::recallseg_trainer::console::note_line(::std::format_args!($($arg)*)) };
}

/// `println!` that returns `anyhow::Result<()>` instead of panicking
/// (`recallseg_trainer::console::out_line`).
macro_rules! out {
    ($($arg:tt)*) => { ::recallseg_trainer::console::out_line(::std::format_args!($($arg)*)) };
}

use clap::{Args, Parser, Subcommand};
use recallseg_report::{render_overlay, OverlayOptions};
use recallseg_trainer::config::{DeviceSpec, Preset, TrainConfig};
use recallseg_trainer::eval::{evaluate_per_image, evaluate_with};
use recallseg_trainer::inference::{InferenceConfig, InferenceMode};
use recallseg_trainer::predict::{Predictor, PredictorOptions};
use recallseg_trainer::signals::interrupt_flag;
use recallseg_trainer::train::{install_ctrlc, open_eval, TrainOptions};

mod runs;
pub mod runtime;
pub use runs::{compare, CompareArgs};
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
    /// Segment images with a checkpoint: colour masks, overlays with a legend, label maps.
    Predict(PredictArgs),
    /// Compare losses on any dataset (a folder dataset too): one run per loss, each tested,
    /// then the paper-style report with its tables and figures.
    Compare(CompareArgs),
    /// Write a trained model's parameters under PyTorch names (smp's DeepLabV3Plus or
    /// torchvision's deeplabv3_resnet50/101) as safetensors.
    Export(ExportArgs),
    /// Measure a dataset split: per-channel mean/std and class pixel shares, with the
    /// `normalize` line to paste into a folder dataset's description.
    Stats(StatsArgs),
    /// Draw training curves of one or several runs (loss, learning rate, validation mean
    /// accuracy / mean IoU, per-class recall) into `training.svg` and `training.png`.
    Plot(PlotArgs),
    /// Print a preset configuration (synthia, synthia-quick, cityscapes) as commented TOML.
    Preset {
        /// synthia (the paper's protocol), synthia-quick (minutes on a CPU), cityscapes.
        name: String,
    },
}

/// `recallseg plot`.
#[derive(Args, Debug, Clone)]
#[command(after_help = "Examples:\n  \
    recallseg plot runs/recall                     # writes runs/recall/training.svg and .png\n  \
    recallseg plot runs/ce runs/focal runs/recall --out runs/curves\n")]
pub struct PlotArgs {
    /// Run folders (each with its `log.jsonl`); each is one colour, named by its folder.
    #[arg(required = true, value_name = "RUN_DIR")]
    pub runs: Vec<PathBuf>,
    /// Folder to write `training.svg` and `training.png` into (default: the first run folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `recallseg plot`: draws the runs' training curves and prints the files written.
pub fn plot(a: &PlotArgs) -> anyhow::Result<()> {
    let out = a.out.clone().unwrap_or_else(|| a.runs[0].clone());
    for f in recallseg_compare::draw_run_curves(&a.runs, &out)? {
        out!("wrote {}", f.display())?;
    }
    Ok(())
}

/// `recallseg train`.
#[derive(Args, Debug, Clone)]
#[command(after_help = "Examples:\n  \
    recallseg train --preset synthia-quick\n  \
    recallseg train --config my.toml --set train.iters=2000 --set loss.name=focal\n  \
    recallseg train --config my.toml --resume        # continue after Ctrl-C\n")]
pub struct TrainArgs {
    /// The configuration: `--config`/`--preset`, `--set`, `--data`.
    #[command(flatten)]
    pub source: ConfigSource,
    /// Loss to train with (shorthand for `--set loss.name=…`): cross_entropy, weighted_ce,
    /// balanced_ce, focal, ohem, soft_iou, lovasz, dice, tversky, recall_ce, precision_ce.
    #[arg(long)]
    pub loss: Option<String>,
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
    /// Data-parallel training: `auto` joins the MPI job that launched this process (`mpirun
    /// -np N recallseg train …`, `srun`; needs the `mpi` feature) and otherwise trains alone;
    /// `off` always trains alone; `mpi` always initialises MPI.
    #[arg(long, default_value = "auto", value_parser = distributed_parser())]
    pub distributed: recallseg_trainer::distributed::DistributedBackend,
}

/// `--distributed`: one of [`DistributedBackend::ALL`](recallseg_trainer::distributed::DistributedBackend::ALL)
/// by name, listed by `--help`.
fn distributed_parser(
) -> impl clap::builder::TypedValueParser<Value = recallseg_trainer::distributed::DistributedBackend>
{
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(
        recallseg_trainer::distributed::DistributedBackend::ALL.map(|b| b.name()),
    )
    .try_map(|s| s.parse::<recallseg_trainer::distributed::DistributedBackend>())
}

/// Where a command's configuration comes from: a TOML file or a built-in preset, changed field
/// by field (`recallseg train`, `stats` and `compare` flatten it into their arguments).
#[derive(Args, Debug, Clone, Default)]
pub struct ConfigSource {
    /// The TOML configuration (see `recallseg preset synthia`).
    #[arg(long, conflicts_with = "preset")]
    pub config: Option<PathBuf>,
    /// A built-in configuration instead of a file: synthia, synthia-quick, cityscapes.
    #[arg(long)]
    pub preset: Option<String>,
    /// Override a config field, e.g. `--set optim.lr=1e-4` (repeatable; TOML values).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Dataset root (shorthand for `--set data.root=…`); for `recallseg stats` without
    /// --config or --preset, a folder dataset's description file (`.toml` / `.json`).
    #[arg(long)]
    pub data: Option<PathBuf>,
}

impl ConfigSource {
    /// The overrides these arguments stand for: `--set` in order, then `--data`. Fails for a
    /// path that is not valid UTF-8 (the configuration is TOML text; a lossy conversion would
    /// name another folder).
    pub fn overrides(&self) -> anyhow::Result<Vec<String>> {
        let mut o = self.set.clone();
        if let Some(d) = &self.data {
            o.push(format!("data.root={}", toml_path("--data", d)?));
        }
        Ok(o)
    }

    /// The configuration, validated: the file or the preset with [`ConfigSource::overrides`],
    /// then `extra` (a command's own shorthands).
    pub fn load(&self, extra: &[String]) -> anyhow::Result<TrainConfig> {
        let mut o = self.overrides()?;
        o.extend_from_slice(extra);
        Ok(match (&self.config, &self.preset) {
            (Some(path), _) => TrainConfig::from_file(path, &o)?,
            (None, Some(p)) => Preset::from_name(p)?.config(&o)?,
            (None, None) => anyhow::bail!(
                "give --config FILE or --preset NAME (synthia, synthia-quick, cityscapes)"
            ),
        })
    }

    /// A short name for the configuration: the file's stem or the preset's name.
    pub fn stem(&self) -> Option<String> {
        match (&self.config, &self.preset) {
            (Some(c), _) => c.file_stem().map(|s| s.to_string_lossy().into_owned()),
            (None, Some(p)) => Some(p.clone()),
            (None, None) => None,
        }
    }
}

/// `p` as a TOML basic string for an override of `flag` (quotes, backslashes and control
/// characters escaped); an error for a path that is not valid UTF-8.
fn toml_path(flag: &str, p: &std::path::Path) -> anyhow::Result<String> {
    let s = p.to_str().ok_or_else(|| {
        anyhow::anyhow!(
            "{flag}: {p:?} is not valid UTF-8; the configuration is stored as TOML text, \
             so use a path whose name is UTF-8 (e.g. a symbolic link to it)"
        )
    })?;
    Ok(toml::Value::String(s.to_string()).to_string())
}

/// The overrides of the shorthands `--iters` and `--device` that `train` and `compare` share.
fn run_shorthands(iters: Option<usize>, device: Option<&str>) -> Vec<String> {
    let mut o = Vec::new();
    if let Some(n) = iters {
        o.push(format!("train.iters={n}"));
    }
    if let Some(d) = device {
        o.push(format!("train.device={d:?}"));
    }
    o
}

impl TrainArgs {
    /// The overrides these arguments stand for, in order (`--set`, `--data`, then the other
    /// shorthands). Fails for a path that is not valid UTF-8.
    pub fn overrides(&self) -> anyhow::Result<Vec<String>> {
        let mut o = self.source.overrides()?;
        o.extend(self.shorthands()?);
        Ok(o)
    }

    /// `--loss`, `--out`, `--iters`, `--device` as overrides.
    fn shorthands(&self) -> anyhow::Result<Vec<String>> {
        let mut o = Vec::new();
        if let Some(l) = &self.loss {
            // The same names and aliases as the library (`recall`, `ce`, …); switching the loss
            // drops the old loss's parameters.
            let name = recallseg_losses::LossConfig::from_name(l)
                .map_err(|e| anyhow::anyhow!("--loss: {e}"))?;
            o.push(format!("loss={{ name = {:?} }}", name.name()));
        }
        if let Some(d) = &self.out {
            o.push(format!("train.out_dir={}", toml_path("--out", d)?));
        }
        o.extend(run_shorthands(self.iters, self.device.as_deref()));
        Ok(o)
    }

    /// The configuration these arguments describe, validated.
    pub fn config(&self) -> anyhow::Result<TrainConfig> {
        self.source.load(&self.shorthands()?)
    }
}

/// `recallseg stats`.
#[derive(Args, Debug, Clone)]
#[command(after_help = "Examples:\n  \
    recallseg stats --config my.toml\n  \
    recallseg stats --data data/cracks/cracks.toml          # a folder dataset, no config\n  \
    recallseg stats --preset synthia-quick --split val --json\n")]
pub struct StatsArgs {
    /// The configuration whose dataset to measure, or `--data` alone: a folder dataset.
    #[command(flatten)]
    pub source: ConfigSource,
    /// Split to measure (default: the configuration's `data.train_split`, else `train`).
    #[arg(long)]
    pub split: Option<String>,
    /// Print the statistics as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What `recallseg stats` measured: the dataset's name, its class table, the statistics and
/// whether it is a folder dataset (whose description file takes a `normalize` entry).
pub struct StatsReport {
    /// The dataset split's name (`cracks-train`).
    pub name: String,
    /// Its classes.
    pub classes: recallseg_data::ClassInfo,
    /// The statistics (`recallseg_data::stats::dataset_stats`).
    pub stats: recallseg_data::stats::DatasetStats,
    /// Whether the dataset is a folder dataset.
    pub folder: bool,
}

impl StatsReport {
    /// The `normalize` line of a folder dataset's description file (0–255 scale).
    pub fn normalize_line(&self) -> String {
        let f = |v: [f64; 3]| format!("[{:.3}, {:.3}, {:.3}]", v[0], v[1], v[2]);
        format!(
            "normalize = {{ mean = {}, std = {} }}",
            f(self.stats.mean),
            f(self.stats.std)
        )
    }

    /// The text `recallseg stats` prints: channel statistics, class pixel shares and the line
    /// to paste.
    pub fn text(&self) -> String {
        let s = &self.stats;
        let mut t = format!(
            "{}: {} images, {} pixels at stored resolution\n\nchannel     mean      std   (0-255 scale, std over all pixels, ddof 0)\n",
            self.name, s.images, s.pixels
        );
        for (c, name) in ["R", "G", "B"].iter().enumerate() {
            t += &format!("{name:<7} {:>8.3} {:>8.3}\n", s.mean[c], s.std[c]);
        }
        let width = self
            .classes
            .names
            .iter()
            .map(|n| n.chars().count())
            .max()
            .unwrap_or(5)
            .max(7);
        t += &format!("\n{:<width$} {:>14} {:>8}\n", "class", "pixels", "share");
        for ((name, px), share) in self
            .classes
            .names
            .iter()
            .zip(&s.class_pixels)
            .zip(s.class_shares())
        {
            t += &format!("{name:<width$} {px:>14} {:>7.3}%\n", 100.0 * share);
        }
        t += &format!(
            "{:<width$} {:>14}   (ignore index {} or not a class)\n",
            "ignored", s.ignored_pixels, self.classes.ignore_index
        );
        t += "\nColour statistics to paste into the dataset's description file (folder datasets; \
              the default is ImageNet's):\n";
        if !self.folder {
            t += "(this dataset kind normalises with ImageNet statistics and has no such entry; \
                  the line applies to a folder dataset of these images)\n";
        }
        t += &self.normalize_line();
        t.push('\n');
        t
    }
}

/// Measures the dataset `recallseg stats` is pointed at (see [`StatsArgs`]).
pub fn stats_report(a: &StatsArgs) -> anyhow::Result<StatsReport> {
    use recallseg_data::SegDataset;
    let src = &a.source;
    let (ds, folder): (std::sync::Arc<dyn SegDataset>, bool) = if src.config.is_none()
        && src.preset.is_none()
    {
        let Some(spec) = &src.data else {
            anyhow::bail!(
                "give --config FILE, --preset NAME, or --data FILE (a folder dataset's \
                 description)"
            );
        };
        if !src.set.is_empty() {
            anyhow::bail!("--set needs --config or --preset");
        }
        if spec.is_dir() {
            anyhow::bail!(
                "--data {}: a folder; alone, --data takes a folder dataset's description file \
                 (.toml or .json); for a Synthia or Cityscapes folder give --config or --preset \
                 as well",
                spec.display()
            );
        }
        let split =
            recallseg_trainer::data::parse_split("--split", a.split.as_deref().unwrap_or("train"))?;
        let ds = recallseg_data::FolderDataset::open(spec, split)?;
        if let Some(line) = recallseg_data::skipped_summary(ds.skipped()) {
            recallseg_trainer::console::warn_once(&line);
        }
        (std::sync::Arc::new(ds), true)
    } else {
        let cfg = src.load(&[])?;
        recallseg_data::png_io::set_max_pixels(cfg.data.max_image_pixels)?;
        if cfg.data.generate_synthetic {
            recallseg_trainer::data::ensure_synthetic(
                &cfg.data,
                &recallseg_trainer::data::quick_synthetic_config(),
            )?;
        }
        let name = a.split.as_deref().unwrap_or(&cfg.data.train_split);
        let ds = recallseg_trainer::data::open_split(
            &cfg.data,
            recallseg_trainer::data::parse_split("--split", name)?,
        )?;
        let is_train = name == cfg.data.train_split;
        let max = if is_train {
            cfg.data.max_train_images
        } else {
            cfg.data.max_eval_images
        };
        (
            recallseg_trainer::data::limit(ds, max),
            cfg.data.kind == recallseg_trainer::config::DatasetKind::Folder,
        )
    };
    let stats = recallseg_data::stats::dataset_stats(ds.as_ref())?;
    Ok(StatsReport {
        name: ds.name().to_string(),
        classes: ds.class_info().clone(),
        stats,
        folder,
    })
}

/// `recallseg stats`.
pub fn stats(a: &StatsArgs) -> anyhow::Result<()> {
    let r = stats_report(a)?;
    if a.json {
        let json = serde_json::json!({
            "dataset": r.name,
            "class_names": r.classes.names,
            "stats": r.stats,
            "class_shares": r.stats.class_shares(),
            "normalize": r.stats.normalize(),
        });
        out!("{}", serde_json::to_string_pretty(&json)?)?;
    } else {
        out!("{}", r.text().trim_end_matches('\n'))?;
    }
    Ok(())
}

/// `recallseg eval`.
#[derive(Args, Debug, Clone)]
#[command(after_help = "Examples:\n  \
    recallseg eval --checkpoint runs/synthia/best.safetensors --split test\n  \
    recallseg eval --checkpoint runs/city/best.safetensors --split val --mode slide --hflip\n")]
pub struct EvalArgs {
    /// A checkpoint written by `recallseg train` (`last.safetensors` or `best.safetensors`), or
    /// a run folder (its best checkpoint, else its last).
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
    /// Also average the scores this way: macro, micro, weighted or none (torchmetrics' names;
    /// default: the checkpoint configuration's `metrics.average`). The table's own means are
    /// always the paper's nanmean.
    #[arg(long)]
    pub average: Option<recallseg_metrics::Average>,
    /// What an undefined (0/0) score becomes in that average: "skip" (left out, numpy nanmean)
    /// or a number in [0, 1] (torchmetrics' zero_division; default: `metrics.zero_division`).
    #[arg(long)]
    pub zero_division: Option<recallseg_metrics::ZeroDivision>,
    /// β of the F-beta scores (default: `metrics.beta`, 1 unless set; with β ≠ 1 the table gets
    /// an F-beta column).
    #[arg(long)]
    pub beta: Option<f64>,
    /// Also score each image on its own (torchmetrics' `MeanIoU` per sample) and print the
    /// mean over images of each image's mean IoU (with --json: every image's figure too).
    #[arg(long)]
    pub per_image: bool,
    /// How the model is run (default: the checkpoint's `[inference]`).
    #[command(flatten)]
    pub inference: InferenceArgs,
}

/// Test-time options of `eval` and `predict`; each one given replaces that field of the
/// checkpoint's `[inference]` section.
#[derive(Args, Debug, Clone, Default, PartialEq)]
pub struct InferenceArgs {
    /// Inference mode: whole (one pass over the resized image) or slide (sliding windows,
    /// logits averaged where they overlap). --window or --stride alone imply slide.
    #[arg(long, value_name = "whole|slide")]
    pub mode: Option<String>,
    /// Sliding window HxW in pixels of the network input (default: the training size).
    #[arg(long, value_name = "HxW")]
    pub window: Option<String>,
    /// Step between sliding windows HxW (default: two thirds of the window).
    #[arg(long, value_name = "HxW")]
    pub stride: Option<String>,
    /// Test-time augmentation: also segment the mirrored image and average the logits.
    #[arg(long)]
    pub hflip: bool,
    /// Test-time augmentation: segment at these scales of the input and average, e.g.
    /// `--scales 0.75,1,1.25`.
    #[arg(long, value_name = "S,S,...", value_delimiter = ',')]
    pub scales: Option<Vec<f64>>,
}

/// `HxW` or `H,W` as `[H, W]`.
fn parse_hw(flag: &str, s: &str) -> anyhow::Result<[usize; 2]> {
    let parts: Vec<&str> = s.split(['x', 'X', ',']).map(str::trim).collect();
    match parts.as_slice() {
        [h, w] => match (h.parse(), w.parse()) {
            (Ok(h), Ok(w)) => Ok([h, w]),
            _ => anyhow::bail!("{flag} {s:?}: expected HEIGHTxWIDTH, e.g. 512x1024"),
        },
        _ => anyhow::bail!("{flag} {s:?}: expected HEIGHTxWIDTH, e.g. 512x1024"),
    }
}

impl InferenceArgs {
    /// Whether any option is given.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// `base` with the options given replacing its fields (checked when the predictor
    /// resolves it).
    pub fn apply(&self, base: &InferenceConfig) -> anyhow::Result<InferenceConfig> {
        let mut c = base.clone();
        if let Some(m) = &self.mode {
            c.mode = InferenceMode::parse(m).map_err(|e| anyhow::anyhow!("--mode: {e}"))?;
        } else if self.window.is_some() || self.stride.is_some() {
            c.mode = InferenceMode::Slide;
        }
        if c.mode == InferenceMode::Whole {
            c.window = None;
            c.stride = None;
        }
        if let Some(w) = &self.window {
            c.window = Some(parse_hw("--window", w)?);
        }
        if let Some(s) = &self.stride {
            c.stride = Some(parse_hw("--stride", s)?);
        }
        if self.hflip {
            c.hflip = true;
        }
        if let Some(s) = &self.scales {
            c.scales = s.clone();
        }
        Ok(c)
    }
}

/// `recallseg predict`.
#[derive(Args, Debug, Clone)]
#[command(after_help = "Examples:\n  \
    recallseg predict --checkpoint runs/synthia/best.safetensors street.png -o out/\n  \
    recallseg predict --checkpoint runs/city street.png -o out/ --window 512x1024 --hflip --labels\n\n\
    For each image: out/<stem>.png (colour mask), out/<stem>_overlay.png (image and mask blended,\n\
    legend of the classes), with --labels out/<stem>_labels.png (train ids, grey levels).\n")]
pub struct PredictArgs {
    /// A checkpoint written by `recallseg train`, or a run folder (its best checkpoint, else
    /// its last).
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
    /// Also write the raw train ids as a grey-level PNG (`<stem>_labels.png`), for programs.
    #[arg(long)]
    pub labels: bool,
    /// Do not write the overlay (`<stem>_overlay.png`: the image blended with the colour mask,
    /// a legend of the classes under it).
    #[arg(long)]
    pub no_overlay: bool,
    /// Weight of the class colours in the overlay, 0 (image only) to 1 (mask only).
    #[arg(long, default_value_t = 0.5)]
    pub alpha: f32,
    /// How the model is run (default: the checkpoint's `[inference]`).
    #[command(flatten)]
    pub inference: InferenceArgs,
}

/// `recallseg export`.
#[derive(Args, Debug, Clone)]
#[command(after_help = "Examples:\n  \
    recallseg export --checkpoint runs/smp --format smp --out model.safetensors\n  \
    recallseg export --checkpoint runs/v3/best.safetensors --format torchvision --out m.safetensors\n\n\
    In PyTorch (the file's metadata holds the constructor's arguments, the class names and the\n\
    normalisation):\n  \
    m = smp.DeepLabV3Plus(encoder_name=\"resnet18\", encoder_weights=None, classes=K, ...)\n  \
    m.load_state_dict(safetensors.torch.load_file(\"model.safetensors\"), strict=True)\n")]
pub struct ExportArgs {
    /// A checkpoint written by `recallseg train`, or a run folder (its best checkpoint, else
    /// its last).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// smp (segmentation_models_pytorch's DeepLabV3Plus: needs model.layout = "smp", width 64)
    /// or torchvision (deeplabv3_resnet50/101: DeepLabV3 head, output stride 8).
    #[arg(long)]
    pub format: String,
    /// The safetensors file to write.
    #[arg(long)]
    pub out: PathBuf,
}

/// `recallseg export`.
pub fn export(a: &ExportArgs) -> anyhow::Result<()> {
    let format = recallseg_models::ExportFormat::parse(&a.format)
        .map_err(|e| anyhow::anyhow!("--format: {e}"))?;
    let s = recallseg_trainer::export::export_checkpoint(&a.checkpoint, format, &a.out)?;
    note!(
        "{} -> {} ({})",
        s.checkpoint.display(),
        a.out.display(),
        s.metadata
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "class_names" | "mean" | "std"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Runs a parsed command line; returns the process exit status: 0 when the command completed,
/// `128 + signal` when a signal stopped a training run (130 for Ctrl-C, 143 for SIGTERM, 129 for
/// SIGHUP; its checkpoint is written).
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Train(a) => train(&a),
        Command::Eval(a) => eval(&a).map(|()| 0),
        Command::Predict(a) => predict(&a).map(|()| 0),
        Command::Compare(a) => compare(&a),
        Command::Export(a) => export(&a).map(|()| 0),
        Command::Stats(a) => stats(&a).map(|()| 0),
        Command::Plot(a) => plot(&a).map(|()| 0),
        Command::Preset { name } => {
            out!(
                "{}",
                Preset::from_name(&name)?.toml().trim_end_matches('\n')
            )?;
            Ok(0)
        }
    }
}

/// `recallseg train`; returns the exit status (see [`run`]).
pub fn train(a: &TrainArgs) -> anyhow::Result<i32> {
    let cfg = a.config()?;
    install_ctrlc();
    let group = recallseg_trainer::distributed::join(a.distributed, &cfg.train.device)?;
    let ranks = group.communicator.as_ref().map_or(1, |c| c.size());
    if ranks > 1 && group.rank() == 0 {
        note!(
            "data-parallel training on {ranks} ranks (batch {} split into {} shards of {})",
            cfg.train.batch_size,
            ranks * cfg.train.accumulate,
            cfg.train.batch_size / (ranks * cfg.train.accumulate).max(1)
        );
    }
    let opts = TrainOptions {
        resume: a.resume,
        overwrite: a.overwrite,
        interrupt: Some(interrupt_flag()),
        progress_bar: !a.no_progress && recallseg_trainer::log::Progress::stderr_is_terminal(),
        quiet: false,
        label: None,
        stop_after: None,
        skip_test: false,
        communicator: group.communicator.clone(),
    };
    let o = recallseg_trainer::train::train(&cfg, &opts).map_err(|e| group.fail(e))?;
    group.finish()?;
    let status = if o.finished {
        0
    } else {
        o.stop_signal.map_or(
            recallseg_trainer::signals::StopSignal::Interrupt.exit_code(),
            |s| s.exit_code(),
        )
    };
    if group.rank() != 0 {
        // Rank 0 reports the run.
        return Ok(status);
    }
    note!(
        "{} at step {}: {} (best validation mean IoU {})",
        match (o.finished, o.stop_signal) {
            (true, _) if o.early_stopped => "stopped early (train.early_stop)".to_string(),
            (true, _) => "finished".to_string(),
            (false, Some(s)) => format!("stopped by {} (continue with --resume)", s.name()),
            (false, None) => "stopped (continue with --resume)".to_string(),
        },
        o.step,
        o.last_checkpoint.display(),
        o.best.map_or("-".into(), |(v, s)| format!(
            "{:.2}% at step {s}",
            100.0 * v
        ))
    );
    Ok(status)
}

/// `recallseg eval`.
pub fn eval(a: &EvalArgs) -> anyhow::Result<()> {
    let (report, images, per_image) = eval_checkpoint_per_image(a)?;
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        if let (Some(p), Some(obj)) = (&per_image, v.as_object_mut()) {
            obj.insert("per_image".into(), serde_json::to_value(p)?);
        }
        out!("{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        out!(
            "{} ({} split, {images} images):\n",
            a.checkpoint.display(),
            a.split
        )?;
        out!("{}", report.to_string().trim_end_matches('\n'))?;
        if let Some(p) = &per_image {
            out!("\n{}", per_image_line(p))?;
        }
    }
    Ok(())
}

/// The `eval --per-image` line: the mean over images of each image's mean IoU.
pub fn per_image_line(p: &recallseg_metrics::PerImageScores) -> String {
    match p.mean_of_images.value {
        Some(v) => format!(
            "mean per-image IoU: {:.2} % (over {} of {} images)",
            100.0 * v,
            p.mean_of_images.classes,
            p.images
        ),
        None => format!(
            "mean per-image IoU: n/a (no counted pixel in {} images)",
            p.images
        ),
    }
}

/// Evaluates a checkpoint as `recallseg eval` does; returns the report and the image count.
pub fn eval_checkpoint(a: &EvalArgs) -> anyhow::Result<(recallseg_metrics::Report, usize)> {
    let (report, images, _) = eval_checkpoint_per_image(a)?;
    Ok((report, images))
}

/// [`eval_checkpoint`] that also returns the per-image scores when `a.per_image` is set.
pub fn eval_checkpoint_per_image(
    a: &EvalArgs,
) -> anyhow::Result<(
    recallseg_metrics::Report,
    usize,
    Option<recallseg_metrics::PerImageScores>,
)> {
    let device = DeviceSpec::parse(&a.device)
        .map_err(|m| anyhow::anyhow!("--device: {m}"))?
        .open()?;
    let p = open_predictor(&a.checkpoint, device.clone(), &a.inference)?;
    let classes = p.classes().clone();
    let mut cfg = p.config().clone();
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
    // The metric options, checked before the (long) evaluation.
    let mut metrics = cfg.metrics;
    metrics.beta = a.beta.unwrap_or(metrics.beta);
    metrics.zero_division = a.zero_division.unwrap_or(metrics.zero_division);
    metrics
        .validate()
        .map_err(|(field, m)| anyhow::anyhow!("--beta / --zero-division: metrics.{field}: {m}"))?;
    let (beta, zero_division) = (metrics.beta, metrics.zero_division);
    // `none` is fine here (unlike in `[metrics]`, where it would be a headline mean): the
    // per-class values are printed.
    let averaging =
        recallseg_metrics::Averaging::new(a.average.unwrap_or(metrics.average), zero_division);
    let out = if a.per_image {
        evaluate_per_image(p.model(), &loader, &device, 0, p.inference())?
    } else {
        evaluate_with(p.model(), &loader, &device, 0, p.inference())?
    };
    let report = out
        .matrix
        .report_with_names(&classes.names)?
        .with_beta(beta)?;
    let report = if averaging == recallseg_metrics::Averaging::NANMEAN {
        report
    } else {
        report.with_averaging(averaging)?
    };
    Ok((report, out.images, out.per_image.map(|p| p.scores())))
}

/// Opens a checkpoint or run folder as a [`Predictor`] on `device`, with the inference options
/// given on the command line replacing the stored ones.
pub fn open_predictor(
    checkpoint: &std::path::Path,
    device: candle_core::Device,
    inference: &InferenceArgs,
) -> anyhow::Result<Predictor> {
    let p = Predictor::open(
        checkpoint,
        &PredictorOptions {
            device,
            ..PredictorOptions::default()
        },
    )?;
    if inference.is_empty() {
        return Ok(p);
    }
    let cfg = inference.apply(&p.config().inference)?;
    p.with_inference(&cfg)
}

/// The files `recallseg predict` writes for one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PredictOutputs {
    /// The colour mask, `<stem>.png`.
    pub colour: PathBuf,
    /// The overlay with its legend, `<stem>_overlay.png` (unless `--no-overlay`).
    pub overlay: Option<PathBuf>,
    /// The train ids, `<stem>_labels.png` (with `--labels`).
    pub labels: Option<PathBuf>,
}

impl PredictOutputs {
    /// Every path, colour mask first.
    pub fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        std::iter::once(&self.colour)
            .chain(self.overlay.as_ref())
            .chain(self.labels.as_ref())
    }
}

/// The files `recallseg predict` writes for each input ([`PredictOutputs`]). Refuses (before
/// anything is computed) when two outputs would have the same path or an output would replace
/// an input image.
pub fn predict_outputs(a: &PredictArgs) -> anyhow::Result<Vec<PredictOutputs>> {
    let outputs: Vec<PredictOutputs> = a
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
            PredictOutputs {
                colour: with(".png"),
                overlay: (!a.no_overlay).then(|| with("_overlay.png")),
                labels: a.labels.then(|| with("_labels.png")),
            }
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
    for (input, outs) in a.images.iter().zip(&outputs) {
        for out in outs.paths() {
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
    let overlay_opts = OverlayOptions {
        alpha: a.alpha,
        ..OverlayOptions::default()
    };
    if !(a.alpha.is_finite() && (0.0..=1.0).contains(&a.alpha)) {
        anyhow::bail!("--alpha {}: must be between 0 and 1", a.alpha);
    }
    let device = DeviceSpec::parse(&a.device)
        .map_err(|m| anyhow::anyhow!("--device: {m}"))?
        .open()?;
    let p = open_predictor(&a.checkpoint, device, &a.inference)?;
    recallseg_data::png_io::set_max_pixels(p.config().data.max_image_pixels)?;
    std::fs::create_dir_all(&a.out)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", a.out.display()))?;
    let mut warned = false;
    for (path, outs) in a.images.iter().zip(&outputs) {
        // By content (PNG or JPEG), whatever the extension; with the data crate's size limits.
        let (img, labels) = p.predict_file(path)?;
        let colour = labels.colorize(&p.classes().palette);
        recallseg_report::save_rgb_png(&outs.colour, &colour, img.width, img.height)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(dst) = &outs.overlay {
            let pic = render_overlay(&img, &labels, p.classes(), &overlay_opts)?;
            if !pic.text_drawn && !warned {
                note!("warning: no usable font; the overlay legends have no class names");
                warned = true;
            }
            pic.save_png(dst)?;
        }
        if let Some(dst) = &outs.labels {
            labels.save_png(dst)?;
        }
        note!("{} -> {}", path.display(), outs.colour.display());
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
    fn loss_flag_takes_the_library_names_and_aliases() {
        for (given, canonical) in [
            ("recall", "recall_ce"),
            ("CE", "cross_entropy"),
            ("wce", "weighted_ce"),
        ] {
            let cli = parse(&["train", "--preset", "synthia-quick", "--loss", given]).unwrap();
            let Command::Train(a) = cli.command else {
                panic!("not train")
            };
            assert_eq!(a.config().unwrap().loss_name(), canonical);
        }
        let cli = parse(&["train", "--preset", "synthia-quick", "--loss", "nope"]).unwrap();
        let Command::Train(a) = cli.command else {
            panic!("not train")
        };
        let e = a.config().unwrap_err().to_string();
        assert!(e.starts_with("--loss:") && e.contains("nope"), "{e}");
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
        assert!(!e.per_image);
        let Command::Eval(e) = parse(&["eval", "--checkpoint", "c", "--per-image"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert!(e.per_image);
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
        assert_eq!(p.alpha, 0.5);
        assert!(!p.no_overlay && p.inference.is_empty());
        // Inference flags replace the stored section's fields; a window implies slide.
        let Command::Eval(e) = parse(&[
            "eval",
            "--checkpoint",
            "c",
            "--window",
            "64x128",
            "--hflip",
            "--scales",
            "0.5,1,1.5",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        let c = e.inference.apply(&InferenceConfig::default()).unwrap();
        assert_eq!(c.mode, InferenceMode::Slide);
        assert_eq!(c.window, Some([64, 128]));
        assert_eq!(c.stride, None);
        assert!(c.hflip);
        assert_eq!(c.scales, vec![0.5, 1.0, 1.5]);
        // `--mode whole` drops a stored window; bad values name the flag.
        let whole = InferenceArgs {
            mode: Some("whole".into()),
            ..InferenceArgs::default()
        };
        assert_eq!(whole.apply(&c).unwrap().window, None);
        let bad = InferenceArgs {
            window: Some("64by128".into()),
            ..InferenceArgs::default()
        };
        assert!(bad.apply(&c).unwrap_err().to_string().contains("--window"));
        let bad = InferenceArgs {
            mode: Some("tiles".into()),
            ..InferenceArgs::default()
        };
        assert!(bad.apply(&c).unwrap_err().to_string().contains("--mode"));
        // An image is required.
        assert!(parse(&["predict", "--checkpoint", "c", "-o", "out"]).is_err());
        assert!(parse(&["eval"]).is_err());
    }

    #[test]
    fn help_is_complete() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        for w in ["train", "eval", "predict", "export", "preset"] {
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
            no_overlay: false,
            alpha: 0.5,
            inference: InferenceArgs::default(),
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
        assert_eq!(outs[1].colour, d.join("out/x.png"));
        assert_eq!(
            outs[1].labels.as_deref(),
            Some(d.join("out/x_labels.png").as_path())
        );
        assert_eq!(
            outs[1].overlay.as_deref(),
            Some(d.join("out/x_overlay.png").as_path())
        );
        // The overlay of `x.png` is protected like the labels.
        let e = predict_outputs(&args(&["a/x.png", "a/x_overlay.png"], "a", false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("over the input image"), "{e}");
    }
}
