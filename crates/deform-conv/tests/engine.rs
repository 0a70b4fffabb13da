//! The engine against the reference oracle: random shapes (channel counts off the SIMD width,
//! 1x1 images, several tiles and lanes), every edge offset, f32 and f64, every instruction set
//! this CPU has, outputs poisoned with NaN before the kernels write them; and determinism.

mod common;

use common::{problem_shaped, problem_sized, rng, Offsets, Problem};
use deform_conv::engine::{set_num_threads, with_executor, Executor, Isa, Task};
use std::sync::Arc;

/// An executor as a host might bring: 3 threads of its own, tasks dealt round-robin and each
/// thread's share run in reverse order, so that the order differs from rayon's.
struct Scrambled;

impl Executor for Scrambled {
    fn threads(&self) -> usize {
        3
    }
    fn run(&self, n: usize, f: Task<'_>) {
        std::thread::scope(|s| {
            for w in 0..3 {
                s.spawn(move || {
                    for i in (w..n).step_by(3).collect::<Vec<_>>().into_iter().rev() {
                        f(i, w);
                    }
                });
            }
        });
    }
}
use deform_conv::op::{self, Backend, ForwardOutputs, GradOutputs, Operands};
use deform_conv::{Element, GradGate};
use ndarray::{s, Array1, Array4};

struct Out<T> {
    y: Array4<T>,
    d: Array4<T>,
    gx: Array4<T>,
    goy: Array4<T>,
    gox: Array4<T>,
    gm: Array4<T>,
    gw: Array4<T>,
    gb: Array1<T>,
}

fn cast<T: Element>(a: &Array4<f64>) -> Array4<T> {
    a.mapv(|v| T::from_acc(num_traits::cast::<f64, T::Acc>(v).unwrap()))
}

/// How the input image is held in memory.
#[derive(Clone, Copy, Debug)]
enum InputLayout {
    /// Standard NCHW.
    Contiguous,
    /// NHWC memory seen as NCHW (torch's `channels_last`).
    ChannelsLast,
    /// A view into wider rows (`[N, C, H, W + 3]`, columns 1..W+1): no image is contiguous.
    Sliced,
}

fn run<T: Element + num_traits::Float>(
    p: &Problem,
    dy: &Array4<f64>,
    gate: GradGate,
    backend: Backend,
) -> Out<T> {
    run_on(p, dy, gate, backend, InputLayout::Contiguous)
}

fn run_on<T: Element + num_traits::Float>(
    p: &Problem,
    dy: &Array4<f64>,
    gate: GradGate,
    backend: Backend,
    layout: InputLayout,
) -> Out<T> {
    run_wanting(p, dy, gate, backend, layout, Wanted::ALL)
}

/// Which gradients a backward call asks for (the others stay NaN in `Out`).
#[derive(Clone, Copy, Debug)]
struct Wanted {
    input: bool,
    offset_mask: bool,
    weight: bool,
    bias: bool,
}

impl Wanted {
    const ALL: Wanted = Wanted {
        input: true,
        offset_mask: true,
        weight: true,
        bias: true,
    };
}

fn run_wanting<T: Element + num_traits::Float>(
    p: &Problem,
    dy: &Array4<f64>,
    gate: GradGate,
    backend: Backend,
    layout: InputLayout,
    want: Wanted,
) -> Out<T> {
    let (x, w, oy, ox) = (
        cast::<T>(&p.x),
        cast::<T>(&p.w),
        cast::<T>(&p.oy),
        cast::<T>(&p.ox),
    );
    // The input's memory: only the layout asked for is built.
    let (n, c, h, wd) = x.dim();
    let held = match layout {
        InputLayout::Contiguous => None,
        InputLayout::ChannelsLast => Some(
            x.view()
                .permuted_axes([0, 2, 3, 1])
                .as_standard_layout()
                .into_owned(),
        ),
        InputLayout::Sliced => {
            let mut wide = Array4::from_elem((n, c, h, wd + 3), T::nan());
            wide.slice_mut(s![.., .., .., 1..wd + 1]).assign(&x);
            Some(wide)
        }
    };
    let input = match (layout, &held) {
        (InputLayout::ChannelsLast, Some(nhwc)) => nhwc.view().permuted_axes([0, 3, 1, 2]),
        (InputLayout::Sliced, Some(wide)) => wide.slice(s![.., .., .., 1..wd + 1]),
        _ => x.view(),
    };
    let m = p.m.as_ref().map(cast::<T>);
    let b =
        p.b.as_ref()
            .map(|b| b.mapv(|v| T::from_acc(num_traits::cast::<f64, T::Acc>(v).unwrap())));
    let ops = Operands {
        input,
        offset_y: oy.view(),
        offset_x: ox.view(),
        mask: m.as_ref().map(|m| m.view()),
        weight: w.view(),
        bias: b.as_ref().map(|b| b.view()),
    };
    let g = &p.geom;
    let nan = T::nan();
    let tap = g.tap_shape();
    let mut o = Out {
        y: Array4::from_elem(g.output_shape(), nan),
        d: Array4::from_elem(g.deformed_shape(), nan),
        gx: Array4::from_elem(x.raw_dim(), nan),
        goy: Array4::from_elem(tap, nan),
        gox: Array4::from_elem(tap, nan),
        gm: Array4::from_elem(tap, nan),
        gw: Array4::from_elem(w.raw_dim(), nan),
        gb: Array1::from_elem(g.cout, nan),
    };
    op::forward(
        g,
        &ops,
        ForwardOutputs {
            output: o.y.view_mut(),
            deformed: Some(o.d.view_mut()),
        },
        backend,
    )
    .unwrap();
    let dyt = cast::<T>(dy);
    op::backward(
        g,
        &ops,
        dyt.view(),
        GradOutputs {
            input: want.input.then(|| o.gx.view_mut()),
            offset_y: want.offset_mask.then(|| o.goy.view_mut()),
            offset_x: want.offset_mask.then(|| o.gox.view_mut()),
            mask: (want.offset_mask && m.is_some()).then(|| o.gm.view_mut()),
            weight: want.weight.then(|| o.gw.view_mut()),
            bias: want.bias.then(|| o.gb.view_mut()),
        },
        gate,
        backend,
    )
    .unwrap();
    if m.is_none() && want.offset_mask {
        o.gm.fill(T::zero());
    }
    o
}

/// Elementwise `|a - b| <= tol * (1 + max|b|)`, NaN-aware (a NaN where the oracle has a number fails).
fn close<T: Element + num_traits::Float, D: ndarray::Dimension>(
    what: &str,
    a: &ndarray::Array<T, D>,
    b: &ndarray::Array<T, D>,
    tol: f64,
) {
    close_within(what, a, b, tol, 0.0)
}

/// [`close`] with an absolute `slack` on top: `|a - b| <= tol * (1 + max|b|) + slack`.
fn close_within<T: Element + num_traits::Float, D: ndarray::Dimension>(
    what: &str,
    a: &ndarray::Array<T, D>,
    b: &ndarray::Array<T, D>,
    tol: f64,
    slack: f64,
) {
    let f = |v: &T| num_traits::cast::<T, f64>(*v).unwrap();
    let scale = b
        .iter()
        .map(f)
        .filter(|v| v.is_finite())
        .fold(0.0f64, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().map(f).zip(b.iter().map(f)).enumerate() {
        assert!(
            x.is_finite() == y.is_finite(),
            "{what}[{i}]: engine {x}, reference {y}"
        );
        if y.is_finite() {
            assert!(
                (x - y).abs() <= tol * (1.0 + scale) + slack,
                "{what}[{i}]: engine {x}, reference {y}, scale {scale}"
            );
        }
    }
}

/// The engine's results against the reference's, each within `tol` of the tensor's scale; the
/// bias gradient (a sum of the output gradient over every image and pixel, in another order
/// than the reference's) also within one rounding of `T` per unit of its terms' magnitudes.
fn compare<T: Element + num_traits::Float>(e: &Out<T>, r: &Out<T>, tol: f64, dy: &Array4<f64>) {
    close("output", &e.y, &r.y, tol);
    close("deformed", &e.d, &r.d, tol);
    close("grad input", &e.gx, &r.gx, tol);
    close("grad offset y", &e.goy, &r.goy, tol);
    close("grad offset x", &e.gox, &r.gox, tol);
    close("grad mask", &e.gm, &r.gm, tol);
    close("grad weight", &e.gw, &r.gw, tol);
    let mass = (0..dy.dim().1)
        .map(|c| {
            dy.slice(ndarray::s![.., c, .., ..])
                .iter()
                .map(|v| v.abs())
                .sum::<f64>()
        })
        .fold(0.0f64, f64::max);
    let eps = num_traits::cast::<T, f64>(T::epsilon()).unwrap();
    close_within("grad bias", &e.gb, &r.gb, tol, eps * mass);
}

fn bitwise<T: Element + num_traits::Float>(a: &Out<T>, b: &Out<T>) -> bool {
    let eq = |x: &Array4<T>, y: &Array4<T>| {
        x.iter().zip(y.iter()).all(|(p, q)| {
            p.to_acc().to_f64().unwrap().to_bits() == q.to_acc().to_f64().unwrap().to_bits()
        })
    };
    eq(&a.y, &b.y)
        && eq(&a.d, &b.d)
        && eq(&a.gx, &b.gx)
        && eq(&a.goy, &b.goy)
        && eq(&a.gox, &b.gox)
        && eq(&a.gm, &b.gm)
        && eq(&a.gw, &b.gw)
        && a.gb.iter().zip(b.gb.iter()).all(|(p, q)| {
            p.to_acc().to_f64().unwrap().to_bits() == q.to_acc().to_f64().unwrap().to_bits()
        })
}

use num_traits::ToPrimitive;

/// A random output gradient for problem `p`.
fn grad_output(rng: &mut rand::rngs::StdRng, p: &Problem) -> Array4<f64> {
    let [a, b, c, d] = p.geom.output_shape();
    common::normal(rng, (a, b, c, d))
}

/// The engine's f32 results (per-tap gate) with `threads` rayon threads.
fn on_threads(p: &Problem, dy: &Array4<f64>, threads: usize) -> Out<f32> {
    set_num_threads(threads).unwrap();
    run::<f32>(p, dy, GradGate::PerTap, Backend::Engine)
}

#[test]
fn engine_matches_reference_on_every_isa() {
    let mut rng = rng("engine_matches_reference_on_every_isa");
    let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.supported()).collect();
    eprintln!("instruction sets under test: {isas:?}");
    for case in 0..30 {
        let (max_c, max_hw) = if case % 3 == 0 { (40, 40) } else { (12, 12) };
        let p = problem_sized(&mut rng, Offsets::Edges, max_c, max_hw);
        let dy = grad_output(&mut rng, &p);
        for gate in [GradGate::PerTap, GradGate::Open] {
            let r64 = run::<f64>(&p, &dy, gate, Backend::Reference);
            let r32 = run::<f32>(&p, &dy, gate, Backend::Reference);
            let mut first: Option<(Out<f64>, Out<f32>)> = None;
            for &isa in &isas {
                let e64 = run::<f64>(&p, &dy, gate, Backend::EngineIsa(isa));
                compare(&e64, &r64, 1e-12, &dy);
                let e32 = run::<f32>(&p, &dy, gate, Backend::EngineIsa(isa));
                compare(&e32, &r32, 2e-5, &dy);
                match &first {
                    None => first = Some((e64, e32)),
                    Some((a, b)) => assert!(
                        bitwise(a, &e64) && bitwise(b, &e32),
                        "{isa:?} differs bitwise from {:?}",
                        isas[0]
                    ),
                }
            }
        }
    }
}

/// Wider layers: up to 40 output channels per group (the grad-weight unpack works in blocks
/// of 16 output channels), up to 5 images (more images than backward lanes), and deformable
/// groups of any width, on every instruction set.
#[test]
fn engine_matches_reference_on_wide_layers() {
    let mut rng = rng("engine_matches_reference_on_wide_layers");
    for _ in 0..8 {
        let p = problem_shaped(&mut rng, Offsets::Edges, 48, 14, 40, 5);
        let dy = grad_output(&mut rng, &p);
        every_isa_matches_reference(&p, &dy, |_| {});
    }
}

/// Groups whose channel runs are multiples of 16 (16 to 96 channels: the AVX-512 backward row's
/// unrolled and looped runs), samples at and far outside the edges: every instruction set
/// against the reference, and the same bits on each.
#[test]
fn engine_matches_reference_on_runs_of_16_channels() {
    runs_agree_on_every_isa(
        "engine_matches_reference_on_runs_of_16_channels",
        4,
        |per_group, per_offset_group| {
            (per_group.is_multiple_of(16) && per_offset_group.is_multiple_of(16))
                .then(|| per_group.min(per_offset_group))
        },
    );
}

/// Deformable groups of exactly 8, 16 and 32 channels (the fixed-length gathers of the AVX2
/// and AVX-512 tables), inside conv groups of a multiple of them: every instruction set
/// against the reference, and the same bits on each.
#[test]
fn engine_matches_reference_on_offset_groups_of_8_16_32_channels() {
    runs_agree_on_every_isa(
        "engine_matches_reference_on_offset_groups_of_8_16_32_channels",
        3,
        |per_group, per_offset_group| {
            (matches!(per_offset_group, 8 | 16 | 32) && per_group.is_multiple_of(per_offset_group))
                .then_some(per_offset_group)
        },
    );
}

/// Random layers until `distinct` different keys were tested; `key(channels per group,
/// channels per deformable group)` picks the layers (`None`: skipped) and names their case.
fn runs_agree_on_every_isa(
    name: &str,
    distinct: usize,
    key: impl Fn(usize, usize) -> Option<usize>,
) {
    let mut rng = rng(name);
    let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.supported()).collect();
    let mut runs = std::collections::BTreeSet::new();
    while runs.len() < distinct {
        let p = problem_shaped(&mut rng, Offsets::Edges, 96, 8, 20, 2);
        let c = p.x.shape()[1];
        let (gc, g) = (
            p.params.groups as usize,
            p.params.deformable_groups as usize,
        );
        let Some(case) = key(c / gc, c / g) else {
            continue;
        };
        runs.insert(case);
        let dy = grad_output(&mut rng, &p);
        for gate in [GradGate::PerTap, GradGate::Open] {
            let r32 = run::<f32>(&p, &dy, gate, Backend::Reference);
            let mut first: Option<Out<f32>> = None;
            for &isa in &isas {
                let e32 = run::<f32>(&p, &dy, gate, Backend::EngineIsa(isa));
                compare(&e32, &r32, 2e-5, &dy);
                match &first {
                    None => first = Some(e32),
                    Some(a) => assert!(bitwise(a, &e32), "{isa:?} differs bitwise"),
                }
            }
        }
    }
}

/// Under both gradient gates, every supported instruction set against the reference (f32, within
/// 2e-5), after `check` has looked at the reference's result.
fn every_isa_matches_reference(p: &Problem, dy: &Array4<f64>, check: impl Fn(&Out<f32>)) {
    let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.supported()).collect();
    for gate in [GradGate::PerTap, GradGate::Open] {
        let r32 = run::<f32>(p, dy, gate, Backend::Reference);
        check(&r32);
        for &isa in &isas {
            compare(
                &run::<f32>(p, dy, gate, Backend::EngineIsa(isa)),
                &r32,
                2e-5,
                dy,
            );
        }
    }
}

/// Layers with few tiles and many output channels (up to 200 per group on small images) take
/// the forward's split schedule (GEMMs by blocks of output channels): against the reference,
/// the same bits on every instruction set, and the deformed image too.
#[test]
fn engine_matches_reference_on_split_waves() {
    let mut rng = rng("engine_matches_reference_on_split_waves");
    let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.supported()).collect();
    for _ in 0..8 {
        let p = problem_shaped(&mut rng, Offsets::Edges, 12, 10, 200, 2);
        let dy = grad_output(&mut rng, &p);
        let r32 = run::<f32>(&p, &dy, GradGate::PerTap, Backend::Reference);
        let mut first: Option<Out<f32>> = None;
        for &isa in &isas {
            let e32 = run::<f32>(&p, &dy, GradGate::PerTap, Backend::EngineIsa(isa));
            compare(&e32, &r32, 2e-5, &dy);
            match &first {
                None => first = Some(e32),
                Some(a) => assert!(bitwise(a, &e32), "{isa:?} differs bitwise"),
            }
        }
        // The split is chosen from the shape, never from the thread count.
        let (one, three) = (on_threads(&p, &dy, 1), on_threads(&p, &dy, 3));
        set_num_threads(0).unwrap();
        assert!(bitwise(&one, &three), "results depend on the thread count");
    }
}

/// `p` on 1 thread against the f32 reference, and the same bits on 3 threads.
fn matches_reference_on_1_and_3_threads(rng: &mut rand::rngs::StdRng, p: &Problem) {
    let dy = grad_output(rng, p);
    let r32 = run::<f32>(p, &dy, GradGate::PerTap, Backend::Reference);
    let (one, three) = (on_threads(p, &dy, 1), on_threads(p, &dy, 3));
    set_num_threads(0).unwrap();
    compare(&one, &r32, 2e-5, &dy);
    assert!(bitwise(&one, &three), "results depend on the thread count");
}

/// Many small images of one conv group (more images than backward lanes, one tile each): the
/// backward's weight-sized GEMMs run once per wave of images, split by blocks of the weight;
/// against the reference, and the same bits on 1 and 3 threads.
#[test]
fn engine_matches_reference_on_many_small_images() {
    let mut rng = rng("engine_matches_reference_on_many_small_images");
    let mut cases = 0;
    while cases < 6 {
        let p = problem_shaped(&mut rng, Offsets::Edges, 12, 8, 100, 9);
        if p.geom.n < 5 || p.geom.groups != 1 {
            continue;
        }
        cases += 1;
        matches_reference_on_1_and_3_threads(&mut rng, &p);
    }
}

/// One small image of one conv group with a long `K*C` (several weight blocks): the backward's
/// descriptor pass runs in row ranges with their own input gradients, summed in range order;
/// against the reference, and the same bits on 1 and 3 threads.
#[test]
fn engine_matches_reference_on_one_small_image() {
    let mut rng = rng("engine_matches_reference_on_one_small_image");
    let mut cases = 0;
    while cases < 6 {
        let p = problem_shaped(&mut rng, Offsets::Edges, 48, 12, 60, 1);
        let g = &p.geom;
        if g.n != 1 || g.groups != 1 || g.taps() * g.c < 64 {
            continue;
        }
        cases += 1;
        matches_reference_on_1_and_3_threads(&mut rng, &p);
    }
}

/// Two or three images of several tiles each (at least 1100 output pixels: 5+ tiles of 256):
/// the backward's lanes split each image's rows, two lanes per image for two images, the
/// images of a wave side by side; against the reference, and the same bits on 1 and 3 threads.
#[test]
fn engine_matches_reference_on_a_few_large_images() {
    let mut rng = rng("engine_matches_reference_on_a_few_large_images");
    let mut cases = 0;
    while cases < 4 {
        let p = problem_shaped(&mut rng, Offsets::Edges, 8, 48, 8, 3);
        let g = &p.geom;
        if !(2..=3).contains(&g.n) || g.ho * g.wo < 1100 {
            continue;
        }
        cases += 1;
        matches_reference_on_1_and_3_threads(&mut rng, &p);
    }
}

/// Images whose input gradient several backward lanes share (one to three images of several
/// tiles; one image of one tile, split in row ranges), with at least 32 channels per deformable
/// group: each lane zeroes its rows of `dX` on first touch, and offsets of N(0, 2^2), huge and
/// NaN send later rows above and below what a lane touched first. Against the reference, and the
/// same bits on 1 and 3 threads; every scratch buffer starts as NaN (`common::rng`).
#[test]
fn input_gradient_rows_zeroed_on_first_touch() {
    let mut rng = rng("input_gradient_rows_zeroed_on_first_touch");
    let (mut tiled, mut single) = (0, 0);
    while tiled < 4 || single < 3 {
        let p = problem_shaped(&mut rng, Offsets::Edges, 96, 40, 6, 3);
        let g = &p.geom;
        if g.c_per_deformable_group() < 32 || g.ho < 4 {
            continue;
        }
        if g.ho * g.wo > 300 && tiled < 4 {
            tiled += 1;
        } else if g.n == 1 && g.groups == 1 && g.ho * g.wo <= 200 && single < 3 {
            single += 1;
        } else {
            continue;
        }
        matches_reference_on_1_and_3_threads(&mut rng, &p);
    }
}

/// The input read in place whatever its strides: a channels-last image and a sliced view give
/// the same bits as the contiguous image, forward and backward, on every instruction set
/// (images of up to 40 channels per deformable group: the channels-last copy's 8-channel blocks
/// and their tails).
#[test]
fn input_strides_do_not_change_the_bits() {
    let mut rng = rng("input_strides_do_not_change_the_bits");
    let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.supported()).collect();
    for _ in 0..10 {
        let p = problem_shaped(&mut rng, Offsets::Edges, 40, 12, 12, 3);
        let dy = grad_output(&mut rng, &p);
        for &isa in &isas {
            let b = Backend::EngineIsa(isa);
            let base = run_on::<f32>(&p, &dy, GradGate::PerTap, b, InputLayout::Contiguous);
            for layout in [InputLayout::ChannelsLast, InputLayout::Sliced] {
                let other = run_on::<f32>(&p, &dy, GradGate::PerTap, b, layout);
                assert!(bitwise(&base, &other), "{layout:?} differs on {isa:?}");
            }
        }
    }
}

#[test]
fn unsupported_isa_is_an_error_not_a_crash() {
    for isa in Isa::ALL.into_iter().filter(|i| !i.supported()) {
        let mut rng = rng("unsupported_isa");
        let p = problem_sized(&mut rng, Offsets::Smooth, 4, 5);
        let ops = Operands {
            input: p.x.view(),
            offset_y: p.oy.view(),
            offset_x: p.ox.view(),
            mask: None,
            weight: p.w.view(),
            bias: None,
        };
        let mut y = Array4::zeros(p.geom.output_shape());
        let r = op::forward(
            &p.geom,
            &ops,
            ForwardOutputs {
                output: y.view_mut(),
                deformed: None,
            },
            Backend::EngineIsa(isa),
        );
        assert!(r.is_err(), "{isa:?} is not supported here but ran");
    }
}

#[test]
fn deterministic_across_runs_and_thread_counts() {
    let mut rng = rng("deterministic_across_runs_and_thread_counts");
    for _ in 0..6 {
        let p = problem_sized(&mut rng, Offsets::Edges, 24, 48);
        let dy = grad_output(&mut rng, &p);
        let one = on_threads(&p, &dy, 1);
        let two = on_threads(&p, &dy, 2);
        let three = on_threads(&p, &dy, 3);
        assert!(
            bitwise(&one, &two) && bitwise(&two, &three),
            "results depend on the thread count"
        );
    }
    set_num_threads(0).unwrap();
}

/// Half storage, f32 arithmetic: against the f64 reference on the same (half-rounded) inputs,
/// every output and gradient is within the output's rounding (2^-11 for f16, 2^-8 for bf16,
/// relative) plus f32 accumulation error, on every instruction set.
#[test]
fn half_storage_is_f32_exact_up_to_output_rounding() {
    fn check<H: Element + num_traits::Float>(name: &str, p: &Problem, dy: &Array4<f64>, eps: f64) {
        let round =
            |a: &Array4<f64>| a.mapv(|v| num_traits::cast::<H, f64>(cast_one::<H>(v)).unwrap());
        let mut q = p.clone();
        q.x = round(&p.x);
        q.w = round(&p.w);
        q.oy = round(&p.oy);
        q.ox = round(&p.ox);
        q.m = p.m.as_ref().map(round);
        q.b =
            p.b.as_ref()
                .map(|b| b.mapv(|v| num_traits::cast::<H, f64>(cast_one::<H>(v)).unwrap()));
        let dy = round(dy);
        let r = run::<f64>(&q, &dy, GradGate::PerTap, Backend::Reference);
        for isa in Isa::ALL.into_iter().filter(|i| i.supported()) {
            let e = run::<H>(&q, &dy, GradGate::PerTap, Backend::EngineIsa(isa));
            let pairs: [(&str, Vec<f64>, Vec<f64>); 6] = [
                (
                    "output",
                    e.y.iter().map(|v| v.to_f64().unwrap()).collect(),
                    r.y.iter().copied().collect(),
                ),
                (
                    "grad input",
                    e.gx.iter().map(|v| v.to_f64().unwrap()).collect(),
                    r.gx.iter().copied().collect(),
                ),
                (
                    "grad offset y",
                    e.goy.iter().map(|v| v.to_f64().unwrap()).collect(),
                    r.goy.iter().copied().collect(),
                ),
                (
                    "grad offset x",
                    e.gox.iter().map(|v| v.to_f64().unwrap()).collect(),
                    r.gox.iter().copied().collect(),
                ),
                (
                    "grad mask",
                    e.gm.iter().map(|v| v.to_f64().unwrap()).collect(),
                    r.gm.iter().copied().collect(),
                ),
                (
                    "grad weight",
                    e.gw.iter().map(|v| v.to_f64().unwrap()).collect(),
                    r.gw.iter().copied().collect(),
                ),
            ];
            for (what, got, want) in pairs {
                let scale = want
                    .iter()
                    .filter(|v| v.is_finite())
                    .fold(0.0f64, |m, v| m.max(v.abs()));
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        g.is_finite() == w.is_finite(),
                        "{name} {isa:?} {what}[{i}]: {g} vs {w}"
                    );
                    if w.is_finite() {
                        assert!(
                            (g - w).abs() <= eps * w.abs() + 2e-5 * (1.0 + scale),
                            "{name} {isa:?} {what}[{i}]: {g} vs {w} (scale {scale})"
                        );
                    }
                }
            }
        }
    }
    let mut rng = rng("half_storage_is_f32_exact_up_to_output_rounding");
    for _ in 0..12 {
        let p = problem_sized(&mut rng, Offsets::Edges, 20, 16);
        let dy = grad_output(&mut rng, &p);
        check::<half::f16>("f16", &p, &dy, 2f64.powi(-11));
        check::<half::bf16>("bf16", &p, &dy, 2f64.powi(-8));
    }
}

fn cast_one<H: Element>(v: f64) -> H {
    H::from_acc(num_traits::cast::<f64, H::Acc>(v).unwrap())
}

/// A forced instruction set is really the one that runs: each names its kernels, and the
/// AVX-512 f32 table (its zmm panel GEMM) is taken on a CPU that has AVX-512.
#[test]
fn forced_isa_runs_its_own_kernels() {
    use deform_conv::engine::kernels_name;
    for isa in Isa::ALL {
        let (n32, n64) = (kernels_name::<f32>(isa), kernels_name::<f64>(isa));
        assert_eq!(n32.is_some(), isa.supported(), "{isa:?}");
        if let (Some(a), Some(b)) = (n32, n64) {
            assert!(
                a.starts_with(isa.name()) && b.starts_with(isa.name()),
                "{isa:?}: {a} / {b}"
            );
        }
    }
    if Isa::Avx512.supported() {
        assert!(kernels_name::<f32>(Isa::Avx512)
            .unwrap()
            .contains("zmm panel GEMM"));
        assert!(kernels_name::<f64>(Isa::Avx512)
            .unwrap()
            .contains("portable"));
    }
}

/// A layer large enough for the GEMM to use its own parallel path: results are still bitwise
/// identical for 1, 2 and 3 threads and for a host executor that runs tasks in another order.
#[test]
fn deterministic_on_a_large_layer() {
    use deform_conv::conventions::torchvision::{deform_conv2d, deform_conv2d_backward, Params};
    let mut rng = rng("deterministic_on_a_large_layer");
    let x = common::normal(&mut rng, (2, 256, 16, 16)).mapv(|v| v as f32);
    let w = common::normal(&mut rng, (256, 256, 3, 3)).mapv(|v| v as f32 * 0.02);
    let off = common::normal(&mut rng, (2, 18, 8, 8)).mapv(|v| v as f32 * 2.0);
    let m = common::normal(&mut rng, (2, 9, 8, 8)).mapv(|v| v as f32);
    let gy = common::normal(&mut rng, (2, 256, 8, 8)).mapv(|v| v as f32);
    let p = Params {
        stride: [2, 2],
        padding: [1, 1],
        ..Params::default()
    };
    let run = || {
        let y = deform_conv2d(x.view(), off.view(), w.view(), None, Some(m.view()), &p).unwrap();
        let g = deform_conv2d_backward(
            gy.view(),
            x.view(),
            off.view(),
            w.view(),
            None,
            Some(m.view()),
            &p,
        )
        .unwrap();
        (y, g.input, g.offset, g.weight)
    };
    let mut results = vec![];
    for t in [1, 2, 3] {
        set_num_threads(t).unwrap();
        results.push(run());
    }
    set_num_threads(0).unwrap();
    // A host's executor of its own: tasks dealt round-robin to 3 threads, each in reverse order.
    results.push(with_executor(Arc::new(Scrambled), run));
    let bits = |a: &Array4<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    for r in &results[1..] {
        assert!(bits(&r.0) == bits(&results[0].0) && bits(&r.1) == bits(&results[0].1));
        assert!(bits(&r.2) == bits(&results[0].2) && bits(&r.3) == bits(&results[0].3));
    }
}

/// A sample exactly on -1 has no value (the forward's column holds +0) but, under the per-tap
/// gate, real corners for its offset gradients. With infinite input pixels at those corners the
/// weight gradient must still meet the forward's +0 there, not `0 * inf = NaN`. Row 0 of the
/// input is infinite; the samples of output row 0 land exactly on -1 and every other sample half
/// a row below its pixel, so no sample with a value touches row 0 and the reference's `dW` is
/// finite. Both backward schedules (one conv group: whole images; two: tiles of rows).
#[test]
fn samples_on_minus_one_keep_the_weight_gradient_finite() {
    use deform_conv::{DeformParams, OutputRounding, ShapeSet};
    let mut rng = rng("samples_on_minus_one_keep_the_weight_gradient_finite");
    for (n, groups) in [(1usize, 1usize), (3, 1), (1, 2), (3, 2)] {
        let (c, h, w, cout) = (4, 5, 6, 4);
        let params = DeformParams {
            kernel: None,
            stride: [1, 1],
            padding: [0; 4],
            dilation: [1, 1],
            groups: groups as i64,
            deformable_groups: 1,
            rounding: OutputRounding::Floor,
        };
        let geom = params
            .validate(&ShapeSet {
                input: [n, c, h, w],
                weight: [cout, c / groups, 1, 1],
                offset: [n, 1, h, w],
                offset_per_tap: 1,
                mask: None,
                bias: None,
            })
            .expect("a valid problem");
        let mut x = common::normal(&mut rng, (n, c, h, w));
        x.slice_mut(s![.., .., 0, ..]).fill(f64::INFINITY);
        let p = Problem {
            params,
            geom,
            x,
            w: common::normal(&mut rng, (cout, c / groups, 1, 1)),
            b: Some(Array1::from_elem(cout, 0.5)),
            oy: Array4::from_shape_fn(
                (n, 1, h, w),
                |(_, _, oh, _)| {
                    if oh == 0 {
                        -1.0
                    } else {
                        0.5
                    }
                },
            ),
            ox: Array4::from_elem((n, 1, h, w), 0.25),
            m: Some(Array4::from_elem((n, 1, h, w), 0.75)),
        };
        let dy = grad_output(&mut rng, &p);
        every_isa_matches_reference(&p, &dy, |r32| {
            assert!(r32.gw.iter().all(|v| v.is_finite()), "the reference's dW");
        });
    }
}

/// Any subset of the gradients: each one asked for has the full call's bits, and nothing else is
/// written. Without `dX` the backward's fused row kernel runs without its scatter; without `dW`
/// the descriptor pass builds no columns.
#[test]
fn any_subset_of_gradients_has_the_full_calls_bits() {
    let mut rng = rng("any_subset_of_gradients_has_the_full_calls_bits");
    let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.supported()).collect();
    let bits = |a: &Array4<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let untouched = |a: &Array4<f32>| a.iter().all(|v| v.is_nan());
    for case in 0..12 {
        // Every other case has several tiles per image (the row-split backward).
        let p = problem_sized(
            &mut rng,
            Offsets::Edges,
            24,
            if case % 2 == 0 { 12 } else { 40 },
        );
        let dy = grad_output(&mut rng, &p);
        for &isa in &isas {
            let backend = Backend::EngineIsa(isa);
            let full = run::<f32>(&p, &dy, GradGate::PerTap, backend);
            for bitsel in 1..16u32 {
                let want = Wanted {
                    input: bitsel & 1 != 0,
                    offset_mask: bitsel & 2 != 0,
                    weight: bitsel & 4 != 0,
                    bias: bitsel & 8 != 0,
                };
                let part = run_wanting::<f32>(
                    &p,
                    &dy,
                    GradGate::PerTap,
                    backend,
                    InputLayout::Contiguous,
                    want,
                );
                let same = |got: &Array4<f32>, all: &Array4<f32>, asked: bool| {
                    if asked {
                        bits(got) == bits(all)
                    } else {
                        untouched(got)
                    }
                };
                assert!(
                    same(&part.gx, &full.gx, want.input)
                        && same(&part.goy, &full.goy, want.offset_mask)
                        && same(&part.gox, &full.gox, want.offset_mask)
                        && same(&part.gw, &full.gw, want.weight),
                    "{isa:?}, {want:?}: a gradient differs from the full call's, or one not asked \
                     for was written"
                );
                if p.m.is_some() {
                    assert!(
                        same(&part.gm, &full.gm, want.offset_mask),
                        "{isa:?}, {want:?}: mask"
                    );
                }
                let gb: Vec<u32> = part.gb.iter().map(|v| v.to_bits()).collect();
                let fb: Vec<u32> = full.gb.iter().map(|v| v.to_bits()).collect();
                assert!(
                    if want.bias {
                        gb == fb
                    } else {
                        part.gb.iter().all(|v| v.is_nan())
                    },
                    "{isa:?}, {want:?}: bias"
                );
            }
        }
    }
}
