//! Random problem generation shared by the property tests.
#![allow(dead_code)]

use deform_conv::{DeformParams, Geometry, OutputRounding, ShapeSet};
use ndarray::{Array1, Array4};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

/// A fresh seed each run (printed, so a failure can be replayed with DEFORM_SEED=...).
pub fn rng(test: &str) -> StdRng {
    let seed = std::env::var("DEFORM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen::<u64>());
    eprintln!("{test}: DEFORM_SEED={seed}");
    // Every engine scratch buffer starts as NaN: a read before a write shows in the results.
    deform_conv::engine::poison_scratch(true);
    StdRng::seed_from_u64(seed)
}

/// One random problem in canonical layout (split offsets), f64.
#[derive(Debug, Clone)]
pub struct Problem {
    pub params: DeformParams,
    pub geom: Geometry,
    pub x: Array4<f64>,
    pub w: Array4<f64>,
    pub b: Option<Array1<f64>>,
    pub oy: Array4<f64>,
    pub ox: Array4<f64>,
    pub m: Option<Array4<f64>>,
}

/// Which offsets to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offsets {
    /// N(0, 2^2) mixed with integers, half-integers, exact -1 / last-row landings, huge, NaN, Inf.
    Edges,
    /// Smooth: fractional parts in [0.1, 0.9], so finite differences never cross a kink.
    Smooth,
}

pub fn normal(rng: &mut StdRng, shape: (usize, usize, usize, usize)) -> Array4<f64> {
    let d = Normal::new(0.0, 1.0).unwrap();
    Array4::from_shape_simple_fn(shape, || d.sample(rng))
}

/// A random valid problem with small sizes: even and non-square kernels, groups with
/// deformable groups, strides and dilations 1-3, asymmetric pads, 1x1 images.
pub fn problem(rng: &mut StdRng, kind: Offsets, max_c: usize) -> Problem {
    problem_sized(rng, kind, max_c, 9)
}

/// As [`problem`], with images up to `max_hw` on a side.
pub fn problem_sized(rng: &mut StdRng, kind: Offsets, max_c: usize, max_hw: usize) -> Problem {
    problem_shaped(rng, kind, max_c, max_hw, 3, 2)
}

/// As [`problem_sized`], with up to `max_coutg` output channels per conv group and `max_n`
/// images.
pub fn problem_shaped(
    rng: &mut StdRng,
    kind: Offsets,
    max_c: usize,
    max_hw: usize,
    max_coutg: usize,
    max_n: usize,
) -> Problem {
    loop {
        let gc = rng.gen_range(1..=3usize);
        let g = rng.gen_range(1..=3usize);
        // C divisible by both gc and g.
        let l = (gc * g) / gcd(gc, g);
        let c = l * rng.gen_range(1..=(max_c / l).max(1));
        let cout = gc * rng.gen_range(1..=max_coutg);
        let kh = rng.gen_range(1..=4usize);
        let kw = rng.gen_range(1..=4usize);
        let h = if rng.gen_bool(0.15) {
            1
        } else {
            rng.gen_range(1..=max_hw)
        };
        let w = if rng.gen_bool(0.15) {
            1
        } else {
            rng.gen_range(1..=max_hw)
        };
        let params = DeformParams {
            kernel: None,
            stride: [rng.gen_range(1..=3), rng.gen_range(1..=3)],
            padding: [
                rng.gen_range(0..=3),
                rng.gen_range(0..=3),
                rng.gen_range(0..=3),
                rng.gen_range(0..=3),
            ],
            dilation: [rng.gen_range(1..=3), rng.gen_range(1..=3)],
            groups: gc as i64,
            deformable_groups: g as i64,
            rounding: OutputRounding::Floor,
        };
        let n = rng.gen_range(1..=max_n);
        let k = kh * kw;
        let ho = out(
            h,
            params.padding[0] + params.padding[1],
            kh,
            params.dilation[0],
            params.stride[0],
        );
        let wo = out(
            w,
            params.padding[2] + params.padding[3],
            kw,
            params.dilation[1],
            params.stride[1],
        );
        if ho < 1 || wo < 1 {
            continue;
        }
        let geom = params
            .validate(&ShapeSet {
                input: [n, c, h, w],
                weight: [cout, c / gc, kh, kw],
                offset: [n, g * k, ho as usize, wo as usize],
                offset_per_tap: 1,
                mask: None,
                bias: None,
            })
            .expect("a problem built to be valid");
        let tap = (n, g * k, geom.ho, geom.wo);
        let x = normal(rng, (n, c, h, w));
        let wt = normal(rng, (cout, c / gc, kh, kw));
        let b = rng
            .gen_bool(0.5)
            .then(|| Array1::from_shape_simple_fn(cout, || rng.gen_range(-1.0..1.0)));
        let m = rng
            .gen_bool(0.7)
            .then(|| Array4::from_shape_simple_fn(tap, || rng.gen_range(-0.5..1.5)));
        let mut oy = Array4::zeros(tap);
        let mut ox = Array4::zeros(tap);
        for ((_, ch, oh, _), v) in oy.indexed_iter_mut() {
            *v = draw(rng, kind, geom.grid_y(oh, (ch % k) / kw) as f64, h);
        }
        for ((_, ch, _, ow), v) in ox.indexed_iter_mut() {
            *v = draw(rng, kind, geom.grid_x(ow, (ch % k) % kw) as f64, w);
        }
        return Problem {
            params,
            geom,
            x,
            w: wt,
            b,
            oy,
            ox,
            m,
        };
    }
}

fn out(size: usize, pads: i64, k: usize, dil: i64, stride: i64) -> i64 {
    (size as i64 + pads - dil * (k as i64 - 1) - 1).div_euclid(stride) + 1
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// An offset for a sample whose integer grid position is `base` along an axis of `size`.
fn draw(rng: &mut StdRng, kind: Offsets, base: f64, size: usize) -> f64 {
    match kind {
        Offsets::Smooth => {
            let whole = rng.gen_range(-2..=2) as f64;
            whole + rng.gen_range(0.1..0.9)
        }
        Offsets::Edges => match rng.gen_range(0..12) {
            0 => rng.gen_range(-3..=3) as f64,
            1 => rng.gen_range(-3..=3) as f64 + 0.5,
            2 => -1.0 - base,
            3 => size as f64 - 1.0 - base,
            4 => size as f64 - base,
            5 => {
                if rng.gen_bool(0.5) {
                    1e7
                } else {
                    -1e7
                }
            }
            6 => {
                if rng.gen_bool(0.5) {
                    3e38
                } else {
                    -1e300
                }
            }
            7 => f64::NAN,
            8 => {
                if rng.gen_bool(0.5) {
                    f64::INFINITY
                } else {
                    f64::NEG_INFINITY
                }
            }
            _ => Normal::new(0.0, 2.0).unwrap().sample(rng),
        },
    }
}
