//! Geometric and colour transforms applied identically to an image and its label map.
//!
//! * [`resize_bilinear_rgb`]: bilinear with half-pixel centres and no antialiasing, the
//!   convention of OpenCV's `INTER_LINEAR` and PyTorch's `interpolate(mode="bilinear",
//!   align_corners=False)`; checked against PyTorch goldens in `tests/goldens/`.
//! * [`resize_nearest`]: PyTorch's `nearest` (source index `floor(dst · in/out)` in `f32`), the
//!   same rule as OpenCV's `INTER_NEAREST`, used for label maps so no new class value appears.
//! * [`Augment`]: random scale, random crop (label padded with the ignore index), horizontal flip.
//! * [`normalize_chw`]: `(x - mean) / std` into planar `3×H×W` `f32`.

use crate::dataset::Normalize;
use crate::error::DataError;
use rand::Rng;

/// Precomputed source indices and weights of one axis of a bilinear resize.
struct Axis {
    i0: Vec<usize>,
    i1: Vec<usize>,
    w1: Vec<f32>,
}

fn bilinear_axis(src: usize, dst: usize) -> Axis {
    let scale = src as f32 / dst as f32;
    let mut a = Axis {
        i0: Vec::with_capacity(dst),
        i1: Vec::with_capacity(dst),
        w1: Vec::with_capacity(dst),
    };
    for d in 0..dst {
        let s = ((d as f32 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (s.floor() as usize).min(src - 1);
        let i1 = if i0 + 1 < src { i0 + 1 } else { i0 };
        a.i0.push(i0);
        a.i1.push(i1);
        a.w1.push(s - i0 as f32);
    }
    a
}

/// Bilinear resize of an interleaved image with `C` channels, calling `emit(y, row)` with each
/// output row as unrounded `f32` values (`dw × C`).
fn resize_bilinear_rows<const C: usize>(
    src: &[u8],
    sw: usize,
    sh: usize,
    dw: usize,
    dh: usize,
    mut emit: impl FnMut(usize, &[f32]),
) {
    let ax = bilinear_axis(sw, dw);
    let ay = bilinear_axis(sh, dh);
    // Horizontally resized source rows, computed once each and kept for the next output row.
    let hrow = |y: usize, out: &mut [f32]| {
        let row = &src[y * sw * C..(y + 1) * sw * C];
        for x in 0..dw {
            let (a, b, w1) = (ax.i0[x] * C, ax.i1[x] * C, ax.w1[x]);
            let w0 = 1.0 - w1;
            for c in 0..C {
                out[x * C + c] = w0 * row[a + c] as f32 + w1 * row[b + c] as f32;
            }
        }
    };
    let mut r0 = vec![0f32; dw * C];
    let mut r1 = vec![0f32; dw * C];
    let mut out = vec![0f32; dw * C];
    let (mut have0, mut have1) = (usize::MAX, usize::MAX);
    for y in 0..dh {
        let (y0, y1, w1) = (ay.i0[y], ay.i1[y], ay.w1[y]);
        if have0 != y0 {
            if have1 == y0 {
                std::mem::swap(&mut r0, &mut r1);
                have0 = y0;
                have1 = usize::MAX;
            } else {
                hrow(y0, &mut r0);
                have0 = y0;
            }
        }
        if have1 != y1 {
            hrow(y1, &mut r1);
            have1 = y1;
        }
        let w0 = 1.0 - w1;
        for ((o, a), b) in out.iter_mut().zip(&r0).zip(&r1) {
            *o = w0 * a + w1 * b;
        }
        emit(y, &out);
    }
}

/// Bilinear resize of an H×W×3 RGB image, rounded to `u8`.
pub fn resize_bilinear_rgb(src: &[u8], sw: usize, sh: usize, dw: usize, dh: usize) -> Vec<u8> {
    assert_eq!(
        src.len(),
        sw * sh * 3,
        "image buffer does not match its size"
    );
    if sw == dw && sh == dh {
        return src.to_vec();
    }
    let mut dst = vec![0u8; dw * dh * 3];
    resize_bilinear_rows::<3>(src, sw, sh, dw, dh, |y, row| {
        for (d, v) in dst[y * dw * 3..(y + 1) * dw * 3].iter_mut().zip(row) {
            *d = (v + 0.5).clamp(0.0, 255.0) as u8;
        }
    });
    dst
}

/// Bilinear resize of an H×W×3 RGB image to unrounded `f32` (what the goldens compare).
pub fn resize_bilinear_rgb_f32(src: &[u8], sw: usize, sh: usize, dw: usize, dh: usize) -> Vec<f32> {
    assert_eq!(
        src.len(),
        sw * sh * 3,
        "image buffer does not match its size"
    );
    let mut dst = vec![0f32; dw * dh * 3];
    resize_bilinear_rows::<3>(src, sw, sh, dw, dh, |y, row| {
        dst[y * dw * 3..(y + 1) * dw * 3].copy_from_slice(row);
    });
    dst
}

fn nearest_axis(src: usize, dst: usize) -> Vec<usize> {
    let scale = src as f32 / dst as f32;
    (0..dst)
        .map(|d| ((d as f32 * scale).floor() as usize).min(src - 1))
        .collect()
}

/// Nearest-neighbour resize of an interleaved H×W×`channels` buffer (labels: `channels = 1`).
pub fn resize_nearest<T: Copy>(
    src: &[T],
    sw: usize,
    sh: usize,
    dw: usize,
    dh: usize,
    channels: usize,
) -> Vec<T> {
    assert_eq!(
        src.len(),
        sw * sh * channels,
        "buffer does not match its size"
    );
    if sw == dw && sh == dh {
        return src.to_vec();
    }
    let xs = nearest_axis(sw, dw);
    let ys = nearest_axis(sh, dh);
    let mut dst = Vec::with_capacity(dw * dh * channels);
    for &sy in &ys {
        let row = &src[sy * sw * channels..(sy + 1) * sw * channels];
        for &sx in &xs {
            dst.extend_from_slice(&row[sx * channels..(sx + 1) * channels]);
        }
    }
    dst
}

/// Mirrors an interleaved H×W×`channels` buffer left–right in place.
pub fn hflip<T: Copy>(buf: &mut [T], w: usize, h: usize, channels: usize) {
    for y in 0..h {
        let row = &mut buf[y * w * channels..(y + 1) * w * channels];
        for x in 0..w / 2 {
            let xr = w - 1 - x;
            for c in 0..channels {
                row.swap(x * channels + c, xr * channels + c);
            }
        }
    }
}

/// Copies the `cw × ch` window at (`x0`, `y0`) of an H×W×`channels` buffer; parts of the
/// window outside the source (negative offsets or past the edge) are filled with `pad`.
#[allow(clippy::too_many_arguments)]
pub fn crop_pad<T: Copy>(
    src: &[T],
    w: usize,
    h: usize,
    channels: usize,
    x0: isize,
    y0: isize,
    cw: usize,
    ch: usize,
    pad: &[T],
) -> Vec<T> {
    assert_eq!(pad.len(), channels, "one padding value per channel");
    let mut dst = Vec::with_capacity(cw * ch * channels);
    for yy in 0..ch as isize {
        let sy = y0 + yy;
        for xx in 0..cw as isize {
            let sx = x0 + xx;
            if sy >= 0 && (sy as usize) < h && sx >= 0 && (sx as usize) < w {
                let i = (sy as usize * w + sx as usize) * channels;
                dst.extend_from_slice(&src[i..i + channels]);
            } else {
                dst.extend_from_slice(pad);
            }
        }
    }
    dst
}

/// Writes `(x - mean) / std` of an H×W×3 RGB image into planar `3×H×W` `out`.
pub fn normalize_chw(img: &[u8], w: usize, h: usize, norm: &Normalize, out: &mut [f32]) {
    let plane = w * h;
    assert_eq!(img.len(), plane * 3, "image buffer does not match its size");
    assert_eq!(
        out.len(),
        plane * 3,
        "output buffer does not match the image"
    );
    let scale = [1.0 / norm.std[0], 1.0 / norm.std[1], 1.0 / norm.std[2]];
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in img.chunks_exact(3).enumerate() {
        r[i] = (px[0] as f32 - norm.mean[0]) * scale[0];
        g[i] = (px[1] as f32 - norm.mean[1]) * scale[1];
        b[i] = (px[2] as f32 - norm.mean[2]) * scale[2];
    }
}

/// Random training augmentation, applied after the base resize.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Augment {
    /// Random scale factor range `[min, max]` (uniform); `None` keeps the size.
    pub scale: Option<(f32, f32)>,
    /// Output `(width, height)` of the random crop; `None` crops back to the size the image had
    /// before the random scale (so every sample of a batch has the same size). Where the scaled
    /// image is smaller than the crop, the image is padded with the normalisation mean and the
    /// label with the ignore index.
    pub crop: Option<(usize, usize)>,
    /// Mirror left–right with probability ½.
    pub hflip: bool,
    /// Colour jitter strength `j`: brightness, contrast and saturation factors drawn uniformly
    /// in `[max(0, 1 - j), 1 + j]` and applied in that order (see [`color_jitter`]); `None`
    /// leaves colours alone. The paper's Cityscapes training uses 0.5.
    #[serde(default)]
    pub color_jitter: Option<f32>,
}

impl Default for Augment {
    /// Scale 0.5–2.0, crop to the resized size, random flip, no colour jitter.
    fn default() -> Self {
        Augment {
            scale: Some((0.5, 2.0)),
            crop: None,
            hflip: true,
            color_jitter: None,
        }
    }
}

impl Augment {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), DataError> {
        if let Some((lo, hi)) = self.scale {
            if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi && hi <= 16.0) {
                return Err(DataError::config(
                    "augment.scale",
                    format!("({lo}, {hi})"),
                    "need 0 < min <= max <= 16",
                ));
            }
        }
        if let Some(j) = self.color_jitter {
            if !(j.is_finite() && (0.0..=1.0).contains(&j)) {
                return Err(DataError::config(
                    "augment.color_jitter",
                    j,
                    "must be in [0, 1]",
                ));
            }
        }
        if let Some((w, h)) = self.crop {
            if w == 0 || h == 0 {
                return Err(DataError::config(
                    "augment.crop",
                    format!("({w}, {h})"),
                    "width and height must be > 0",
                ));
            }
        }
        Ok(())
    }

    /// Applies the augmentation to an image (H×W×3) and its label (H×W) with the same geometry.
    ///
    /// `pad_rgb` fills image pixels outside the source, `ignore` label pixels. Draws from `rng`
    /// in a fixed order (scale, crop x, crop y, flip, jitter factors), so a given RNG state
    /// always gives the same result. Returns `(image, label, width, height)`.
    #[allow(clippy::too_many_arguments)]
    pub fn apply<R: Rng + ?Sized>(
        &self,
        image: &[u8],
        label: &[u8],
        w: usize,
        h: usize,
        pad_rgb: [u8; 3],
        ignore: u8,
        rng: &mut R,
    ) -> (Vec<u8>, Vec<u8>, usize, usize) {
        let (cw, ch) = self.crop.unwrap_or((w, h));
        let (mut img, mut lbl, mut sw, mut sh);
        match self.scale {
            Some((lo, hi)) => {
                let s: f32 = if hi > lo {
                    rng.random_range(lo..=hi)
                } else {
                    lo
                };
                sw = ((w as f32 * s).round() as usize).max(1);
                sh = ((h as f32 * s).round() as usize).max(1);
                img = resize_bilinear_rgb(image, w, h, sw, sh);
                lbl = resize_nearest(label, w, h, sw, sh, 1);
            }
            None => {
                sw = w;
                sh = h;
                img = image.to_vec();
                lbl = label.to_vec();
            }
        }
        if (sw, sh) != (cw, ch) {
            // Offsets: uniform over valid positions; when the image is smaller than the crop
            // it is placed at a random offset inside the padded window.
            let x0 = random_offset(sw, cw, rng);
            let y0 = random_offset(sh, ch, rng);
            img = crop_pad(&img, sw, sh, 3, x0, y0, cw, ch, &pad_rgb);
            lbl = crop_pad(&lbl, sw, sh, 1, x0, y0, cw, ch, &[ignore]);
            sw = cw;
            sh = ch;
        }
        if self.hflip && rng.random_bool(0.5) {
            hflip(&mut img, sw, sh, 3);
            hflip(&mut lbl, sw, sh, 1);
        }
        if let Some(j) = self.color_jitter {
            let lo = (1.0 - j).max(0.0);
            let mut draw = || -> f32 {
                if j > 0.0 {
                    rng.random_range(lo..=1.0 + j)
                } else {
                    1.0
                }
            };
            let (b, c, s) = (draw(), draw(), draw());
            color_jitter(&mut img, b, c, s);
        }
        (img, lbl, sw, sh)
    }
}

/// Luma of an RGB pixel (ITU-R 601, torchvision's `rgb_to_grayscale`).
fn luma(p: &[f32]) -> f32 {
    0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]
}

/// Adjusts brightness (`x · b`), contrast (`(x − m) · c + m`, `m` the mean luma of the image)
/// and saturation (`(x − l) · s + l`, `l` the pixel's luma), in that order, clamping to
/// 0–255 after each step as torchvision's `adjust_*` functions do, and rounding at the end.
pub fn color_jitter(img: &mut [u8], brightness: f32, contrast: f32, saturation: f32) {
    let mut f: Vec<f32> = img
        .iter()
        .map(|&v| (v as f32 * brightness).clamp(0.0, 255.0))
        .collect();
    let n = (f.len() / 3).max(1) as f64;
    let mean = f.chunks_exact(3).map(|p| luma(p) as f64).sum::<f64>() / n;
    let mean = mean as f32;
    for v in f.iter_mut() {
        *v = ((*v - mean) * contrast + mean).clamp(0.0, 255.0);
    }
    for p in f.chunks_exact_mut(3) {
        let l = luma(p);
        for v in p.iter_mut() {
            *v = ((*v - l) * saturation + l).clamp(0.0, 255.0);
        }
    }
    for (d, v) in img.iter_mut().zip(f) {
        *d = (v + 0.5) as u8;
    }
}

fn random_offset<R: Rng + ?Sized>(size: usize, crop: usize, rng: &mut R) -> isize {
    if size >= crop {
        rng.random_range(0..=(size - crop)) as isize
    } else {
        -(rng.random_range(0..=(crop - size)) as isize)
    }
}
