//! Deterministic synthetic data for `demo` and `bench` (no files, no Python).

use ndarray::{Array1, Array4};

/// A small, fast, seeded generator (SplitMix64); statistical quality is ample for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform().max(1e-7), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
}

/// One benchmark layer: `[N, C, H, W, Cout, k, stride, pad, dilation, groups, deformable_groups]`.
#[derive(Clone, Debug)]
pub struct Shape {
    pub name: String,
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub dil: usize,
    pub groups: usize,
    pub dg: usize,
}

/// `bench/shapes.json`, the repository's one list of benchmark shapes (`bench/compare.py` reads
/// the same file), built into the binary.
const SHAPES_JSON: &str = include_str!("../../../bench/shapes.json");

/// The benchmark shapes: real DCNv2 layers, in the file's order.
pub fn shapes() -> Vec<Shape> {
    let v: serde_json::Value =
        serde_json::from_str(SHAPES_JSON).expect("bench/shapes.json is JSON");
    let map = v["shapes"]
        .as_object()
        .expect("bench/shapes.json has a shapes object");
    map.iter()
        .map(|(name, dims)| {
            let d: Vec<usize> = dims
                .as_array()
                .expect("a shape is a list")
                .iter()
                .map(|x| x.as_u64().expect("a shape entry is a size") as usize)
                .collect();
            assert_eq!(d.len(), 11, "{name}: 11 fields");
            Shape {
                name: name.clone(),
                n: d[0],
                c: d[1],
                h: d[2],
                w: d[3],
                cout: d[4],
                k: d[5],
                stride: d[6],
                pad: d[7],
                dil: d[8],
                groups: d[9],
                dg: d[10],
            }
        })
        .collect()
}

impl Shape {
    pub fn out(&self, size: usize) -> usize {
        (size + 2 * self.pad - self.dil * (self.k - 1) - 1) / self.stride + 1
    }
}

/// Tensors of one torchvision-convention problem: input, interleaved offset ~ N(0, 2^2),
/// mask ~ U(0, 1), weight (scaled like a trained layer), bias.
pub struct Problem {
    pub x: Array4<f32>,
    pub offset: Array4<f32>,
    pub mask: Array4<f32>,
    pub weight: Array4<f32>,
    pub bias: Array1<f32>,
}

pub fn problem(s: &Shape, seed: u64) -> Problem {
    let mut r = Rng::new(seed);
    let (ho, wo, kk) = (s.out(s.h), s.out(s.w), s.k * s.k);
    let fan_in = (s.c / s.groups * kk) as f32;
    Problem {
        x: Array4::from_shape_simple_fn((s.n, s.c, s.h, s.w), || r.normal()),
        offset: Array4::from_shape_simple_fn((s.n, 2 * s.dg * kk, ho, wo), || 2.0 * r.normal()),
        mask: Array4::from_shape_simple_fn((s.n, s.dg * kk, ho, wo), || r.uniform()),
        weight: Array4::from_shape_simple_fn((s.cout, s.c / s.groups, s.k, s.k), || {
            r.normal() / fan_in.sqrt()
        }),
        bias: Array1::from_shape_simple_fn(s.cout, || 0.1 * r.normal()),
    }
}
