//! A procedural street-scene dataset written in the SYNTHIA-SEQS on-disk format.
//!
//! [`generate_synthia`] renders perspective street scenes (road trapezoid towards a vanishing
//! point, sidewalks, facades with windows, skyline, trees, fences, lane markings, cars, poles
//! with signs and traffic lights, pedestrians, rare bicycles, unlabelled clutter) and writes
//!
//! ```text
//! <root>/<sequence>/RGB/<side>/<camera>/NNNNNN.png        8-bit RGB
//! <root>/<sequence>/GT/LABELS/<side>/<camera>/NNNNNN.png  16-bit RGB, class id in channel 1,
//!                                                        instance id in channel 2
//! ```
//!
//! so [`SynthiaDataset`](crate::SynthiaDataset) reads it like the real data. Class ids are
//! Synthia's ([`crate::synthia::class`]). Objects are sized in metres and scaled by their
//! distance, so pixel shares follow street scenes: sky, building, road and vegetation large;
//! sidewalk, car, fence and lane marking medium; pole, sign, light and pedestrian small; bicycle
//! tiny and rare. Colours of different classes overlap (grey cars, poles, facades, road and
//! sidewalk; green fences and trees; red/blue/white cars and signs; white clouds and facades),
//! and every surface gets per-object colour jitter, low-frequency shading and per-pixel noise,
//! so small classes must be recognised by shape and context.
//!
//! Every image is rendered from its own RNG, `ChaCha8Rng::seed_from_u64(mix_seed(seed,
//! folder, frame))`, in parallel with rayon: the output is identical for a given seed and
//! configuration whatever the thread count.

use crate::error::DataError;
use crate::loader::mix_seed;
use crate::png_io::{write_label_rgb16, write_rgb8, PngSpeed};
use crate::synthia::{class, CAMERAS, SIDES};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Settings of [`generate_synthia`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Seed of the whole dataset.
    pub seed: u64,
    /// Image width in pixels (at least 32).
    pub width: usize,
    /// Image height in pixels (at least 16).
    pub height: usize,
    /// Sequence folder name.
    pub sequence: String,
    /// Camera folders to write (subset of `Omni_{B,F,L,R}`).
    pub cameras: Vec<String>,
    /// Stereo sides to write (subset of `Stereo_{Left,Right}`).
    pub sides: Vec<String>,
    /// Frames per (side, camera) folder.
    pub frames_per_folder: usize,
    /// PNG compression.
    #[serde(skip)]
    pub png: PngSpeed,
}

impl Default for SyntheticConfig {
    /// 8 folders × 40 frames = 320 images of 384×192 in `SYNTHIA-SEQS-05-SUMMER`.
    fn default() -> Self {
        SyntheticConfig {
            seed: 0,
            width: 384,
            height: 192,
            sequence: "SYNTHIA-SEQS-05-SUMMER".into(),
            cameras: CAMERAS.iter().map(|s| s.to_string()).collect(),
            sides: SIDES.iter().map(|s| s.to_string()).collect(),
            frames_per_folder: 40,
            png: PngSpeed::Fast,
        }
    }
}

impl SyntheticConfig {
    /// Checks sizes and folder names.
    pub fn validate(&self) -> Result<(), DataError> {
        if self.width < 32 || self.height < 16 || self.width > 8192 || self.height > 8192 {
            return Err(DataError::config(
                "synthetic size",
                format!("{}x{}", self.width, self.height),
                "width must be 32..=8192 and height 16..=8192",
            ));
        }
        if self.frames_per_folder == 0 {
            return Err(DataError::config("frames_per_folder", 0, "must be > 0"));
        }
        if self.sequence.is_empty()
            || self.sequence.contains(['/', '\\'])
            || self.sequence.starts_with('.')
        {
            return Err(DataError::config(
                "sequence",
                &self.sequence,
                "must be a plain folder name",
            ));
        }
        for c in &self.cameras {
            if !CAMERAS.contains(&c.as_str()) {
                return Err(DataError::config(
                    "cameras",
                    c,
                    "expected one of Omni_B, Omni_F, Omni_L, Omni_R",
                ));
            }
        }
        for s in &self.sides {
            if !SIDES.contains(&s.as_str()) {
                return Err(DataError::config(
                    "sides",
                    s,
                    "expected Stereo_Left or Stereo_Right",
                ));
            }
        }
        if self.cameras.is_empty() || self.sides.is_empty() {
            return Err(DataError::config(
                "cameras/sides",
                "[]",
                "need at least one camera and one side",
            ));
        }
        Ok(())
    }
}

/// What [`generate_synthia`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GenerateReport {
    /// The sequence folder (`<root>/<sequence>`).
    pub sequence_dir: PathBuf,
    /// Images written.
    pub images: usize,
    /// Pixels per Synthia class id (16 entries) over all images.
    pub class_pixels: Vec<u64>,
    /// Images in which each class appears.
    pub class_images: Vec<u64>,
}

impl GenerateReport {
    /// Share of all pixels per class id.
    pub fn class_fractions(&self) -> Vec<f64> {
        let total: u64 = self.class_pixels.iter().sum();
        self.class_pixels
            .iter()
            .map(|&c| c as f64 / total.max(1) as f64)
            .collect()
    }
}

/// Writes a synthetic dataset in the SYNTHIA-SEQS layout under `root` (see the module docs).
///
/// Existing files with the same names are overwritten. Returns per-class pixel statistics.
pub fn generate_synthia(root: &Path, cfg: &SyntheticConfig) -> Result<GenerateReport, DataError> {
    cfg.validate()?;
    let seq_dir = root.join(&cfg.sequence);
    let mut jobs = Vec::new();
    for (fi, (side, cam)) in SIDES
        .iter()
        .flat_map(|s| CAMERAS.iter().map(move |c| (*s, *c)))
        .enumerate()
    {
        if !cfg.sides.iter().any(|s| s == side) || !cfg.cameras.iter().any(|c| c == cam) {
            continue;
        }
        let rgb = seq_dir.join("RGB").join(side).join(cam);
        let lbl = seq_dir.join("GT").join("LABELS").join(side).join(cam);
        for d in [&rgb, &lbl] {
            std::fs::create_dir_all(d).map_err(|e| DataError::io(d, e))?;
        }
        for frame in 0..cfg.frames_per_folder {
            jobs.push((fi as u64, frame, rgb.clone(), lbl.clone()));
        }
    }
    let stats = jobs
        .par_iter()
        .map(|(fi, frame, rgb_dir, lbl_dir)| {
            let scene = render_scene(
                cfg.width,
                cfg.height,
                mix_seed(cfg.seed, *fi, *frame as u64),
            );
            let name = format!("{frame:06}.png");
            write_rgb8(
                &rgb_dir.join(&name),
                cfg.width,
                cfg.height,
                &scene.rgb,
                cfg.png,
            )?;
            write_label_rgb16(
                &lbl_dir.join(&name),
                cfg.width,
                cfg.height,
                &scene.label,
                Some(&scene.instance),
                cfg.png,
            )?;
            let mut px = vec![0u64; 16];
            for &l in &scene.label {
                px[l as usize] += 1;
            }
            Ok(px)
        })
        .collect::<Result<Vec<_>, DataError>>()?;
    let mut class_pixels = vec![0u64; 16];
    let mut class_images = vec![0u64; 16];
    for px in &stats {
        for c in 0..16 {
            class_pixels[c] += px[c];
            class_images[c] += (px[c] > 0) as u64;
        }
    }
    Ok(GenerateReport {
        sequence_dir: seq_dir,
        images: stats.len(),
        class_pixels,
        class_images,
    })
}

/// One rendered scene.
#[derive(Debug, Clone)]
pub struct Scene {
    /// H×W×3 RGB.
    pub rgb: Vec<u8>,
    /// H×W Synthia class ids.
    pub label: Vec<u16>,
    /// H×W instance ids (0 for stuff).
    pub instance: Vec<u16>,
}

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

fn hash3(x: u32, y: u32, salt: u32) -> u32 {
    let mut h =
        x.wrapping_mul(0x9E37_79B1) ^ y.wrapping_mul(0x85EB_CA77) ^ salt.wrapping_mul(0xC2B2_AE3D);
    h ^= h >> 15;
    h = h.wrapping_mul(0x2C1B_3C6D);
    h ^= h >> 12;
    h = h.wrapping_mul(0x297A_2D39);
    h ^ (h >> 15)
}

/// Uniform in [-1, 1).
fn hnoise(x: u32, y: u32, salt: u32) -> f32 {
    (hash3(x, y, salt) >> 8) as f32 / (1u32 << 23) as f32 - 1.0
}

/// Smooth value noise in [-1, 1] with cells of `cell` pixels.
fn value_noise(x: f32, y: f32, cell: f32, salt: u32) -> f32 {
    let (gx, gy) = (x / cell, y / cell);
    let (ix, iy) = (gx.floor(), gy.floor());
    let (fx, fy) = (gx - ix, gy - iy);
    let (sx, sy) = (fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy));
    let (ix, iy) = (ix as i32 as u32, iy as i32 as u32);
    let a = hnoise(ix, iy, salt);
    let b = hnoise(ix.wrapping_add(1), iy, salt);
    let c = hnoise(ix, iy.wrapping_add(1), salt);
    let d = hnoise(ix.wrapping_add(1), iy.wrapping_add(1), salt);
    let top = a + (b - a) * sx;
    let bot = c + (d - c) * sx;
    top + (bot - top) * sy
}

/// How a surface is coloured.
#[derive(Clone, Copy, Debug)]
struct Mat {
    col: [f32; 3],
    /// Per-pixel noise amplitude (0–255 scale).
    noise: f32,
    /// Low-frequency shading amplitude (fraction).
    blotch: f32,
}

impl Mat {
    fn new(col: [f32; 3], noise: f32, blotch: f32) -> Self {
        Mat { col, noise, blotch }
    }
}

struct Canvas {
    w: usize,
    h: usize,
    rgb: Vec<f32>,
    label: Vec<u16>,
    instance: Vec<u16>,
    salt: u32,
    next_instance: u16,
}

impl Canvas {
    fn new(w: usize, h: usize, salt: u32) -> Self {
        Canvas {
            w,
            h,
            rgb: vec![0.0; w * h * 3],
            label: vec![class::VOID as u16; w * h],
            instance: vec![0; w * h],
            salt,
            next_instance: 1,
        }
    }

    fn new_instance(&mut self) -> u16 {
        let i = self.next_instance;
        self.next_instance = self.next_instance.wrapping_add(1).max(1);
        i
    }

    #[inline]
    fn put(&mut self, x: usize, y: usize, cls: u8, inst: u16, col: [f32; 3]) {
        let i = y * self.w + x;
        self.label[i] = cls as u16;
        self.instance[i] = inst;
        self.rgb[i * 3..i * 3 + 3].copy_from_slice(&col);
    }

    #[inline]
    fn shade(&self, x: usize, y: usize, m: &Mat, k: u32) -> [f32; 3] {
        let n = m.noise * hnoise(x as u32, y as u32, self.salt ^ k);
        let b = if m.blotch > 0.0 {
            1.0 + m.blotch * value_noise(x as f32, y as f32, 9.0, self.salt ^ k ^ 0x55)
        } else {
            1.0
        };
        [m.col[0] * b + n, m.col[1] * b + n, m.col[2] * b + n]
    }

    /// Fills the pixels whose centres fall in the horizontal span `[x0, x1)` of row `y`.
    #[allow(clippy::too_many_arguments)]
    fn span(&mut self, y: isize, x0: f32, x1: f32, cls: u8, inst: u16, m: &Mat, k: u32) {
        if y < 0 || y as usize >= self.h {
            return;
        }
        let a = (x0 - 0.5).ceil().max(0.0) as isize;
        let b = ((x1 - 0.5).ceil() as isize).min(self.w as isize);
        for x in a.max(0)..b {
            let c = self.shade(x as usize, y as usize, m, k);
            self.put(x as usize, y as usize, cls, inst, c);
        }
    }

    /// Convex polygon fill (pixel centres inside), vertices in order.
    fn poly(&mut self, pts: &[(f32, f32)], cls: u8, inst: u16, m: &Mat, k: u32) {
        let ymin = pts.iter().map(|p| p.1).fold(f32::INFINITY, f32::min);
        let ymax = pts.iter().map(|p| p.1).fold(f32::NEG_INFINITY, f32::max);
        let y0 = (ymin - 0.5).ceil().max(0.0) as isize;
        let y1 = ((ymax - 0.5).ceil() as isize).min(self.h as isize);
        for y in y0..y1 {
            let yc = y as f32 + 0.5;
            let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
            for i in 0..pts.len() {
                let (a, b) = (pts[i], pts[(i + 1) % pts.len()]);
                if (a.1 <= yc && b.1 > yc) || (b.1 <= yc && a.1 > yc) {
                    let t = (yc - a.1) / (b.1 - a.1);
                    let x = a.0 + t * (b.0 - a.0);
                    lo = lo.min(x);
                    hi = hi.max(x);
                }
            }
            if lo < hi {
                self.span(y, lo, hi, cls, inst, m, k);
            }
        }
    }

    /// Axis-aligned rectangle `[x0, x1) × [y0, y1)`, at least one pixel wide and high.
    #[allow(clippy::too_many_arguments)]
    fn rect(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, cls: u8, inst: u16, m: &Mat, k: u32) {
        let (mut x0, mut x1, mut y0, mut y1) = (x0, x1, y0, y1);
        if x1 - x0 < 1.0 {
            let c = (x0 + x1) * 0.5;
            x0 = c - 0.5;
            x1 = c + 0.5;
        }
        if y1 - y0 < 1.0 {
            let c = (y0 + y1) * 0.5;
            y0 = c - 0.5;
            y1 = c + 0.5;
        }
        self.poly(&[(x0, y0), (x1, y0), (x1, y1), (x0, y1)], cls, inst, m, k);
    }

    /// Filled ellipse.
    #[allow(clippy::too_many_arguments)]
    fn ellipse(&mut self, cx: f32, cy: f32, rx: f32, ry: f32, cls: u8, inst: u16, m: &Mat, k: u32) {
        let (rx, ry) = (rx.max(0.5), ry.max(0.5));
        let y0 = (cy - ry - 0.5).ceil().max(0.0) as isize;
        let y1 = ((cy + ry - 0.5).ceil() as isize).min(self.h as isize);
        for y in y0..y1 {
            let dy = (y as f32 + 0.5 - cy) / ry;
            let r = 1.0 - dy * dy;
            if r <= 0.0 {
                continue;
            }
            let hw = rx * r.sqrt();
            self.span(y, cx - hw, cx + hw, cls, inst, m, k);
        }
    }

    /// Ring (annulus) of outer radius `r` and thickness `t`.
    #[allow(clippy::too_many_arguments)]
    fn ring(&mut self, cx: f32, cy: f32, r: f32, t: f32, cls: u8, inst: u16, m: &Mat, k: u32) {
        let r = r.max(0.75);
        let ri = (r - t.max(0.75)).max(0.0);
        let y0 = (cy - r - 0.5).ceil().max(0.0) as isize;
        let y1 = ((cy + r - 0.5).ceil() as isize).min(self.h as isize);
        let x0 = (cx - r - 0.5).ceil().max(0.0) as isize;
        let x1 = ((cx + r - 0.5).ceil() as isize).min(self.w as isize);
        for y in y0..y1 {
            for x in x0..x1 {
                let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                let d2 = dx * dx + dy * dy;
                if d2 <= r * r && d2 >= ri * ri {
                    let c = self.shade(x as usize, y as usize, m, k);
                    self.put(x as usize, y as usize, cls, inst, c);
                }
            }
        }
    }

    /// Thick line segment.
    #[allow(clippy::too_many_arguments)]
    fn line(&mut self, a: (f32, f32), b: (f32, f32), t: f32, cls: u8, inst: u16, m: &Mat, k: u32) {
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len = (dx * dx + dy * dy).sqrt().max(1e-6);
        let t = t.max(1.0) * 0.5;
        let (nx, ny) = (-dy / len * t, dx / len * t);
        self.poly(
            &[
                (a.0 + nx, a.1 + ny),
                (b.0 + nx, b.1 + ny),
                (b.0 - nx, b.1 - ny),
                (a.0 - nx, a.1 - ny),
            ],
            cls,
            inst,
            m,
            k,
        );
    }
}

fn jitter<R: Rng>(rng: &mut R, c: [f32; 3], amount: f32) -> [f32; 3] {
    let g = rng.random_range(-amount..=amount);
    [
        c[0] + g + rng.random_range(-amount..=amount) * 0.4,
        c[1] + g + rng.random_range(-amount..=amount) * 0.4,
        c[2] + g + rng.random_range(-amount..=amount) * 0.4,
    ]
}

/// Picks one of `xs` and jitters it.
fn pj<R: Rng>(rng: &mut R, xs: &[[f32; 3]], amount: f32) -> [f32; 3] {
    let c = pick(rng, xs);
    jitter(rng, c, amount)
}

fn pick<R: Rng, T: Copy>(rng: &mut R, xs: &[T]) -> T {
    xs[rng.random_range(0..xs.len())]
}

/// Neutral greys shared by several classes (facades, poles, cars, road, sidewalk, clutter).
const GREYS: [[f32; 3]; 4] = [
    [95.0, 95.0, 100.0],
    [125.0, 124.0, 120.0],
    [150.0, 148.0, 142.0],
    [175.0, 172.0, 165.0],
];

/// Scene geometry: a ground plane seen from a camera at fixed height.
struct Geo {
    w: f32,
    h: f32,
    /// Horizon row.
    yh: f32,
    /// Vanishing point column.
    xv: f32,
    /// Pixels per metre on the bottom row.
    k0: f32,
}

impl Geo {
    /// Depth scale of a ground row (1 on the bottom row, 0 at the horizon).
    fn s(&self, y: f32) -> f32 {
        ((y - self.yh) / (self.h - self.yh)).max(0.0)
    }
    /// Pixels per metre at depth scale `s`.
    fn k(&self, s: f32) -> f32 {
        self.k0 * s
    }
    /// Ground row at depth scale `s`.
    fn row(&self, s: f32) -> f32 {
        self.yh + s * (self.h - self.yh)
    }
    /// Column of lateral offset `x_m` metres (from the camera axis) at depth scale `s`.
    fn col(&self, x_m: f32, s: f32) -> f32 {
        self.xv + x_m * self.k(s)
    }
}

/// Renders one scene (exposed for tests and custom generators).
pub fn render_scene(w: usize, h: usize, seed: u64) -> Scene {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut cv = Canvas::new(w, h, rng.random());
    let (wf, hf) = (w as f32, h as f32);
    let g = Geo {
        w: wf,
        h: hf,
        yh: hf * rng.random_range(0.36..0.48),
        xv: wf * rng.random_range(0.38..0.62),
        // The bottom row spans about 12–17 m.
        k0: wf / rng.random_range(12.0..17.0),
    };
    let _ = g.w;
    let light: f32 = rng.random_range(0.75..1.2);
    let lit = |c: [f32; 3]| [c[0] * light, c[1] * light, c[2] * light];

    // --- Sky: blue gradient or overcast grey, with clouds.
    let overcast = rng.random_bool(0.3);
    let sky_top = if overcast {
        jitter(&mut rng, [170.0, 172.0, 178.0], 15.0)
    } else {
        jitter(&mut rng, [70.0, 120.0, 200.0], 20.0)
    };
    let sky_bot = if overcast {
        jitter(&mut rng, [200.0, 200.0, 204.0], 12.0)
    } else {
        jitter(&mut rng, [170.0, 195.0, 225.0], 15.0)
    };
    let sky_y1 = (g.yh + 2.0).min(hf);
    for y in 0..(sky_y1.ceil() as usize).min(h) {
        let t = y as f32 / sky_y1.max(1.0);
        let c = [0, 1, 2].map(|i| (sky_top[i] * (1.0 - t) + sky_bot[i] * t) * light);
        cv.span(
            y as isize,
            0.0,
            wf,
            class::SKY,
            0,
            &Mat::new(c, 4.0, 0.0),
            1,
        );
    }
    for _ in 0..rng.random_range(0..5) {
        let (cx, cy) = (rng.random_range(0.0..wf), rng.random_range(0.0..g.yh * 0.7));
        let r = rng.random_range(0.03..0.12) * wf;
        let c = lit(jitter(&mut rng, [232.0, 232.0, 235.0], 10.0));
        for j in 0..4 {
            let (ox, oy) = (rng.random_range(-r..r), rng.random_range(-r * 0.3..r * 0.3));
            cv.ellipse(
                cx + ox,
                cy + oy,
                r * 0.7,
                r * 0.3,
                class::SKY,
                0,
                &Mat::new(c, 5.0, 0.1),
                2 + j,
            );
        }
    }

    // --- Skyline: buildings and tree crowns behind the street, standing on the horizon.
    let mut x = -rng.random_range(0.0..0.1) * wf;
    while x < wf {
        let bw = rng.random_range(0.05..0.2) * wf;
        if rng.random_bool(0.25) {
            let c = lit(jitter(&mut rng, [60.0, 95.0, 50.0], 15.0));
            let r = bw * 0.6;
            let inst = cv.new_instance();
            cv.ellipse(
                x + bw * 0.5,
                g.yh - r * 0.6,
                r,
                r * 0.9,
                class::VEGETATION,
                inst,
                &Mat::new(c, 14.0, 0.25),
                10,
            );
        } else {
            let bh = rng.random_range(0.08..0.35) * g.yh;
            let base = pick(
                &mut rng,
                &[
                    [150.0, 140.0, 125.0],
                    [120.0, 110.0, 105.0],
                    GREYS[2],
                    GREYS[3],
                    [175.0, 160.0, 140.0],
                ],
            );
            let c = lit(jitter(&mut rng, base, 14.0));
            let inst = cv.new_instance();
            cv.rect(
                x,
                g.yh - bh,
                x + bw,
                g.yh + 1.0,
                class::BUILDING,
                inst,
                &Mat::new(c, 8.0, 0.1),
                11,
            );
        }
        x += bw;
    }

    // --- Street layout (metres from the camera axis; negative = left).
    let road_l = -rng.random_range(3.5..7.5);
    let road_r = rng.random_range(3.5..7.5);
    let walk_w = [rng.random_range(1.5..3.5), rng.random_range(1.5..3.5)];
    let outer = [road_l - walk_w[0], road_r + walk_w[1]];
    // What is beyond each sidewalk: a facade (true) or grass and trees (false).
    let facade_side = [rng.random_bool(0.7), rng.random_bool(0.7)];

    // --- Near facades: perspective planes along the street edge.
    for side in 0..2 {
        if !facade_side[side] {
            continue;
        }
        let xm = outer[side];
        let height_m = rng.random_range(6.0..25.0);
        let base = pick(
            &mut rng,
            &[
                [160.0, 150.0, 135.0],
                [140.0, 95.0, 80.0],
                GREYS[1],
                GREYS[2],
                GREYS[3],
                [190.0, 180.0, 160.0],
                [110.0, 105.0, 100.0],
            ],
        );
        let c = lit(jitter(&mut rng, base, 12.0));
        let win = lit(pj(
            &mut rng,
            &[
                [60.0, 70.0, 85.0],
                [40.0, 45.0, 50.0],
                [120.0, 140.0, 160.0],
            ],
            10.0,
        ));
        let floor_m = rng.random_range(2.8..3.6);
        let bay_m = rng.random_range(2.0..4.0);
        let inst = cv.new_instance();
        let wall = Mat::new(c, 9.0, 0.12);
        let glass = Mat::new(win, 6.0, 0.05);
        // Column by column: the facade at lateral xm spans depth scales s where col(xm, s) = x.
        for xi in 0..w {
            let xc = xi as f32 + 0.5;
            let s = (xc - g.xv) / (xm * g.k0);
            if !(s > 0.0 && s <= 1.6) {
                continue;
            }
            let ground = g.row(s);
            let top = ground - height_m * g.k(s);
            let z = 1.0 / s; // relative depth
            let along = z * 12.0; // metres along the street (arbitrary origin)
            let y0 = top.max(0.0).floor() as usize;
            let y1 = (ground.min(hf)).ceil() as usize;
            for yi in y0..y1.min(h) {
                let yc = yi as f32 + 0.5;
                if yc < top || yc >= ground {
                    continue;
                }
                let up_m = (ground - yc) / g.k(s);
                let in_win = (up_m % floor_m) > floor_m * 0.35
                    && (up_m % floor_m) < floor_m * 0.8
                    && (along % bay_m) > bay_m * 0.3
                    && (along % bay_m) < bay_m * 0.75
                    && up_m > 1.5;
                let m = if in_win { &glass } else { &wall };
                let col = cv.shade(xi, yi, m, 20 + side as u32);
                cv.put(xi, yi, class::BUILDING, inst, col);
            }
        }
    }

    // --- Ground: road, sidewalks, grass beyond.
    let asphalt = lit(pj(
        &mut rng,
        &[
            [80.0, 80.0, 84.0],
            [100.0, 98.0, 98.0],
            [115.0, 112.0, 110.0],
        ],
        10.0,
    ));
    let walk_c = lit(pj(
        &mut rng,
        &[
            GREYS[1],
            GREYS[2],
            [160.0, 145.0, 125.0],
            [140.0, 110.0, 100.0],
        ],
        12.0,
    ));
    let grass_c = lit(jitter(&mut rng, [85.0, 120.0, 55.0], 15.0));
    let lane_c = lit(pick(
        &mut rng,
        &[[225.0, 225.0, 220.0], [220.0, 190.0, 60.0]],
    ));
    let dash = rng.random_range(2.0..4.0);
    let period = dash + rng.random_range(3.0..8.0);
    let lane_w = rng.random_range(0.12..0.2);
    let edge_lines = rng.random_bool(0.5);
    let n_lanes_div = if road_r - road_l > 9.0 {
        pick(&mut rng, &[1usize, 2, 3])
    } else {
        1
    };
    let shadow_band = rng.random_bool(0.4).then(|| {
        let a = rng.random_range(0.15..0.8);
        (a, a + rng.random_range(0.05..0.3))
    });
    let road_m = Mat::new(asphalt, 10.0, 0.15);
    let walk_m = Mat::new(walk_c, 10.0, 0.1);
    let grass_m = Mat::new(grass_c, 16.0, 0.3);
    let lane_m = Mat::new(lane_c, 10.0, 0.05);
    let y_start = (g.yh + 0.5).floor().max(0.0) as usize;
    for yi in y_start..h {
        let yc = yi as f32 + 0.5;
        let s = g.s(yc);
        if s <= 0.0 {
            continue;
        }
        let z = 1.0 / s;
        let along = z * 12.0;
        let shade = match shadow_band {
            Some((a, b)) if s > a && s < b => 0.6,
            _ => 1.0,
        };
        for xi in 0..w {
            let xm = (xi as f32 + 0.5 - g.xv) / g.k(s);
            let (cls, m, kk) = if xm >= road_l && xm < road_r {
                // Lane markings: dashed dividers and optional solid edge lines.
                let mut lane = false;
                for d in 1..=n_lanes_div {
                    let xd = road_l + (road_r - road_l) * d as f32 / (n_lanes_div + 1) as f32;
                    if (xm - xd).abs() < lane_w * 0.5 && (along % period) < dash {
                        lane = true;
                    }
                }
                if edge_lines
                    && ((xm - road_l - 0.4).abs() < lane_w * 0.5
                        || (xm - road_r + 0.4).abs() < lane_w * 0.5)
                {
                    lane = true;
                }
                if lane {
                    (class::LANEMARKING, &lane_m, 31)
                } else {
                    (class::ROAD, &road_m, 30)
                }
            } else if xm >= outer[0] && xm < outer[1] {
                (class::SIDEWALK, &walk_m, 32)
            } else {
                let side = (xm >= outer[1]) as usize;
                if facade_side[side] {
                    continue; // the facade's foot is already drawn there
                }
                (class::VEGETATION, &grass_m, 33)
            };
            let mut c = cv.shade(xi, yi, m, kk);
            if cls == class::SIDEWALK {
                // Paving joints.
                let u = (xm * 2.0).rem_euclid(1.0);
                let v = (along * 2.0).rem_euclid(1.0);
                if u < 0.06 || v < 0.06 {
                    c = c.map(|v| v * 0.82);
                }
            }
            cv.put(xi, yi, cls, 0, c.map(|v| v * shade));
        }
    }

    // --- Objects, sorted far to near. Each is (depth scale, kind, lateral metres).
    #[derive(Clone, Copy)]
    enum Kind {
        Tree,
        Pole,
        Car,
        Pedestrian,
        Bicycle,
        Clutter,
        Fence,
    }
    let mut objs: Vec<(f32, Kind, f32)> = Vec::new();
    let depth = |rng: &mut ChaCha8Rng| -> f32 {
        // Mostly far away, as in street scenes.
        let u: f32 = rng.random_range(0.0f32..1.0);
        0.06 + 0.94 * u * u
    };
    for _ in 0..rng.random_range(2..8) {
        let side = rng.random_range(0..2);
        let xm = outer[side]
            + if side == 0 {
                rng.random_range(-3.0..0.5)
            } else {
                rng.random_range(-0.5..3.0)
            };
        objs.push((depth(&mut rng), Kind::Tree, xm));
    }
    for _ in 0..rng.random_range(1..6) {
        let side = rng.random_range(0..2);
        let xm = if side == 0 {
            road_l - 0.4
        } else {
            road_r + 0.4
        };
        objs.push((depth(&mut rng), Kind::Pole, xm));
    }
    for _ in 0..rng.random_range(0..7) {
        let xm = rng.random_range(road_l + 1.0..road_r - 1.0);
        let u: f32 = rng.random_range(0.0f32..1.0);
        objs.push((0.08 + 0.8 * u.powf(1.5), Kind::Car, xm));
    }
    for _ in 0..rng.random_range(0..4) {
        let side = rng.random_range(0..2);
        let xm = if side == 0 {
            rng.random_range(outer[0] + 0.3..road_l)
        } else {
            rng.random_range(road_r..outer[1] - 0.3)
        };
        objs.push((depth(&mut rng), Kind::Pedestrian, xm));
    }
    if rng.random_bool(0.3) {
        let side = rng.random_range(0..2);
        let xm = if side == 0 {
            road_l + rng.random_range(0.3..1.0)
        } else {
            road_r - rng.random_range(0.3..1.0)
        };
        objs.push((depth(&mut rng), Kind::Bicycle, xm));
    }
    for _ in 0..rng.random_range(0..4) {
        let side = rng.random_range(0..2);
        let xm = if side == 0 {
            rng.random_range(outer[0]..road_l)
        } else {
            rng.random_range(road_r..outer[1])
        };
        objs.push((depth(&mut rng), Kind::Clutter, xm));
    }
    for side in 0..2 {
        if rng.random_bool(0.45) {
            objs.push((0.0, Kind::Fence, side as f32));
        }
    }
    objs.sort_by(|a, b| a.0.total_cmp(&b.0));

    for (s, kind, xm) in objs {
        let k = g.k(s);
        let ground = g.row(s);
        let x = g.col(xm, s);
        match kind {
            Kind::Fence => {
                // Along the outer sidewalk edge, over a range of depths: posts and rails.
                let side = xm as usize;
                let xe = outer[side];
                let c = lit(pj(
                    &mut rng,
                    &[[70.0, 95.0, 60.0], [120.0, 100.0, 80.0], GREYS[0], GREYS[2]],
                    10.0,
                ));
                let m = Mat::new(c, 8.0, 0.05);
                let (s0, s1) = (rng.random_range(0.1..0.5), rng.random_range(0.5..1.4));
                let hgt = rng.random_range(0.9..1.6);
                let inst = cv.new_instance();
                let post_every = rng.random_range(1.5..2.5);
                for xi in 0..w {
                    let xc = xi as f32 + 0.5;
                    let s = (xc - g.xv) / (xe * g.k0);
                    if !(s > s0 && s < s1) {
                        continue;
                    }
                    let gy = g.row(s);
                    let top = gy - hgt * g.k(s);
                    let along = 12.0 / s;
                    let post = (along % post_every) < 0.25;
                    for yi in (top.max(0.0) as usize)..(gy.min(hf) as usize) {
                        let up = (gy - (yi as f32 + 0.5)) / g.k(s);
                        let rail = (up > hgt - 0.12) || (up > hgt * 0.45 && up < hgt * 0.55);
                        let mesh = ((up * 6.0) as i32 + (along * 6.0) as i32) % 2 == 0;
                        if post || rail || mesh {
                            let col = cv.shade(xi, yi, &m, 40);
                            cv.put(xi, yi, class::FENCE, inst, col);
                        }
                    }
                }
            }
            Kind::Tree => {
                let trunk_h = rng.random_range(1.5..3.5) * k;
                let crown = rng.random_range(1.5..3.5) * k;
                let c = lit(pj(
                    &mut rng,
                    &[
                        [55.0, 100.0, 45.0],
                        [80.0, 120.0, 50.0],
                        [40.0, 70.0, 40.0],
                        [110.0, 130.0, 60.0],
                    ],
                    15.0,
                ));
                let inst = cv.new_instance();
                let trunk = Mat::new(lit([90.0, 70.0, 55.0]), 10.0, 0.1);
                cv.rect(
                    x - 0.15 * k,
                    ground - trunk_h - crown * 0.5,
                    x + 0.15 * k,
                    ground,
                    class::VEGETATION,
                    inst,
                    &trunk,
                    41,
                );
                let m = Mat::new(c, 20.0, 0.35);
                for j in 0..5 {
                    let (ox, oy) = (
                        rng.random_range(-0.6..0.6) * crown,
                        rng.random_range(-0.5..0.3) * crown,
                    );
                    cv.ellipse(
                        x + ox,
                        ground - trunk_h - crown + oy,
                        crown * 0.7,
                        crown * 0.6,
                        class::VEGETATION,
                        inst,
                        &m,
                        42 + j,
                    );
                }
            }
            Kind::Pole => {
                let height = rng.random_range(3.5..7.0);
                let c = lit(pj(&mut rng, &GREYS, 10.0));
                let m = Mat::new(c, 8.0, 0.05);
                let inst = cv.new_instance();
                let pw = 0.15 * k;
                let top = ground - height * k;
                cv.rect(
                    x - pw * 0.5,
                    top,
                    x + pw * 0.5,
                    ground,
                    class::POLE,
                    inst,
                    &m,
                    50,
                );
                let what = rng.random_range(0..10);
                if what < 4 {
                    // Traffic sign on top: disc, triangle or rectangle.
                    let sc = lit(pick(
                        &mut rng,
                        &[
                            [200.0, 40.0, 40.0],
                            [40.0, 70.0, 170.0],
                            [225.0, 225.0, 225.0],
                            [230.0, 190.0, 40.0],
                        ],
                    ));
                    let sm = Mat::new(sc, 8.0, 0.05);
                    let r = rng.random_range(0.3..0.45) * k;
                    let si = cv.new_instance();
                    match rng.random_range(0..3) {
                        0 => cv.ellipse(x, top - r * 0.6, r, r, class::SIGN, si, &sm, 51),
                        1 => cv.poly(
                            &[(x - r, top), (x + r, top), (x, top - 1.7 * r)],
                            class::SIGN,
                            si,
                            &sm,
                            51,
                        ),
                        _ => cv.rect(
                            x - r,
                            top - 1.3 * r,
                            x + r,
                            top + 0.2 * r,
                            class::SIGN,
                            si,
                            &sm,
                            51,
                        ),
                    }
                } else if what < 6 {
                    // Traffic light: dark housing with three lamps, one lit.
                    let hw = rng.random_range(0.15..0.22) * k;
                    let hh = hw * 3.2;
                    let hc = lit(pj(
                        &mut rng,
                        &[[35.0, 35.0, 38.0], [60.0, 60.0, 55.0], [200.0, 170.0, 40.0]],
                        8.0,
                    ));
                    let ti = cv.new_instance();
                    cv.rect(
                        x - hw,
                        top - hh,
                        x + hw,
                        top + 0.1 * hh,
                        class::TRAFFIC_LIGHT,
                        ti,
                        &Mat::new(hc, 6.0, 0.0),
                        52,
                    );
                    let on = rng.random_range(0..3);
                    for j in 0..3 {
                        let lc = if j == on {
                            [
                                [230.0, 50.0, 40.0],
                                [240.0, 190.0, 40.0],
                                [60.0, 220.0, 90.0],
                            ][j]
                        } else {
                            [25.0, 25.0, 25.0]
                        };
                        let cy = top - hh + hh * (j as f32 + 0.5) / 3.0;
                        cv.ellipse(
                            x,
                            cy,
                            hw * 0.6,
                            hw * 0.6,
                            class::TRAFFIC_LIGHT,
                            ti,
                            &Mat::new(lc, 6.0, 0.0),
                            53,
                        );
                    }
                } else if what < 7 {
                    // Street lamp arm (still pole).
                    let dir = if xm < 0.0 { 1.0 } else { -1.0 };
                    cv.line(
                        (x, top),
                        (x + dir * 1.5 * k, top + 0.2 * k),
                        0.12 * k,
                        class::POLE,
                        inst,
                        &m,
                        54,
                    );
                }
            }
            Kind::Car => {
                let cw = rng.random_range(1.7..2.0) * k;
                let ch = rng.random_range(1.3..1.7) * k;
                let c = lit(pj(
                    &mut rng,
                    &[
                        [180.0, 30.0, 30.0],
                        [30.0, 60.0, 150.0],
                        [225.0, 225.0, 225.0],
                        [30.0, 30.0, 32.0],
                        GREYS[1],
                        GREYS[3],
                        [90.0, 110.0, 70.0],
                    ],
                    12.0,
                ));
                let inst = cv.new_instance();
                let body = Mat::new(c, 7.0, 0.1);
                let glass = Mat::new(lit([45.0, 55.0, 65.0]), 6.0, 0.05);
                let tyre = Mat::new([20.0, 20.0, 20.0], 4.0, 0.0);
                cv.rect(
                    x - cw * 0.5,
                    ground - ch * 0.55,
                    x + cw * 0.5,
                    ground - 0.15 * k,
                    class::CAR,
                    inst,
                    &body,
                    60,
                );
                cv.poly(
                    &[
                        (x - cw * 0.4, ground - ch * 0.55),
                        (x - cw * 0.3, ground - ch),
                        (x + cw * 0.3, ground - ch),
                        (x + cw * 0.4, ground - ch * 0.55),
                    ],
                    class::CAR,
                    inst,
                    &body,
                    61,
                );
                cv.rect(
                    x - cw * 0.27,
                    ground - ch * 0.93,
                    x + cw * 0.27,
                    ground - ch * 0.6,
                    class::CAR,
                    inst,
                    &glass,
                    62,
                );
                cv.rect(
                    x - cw * 0.45,
                    ground - 0.3 * k,
                    x - cw * 0.28,
                    ground,
                    class::CAR,
                    inst,
                    &tyre,
                    63,
                );
                cv.rect(
                    x + cw * 0.28,
                    ground - 0.3 * k,
                    x + cw * 0.45,
                    ground,
                    class::CAR,
                    inst,
                    &tyre,
                    63,
                );
                // Lights.
                let lc = Mat::new([235.0, 220.0, 180.0], 5.0, 0.0);
                cv.rect(
                    x - cw * 0.45,
                    ground - ch * 0.45,
                    x - cw * 0.33,
                    ground - ch * 0.37,
                    class::CAR,
                    inst,
                    &lc,
                    64,
                );
                cv.rect(
                    x + cw * 0.33,
                    ground - ch * 0.45,
                    x + cw * 0.45,
                    ground - ch * 0.37,
                    class::CAR,
                    inst,
                    &lc,
                    64,
                );
            }
            Kind::Pedestrian => {
                let hgt = rng.random_range(1.55..1.9) * k;
                let top_c = lit(pj(
                    &mut rng,
                    &[
                        [180.0, 40.0, 40.0],
                        [40.0, 60.0, 140.0],
                        [220.0, 220.0, 215.0],
                        [40.0, 40.0, 40.0],
                        [90.0, 120.0, 60.0],
                        GREYS[2],
                    ],
                    15.0,
                ));
                let leg_c = lit(pj(
                    &mut rng,
                    &[[40.0, 45.0, 70.0], [30.0, 30.0, 30.0], [110.0, 100.0, 85.0]],
                    10.0,
                ));
                let skin = lit(pj(
                    &mut rng,
                    &[
                        [225.0, 185.0, 160.0],
                        [160.0, 115.0, 85.0],
                        [100.0, 70.0, 50.0],
                    ],
                    8.0,
                ));
                let inst = cv.new_instance();
                let lw = 0.12 * k;
                let stride = rng.random_range(0.0..0.25) * k;
                let hip = ground - hgt * 0.48;
                cv.line(
                    (x - 0.08 * k, hip),
                    (x - 0.08 * k - stride, ground),
                    lw,
                    class::PEDESTRIAN,
                    inst,
                    &Mat::new(leg_c, 8.0, 0.05),
                    70,
                );
                cv.line(
                    (x + 0.08 * k, hip),
                    (x + 0.08 * k + stride, ground),
                    lw,
                    class::PEDESTRIAN,
                    inst,
                    &Mat::new(leg_c, 8.0, 0.05),
                    70,
                );
                cv.rect(
                    x - 0.22 * k,
                    ground - hgt * 0.82,
                    x + 0.22 * k,
                    hip + 0.05 * k,
                    class::PEDESTRIAN,
                    inst,
                    &Mat::new(top_c, 10.0, 0.1),
                    71,
                );
                cv.ellipse(
                    x,
                    ground - hgt * 0.91,
                    0.11 * k,
                    0.13 * k,
                    class::PEDESTRIAN,
                    inst,
                    &Mat::new(skin, 6.0, 0.0),
                    72,
                );
            }
            Kind::Bicycle => {
                let c = lit(pj(
                    &mut rng,
                    &[
                        [30.0, 30.0, 30.0],
                        [170.0, 30.0, 30.0],
                        [40.0, 80.0, 160.0],
                        GREYS[2],
                    ],
                    10.0,
                ));
                let m = Mat::new(c, 8.0, 0.0);
                let inst = cv.new_instance();
                let r = 0.34 * k;
                let half = 0.55 * k;
                let t = 0.05 * k;
                let (ax, bx, cy) = (x - half, x + half, ground - r);
                cv.ring(ax, cy, r, t, class::BICYCLE, inst, &m, 80);
                cv.ring(bx, cy, r, t, class::BICYCLE, inst, &m, 80);
                let seat = (x - 0.15 * k, ground - 0.95 * k);
                let bar = (x + 0.4 * k, ground - 1.0 * k);
                cv.line((ax, cy), (x, cy), t, class::BICYCLE, inst, &m, 81);
                cv.line((x, cy), seat, t, class::BICYCLE, inst, &m, 81);
                cv.line(seat, bar, t, class::BICYCLE, inst, &m, 81);
                cv.line(bar, (bx, cy), t, class::BICYCLE, inst, &m, 81);
                cv.line((ax, cy), seat, t, class::BICYCLE, inst, &m, 81);
            }
            Kind::Clutter => {
                // Unlabelled street furniture (bins, boxes, benches): void.
                let bw = rng.random_range(0.4..1.5) * k;
                let bh = rng.random_range(0.5..1.2) * k;
                let c = lit(pj(
                    &mut rng,
                    &[
                        GREYS[0],
                        GREYS[2],
                        [60.0, 90.0, 60.0],
                        [120.0, 80.0, 50.0],
                        [50.0, 60.0, 110.0],
                    ],
                    12.0,
                ));
                let inst = cv.new_instance();
                cv.rect(
                    x - bw * 0.5,
                    ground - bh,
                    x + bw * 0.5,
                    ground,
                    class::VOID,
                    inst,
                    &Mat::new(c, 9.0, 0.1),
                    90,
                );
            }
        }
    }

    // --- Camera noise and quantisation.
    let rgb = cv
        .rgb
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let n = 3.0 * hnoise(i as u32, 7, cv.salt ^ 0xABCD);
            (v + n).round().clamp(0.0, 255.0) as u8
        })
        .collect();
    Scene {
        rgb,
        label: cv.label,
        instance: cv.instance,
    }
}
