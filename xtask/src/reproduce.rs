//! `cargo xtask reproduce synthia|cityscapes` : the paper's loss comparison.
//!
//! Only orchestration lives here (which preset, folder and losses): the plan, the comparison
//! runner and the report are in `recallseg_trainer` (`config::Preset`,
//! `compare::ComparisonPlan::new`, `compare::run_comparison`, `report`), the same functions
//! `recallseg compare --config my.toml` calls for any dataset.
//!
//! `--emit slurm` writes the same sweep as a Slurm job array instead of running it
//! (`recallseg_compare::sweep::write_slurm`), and `--report-only` collects runs trained
//! elsewhere into the report (`compare::collect_comparison`).

use clap::Args;
use recallseg_compare::sweep::{write_slurm, After, ReportStep, SlurmOptions};
use recallseg_compare::{
    collect_comparison, paper_losses, parse_losses, quick_losses, run_comparison, summary_table,
    CompareOptions, CompareOutcome, ComparisonPlan, Evaluate, LossRun,
};
use recallseg_trainer::config::Preset;
use recallseg_trainer::data::missing_dataset_help;
use std::path::{Path, PathBuf};

/// Arguments of `cargo xtask reproduce`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    cargo xtask reproduce synthia --quick                       # minutes on a CPU, synthetic data\n  \
    cargo xtask reproduce synthia --data /data/SYNTHIA --device cuda\n  \
    cargo xtask reproduce synthia --losses ce,recall --iters 20000 --backbone resnet101\n  \
    cargo xtask reproduce cityscapes --data /data/cityscapes --device cuda\n  \
    cargo xtask reproduce synthia --backbone resnet18,resnet101 --device cuda --emit slurm \\\n      \
    --partition gpu --time 12:00:00     # then: bash results/synthia/slurm/submit.sh")]
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
    /// Backbone: resnet18 (default) or resnet101; several, comma-separated, make one
    /// comparison per backbone (loss × backbone runs, one report per backbone).
    #[arg(long, value_delimiter = ',')]
    pub backbone: Vec<String>,
    /// Device: cpu, cuda, cuda:N, metal.
    #[arg(long)]
    pub device: Option<String>,
    /// Output folder (default `results/<dataset>[-quick][-<backbone>]`; with several
    /// backbones, `<out>/<backbone>` each).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Further config overrides, e.g. `--set train.batch_size=4` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Replace runs of another configuration in the output folder (train them again); without
    /// it such a folder is an error and nothing is deleted.
    #[arg(long)]
    pub overwrite: bool,
    /// Example predictions to draw (Fig. 3).
    #[arg(long, default_value_t = 4)]
    pub examples: usize,
    /// Which weights are tested: final (after the last step), best (best validation mean IoU,
    /// what the paper's test.py evaluates) or both (best as the main result, final beside it).
    /// Default: both for the paper's protocols, final with --quick.
    #[arg(long)]
    pub evaluate: Option<recallseg_compare::Evaluate>,
    /// Train nothing: collect the finished runs of the output folder(s) (trained by the Slurm
    /// array of --emit slurm, or by an earlier reproduce) into the report; runs that have not
    /// finished are named in it and make the exit status 1.
    #[arg(long, conflicts_with = "emit")]
    pub report_only: bool,
    /// Write the sweep as scripts instead of running it: `slurm` = a Slurm job array (one task
    /// per loss × backbone run), a report job after it and submit.sh.
    #[arg(long, value_name = "KIND")]
    pub emit: Option<Emit>,
    #[command(flatten)]
    pub slurm: SlurmArgs,
}

/// What `--emit` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Emit {
    /// A Slurm job array, its report job and `submit.sh`.
    Slurm,
}

/// Options of `--emit slurm`.
#[derive(Args, Debug)]
pub(crate) struct SlurmArgs {
    /// Slurm partition (--emit slurm).
    #[arg(long, requires = "emit")]
    pub partition: Option<String>,
    /// Slurm account (--emit slurm).
    #[arg(long, requires = "emit")]
    pub account: Option<String>,
    /// Time limit of each run and of the report job, in Slurm's format, e.g. 12:00:00
    /// (--emit slurm).
    #[arg(long, requires = "emit")]
    pub time: Option<String>,
    /// CPUs per task, i.e. per rank (--emit slurm).
    #[arg(long, requires = "emit")]
    pub cpus_per_task: Option<usize>,
    /// GPUs per run (--emit slurm): 0 = none (CPU nodes), 1 = one process, N > 1 = N ranks by
    /// `srun --ntasks=N`, one GPU each (data parallel). Default 1 with a CUDA device, else 0.
    #[arg(long, requires = "emit")]
    pub gpus_per_run: Option<usize>,
    /// Ranks per run on CPU nodes (--emit slurm, with --gpus-per-run 0): N > 1 launches N
    /// data-parallel ranks by `srun --ntasks=N` without any GPU request.
    #[arg(long, default_value_t = 1, requires = "emit")]
    pub ranks_per_run: usize,
    /// Seconds before the time limit at which Slurm sends SIGTERM, on which recallseg writes a
    /// checkpoint and stops (--emit slurm).
    #[arg(long, default_value_t = 120, requires = "emit")]
    pub signal_seconds: u32,
    /// When the report job runs (--emit slurm): `any` = once every array task has ended
    /// (afterany; unfinished runs are named in the report), `ok` = only if all succeeded.
    #[arg(long, default_value = "any", requires = "emit")]
    pub after: After,
    /// Folder of the scripts (--emit slurm; default `<out>/slurm`; without --out, in the
    /// first backbone's output folder).
    #[arg(long, requires = "emit")]
    pub scripts: Option<PathBuf>,
    /// The recallseg binary the array tasks run (--emit slurm; default: the one next to this
    /// xtask binary, `cargo build --release -p recallseg-cli` builds it).
    #[arg(long, requires = "emit")]
    pub recallseg: Option<PathBuf>,
}

/// Entry point of `cargo xtask reproduce`.
pub(crate) fn run(args: &ReproduceArgs) -> anyhow::Result<()> {
    // Paths in presets (`data/…`, `results/…`) are relative to the workspace root.
    let root = crate::workspace::root();
    std::env::set_current_dir(&root)?;
    let plans = plans(args, &root)?;
    if args.emit == Some(Emit::Slurm) {
        return emit_slurm(args, &plans, &root);
    }
    recallseg_trainer::train::install_ctrlc();
    let opts = CompareOptions {
        progress_bar: recallseg_trainer::log::Progress::stderr_is_terminal(),
        interrupt: Some(recallseg_trainer::signals::interrupt_flag()),
        quiet: false,
        overwrite: args.overwrite,
    };
    let mut missing = 0;
    for plan in &plans {
        let t0 = std::time::Instant::now();
        let out_dir = &plan.out_dir;
        if args.report_only {
            let c = collect_comparison(plan, &opts)?;
            for w in &c.written.warnings {
                eprintln!("warning: {w}");
            }
            for m in &c.missing {
                eprintln!(
                    "not finished: {} ({}): {}",
                    m.label,
                    m.dir.display(),
                    m.reason
                );
            }
            missing += c.missing.len();
            println!("\n{}", summary_table(&c.comparison));
            println!("report: {}", out_dir.join("report.md").display());
            continue;
        }
        match run_comparison(plan, &opts)? {
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
    }
    if missing > 0 {
        eprintln!("{missing} run(s) have not finished: the report leaves them out");
        std::process::exit(1);
    }
    Ok(())
}

/// The comparisons `reproduce` runs with these arguments: one per backbone, in order.
fn plans(args: &ReproduceArgs, root: &Path) -> anyhow::Result<Vec<ComparisonPlan>> {
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
        if args.quick && Path::new(d).exists() {
            // A folder that is there is used as is (it may be a real dataset); one that is not
            // gets the synthetic dataset generated into it, as without --data.
            overrides.push("data.generate_synthetic=false".into());
        }
    }
    if let Some(n) = args.iters {
        overrides.push(format!("train.iters={n}"));
    }
    if let Some(d) = &args.device {
        overrides.push(format!("train.device={d:?}"));
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
    // No --backbone: the preset's.
    let backbones: Vec<Option<&String>> = if args.backbone.is_empty() {
        vec![None]
    } else {
        args.backbone.iter().map(Some).collect()
    };
    let mut plans: Vec<ComparisonPlan> = Vec::new();
    for b in &backbones {
        let mut o = overrides.clone();
        if let Some(b) = b {
            o.push(format!("model.backbone={:?}", b.trim()));
        }
        let base = preset.config(&o)?;
        if plans
            .iter()
            .any(|p| p.base.model.backbone == base.model.backbone)
        {
            anyhow::bail!(
                "--backbone: {} is given twice; each backbone runs once",
                base.model.backbone.name()
            );
        }
        if !base.data.generate_synthetic && !base.data.root.exists() {
            eprintln!(
                "{}",
                missing_dataset_help(base.data.kind, &root.join(&base.data.root))
            );
            std::process::exit(2);
        }
        let mut name = args.dataset.clone();
        if args.quick {
            name.push_str("-quick");
        }
        if base.model.backbone != recallseg_models::Backbone::Resnet18 {
            name = format!("{name}-{}", base.model.backbone.name());
        }
        let out_dir = match &args.out {
            Some(o) if backbones.len() > 1 => o.join(base.model.backbone.name()),
            Some(o) => o.clone(),
            None => PathBuf::from("results").join(&name),
        };
        plans.push(plan(args, base, losses.clone(), out_dir));
    }
    Ok(plans)
}

/// The comparison of `losses` on `base`, titled and annotated as `reproduce` reports it.
fn plan(
    args: &ReproduceArgs,
    base: recallseg_trainer::config::TrainConfig,
    losses: Vec<LossRun>,
    out_dir: PathBuf,
) -> ComparisonPlan {
    let evaluate = args.evaluate.unwrap_or(if args.quick {
        Evaluate::Final
    } else {
        Evaluate::Both
    });
    let mut plan = ComparisonPlan::new(base, losses, out_dir).with_evaluate(evaluate);
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
    plan
}

/// The arguments of this command that pick the sweep, for the report job's
/// `reproduce … --report-only`.
fn sweep_arguments(args: &ReproduceArgs, plans: &[ComparisonPlan]) -> anyhow::Result<Vec<String>> {
    let utf8 = |flag: &str, p: &Path| -> anyhow::Result<String> {
        p.to_str()
            .map(String::from)
            .ok_or_else(|| anyhow::anyhow!("{flag}: {p:?} is not valid UTF-8"))
    };
    let mut a = vec!["reproduce".to_string(), args.dataset.clone()];
    if args.quick {
        a.push("--quick".into());
    }
    if let Some(d) = &args.data {
        a.extend(["--data".into(), utf8("--data", d)?]);
    }
    // The losses as planned (the defaults spelled out), so the report collects exactly them.
    let losses: Vec<&str> = plans[0].losses.iter().map(|l| l.loss.name()).collect();
    a.extend(["--losses".into(), losses.join(",")]);
    if let Some(n) = args.iters {
        a.extend(["--iters".into(), n.to_string()]);
    }
    if !args.backbone.is_empty() {
        let b: Vec<&str> = plans.iter().map(|p| p.base.model.backbone.name()).collect();
        a.extend(["--backbone".into(), b.join(",")]);
    }
    if let Some(d) = &args.device {
        a.extend(["--device".into(), d.clone()]);
    }
    if let Some(o) = &args.out {
        a.extend(["--out".into(), utf8("--out", o)?]);
    }
    for s in &args.set {
        a.extend(["--set".into(), s.clone()]);
    }
    a.extend(["--examples".into(), args.examples.to_string()]);
    if let Some(e) = args.evaluate {
        a.extend(["--evaluate".into(), e.name().into()]);
    }
    a.push("--report-only".into());
    Ok(a)
}

/// `--emit slurm`: the sweep as a Slurm job array, its report job and `submit.sh`.
fn emit_slurm(args: &ReproduceArgs, plans: &[ComparisonPlan], root: &Path) -> anyhow::Result<()> {
    let s = &args.slurm;
    let me = std::env::current_exe()?;
    let recallseg = match &s.recallseg {
        Some(p) => std::path::absolute(p)?,
        None => me.with_file_name(format!("recallseg{}", std::env::consts::EXE_SUFFIX)),
    };
    if !recallseg.is_file() {
        eprintln!(
            "warning: {} does not exist yet: build it before submitting (`cargo build --release \
             -p recallseg-cli`, with `--features cuda` for GPUs), or give --recallseg",
            recallseg.display()
        );
    }
    let cuda = plans[0].base.train.device.starts_with("cuda");
    let gpus = s.gpus_per_run.unwrap_or(usize::from(cuda));
    if gpus > 0 && !cuda {
        eprintln!(
            "warning: --gpus-per-run {gpus} with train.device = {:?}: the runs will not use the \
             GPUs (add --device cuda)",
            plans[0].base.train.device
        );
    }
    let mut o = SlurmOptions::new(
        format!(
            "recallseg-{}{}",
            args.dataset,
            if args.quick { "-quick" } else { "" }
        ),
        recallseg,
        root.to_path_buf(),
        ReportStep {
            program: me,
            args: sweep_arguments(args, plans)?,
        },
    );
    o.partition = s.partition.clone();
    o.account = s.account.clone();
    o.time = s.time.clone();
    o.cpus_per_task = s.cpus_per_task;
    o.gpus_per_run = gpus;
    if s.ranks_per_run > 1 && gpus > 0 {
        anyhow::bail!(
            "--ranks-per-run {} with --gpus-per-run {gpus}: with GPUs the ranks are the GPUs \
             (one each); use --gpus-per-run {} instead, or --gpus-per-run 0 for CPU ranks",
            s.ranks_per_run,
            s.ranks_per_run
        );
    }
    o.ranks_per_run = s.ranks_per_run.max(1);
    o.signal_seconds = s.signal_seconds;
    o.after = s.after;
    let dir = s
        .scripts
        .clone()
        .unwrap_or_else(|| args.out.as_ref().unwrap_or(&plans[0].out_dir).join("slurm"));
    let files = write_slurm(plans, &o, &dir)?;
    for (k, r) in files.runs.iter().enumerate() {
        println!("array task {k}: {} in {}", r.label, r.dir.display());
    }
    println!(
        "wrote {}, {} and {}\nsubmit with: bash {}",
        files.array.display(),
        files.report.display(),
        files.submit.display(),
        files.submit.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ReproduceArgs,
    }

    fn parse(args: &[&str]) -> ReproduceArgs {
        Cli::try_parse_from(std::iter::once("reproduce").chain(args.iter().copied()))
            .unwrap()
            .args
    }

    /// `--quick --data DIR` generates the synthetic dataset into a folder that does not exist,
    /// and uses one that exists as it is (it may be a real dataset).
    #[test]
    fn quick_with_data_generates_only_into_a_missing_folder() {
        let root = Path::new(".");
        let dir = tempfile_dir();
        let missing = dir.join("absent");
        let missing = missing.to_str().unwrap();
        let p = plans(&parse(&["synthia", "--quick", "--data", missing]), root).unwrap();
        assert!(p[0].base.data.generate_synthetic);
        assert_eq!(p[0].base.data.root, Path::new(missing));
        let present = dir.to_str().unwrap();
        let p = plans(&parse(&["synthia", "--quick", "--data", present]), root).unwrap();
        assert!(!p[0].base.data.generate_synthetic);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A fresh folder under the system's temporary folder.
    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "recallseg-xtask-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// The report job's `reproduce … --report-only` names the sweep that was emitted: the same
    /// runs (configurations and folders), titles, notes and tested weights.
    #[test]
    fn the_report_step_collects_exactly_the_emitted_sweep() {
        let root = Path::new(".");
        for argv in [
            &[
                "synthia",
                "--quick",
                "--losses",
                "ce,recall",
                "--backbone",
                "resnet18,resnet34",
                "--iters",
                "7",
                "--out",
                "/tmp/it's a sweep",
                "--set",
                "train.batch_size=3",
                "--set",
                "data.root=\"elsewhere/x y\"",
                "--evaluate",
                "best",
                "--emit",
                "slurm",
                "--partition",
                "gpu",
            ][..],
            &["synthia", "--quick", "--emit", "slurm"][..],
        ] {
            let emitted = parse(argv);
            let plans_emitted = plans(&emitted, root).unwrap();
            let report_args = sweep_arguments(&emitted, &plans_emitted).unwrap();
            assert_eq!(
                report_args.last().map(String::as_str),
                Some("--report-only")
            );
            let report = parse(
                &report_args[1..]
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
            );
            assert!(report.report_only && report.emit.is_none());
            let plans_report = plans(&report, root).unwrap();
            assert_eq!(plans_report.len(), plans_emitted.len());
            for (a, b) in plans_emitted.iter().zip(&plans_report) {
                assert_eq!(a.out_dir, b.out_dir);
                assert_eq!(a.title, b.title);
                assert_eq!(a.notes, b.notes);
                assert_eq!(a.evaluate, b.evaluate);
                assert_eq!(a.examples, b.examples);
                assert_eq!(a.losses, b.losses);
                for l in &a.losses {
                    let (ca, cb) = (
                        recallseg_compare::run_config(a, l),
                        recallseg_compare::run_config(b, l),
                    );
                    assert_eq!(ca.to_toml().unwrap(), cb.to_toml().unwrap());
                }
            }
        }
        // One comparison per backbone, each in its own folder under --out.
        let two = plans(
            &parse(&[
                "synthia",
                "--quick",
                "--backbone",
                "resnet18,resnet34",
                "--out",
                "o",
            ]),
            root,
        )
        .unwrap();
        assert_eq!(two[0].out_dir, Path::new("o/resnet18"));
        assert_eq!(two[1].base.model.backbone.name(), "resnet34");
        let twice = plans(
            &parse(&["synthia", "--quick", "--backbone", "resnet18,resnet18"]),
            root,
        );
        assert!(twice.unwrap_err().to_string().contains("given twice"));
    }
}
