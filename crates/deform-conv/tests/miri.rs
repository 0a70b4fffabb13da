//! Small problems through the scalar engine for Miri (`cargo +nightly miri test -p deform-conv
//! --test miri`, run by ./test.sh): every kernel's `unsafe` on the portable path, DCNv2 forward and
//! backward, DCNv3 and attention, checked against the reference. Also an ordinary test.

use deform_conv::conventions::dcnv3::{dcnv3, dcnv3_backward, Dcnv3Params};
use deform_conv::conventions::msda::{ms_deform_attn, ms_deform_attn_backward, MsdaParams};
use deform_conv::conventions::torchvision::{deform_conv2d, deform_conv2d_backward, Params};
use deform_conv::engine::Isa;
use deform_conv::Backend;
use ndarray::{Array, Array1, Array2};

fn fill<D: ndarray::Dimension>(shape: D, seed: usize, scale: f64) -> Array<f64, D> {
    let mut i = seed;
    Array::from_shape_simple_fn(shape, || {
        i = (i * 7919 + 13) % 1009;
        scale * (i as f64 / 504.5 - 1.0)
    })
}

fn close<D: ndarray::Dimension>(a: &Array<f64, D>, b: &Array<f64, D>) {
    assert_eq!(a.shape(), b.shape());
    for (x, y) in a.iter().zip(b.iter()) {
        assert!((x - y).abs() <= 1e-12 * (1.0 + y.abs()), "{x} vs {y}");
    }
}

const SCALAR: Backend = Backend::EngineIsa(Isa::Scalar);

/// The engine on the calling thread (rayon's crossbeam-epoch trips Miri's Stacked Borrows).
fn serial<R>(f: impl FnOnce() -> R) -> R {
    deform_conv::engine::with_executor(std::sync::Arc::new(deform_conv::engine::SerialExecutor), f)
}

#[test]
fn dcnv2_scalar_engine() {
    serial(dcnv2)
}

#[test]
fn dcnv3_and_attention_scalar_engine() {
    serial(dcnv3_and_attention)
}

fn dcnv2() {
    let x = fill(ndarray::Ix4(1, 3, 4, 5), 1, 1.0);
    let w = fill(ndarray::Ix4(2, 3, 3, 3), 2, 1.0);
    let off = fill(ndarray::Ix4(1, 18, 4, 5), 3, 2.5);
    let m = fill(ndarray::Ix4(1, 9, 4, 5), 4, 1.0);
    let gy = fill(ndarray::Ix4(1, 2, 4, 5), 5, 1.0);
    let b = Array1::from(vec![0.5, -0.5]);
    let run = |backend| {
        let p = Params {
            padding: [1, 1],
            backend,
            ..Params::default()
        };
        let y = deform_conv2d(
            x.view(),
            off.view(),
            w.view(),
            Some(b.view()),
            Some(m.view()),
            &p,
        )
        .unwrap();
        let g = deform_conv2d_backward(
            gy.view(),
            x.view(),
            off.view(),
            w.view(),
            Some(b.view()),
            Some(m.view()),
            &p,
        )
        .unwrap();
        (y, g)
    };
    let ((y0, g0), (y, g)) = (run(Backend::Reference), run(SCALAR));
    close(&y, &y0);
    close(&g.input, &g0.input);
    close(&g.offset, &g0.offset);
    close(&g.weight, &g0.weight);
    // The outputs given back and taken again (the zeroed reuse path), with stale values in them.
    for a in [y, g.input, g.offset, g.weight] {
        deform_conv::alloc::recycle(a.mapv(|v| v + 1.0));
    }
    let (y, g) = run(SCALAR);
    close(&y, &y0);
    close(&g.input, &g0.input);
    close(&g.offset, &g0.offset);
    close(&g.weight, &g0.weight);
}

fn dcnv3_and_attention() {
    let x = fill(ndarray::Ix4(1, 3, 4, 4), 6, 1.0);
    let off = fill(ndarray::Ix4(1, 3, 4, 2 * 9 * 2), 7, 2.5);
    let m = fill(ndarray::Ix4(1, 3, 4, 2 * 9), 8, 1.0);
    let gy = fill(ndarray::Ix4(1, 3, 4, 4), 9, 1.0);
    let p = |backend| Dcnv3Params {
        group: 2,
        group_channels: 2,
        padding: [1, 1],
        backend,
        ..Dcnv3Params::default()
    };
    let y0 = dcnv3(x.view(), off.view(), m.view(), &p(Backend::Reference)).unwrap();
    close(
        &dcnv3(x.view(), off.view(), m.view(), &p(SCALAR)).unwrap(),
        &y0,
    );
    let g0 = dcnv3_backward(
        gy.view(),
        x.view(),
        off.view(),
        m.view(),
        &p(Backend::Reference),
    )
    .unwrap();
    let g = dcnv3_backward(gy.view(), x.view(), off.view(), m.view(), &p(SCALAR)).unwrap();
    close(&g.input, &g0.input);
    close(&g.offset, &g0.offset);
    // Given back and taken again (the uninitialised reuse path).
    deform_conv::alloc::recycle(g.input);
    deform_conv::alloc::recycle(g.offset);
    let g = dcnv3_backward(gy.view(), x.view(), off.view(), m.view(), &p(SCALAR)).unwrap();
    close(&g.input, &g0.input);
    close(&g.offset, &g0.offset);

    let shapes = Array2::from_shape_vec((2, 2), vec![3i64, 2, 1, 2]).unwrap();
    let start = Array1::from(vec![0i64, 6]);
    let value = fill(ndarray::Ix4(1, 8, 2, 3), 10, 1.0);
    let loc = fill(ndarray::Ix6(1, 5, 2, 2, 2, 2), 11, 0.7).mapv(|v| v + 0.5);
    let attn = fill(ndarray::Ix5(1, 5, 2, 2, 2), 12, 1.0);
    let gy = fill(ndarray::Ix3(1, 5, 6), 13, 1.0);
    let mp = |backend| MsdaParams { backend };
    let run = |b| {
        let y = ms_deform_attn(
            value.view(),
            shapes.view(),
            start.view(),
            loc.view(),
            attn.view(),
            &mp(b),
        )
        .unwrap();
        let g = ms_deform_attn_backward(
            gy.view(),
            value.view(),
            shapes.view(),
            start.view(),
            loc.view(),
            attn.view(),
            &mp(b),
        )
        .unwrap();
        (y, g)
    };
    let ((y0, g0), (y, g)) = (run(Backend::Reference), run(SCALAR));
    close(&y, &y0);
    close(&g.value, &g0.value);
    close(&g.sampling_locations, &g0.sampling_locations);
}
