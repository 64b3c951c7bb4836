//! Sweeps on a cluster: a comparison ([`ComparisonPlan`], one or several, e.g. one per
//! backbone) as a Slurm job array, one array task per run, and a report step after it.
//!
//! [`write_slurm`] writes into a folder:
//!
//! * `configs/<k>-<backbone>-<loss>.toml`: the configuration of run `k`, exactly the one
//!   [`run_comparison`](crate::comparison::run_comparison) trains ([`run_config`]);
//! * `array.sbatch`: the job array. Task `k` runs `recallseg train --config configs/<k>-….toml
//!   --resume` in the run folder the comparison uses, so a finished run is reused (it trains no
//!   further), an interrupted one resumes from its checkpoint, and a run the comparison started
//!   continues there too. `#SBATCH --signal=B:TERM@S` has the scheduler send SIGTERM to the
//!   batch shell S seconds before the time limit; the shell forwards it to `recallseg`, which
//!   writes a checkpoint and stops (exit status 143). With several GPUs per run the task runs
//!   `srun --ntasks=N … recallseg train …`, one rank per GPU (`SRUN_ARGS` in the environment
//!   adds site options such as `--mpi=pmix`);
//! * `report.sbatch`: the report step, the command given in [`SlurmOptions::report`] (for
//!   `cargo xtask reproduce` its `--report-only` form, which calls
//!   [`collect_comparison`](crate::comparison::collect_comparison));
//! * `submit.sh`: submits the array, then the report with `--dependency=afterany:<array>`
//!   (or `afterok`, [`SlurmOptions::after`]);
//! * `logs/`: the jobs' output (Slurm needs the folder to exist at submission).
//!
//! Every script runs as well by hand, without Slurm: `SLURM_ARRAY_TASK_ID=3 bash array.sbatch`
//! trains run 3 on this machine; `bash report.sbatch` writes the report.

use crate::comparison::{run_config, run_dir, ComparisonPlan};
use recallseg_trainer::config::TrainConfig;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One array task: one loss of one plan.
#[derive(Debug, Clone)]
pub struct SweepRun {
    /// Index of the plan it belongs to.
    pub plan: usize,
    /// `Recall (resnet18)`.
    pub label: String,
    /// Its configuration ([`run_config`]).
    pub config: TrainConfig,
    /// Its run folder (`<out>/runs/<loss name>`, [`run_dir`]).
    pub dir: PathBuf,
    /// The file name of its configuration in `configs/`: `<k>-<backbone>-<loss>.toml`.
    pub config_file: String,
}

/// The runs of the plans, in array-task order: plan by plan, each plan's losses in order.
/// An error when two runs would share a folder (two plans with the same `out_dir`).
pub fn sweep_runs(plans: &[ComparisonPlan]) -> anyhow::Result<Vec<SweepRun>> {
    let mut runs: Vec<SweepRun> = Vec::new();
    for (p, plan) in plans.iter().enumerate() {
        for loss in &plan.losses {
            let dir = run_dir(plan, loss);
            if let Some(other) = runs.iter().find(|r| r.dir == dir) {
                anyhow::bail!(
                    "{} and {} would both train in {}: give each plan its own output folder",
                    other.label,
                    loss.label,
                    dir.display()
                );
            }
            let config = run_config(plan, loss);
            let k = runs.len();
            runs.push(SweepRun {
                plan: p,
                label: format!("{} ({})", loss.label, config.model.backbone.name()),
                config_file: format!(
                    "{k}-{}-{}.toml",
                    config.model.backbone.name(),
                    loss.loss.name()
                ),
                config,
                dir,
            });
        }
    }
    if runs.is_empty() {
        anyhow::bail!("the sweep has no run (no plan, or plans without losses)");
    }
    Ok(runs)
}

/// Which outcome of the array the report step waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum After {
    /// `afterany`: the report runs whatever the tasks' outcomes, listing the runs that did not
    /// finish (default: a run stopped by the time limit does not hold the others' report back).
    #[default]
    Any,
    /// `afterok`: the report runs only when every task succeeded.
    Ok,
}

impl std::str::FromStr for After {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "any" | "afterany" => Ok(After::Any),
            "ok" | "afterok" => Ok(After::Ok),
            _ => Err(format!("`{s}` is not one of any, ok")),
        }
    }
}

impl After {
    /// The Slurm dependency type: `afterany` or `afterok`.
    pub fn slurm_name(self) -> &'static str {
        match self {
            After::Any => "afterany",
            After::Ok => "afterok",
        }
    }
}

/// The report step: a program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportStep {
    /// The program (an absolute path is best: the job may start elsewhere); the script lets
    /// the environment variable `REPORT_BIN` replace it.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

/// How the sweep is submitted.
#[derive(Debug, Clone)]
pub struct SlurmOptions {
    /// Job name (`--job-name`; the report job gets `-report` appended).
    pub job_name: String,
    /// `--partition`.
    pub partition: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// `--time` of each array task and of the report job (Slurm's formats: `MM`, `HH:MM:SS`,
    /// `D-HH`, …).
    pub time: Option<String>,
    /// `--cpus-per-task` (per rank).
    pub cpus_per_task: Option<usize>,
    /// GPUs per run: 0 = none requested (CPU nodes), 1 = one process on one GPU, N > 1 = N
    /// ranks launched by `srun --ntasks=N`, one GPU each (data parallel).
    pub gpus_per_run: usize,
    /// Ranks per run on CPU nodes (`gpus_per_run = 0`): N > 1 launches N ranks with `srun
    /// --ntasks=N` and no GPU request. With GPUs, the ranks are the GPUs and this is ignored.
    pub ranks_per_run: usize,
    /// Seconds before the time limit at which SIGTERM is sent (`--signal=B:TERM@S`): enough to
    /// finish the step in flight and write a checkpoint.
    pub signal_seconds: u32,
    /// The `recallseg` binary the tasks run (the script lets the environment variable
    /// `RECALLSEG` replace it).
    pub recallseg: PathBuf,
    /// The folder the jobs run in: relative paths of the configurations (`data.root`,
    /// `train.out_dir`) are relative to it.
    pub workdir: PathBuf,
    /// The report step.
    pub report: ReportStep,
    /// Which outcome of the array the report waits for.
    pub after: After,
}

impl SlurmOptions {
    /// Processes per run: one per GPU with GPUs, else [`SlurmOptions::ranks_per_run`].
    pub fn ranks(&self) -> usize {
        if self.gpus_per_run > 0 {
            self.gpus_per_run
        } else {
            self.ranks_per_run.max(1)
        }
    }

    /// Options with no partition, account, time limit or CPU count (the cluster's defaults),
    /// one GPU per run, SIGTERM 120 s before the limit, `afterany`.
    pub fn new(
        job_name: impl Into<String>,
        recallseg: PathBuf,
        workdir: PathBuf,
        report: ReportStep,
    ) -> Self {
        Self {
            job_name: job_name.into(),
            partition: None,
            account: None,
            time: None,
            cpus_per_task: None,
            gpus_per_run: 1,
            ranks_per_run: 1,
            signal_seconds: 120,
            recallseg,
            workdir,
            report,
            after: After::Any,
        }
    }
}

/// What [`write_slurm`] wrote.
#[derive(Debug, Clone)]
pub struct SlurmFiles {
    /// `array.sbatch`.
    pub array: PathBuf,
    /// `report.sbatch`.
    pub report: PathBuf,
    /// `submit.sh`.
    pub submit: PathBuf,
    /// The runs, in array-task order (task `k` is `runs[k]`).
    pub runs: Vec<SweepRun>,
}

/// `s` quoted for bash: as is when it holds only safe characters, else in single quotes.
pub fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn utf8<'a>(what: &str, p: &'a Path) -> anyhow::Result<&'a str> {
    p.to_str()
        .ok_or_else(|| anyhow::anyhow!("{what}: {p:?} is not valid UTF-8 (it goes into a script)"))
}

/// A value that goes into an `#SBATCH` line: no whitespace, quotes or control characters.
fn sbatch_value(flag: &str, v: &str) -> anyhow::Result<String> {
    if v.is_empty()
        || v.chars()
            .any(|c| c.is_whitespace() || c.is_control() || "'\"\\#$`".contains(c))
    {
        anyhow::bail!("--{flag}: `{v}` cannot go into an #SBATCH line (empty, space or quote)");
    }
    Ok(format!("#SBATCH --{flag}={v}\n"))
}

/// The `#SBATCH` lines every job shares (partition, account, time).
fn common_header(o: &SlurmOptions) -> anyhow::Result<String> {
    let mut h = String::new();
    if let Some(p) = &o.partition {
        h += &sbatch_value("partition", p)?;
    }
    if let Some(a) = &o.account {
        h += &sbatch_value("account", a)?;
    }
    if let Some(t) = &o.time {
        h += &sbatch_value("time", t)?;
    }
    Ok(h)
}

/// The job-array script for `runs` (see the module documentation); `dir` is the folder the
/// scripts and `configs/` live in (absolute).
pub fn array_script(runs: &[SweepRun], o: &SlurmOptions, dir: &Path) -> anyhow::Result<String> {
    if runs.is_empty() {
        anyhow::bail!("the sweep has no run");
    }
    let last = runs.len() - 1;
    let mut s = String::from("#!/bin/bash\n");
    s += &sbatch_value("job-name", &o.job_name)?;
    s += &format!("#SBATCH --array=0-{last}\n");
    s += &sbatch_value(
        "output",
        &format!("{}/logs/%x-%A_%a.out", utf8("scripts folder", dir)?),
    )?;
    s += &common_header(o)?;
    let ranks = o.ranks();
    s += &format!("#SBATCH --ntasks={ranks}\n");
    if let Some(c) = o.cpus_per_task {
        s += &format!("#SBATCH --cpus-per-task={c}\n");
    }
    if o.gpus_per_run > 0 {
        s += "#SBATCH --gpus-per-task=1\n";
    }
    // One process: the batch shell gets the signal (B:) and forwards it to recallseg. Several
    // ranks: Slurm signals the job step's tasks, every rank, itself; a TERM forwarded to
    // `srun` would make it kill the ranks before they save ("forcing job termination").
    if ranks > 1 {
        s += &format!("#SBATCH --signal=TERM@{}\n", o.signal_seconds);
    } else {
        s += &format!("#SBATCH --signal=B:TERM@{}\n", o.signal_seconds);
    }
    // A requeued or resubmitted task appends to its log instead of truncating it.
    s += "#SBATCH --open-mode=append\n";
    let _ = write!(
        s,
        "#\n\
         # One array task per run of the sweep ({n} runs), each the `recallseg train` run the\n\
         # comparison trains, in the same run folder: a finished run is reused, an interrupted\n\
         # one resumes from its checkpoint (--resume). Slurm sends SIGTERM {secs} s before the\n\
         # time limit; recallseg then writes a checkpoint and stops (submit again to continue).\n\
         # Submit with submit.sh (the report follows the array). By hand, without Slurm:\n\
         #   SLURM_ARRAY_TASK_ID=0 bash {array}\n\
         set -euo pipefail\n\
         RECALLSEG=\"${{RECALLSEG:-{bin}}}\"\n\
         cd {workdir}\n\
         task=\"${{SLURM_ARRAY_TASK_ID:?set SLURM_ARRAY_TASK_ID to a run of 0-{last}}}\"\n\
         case \"$task\" in\n",
        n = runs.len(),
        secs = o.signal_seconds,
        array = shell_quote(utf8("scripts folder", &dir.join("array.sbatch"))?),
        bin = shell_quote(utf8("recallseg binary", &o.recallseg)?),
        workdir = shell_quote(utf8("work folder", &o.workdir)?),
    );
    for (k, r) in runs.iter().enumerate() {
        let config = dir.join("configs").join(&r.config_file);
        let _ = writeln!(
            s,
            "  {k}) label={}; config={}; run={} ;;",
            shell_quote(&r.label),
            shell_quote(utf8("config", &config)?),
            shell_quote(utf8("run folder", &r.dir)?),
        );
    }
    let _ = writeln!(
        s,
        "  *) echo \"array task $task: no such run (0-{last})\" >&2; exit 2 ;;\nesac"
    );
    let launch = if ranks > 1 {
        // `SRUN_ARGS` adds what the site needs (e.g. `--mpi=pmix`) without editing the script.
        let mut l = format!(
            "srun ${{SRUN_ARGS:-}} --ntasks={ranks}{} --kill-on-bad-exit=1",
            if o.gpus_per_run > 0 {
                " --gpus-per-task=1"
            } else {
                ""
            }
        );
        if let Some(c) = o.cpus_per_task {
            let _ = write!(l, " --cpus-per-task={c}");
        }
        l + " "
    } else {
        String::new()
    };
    let trap = if ranks > 1 {
        "# Slurm signals the ranks themselves; this shell only waits for their checkpoint.\n\
         trap ':' TERM INT HUP\n"
    } else {
        "trap 'kill -TERM \"$child\" 2>/dev/null || true' TERM INT HUP\n"
    };
    let _ = write!(
        s,
        "echo \"[$label] array task $task: $run\"\n\
         # In the background so that this shell, which Slurm may signal, waits for the checkpoint.\n\
         {launch}\"$RECALLSEG\" train --config \"$config\" --resume --no-progress &\n\
         child=$!\n\
         {trap}\
         status=0\n\
         wait \"$child\" || status=$?\n\
         # A trapped signal ends `wait` early: wait for recallseg's checkpoint and exit status.\n\
         while kill -0 \"$child\" 2>/dev/null; do\n  \
           status=0\n  \
           wait \"$child\" || status=$?\n\
         done\n\
         exit \"$status\"\n"
    );
    Ok(s)
}

/// The report job's script: [`SlurmOptions::report`] run in the work folder.
pub fn report_script(o: &SlurmOptions, dir: &Path) -> anyhow::Result<String> {
    let mut s = String::from("#!/bin/bash\n");
    s += &sbatch_value("job-name", &format!("{}-report", o.job_name))?;
    s += &sbatch_value(
        "output",
        &format!("{}/logs/%x-%j.out", utf8("scripts folder", dir)?),
    )?;
    s += &common_header(o)?;
    s += "#SBATCH --nodes=1\n#SBATCH --ntasks=1\n";
    if let Some(c) = o.cpus_per_task {
        s += &format!("#SBATCH --cpus-per-task={c}\n");
    }
    if o.gpus_per_run > 0 {
        // The runs are evaluated on the test split here, on the configured device.
        s += "#SBATCH --gpus-per-task=1\n";
    }
    let args: Vec<String> = o.report.args.iter().map(|a| shell_quote(a)).collect();
    let _ = write!(
        s,
        "#\n\
         # The report of the sweep: collects the finished runs (no training) and writes the\n\
         # report; runs that did not finish are named in it. By hand: bash {me}\n\
         set -euo pipefail\n\
         cd {workdir}\n\
         exec \"${{REPORT_BIN:-{bin}}}\" {args}\n",
        me = shell_quote(utf8("scripts folder", &dir.join("report.sbatch"))?),
        workdir = shell_quote(utf8("work folder", &o.workdir)?),
        bin = shell_quote(utf8("report program", &o.report.program)?),
        args = args.join(" "),
    );
    Ok(s)
}

/// `submit.sh`: the array, then the report after it.
pub fn submit_script(runs: usize, o: &SlurmOptions, dir: &Path) -> anyhow::Result<String> {
    let array = shell_quote(utf8("scripts folder", &dir.join("array.sbatch"))?);
    let report = shell_quote(utf8("scripts folder", &dir.join("report.sbatch"))?);
    let after = o.after.slurm_name();
    Ok(format!(
        "#!/bin/bash\n\
         # Submits the sweep: the job array ({runs} runs), then the report once the array has\n\
         # ended ({after}). Submitting again after a time limit or a failure resumes the\n\
         # unfinished runs and reuses the finished ones.\n\
         set -euo pipefail\n\
         array=$(sbatch --parsable {array})\n\
         array=\"${{array%%;*}}\"\n\
         report=$(sbatch --parsable --dependency={after}:\"$array\" {report})\n\
         report=\"${{report%%;*}}\"\n\
         echo \"submitted the job array $array ({runs} runs) and the report job $report\"\n"
    ))
}

fn write_file(path: &Path, text: &str, executable: bool) -> anyhow::Result<()> {
    recallseg_files::write_bytes_atomic(path, text.as_bytes())?;
    #[cfg(unix)]
    if executable {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = executable;
    Ok(())
}

/// Writes the sweep of `plans` as Slurm scripts into `dir` (see the module documentation);
/// `dir` is made absolute against the current folder. The synthetic dataset is generated first
/// when the plans use it, so that the array tasks do not race to generate it. Files of an
/// earlier emission in `dir` are replaced; run folders are not touched.
pub fn write_slurm(
    plans: &[ComparisonPlan],
    o: &SlurmOptions,
    dir: &Path,
) -> anyhow::Result<SlurmFiles> {
    let runs = sweep_runs(plans)?;
    let dir = std::path::absolute(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    for plan in plans {
        if plan.base.data.generate_synthetic {
            recallseg_trainer::data::ensure_synthetic(
                &plan.base.data,
                &recallseg_trainer::data::quick_synthetic_config(),
            )?;
        }
    }
    let configs = dir.join("configs");
    for d in [&configs, &dir.join("logs")] {
        std::fs::create_dir_all(d).map_err(|e| anyhow::anyhow!("{}: {e}", d.display()))?;
    }
    for r in &runs {
        r.config.validate()?;
        write_file(&configs.join(&r.config_file), &r.config.to_toml()?, false)?;
    }
    let files = SlurmFiles {
        array: dir.join("array.sbatch"),
        report: dir.join("report.sbatch"),
        submit: dir.join("submit.sh"),
        runs,
    };
    write_file(&files.array, &array_script(&files.runs, o, &dir)?, true)?;
    write_file(&files.report, &report_script(o, &dir)?, true)?;
    write_file(
        &files.submit,
        &submit_script(files.runs.len(), o, &dir)?,
        true,
    )?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_keeps_every_string_one_word() {
        assert_eq!(
            shell_quote("results/synthia-quick"),
            "results/synthia-quick"
        );
        assert_eq!(shell_quote("train.lr=1e-4"), "train.lr=1e-4");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$HOME;rm"), "'$HOME;rm'");
    }

    #[test]
    fn bad_sbatch_values_are_errors_naming_the_option() {
        let o = SlurmOptions::new(
            "j",
            PathBuf::from("/bin/recallseg"),
            PathBuf::from("/w"),
            ReportStep {
                program: PathBuf::from("/bin/xtask"),
                args: vec![],
            },
        );
        assert!(common_header(&o).unwrap().is_empty());
        type Spoil = fn(&mut SlurmOptions);
        let cases: [(Spoil, &str); 3] = [
            (|o| o.partition = Some("gpu a100".into()), "--partition"),
            (|o| o.account = Some("x\"y".into()), "--account"),
            (|o| o.time = Some(String::new()), "--time"),
        ];
        for (set, flag) in cases {
            let mut bad = o.clone();
            set(&mut bad);
            let e = common_header(&bad).unwrap_err().to_string();
            assert!(e.contains(flag), "{e}");
        }
        let mut bad = o.clone();
        bad.job_name = "two words".into();
        let e = report_script(&bad, Path::new("/s"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--job-name"), "{e}");
        assert!(sweep_runs(&[]).unwrap_err().to_string().contains("no run"));
    }

    #[test]
    fn gpus_per_run_choose_the_launch() {
        let base = recallseg_trainer::config::Preset::SynthiaQuick
            .config(&[])
            .unwrap();
        let plan = ComparisonPlan::new(
            base,
            crate::comparison::quick_losses(),
            PathBuf::from("results/q"),
        );
        let runs = sweep_runs(&[plan]).unwrap();
        assert_eq!(runs[3].config_file, "3-resnet18-recall_ce.toml");
        assert_eq!(runs[3].dir, Path::new("results/q/runs/recall_ce"));
        let mut o = SlurmOptions::new(
            "j",
            PathBuf::from("/bin/recallseg"),
            PathBuf::from("/w"),
            ReportStep {
                program: PathBuf::from("/bin/xtask"),
                args: vec![],
            },
        );
        let dir = Path::new("/s");
        o.gpus_per_run = 0;
        let cpu = array_script(&runs, &o, dir).unwrap();
        assert!(!cpu.contains("gpu") && !cpu.contains("srun"), "{cpu}");
        assert!(cpu.contains("#SBATCH --ntasks=1\n"));
        assert!(cpu.contains("\n\"$RECALLSEG\" train --config \"$config\" --resume"));
        o.gpus_per_run = 4;
        o.cpus_per_task = Some(8);
        let dp = array_script(&runs, &o, dir).unwrap();
        assert!(dp.contains(
            "#SBATCH --ntasks=4\n#SBATCH --cpus-per-task=8\n#SBATCH --gpus-per-task=1\n"
        ));
        assert!(
            dp.contains(
                "\nsrun ${SRUN_ARGS:-} --ntasks=4 --gpus-per-task=1 --kill-on-bad-exit=1 \
             --cpus-per-task=8 \"$RECALLSEG\" train --config"
            ),
            "{dp}"
        );
        // Several ranks: Slurm signals the ranks (no `B:`), the shell does not forward TERM to
        // srun (which would kill the ranks before they save).
        assert!(dp.contains("#SBATCH --signal=TERM@120\n"), "{dp}");
        assert!(
            dp.contains("trap ':' TERM INT HUP") && !dp.contains("kill -TERM"),
            "{dp}"
        );
        assert!(cpu.contains("#SBATCH --signal=B:TERM@120\n"), "{cpu}");
        assert!(cpu.contains("kill -TERM \"$child\""), "{cpu}");
        // A requeued task appends to its log.
        assert!(cpu.contains("#SBATCH --open-mode=append\n"), "{cpu}");
        // Ranks on CPU nodes: srun without any GPU request (sbatch rejects --gpus-per-task on
        // a cluster without GPUs).
        o.gpus_per_run = 0;
        o.ranks_per_run = 2;
        o.cpus_per_task = None;
        let cpu_dp = array_script(&runs, &o, dir).unwrap();
        assert!(!cpu_dp.contains("gpu"), "{cpu_dp}");
        assert!(cpu_dp.contains("#SBATCH --ntasks=2\n"), "{cpu_dp}");
        assert!(
            cpu_dp.contains("\nsrun ${SRUN_ARGS:-} --ntasks=2 --kill-on-bad-exit=1 \"$RECALLSEG\""),
            "{cpu_dp}"
        );
    }
}
