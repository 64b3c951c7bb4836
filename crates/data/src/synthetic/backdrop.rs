//! What lies behind the street objects: the sky, the skyline on the horizon and the facades
//! along the sidewalks.

use super::canvas::{jitter, pick, pj, Mat, GREYS};
use super::painter::{Painter, Street};
use crate::synthia::class;
use rand::Rng;

impl Painter {
    /// The sky down to just below the horizon: a blue or overcast-grey vertical gradient, then
    /// up to four clouds of white ellipses. Writes [`class::SKY`].
    pub(super) fn sky(&mut self) {
        let (w, h) = (self.g.w, self.g.h);
        let overcast = self.rng.random_bool(0.3);
        let sky_top = if overcast {
            jitter(&mut self.rng, [170.0, 172.0, 178.0], 15.0)
        } else {
            jitter(&mut self.rng, [70.0, 120.0, 200.0], 20.0)
        };
        let sky_bot = if overcast {
            jitter(&mut self.rng, [200.0, 200.0, 204.0], 12.0)
        } else {
            jitter(&mut self.rng, [170.0, 195.0, 225.0], 15.0)
        };
        let sky_y1 = (self.g.yh + 2.0).min(h);
        for y in 0..(sky_y1.ceil() as usize).min(self.cv.h) {
            let t = y as f32 / sky_y1.max(1.0);
            let c = [0, 1, 2].map(|i| (sky_top[i] * (1.0 - t) + sky_bot[i] * t) * self.light.0);
            self.cv
                .span(y as isize, 0.0, w, class::SKY, 0, &Mat::new(c, 4.0, 0.0), 1);
        }
        for _ in 0..self.rng.random_range(0..5) {
            let (cx, cy) = (
                self.rng.random_range(0.0..w),
                self.rng.random_range(0.0..self.g.yh * 0.7),
            );
            let r = self.rng.random_range(0.03..0.12) * w;
            let c = self
                .light
                .lit(jitter(&mut self.rng, [232.0, 232.0, 235.0], 10.0));
            for j in 0..4 {
                let (ox, oy) = (
                    self.rng.random_range(-r..r),
                    self.rng.random_range(-r * 0.3..r * 0.3),
                );
                self.cv.ellipse(
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
    }

    /// The distant skyline standing on the horizon, left to right across the image: blocks of
    /// buildings with the odd tree crown between them. Writes [`class::BUILDING`] and
    /// [`class::VEGETATION`], one instance per block or crown.
    pub(super) fn skyline(&mut self) {
        let (w, yh) = (self.g.w, self.g.yh);
        let mut x = -self.rng.random_range(0.0..0.1) * w;
        while x < w {
            let bw = self.rng.random_range(0.05..0.2) * w;
            if self.rng.random_bool(0.25) {
                let c = self
                    .light
                    .lit(jitter(&mut self.rng, [60.0, 95.0, 50.0], 15.0));
                let r = bw * 0.6;
                let inst = self.cv.new_instance();
                self.cv.ellipse(
                    x + bw * 0.5,
                    yh - r * 0.6,
                    r,
                    r * 0.9,
                    class::VEGETATION,
                    inst,
                    &Mat::new(c, 14.0, 0.25),
                    10,
                );
            } else {
                let bh = self.rng.random_range(0.08..0.35) * yh;
                let base = pick(
                    &mut self.rng,
                    &[
                        [150.0, 140.0, 125.0],
                        [120.0, 110.0, 105.0],
                        GREYS[2],
                        GREYS[3],
                        [175.0, 160.0, 140.0],
                    ],
                );
                let c = self.light.lit(jitter(&mut self.rng, base, 14.0));
                let inst = self.cv.new_instance();
                self.cv.rect(
                    x,
                    yh - bh,
                    x + bw,
                    yh + 1.0,
                    class::BUILDING,
                    inst,
                    &Mat::new(c, 8.0, 0.1),
                    11,
                );
            }
            x += bw;
        }
    }

    /// The near facades: a vertical plane along the outer edge of each sidewalk that has one
    /// (`street.facade_side`), with rows of windows by floor and bay. Writes
    /// [`class::BUILDING`] (windows included), one instance per side.
    pub(super) fn facades(&mut self, street: &Street) {
        for side in 0..2 {
            if !street.facade_side[side] {
                continue;
            }
            self.facade(street.outer[side], side);
        }
    }

    /// One facade at lateral position `xm` metres; `side` (0 left, 1 right) salts its noise.
    fn facade(&mut self, xm: f32, side: usize) {
        let height_m = self.rng.random_range(6.0..25.0);
        let base = pick(
            &mut self.rng,
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
        let c = self.light.lit(jitter(&mut self.rng, base, 12.0));
        let win = self.light.lit(pj(
            &mut self.rng,
            &[
                [60.0, 70.0, 85.0],
                [40.0, 45.0, 50.0],
                [120.0, 140.0, 160.0],
            ],
            10.0,
        ));
        let floor_m = self.rng.random_range(2.8..3.6);
        let bay_m = self.rng.random_range(2.0..4.0);
        let inst = self.cv.new_instance();
        let wall = Mat::new(c, 9.0, 0.12);
        let glass = Mat::new(win, 6.0, 0.05);
        let (g, cv) = (&self.g, &mut self.cv);
        // Column by column: the facade at lateral xm spans depth scales s where col(xm, s) = x.
        for xi in 0..cv.w {
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
            let y1 = (ground.min(g.h)).ceil() as usize;
            for yi in y0..y1.min(cv.h) {
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
}
