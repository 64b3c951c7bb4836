//! Prediction on single images: [`Predictor`] (a trained model with its preprocessing and its
//! test-time settings) turns an RGB image into a [`LabelMap`] or logits; [`overlay`] and
//! [`render_overlay`] draw a prediction over its image with a legend of the classes.
//!
//! ```
//! # fn main() -> anyhow::Result<()> {
//! use recallseg_trainer::predict::{Predictor, PredictorOptions};
//! # let dir = tempfile::tempdir()?;
//! # let run = recallseg_trainer::predict::doc_example_run(dir.path())?;
//! // `run` is a run folder written by `recallseg train` (best.safetensors, else last.safetensors).
//! let predictor = Predictor::open(&run, &PredictorOptions::default())?;
//! let image = recallseg_data::png_io::RgbImage {
//!     data: vec![128; 40 * 24 * 3],
//!     width: 40,
//!     height: 24,
//! };
//! let labels = predictor.predict(&image)?;
//! assert_eq!((labels.width, labels.height), (40, 24));
//! assert!(labels.labels.iter().all(|&l| (l as usize) < predictor.classes().n_classes()));
//! // Logits (C, H, W) at the image's size: what the label map is the argmax of.
//! let logits = predictor.predict_logits(&image)?;
//! assert_eq!(logits.dims(), &[predictor.classes().n_classes(), 24, 40]);
//! # Ok(())
//! # }
//! ```

use crate::checkpoint::Checkpoint;
use crate::config::TrainConfig;
use crate::inference::{Inference, InferenceConfig};
use crate::train::{build_model, files, BuiltModel};
use anyhow::Context;
use candle_core::{Device, Tensor};
use recallseg_data::png_io::RgbImage;
use recallseg_data::transform::normalize_chw;
use recallseg_data::{ClassInfo, Normalize};
use recallseg_models::ops::resize::resize_bilinear;
use recallseg_models::DeepLab;
use std::path::{Path, PathBuf};

/// A predicted label map: one train id per pixel, row by row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelMap {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height × width` train ids.
    pub labels: Vec<u8>,
}

impl LabelMap {
    /// The train id at `(x, y)`.
    pub fn get(&self, x: usize, y: usize) -> u8 {
        self.labels[y * self.width + x]
    }

    /// RGB bytes (`height × width × 3`) in the colours of `palette`; ids outside it are black.
    pub fn colorize(&self, palette: &[[u8; 3]]) -> Vec<u8> {
        crate::report::colorize(&self.labels, palette)
    }

    /// Number of pixels of each of the `n_classes` train ids (ids outside are not counted).
    pub fn class_pixels(&self, n_classes: usize) -> Vec<u64> {
        let mut n = vec![0u64; n_classes];
        for &l in &self.labels {
            if let Some(c) = n.get_mut(l as usize) {
                *c += 1;
            }
        }
        n
    }

    /// Writes the train ids as an 8-bit greyscale PNG (what programs read back).
    pub fn save_png(&self, path: &Path) -> anyhow::Result<()> {
        image::save_buffer(
            path,
            &self.labels,
            self.width as u32,
            self.height as u32,
            image::ExtendedColorType::L8,
        )
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }
}

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
            labels: crate::eval::argmax_labels(&logits)?,
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

/// Trains a two-step run on a tiny generated dataset in `dir` and returns its folder: the
/// fixture of this module's documentation example (not for other uses).
#[doc(hidden)]
pub fn doc_example_run(dir: &Path) -> anyhow::Result<PathBuf> {
    let root = dir.join("data");
    recallseg_data::generate_synthia(
        &root,
        &recallseg_data::SyntheticConfig {
            seed: 1,
            width: 64,
            height: 32,
            cameras: vec!["Omni_F".into()],
            sides: vec!["Stereo_Left".into()],
            frames_per_folder: 10,
            ..recallseg_data::SyntheticConfig::default()
        },
    )?;
    let out = dir.join("run");
    let o: Vec<String> = vec![
        format!("data.root={:?}", root.display().to_string()),
        "data.generate_synthetic=false".into(),
        "data.height=32".into(),
        "data.width=64".into(),
        "data.workers=0".into(),
        "model.backbone_width=4".into(),
        "model.head_channels=8".into(),
        "model.low_level_channels=4".into(),
        "train.batch_size=2".into(),
        "train.iters=2".into(),
        "train.val_every=0".into(),
        format!("train.out_dir={:?}", out.display().to_string()),
    ];
    let cfg = crate::config::Preset::SynthiaQuick.config(&o)?;
    crate::train::train(
        &cfg,
        &crate::train::TrainOptions {
            quiet: true,
            ..Default::default()
        },
    )?;
    Ok(out)
}

/// How [`render_overlay`] draws a prediction over its image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OverlayOptions {
    /// Weight of the class colour in the blend, in `[0, 1]`: 0 shows the image alone, 1 the
    /// colour mask alone (default 0.5, mmsegmentation's `show_result_pyplot` opacity).
    pub alpha: f32,
    /// Draw the legend strip (class colours, names and pixel shares) under the image
    /// (default `true`).
    pub legend: bool,
}

impl Default for OverlayOptions {
    fn default() -> Self {
        Self {
            alpha: 0.5,
            legend: true,
        }
    }
}

/// An RGB picture: `height × width × 3` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picture {
    /// RGB bytes, row by row.
    pub data: Vec<u8>,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Whether every text of the picture was drawn (`false` when no font could be used: the
    /// colours and layout are there, the names are not).
    pub text_drawn: bool,
}

impl Picture {
    /// Writes the picture as an RGB PNG.
    pub fn save_png(&self, path: &Path) -> anyhow::Result<()> {
        image::save_buffer(
            path,
            &self.data,
            self.width as u32,
            self.height as u32,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }
}

/// The image blended with the colourised labels: each pixel
/// `round((1 − alpha) · image + alpha · palette[label])`; pixels whose label has no colour
/// (the ignore index) keep the image's colour. Errors when the sizes differ or `alpha` is not in
/// `[0, 1]`.
pub fn overlay(
    image: &RgbImage,
    labels: &LabelMap,
    palette: &[[u8; 3]],
    alpha: f32,
) -> anyhow::Result<Vec<u8>> {
    if !(alpha.is_finite() && (0.0..=1.0).contains(&alpha)) {
        anyhow::bail!("overlay alpha {alpha} is not in [0, 1]");
    }
    if (image.width, image.height) != (labels.width, labels.height)
        || image.data.len() != image.width * image.height * 3
        || labels.labels.len() != labels.width * labels.height
    {
        anyhow::bail!(
            "overlay: image {}x{} and label map {}x{} differ in size",
            image.width,
            image.height,
            labels.width,
            labels.height
        );
    }
    let mut out = image.data.clone();
    for (px, &l) in out.chunks_exact_mut(3).zip(&labels.labels) {
        if let Some(c) = palette.get(l as usize) {
            for (v, &k) in px.iter_mut().zip(c) {
                *v = ((1.0 - alpha) * *v as f32 + alpha * k as f32).round() as u8;
            }
        }
    }
    Ok(out)
}

/// The classes of a legend: each class present in `labels`, in train-id order, with its share
/// of the labelled pixels in percent.
pub fn legend_entries(labels: &LabelMap, n_classes: usize) -> Vec<(usize, f64)> {
    let counts = labels.class_pixels(n_classes);
    let total: u64 = counts.iter().sum();
    counts
        .iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        .map(|(c, &n)| (c, 100.0 * n as f64 / total as f64))
        .collect()
}

const LEGEND_MIN_WIDTH: usize = 240;

/// The overlay picture `recallseg predict` writes (`<stem>_overlay.png`): the image blended
/// with the prediction ([`overlay`]) and, with `opts.legend`, a white strip under it with one
/// entry per class present ([`legend_entries`]): its colour swatch, its name and its share of
/// the pixels, as mmsegmentation's visualiser labels a prediction. The strip is at least
/// 240 pixels wide (a narrower image sits at its left) and its text grows with the image.
pub fn render_overlay(
    image: &RgbImage,
    labels: &LabelMap,
    classes: &ClassInfo,
    opts: &OverlayOptions,
) -> anyhow::Result<Picture> {
    let blended = overlay(image, labels, &classes.palette, opts.alpha)?;
    let (w, h) = (image.width, image.height);
    if !opts.legend {
        return Ok(Picture {
            data: blended,
            width: w,
            height: h,
            text_drawn: true,
        });
    }
    let entries = legend_entries(labels, classes.n_classes());
    let texts: Vec<String> = entries
        .iter()
        .map(|&(c, share)| {
            let name = classes.names.get(c).map_or("?", |s| s.as_str());
            if share < 0.05 {
                format!("{name} <0.1%")
            } else {
                format!("{name} {share:.1}%")
            }
        })
        .collect();
    let font = (w / 48).clamp(13, 32);
    let row_h = font + font / 2;
    let pad = font / 2;
    let swatch = font;
    // Text width estimated from the longest label (about 0.6 em per character of a sans
    // font), so columns line up.
    let longest = texts.iter().map(|t| t.chars().count()).max().unwrap_or(0);
    let entry_w = pad + swatch + pad + (longest * font * 3).div_ceil(5) + 2 * pad;
    let width = w.max(LEGEND_MIN_WIDTH).max(entry_w + pad);
    let per_line = ((width - pad) / entry_w).max(1);
    let lines = entries.len().div_ceil(per_line);
    let strip_h = lines * row_h + 2 * pad;
    let height = h + strip_h;
    let mut buf = vec![255u8; width * height * 3];
    for y in 0..h {
        buf[y * width * 3..y * width * 3 + w * 3]
            .copy_from_slice(&blended[y * w * 3..(y + 1) * w * 3]);
    }
    let mut placed = Vec::with_capacity(entries.len());
    for (k, (&(c, _), text)) in entries.iter().zip(&texts).enumerate() {
        let x = pad + (k % per_line) * entry_w;
        let y = h + pad + (k / per_line) * row_h + (row_h - swatch) / 2;
        let colour = classes.palette.get(c).copied().unwrap_or([0, 0, 0]);
        for dy in 0..swatch {
            for dx in 0..swatch {
                let border = dy == 0 || dx == 0 || dy + 1 == swatch || dx + 1 == swatch;
                let d = ((y + dy) * width + x + dx) * 3;
                buf[d..d + 3].copy_from_slice(if border { &[0, 0, 0] } else { &colour });
            }
        }
        placed.push((text.clone(), ((x + swatch + pad) as i32, y as i32)));
    }
    let text_drawn = draw_texts(&mut buf, (width, height), &placed, font).is_ok();
    Ok(Picture {
        data: buf,
        width,
        height,
        text_drawn,
    })
}

/// Draws black text at the given top-left positions with plotters' font rendering and the
/// embedded font of the report's figures ([`crate::font`]).
fn draw_texts(
    buf: &mut [u8],
    (width, height): (usize, usize),
    texts: &[(String, (i32, i32))],
    font_px: usize,
) -> Result<(), String> {
    use plotters::prelude::*;
    crate::font::register_fonts()?;
    let root = BitMapBackend::with_buffer(buf, (width as u32, height as u32)).into_drawing_area();
    for (t, pos) in texts {
        root.draw(&Text::new(
            t.clone(),
            *pos,
            (crate::font::FAMILY, font_px as f64)
                .into_font()
                .color(&BLACK),
        ))
        .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes() -> ClassInfo {
        ClassInfo {
            names: vec!["sky".into(), "road".into(), "pedestrian".into()],
            palette: vec![[0, 0, 255], [128, 64, 128], [220, 20, 60]],
            ignore_index: 255,
        }
    }

    #[test]
    fn overlay_blends_and_keeps_void_pixels() {
        let image = RgbImage {
            data: vec![100, 200, 0, 10, 10, 10, 255, 255, 255],
            width: 3,
            height: 1,
        };
        let labels = LabelMap {
            width: 3,
            height: 1,
            labels: vec![0, 255, 2],
        };
        let p = classes().palette;
        let o = overlay(&image, &labels, &p, 0.25).unwrap();
        // 0.75 · 100 + 0.25 · 0 = 75, 0.75 · 200 = 150, 0.75 · 0 + 0.25 · 255 = 63.75 → 64.
        assert_eq!(&o[0..3], &[75, 150, 64]);
        assert_eq!(&o[3..6], &[10, 10, 10], "void keeps the image");
        assert_eq!(&o[6..9], &[246, 196, 206]);
        assert_eq!(overlay(&image, &labels, &p, 0.0).unwrap(), image.data);
        assert_eq!(&overlay(&image, &labels, &p, 1.0).unwrap()[6..9], &p[2]);
        assert!(overlay(&image, &labels, &p, 1.5)
            .unwrap_err()
            .to_string()
            .contains("1.5"));
        let small = LabelMap {
            width: 2,
            height: 1,
            labels: vec![0, 0],
        };
        assert!(overlay(&image, &small, &p, 0.5).is_err());
    }

    #[test]
    fn legend_lists_the_classes_present_with_their_share() {
        let labels = LabelMap {
            width: 4,
            height: 2,
            labels: vec![0, 0, 0, 0, 0, 2, 2, 255],
        };
        let e = legend_entries(&labels, 3);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].0, 0);
        assert!((e[0].1 - 500.0 / 7.0).abs() < 1e-9);
        assert_eq!(e[1].0, 2);
        // The picture: the blended image on top, a white strip with one swatch per class.
        let image = RgbImage {
            data: vec![0; 4 * 2 * 3],
            width: 4,
            height: 2,
        };
        let pic = render_overlay(&image, &labels, &classes(), &OverlayOptions::default()).unwrap();
        assert_eq!(pic.width, LEGEND_MIN_WIDTH);
        assert!(pic.height > 2 + 13);
        let px =
            |x: usize, y: usize| &pic.data[(y * pic.width + x) * 3..(y * pic.width + x) * 3 + 3];
        assert_eq!(px(0, 0), &[0, 0, 128]);
        assert_eq!(px(3, 1), &[0, 0, 0], "void pixel keeps the image");
        assert_eq!(px(100, 0), &[255, 255, 255], "right of a narrow image");
        let n = |c: [u8; 3]| pic.data.chunks(3).filter(|p| *p == c).count();
        // Swatches: 13 px squares with a 1 px border, 11×11 inside.
        assert_eq!(n(classes().palette[0]), 121);
        assert_eq!(n(classes().palette[2]), 121);
        assert_eq!(n(classes().palette[1]), 0, "road is not in the prediction");
        // The names are drawn (the embedded font): dark ink right of the swatches.
        assert!(pic.text_drawn);
        let ink = (2..pic.height)
            .flat_map(|y| (20..pic.width).map(move |x| (x, y)))
            .filter(|&(x, y)| px(x, y)[0] < 100)
            .count();
        assert!(ink > 40, "{ink} dark pixels in the legend");
        // Without the legend: the blend alone.
        let bare = render_overlay(
            &image,
            &labels,
            &classes(),
            &OverlayOptions {
                legend: false,
                ..OverlayOptions::default()
            },
        )
        .unwrap();
        assert_eq!((bare.width, bare.height), (4, 2));
    }
}
