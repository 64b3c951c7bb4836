//! Evaluation: a model over a loader into a confusion matrix, and single-image prediction.

use crate::data::batch_tensors;
use crate::inference::Inference;
use candle_core::{DType, Device, Tensor};
use recallseg_data::Loader;
use recallseg_metrics::ConfusionMatrix;
use recallseg_models::DeepLab;

/// What [`evaluate`] returns.
#[derive(Debug, Clone)]
pub struct EvalOutput {
    /// Confusion matrix over every evaluated pixel (ignore index skipped).
    pub matrix: ConfusionMatrix,
    /// The first `keep` items: `(dataset index, id, ground truth, prediction)` at the loader's
    /// resolution.
    pub kept: Vec<(usize, String, Vec<u8>, Vec<u8>)>,
    /// Number of images evaluated.
    pub images: usize,
}

/// Per-pixel argmax of logits `(N, C, H, W)` as `u8` train ids `(N·H·W)`.
pub fn argmax_labels(logits: &Tensor) -> candle_core::Result<Vec<u8>> {
    let pred = logits.argmax_keepdim(1)?.squeeze(1)?;
    pred.to_dtype(DType::U8)?.flatten_all()?.to_vec1::<u8>()
}

/// Runs `model` in inference mode over every batch of `loader` (one whole-image pass) and
/// accumulates the confusion matrix; keeps the predictions of the first `keep` items.
pub fn evaluate(
    model: &DeepLab,
    loader: &Loader,
    device: &Device,
    keep: usize,
) -> anyhow::Result<EvalOutput> {
    evaluate_with(model, loader, device, keep, &Inference::default())
}

/// [`evaluate`] with the model run as `inference` says (sliding window, flip and multi-scale
/// averaging; [`crate::inference`]) on each batch at the loader's resolution.
pub fn evaluate_with(
    model: &DeepLab,
    loader: &Loader,
    device: &Device,
    keep: usize,
    inference: &Inference,
) -> anyhow::Result<EvalOutput> {
    let info = loader.dataset().class_info().clone();
    let mut matrix =
        ConfusionMatrix::with_ignore_index(info.n_classes(), Some(info.ignore_index as u32));
    let mut kept = Vec::new();
    let mut images = 0;
    for batch in loader.epoch(0) {
        let batch = batch?;
        let (x, _) = batch_tensors(&batch, device)?;
        let logits = inference.model_logits(model, &x)?;
        let pred = argmax_labels(&logits)?;
        matrix.update(&batch.labels, &pred)?;
        let hw = batch.height * batch.width;
        for i in 0..batch.n {
            if kept.len() < keep {
                kept.push((
                    batch.indices[i],
                    batch.ids[i].clone(),
                    batch.labels[i * hw..(i + 1) * hw].to_vec(),
                    pred[i * hw..(i + 1) * hw].to_vec(),
                ));
            }
        }
        images += batch.n;
    }
    Ok(EvalOutput {
        matrix,
        kept,
        images,
    })
}
