//! `cargo xtask reproduce synthia|cityscapes` : the paper's loss comparison.
//!
//! Only orchestration lives here (which preset, folder and losses): the plan, the comparison
//! runner and the report are in `recallseg_trainer` (`config::Preset`,
//! `compare::ComparisonPlan::new`, `compare::run_comparison`, `report`), the same functions
//! `recallseg compare --config my.toml` calls for any dataset.

use clap::Args;
use recallseg_trainer::compare::{
    paper_losses, parse_losses, quick_losses, run_comparison, summary_table, CompareOptions,
    CompareOutcome, ComparisonPlan, Evaluate,
};
use recallseg_trainer::config::Preset;
use recallseg_trainer::data::missing_dataset_help;
use std::path::PathBuf;

/// Arguments of `cargo xtask reproduce`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    cargo xtask reproduce synthia --quick                       # minutes on a CPU, synthetic data\n  \
    cargo xtask reproduce synthia --data /data/SYNTHIA --device cuda\n  \
    cargo xtask reproduce synthia --losses ce,recall --iters 20000 --backbone resnet101\n  \
    cargo xtask reproduce cityscapes --data /data/cityscapes --device cuda")]
pub(crate) struct ReproduceArgs {
    /// Dataset: `synthia` or `cityscapes`.
    pub dataset: String,
    /// The scaled-down comparison on a generated synthetic Synthia-format dataset (CPU,
    /// thin network, short schedule; minutes). Generates `data/synthia-synthetic/` if absent.
    #[arg(long)]
    pub quick: bool,
    /// Dataset root (default `data/synthia`, `data/cityscapes`, or `data/synthia-synthetic`
    /// with --quick).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Comma-separated losses (default: the paper's eight; with --quick CE, WeightedCE, Focal,
    /// Recall). Names: ce, weighted_ce, balanced_ce, focal, ohem, soft_iou, lovasz, recall_ce,
    /// dice, tversky, precision_ce.
    #[arg(long, value_delimiter = ',')]
    pub losses: Vec<String>,
    /// Training steps per loss (default: the preset's).
    #[arg(long)]
    pub iters: Option<usize>,
    /// Backbone: resnet18 (default) or resnet101.
    #[arg(long)]
    pub backbone: Option<String>,
    /// Device: cpu, cuda, cuda:N, metal.
    #[arg(long)]
    pub device: Option<String>,
    /// Output folder (default `results/<dataset>[-quick][-<backbone>]`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Further config overrides, e.g. `--set train.batch_size=4` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Example predictions to draw (Fig. 3).
    #[arg(long, default_value_t = 4)]
    pub examples: usize,
    /// Which weights are tested: final (after the last step), best (best validation mean IoU,
    /// what the paper's test.py evaluates) or both (best as the main result, final beside it).
    /// Default: both for the paper's protocols, final with --quick.
    #[arg(long)]
    pub evaluate: Option<recallseg_trainer::compare::Evaluate>,
}

/// Entry point of `cargo xtask reproduce`.
pub(crate) fn run(args: &ReproduceArgs) -> anyhow::Result<()> {
    // Paths in presets (`data/…`, `results/…`) are relative to the workspace root.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    std::env::set_current_dir(&root)?;

    let preset = match (args.dataset.as_str(), args.quick) {
        ("synthia", true) => Preset::SynthiaQuick,
        ("synthia", false) => Preset::Synthia,
        ("cityscapes", false) => Preset::Cityscapes,
        ("cityscapes", true) => anyhow::bail!(
            "--quick exists for synthia only (`cargo xtask reproduce synthia --quick`): the \
             synthetic generator writes the Synthia layout"
        ),
        (other, _) => anyhow::bail!(
            "unknown dataset `{other}`: expected synthia or cityscapes (the paper's datasets); \
             for any other dataset, a folder dataset too, run \
             `recallseg compare --config my.toml --losses ce,weighted_ce,recall_ce`"
        ),
    };
    let mut overrides = args.set.clone();
    if let Some(d) = &args.data {
        let d = d
            .to_str()
            .ok_or_else(|| anyhow::anyhow!("--data: {d:?} is not valid UTF-8"))?;
        overrides.push(format!("data.root={}", toml::Value::String(d.into())));
        if args.quick {
            // A given folder is used as is (it may be a real dataset).
            overrides.push("data.generate_synthetic=false".into());
        }
    }
    if let Some(n) = args.iters {
        overrides.push(format!("train.iters={n}"));
    }
    if let Some(b) = &args.backbone {
        overrides.push(format!("model.backbone={b:?}"));
    }
    if let Some(d) = &args.device {
        overrides.push(format!("train.device={d:?}"));
    }
    let base = preset.config(&overrides)?;
    if !base.data.generate_synthetic && !base.data.root.exists() {
        eprintln!(
            "{}",
            missing_dataset_help(base.data.kind, &root.join(&base.data.root))
        );
        std::process::exit(2);
    }
    let losses = if args.losses.is_empty() {
        if args.quick {
            quick_losses()
        } else {
            paper_losses()
        }
    } else {
        parse_losses(&args.losses)?
    };
    let mut name = args.dataset.clone();
    if args.quick {
        name.push_str("-quick");
    }
    if base.model.backbone != recallseg_models::Backbone::Resnet18 {
        name = format!("{name}-{}", base.model.backbone.name());
    }
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("results").join(&name));
    let evaluate = args.evaluate.unwrap_or(if args.quick {
        Evaluate::Final
    } else {
        Evaluate::Both
    });
    let mut plan = ComparisonPlan::new(base, losses, out_dir.clone()).with_evaluate(evaluate);
    plan.examples = args.examples;
    if plan.synthetic {
        plan.title = "Loss comparison on synthetic Synthia-format data (quick, CPU)".to_string();
    }
    plan.notes.insert(
        0,
        format!(
            "Reproduce with `cargo xtask reproduce {}{}`.",
            args.dataset,
            if args.quick { " --quick" } else { "" },
        ),
    );
    recallseg_trainer::train::install_ctrlc();
    let opts = CompareOptions {
        progress_bar: recallseg_trainer::log::Progress::stderr_is_terminal(),
        interrupt: Some(recallseg_trainer::train::interrupt_flag()),
        quiet: false,
    };
    let t0 = std::time::Instant::now();
    match run_comparison(&plan, &opts)? {
        CompareOutcome::Interrupted(label) => {
            eprintln!(
                "interrupted during {label}; run the same command again to resume ({})",
                out_dir.display()
            );
            std::process::exit(
                recallseg_trainer::signals::received_signal().map_or(130, |s| s.exit_code()),
            );
        }
        CompareOutcome::Done(cmp, written) => {
            for w in &written.warnings {
                eprintln!("warning: {w}");
            }
            println!("\n{}", summary_table(&cmp));
            println!(
                "report: {} ({:.0} s)",
                out_dir.join("report.md").display(),
                t0.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}
