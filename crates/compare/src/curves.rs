//! Training curves read from run folders, for `recallseg_report::draw_training_curves`.

use recallseg_report::training_curves::RunCurves;
use recallseg_trainer::log::{log_class_names, read_log_entries, LogRecord};
use std::path::{Path, PathBuf};

/// Reads the curves of the run in `dir` (its `log.jsonl`); the error names the folder when the
/// log is missing or unreadable.
pub fn read_run_curves(dir: &Path) -> anyhow::Result<RunCurves> {
    let log = dir.join("log.jsonl");
    if !log.is_file() {
        anyhow::bail!(
            "{}: no log.jsonl there (is it a training run's folder?)",
            dir.display()
        );
    }
    let entries =
        read_log_entries(&log).map_err(|err| anyhow::anyhow!("{}: {err}", log.display()))?;
    let name = dir
        .canonicalize()
        .unwrap_or_else(|_| dir.to_path_buf())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    let class_names = log_class_names(&entries);
    let mut c = RunCurves {
        name,
        recall: vec![Vec::new(); class_names.len()],
        class_names,
        ..RunCurves::default()
    };
    for e in &entries {
        match &e.record {
            LogRecord::Train { step, loss, lr, .. } => {
                let s = *step as f64;
                if loss.is_finite() {
                    c.loss.push((s, *loss));
                }
                c.lr.push((s, *lr));
            }
            LogRecord::Val {
                step,
                mean_accuracy,
                mean_iou,
                recall,
                ..
            } => {
                let s = *step as f64;
                if let Some(v) = mean_accuracy {
                    c.mean_accuracy.push((s, *v));
                }
                if let Some(v) = mean_iou {
                    c.mean_iou.push((s, *v));
                }
                for (k, r) in recall.iter().enumerate() {
                    if let (Some(r), Some(series)) = (r, c.recall.get_mut(k)) {
                        series.push((s, *r));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(c)
}

/// Draws the training curves of the runs in `run_dirs` ([`read_run_curves`]) into
/// `out_dir/training.svg` and `out_dir/training.png`; returns the two paths. A folder without
/// `log.jsonl` is an error naming it.
pub fn draw_run_curves(run_dirs: &[PathBuf], out_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if run_dirs.is_empty() {
        anyhow::bail!("no run folder given");
    }
    let runs = run_dirs
        .iter()
        .map(|d| read_run_curves(d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(recallseg_report::training_curves::draw_training_curves(
        &runs, out_dir,
    )?)
}
