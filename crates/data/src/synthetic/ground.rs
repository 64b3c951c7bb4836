//! The ground plane below the horizon: road with lane markings, sidewalks, and grass beyond the
//! sidewalks where there is no facade.

use super::canvas::{jitter, pick, pj, Mat, GREYS};
use super::painter::{Light, Painter, Street};
use crate::synthia::class;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// The road's painted lines: dashed lane dividers and optional solid edge lines.
struct LaneMarkings {
    mat: Mat,
    /// Dash length along the street (metres).
    dash: f32,
    /// Dash plus gap (metres).
    period: f32,
    /// Line width (metres).
    width: f32,
    /// Solid lines 0.4 m inside both road edges.
    edge_lines: bool,
    /// Number of dashed dividers, evenly spaced across the road.
    dividers: usize,
}

impl LaneMarkings {
    /// Draws the paint colour, dash pattern, line width, edge lines and (on roads wider than
    /// 9 m) the number of dividers.
    fn sample(rng: &mut ChaCha8Rng, light: Light, street: &Street) -> Self {
        let lane_c = light.lit(pick(rng, &[[225.0, 225.0, 220.0], [220.0, 190.0, 60.0]]));
        let dash = rng.random_range(2.0..4.0);
        let period = dash + rng.random_range(3.0..8.0);
        let lane_w = rng.random_range(0.12..0.2);
        let edge_lines = rng.random_bool(0.5);
        let n_lanes_div = if street.road_r - street.road_l > 9.0 {
            pick(rng, &[1usize, 2, 3])
        } else {
            1
        };
        LaneMarkings {
            mat: Mat::new(lane_c, 10.0, 0.05),
            dash,
            period,
            width: lane_w,
            edge_lines,
            dividers: n_lanes_div,
        }
    }

    /// Whether the road point `xm` metres across, `along` metres along the street, is painted.
    fn covers(&self, street: &Street, xm: f32, along: f32) -> bool {
        let (road_l, road_r) = (street.road_l, street.road_r);
        let mut lane = false;
        for d in 1..=self.dividers {
            let xd = road_l + (road_r - road_l) * d as f32 / (self.dividers + 1) as f32;
            if (xm - xd).abs() < self.width * 0.5 && (along % self.period) < self.dash {
                lane = true;
            }
        }
        if self.edge_lines
            && ((xm - road_l - 0.4).abs() < self.width * 0.5
                || (xm - road_r + 0.4).abs() < self.width * 0.5)
        {
            lane = true;
        }
        lane
    }
}

impl Painter {
    /// Every ground pixel below the horizon, row by row: asphalt between the road edges with
    /// [`LaneMarkings`] on it, paved sidewalks (with joints) out to `street.outer`, and grass
    /// beyond a sidewalk that has no facade (a facade's side is left as drawn). An optional
    /// band of shadow darkens a range of depths. Writes [`class::ROAD`],
    /// [`class::LANEMARKING`], [`class::SIDEWALK`] and [`class::VEGETATION`], all instance 0.
    pub(super) fn ground(&mut self, street: &Street) {
        let light = self.light;
        let asphalt = light.lit(pj(
            &mut self.rng,
            &[
                [80.0, 80.0, 84.0],
                [100.0, 98.0, 98.0],
                [115.0, 112.0, 110.0],
            ],
            10.0,
        ));
        let walk_c = light.lit(pj(
            &mut self.rng,
            &[
                GREYS[1],
                GREYS[2],
                [160.0, 145.0, 125.0],
                [140.0, 110.0, 100.0],
            ],
            12.0,
        ));
        let grass_c = light.lit(jitter(&mut self.rng, [85.0, 120.0, 55.0], 15.0));
        let lanes = LaneMarkings::sample(&mut self.rng, light, street);
        let shadow_band = self.rng.random_bool(0.4).then(|| {
            let a = self.rng.random_range(0.15..0.8);
            (a, a + self.rng.random_range(0.05..0.3))
        });
        let road_m = Mat::new(asphalt, 10.0, 0.15);
        let walk_m = Mat::new(walk_c, 10.0, 0.1);
        let grass_m = Mat::new(grass_c, 16.0, 0.3);
        let (g, cv) = (&self.g, &mut self.cv);
        let (outer, facade_side) = (street.outer, street.facade_side);
        let y_start = (g.yh + 0.5).floor().max(0.0) as usize;
        for yi in y_start..cv.h {
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
            for xi in 0..cv.w {
                let xm = (xi as f32 + 0.5 - g.xv) / g.k(s);
                let (cls, m, kk) = if xm >= street.road_l && xm < street.road_r {
                    if lanes.covers(street, xm, along) {
                        (class::LANEMARKING, &lanes.mat, 31)
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
    }
}
