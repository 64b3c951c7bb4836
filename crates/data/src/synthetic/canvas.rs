//! The raster the scene parts paint on: hashed value noise, surface materials, the [`Canvas`]
//! (RGB, class and instance buffers with convex fills) and the colour-picking helpers.

use crate::synthia::class;
use rand::Rng;

/// A 32-bit integer hash of a pixel position and a salt.
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
pub(super) fn hnoise(x: u32, y: u32, salt: u32) -> f32 {
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
pub(super) struct Mat {
    /// Base colour (0–255 scale).
    col: [f32; 3],
    /// Per-pixel noise amplitude (0–255 scale).
    noise: f32,
    /// Low-frequency shading amplitude (fraction).
    blotch: f32,
}

impl Mat {
    pub(super) fn new(col: [f32; 3], noise: f32, blotch: f32) -> Self {
        Mat { col, noise, blotch }
    }
}

/// The image being drawn: float RGB before camera noise, class ids and instance ids, H×W row
/// major. Later draws overwrite earlier ones (painter's algorithm).
pub(super) struct Canvas {
    pub(super) w: usize,
    pub(super) h: usize,
    /// H×W×3, 0–255 scale, not yet clamped.
    pub(super) rgb: Vec<f32>,
    /// H×W Synthia class ids, [`class::VOID`] where nothing was drawn.
    pub(super) label: Vec<u16>,
    /// H×W instance ids (0 for stuff).
    pub(super) instance: Vec<u16>,
    /// Per-scene salt of the shading and camera noise.
    pub(super) salt: u32,
    next_instance: u16,
}

impl Canvas {
    pub(super) fn new(w: usize, h: usize, salt: u32) -> Self {
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

    /// The next instance id (1, 2, …; wraps around skipping 0).
    pub(super) fn new_instance(&mut self) -> u16 {
        let i = self.next_instance;
        self.next_instance = self.next_instance.wrapping_add(1).max(1);
        i
    }

    /// Writes one pixel's class, instance and colour.
    #[inline]
    pub(super) fn put(&mut self, x: usize, y: usize, cls: u8, inst: u16, col: [f32; 3]) {
        let i = y * self.w + x;
        self.label[i] = cls as u16;
        self.instance[i] = inst;
        self.rgb[i * 3..i * 3 + 3].copy_from_slice(&col);
    }

    /// The colour of material `m` at pixel (x, y); `k` salts its noise.
    #[inline]
    pub(super) fn shade(&self, x: usize, y: usize, m: &Mat, k: u32) -> [f32; 3] {
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
    pub(super) fn span(&mut self, y: isize, x0: f32, x1: f32, cls: u8, inst: u16, m: &Mat, k: u32) {
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
    pub(super) fn poly(&mut self, pts: &[(f32, f32)], cls: u8, inst: u16, m: &Mat, k: u32) {
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
    pub(super) fn rect(
        &mut self,
        x0: f32,
        y0: f32,
        x1: f32,
        y1: f32,
        cls: u8,
        inst: u16,
        m: &Mat,
        k: u32,
    ) {
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
    pub(super) fn ellipse(
        &mut self,
        cx: f32,
        cy: f32,
        rx: f32,
        ry: f32,
        cls: u8,
        inst: u16,
        m: &Mat,
        k: u32,
    ) {
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
    pub(super) fn ring(
        &mut self,
        cx: f32,
        cy: f32,
        r: f32,
        t: f32,
        cls: u8,
        inst: u16,
        m: &Mat,
        k: u32,
    ) {
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
    pub(super) fn line(
        &mut self,
        a: (f32, f32),
        b: (f32, f32),
        t: f32,
        cls: u8,
        inst: u16,
        m: &Mat,
        k: u32,
    ) {
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

/// Shifts `c` by one random grey offset plus a smaller per-channel one (both within ±`amount`).
pub(super) fn jitter<R: Rng>(rng: &mut R, c: [f32; 3], amount: f32) -> [f32; 3] {
    let g = rng.random_range(-amount..=amount);
    [
        c[0] + g + rng.random_range(-amount..=amount) * 0.4,
        c[1] + g + rng.random_range(-amount..=amount) * 0.4,
        c[2] + g + rng.random_range(-amount..=amount) * 0.4,
    ]
}

/// Picks one of `xs` and jitters it.
pub(super) fn pj<R: Rng>(rng: &mut R, xs: &[[f32; 3]], amount: f32) -> [f32; 3] {
    let c = pick(rng, xs);
    jitter(rng, c, amount)
}

/// One of `xs`, uniformly.
pub(super) fn pick<R: Rng, T: Copy>(rng: &mut R, xs: &[T]) -> T {
    xs[rng.random_range(0..xs.len())]
}

/// Neutral greys shared by several classes (facades, poles, cars, road, sidewalk, clutter).
pub(super) const GREYS: [[f32; 3]; 4] = [
    [95.0, 95.0, 100.0],
    [125.0, 124.0, 120.0],
    [150.0, 148.0, 142.0],
    [175.0, 172.0, 165.0],
];
