//! DCNv3 / DCNv4: the engine on every instruction set against the plain-loop reference, the
//! reference's gradients against finite differences in f64, edge offsets, remove_center, DCNv4's
//! packing, and the same bits for any thread count.

mod common;

use common::rng;
use deform_conv::conventions::dcnv3::{dcnv3, dcnv3_backward, dcnv4, dcnv4_backward, Dcnv3Params};
use deform_conv::engine::{set_num_threads, Isa};
use deform_conv::Backend;
use ndarray::{s, Array4};
use rand::rngs::StdRng;
use rand::Rng;

struct Case {
    x: Array4<f64>,
    off: Array4<f64>,
    mask: Array4<f64>,
    gy: Array4<f64>,
    p: Dcnv3Params,
}

fn normal(r: &mut StdRng, shape: (usize, usize, usize, usize), scale: f64) -> Array4<f64> {
    Array4::from_shape_simple_fn(shape, || scale * (r.gen::<f64>() * 2.0 - 1.0))
}

/// A random problem; offsets mixed with exact integers, half-integers, values far outside the
/// image and NaN when `edges`.
fn case(r: &mut StdRng, edges: bool) -> Case {
    let (k, remove_center) = match r.gen_range(0..4) {
        0 => ([3, 3], true),
        1 => ([2, 3], false),
        2 => ([1, 1], false),
        _ => ([3, 3], false),
    };
    let g = r.gen_range(1..4);
    let d = [1, 3, 8, 16, 17, 32][r.gen_range(0..6)];
    let (n, h, w) = (r.gen_range(1..3), r.gen_range(1..7), r.gen_range(1..7));
    let p = Dcnv3Params {
        kernel: k,
        stride: [r.gen_range(1..3), r.gen_range(1..3)],
        padding: [r.gen_range(0..3), r.gen_range(0..3)],
        dilation: [r.gen_range(1..3), r.gen_range(1..3)],
        group: g,
        group_channels: d,
        offset_scale: [1.0, 0.5, 2.0][r.gen_range(0..3)],
        remove_center,
        backend: Backend::Reference,
    };
    let geo = match p.validate(&[n, h, w, (g * d) as usize]) {
        Ok(geo) => geo,
        Err(_) => return case(r, edges),
    };
    let np = geo.g * geo.points;
    let mut off = normal(r, (n, geo.ho, geo.wo, 2 * np), 2.5);
    if edges {
        for v in off.iter_mut() {
            *v = match r.gen_range(0..8) {
                0 => v.round(),
                1 => v.round() + 0.5,
                2 => 1e9,
                3 => f64::NAN,
                _ => *v,
            };
        }
    }
    Case {
        x: normal(r, (n, h, w, geo.c()), 1.0),
        mask: normal(r, (n, geo.ho, geo.wo, np), 1.0),
        gy: normal(r, (n, geo.ho, geo.wo, geo.c()), 1.0),
        off,
        p,
    }
}

fn close(what: &str, a: &Array4<f64>, b: &Array4<f64>, tol: f64) {
    assert_eq!(a.shape(), b.shape(), "{what}");
    let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
        assert!(
            (x - y).abs() <= tol * scale,
            "{what}: element {i}: {x} vs {y}"
        );
    }
}

fn isas() -> Vec<Backend> {
    let mut v = vec![Backend::Engine];
    v.extend(
        Isa::ALL
            .into_iter()
            .filter(|i| i.supported())
            .map(Backend::EngineIsa),
    );
    v
}

#[test]
fn engine_matches_the_reference_on_every_path() {
    let mut r = rng("dcnv3 engine_matches_the_reference_on_every_path");
    for round in 0..60 {
        let c = case(&mut r, round % 2 == 1);
        let reference = |p: &Dcnv3Params| {
            let y = dcnv3(c.x.view(), c.off.view(), c.mask.view(), p).unwrap();
            let g =
                dcnv3_backward(c.gy.view(), c.x.view(), c.off.view(), c.mask.view(), p).unwrap();
            (y, g)
        };
        let (y0, g0) = reference(&c.p);
        for backend in isas() {
            let p = Dcnv3Params {
                backend,
                ..c.p.clone()
            };
            let (y, g) = reference(&p);
            let what = format!("{backend:?} {:?}", c.p);
            close(&format!("output {what}"), &y, &y0, 1e-12);
            close(&format!("grad input {what}"), &g.input, &g0.input, 1e-12);
            close(&format!("grad offset {what}"), &g.offset, &g0.offset, 1e-12);
            close(&format!("grad mask {what}"), &g.mask, &g0.mask, 1e-12);
            // f32 storage and arithmetic: within f32's rounding.
            let f = |a: &Array4<f64>| a.mapv(|v| v as f32);
            let y32 = dcnv3(f(&c.x).view(), f(&c.off).view(), f(&c.mask).view(), &p).unwrap();
            let y32r = dcnv3(
                f(&c.x).view(),
                f(&c.off).view(),
                f(&c.mask).view(),
                &Dcnv3Params {
                    backend: Backend::Reference,
                    ..p.clone()
                },
            )
            .unwrap();
            close(
                &format!("f32 output {what}"),
                &y32.mapv(f64::from),
                &y32r.mapv(f64::from),
                1e-5,
            );
        }
    }
}

/// The reference's gradients are the derivatives of its forward (central differences, f64, at
/// random offsets away from pixel boundaries).
#[test]
fn reference_gradients_match_finite_differences() {
    let mut r = rng("dcnv3 reference_gradients_match_finite_differences");
    for _ in 0..20 {
        let mut c = case(&mut r, false);
        // Keep every sample off a pixel boundary, where the derivative jumps.
        c.off
            .mapv_inplace(|v| v.round() + 0.3 + 0.4 * (v - v.floor()));
        let loss = |c: &Case| {
            dcnv3(c.x.view(), c.off.view(), c.mask.view(), &c.p)
                .unwrap()
                .iter()
                .zip(c.gy.iter())
                .map(|(a, b)| a * b)
                .sum::<f64>()
        };
        let g = dcnv3_backward(c.gy.view(), c.x.view(), c.off.view(), c.mask.view(), &c.p).unwrap();
        let eps = 1e-6;
        for (name, which) in [("input", 0), ("offset", 1), ("mask", 2)] {
            for _ in 0..6 {
                let pick = |c: &mut Case| -> (*mut f64, usize) {
                    let a = match which {
                        0 => &mut c.x,
                        1 => &mut c.off,
                        _ => &mut c.mask,
                    };
                    (a.as_mut_ptr(), a.len())
                };
                let (_, len) = pick(&mut c);
                let i = r.gen_range(0..len);
                let at = |c: &mut Case, d: f64| {
                    let a = match which {
                        0 => &mut c.x,
                        1 => &mut c.off,
                        _ => &mut c.mask,
                    };
                    a.as_slice_mut().unwrap()[i] += d;
                };
                at(&mut c, eps);
                let up = loss(&c);
                at(&mut c, -2.0 * eps);
                let down = loss(&c);
                at(&mut c, eps);
                let numeric = (up - down) / (2.0 * eps);
                let analytic = match which {
                    0 => g.input.as_slice().unwrap()[i],
                    1 => g.offset.as_slice().unwrap()[i],
                    _ => g.mask.as_slice().unwrap()[i],
                };
                assert!(
                    (numeric - analytic).abs() <= 1e-6 * (1.0 + numeric.abs()),
                    "{name}[{i}]: numeric {numeric}, analytic {analytic}, {:?}",
                    c.p
                );
            }
        }
    }
}

/// DCNv4 is DCNv3 with one packed operand: per group P (x, y) pairs then P masks, the last
/// dimension padded to a multiple of 8 (padding ignored, its gradient zero).
#[test]
fn dcnv4_is_dcnv3_packed() {
    let mut r = rng("dcnv3 dcnv4_is_dcnv3_packed");
    for _ in 0..20 {
        let mut c = case(&mut r, true);
        c.p.backend = Backend::Engine;
        let geo = c.p.validate(c.x.shape()).unwrap();
        let (g, pts) = (geo.g, geo.points);
        let used = g * pts * 3;
        let padded = used.div_ceil(8) * 8;
        let (n, ho, wo) = (geo.n, geo.ho, geo.wo);
        let mut om = Array4::from_elem((n, ho, wo, padded), f64::NAN);
        for gi in 0..g {
            om.slice_mut(s![.., .., .., gi * 3 * pts..gi * 3 * pts + 2 * pts])
                .assign(
                    &c.off
                        .slice(s![.., .., .., gi * 2 * pts..(gi + 1) * 2 * pts]),
                );
            om.slice_mut(s![.., .., .., gi * 3 * pts + 2 * pts..(gi + 1) * 3 * pts])
                .assign(&c.mask.slice(s![.., .., .., gi * pts..(gi + 1) * pts]));
        }
        let y3 = dcnv3(c.x.view(), c.off.view(), c.mask.view(), &c.p).unwrap();
        let y4 = dcnv4(c.x.view(), om.view(), &c.p).unwrap();
        assert_eq!(
            y3.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            y4.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        let g3 =
            dcnv3_backward(c.gy.view(), c.x.view(), c.off.view(), c.mask.view(), &c.p).unwrap();
        let g4 = dcnv4_backward(c.gy.view(), c.x.view(), om.view(), &c.p).unwrap();
        assert_eq!(g3.input, g4.input);
        for gi in 0..g {
            assert_eq!(
                g4.offset_mask
                    .slice(s![.., .., .., gi * 3 * pts..gi * 3 * pts + 2 * pts]),
                g3.offset
                    .slice(s![.., .., .., gi * 2 * pts..(gi + 1) * 2 * pts])
            );
            assert_eq!(
                g4.offset_mask
                    .slice(s![.., .., .., gi * 3 * pts + 2 * pts..(gi + 1) * 3 * pts]),
                g3.mask.slice(s![.., .., .., gi * pts..(gi + 1) * pts])
            );
        }
        assert!(g4
            .offset_mask
            .slice(s![.., .., .., used..])
            .iter()
            .all(|v| *v == 0.0));
    }
}

#[test]
fn same_bits_for_any_thread_count() {
    let mut r = rng("dcnv3 same_bits_for_any_thread_count");
    let p = Dcnv3Params {
        group: 4,
        group_channels: 16,
        padding: [1, 1],
        offset_scale: 1.0,
        ..Dcnv3Params::default()
    };
    let x = normal(&mut r, (2, 24, 20, 64), 1.0).mapv(|v| v as f32);
    let off = normal(&mut r, (2, 24, 20, 72), 3.0).mapv(|v| v as f32);
    let mask = normal(&mut r, (2, 24, 20, 36), 1.0).mapv(|v| v as f32);
    let gy = normal(&mut r, (2, 24, 20, 64), 1.0).mapv(|v| v as f32);
    let run = |t: usize| {
        set_num_threads(t).unwrap();
        let y = dcnv3(x.view(), off.view(), mask.view(), &p).unwrap();
        let g = dcnv3_backward(gy.view(), x.view(), off.view(), mask.view(), &p).unwrap();
        (y, g.input, g.offset, g.mask)
    };
    let one = run(1);
    for t in [2, 3] {
        let other = run(t);
        assert!(one.0 == other.0 && one.1 == other.1 && one.2 == other.2 && one.3 == other.3);
    }
    set_num_threads(0).unwrap();
}

#[test]
fn bad_attributes_and_shapes_are_named_errors() {
    let x = Array4::<f32>::zeros((1, 5, 5, 8));
    let off = Array4::<f32>::zeros((1, 5, 5, 36));
    let mask = Array4::<f32>::zeros((1, 5, 5, 18));
    let ok = Dcnv3Params {
        group: 2,
        group_channels: 4,
        padding: [1, 1],
        ..Default::default()
    };
    assert!(dcnv3(x.view(), off.view(), mask.view(), &ok).is_ok());
    for (p, words) in [
        (
            Dcnv3Params {
                group: 3,
                ..ok.clone()
            },
            "group * group_channels",
        ),
        (
            Dcnv3Params {
                stride: [0, 1],
                ..ok.clone()
            },
            "stride_h",
        ),
        (
            Dcnv3Params {
                kernel: [2, 2],
                remove_center: true,
                ..ok.clone()
            },
            "remove_center",
        ),
        (
            Dcnv3Params {
                offset_scale: f64::NAN,
                ..ok.clone()
            },
            "offset_scale",
        ),
        (
            Dcnv3Params {
                padding: [-1, 0],
                ..ok.clone()
            },
            "pad_h",
        ),
        (
            Dcnv3Params {
                kernel: [9, 9],
                padding: [0, 0],
                ..ok.clone()
            },
            "input height",
        ),
        (
            Dcnv3Params {
                group_channels: i64::MAX,
                ..ok.clone()
            },
            "group",
        ),
    ] {
        let e = dcnv3(x.view(), off.view(), mask.view(), &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains(words), "{words}: {e}");
    }
    let e = dcnv3(x.view(), off.slice(s![.., .., .., ..35]), mask.view(), &ok).unwrap_err();
    assert!(e.to_string().contains("offset"), "{e}");
    let e = dcnv4(x.view(), mask.view(), &ok).unwrap_err();
    assert!(e.to_string().contains("offset_mask"), "{e}");
}

/// f32 through every instruction set's kernels (explicit AVX2 and AVX-512 bodies, the fused
/// backward row, the gather that adds in place): bit for bit the portable bodies' results, on
/// random problems with edge offsets and channel runs that are not multiples of the SIMD width.
#[test]
fn every_instruction_set_gives_the_same_f32_bits() {
    let mut r = rng("dcnv3 every_instruction_set_gives_the_same_f32_bits");
    let bits = |a: &Array4<f32>| a.mapv(f32::to_bits);
    for _ in 0..30 {
        let c = case(&mut r, true);
        let f = |a: &Array4<f64>| a.mapv(|v| v as f32);
        let (x, off, mask, gy) = (f(&c.x), f(&c.off), f(&c.mask), f(&c.gy));
        let run = |isa: Isa| {
            let p = Dcnv3Params {
                backend: Backend::EngineIsa(isa),
                ..c.p.clone()
            };
            let y = dcnv3(x.view(), off.view(), mask.view(), &p).unwrap();
            let g = dcnv3_backward(gy.view(), x.view(), off.view(), mask.view(), &p).unwrap();
            [bits(&y), bits(&g.input), bits(&g.offset), bits(&g.mask)]
        };
        let portable = run(Isa::Scalar);
        for isa in Isa::ALL.into_iter().filter(|i| i.supported()) {
            assert!(run(isa) == portable, "{isa:?} {:?}", c.p);
        }
    }
}

/// The staged, streamed gradient rows (AVX-512; calls with big gradients into given-back
/// memory, forced here for small ones by `stream_all`) give the direct writes' bits, every value
/// written (outputs start as NaN: `common::rng` poisons them), DCNv3 and DCNv4 (whose padding
/// the staging zeroes), on every instruction set, on 1 and 3 threads.
#[test]
fn streamed_gradient_rows_give_the_same_bits() {
    let mut r = rng("dcnv3 streamed_gradient_rows_give_the_same_bits");
    let bits = |a: &Array4<f32>| a.mapv(f32::to_bits);
    for i in 0..30 {
        let mut c = case(&mut r, true);
        let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.supported()).collect();
        c.p.backend = Backend::EngineIsa(isas[i % isas.len()]);
        let f = |a: &Array4<f64>| a.mapv(|v| v as f32);
        let (x, off, mask, gy) = (f(&c.x), f(&c.off), f(&c.mask), f(&c.gy));
        // DCNv4's operand: each group's offsets then masks, padded to a multiple of 8.
        let pts = off.dim().3 / (2 * c.p.group as usize);
        let parts: Vec<_> = (0..c.p.group as usize)
            .flat_map(|g| {
                [
                    off.slice(s![.., .., .., 2 * g * pts..2 * (g + 1) * pts]),
                    mask.slice(s![.., .., .., g * pts..(g + 1) * pts]),
                ]
            })
            .collect();
        let mut om = ndarray::concatenate(ndarray::Axis(3), &parts).unwrap();
        let pad = om.dim().3.div_ceil(8) * 8 - om.dim().3;
        let (n, ho, wo, _) = om.dim();
        om = ndarray::concatenate(
            ndarray::Axis(3),
            &[om.view(), Array4::<f32>::zeros((n, ho, wo, pad)).view()],
        )
        .unwrap();
        let run = |stream: bool, threads: usize| {
            deform_conv::engine::stream_all(stream);
            set_num_threads(threads).unwrap();
            let g3 = dcnv3_backward(gy.view(), x.view(), off.view(), mask.view(), &c.p).unwrap();
            let g4 = dcnv4_backward(gy.view(), x.view(), om.view(), &c.p).unwrap();
            deform_conv::engine::stream_all(false);
            set_num_threads(0).unwrap();
            [
                bits(&g3.input),
                bits(&g3.offset),
                bits(&g3.mask),
                bits(&g4.offset_mask),
            ]
        };
        let direct = run(false, 1);
        for threads in [1, 3] {
            assert!(run(true, threads) == direct, "{threads} threads, {:?}", c.p);
        }
    }
}

/// Inputs of any strides (offsets and masks every other channel of a larger tensor, the input
/// transposed in memory): the engine reads them in place, with the reference's results.
#[test]
fn strided_inputs_match_the_reference() {
    let mut r = rng("dcnv3 strided_inputs_match_the_reference");
    for _ in 0..20 {
        let c = case(&mut r, false);
        let (n, ho, wo, co) = c.off.dim();
        let cm = c.mask.dim().3;
        let mut off2 = normal(&mut r, (n, ho, wo, 2 * co), 1.0);
        off2.slice_mut(s![.., .., .., ..;2]).assign(&c.off);
        let mut mask2 = normal(&mut r, (n, ho, wo, 2 * cm), 1.0);
        mask2.slice_mut(s![.., .., .., ..;2]).assign(&c.mask);
        let xt =
            c.x.clone()
                .permuted_axes([3, 2, 1, 0])
                .as_standard_layout()
                .into_owned();
        let x = xt.view().permuted_axes([3, 2, 1, 0]);
        let (off, mask) = (
            off2.slice(s![.., .., .., ..;2]),
            mask2.slice(s![.., .., .., ..;2]),
        );
        let reference = dcnv3(c.x.view(), c.off.view(), c.mask.view(), &c.p).unwrap();
        let g0 =
            dcnv3_backward(c.gy.view(), c.x.view(), c.off.view(), c.mask.view(), &c.p).unwrap();
        let p = Dcnv3Params {
            backend: Backend::Engine,
            ..c.p.clone()
        };
        let y = dcnv3(x, off, mask, &p).unwrap();
        let g = dcnv3_backward(c.gy.view(), x, off, mask, &p).unwrap();
        close("strided output", &y, &reference, 1e-12);
        close("strided grad input", &g.input, &g0.input, 1e-12);
        close("strided grad offset", &g.offset, &g0.offset, 1e-12);
        close("strided grad mask", &g.mask, &g0.mask, 1e-12);
    }
}

/// The forward's arithmetic, bit for bit: with offsets of quarters and masks of 1/4 to 1 every
/// position, corner and weight is exact, so each output is known exactly from the kernels'
/// contract: each point's sample `fma(w3, s3, fma(w2, s2, fma(w1, s1, w0*s0)))` (corners outside
/// read as zero), the points added in order. On every instruction set and for runs of 5, 8, 16,
/// 20 and 32 channels (the portable body with its tail, the explicit kernels), the input read in
/// place and, strided, through the image copy: a product and a sum in place of a fused corner
/// anywhere fails it.
#[test]
fn forward_samples_are_fused_chains_on_every_instruction_set() {
    let mut r = rng("dcnv3 forward_samples_are_fused_chains_on_every_instruction_set");
    let (h, w, g, points) = (5usize, 6usize, 2usize, 9usize);
    for d in [5usize, 8, 16, 20, 32] {
        let x = Array4::from_shape_simple_fn((1, h, w, g * d), || r.gen::<f32>() * 2.0 - 1.0);
        let off = Array4::from_shape_simple_fn((1, h, w, g * points * 2), || {
            r.gen_range(-8..=8) as f32 / 4.0
        });
        let mask =
            Array4::from_shape_simple_fn((1, h, w, g * points), || r.gen_range(1..=4) as f32 / 4.0);
        // The same input every other pixel of a wider tensor: not a run, so the image is copied.
        let mut wide = Array4::<f32>::zeros((1, h, 2 * w, g * d));
        wide.slice_mut(s![.., .., ..;2, ..]).assign(&x);
        let strided = wide.slice(s![.., .., ..;2, ..]);
        let mut want = Array4::<f32>::zeros((1, h, w, g * d));
        for ((_, oh, ow, ch), out) in want.indexed_iter_mut() {
            let (gi, c) = (ch / d, ch % d);
            let read = |yy: f32, xx: f32| {
                let inside = yy >= 0.0 && xx >= 0.0 && yy < h as f32 && xx < w as f32;
                if inside {
                    x[[0, yy as usize, xx as usize, gi * d + c]]
                } else {
                    0.0
                }
            };
            let sample = |p: usize| {
                let (i, j) = (p / 3, p % 3);
                let at = (gi * points + p) * 2;
                let y = (oh as f32 - 1.0) + (j as f32 + off[[0, oh, ow, at + 1]]);
                let xx = (ow as f32 - 1.0) + (i as f32 + off[[0, oh, ow, at]]);
                if !(y > -1.0 && xx > -1.0 && y < h as f32 && xx < w as f32) {
                    return 0.0f32;
                }
                let m = mask[[0, oh, ow, gi * points + p]];
                let (fy, fx) = (y.floor(), xx.floor());
                let (ly, lx) = (y - fy, xx - fx);
                let (hy, hx) = (1.0 - ly, 1.0 - lx);
                let wt = [m * (hy * hx), m * (hy * lx), m * (ly * hx), m * (ly * lx)];
                let v = [
                    read(fy, fx),
                    read(fy, fx + 1.0),
                    read(fy + 1.0, fx),
                    read(fy + 1.0, fx + 1.0),
                ];
                (1..4).fold(wt[0] * v[0], |acc, k| wt[k].mul_add(v[k], acc))
            };
            *out = (1..points).fold(sample(0), |s, p| s + sample(p));
        }
        for isa in Isa::ALL.into_iter().filter(|i| i.supported()) {
            let p = Dcnv3Params {
                group: g as i64,
                group_channels: d as i64,
                padding: [1, 1],
                backend: Backend::EngineIsa(isa),
                ..Default::default()
            };
            for (route, input) in [("in place", x.view()), ("copied", strided)] {
                let y = dcnv3(input, off.view(), mask.view(), &p).unwrap();
                let differ = y
                    .iter()
                    .zip(&want)
                    .filter(|(a, b)| a.to_bits() != b.to_bits());
                assert_eq!(differ.count(), 0, "{isa:?}, {route}, {d} channels a group");
            }
        }
    }
}

/// An image of 2^24 values, where the AVX-512 forward forms its indices in i32 instead of f32:
/// every instruction set's bits are the portable kernels', with samples outside on every side
/// and NaN offsets (a stride of 16 keeps the output small).
#[test]
fn an_image_of_two_to_the_24_values_gives_the_portable_bits() {
    let mut r = rng("dcnv3 an_image_of_two_to_the_24_values_gives_the_portable_bits");
    let (h, w, g, d) = (128usize, 2048usize, 4usize, 16usize);
    assert_eq!(h * w * g * d, 1 << 24);
    let x = Array4::from_shape_simple_fn((1, h, w, g * d), || r.gen::<f32>() * 2.0 - 1.0);
    let p = Dcnv3Params {
        group: g as i64,
        group_channels: d as i64,
        padding: [1, 1],
        stride: [16, 16],
        ..Default::default()
    };
    let (ho, wo) = ((h + 2 - 3) / 16 + 1, (w + 2 - 3) / 16 + 1);
    let off = Array4::from_shape_simple_fn((1, ho, wo, g * 18), || match r.gen_range(0..50) {
        0 => f32::NAN,
        1 => 1e9,
        _ => (r.gen::<f32>() * 2.0 - 1.0) * 24.0,
    });
    let mask = Array4::from_shape_simple_fn((1, ho, wo, g * 9), || r.gen::<f32>());
    let run = |isa: Isa| {
        let p = Dcnv3Params {
            backend: Backend::EngineIsa(isa),
            ..p.clone()
        };
        dcnv3(x.view(), off.view(), mask.view(), &p)
            .unwrap()
            .mapv(f32::to_bits)
    };
    let portable = run(Isa::Scalar);
    for isa in Isa::ALL.into_iter().filter(|i| i.supported()) {
        assert!(run(isa) == portable, "{isa:?}");
    }
}
