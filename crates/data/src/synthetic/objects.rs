//! The objects on and along the street: fences, trees, poles with traffic signs, traffic lights
//! and lamp arms, cars, pedestrians, bicycles and unlabelled clutter. They are all placed first
//! (one RNG draw sequence), then drawn far to near so nearer ones cover farther ones.

use super::canvas::{pick, pj, Mat, GREYS};
use super::painter::{Painter, Street};
use crate::synthia::class;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// What a placed object is.
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

/// One object placed in the scene.
#[derive(Clone, Copy)]
pub(super) struct Placed {
    /// Depth scale of its foot (0 for a fence, which spans a range of depths of its own).
    s: f32,
    kind: Kind,
    /// Lateral position in metres; for a fence, its side (0 left, 1 right).
    xm: f32,
}

/// Where an object stands in the image.
#[derive(Clone, Copy)]
struct Spot {
    /// Column of its foot.
    x: f32,
    /// Row of its foot.
    ground: f32,
    /// Pixels per metre at its depth.
    k: f32,
}

/// A random depth scale, mostly far away as in street scenes.
fn depth(rng: &mut ChaCha8Rng) -> f32 {
    let u: f32 = rng.random_range(0.0f32..1.0);
    0.06 + 0.94 * u * u
}

/// Places the scene's objects, sorted far to near (fences first): 2–7 trees around the outer
/// sidewalk edges, 1–5 poles at the kerbs, up to 6 cars on the road, up to 3 pedestrians on the
/// sidewalks, a bicycle at a road edge in 30% of scenes, up to 3 pieces of clutter on the
/// sidewalks, and a fence along each outer sidewalk edge with probability 0.45.
pub(super) fn place(rng: &mut ChaCha8Rng, street: &Street) -> Vec<Placed> {
    let (road_l, road_r, outer) = (street.road_l, street.road_r, street.outer);
    let mut objs: Vec<Placed> = Vec::new();
    let mut push = |s: f32, kind: Kind, xm: f32| objs.push(Placed { s, kind, xm });
    for _ in 0..rng.random_range(2..8) {
        let side = rng.random_range(0..2);
        let xm = outer[side]
            + if side == 0 {
                rng.random_range(-3.0..0.5)
            } else {
                rng.random_range(-0.5..3.0)
            };
        push(depth(rng), Kind::Tree, xm);
    }
    for _ in 0..rng.random_range(1..6) {
        let side = rng.random_range(0..2);
        let xm = if side == 0 {
            road_l - 0.4
        } else {
            road_r + 0.4
        };
        push(depth(rng), Kind::Pole, xm);
    }
    for _ in 0..rng.random_range(0..7) {
        let xm = rng.random_range(road_l + 1.0..road_r - 1.0);
        let u: f32 = rng.random_range(0.0f32..1.0);
        push(0.08 + 0.8 * u.powf(1.5), Kind::Car, xm);
    }
    for _ in 0..rng.random_range(0..4) {
        let side = rng.random_range(0..2);
        let xm = if side == 0 {
            rng.random_range(outer[0] + 0.3..road_l)
        } else {
            rng.random_range(road_r..outer[1] - 0.3)
        };
        push(depth(rng), Kind::Pedestrian, xm);
    }
    if rng.random_bool(0.3) {
        let side = rng.random_range(0..2);
        let xm = if side == 0 {
            road_l + rng.random_range(0.3..1.0)
        } else {
            road_r - rng.random_range(0.3..1.0)
        };
        push(depth(rng), Kind::Bicycle, xm);
    }
    for _ in 0..rng.random_range(0..4) {
        let side = rng.random_range(0..2);
        let xm = if side == 0 {
            rng.random_range(outer[0]..road_l)
        } else {
            rng.random_range(road_r..outer[1])
        };
        push(depth(rng), Kind::Clutter, xm);
    }
    for side in 0..2 {
        if rng.random_bool(0.45) {
            push(0.0, Kind::Fence, side as f32);
        }
    }
    objs.sort_by(|a, b| a.s.total_cmp(&b.s));
    objs
}

impl Painter {
    /// Draws one placed object.
    pub(super) fn object(&mut self, o: Placed, street: &Street) {
        let at = Spot {
            x: self.g.col(o.xm, o.s),
            ground: self.g.row(o.s),
            k: self.g.k(o.s),
        };
        match o.kind {
            Kind::Fence => self.fence(street.outer[o.xm as usize]),
            Kind::Tree => self.tree(at),
            Kind::Pole => self.pole(at, o.xm),
            Kind::Car => self.car(at),
            Kind::Pedestrian => self.pedestrian(at),
            Kind::Bicycle => self.bicycle(at),
            Kind::Clutter => self.clutter(at),
        }
    }

    /// A fence along the outer sidewalk edge at lateral `xe` metres, over a random range of
    /// depths: posts, a top and a middle rail, and a checkered mesh between them. Writes
    /// [`class::FENCE`], one instance.
    fn fence(&mut self, xe: f32) {
        let c = self.light.lit(pj(
            &mut self.rng,
            &[[70.0, 95.0, 60.0], [120.0, 100.0, 80.0], GREYS[0], GREYS[2]],
            10.0,
        ));
        let m = Mat::new(c, 8.0, 0.05);
        let (s0, s1) = (
            self.rng.random_range(0.1..0.5),
            self.rng.random_range(0.5..1.4),
        );
        let hgt = self.rng.random_range(0.9..1.6);
        let inst = self.cv.new_instance();
        let post_every = self.rng.random_range(1.5..2.5);
        let (g, cv) = (&self.g, &mut self.cv);
        for xi in 0..cv.w {
            let xc = xi as f32 + 0.5;
            let s = (xc - g.xv) / (xe * g.k0);
            if !(s > s0 && s < s1) {
                continue;
            }
            let gy = g.row(s);
            let top = gy - hgt * g.k(s);
            let along = 12.0 / s;
            let post = (along % post_every) < 0.25;
            for yi in (top.max(0.0) as usize)..(gy.min(g.h) as usize) {
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

    /// A tree: a brown trunk and a crown of five green ellipses. Writes
    /// [`class::VEGETATION`], one instance (trunk and crown).
    fn tree(&mut self, at: Spot) {
        let Spot { x, ground, k } = at;
        let trunk_h = self.rng.random_range(1.5..3.5) * k;
        let crown = self.rng.random_range(1.5..3.5) * k;
        let c = self.light.lit(pj(
            &mut self.rng,
            &[
                [55.0, 100.0, 45.0],
                [80.0, 120.0, 50.0],
                [40.0, 70.0, 40.0],
                [110.0, 130.0, 60.0],
            ],
            15.0,
        ));
        let inst = self.cv.new_instance();
        let trunk = Mat::new(self.light.lit([90.0, 70.0, 55.0]), 10.0, 0.1);
        self.cv.rect(
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
                self.rng.random_range(-0.6..0.6) * crown,
                self.rng.random_range(-0.5..0.3) * crown,
            );
            self.cv.ellipse(
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

    /// A grey pole at the kerb (`xm` metres across), topped with a traffic sign (40%), a
    /// traffic light (20%), a street-lamp arm reaching over the road (10%) or nothing. Writes
    /// [`class::POLE`] (pole and lamp arm, one instance), and [`class::SIGN`] or
    /// [`class::TRAFFIC_LIGHT`] as a separate instance.
    fn pole(&mut self, at: Spot, xm: f32) {
        let Spot { x, ground, k } = at;
        let height = self.rng.random_range(3.5..7.0);
        let c = self.light.lit(pj(&mut self.rng, &GREYS, 10.0));
        let m = Mat::new(c, 8.0, 0.05);
        let inst = self.cv.new_instance();
        let pw = 0.15 * k;
        let top = ground - height * k;
        self.cv.rect(
            x - pw * 0.5,
            top,
            x + pw * 0.5,
            ground,
            class::POLE,
            inst,
            &m,
            50,
        );
        let what = self.rng.random_range(0..10);
        if what < 4 {
            self.traffic_sign(x, top, k);
        } else if what < 6 {
            self.traffic_light(x, top, k);
        } else if what < 7 {
            // Street lamp arm (still pole).
            let dir = if xm < 0.0 { 1.0 } else { -1.0 };
            self.cv.line(
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

    /// A traffic sign on top of a pole at column `x`, row `top`: a red, blue, white or yellow
    /// disc, triangle or rectangle. Writes [`class::SIGN`], one instance.
    fn traffic_sign(&mut self, x: f32, top: f32, k: f32) {
        let sc = self.light.lit(pick(
            &mut self.rng,
            &[
                [200.0, 40.0, 40.0],
                [40.0, 70.0, 170.0],
                [225.0, 225.0, 225.0],
                [230.0, 190.0, 40.0],
            ],
        ));
        let sm = Mat::new(sc, 8.0, 0.05);
        let r = self.rng.random_range(0.3..0.45) * k;
        let si = self.cv.new_instance();
        match self.rng.random_range(0..3) {
            0 => self
                .cv
                .ellipse(x, top - r * 0.6, r, r, class::SIGN, si, &sm, 51),
            1 => self.cv.poly(
                &[(x - r, top), (x + r, top), (x, top - 1.7 * r)],
                class::SIGN,
                si,
                &sm,
                51,
            ),
            _ => self.cv.rect(
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
    }

    /// A traffic light on top of a pole at column `x`, row `top`: a dark (or yellow) housing
    /// with three lamps, one of them lit red, amber or green. Writes [`class::TRAFFIC_LIGHT`],
    /// one instance.
    fn traffic_light(&mut self, x: f32, top: f32, k: f32) {
        let hw = self.rng.random_range(0.15..0.22) * k;
        let hh = hw * 3.2;
        let hc = self.light.lit(pj(
            &mut self.rng,
            &[[35.0, 35.0, 38.0], [60.0, 60.0, 55.0], [200.0, 170.0, 40.0]],
            8.0,
        ));
        let ti = self.cv.new_instance();
        self.cv.rect(
            x - hw,
            top - hh,
            x + hw,
            top + 0.1 * hh,
            class::TRAFFIC_LIGHT,
            ti,
            &Mat::new(hc, 6.0, 0.0),
            52,
        );
        let on = self.rng.random_range(0..3);
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
            self.cv.ellipse(
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
    }

    /// A car: body, cabin, window, two tyres and two lights. Writes [`class::CAR`], one
    /// instance (all parts).
    fn car(&mut self, at: Spot) {
        let Spot { x, ground, k } = at;
        let cw = self.rng.random_range(1.7..2.0) * k;
        let ch = self.rng.random_range(1.3..1.7) * k;
        let c = self.light.lit(pj(
            &mut self.rng,
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
        let inst = self.cv.new_instance();
        let body = Mat::new(c, 7.0, 0.1);
        let glass = Mat::new(self.light.lit([45.0, 55.0, 65.0]), 6.0, 0.05);
        let tyre = Mat::new([20.0, 20.0, 20.0], 4.0, 0.0);
        let cv = &mut self.cv;
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

    /// A pedestrian: two legs in a stride, a torso and a head. Writes [`class::PEDESTRIAN`],
    /// one instance.
    fn pedestrian(&mut self, at: Spot) {
        let Spot { x, ground, k } = at;
        let hgt = self.rng.random_range(1.55..1.9) * k;
        let top_c = self.light.lit(pj(
            &mut self.rng,
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
        let leg_c = self.light.lit(pj(
            &mut self.rng,
            &[[40.0, 45.0, 70.0], [30.0, 30.0, 30.0], [110.0, 100.0, 85.0]],
            10.0,
        ));
        let skin = self.light.lit(pj(
            &mut self.rng,
            &[
                [225.0, 185.0, 160.0],
                [160.0, 115.0, 85.0],
                [100.0, 70.0, 50.0],
            ],
            8.0,
        ));
        let inst = self.cv.new_instance();
        let lw = 0.12 * k;
        let stride = self.rng.random_range(0.0..0.25) * k;
        let hip = ground - hgt * 0.48;
        let cv = &mut self.cv;
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

    /// A bicycle seen from the side: two wheels (rings) and a thin frame. Writes
    /// [`class::BICYCLE`], one instance.
    fn bicycle(&mut self, at: Spot) {
        let Spot { x, ground, k } = at;
        let c = self.light.lit(pj(
            &mut self.rng,
            &[
                [30.0, 30.0, 30.0],
                [170.0, 30.0, 30.0],
                [40.0, 80.0, 160.0],
                GREYS[2],
            ],
            10.0,
        ));
        let m = Mat::new(c, 8.0, 0.0);
        let cv = &mut self.cv;
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

    /// Unlabelled street furniture (bins, boxes, benches): one box. Writes [`class::VOID`], one
    /// instance.
    fn clutter(&mut self, at: Spot) {
        let Spot { x, ground, k } = at;
        let bw = self.rng.random_range(0.4..1.5) * k;
        let bh = self.rng.random_range(0.5..1.2) * k;
        let c = self.light.lit(pj(
            &mut self.rng,
            &[
                GREYS[0],
                GREYS[2],
                [60.0, 90.0, 60.0],
                [120.0, 80.0, 50.0],
                [50.0, 60.0, 110.0],
            ],
            12.0,
        ));
        let inst = self.cv.new_instance();
        self.cv.rect(
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
