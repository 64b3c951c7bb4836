//! Geometric and colour transforms applied identically to an image and its label map.
//!
//! * [`resize_bilinear_rgb`]: bilinear with half-pixel centres and no antialiasing, the
//!   convention of OpenCV's `INTER_LINEAR` and PyTorch's `interpolate(mode="bilinear",
//!   align_corners=False)`; checked against PyTorch goldens in `tests/goldens/`.
//! * [`resize_nearest`]: PyTorch's `nearest` (source index `floor(dst · in/out)` in `f32`), the
//!   same rule as OpenCV's `INTER_NEAREST`, used for label maps so no new class value appears.
//! * [`resize_antialias_rgb`] and [`resize_nearest_centre`]: what PIL's `Image.resize` does with
//!   `BILINEAR` (the triangle filter widened by the scale factor when shrinking, so every source
//!   pixel contributes) and `NEAREST` (source index `floor((dst + ½) · in/out)`, PyTorch's
//!   `nearest-exact`); checked against Pillow goldens in `tests/goldens/`.
//! * [`ResizeMethod`]: picks one of the two image/label pairs above (the loader's base resize).
//! * [`Augment`]: random scale, random crop (label padded with the ignore index), horizontal flip.
//! * [`normalize_chw`]: `(x - mean) / std` into planar `3×H×W` `f32`.

use crate::dataset::Normalize;
use crate::error::DataError;
use crate::png_io::DecodeLimits;
use rand::Rng;

/// Precomputed source indices and weights of one axis of a bilinear resize, for the output
/// positions `first..first + len` of a `dst`-long axis (positions outside `0..dst` are marked
/// with `usize::MAX` and padded by the caller).
struct Axis {
    i0: Vec<usize>,
    i1: Vec<usize>,
    w1: Vec<f32>,
}

fn bilinear_axis(src: usize, dst: usize, first: isize, len: usize) -> Axis {
    let scale = src as f32 / dst as f32;
    let mut a = Axis {
        i0: Vec::with_capacity(len),
        i1: Vec::with_capacity(len),
        w1: Vec::with_capacity(len),
    };
    for k in 0..len {
        let d = first + k as isize;
        if d < 0 || d >= dst as isize {
            a.i0.push(usize::MAX);
            a.i1.push(usize::MAX);
            a.w1.push(0.0);
            continue;
        }
        let s = ((d as f32 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (s.floor() as usize).min(src - 1);
        let i1 = if i0 + 1 < src { i0 + 1 } else { i0 };
        a.i0.push(i0);
        a.i1.push(i1);
        a.w1.push(s - i0 as f32);
    }
    a
}

/// Checks that `len` values are an interleaved `w × h × channels` buffer of at least one pixel
/// and one channel (`what` names the buffer in the error).
fn check_buffer(
    what: &str,
    len: usize,
    w: usize,
    h: usize,
    channels: usize,
) -> Result<(), DataError> {
    if w == 0 || h == 0 || channels == 0 {
        return Err(DataError::config(
            what,
            format!("{w}x{h} with {channels} channel(s)"),
            "needs at least one pixel and one channel",
        ));
    }
    if w.checked_mul(h).and_then(|n| n.checked_mul(channels)) != Some(len) {
        return Err(DataError::config(
            what,
            format!("{len} values"),
            format!("a {w}x{h} image with {channels} channel(s) has {w}·{h}·{channels} values"),
        ));
    }
    Ok(())
}

/// Checks the size of a buffer a transform is asked to allocate: at least one pixel and at
/// most the process's [`DecodeLimits`] (nothing larger than the largest image the crate
/// decodes; a size typed wrong would otherwise abort the process in the allocator).
fn check_output(what: &str, w: usize, h: usize) -> Result<(), DataError> {
    DecodeLimits::current()
        .check(w as u64, h as u64)
        .map_err(|reason| DataError::config(what, format!("{w}x{h}"), reason))
}

/// Checks the virtual size an image is resized to (never allocated by the window functions):
/// at least one pixel, at most `isize::MAX` each way.
fn check_target(dw: usize, dh: usize) -> Result<(), DataError> {
    if dw == 0 || dh == 0 || dw > isize::MAX as usize || dh > isize::MAX as usize {
        return Err(DataError::config(
            "resize target size",
            format!("{dw}x{dh}"),
            "must be at least 1x1 and at most isize::MAX each way",
        ));
    }
    Ok(())
}

/// Checks a `cw × ch` window at (`x0`, `y0`): its size is a valid output and its far edge is
/// representable.
fn check_window(x0: isize, y0: isize, cw: usize, ch: usize) -> Result<(), DataError> {
    check_output("window size", cw, ch)?;
    // cw and ch are at most the pixel limit, far below isize::MAX.
    if x0.checked_add(cw as isize).is_none() || y0.checked_add(ch as isize).is_none() {
        return Err(DataError::config(
            "window offset",
            format!("({x0}, {y0})"),
            "the window's far edge overflows",
        ));
    }
    Ok(())
}

/// The checks every whole-image resize makes: the source holds `sw·sh·channels` values, the
/// target size is not empty and not too large.
fn check_resize(
    len: usize,
    [sw, sh]: [usize; 2],
    [dw, dh]: [usize; 2],
    channels: usize,
) -> Result<(), DataError> {
    check_buffer("resize source", len, sw, sh, channels)?;
    check_target(dw, dh)?;
    check_output("resize target size", dw, dh)
}

/// The checks every windowed resize makes: the source as [`check_resize`], the target size not
/// empty, the window inside the limits.
fn check_resize_window(
    len: usize,
    [sw, sh]: [usize; 2],
    [dw, dh]: [usize; 2],
    channels: usize,
    [x0, y0]: [isize; 2],
    [cw, ch]: [usize; 2],
) -> Result<(), DataError> {
    check_buffer("resize source", len, sw, sh, channels)?;
    check_target(dw, dh)?;
    check_window(x0, y0, cw, ch)
}

fn check_pad(len: usize, channels: usize) -> Result<(), DataError> {
    if len != channels {
        return Err(DataError::config(
            "padding",
            format!("{len} values"),
            format!("one padding value per channel ({channels})"),
        ));
    }
    Ok(())
}

/// The `cw × ch` window at (`x0`, `y0`) of the bilinear resize of an H×W×3 image to `dw × dh`,
/// calling `emit(y, row)` with each window row as unrounded `f32` values (`cw × 3`); window
/// pixels outside the resized image get `pad`.
///
/// Source rows are blended vertically first (a contiguous, vectorisable pass over `sw × 3`
/// values), then sampled horizontally.
#[allow(clippy::too_many_arguments)]
fn bilinear_window_rows(
    src: &[u8],
    sw: usize,
    sh: usize,
    dw: usize,
    dh: usize,
    x0: isize,
    y0: isize,
    cw: usize,
    ch: usize,
    pad: [f32; 3],
    mut emit: impl FnMut(usize, &[f32]),
) {
    debug_assert_eq!(src.len(), sw * sh * 3, "checked by the callers");
    let ax = bilinear_axis(sw, dw, x0, cw);
    let ay = bilinear_axis(sh, dh, y0, ch);
    // Source columns the window needs (vertical blending is limited to them).
    let valid: Vec<usize> = (0..cw).filter(|&k| ax.i0[k] != usize::MAX).collect();
    let (c_lo, c_hi) = match (valid.first(), valid.last()) {
        (Some(&a), Some(&b)) => (ax.i0[a], ax.i1[b] + 1),
        _ => (0, 0),
    };
    let mut vrow = vec![0f32; sw * 3];
    let mut out = vec![0f32; cw * 3];
    for y in 0..ch {
        let (r0, r1, w1) = (ay.i0[y], ay.i1[y], ay.w1[y]);
        if r0 == usize::MAX {
            for p in out.chunks_exact_mut(3) {
                p.copy_from_slice(&pad);
            }
            emit(y, &out);
            continue;
        }
        let w0 = 1.0 - w1;
        let a = &src[r0 * sw * 3 + c_lo * 3..r0 * sw * 3 + c_hi * 3];
        let b = &src[r1 * sw * 3 + c_lo * 3..r1 * sw * 3 + c_hi * 3];
        for ((v, &p), &q) in vrow[c_lo * 3..c_hi * 3].iter_mut().zip(a).zip(b) {
            *v = w0 * p as f32 + w1 * q as f32;
        }
        for (k, o) in out.chunks_exact_mut(3).enumerate() {
            let i0 = ax.i0[k];
            if i0 == usize::MAX {
                o.copy_from_slice(&pad);
                continue;
            }
            let (i1, u1) = (ax.i1[k], ax.w1[k]);
            let u0 = 1.0 - u1;
            let (p, q) = (&vrow[i0 * 3..i0 * 3 + 3], &vrow[i1 * 3..i1 * 3 + 3]);
            o[0] = u0 * p[0] + u1 * q[0];
            o[1] = u0 * p[1] + u1 * q[1];
            o[2] = u0 * p[2] + u1 * q[2];
        }
        emit(y, &out);
    }
}

/// Bilinear resize of an H×W×3 RGB image, rounded to `u8`. An empty size or a buffer that does
/// not hold `sw·sh·3` bytes is an error.
pub fn resize_bilinear_rgb(
    src: &[u8],
    sw: usize,
    sh: usize,
    dw: usize,
    dh: usize,
) -> Result<Vec<u8>, DataError> {
    check_resize(src.len(), [sw, sh], [dw, dh], 3)?;
    if sw == dw && sh == dh {
        return Ok(src.to_vec());
    }
    resize_bilinear_rgb_window(src, sw, sh, dw, dh, 0, 0, dw, dh, [0; 3])
}

/// The `cw × ch` window at (`x0`, `y0`) of [`resize_bilinear_rgb`]`(src, …, dw, dh)`, with
/// `pad` where the window leaves the resized image: equal to resizing and then
/// [`crop_pad`]-ing, without computing the pixels outside the window.
#[allow(clippy::too_many_arguments)]
pub fn resize_bilinear_rgb_window(
    src: &[u8],
    sw: usize,
    sh: usize,
    dw: usize,
    dh: usize,
    x0: isize,
    y0: isize,
    cw: usize,
    ch: usize,
    pad: [u8; 3],
) -> Result<Vec<u8>, DataError> {
    check_resize_window(src.len(), [sw, sh], [dw, dh], 3, [x0, y0], [cw, ch])?;
    let mut dst = vec![0u8; cw * ch * 3];
    let padf = pad.map(|v| v as f32);
    bilinear_window_rows(src, sw, sh, dw, dh, x0, y0, cw, ch, padf, |y, row| {
        for (d, v) in dst[y * cw * 3..(y + 1) * cw * 3].iter_mut().zip(row) {
            *d = (v + 0.5).clamp(0.0, 255.0) as u8;
        }
    });
    Ok(dst)
}

/// Bilinear resize of an H×W×3 RGB image to unrounded `f32` (what the goldens compare).
pub fn resize_bilinear_rgb_f32(
    src: &[u8],
    sw: usize,
    sh: usize,
    dw: usize,
    dh: usize,
) -> Result<Vec<f32>, DataError> {
    check_resize(src.len(), [sw, sh], [dw, dh], 3)?;
    let mut dst = vec![0f32; dw * dh * 3];
    bilinear_window_rows(src, sw, sh, dw, dh, 0, 0, dw, dh, [0.0; 3], |y, row| {
        dst[y * dw * 3..(y + 1) * dw * 3].copy_from_slice(row);
    });
    Ok(dst)
}

fn nearest_axis(src: usize, dst: usize, first: isize, len: usize) -> Vec<usize> {
    let scale = src as f32 / dst as f32;
    (0..len)
        .map(|k| {
            let d = first + k as isize;
            if d < 0 || d >= dst as isize {
                usize::MAX
            } else {
                ((d as f32 * scale).floor() as usize).min(src - 1)
            }
        })
        .collect()
}

/// Nearest-neighbour resize of an interleaved H×W×`channels` buffer (labels: `channels = 1`).
/// An empty size or a buffer that does not hold `sw·sh·channels` values is an error.
pub fn resize_nearest<T: Copy>(
    src: &[T],
    sw: usize,
    sh: usize,
    dw: usize,
    dh: usize,
    channels: usize,
) -> Result<Vec<T>, DataError> {
    nearest_resize(src, [sw, sh, dw, dh], channels, |s, d| {
        nearest_axis(s, d, 0, d)
    })
}

/// The checks and the gather shared by the whole-image nearest resizes; `axis(src, dst)` gives
/// the source index of every destination index along one axis.
fn nearest_resize<T: Copy>(
    src: &[T],
    [sw, sh, dw, dh]: [usize; 4],
    channels: usize,
    axis: fn(usize, usize) -> Vec<usize>,
) -> Result<Vec<T>, DataError> {
    check_resize(src.len(), [sw, sh], [dw, dh], channels)?;
    if sw == dw && sh == dh {
        return Ok(src.to_vec());
    }
    // Every index lies inside the image: the pad is never used.
    Ok(gather(
        src,
        sw,
        channels,
        &axis(sw, dw),
        &axis(sh, dh),
        &src[..channels],
    ))
}

/// The `cw × ch` window at (`x0`, `y0`) of [`resize_nearest`]`(src, …, dw, dh, channels)`,
/// with `pad` where the window leaves the resized image.
#[allow(clippy::too_many_arguments)]
pub fn resize_nearest_window<T: Copy>(
    src: &[T],
    sw: usize,
    sh: usize,
    dw: usize,
    dh: usize,
    channels: usize,
    x0: isize,
    y0: isize,
    cw: usize,
    ch: usize,
    pad: &[T],
) -> Result<Vec<T>, DataError> {
    check_resize_window(src.len(), [sw, sh], [dw, dh], channels, [x0, y0], [cw, ch])?;
    check_pad(pad.len(), channels)?;
    let xs = nearest_axis(sw, dw, x0, cw);
    let ys = nearest_axis(sh, dh, y0, ch);
    Ok(gather(src, sw, channels, &xs, &ys, pad))
}

/// The pixels at source columns `xs` × rows `ys` of an interleaved buffer `sw` wide, `pad` where
/// an index is `usize::MAX` (outside the image).
fn gather<T: Copy>(
    src: &[T],
    sw: usize,
    channels: usize,
    xs: &[usize],
    ys: &[usize],
    pad: &[T],
) -> Vec<T> {
    let mut dst = Vec::with_capacity(xs.len() * ys.len() * channels);
    for &sy in ys {
        if sy == usize::MAX {
            for _ in 0..xs.len() {
                dst.extend_from_slice(pad);
            }
            continue;
        }
        let row = &src[sy * sw * channels..(sy + 1) * sw * channels];
        if channels == 1 {
            dst.extend(
                xs.iter()
                    .map(|&sx| if sx == usize::MAX { pad[0] } else { row[sx] }),
            );
        } else {
            for &sx in xs {
                if sx == usize::MAX {
                    dst.extend_from_slice(pad);
                } else {
                    dst.extend_from_slice(&row[sx * channels..(sx + 1) * channels]);
                }
            }
        }
    }
    dst
}

/// How the loader's base resize (`LoaderConfig::resize_method`) resamples an image and its
/// label map. Both sample images at half-pixel centres; only `Antialias` samples labels there
/// too (`TwoTap`'s `floor(dst · in/out)` label index lies up to half an output pixel up and left
/// of the image sample when shrinking, e.g. a third of a pixel at 3×).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMethod {
    /// Two-tap bilinear without antialiasing for images ([`resize_bilinear_rgb`], OpenCV's
    /// `INTER_LINEAR`, PyTorch's `interpolate(antialias=False)`) and nearest with source index
    /// `floor(dst · in/out)` for labels ([`resize_nearest`]). Fast, but when shrinking by more
    /// than 2× some source pixels are never read (thin structures can vanish or alias).
    #[default]
    TwoTap,
    /// PIL's `Image.resize`: images with `BILINEAR`, whose triangle filter is widened by the
    /// scale factor when shrinking so every source pixel contributes ([`resize_antialias_rgb`],
    /// also PyTorch's `interpolate(antialias=True)`), labels with nearest at pixel centres,
    /// source index `floor((dst + ½) · in/out)` ([`resize_nearest_centre`], PIL's `NEAREST`,
    /// PyTorch's `nearest-exact`).
    Antialias,
}

impl ResizeMethod {
    /// Resizes an H×W×3 RGB image from `sw × sh` to `dw × dh` with this method's image filter
    /// ([`resize_bilinear_rgb`] or [`resize_antialias_rgb`]; same errors).
    pub fn resize_image(
        self,
        src: &[u8],
        sw: usize,
        sh: usize,
        dw: usize,
        dh: usize,
    ) -> Result<Vec<u8>, DataError> {
        match self {
            ResizeMethod::TwoTap => resize_bilinear_rgb(src, sw, sh, dw, dh),
            ResizeMethod::Antialias => resize_antialias_rgb(src, sw, sh, dw, dh),
        }
    }

    /// Resizes an interleaved H×W×`channels` label buffer from `sw × sh` to `dw × dh` with this
    /// method's nearest-neighbour rule ([`resize_nearest`] or [`resize_nearest_centre`]; same
    /// errors). No value that is not in the source appears.
    pub fn resize_label<T: Copy>(
        self,
        src: &[T],
        sw: usize,
        sh: usize,
        dw: usize,
        dh: usize,
        channels: usize,
    ) -> Result<Vec<T>, DataError> {
        match self {
            ResizeMethod::TwoTap => resize_nearest(src, sw, sh, dw, dh, channels),
            ResizeMethod::Antialias => resize_nearest_centre(src, sw, sh, dw, dh, channels),
        }
    }
}

/// Precomputed taps of one axis of an antialiased resize: output position `d` reads the
/// source positions `start[d]..start[d] + (off[d + 1] - off[d])` with the weights
/// `w[off[d]..off[d + 1]]` (normalised to sum 1).
struct FilterAxis {
    start: Vec<usize>,
    off: Vec<usize>,
    w: Vec<f32>,
}

impl FilterAxis {
    fn taps(&self, d: usize) -> (usize, &[f32]) {
        (self.start[d], &self.w[self.off[d]..self.off[d + 1]])
    }

    /// The largest number of taps of one output position.
    fn max_taps(&self) -> usize {
        self.off.windows(2).map(|p| p[1] - p[0]).max().unwrap_or(0)
    }
}

/// PIL's `precompute_coeffs` for the `BILINEAR` (triangle) filter, in `f64`: the output
/// position `d` is centred on `c = (d + ½) · scale` and reads the source positions within
/// `support = max(scale, 1)` of it, with weights `triangle((j + ½ − c) / support)` renormalised
/// over the positions inside the image. Zero weights at the ends are dropped.
fn antialias_axis(src: usize, dst: usize) -> FilterAxis {
    let scale = src as f64 / dst as f64;
    let support = scale.max(1.0);
    let inv = 1.0 / support;
    let mut a = FilterAxis {
        start: Vec::with_capacity(dst),
        off: Vec::with_capacity(dst + 1),
        w: Vec::with_capacity(dst * (2 * support.ceil() as usize + 1)),
    };
    a.off.push(0);
    let mut k = Vec::new();
    for d in 0..dst {
        let centre = (d as f64 + 0.5) * scale;
        // As PIL: truncation of values that are clamped to 0 when negative.
        let lo = ((centre - support + 0.5).max(0.0) as usize).min(src - 1);
        let hi = ((centre + support + 0.5) as usize).clamp(lo + 1, src);
        k.clear();
        k.extend((lo..hi).map(|j| {
            let x = ((j as f64 + 0.5 - centre) * inv).abs();
            if x < 1.0 {
                1.0 - x
            } else {
                0.0
            }
        }));
        let first = k.iter().position(|&v| v > 0.0).unwrap_or(0);
        let last = k.iter().rposition(|&v| v > 0.0).map_or(k.len(), |i| i + 1);
        let taps = &k[first..last.max(first + 1)];
        // Positive: the source pixel under the centre is within ½ of it, and `support >= 1`.
        let sum: f64 = taps.iter().sum();
        debug_assert!(sum > 0.0);
        a.start.push(lo + first);
        a.w.extend(taps.iter().map(|&v| (v / sum) as f32));
        a.off.push(a.w.len());
    }
    a
}

/// Antialiased resize of an H×W×3 RGB image, as PIL's `Image.resize((dw, dh),
/// Image.BILINEAR)`: when shrinking, the triangle filter is widened by the scale factor
/// (support `max(in/out, 1)` source pixels each side), so every source pixel contributes and
/// thin structures are averaged instead of skipped; when enlarging it is the plain bilinear of
/// [`resize_bilinear_rgb`] (half-pixel centres, edges clamped).
///
/// Separable, horizontal pass then vertical pass, in `f32` with the taps computed once per
/// axis; the result is rounded to nearest at the end (PIL rounds its horizontal pass to `u8`
/// and works in fixed point, so values may differ from Pillow's by 1; checked against Pillow
/// goldens). An empty size, a buffer that does not hold `sw·sh·3` bytes or an output above the
/// decoding limit is an error.
pub fn resize_antialias_rgb(
    src: &[u8],
    sw: usize,
    sh: usize,
    dw: usize,
    dh: usize,
) -> Result<Vec<u8>, DataError> {
    check_resize(src.len(), [sw, sh], [dw, dh], 3)?;
    if sw == dw && sh == dh {
        return Ok(src.to_vec());
    }
    // Rows of resampled values the ring may hold: at most the decoding limit's pixels.
    let limit = usize::try_from(DecodeLimits::current().max_pixels / dw as u64);
    Ok(antialias_rgb(
        src,
        sw,
        sh,
        dw,
        dh,
        limit.unwrap_or(usize::MAX),
    ))
}

/// [`resize_antialias_rgb`] after the checks, with a ring of at most `max_slots` rows.
fn antialias_rgb(
    src: &[u8],
    sw: usize,
    sh: usize,
    dw: usize,
    dh: usize,
    max_slots: usize,
) -> Vec<u8> {
    let ax = antialias_axis(sw, dw);
    let ay = antialias_axis(sh, dh);
    let row = dw * 3;
    // Horizontally resampled source rows, kept in a ring (slot `r % slots`) so that the rows
    // shared by neighbouring output rows are resampled once. Output rows read nondecreasing
    // source ranges, so a ring as deep as the widest vertical footprint never evicts a row
    // still needed; a shallower one (only for extreme aspect ratios, to keep the buffer within
    // the decoding limit) recomputes rows, with the same values.
    let slots = ay.max_taps().min(max_slots).max(1);
    let mut ring = vec![0f32; slots * row];
    let mut held = vec![usize::MAX; slots];
    let mut acc = vec![0f32; row];
    let mut dst = vec![0u8; dh * row];
    for (y, out) in dst.chunks_exact_mut(row).enumerate() {
        let (r0, wy) = ay.taps(y);
        acc.fill(0.0);
        for (k, &v) in wy.iter().enumerate() {
            let r = r0 + k;
            let slot = r % slots;
            let h = &mut ring[slot * row..(slot + 1) * row];
            if held[slot] != r {
                antialias_row(&src[r * sw * 3..(r + 1) * sw * 3], &ax, h);
                held[slot] = r;
            }
            for (a, &p) in acc.iter_mut().zip(h.iter()) {
                *a += v * p;
            }
        }
        for (d, &a) in out.iter_mut().zip(&acc) {
            *d = (a + 0.5).clamp(0.0, 255.0) as u8;
        }
    }
    dst
}

/// The horizontal pass of [`resize_antialias_rgb`] over one source row (`sw × 3` bytes) into
/// `out` (`dw × 3` values).
fn antialias_row(src: &[u8], ax: &FilterAxis, out: &mut [f32]) {
    for (d, o) in out.chunks_exact_mut(3).enumerate() {
        let (c0, w) = ax.taps(d);
        let px = &src[c0 * 3..(c0 + w.len()) * 3];
        let mut s = [0f32; 3];
        for (&v, p) in w.iter().zip(px.chunks_exact(3)) {
            s[0] += v * p[0] as f32;
            s[1] += v * p[1] as f32;
            s[2] += v * p[2] as f32;
        }
        o.copy_from_slice(&s);
    }
}

/// Source indices of [`resize_nearest_centre`] along one axis: `floor((d + ½) · src / dst)`,
/// computed exactly in integers as `((2d + 1) · src) / (2 · dst)`.
fn nearest_centre_axis(src: usize, dst: usize) -> Vec<usize> {
    (0..dst)
        .map(|d| {
            let i = (2 * d as u128 + 1) * src as u128 / (2 * dst as u128);
            (i as usize).min(src - 1)
        })
        .collect()
}

/// Nearest-neighbour resize at pixel centres of an interleaved H×W×`channels` buffer (labels:
/// `channels = 1`): output pixel `d` takes source pixel `floor((d + ½) · in/out)` (clamped),
/// the rule of PIL's `NEAREST` and PyTorch's `nearest-exact`. Unlike [`resize_nearest`]
/// (`floor(d · in/out)`, which shifts the label by up to half a source pixel towards the
/// origin), it is centred like [`resize_antialias_rgb`]'s image; checked exactly against
/// Pillow goldens. An empty size, a buffer that does not hold `sw·sh·channels` values or an
/// output above the decoding limit is an error.
pub fn resize_nearest_centre<T: Copy>(
    src: &[T],
    sw: usize,
    sh: usize,
    dw: usize,
    dh: usize,
    channels: usize,
) -> Result<Vec<T>, DataError> {
    nearest_resize(src, [sw, sh, dw, dh], channels, nearest_centre_axis)
}

/// Mirrors an interleaved H×W×`channels` buffer left–right in place; a buffer that does not
/// hold `w·h·channels` values is an error.
pub fn hflip<T: Copy>(buf: &mut [T], w: usize, h: usize, channels: usize) -> Result<(), DataError> {
    check_buffer("flip buffer", buf.len(), w, h, channels)?;
    for row in buf.chunks_exact_mut(w * channels) {
        for x in 0..w / 2 {
            let xr = w - 1 - x;
            for c in 0..channels {
                row.swap(x * channels + c, xr * channels + c);
            }
        }
    }
    Ok(())
}

/// Copies the `cw × ch` window at (`x0`, `y0`) of an H×W×`channels` buffer; parts of the
/// window outside the source (negative offsets or past the edge) are filled with `pad`. A
/// source that does not hold `w·h·channels` values, a `pad` that is not `channels` long or a
/// window above the pixel limit is an error.
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
) -> Result<Vec<T>, DataError> {
    check_buffer("crop source", src.len(), w, h, channels)?;
    check_window(x0, y0, cw, ch)?;
    check_pad(pad.len(), channels)?;
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
    Ok(dst)
}

/// Writes `(x - mean) / std` of an H×W×3 RGB image into planar `3×H×W` `out`; an `img` or
/// `out` that does not hold `w·h·3` values is an error.
pub fn normalize_chw(
    img: &[u8],
    w: usize,
    h: usize,
    norm: &Normalize,
    out: &mut [f32],
) -> Result<(), DataError> {
    check_buffer("normalize input", img.len(), w, h, 3)?;
    check_buffer("normalize output", out.len(), w, h, 3)?;
    let plane = w * h;
    let scale = [1.0 / norm.std[0], 1.0 / norm.std[1], 1.0 / norm.std[2]];
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in img.chunks_exact(3).enumerate() {
        r[i] = (px[0] as f32 - norm.mean[0]) * scale[0];
        g[i] = (px[1] as f32 - norm.mean[1]) * scale[1];
        b[i] = (px[2] as f32 - norm.mean[2]) * scale[2];
    }
    Ok(())
}

/// Random training augmentation, applied after the base resize. Fields left out of a config
/// file take their [`Augment::default`] values.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Augment {
    /// Random scale factor range `[min, max]` (uniform); `None` keeps the size.
    pub scale: Option<(f32, f32)>,
    /// Draw the scale from the grid `min, min + step, …, max` (uniformly over its points)
    /// instead of the continuous range: the paper's Cityscapes code draws from
    /// {0.75, 1.0, …, 2.0}, i.e. `scale = (0.75, 2.0)` with `scale_step = 0.25`.
    pub scale_step: Option<f32>,
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
    pub color_jitter: Option<f32>,
}

impl Default for Augment {
    /// Scale 0.5–2.0, crop to the resized size, random flip, no colour jitter.
    fn default() -> Self {
        Augment {
            scale: Some((0.5, 2.0)),
            scale_step: None,
            crop: None,
            hflip: true,
            color_jitter: None,
        }
    }
}

impl Augment {
    /// The random scale factor of one sample (`None` without `scale`): uniform in the range, or
    /// uniform over the grid `min, min + step, …, max` with `scale_step`. `apply` draws it first.
    pub fn sample_scale<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<f32> {
        let (lo, hi) = self.scale?;
        Some(match self.scale_step {
            Some(step) if hi > lo => {
                let points = ((hi - lo) / step + 1e-4).floor() as usize;
                lo + step * rng.random_range(0..=points) as f32
            }
            _ if hi > lo => rng.random_range(lo..=hi),
            _ => lo,
        })
    }

    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), DataError> {
        if let Some(step) = self.scale_step {
            if !(step.is_finite() && step > 0.0) {
                return Err(DataError::config(
                    "augment.scale_step",
                    step,
                    "must be finite and > 0",
                ));
            }
        }
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
    /// always gives the same result. Returns `(image, label, width, height)`; invalid settings
    /// (see [`Augment::validate`]), an empty image, buffers that do not match `w × h` and a
    /// crop above the pixel limit ([`DecodeLimits`]) are errors.
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
    ) -> Result<(Vec<u8>, Vec<u8>, usize, usize), DataError> {
        // The ranges first: an invalid one would panic in the RNG's range sampling.
        self.validate()?;
        check_buffer("augment image", image.len(), w, h, 3)?;
        check_buffer("augment label", label.len(), w, h, 1)?;
        let (cw, ch) = self.crop.unwrap_or((w, h));
        // Scaled size; the crop window is then resampled straight from the input (the same
        // values as scaling the whole image and cropping, without the pixels thrown away).
        let (sw, sh) = match self.sample_scale(rng) {
            Some(s) => (
                ((w as f32 * s).round() as usize).max(1),
                ((h as f32 * s).round() as usize).max(1),
            ),
            None => (w, h),
        };
        let (x0, y0) = if (sw, sh) != (cw, ch) {
            // Offsets: uniform over valid positions; when the image is smaller than the crop
            // it is placed at a random offset inside the padded window.
            (random_offset(sw, cw, rng), random_offset(sh, ch, rng))
        } else {
            (0, 0)
        };
        let (mut img, mut lbl) = if (sw, sh) == (w, h) {
            if (x0, y0, cw, ch) == (0, 0, w, h) {
                (image.to_vec(), label.to_vec())
            } else {
                (
                    crop_pad(image, w, h, 3, x0, y0, cw, ch, &pad_rgb)?,
                    crop_pad(label, w, h, 1, x0, y0, cw, ch, &[ignore])?,
                )
            }
        } else {
            (
                resize_bilinear_rgb_window(image, w, h, sw, sh, x0, y0, cw, ch, pad_rgb)?,
                resize_nearest_window(label, w, h, sw, sh, 1, x0, y0, cw, ch, &[ignore])?,
            )
        };
        let (sw, sh) = (cw, ch);
        if self.hflip && rng.random_bool(0.5) {
            hflip(&mut img, sw, sh, 3)?;
            hflip(&mut lbl, sw, sh, 1)?;
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
        Ok((img, lbl, sw, sh))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring shallower than the vertical footprint (the path taken only for extreme aspect
    /// ratios near the decoding limit) recomputes rows and gives the same bytes.
    #[test]
    fn antialias_ring_depth_does_not_change_values() {
        let (sw, sh) = (23, 31);
        let src: Vec<u8> = (0..sw * sh * 3).map(|i| (i * 97 % 251) as u8).collect();
        for (dw, dh) in [(7, 5), (11, 3), (30, 40), (23, 9)] {
            let want = antialias_rgb(&src, sw, sh, dw, dh, usize::MAX);
            for slots in [1, 2, 3] {
                assert_eq!(
                    antialias_rgb(&src, sw, sh, dw, dh, slots),
                    want,
                    "{dw}x{dh}, {slots} slot(s)"
                );
            }
        }
    }
}
