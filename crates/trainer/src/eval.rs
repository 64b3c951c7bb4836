//! Evaluation: a model over a loader into a confusion matrix, and single-image prediction.

use crate::data::batch_tensors;
use crate::inference::Inference;
use candle_core::{DType, Device, Tensor};
use recallseg_data::Loader;
use recallseg_losses::SegLoss;
use recallseg_metrics::{ConfusionMatrix, PerImageIou};
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
    /// Each image's per-class IoU (torchmetrics' `MeanIoU` per sample), in loader order: only
    /// when asked for ([`evaluate_per_image`]), `None` otherwise.
    pub per_image: Option<PerImageIou>,
}

/// [`evaluate`] that also computes `loss` on every batch: returns the output and the mean of the
/// per-batch losses weighted by their image counts (the validation loss of the training log;
/// `None` for an empty loader). `state`, when given, is loaded into the loss before every batch,
/// so a loss that carries state across steps (Recall loss's moving average) is measured in the
/// training loss's current state and never updated by the evaluation.
pub fn evaluate_with_loss(
    model: &DeepLab,
    loader: &Loader,
    device: &Device,
    keep: usize,
    loss: &mut dyn SegLoss,
    state: Option<&[f32]>,
) -> anyhow::Result<(EvalOutput, Option<f64>)> {
    let (out, sum) = evaluate_with_loss_sum(model, loader, device, keep, loss, state)?;
    let images = out.images;
    Ok((out, (images > 0).then(|| sum / images as f64)))
}

/// [`evaluate_with_loss`] returning the sum of the per-batch losses times their image counts
/// instead of the mean (what shards of a split add up before dividing by all their images).
pub fn evaluate_with_loss_sum(
    model: &DeepLab,
    loader: &Loader,
    device: &Device,
    keep: usize,
    loss: &mut dyn SegLoss,
    state: Option<&[f32]>,
) -> anyhow::Result<(EvalOutput, f64)> {
    let mut sum = 0.0f64;
    let plain = Inference::default();
    let out = evaluate_inner(
        model,
        loader,
        device,
        keep,
        &plain,
        false,
        |logits, target, n| {
            if let Some(s) = state {
                loss.load_state(s)?;
            }
            let v = loss
                .forward(logits, target)?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            sum += v * n as f64;
            Ok(())
        },
    )?;
    Ok((out, sum))
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
    evaluate_inner(model, loader, device, keep, inference, false, |_, _, _| {
        Ok(())
    })
}

/// [`evaluate_with`] that stops between two batches once `interrupt` is set (a signal during a
/// long evaluation): `Ok(None)` then.
pub fn evaluate_interruptible(
    model: &DeepLab,
    loader: &Loader,
    device: &Device,
    keep: usize,
    inference: &Inference,
    interrupt: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<Option<EvalOutput>> {
    #[derive(Debug)]
    struct Interrupted;
    impl std::fmt::Display for Interrupted {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("interrupted")
        }
    }
    impl std::error::Error for Interrupted {}
    let stop = |_: &Tensor, _: &Tensor, _: usize| -> anyhow::Result<()> {
        if interrupt.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Interrupted.into());
        }
        Ok(())
    };
    match evaluate_inner(model, loader, device, keep, inference, false, stop) {
        Ok(out) => Ok(Some(out)),
        Err(e) if e.is::<Interrupted>() => Ok(None),
        Err(e) => Err(e),
    }
}

/// [`evaluate_with`] that also collects each image's IoU ([`PerImageIou`], in
/// [`EvalOutput::per_image`]) alongside the dataset-wide matrix (which is the same as
/// [`evaluate_with`]'s).
pub fn evaluate_per_image(
    model: &DeepLab,
    loader: &Loader,
    device: &Device,
    keep: usize,
    inference: &Inference,
) -> anyhow::Result<EvalOutput> {
    evaluate_inner(model, loader, device, keep, inference, true, |_, _, _| {
        Ok(())
    })
}

/// The evaluation loop; `on_batch(logits, target, n)` sees every batch's logits; `per_image`
/// also collects [`PerImageIou`].
fn evaluate_inner(
    model: &DeepLab,
    loader: &Loader,
    device: &Device,
    keep: usize,
    inference: &Inference,
    per_image: bool,
    mut on_batch: impl FnMut(&Tensor, &Tensor, usize) -> anyhow::Result<()>,
) -> anyhow::Result<EvalOutput> {
    let info = loader.dataset().class_info().clone();
    let mut matrix =
        ConfusionMatrix::with_ignore_index(info.n_classes(), Some(info.ignore_index as u32));
    let mut per = if per_image {
        Some(PerImageIou::new(
            info.n_classes(),
            Some(info.ignore_index as u32),
        )?)
    } else {
        None
    };
    let mut kept = Vec::new();
    let mut images = 0;
    // Read once per evaluation, not per batch.
    let available = crate::inference::available_memory_bytes();
    for batch in loader.epoch(0) {
        let batch = batch?;
        let (x, target) = batch_tensors(&batch, device)?;
        let logits = inference.model_logits_within(model, &x, available)?;
        on_batch(&logits, &target, batch.n)?;
        let pred = argmax_labels(&logits)?;
        let hw = batch.height * batch.width;
        match per.as_mut() {
            // Counted image by image; their sum is the batch's matrix.
            Some(pi) => matrix.merge(&pi.update(&batch.labels, &pred, hw)?)?,
            None => matrix.update(&batch.labels, &pred)?,
        }
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
        per_image: per,
    })
}
