//! The state shared by the scene parts: the canvas, the scene's RNG, the camera geometry, the
//! light level and the street's cross-section.

use super::canvas::{hnoise, Canvas};
use super::Scene;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Scene geometry: a ground plane seen from a camera at fixed height.
pub(super) struct Geo {
    /// Image width in pixels.
    pub(super) w: f32,
    /// Image height in pixels.
    pub(super) h: f32,
    /// Horizon row.
    pub(super) yh: f32,
    /// Vanishing point column.
    pub(super) xv: f32,
    /// Pixels per metre on the bottom row.
    pub(super) k0: f32,
}

impl Geo {
    /// Depth scale of a ground row (1 on the bottom row, 0 at the horizon).
    pub(super) fn s(&self, y: f32) -> f32 {
        ((y - self.yh) / (self.h - self.yh)).max(0.0)
    }
    /// Pixels per metre at depth scale `s`.
    pub(super) fn k(&self, s: f32) -> f32 {
        self.k0 * s
    }
    /// Ground row at depth scale `s`.
    pub(super) fn row(&self, s: f32) -> f32 {
        self.yh + s * (self.h - self.yh)
    }
    /// Column of lateral offset `x_m` metres (from the camera axis) at depth scale `s`.
    pub(super) fn col(&self, x_m: f32, s: f32) -> f32 {
        self.xv + x_m * self.k(s)
    }
}

/// The scene's light level, a factor on most colours.
#[derive(Clone, Copy)]
pub(super) struct Light(pub(super) f32);

impl Light {
    /// `c` under this light.
    pub(super) fn lit(self, c: [f32; 3]) -> [f32; 3] {
        [c[0] * self.0, c[1] * self.0, c[2] * self.0]
    }
}

/// One scene being drawn. The scene parts are methods on it (in the sibling modules), called in
/// a fixed order by [`render_scene`](super::render_scene); each draws from the one RNG, so the
/// order of the parts and of the draws inside them fixes the output.
pub(super) struct Painter {
    pub(super) cv: Canvas,
    pub(super) rng: ChaCha8Rng,
    pub(super) g: Geo,
    pub(super) light: Light,
}

impl Painter {
    /// Seeds the RNG and draws the canvas noise salt, the camera geometry (horizon, vanishing
    /// point, scale) and the light level.
    pub(super) fn new(w: usize, h: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let cv = Canvas::new(w, h, rng.random());
        let (wf, hf) = (w as f32, h as f32);
        let g = Geo {
            w: wf,
            h: hf,
            yh: hf * rng.random_range(0.36..0.48),
            xv: wf * rng.random_range(0.38..0.62),
            // The bottom row spans about 12–17 m.
            k0: wf / rng.random_range(12.0..17.0),
        };
        let light = Light(rng.random_range(0.75..1.2));
        Painter { cv, rng, g, light }
    }

    /// Adds camera noise and quantises the colours to 8 bits.
    pub(super) fn finish(self) -> Scene {
        let cv = self.cv;
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
}

/// The street's cross-section, in metres from the camera axis (negative = left).
pub(super) struct Street {
    /// Left road edge.
    pub(super) road_l: f32,
    /// Right road edge.
    pub(super) road_r: f32,
    /// Outer edges of the left and right sidewalks.
    pub(super) outer: [f32; 2],
    /// What is beyond each sidewalk: a facade (true) or grass and trees (false).
    pub(super) facade_side: [bool; 2],
}

impl Street {
    /// Draws the road and sidewalk widths and which sides have facades.
    pub(super) fn sample(rng: &mut ChaCha8Rng) -> Self {
        let road_l = -rng.random_range(3.5..7.5);
        let road_r = rng.random_range(3.5..7.5);
        let walk_w = [rng.random_range(1.5..3.5), rng.random_range(1.5..3.5)];
        let outer = [road_l - walk_w[0], road_r + walk_w[1]];
        let facade_side = [rng.random_bool(0.7), rng.random_bool(0.7)];
        Street {
            road_l,
            road_r,
            outer,
            facade_side,
        }
    }
}
