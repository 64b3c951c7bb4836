//! How a trained model turns a batch of normalised images into logits at test time: on the whole
//! image or by sliding windows, optionally with test-time augmentation (horizontal flip,
//! several scales).
//!
//! [`InferenceConfig`] is the `[inference]` section of a configuration (and of the options of
//! `recallseg eval` / `predict`); [`InferenceConfig::plan`] resolves it against the training
//! size into an [`Inference`], whose [`Inference::logits`] runs any forward function (a
//! [`DeepLab`] through [`Inference::model_logits`]). The default (`mode = "whole"`, no flip, one
//! scale 1) is exactly one forward pass, bit for bit what evaluation did before the section
//! existed.
//!
//! * **Sliding window** (`mode = "slide"`), as mmsegmentation's `slide_inference`: windows of
//!   `window` pixels every `stride` pixels, the last window of a row or column moved back to end
//!   at the image's edge (an image smaller than the window is one smaller window); the logits of
//!   the windows are summed and each pixel divided by the number of windows covering it.
//! * **Test-time augmentation**: for each scale `s` of `scales` the batch is resized
//!   (bilinearly) to `round(s·H) × round(s·W)`, segmented (whole or sliding), and with `hflip`
//!   also segmented mirrored and mirrored back; every pass's logits are resized back to `H × W`
//!   and the passes' logits averaged (the mean of raw logits, as ttach's `mean` merge;
//!   mmsegmentation's `SegTTAModel` averages softmax probabilities instead, which can differ in
//!   the argmax where passes disagree strongly).
//!
//! ```
//! use recallseg_trainer::inference::{InferenceConfig, InferenceMode};
//! let cfg = InferenceConfig {
//!     mode: InferenceMode::Slide,
//!     window: Some([64, 64]),
//!     hflip: true,
//!     scales: vec![0.75, 1.0],
//!     ..InferenceConfig::default()
//! };
//! // The model was trained on 64×128 inputs; its upsampling uses align_corners = false.
//! let plan = cfg.plan((64, 128), false).unwrap();
//! assert_eq!(plan.passes(), 4); // two scales, each plain and mirrored
//! // Any forward function from (N, 3, h, w) to (N, C, h, w); here the identity. The logits
//! // come back at the input's size, averaged over windows, scales and the mirrored pass.
//! let x = candle_core::Tensor::arange(0f32, 2.0 * 96.0 * 160.0, &candle_core::Device::Cpu)?
//!     .reshape((1, 2, 96, 160))?;
//! let y = plan.logits(&|t: &candle_core::Tensor| Ok(t.clone()), &x)?;
//! assert_eq!(y.dims(), &[1, 2, 96, 160]);
//! # Ok::<(), candle_core::Error>(())
//! ```

use candle_core::{Result, Tensor};
use recallseg_models::ops::resize_bilinear;
use recallseg_models::DeepLab;
use serde::{Deserialize, Serialize};

/// Whole-image or sliding-window inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InferenceMode {
    /// One forward pass over the whole (resized) image (default).
    #[default]
    Whole,
    /// Windows of `window` pixels every `stride` pixels, logits averaged where they overlap.
    Slide,
}

impl InferenceMode {
    /// `whole` or `slide`.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        match s {
            "whole" => Ok(InferenceMode::Whole),
            "slide" => Ok(InferenceMode::Slide),
            other => Err(format!(
                "unknown inference mode `{other}`; use whole or slide"
            )),
        }
    }
}

/// `[inference]`: how `eval`, `predict` and the test evaluation after a comparison run the
/// model (validation during training always uses one whole-image pass).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceConfig {
    /// `whole` (default) or `slide`.
    pub mode: InferenceMode,
    /// Sliding window `[height, width]` in pixels of the network input (default: the training
    /// input size `data.height × data.width`). Only with `mode = "slide"`.
    pub window: Option<[usize; 2]>,
    /// Step between windows `[height, width]` (default: two thirds of the window, rounded, as
    /// mmsegmentation's Cityscapes configs: 512×1024 windows every 341×683). At most the window
    /// (no pixel left uncovered). Only with `mode = "slide"`.
    pub stride: Option<[usize; 2]>,
    /// Also segment the mirrored image and average (test-time augmentation; default `false`).
    pub hflip: bool,
    /// Scales of the network input to segment at and average (multi-scale test-time
    /// augmentation; default `[1.0]`; mmsegmentation's usual list is
    /// `[0.5, 0.75, 1.0, 1.25, 1.5, 1.75]`).
    pub scales: Vec<f64>,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            mode: InferenceMode::Whole,
            window: None,
            stride: None,
            hflip: false,
            scales: vec![1.0],
        }
    }
}

impl InferenceConfig {
    /// Checks every field; the error is `(field, message)` with the field's name inside the
    /// section (`window`, `stride`, `scales`).
    pub fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        if self.mode == InferenceMode::Whole {
            for (field, v) in [("window", self.window), ("stride", self.stride)] {
                if let Some(v) = v {
                    return Err((
                        field,
                        format!("{v:?} is only used with mode = \"slide\" (mode is \"whole\")"),
                    ));
                }
            }
        }
        if let Some(w) = self.window {
            if w.contains(&0) {
                return Err(("window", format!("{w:?}: sizes must be at least 1")));
            }
        }
        if let Some(s) = self.stride {
            if s.contains(&0) {
                return Err(("stride", format!("{s:?}: steps must be at least 1")));
            }
            if let Some(w) = self.window {
                if s[0] > w[0] || s[1] > w[1] {
                    return Err((
                        "stride",
                        format!(
                            "{s:?} is larger than the window {w:?}: pixels between windows \
                             would get no prediction"
                        ),
                    ));
                }
            }
        }
        if self.scales.is_empty() {
            return Err(("scales", "needs at least one scale (e.g. [1.0])".into()));
        }
        for &s in &self.scales {
            if !(s.is_finite() && s > 0.0 && s <= 8.0) {
                return Err(("scales", format!("{s} is not in (0, 8]")));
            }
        }
        Ok(())
    }

    /// Resolves the defaults: the window defaults to `train_size` (`(height, width)` of the
    /// training input) and the stride to two thirds of the window. `align_corners` is the
    /// model's upsampling rule, used for every resize of the augmentation. Fails as
    /// [`InferenceConfig::validate`] does, and for a stride larger than the resolved window.
    pub fn plan(
        &self,
        train_size: (usize, usize),
        align_corners: bool,
    ) -> std::result::Result<Inference, (&'static str, String)> {
        self.validate()?;
        let mode = match self.mode {
            InferenceMode::Whole => Mode::Whole,
            InferenceMode::Slide => {
                let [wh, ww] = self.window.unwrap_or([train_size.0, train_size.1]);
                if wh == 0 || ww == 0 {
                    return Err(("window", format!("[{wh}, {ww}]: sizes must be at least 1")));
                }
                let [sh, sw] = self
                    .stride
                    .unwrap_or([(2 * wh + 1) / 3, (2 * ww + 1) / 3].map(|v| v.max(1)));
                if sh > wh || sw > ww {
                    return Err((
                        "stride",
                        format!(
                            "[{sh}, {sw}] is larger than the window [{wh}, {ww}]: pixels \
                             between windows would get no prediction"
                        ),
                    ));
                }
                Mode::Slide {
                    window: (wh, ww),
                    stride: (sh, sw),
                }
            }
        };
        Ok(Inference {
            mode,
            hflip: self.hflip,
            scales: self.scales.clone(),
            align_corners,
        })
    }
}

/// The resolved way of running a model at test time (see the module documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct Inference {
    mode: Mode,
    hflip: bool,
    scales: Vec<f64>,
    align_corners: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Whole,
    Slide {
        window: (usize, usize),
        stride: (usize, usize),
    },
}

impl Default for Inference {
    /// One whole-image pass (`align_corners = false`).
    fn default() -> Self {
        Self {
            mode: Mode::Whole,
            hflip: false,
            scales: vec![1.0],
            align_corners: false,
        }
    }
}

impl Inference {
    /// Number of passes averaged: scales × (2 with the flip, else 1).
    pub fn passes(&self) -> usize {
        self.scales.len() * if self.hflip { 2 } else { 1 }
    }

    /// Whether this is one plain whole-image pass (the default).
    pub fn is_plain(&self) -> bool {
        self.mode == Mode::Whole && self.passes() == 1 && self.scales[0] == 1.0
    }

    /// `(window, stride)` as `((h, w), (h, w))` in sliding-window mode.
    pub fn window(&self) -> Option<((usize, usize), (usize, usize))> {
        match self.mode {
            Mode::Whole => None,
            Mode::Slide { window, stride } => Some((window, stride)),
        }
    }

    /// [`Inference::logits`] of `model` in evaluation mode. Refused up front, with the
    /// figures, when the logits' buffers alone ([`Inference::logit_bytes`]) would not fit in
    /// the memory the system says is available now (read on every call: a loop over batches
    /// reads it once and calls [`Inference::model_logits_within`]).
    pub fn model_logits(&self, model: &DeepLab, x: &Tensor) -> Result<Tensor> {
        self.model_logits_within(model, x, available_memory_bytes())
    }

    /// [`Inference::model_logits`] against `available` bytes of memory (`None`: not checked),
    /// e.g. [`available_memory_bytes`] read once per evaluation.
    pub fn model_logits_within(
        &self,
        model: &DeepLab,
        x: &Tensor,
        available: Option<u64>,
    ) -> Result<Tensor> {
        let (n, _, h, w) = x.dims4()?;
        let classes = model.config().n_classes;
        if let Some(available) = available {
            self.check_fits(n, classes, h, w, available)
                .map_err(candle_core::Error::Msg)?;
        }
        self.logits(&|t: &Tensor| model.forward_t(t, false), x)
    }

    /// Bytes of the `f32` logit buffers alive at once while a batch of `n` images of `h × w`
    /// with `classes` classes is segmented: the running sum and one pass resized to `h × w`,
    /// plus, at the largest scale, the pass's logits and (sliding windows) its host sum. The
    /// network's own activations come on top.
    pub fn logit_bytes(&self, n: usize, classes: usize, h: usize, w: usize) -> u64 {
        let plane = |hh: usize, ww: usize| (n * classes) as u64 * hh as u64 * ww as u64 * 4;
        let largest = self
            .scales
            .iter()
            .filter_map(|&s| scaled(h, s).zip(scaled(w, s)))
            .map(|(hs, ws)| plane(hs, ws))
            .max()
            .unwrap_or(0);
        2 * plane(h, w) + 2 * largest
    }

    /// `Err` with the figures when [`Inference::logit_bytes`] exceeds `available` bytes.
    pub fn check_fits(
        &self,
        n: usize,
        classes: usize,
        h: usize,
        w: usize,
        available: u64,
    ) -> std::result::Result<(), String> {
        let need = self.logit_bytes(n, classes, h, w);
        if need <= available {
            return Ok(());
        }
        let gb = |b: u64| b as f64 / 1e9;
        let largest = self.scales.iter().cloned().fold(0.0f64, f64::max);
        Err(format!(
            "inference: a batch of {n} image(s) of {h}x{w} with {classes} classes at scale \
             {largest} needs {:.1} GB for its logits alone, and {:.1} GB of memory are \
             available; lower inference.scales, evaluate smaller images or fewer at a time",
            gb(need),
            gb(available)
        ))
    }
}

/// The memory the system says is available to a new allocation (`MemAvailable` of
/// `/proc/meminfo`); `None` where that is not known.
pub fn available_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

impl Inference {
    /// Logits `(N, C, H, W)` of a batch of normalised images `x` `(N, 3, H, W)` (any channel
    /// count), from `forward`, which maps `(N, 3, h, w)` to `(N, C, h, w)` for any `h × w`.
    pub fn logits(
        &self,
        forward: &dyn Fn(&Tensor) -> Result<Tensor>,
        x: &Tensor,
    ) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let mut sum: Option<Tensor> = None;
        for &s in &self.scales {
            let (hs, ws) = scaled(h, s).zip(scaled(w, s)).ok_or_else(|| {
                candle_core::Error::Msg(format!("scale {s} of a {h}x{w} input is empty"))
            })?;
            let xs = resize_bilinear(x, hs, ws, self.align_corners)?;
            for flip in [false, true] {
                if flip && !self.hflip {
                    continue;
                }
                let input = if flip { xs.flip(&[3])? } else { xs.clone() };
                // Evaluation keeps no autograd graph: each pass is detached before it is summed.
                let mut y = self.one_pass(forward, &input)?.detach();
                if flip {
                    y = y.flip(&[3])?;
                }
                let y = resize_bilinear(&y, h, w, self.align_corners)?;
                sum = Some(match sum {
                    None => y,
                    Some(acc) => (acc + y)?,
                });
            }
        }
        let sum = sum.ok_or_else(|| candle_core::Error::Msg("no inference pass".into()))?;
        let passes = self.passes();
        if passes == 1 {
            Ok(sum)
        } else {
            sum / passes as f64
        }
    }

    /// One pass at the input's size: whole or sliding windows.
    fn one_pass(&self, forward: &dyn Fn(&Tensor) -> Result<Tensor>, x: &Tensor) -> Result<Tensor> {
        match self.mode {
            Mode::Whole => forward(x),
            Mode::Slide { window, stride } => slide(forward, x, window, stride),
        }
    }
}

/// `round(len · s)`, `None` when that is 0.
fn scaled(len: usize, s: f64) -> Option<usize> {
    let v = (len as f64 * s).round() as usize;
    (v > 0).then_some(v)
}

/// The windows mmsegmentation's `slide_inference` visits along one axis of length `len`:
/// starts every `stride`, the last one moved back to end at the edge; `(start, length)`.
pub fn window_starts(len: usize, window: usize, stride: usize) -> Vec<(usize, usize)> {
    let grids = len.saturating_sub(window).div_ceil(stride.max(1)) + 1;
    (0..grids)
        .map(|i| {
            let end = (i * stride + window).min(len);
            let start = end.saturating_sub(window);
            (start, end - start)
        })
        .collect()
}

/// Sliding-window logits: sum of the windows' logits divided by the number of windows covering
/// each pixel.
///
/// Memory is bounded whatever the number of windows: each window's logits are detached from
/// the autograd graph (evaluation keeps no graph) and added in place into one `f32` sum of the
/// output's size on the host, so one window's logits and that sum are alive at a time (no
/// full-size padded copy per window). The sum goes back to the input's device at the end.
fn slide(
    forward: &dyn Fn(&Tensor) -> Result<Tensor>,
    x: &Tensor,
    window: (usize, usize),
    stride: (usize, usize),
) -> Result<Tensor> {
    let (n, _, h, w) = x.dims4()?;
    let rows = window_starts(h, window.0, stride.0);
    let cols = window_starts(w, window.1, stride.1);
    let mut count = vec![0u32; h * w];
    let mut sum: Vec<f32> = Vec::new();
    let (mut classes, mut dtype) = (0, candle_core::DType::F32);
    for &(y0, wh) in &rows {
        for &(x0, ww) in &cols {
            let crop = x.narrow(2, y0, wh)?.narrow(3, x0, ww)?;
            let y = forward(&crop)?.detach();
            let (yn, yc, yh, yw) = y.dims4()?;
            if (yn, yh, yw) != (n, wh, ww) {
                candle_core::bail!(
                    "sliding window: the model maps a {wh}x{ww} window to {yh}x{yw} logits"
                )
            }
            if sum.is_empty() {
                (classes, dtype) = (yc, y.dtype());
                sum = vec![0f32; n * classes * h * w];
            } else if yc != classes {
                candle_core::bail!("sliding window: {yc} logit channels after {classes}")
            }
            let win: Vec<f32> = y
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1()?;
            for plane in 0..n * classes {
                let src = &win[plane * wh * ww..(plane + 1) * wh * ww];
                let dst = &mut sum[plane * h * w..(plane + 1) * h * w];
                for (r, src_row) in src.chunks_exact(ww).enumerate() {
                    let at = (y0 + r) * w + x0;
                    for (d, v) in dst[at..at + ww].iter_mut().zip(src_row) {
                        *d += v;
                    }
                }
            }
            for r in y0..y0 + wh {
                for c in &mut count[r * w + x0..r * w + x0 + ww] {
                    *c += 1;
                }
            }
        }
    }
    if sum.is_empty() {
        candle_core::bail!("sliding window: no window");
    }
    if count.iter().any(|&c| c != 1) {
        for plane in sum.chunks_exact_mut(h * w) {
            for (v, &c) in plane.iter_mut().zip(&count) {
                *v /= c as f32;
            }
        }
    }
    Tensor::from_vec(sum, (n, classes, h, w), x.device())?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn ramp(shape: (usize, usize, usize, usize)) -> Tensor {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 101) as f32 / 10.0 - 5.0)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn settings_whose_logits_cannot_fit_are_refused_with_the_figures() {
        let cfg = InferenceConfig {
            scales: vec![0.5, 1.0, 8.0],
            ..InferenceConfig::default()
        };
        let inf = cfg.plan((64, 64), false).unwrap();
        // 19 classes, one 1024x2048 image: 2 planes at full size + 2 at 8x.
        let plane = 19u64 * 1024 * 2048 * 4;
        assert_eq!(
            inf.logit_bytes(1, 19, 1024, 2048),
            2 * plane + 2 * 64 * plane
        );
        let err = inf
            .check_fits(1, 19, 1024, 2048, 8_000_000_000)
            .unwrap_err();
        assert!(
            err.contains("1024x2048 with 19 classes at scale 8")
                && err.contains("needs 20.7 GB")
                && err.contains("8.0 GB of memory are available"),
            "{err}"
        );
        assert!(inf.check_fits(1, 19, 1024, 2048, 21_000_000_000).is_ok());
        assert!(available_memory_bytes().is_some_and(|b| b > 0) || !cfg!(target_os = "linux"));
    }

    fn slide_cfg(window: [usize; 2], stride: [usize; 2]) -> InferenceConfig {
        InferenceConfig {
            mode: InferenceMode::Slide,
            window: Some(window),
            stride: Some(stride),
            ..InferenceConfig::default()
        }
    }

    #[test]
    fn windows_follow_mmseg_and_cover_every_pixel() {
        // mmseg: h_grids = max(h - crop + stride - 1, 0) // stride + 1, last window at the edge.
        assert_eq!(window_starts(10, 4, 3), vec![(0, 4), (3, 4), (6, 4)]);
        assert_eq!(
            window_starts(11, 4, 3),
            vec![(0, 4), (3, 4), (6, 4), (7, 4)]
        );
        assert_eq!(window_starts(4, 4, 2), vec![(0, 4)]);
        // Smaller than the window: one smaller window.
        assert_eq!(window_starts(3, 8, 5), vec![(0, 3)]);
        // Cityscapes at mmseg's settings: 1024 rows, windows of 512 every 341.
        assert_eq!(
            window_starts(1024, 512, 341),
            vec![(0, 512), (341, 512), (512, 512)]
        );
        let plan = slide_cfg([512, 1024], [341, 683]);
        assert_eq!(
            InferenceConfig {
                stride: None,
                ..plan.clone()
            }
            .plan((0, 0), false)
            .unwrap()
            .window(),
            Some(((512, 1024), (341, 683)))
        );
    }

    /// With one window covering the image, sliding-window inference is whole-image inference,
    /// bit for bit (also through a real DeepLab in `tests/inference.rs`).
    #[test]
    fn one_window_is_whole_image_inference() {
        let x = ramp((2, 3, 12, 20));
        let f = |t: &Tensor| {
            (t.sqr()? - t)?
                .sum_keepdim(1)?
                .broadcast_mul(&t.narrow(1, 0, 2)?)
        };
        let whole = InferenceConfig::default().plan((12, 20), false).unwrap();
        let slide = slide_cfg([12, 20], [12, 20]).plan((12, 20), false).unwrap();
        let a = whole.logits(&f, &x).unwrap().flatten_all().unwrap();
        let b = slide.logits(&f, &x).unwrap().flatten_all().unwrap();
        assert_eq!(a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
        // A window larger than the image is the same single window.
        let big = slide_cfg([64, 64], [10, 10]).plan((12, 20), false).unwrap();
        let c = big.logits(&f, &x).unwrap().flatten_all().unwrap();
        assert_eq!(a.to_vec1::<f32>().unwrap(), c.to_vec1::<f32>().unwrap());
    }

    /// Overlap averaging on a known answer: every window's "logits" are the window's index
    /// (0, 1, 2 along a row of 10 pixels with windows of 4 every 3: [0,4), [3,7), [6,10)), so a
    /// pixel covered by windows i and i+1 gets i + 0.5.
    #[test]
    fn overlaps_average_the_windows_logits() {
        let x = Tensor::zeros((1, 1, 2, 10), DType::F32, &Device::Cpu).unwrap();
        let calls = std::cell::Cell::new(0f32);
        let f = |t: &Tensor| {
            let k = calls.get();
            calls.set(k + 1.0);
            t.ones_like()? * k as f64
        };
        let plan = slide_cfg([2, 4], [2, 3]).plan((2, 10), false).unwrap();
        let y = plan.logits(&f, &x).unwrap();
        assert_eq!(calls.get(), 3.0);
        let row = y.get(0).unwrap().get(0).unwrap().get(1).unwrap();
        assert_eq!(
            row.to_vec1::<f32>().unwrap(),
            vec![0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.5, 2.0, 2.0, 2.0]
        );
        // Identity model: any windows and strides give the input back (the sum of the windows
        // divided by the coverage), two-dimensional overlaps included.
        let x = ramp((1, 2, 13, 17));
        let id = |t: &Tensor| Ok(t.clone());
        for (win, stride) in [([5, 6], [2, 3]), ([4, 4], [4, 4]), ([13, 5], [1, 2])] {
            let y = slide_cfg(win, stride)
                .plan((13, 17), false)
                .unwrap()
                .logits(&id, &x)
                .unwrap();
            let d = (y - &x).unwrap().abs().unwrap().max_all().unwrap();
            assert!(d.to_scalar::<f32>().unwrap() < 1e-6, "{win:?} {stride:?}");
        }
    }

    /// Flip TTA of a flip-equivariant model on a mirror-symmetric input is plain inference; for
    /// a model that is not equivariant it is the mean of the two passes.
    #[test]
    fn flip_and_scales_average_their_passes() {
        // Mirror-symmetric input along the width.
        let x = ramp((1, 2, 6, 5));
        let x = ((&x + x.flip(&[3]).unwrap()).unwrap() * 0.5).unwrap();
        let sym = |t: &Tensor| t.sqr()? * 2.0; // pointwise: flip-equivariant
        let plain = InferenceConfig::default().plan((6, 5), false).unwrap();
        let flip = InferenceConfig {
            hflip: true,
            ..InferenceConfig::default()
        }
        .plan((6, 5), false)
        .unwrap();
        let a = plain.logits(&sym, &x).unwrap();
        let b = flip.logits(&sym, &x).unwrap();
        let d = (&a - &b).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        // A model that looks at the pixel on its left is not equivariant: the flip pass is the
        // mirrored model, and TTA gives the mean of left and right neighbours.
        let left = |t: &Tensor| {
            let (_, _, _, w) = t.dims4()?;
            t.narrow(3, 0, w - 1)?.pad_with_zeros(3, 1, 0)
        };
        let x = ramp((1, 1, 3, 6));
        let y = flip.logits(&left, &x).unwrap();
        let right = x.narrow(3, 1, 5).unwrap().pad_with_zeros(3, 0, 1).unwrap();
        let want = ((left(&x).unwrap() + right).unwrap() * 0.5).unwrap();
        let d = (y - want).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-6);
        // Scales: a model constant per pass gives the mean of the constants; every pass is
        // resized back to the input's size.
        let x = ramp((1, 1, 8, 8));
        let f = |t: &Tensor| {
            let (_, _, h, _) = t.dims4()?;
            t.ones_like()? * h as f64
        };
        let ms = InferenceConfig {
            scales: vec![0.5, 1.0, 1.5],
            ..InferenceConfig::default()
        }
        .plan((8, 8), false)
        .unwrap();
        let y = ms.logits(&f, &x).unwrap();
        assert_eq!(y.dims(), &[1, 1, 8, 8]);
        let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            v.iter()
                .all(|&v| (v - (4.0 + 8.0 + 12.0) / 3.0).abs() < 1e-5),
            "{v:?}"
        );
    }

    #[test]
    fn bad_settings_name_the_field() {
        let cases = [
            (slide_cfg([0, 4], [1, 1]), "window"),
            (slide_cfg([4, 4], [0, 1]), "stride"),
            (slide_cfg([4, 4], [5, 1]), "stride"),
            (
                InferenceConfig {
                    scales: vec![],
                    ..InferenceConfig::default()
                },
                "scales",
            ),
            (
                InferenceConfig {
                    scales: vec![1.0, f64::NAN],
                    ..InferenceConfig::default()
                },
                "scales",
            ),
            (
                InferenceConfig {
                    window: Some([8, 8]),
                    ..InferenceConfig::default()
                },
                "window",
            ),
        ];
        for (c, field) in cases {
            assert_eq!(c.validate().unwrap_err().0, field, "{c:?}");
        }
        // The default stride must fit the default window (the training size).
        let e = InferenceConfig {
            mode: InferenceMode::Slide,
            stride: Some([40, 40]),
            ..InferenceConfig::default()
        }
        .plan((32, 64), false)
        .unwrap_err();
        assert_eq!(e.0, "stride");
        assert!(InferenceMode::parse("tiles").unwrap_err().contains("tiles"));
    }
}
