//! Property tests: gradients by finite differences in f64, edge offsets, and no panic on any input.

mod common;

use common::{problem, rng, Offsets, Problem};
use deform_conv::conventions::{mindspore, npu, onnx, torchvision, Layout};
use deform_conv::op::{self, Backend, ForwardOutputs, GradOutputs, Operands};
use deform_conv::{DeformParams, GradGate, OutputRounding, ShapeSet};
use ndarray::{Array1, Array4};
use proptest::prelude::*;
use rand::Rng;

fn operands(p: &Problem) -> Operands<'_, f64> {
    Operands {
        input: p.x.view(),
        offset_y: p.oy.view(),
        offset_x: p.ox.view(),
        mask: p.m.as_ref().map(|m| m.view()),
        weight: p.w.view(),
        bias: p.b.as_ref().map(|b| b.view()),
    }
}

fn forward(p: &Problem, backend: Backend) -> Array4<f64> {
    let mut y = Array4::from_elem(p.geom.output_shape(), f64::NAN);
    op::forward(
        &p.geom,
        &operands(p),
        ForwardOutputs {
            output: y.view_mut(),
            deformed: None,
        },
        backend,
    )
    .unwrap();
    y
}

struct Grads {
    x: Array4<f64>,
    oy: Array4<f64>,
    ox: Array4<f64>,
    m: Array4<f64>,
    w: Array4<f64>,
    b: Array1<f64>,
}

fn backward(p: &Problem, dy: &Array4<f64>, gate: GradGate, backend: Backend) -> Grads {
    let tap = p.geom.tap_shape();
    let mut g = Grads {
        x: Array4::from_elem(p.x.raw_dim(), f64::NAN),
        oy: Array4::from_elem(tap, f64::NAN),
        ox: Array4::from_elem(tap, f64::NAN),
        m: Array4::from_elem(tap, f64::NAN),
        w: Array4::from_elem(p.w.raw_dim(), f64::NAN),
        b: Array1::from_elem(p.geom.cout, f64::NAN),
    };
    op::backward(
        &p.geom,
        &operands(p),
        dy.view(),
        GradOutputs {
            input: Some(g.x.view_mut()),
            offset_y: Some(g.oy.view_mut()),
            offset_x: Some(g.ox.view_mut()),
            mask: p.m.is_some().then(|| g.m.view_mut()),
            weight: Some(g.w.view_mut()),
            bias: Some(g.b.view_mut()),
        },
        gate,
        backend,
    )
    .unwrap();
    g
}

/// Central difference of `loss = sum(Y * R)` along one element chosen by `pick`.
fn numeric(p: &Problem, r: &Array4<f64>, pick: impl Fn(&mut Problem) -> &mut f64) -> f64 {
    let eps = 1e-6;
    let mut q = p.clone();
    *pick(&mut q) += eps;
    let plus = (forward(&q, Backend::Reference) * r).sum();
    *pick(&mut q) -= 2.0 * eps;
    let minus = (forward(&q, Backend::Reference) * r).sum();
    (plus - minus) / (2.0 * eps)
}

fn check(what: &str, analytic: f64, numeric: f64) {
    assert!(
        (analytic - numeric).abs() <= 1e-6 * (1.0 + numeric.abs()),
        "{what}: analytic {analytic}, finite difference {numeric}"
    );
}

#[test]
fn gradients_match_finite_differences_f64() {
    let mut rng = rng("gradients_match_finite_differences_f64");
    for _ in 0..25 {
        let p = problem(&mut rng, Offsets::Smooth, 6);
        let r = common::normal(&mut rng, {
            let [a, b, c, d] = p.geom.output_shape();
            (a, b, c, d)
        });
        for backend in [Backend::Reference, Backend::Engine] {
            let g = backward(&p, &r, GradGate::PerTap, backend);
            for _ in 0..4 {
                let i = rng.gen_range(0..p.x.len());
                check(
                    "input",
                    g.x.as_slice().unwrap()[i],
                    numeric(&p, &r, |q| &mut q.x.as_slice_mut().unwrap()[i]),
                );
                let i = rng.gen_range(0..p.oy.len());
                check(
                    "offset y",
                    g.oy.as_slice().unwrap()[i],
                    numeric(&p, &r, |q| &mut q.oy.as_slice_mut().unwrap()[i]),
                );
                check(
                    "offset x",
                    g.ox.as_slice().unwrap()[i],
                    numeric(&p, &r, |q| &mut q.ox.as_slice_mut().unwrap()[i]),
                );
                if p.m.is_some() {
                    check(
                        "mask",
                        g.m.as_slice().unwrap()[i],
                        numeric(&p, &r, |q| {
                            &mut q.m.as_mut().unwrap().as_slice_mut().unwrap()[i]
                        }),
                    );
                }
                let i = rng.gen_range(0..p.w.len());
                check(
                    "weight",
                    g.w.as_slice().unwrap()[i],
                    numeric(&p, &r, |q| &mut q.w.as_slice_mut().unwrap()[i]),
                );
            }
            let want_b: Vec<f64> = (0..p.geom.cout)
                .map(|o| r.index_axis(ndarray::Axis(1), o).sum())
                .collect();
            for (a, n) in g.b.iter().zip(want_b) {
                check("bias", *a, n);
            }
        }
    }
}

/// NaN, infinite and huge offsets read as 0: the output equals the one with those samples'
/// masks set to 0, and every gradient stays finite with zero offset/mask gradient there.
#[test]
fn non_finite_and_huge_offsets_read_as_zero() {
    let mut rng = rng("non_finite_and_huge_offsets_read_as_zero");
    for _ in 0..40 {
        let mut p = problem(&mut rng, Offsets::Edges, 8);
        if p.m.is_none() {
            p.m = Some(Array4::ones(p.geom.tap_shape()));
        }
        let bad = |v: f64| !v.is_finite() || v.abs() > 1e20;
        let mut q = p.clone();
        let mask = q.m.as_mut().unwrap();
        for ((i, m), (oy, ox)) in mask
            .indexed_iter_mut()
            .zip(q.oy.iter_mut().zip(q.ox.iter_mut()))
        {
            if bad(*oy) || bad(*ox) {
                *m = 0.0;
                *oy = 0.0;
                *ox = 0.0;
                let _ = i;
            }
        }
        let r = common::normal(&mut rng, {
            let [a, b, c, d] = p.geom.output_shape();
            (a, b, c, d)
        });
        for backend in [Backend::Reference, Backend::Engine] {
            let (y, y0) = (forward(&p, backend), forward(&q, backend));
            for (a, b) in y.iter().zip(y0.iter()) {
                assert!(
                    a.is_finite() && (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
                    "{backend:?}: {a} vs {b}"
                );
            }
            for gate in [GradGate::PerTap, GradGate::Open] {
                let g = backward(&p, &r, gate, backend);
                for v in
                    g.x.iter()
                        .chain(g.oy.iter())
                        .chain(g.ox.iter())
                        .chain(g.m.iter())
                        .chain(g.w.iter())
                {
                    assert!(
                        v.is_finite(),
                        "{backend:?} {gate:?}: non-finite gradient {v}"
                    );
                }
                for ((oy, ox), (goy, (gox, gm))) in
                    p.oy.iter()
                        .zip(p.ox.iter())
                        .zip(g.oy.iter().zip(g.ox.iter().zip(g.m.iter())))
                {
                    if bad(*oy) || bad(*ox) {
                        assert_eq!((*goy, *gox, *gm), (0.0, 0.0, 0.0), "{backend:?} {gate:?}");
                    }
                }
            }
        }
    }
}

/// Cases per property: `default`, or `DEFORM_FUZZ_CASES` for a long fuzzing run (README).
fn fuzz_cases(default: u32) -> u32 {
    std::env::var("DEFORM_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn arb_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        -3i64..5,
        Just(i64::MAX),
        Just(i64::MIN),
        Just(1 << 40),
        Just(-(1 << 40))
    ]
}

fn arb_dim() -> impl Strategy<Value = usize> {
    prop_oneof![
        0usize..5,
        Just(7usize),
        Just(1 << 33),
        Just(usize::MAX),
        Just(usize::MAX / 3)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: fuzz_cases(3000), ..ProptestConfig::default() })]

    /// `validate` never panics, whatever the shapes and parameters.
    #[test]
    fn validate_never_panics(
        shapes in proptest::collection::vec(arb_dim(), 16),
        ints in proptest::collection::vec(arb_i64(), 12),
        per_tap in 0usize..4,
        trunc: bool,
        has_mask: bool,
    ) {
        let p = DeformParams {
            kernel: (ints[11] % 2 == 0).then_some([ints[0], ints[1]]),
            stride: [ints[2], ints[3]],
            padding: [ints[4], ints[5], ints[6], ints[7]],
            dilation: [ints[8], ints[9]],
            groups: ints[10],
            deformable_groups: ints[11],
            rounding: if trunc { OutputRounding::TruncateTowardZero } else { OutputRounding::Floor },
        };
        let s = ShapeSet {
            input: [shapes[0], shapes[1], shapes[2], shapes[3]],
            weight: [shapes[4], shapes[5], shapes[6], shapes[7]],
            offset: [shapes[8], shapes[9], shapes[10], shapes[11]],
            offset_per_tap: per_tap,
            mask: has_mask.then_some([shapes[12], shapes[13], shapes[14], shapes[15]]),
            bias: Some(shapes[0]),
        };
        let _ = p.validate(&s);
    }

    /// Every convention returns Ok or a clear error, never panics, on small random tensors
    /// with random parameters (mismatched shapes, zero sizes, negative values).
    #[test]
    fn conventions_never_panic(
        x in proptest::collection::vec(0usize..4, 4),
        w in proptest::collection::vec(0usize..4, 4),
        o in proptest::collection::vec(0usize..7, 4),
        m in proptest::collection::vec(0usize..4, 4),
        ints in proptest::collection::vec(-2i64..4, 10),
        val in prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(1e30), Just(0.5), Just(-1.0)],
        engine: bool,
    ) {
        let arr = |s: &[usize]| Array4::from_elem((s[0], s[1], s[2], s[3]), val);
        let (xa, wa, oa, ma) = (arr(&x), arr(&w), arr(&o), arr(&m));
        let ba = Array1::from_elem(w[0], 0.5);
        let backend = if engine { Backend::Engine } else { Backend::Reference };
        let tv = torchvision::Params { stride: [ints[0], ints[1]], padding: [ints[2], ints[3]], dilation: [ints[4], ints[5]], backend, ..Default::default() };
        let _ = torchvision::deform_conv2d(xa.view(), oa.view(), wa.view(), Some(ba.view()), Some(ma.view()), &tv);
        let _ = torchvision::deform_conv2d_backward(oa.view(), xa.view(), oa.view(), wa.view(), None, None, &tv);
        let on = onnx::Attributes { group: ints[6], offset_group: ints[7], pads: Some(vec![ints[2], ints[3], ints[8], ints[9]]), backend, ..Default::default() };
        let _ = onnx::deform_conv(xa.view(), wa.view(), oa.view(), None, Some(ma.view()), &on);
        let ms = mindspore::Attributes {
            kernel_size: vec![ints[8], ints[9]],
            strides: vec![1, 1, ints[0], ints[1]],
            padding: vec![ints[2], ints[3], ints[4], ints[5]],
            dilations: vec![1, ints[6].max(1), 1, 1],
            groups: ints[6],
            deformable_groups: ints[7],
            modulated: ints[9] != 0,
            backend,
        };
        let _ = mindspore::deformable_conv2d(xa.view(), wa.view(), oa.view(), Some(ba.view()), &ms);
        for layout in [Layout::Nchw, Layout::Nhwc] {
            let a = npu::NpuAttributes { attrs: ms.clone(), layout };
            let _ = npu::npu_deformable_conv2d(xa.view(), wa.view(), oa.view(), None, &a);
            let _ = npu::npu_deformable_conv2dbk(xa.view(), ma.view(), oa.view(), wa.view(), oa.view(), &a);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: fuzz_cases(400), ..ProptestConfig::default() })]

    /// Consistent shapes with empty axes allowed (no image, no output channel; no input channel is
    /// refused: torchvision derives the group count as C / weight.shape[1]):
    /// every path returns the reference's result, never panics (zero output channels divided by
    /// zero in the engine).
    #[test]
    fn valid_problems_with_empty_axes_match_the_reference(
        n in 0usize..3, gc in 1usize..3, cg in 1usize..3, dg in 1usize..3, og in 0usize..3,
        kh in 1usize..4, kw in 1usize..4, h in 1usize..6, w in 1usize..6,
        stride in 1i64..3, pad in 0i64..2, dil in 1i64..3, seed: u64,
    ) {
        use rand::SeedableRng;
        let c = gc * cg * dg;
        let cout = gc * og;
        let ho = (h as i64 + 2 * pad - dil * (kh as i64 - 1) - 1) / stride + 1;
        let wo = (w as i64 + 2 * pad - dil * (kw as i64 - 1) - 1) / stride + 1;
        prop_assume!(
            ho >= 1
                && wo >= 1
                && h as i64 + 2 * pad > dil * (kh as i64 - 1)
                && w as i64 + 2 * pad > dil * (kw as i64 - 1)
        );
        let (ho, wo) = (ho as usize, wo as usize);
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        let mut arr = |s: (usize, usize, usize, usize), scale: f64| {
            Array4::from_shape_simple_fn(s, || scale * (r.gen::<f64>() * 2.0 - 1.0))
        };
        let x = arr((n, c, h, w), 1.0);
        let wt = arr((cout, c / gc, kh, kw), 1.0);
        let off = arr((n, 2 * dg * kh * kw, ho, wo), 3.0);
        let m = arr((n, dg * kh * kw, ho, wo), 1.0);
        let gy = arr((n, cout, ho, wo), 1.0);
        let b = Array1::from_elem(cout, 0.25);
        let run = |backend| {
            let p = torchvision::Params { stride: [stride; 2], padding: [pad; 2], dilation: [dil; 2], backend, ..Default::default() };
            let y = torchvision::deform_conv2d(x.view(), off.view(), wt.view(), Some(b.view()), Some(m.view()), &p).unwrap();
            let g = torchvision::deform_conv2d_backward(gy.view(), x.view(), off.view(), wt.view(), Some(b.view()), Some(m.view()), &p).unwrap();
            (y, g)
        };
        let (y0, g0) = run(Backend::Reference);
        prop_assert_eq!(y0.shape(), &[n, cout, ho, wo]);
        let close = |a: &Array4<f64>, b: &Array4<f64>| a.shape() == b.shape()
            && a.iter().zip(b.iter()).all(|(p, q)| (p - q).abs() <= 1e-9 * (1.0 + q.abs()));
        let mut backends = vec![Backend::Engine];
        backends.extend(deform_conv::engine::Isa::ALL.into_iter().filter(|i| i.supported()).map(Backend::EngineIsa));
        for backend in backends {
            let (y, g) = run(backend);
            prop_assert!(close(&y, &y0), "{:?} output", backend);
            prop_assert!(close(&g.input, &g0.input), "{:?} grad input", backend);
            prop_assert!(close(&g.offset, &g0.offset), "{:?} grad offset", backend);
            prop_assert!(close(&g.weight, &g0.weight), "{:?} grad weight", backend);
        }
    }
}
