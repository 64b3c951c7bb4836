//! `recallseg export`: a trained model's parameters under PyTorch's names, so that
//! segmentation_models_pytorch's `DeepLabV3Plus` or torchvision's `deeplabv3_resnet50/101` loads
//! it with `load_state_dict(..., strict=True)` (and from there ONNX). The name mapping and the
//! compatibility rules are `recallseg_models::check_compatible`'s.
//!
//! The file's metadata holds the PyTorch constructor's arguments and what prediction needs
//! besides the weights: `class_names` (JSON list), `ignore_index`, `mean` and `std` (JSON,
//! 0–255 scale: divide by 255 for torchvision-style normalisation of `[0, 1]` images) and
//! `step`.

use crate::predict::{Predictor, PredictorOptions};
use recallseg_models::{save_exported, ExportFormat};
use std::collections::BTreeMap;
use std::path::Path;

/// What [`export_checkpoint`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSummary {
    /// The checkpoint read.
    pub checkpoint: std::path::PathBuf,
    /// The file's metadata (constructor arguments and the extra entries).
    pub metadata: BTreeMap<String, String>,
}

/// Exports the model of a checkpoint (or run folder: its best checkpoint, else its last) as
/// `format` to `out`. Fails, naming the field, for a model without a counterpart in `format`
/// (`recallseg_models::check_compatible`), and refuses to write over the checkpoint.
pub fn export_checkpoint(
    checkpoint: &Path,
    format: ExportFormat,
    out: &Path,
) -> anyhow::Result<ExportSummary> {
    refuse_run_file(out)?;
    let p = Predictor::open(checkpoint, &PredictorOptions::default())?;
    if let (Ok(a), Ok(b)) = (out.canonicalize(), p.checkpoint().canonicalize()) {
        if a == b {
            anyhow::bail!(
                "--out {} is the checkpoint itself; choose another file",
                out.display()
            );
        }
    }
    let mut extra = BTreeMap::new();
    extra.insert(
        "class_names".to_string(),
        serde_json::to_string(&p.classes().names)?,
    );
    extra.insert(
        "ignore_index".to_string(),
        p.classes().ignore_index.to_string(),
    );
    extra.insert(
        "mean".to_string(),
        serde_json::to_string(&p.normalize().mean)?,
    );
    extra.insert(
        "std".to_string(),
        serde_json::to_string(&p.normalize().std)?,
    );
    extra.insert("step".to_string(), p.step().to_string());
    // The folder is created when missing; the file replaced atomically (`save_exported`).
    let step = i64::try_from(p.step()).unwrap_or(i64::MAX);
    save_exported(p.model(), format, step, &extra, out).map_err(|e| {
        anyhow::anyhow!(
            "exporting {} as {}: {e}",
            p.checkpoint().display(),
            format.name()
        )
    })?;
    let mut metadata = recallseg_models::check_compatible(p.model().config(), format)?;
    metadata.extend(extra);
    Ok(ExportSummary {
        checkpoint: p.checkpoint().to_path_buf(),
        metadata,
    })
}

/// Refuses an output path that is one of a run folder's own files (`last.safetensors`,
/// `best.safetensors`, the log, `metrics.csv`, `config.toml`, `test.json`, the lock) in a
/// folder that holds a run: replacing `last` with exported weights would break `--resume`.
fn refuse_run_file(out: &Path) -> anyhow::Result<()> {
    use crate::run_files as files;
    let own = [
        files::LAST,
        files::BEST,
        files::LOG,
        files::METRICS,
        files::CONFIG,
        files::TEST,
        crate::run_dir::LOCK_FILE,
    ];
    let Some(name) = out.file_name().and_then(|n| n.to_str()) else {
        return Ok(());
    };
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let holds_run = crate::run_dir::existing_run(&dir).is_some()
        || dir.join(files::CONFIG).is_file()
        || dir.join(crate::run_dir::LOCK_FILE).is_file();
    if own.contains(&name) && holds_run {
        anyhow::bail!(
            "--out {}: {name} is a file of the run in {}; exporting over it would break that run \
             (its resume, evaluation or log): choose another file name or folder",
            out.display(),
            dir.display()
        );
    }
    Ok(())
}
