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
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub name: &'static str,
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

const fn shape(name: &'static str, v: [usize; 11]) -> Shape {
    Shape {
        name,
        n: v[0],
        c: v[1],
        h: v[2],
        w: v[3],
        cout: v[4],
        k: v[5],
        stride: v[6],
        pad: v[7],
        dil: v[8],
        groups: v[9],
        dg: v[10],
    }
}

/// The shapes of `shared/bench-shapes.json`: real DCNv2 layers.
pub const SHAPES: [Shape; 5] = [
    shape("npu_doc_example", [16, 32, 32, 32, 32, 5, 1, 2, 1, 1, 1]),
    shape("resnet_c4_dcn", [1, 256, 64, 64, 256, 3, 1, 1, 1, 1, 1]),
    shape("resnet_c3_dcn_b4", [4, 128, 56, 56, 128, 3, 1, 1, 1, 1, 1]),
    shape("edvr_align_dg8", [1, 64, 128, 128, 64, 3, 1, 1, 1, 1, 8]),
    shape("stride2_c5", [2, 512, 32, 32, 512, 3, 2, 1, 1, 1, 1]),
];

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
