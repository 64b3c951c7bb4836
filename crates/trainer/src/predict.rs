//! Prediction on single images: [`Predictor`] (a trained model with its preprocessing and its
//! test-time settings) turns an RGB image into a [`LabelMap`] or logits. Drawing a prediction
//! over its image is `recallseg_report::render_overlay`'s job.
//!
//! ```
//! # fn main() -> anyhow::Result<()> {
//! use recallseg_trainer::predict::{Predictor, PredictorOptions};
//! # let dir = tempfile::tempdir()?;
//! # let root = dir.path().join("data");
//! # let synthetic = recallseg_data::SyntheticConfig {
//! #     seed: 1, width: 64, height: 32, frames_per_folder: 10,
//! #     cameras: vec!["Omni_F".into()], sides: vec!["Stereo_Left".into()],
//! #     ..Default::default()
//! # };
//! # recallseg_data::generate_synthia(&root, &synthetic)?;
//! # let run = dir.path().join("run");
//! # let set = [
//! #     format!("data.root={:?}", root.display().to_string()), "data.generate_synthetic=false".into(),
//! #     "data.height=32".into(), "data.width=64".into(), "data.workers=0".into(),
//! #     "model.backbone_width=4".into(), "model.head_channels=8".into(),
//! #     "model.low_level_channels=4".into(), "train.batch_size=2".into(), "train.iters=2".into(),
//! #     "train.val_every=0".into(), format!("train.out_dir={:?}", run.display().to_string()),
//! # ];
//! # let cfg = recallseg_trainer::config::Preset::SynthiaQuick.config(&set)?;
//! # let quiet = recallseg_trainer::train::TrainOptions { quiet: true, ..Default::default() };
//! # recallseg_trainer::train::train(&cfg, &quiet)?;
//! // `run` is a run folder written by `recallseg train` (best.safetensors, else last.safetensors).
//! let predictor = Predictor::open(&run, &PredictorOptions::default())?;
//! let image = recallseg_data::png_io::RgbImage {
//!     data: vec![128; 40 * 24 * 3],
//!     width: 40,
//!     height: 24,
//! };
//! let labels = predictor.predict(&image)?;
//! assert_eq!((labels.width, labels.height), (40, 24));
//! assert!(labels.label.iter().all(|&l| (l as usize) < predictor.classes().n_classes()));
//! // Logits (C, H, W) at the image's size: what the label map is the argmax of.
//! let logits = predictor.predict_logits(&image)?;
//! assert_eq!(logits.dims(), &[predictor.classes().n_classes(), 24, 40]);
//! # Ok(())
//! # }
//! ```

use crate::checkpoint::Checkpoint;
use crate::config::TrainConfig;
use crate::inference::{Inference, InferenceConfig};
use crate::run_files as files;
use crate::train::{build_model, BuiltModel};
use anyhow::Context;
use candle_core::{Device, Tensor};
use recallseg_data::png_io::RgbImage;
use recallseg_data::transform::normalize_chw;
use recallseg_data::{ClassInfo, LabelMap, Normalize};
use recallseg_models::ops::resize_bilinear;
use recallseg_models::DeepLab;
use std::path::{Path, PathBuf};

/// How a [`Predictor`] is opened.
#[derive(Debug, Clone)]
pub struct PredictorOptions {
    /// Device to run on (default CPU).
    pub device: Device,
    /// Test-time settings; `None` (default) takes the checkpoint's stored `[inference]`.
    pub inference: Option<InferenceConfig>,
    /// Network input `(height, width)` every image is resized to; `None` (default) takes the
    /// checkpoint's evaluation size (`data.eval_height × data.eval_width`, else the training
    /// size).
    pub input_size: Option<(usize, usize)>,
}

impl Default for PredictorOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            inference: None,
            input_size: None,
        }
    }
}

/// A trained model ready to segment images: the network, its class table, the normalisation
/// and input size it was trained for, and how it is run ([`Inference`]: whole image or sliding
/// window, flip and multi-scale averaging).
///
/// An image is resized to the input size (the configuration's `data.resize_method`),
/// normalised, run through the [`Inference`], and the logits are resized back to the image's
/// size bilinearly (the model's `align_corners`) before the per-pixel argmax, as
/// mmsegmentation's `inference_model` does.
pub struct Predictor {
    built: BuiltModel,
    config: TrainConfig,
    classes: ClassInfo,
    normalize: Normalize,
    device: Device,
    input_size: (usize, usize),
    inference: Inference,
    checkpoint: PathBuf,
    step: u64,
}

impl std::fmt::Debug for Predictor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Predictor")
            .field("checkpoint", &self.checkpoint)
            .field("model", self.built.model.config())
            .field("classes", &self.classes.names)
            .field("input_size", &self.input_size)
            .field("inference", &self.inference)
            .finish()
    }
}

impl Predictor {
    /// Opens a checkpoint file, or a run folder ([`Predictor::from_run_dir`]).
    pub fn open(path: &Path, opts: &PredictorOptions) -> anyhow::Result<Self> {
        if path.is_dir() {
            Self::from_run_dir(path, opts)
        } else {
            Self::from_checkpoint(path, opts)
        }
    }

    /// Opens the best checkpoint of a run folder (`best.safetensors`), else its last
    /// (`last.safetensors`).
    pub fn from_run_dir(dir: &Path, opts: &PredictorOptions) -> anyhow::Result<Self> {
        let best = dir.join(files::BEST);
        let last = dir.join(files::LAST);
        let path = if best.is_file() {
            best
        } else if last.is_file() {
            last
        } else {
            anyhow::bail!(
                "run folder {}: no checkpoint ({} or {})",
                dir.display(),
                files::BEST,
                files::LAST
            )
        };
        Self::from_checkpoint(&path, opts)
    }

    /// Opens a checkpoint written by `recallseg train`: the model with its weights, the class
    /// table and normalisation stored in it, and its configuration's `[inference]` unless
    /// `opts` gives one.
    pub fn from_checkpoint(path: &Path, opts: &PredictorOptions) -> anyhow::Result<Self> {
        let device = opts.device.clone();
        let ck = Checkpoint::load(path, &device)
            .with_context(|| format!("checkpoint {}", path.display()))?;
        let config: TrainConfig = toml::from_str(&ck.meta.config_toml).map_err(|e| {
            anyhow::anyhow!(
                "checkpoint {}: stored config unreadable: {e}",
                path.display()
            )
        })?;
        let classes = ClassInfo {
            names: ck.meta.class_names.clone(),
            palette: ck.meta.palette.clone(),
            ignore_index: ck.meta.ignore_index,
        };
        let built = build_model(&config, classes.names.len(), &device, false)?;
        ck.restore_varmap(&built.varmap, path)?;
        let normalize = ck.meta.normalize.unwrap_or(Normalize::IMAGENET);
        let input_size = opts.input_size.unwrap_or_else(|| config.data.eval_size());
        if input_size.0 == 0 || input_size.1 == 0 {
            anyhow::bail!("input size {input_size:?}: height and width must be at least 1");
        }
        let stored = config.inference.clone();
        let p = Self {
            built,
            config,
            classes,
            normalize,
            device,
            input_size,
            inference: Inference::default(),
            checkpoint: path.to_path_buf(),
            step: ck.meta.step,
        };
        p.with_inference(opts.inference.as_ref().unwrap_or(&stored))
    }

    /// The same predictor run as `inference` says instead (the window and stride defaults
    /// resolve against the checkpoint's training size).
    pub fn with_inference(mut self, inference: &InferenceConfig) -> anyhow::Result<Self> {
        self.inference = inference
            .plan(
                (self.config.data.height, self.config.data.width),
                self.config.model.align_corners,
            )
            .map_err(|(field, m)| anyhow::anyhow!("inference.{field}: {m}"))?;
        self.config.inference = inference.clone();
        Ok(self)
    }

    /// The network.
    pub fn model(&self) -> &DeepLab {
        &self.built.model
    }

    /// The network with its `VarMap` (every tensor of the checkpoint).
    pub fn built(&self) -> &BuiltModel {
        &self.built
    }

    /// The configuration stored in the checkpoint.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Class names, palette and ignore index of the dataset the model was trained on.
    pub fn classes(&self) -> &ClassInfo {
        &self.classes
    }

    /// The per-channel normalisation images get.
    pub fn normalize(&self) -> &Normalize {
        &self.normalize
    }

    /// The device the model is on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Network input `(height, width)`.
    pub fn input_size(&self) -> (usize, usize) {
        self.input_size
    }

    /// How the model is run (whole / sliding window, augmentation).
    pub fn inference(&self) -> &Inference {
        &self.inference
    }

    /// The checkpoint file the model was loaded from.
    pub fn checkpoint(&self) -> &Path {
        &self.checkpoint
    }

    /// The training step the checkpoint was written at.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Logits `(N, C, H, W)` of a batch of normalised images `(N, 3, H, W)` as they are (no
    /// resize), through the [`Inference`]. What `eval` runs on its loader's batches.
    pub fn batch_logits(&self, x: &Tensor) -> anyhow::Result<Tensor> {
        Ok(self.inference.model_logits(&self.built.model, x)?)
    }

    /// Logits `(C, height, width)` of `image` at the image's size (see [`Predictor`]).
    pub fn predict_logits(&self, image: &RgbImage) -> anyhow::Result<Tensor> {
        let (w, h) = (image.width, image.height);
        if w == 0 || h == 0 || image.data.len() != w * h * 3 {
            anyhow::bail!(
                "image buffer of {} bytes does not match {w}x{h} RGB",
                image.data.len()
            );
        }
        let (net_h, net_w) = self.input_size;
        let resized =
            self.config
                .data
                .resize_method
                .resize_image(&image.data, w, h, net_w, net_h)?;
        let mut planar = vec![0f32; net_w * net_h * 3];
        normalize_chw(&resized, net_w, net_h, &self.normalize, &mut planar)?;
        let x = Tensor::from_vec(planar, (1, 3, net_h, net_w), &self.device)?;
        let logits = self.batch_logits(&x)?;
        let logits = resize_bilinear(&logits, h, w, self.config.model.align_corners)?;
        Ok(logits.squeeze(0)?)
    }

    /// The label map of `image` (`height × width` train ids): the argmax of
    /// [`Predictor::predict_logits`].
    pub fn predict(&self, image: &RgbImage) -> anyhow::Result<LabelMap> {
        let logits = self.predict_logits(image)?.unsqueeze(0)?;
        Ok(LabelMap {
            width: image.width,
            height: image.height,
            label: crate::eval::argmax_labels(&logits)?,
        })
    }

    /// Decodes an image file (PNG or JPEG by content, within the data crate's size limits) and
    /// predicts it; returns the image too.
    pub fn predict_file(&self, path: &Path) -> anyhow::Result<(RgbImage, LabelMap)> {
        let image = recallseg_data::png_io::decode_rgb8(path)?;
        let labels = self
            .predict(&image)
            .with_context(|| format!("predicting {}", path.display()))?;
        Ok((image, labels))
    }
}
