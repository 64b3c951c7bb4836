//! Fast PNG reading and writing on top of the `png` crate (and JPEG reading for images).
//!
//! Images are decoded to 8-bit RGB whatever their stored format (grey, grey+alpha, RGB, RGBA,
//! palette, 1–16 bits). Label maps are decoded *without* colour conversion: the value of the
//! first channel (or the palette index) is returned as `u16`, which is how Synthia (16-bit,
//! class id in the first channel), Cityscapes (8-bit grey) and palette masks store class ids.

use crate::error::DataError;
use png::{BitDepth, ColorType, Transformations};
use std::io::Cursor;
use std::path::Path;
use std::sync::OnceLock;

/// Limits checked before any pixel buffer is allocated: a file's header can claim any size (a
/// 661-byte PNG can announce 100000×100000 pixels, a 389 KB deflate stream can inflate to
/// gigabytes), so images larger than `max_pixels` are refused with an error instead of an
/// allocation that aborts the process. The same bound caps the PNG decoder's own allocations
/// (`png::Limits`), the JPEG decoder's buffer, and the outputs of the [`crate::transform`]
/// functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest `width × height` accepted.
    pub max_pixels: u64,
}

impl DecodeLimits {
    /// 64 megapixels (8192×8192): eight times a 4K frame, 32 times a Cityscapes image.
    pub const DEFAULT_MAX_PIXELS: u64 = 64 * 1024 * 1024;

    /// The most bytes a decoded image within the limits can take: `max_pixels` pixels of the
    /// widest PNG pixel (16-bit RGBA, 8 bytes).
    pub fn max_bytes(&self) -> usize {
        usize::try_from(self.max_pixels.saturating_mul(8)).unwrap_or(usize::MAX)
    }

    /// The limits the decoders without an explicit `limits` argument use: what
    /// [`set_max_pixels`] set for the process, or the default.
    pub fn current() -> Self {
        PROCESS_LIMITS.get().copied().unwrap_or_default()
    }

    /// Checks a `width × height` size (from a header, or asked of a transform) against the
    /// limits; the error says what is wrong with the size (`"100000x100000 pixels, above the
    /// limit of … pixels (data.max_image_pixels)"`, `"an empty 0x5 image"`).
    pub fn check(&self, width: u64, height: u64) -> Result<(), String> {
        match width.checked_mul(height) {
            Some(n) if n <= self.max_pixels && width > 0 && height > 0 => Ok(()),
            Some(0) => Err(format!("an empty {width}x{height} image")),
            _ => Err(format!(
                "{width}x{height} pixels, above the limit of {} pixels (data.max_image_pixels)",
                self.max_pixels
            )),
        }
    }

    /// [`DecodeLimits::check`] of a size read from a file's header, worded for decoders.
    fn check_header(&self, width: u64, height: u64) -> Result<(), String> {
        self.check(width, height)
            .map_err(|e| format!("the header claims {e}; refusing to decode"))
    }
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_pixels: Self::DEFAULT_MAX_PIXELS,
        }
    }
}

/// The process's limits, set at most once (see [`set_max_pixels`]).
static PROCESS_LIMITS: OnceLock<DecodeLimits> = OnceLock::new();

/// Sets the process's [`DecodeLimits::current`], once: the trainer does it at start-up from
/// `data.max_image_pixels`. Setting the value it already has is a no-op; another value is an
/// error (the limit never changes under decoders that are running). Tests and libraries that
/// need another limit pass one to the `*_with` decoders instead.
pub fn set_max_pixels(max_pixels: u64) -> Result<(), DataError> {
    if max_pixels == 0 {
        return Err(DataError::config(
            "data.max_image_pixels",
            0,
            "must be at least 1",
        ));
    }
    let want = DecodeLimits { max_pixels };
    let have = *PROCESS_LIMITS.get_or_init(|| want);
    if have == want {
        Ok(())
    } else {
        Err(DataError::config(
            "data.max_image_pixels",
            max_pixels,
            format!(
                "this process already decodes with a limit of {} pixels (it is set once)",
                have.max_pixels
            ),
        ))
    }
}

/// An 8-bit RGB image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// H×W×3 bytes.
    pub data: Vec<u8>,
    /// Width.
    pub width: usize,
    /// Height.
    pub height: usize,
}

/// A raw label map: the first channel (or palette index) of every pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawLabel {
    /// H×W values.
    pub data: Vec<u16>,
    /// Width.
    pub width: usize,
    /// Height.
    pub height: usize,
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|e| DataError::io(path, e))
}

fn decode_err(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::Decode {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Reads the width and height from a PNG header without decoding the pixels.
pub fn read_png_size(path: &Path) -> Result<(usize, usize), DataError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut head = [0u8; 24];
    f.read_exact(&mut head)
        .map_err(|_| decode_err(path, "file too short for a PNG header"))?;
    if &head[..8] != b"\x89PNG\r\n\x1a\n" || &head[12..16] != b"IHDR" {
        return Err(decode_err(path, "not a PNG file (bad signature)"));
    }
    let w = u32::from_be_bytes(head[16..20].try_into().unwrap()) as usize;
    let h = u32::from_be_bytes(head[20..24].try_into().unwrap()) as usize;
    Ok((w, h))
}

/// Decodes a PNG (or, recognised by its signature, a baseline/progressive JPEG) file to 8-bit
/// RGB, whatever its extension, within [`DecodeLimits::current`]. Errors name the file.
pub fn decode_rgb8(path: &Path) -> Result<RgbImage, DataError> {
    decode_rgb8_with(path, &DecodeLimits::current())
}

/// [`decode_rgb8`] within `limits`.
pub fn decode_rgb8_with(path: &Path, limits: &DecodeLimits) -> Result<RgbImage, DataError> {
    let bytes = read_bytes(path)?;
    decode_image_bytes_with(&bytes, limits).map_err(|e| decode_err(path, e))
}

/// Decodes PNG or JPEG bytes (recognised by their signature) to 8-bit RGB within `limits`.
pub fn decode_image_bytes_with(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, String> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        decode_jpeg_bytes_with(bytes, limits)
    } else {
        decode_rgb8_bytes_with(bytes, limits)
    }
}

/// Decodes PNG or JPEG bytes (recognised by their signature) to 8-bit RGB within
/// [`DecodeLimits::current`].
pub fn decode_image_bytes(bytes: &[u8]) -> Result<RgbImage, String> {
    decode_image_bytes_with(bytes, &DecodeLimits::current())
}

/// Decodes JPEG bytes to 8-bit RGB (greyscale is replicated; CMYK is converted to RGB by the
/// codec),
/// within [`DecodeLimits::current`].
pub fn decode_jpeg_bytes(bytes: &[u8]) -> Result<RgbImage, String> {
    decode_jpeg_bytes_with(bytes, &DecodeLimits::current())
}

/// [`decode_jpeg_bytes`] within `limits`.
///
/// Decoded by `image`'s JPEG codec (zune-jpeg); its allocations are capped by `limits` as well,
/// and the header's size is checked before any pixel buffer exists.
pub fn decode_jpeg_bytes_with(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, String> {
    use image::{ColorType as ImgColor, ImageDecoder};
    // The frame header's size is checked before the codec sees the data.
    let layout = jpeg_layout(bytes);
    if let Some((w, h)) = layout.frame {
        limits.check_header(w as u64, h as u64)?;
    }
    // The decoder fills a truncated scan with grey instead of failing; refuse it as PIL does
    // ("image file is truncated"). In entropy-coded data a 0xFF byte is always followed by
    // 0x00 or a restart marker, so an `FF D9` after the first scan's start is the end of the
    // image.
    let ends = layout
        .scan_start
        .is_some_and(|s| bytes[s..].windows(2).any(|w| w == [0xFF, 0xD9]));
    if !ends {
        return Err(
            "JPEG: the file is truncated (no end-of-image marker after the image data)".into(),
        );
    }
    let mut dec = image::codecs::jpeg::JpegDecoder::new(Cursor::new(bytes))
        .map_err(|e| format!("JPEG: {e}"))?;
    let (w, h) = dec.dimensions();
    limits.check_header(w as u64, h as u64)?;
    let mut caps = image::Limits::default();
    caps.max_image_width = Some(w);
    caps.max_image_height = Some(h);
    // At most 4 bytes a pixel (CMYK) besides the output, so the decoder stays within the limit.
    caps.max_alloc = Some(limits.max_pixels.saturating_mul(4));
    dec.set_limits(caps).map_err(|e| format!("JPEG: {e}"))?;
    let color = dec.color_type();
    let channels = match color {
        ImgColor::Rgb8 => 3,
        ImgColor::L8 => 1,
        other => return Err(format!("JPEG: {other:?} output is not supported")),
    };
    let (w, h) = (w as usize, h as usize);
    let mut pixels = vec![0u8; w * h * channels];
    if dec.total_bytes() != pixels.len() as u64 {
        return Err("JPEG: inconsistent image size".into());
    }
    dec.read_image(&mut pixels)
        .map_err(|e| format!("JPEG: {e}"))?;
    let data = if channels == 3 {
        pixels
    } else {
        pixels.iter().flat_map(|&g| [g, g, g]).collect()
    };
    Ok(RgbImage {
        data,
        width: w,
        height: h,
    })
}

/// Where a JPEG's parts are, read by walking its marker segments before the image data.
#[derive(Debug, Default)]
struct JpegLayout {
    /// The `(width, height)` of the first frame header (SOF0–SOF15).
    frame: Option<(u32, u32)>,
    /// The offset just after the first start-of-scan marker (where the image data begins).
    scan_start: Option<usize>,
}

/// The [`JpegLayout`] of `bytes`; fields stay `None` when the bytes end or break first.
fn jpeg_layout(bytes: &[u8]) -> JpegLayout {
    let mut layout = JpegLayout::default();
    let mut i = 2; // after SOI
    loop {
        // Markers are 0xFF followed by a code; extra 0xFF bytes are fill.
        if bytes.get(i) != Some(&0xFF) {
            return layout;
        }
        while bytes.get(i) == Some(&0xFF) {
            i += 1;
        }
        let Some(&code) = bytes.get(i) else {
            return layout;
        };
        i += 1;
        match code {
            0xD0..=0xD7 | 0x01 => continue, // standalone markers
            0xD9 => return layout,          // end of image
            0xDA => {
                layout.scan_start = Some(i.min(bytes.len()));
                return layout;
            }
            _ => {}
        }
        let (Some(&hi), Some(&lo)) = (bytes.get(i), bytes.get(i + 1)) else {
            return layout;
        };
        let len = u16::from_be_bytes([hi, lo]) as usize;
        let is_frame = (0xC0..=0xCF).contains(&code) && !matches!(code, 0xC4 | 0xC8 | 0xCC);
        if is_frame && layout.frame.is_none() {
            if let Some(f) = bytes.get(i + 3..i + 7) {
                let h = u16::from_be_bytes([f[0], f[1]]);
                let w = u16::from_be_bytes([f[2], f[3]]);
                layout.frame = Some((w as u32, h as u32));
            }
        }
        if len < 2 {
            return layout;
        }
        i += len;
    }
}

/// A PNG decoder that refuses images above `limits` before allocating their pixels.
fn png_reader<'a>(
    bytes: &'a [u8],
    transformations: Transformations,
    limits: &DecodeLimits,
) -> Result<png::Reader<Cursor<&'a [u8]>>, String> {
    // The decoder's own allocations (rows, chunk buffers) are capped as well; the image
    // buffer itself is sized from the header, checked below before the caller allocates it.
    let mut dec = png::Decoder::new_with_limits(
        Cursor::new(bytes),
        png::Limits {
            bytes: limits.max_bytes().max(1 << 20),
        },
    );
    dec.set_transformations(transformations);
    dec.set_ignore_text_chunk(true);
    dec.set_ignore_iccp_chunk(true);
    let reader = dec.read_info().map_err(|e| e.to_string())?;
    let info = reader.info();
    limits.check_header(info.width as u64, info.height as u64)?;
    Ok(reader)
}

/// Decodes PNG bytes to 8-bit RGB (the error is a message without the path), within
/// [`DecodeLimits::current`].
pub fn decode_rgb8_bytes(bytes: &[u8]) -> Result<RgbImage, String> {
    decode_rgb8_bytes_with(bytes, &DecodeLimits::current())
}

/// [`decode_rgb8_bytes`] within `limits`.
pub fn decode_rgb8_bytes_with(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, String> {
    let mut reader = png_reader(bytes, Transformations::normalize_to_color8(), limits)?;
    let (color, depth) = reader.output_color_type();
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| "image too large".to_string())?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(|e| e.to_string())?;
    if depth != BitDepth::Eight {
        return Err(format!("unexpected output bit depth {depth:?}"));
    }
    let (w, h) = (info.width as usize, info.height as usize);
    let stride = info.line_size;
    let channels = match color {
        ColorType::Grayscale => 1,
        ColorType::GrayscaleAlpha => 2,
        ColorType::Rgb => 3,
        ColorType::Rgba => 4,
        ColorType::Indexed => return Err("palette was not expanded".into()),
    };
    if channels == 3 && stride == w * 3 {
        buf.truncate(w * h * 3);
        return Ok(RgbImage {
            data: buf,
            width: w,
            height: h,
        });
    }
    let mut out = vec![0u8; w * h * 3];
    for y in 0..h {
        let row = &buf[y * stride..y * stride + w * channels];
        let dst = &mut out[y * w * 3..(y + 1) * w * 3];
        match channels {
            1 | 2 => {
                for (x, d) in dst.chunks_exact_mut(3).enumerate() {
                    let g = row[x * channels];
                    d.copy_from_slice(&[g, g, g]);
                }
            }
            _ => {
                for (x, d) in dst.chunks_exact_mut(3).enumerate() {
                    d.copy_from_slice(&row[x * channels..x * channels + 3]);
                }
            }
        }
    }
    Ok(RgbImage {
        data: out,
        width: w,
        height: h,
    })
}

/// Decodes a label PNG: the first channel (or the palette index) of every pixel, within
/// [`DecodeLimits::current`]. Errors name the file.
pub fn decode_label(path: &Path) -> Result<RawLabel, DataError> {
    decode_label_with(path, &DecodeLimits::current())
}

/// [`decode_label`] within `limits`.
pub fn decode_label_with(path: &Path, limits: &DecodeLimits) -> Result<RawLabel, DataError> {
    let bytes = read_bytes(path)?;
    decode_label_bytes_with(&bytes, limits).map_err(|e| decode_err(path, e))
}

/// Decodes label PNG bytes (the error is a message without the path), within
/// [`DecodeLimits::current`].
pub fn decode_label_bytes(bytes: &[u8]) -> Result<RawLabel, String> {
    decode_label_bytes_with(bytes, &DecodeLimits::current())
}

/// [`decode_label_bytes`] within `limits`.
pub fn decode_label_bytes_with(bytes: &[u8], limits: &DecodeLimits) -> Result<RawLabel, String> {
    let mut reader = png_reader(bytes, Transformations::IDENTITY, limits)?;
    let (color, depth) = reader.output_color_type();
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| "image too large".to_string())?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(|e| e.to_string())?;
    let (w, h) = (info.width as usize, info.height as usize);
    let stride = info.line_size;
    let channels = match color {
        ColorType::Grayscale | ColorType::Indexed => 1,
        ColorType::GrayscaleAlpha => 2,
        ColorType::Rgb => 3,
        ColorType::Rgba => 4,
    };
    let mut out = vec![0u16; w * h];
    for y in 0..h {
        let row = &buf[y * stride..(y + 1) * stride];
        let dst = &mut out[y * w..(y + 1) * w];
        match depth {
            BitDepth::Sixteen => {
                let step = 2 * channels;
                for (x, d) in dst.iter_mut().enumerate() {
                    *d = u16::from_be_bytes([row[x * step], row[x * step + 1]]);
                }
            }
            BitDepth::Eight => {
                for (x, d) in dst.iter_mut().enumerate() {
                    *d = row[x * channels] as u16;
                }
            }
            low => {
                // 1, 2 or 4 bits: only grey and palette images, one sample per pixel, MSB first.
                let bits = low as usize;
                let mask = (1u16 << bits) - 1;
                for (x, d) in dst.iter_mut().enumerate() {
                    let bit = x * bits;
                    let byte = row[bit / 8] as u16;
                    *d = (byte >> (8 - bits - bit % 8)) & mask;
                }
            }
        }
    }
    Ok(RawLabel {
        data: out,
        width: w,
        height: h,
    })
}

/// How a PNG is compressed when written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PngSpeed {
    /// Fast deflate (`fdeflate`), adaptive row filters: small files, written fast.
    #[default]
    Fast,
    /// Default zlib-like compression (slower to write, same decode speed).
    Balanced,
}

fn write_png(
    path: &Path,
    w: usize,
    h: usize,
    color: ColorType,
    depth: BitDepth,
    data: &[u8],
    speed: PngSpeed,
) -> Result<(), DataError> {
    let enc_err = |e: png::EncodingError| DataError::Encode {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut out = Vec::with_capacity(data.len() / 2);
    {
        let mut enc = png::Encoder::new(&mut out, w as u32, h as u32);
        enc.set_color(color);
        enc.set_depth(depth);
        enc.set_compression(match speed {
            PngSpeed::Fast => png::Compression::Fast,
            PngSpeed::Balanced => png::Compression::Balanced,
        });
        let mut writer = enc.write_header().map_err(enc_err)?;
        writer.write_image_data(data).map_err(enc_err)?;
        writer.finish().map_err(enc_err)?;
    }
    // Atomically: a prediction or a generated image is never left half-written.
    recallseg_files::write_bytes_atomic(path, &out).map_err(|e| DataError::io(path, e.source))
}

/// Checks that a `w × h` image of `channels` values a pixel can be a PNG (1 to 2³¹−1 pixels
/// each way) and that `got` is its number of values.
fn check_len(
    path: &Path,
    got: usize,
    w: usize,
    h: usize,
    channels: usize,
) -> Result<(), DataError> {
    let enc_err = |reason: String| DataError::Encode {
        path: path.to_path_buf(),
        reason,
    };
    const MAX_SIDE: usize = i32::MAX as usize;
    if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
        return Err(enc_err(format!(
            "a PNG is 1 to {MAX_SIDE} pixels each way, not {w}x{h}"
        )));
    }
    match w.checked_mul(h).and_then(|n| n.checked_mul(channels)) {
        Some(want) if want == got => Ok(()),
        Some(want) => Err(enc_err(format!(
            "buffer holds {got} values, the image needs {want}"
        ))),
        None => Err(enc_err(format!("{w}x{h} pixels is more than memory holds"))),
    }
}

/// Writes an 8-bit RGB PNG (`data` is H×W×3).
pub fn write_rgb8(
    path: &Path,
    w: usize,
    h: usize,
    data: &[u8],
    speed: PngSpeed,
) -> Result<(), DataError> {
    check_len(path, data.len(), w, h, 3)?;
    write_png(path, w, h, ColorType::Rgb, BitDepth::Eight, data, speed)
}

/// Writes an 8-bit greyscale PNG (`data` is H×W), e.g. a Cityscapes `labelIds` map or a mask.
pub fn write_gray8(
    path: &Path,
    w: usize,
    h: usize,
    data: &[u8],
    speed: PngSpeed,
) -> Result<(), DataError> {
    check_len(path, data.len(), w, h, 1)?;
    write_png(
        path,
        w,
        h,
        ColorType::Grayscale,
        BitDepth::Eight,
        data,
        speed,
    )
}

/// Writes a Synthia-style label PNG: 16-bit RGB with the class id in the first channel, the
/// instance id in the second and 0 in the third.
pub fn write_label_rgb16(
    path: &Path,
    w: usize,
    h: usize,
    class_ids: &[u16],
    instance_ids: Option<&[u16]>,
    speed: PngSpeed,
) -> Result<(), DataError> {
    check_len(path, class_ids.len(), w, h, 1)?;
    if let Some(inst) = instance_ids {
        check_len(path, inst.len(), w, h, 1)?;
    }
    let mut buf = vec![0u8; w * h * 6];
    for (i, px) in buf.chunks_exact_mut(6).enumerate() {
        px[0..2].copy_from_slice(&class_ids[i].to_be_bytes());
        if let Some(inst) = instance_ids {
            px[2..4].copy_from_slice(&inst[i].to_be_bytes());
        }
    }
    write_png(path, w, h, ColorType::Rgb, BitDepth::Sixteen, &buf, speed)
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    /// A PNG chunk with its length and CRC.
    fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(kind);
        c.extend_from_slice(data);
        let mut h = crc32fast::Hasher::new();
        h.update(kind);
        h.update(data);
        c.extend_from_slice(&h.finalize().to_be_bytes());
        c
    }

    /// A valid-looking PNG whose header claims `w × h` 8-bit grey pixels and whose data is a
    /// few bytes: what made the decoder allocate gigabytes and abort.
    fn lying_png(w: u32, h: u32) -> Vec<u8> {
        let mut b = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = w.to_be_bytes().to_vec();
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
        b.extend(chunk(b"IHDR", &ihdr));
        // zlib stream of one stored empty block.
        b.extend(chunk(
            b"IDAT",
            &[0x78, 0x01, 0x01, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 1],
        ));
        b.extend(chunk(b"IEND", &[]));
        b
    }

    #[test]
    fn a_header_claiming_ten_gigapixels_is_refused_before_allocating() {
        let png = lying_png(100_000, 100_000);
        assert!(png.len() < 100, "{}", png.len());
        for e in [
            decode_rgb8_bytes(&png).unwrap_err(),
            decode_label_bytes(&png).unwrap_err(),
        ] {
            assert!(e.contains("100000x100000") && e.contains("limit"), "{e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bomb.png");
        std::fs::write(&p, &png).unwrap();
        let e = decode_rgb8(&p).unwrap_err().to_string();
        assert!(e.contains("bomb.png") && e.contains("limit"), "{e}");
        let e = decode_label(&p).unwrap_err().to_string();
        assert!(e.contains("bomb.png") && e.contains("limit"), "{e}");
        // Zero-sized and overflowing headers are errors too.
        assert!(decode_rgb8_bytes(&lying_png(0, 5)).is_err());
        assert!(decode_label_bytes(&lying_png(u32::MAX, u32::MAX)).is_err());
    }

    /// A `w × h` all-zero 8-bit grey PNG, streamed row by row (the encoder never holds the
    /// image): deflate compresses it about 1000:1, the shape of a real decompression bomb.
    fn zero_png(w: usize, h: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut enc = png::Encoder::new(&mut bytes, w as u32, h as u32);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::High);
        let mut wr = enc.write_header().unwrap();
        let mut sw = wr.stream_writer().unwrap();
        use std::io::Write;
        let row = vec![0u8; w];
        for _ in 0..h {
            sw.write_all(&row).unwrap();
        }
        sw.finish().unwrap();
        drop(wr);
        bytes
    }

    #[test]
    fn a_deflate_bomb_is_refused_by_the_limit() {
        // 20000x20000 zeros: 440 KB that inflate to 400 MB of grey (1.2 GB as
        // RGB). The default limit refuses it from the header, before inflating anything.
        let bomb = zero_png(20_000, 20_000);
        assert!(bomb.len() < 1_000_000, "{}", bomb.len());
        for e in [
            decode_label_bytes_with(&bomb, &DecodeLimits::default()).unwrap_err(),
            decode_rgb8_bytes_with(&bomb, &DecodeLimits::default()).unwrap_err(),
            decode_image_bytes_with(&bomb, &DecodeLimits::default()).unwrap_err(),
        ] {
            assert!(e.contains("20000x20000") && e.contains("limit"), "{e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bomb-20000.png");
        std::fs::write(&p, &bomb).unwrap();
        for e in [
            decode_rgb8_with(&p, &DecodeLimits::default()).unwrap_err(),
            decode_label_with(&p, &DecodeLimits::default()).unwrap_err(),
        ] {
            let e = e.to_string();
            assert!(e.contains("bomb-20000.png") && e.contains("limit"), "{e}");
        }
        // A smaller one under a limit below its size is refused too, and within the default
        // limit it decodes: the limit is a size, not a compression ratio.
        let small_bomb = zero_png(2000, 2000);
        let one_mpx = DecodeLimits {
            max_pixels: 1 << 20,
        };
        let e = decode_label_bytes_with(&small_bomb, &one_mpx).unwrap_err();
        assert!(e.contains("2000x2000") && e.contains("1048576"), "{e}");
        assert!(decode_rgb8_bytes_with(&small_bomb, &one_mpx).is_err());
        let l = decode_label_bytes_with(&small_bomb, &DecodeLimits::default()).unwrap();
        assert_eq!((l.width, l.height), (2000, 2000));
        assert!(l.data.iter().all(|&v| v == 0));
    }

    /// The process limit is set once: the same value again is fine, another one is an error,
    /// and 0 is refused. (Sets the default, so the other tests of this binary are unaffected.)
    #[test]
    fn the_process_limit_is_set_once() {
        let d = DecodeLimits::DEFAULT_MAX_PIXELS;
        set_max_pixels(d).unwrap();
        set_max_pixels(d).unwrap();
        let e = set_max_pixels(d / 2).unwrap_err().to_string();
        assert!(
            e.contains("max_image_pixels") && e.contains("set once"),
            "{e}"
        );
        assert!(set_max_pixels(0).is_err());
        assert_eq!(DecodeLimits::current(), DecodeLimits::default());
    }

    #[test]
    fn writers_refuse_sizes_that_are_not_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.png");
        let e = write_gray8(&p, 0, 0, &[], PngSpeed::Fast)
            .unwrap_err()
            .to_string();
        assert!(e.contains("w.png") && e.contains("0x0"), "{e}");
        let e = write_rgb8(&p, usize::MAX / 2, 3, &[0; 6], PngSpeed::Fast)
            .unwrap_err()
            .to_string();
        assert!(e.contains("w.png"), "{e}");
        let e = write_label_rgb16(&p, 1 << 20, 1 << 20, &[0; 4], None, PngSpeed::Fast)
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs"), "{e}");
        assert!(!p.exists());
    }

    #[test]
    fn a_jpeg_header_claiming_a_huge_image_is_refused() {
        // SOI, then a baseline frame header for 65000x65000 grey pixels, then EOI.
        let jpeg = [
            0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x0B, 0x08, 0xFD, 0xE8, 0xFD, 0xE8, 0x01, 0x01, 0x11,
            0x00, 0xFF, 0xD9,
        ];
        let e = decode_image_bytes_with(&jpeg, &DecodeLimits::default()).unwrap_err();
        assert!(e.contains("65000x65000") && e.contains("limit"), "{e}");
    }
}
