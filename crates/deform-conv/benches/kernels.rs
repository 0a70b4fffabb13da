//! Criterion benches of the engine per instruction set against the reference, on small shapes.
//! `cargo bench -p deform-conv --bench kernels`
#![allow(missing_docs)] // criterion_group! generates an undocumented function

use criterion::{criterion_group, criterion_main, Criterion};
use deform_conv::conventions::torchvision::{deform_conv2d, deform_conv2d_backward, Params};
use deform_conv::engine::Isa;
use deform_conv::Backend;
use ndarray::Array4;

fn data(n: usize, c: usize, hw: usize, k: usize, dg: usize) -> [Array4<f32>; 5] {
    let f = |i: usize| ((i.wrapping_mul(2654435761) % 1000) as f32 / 500.0) - 1.0;
    let x = Array4::from_shape_fn((n, c, hw, hw), |(a, b, y, z)| {
        f(a * 7 + b * 13 + y * 31 + z)
    });
    let w = Array4::from_shape_fn((c, c, k, k), |(a, b, y, z)| {
        0.05 * f(a * 3 + b * 17 + y * 5 + z)
    });
    let off = Array4::from_shape_fn((n, 2 * dg * k * k, hw, hw), |(a, b, y, z)| {
        2.0 * f(a + b * 11 + y * 19 + z * 23)
    });
    let m = Array4::from_shape_fn((n, dg * k * k, hw, hw), |(a, b, y, z)| {
        0.5 + 0.5 * f(a + b * 5 + y * 3 + z * 7)
    });
    let gy = Array4::from_shape_fn((n, c, hw, hw), |(a, b, y, z)| f(a + b + y * 2 + z * 3));
    [x, w, off, m, gy]
}

fn bench(cr: &mut Criterion) {
    for (name, n, c, hw, dg) in [("c64_hw32", 1, 64, 32, 1), ("c64_hw32_dg8", 1, 64, 32, 8)] {
        let [x, w, off, m, gy] = data(n, c, hw, 3, dg);
        let mut backends = vec![("reference", Backend::Reference)];
        backends.extend(
            Isa::ALL
                .into_iter()
                .filter(|i| i.supported())
                .map(|i| (i.name(), Backend::EngineIsa(i))),
        );
        for (bname, backend) in backends {
            let p = Params {
                padding: [1, 1],
                backend,
                ..Params::default()
            };
            cr.bench_function(&format!("forward/{name}/{bname}"), |b| {
                b.iter(|| {
                    deform_conv2d(x.view(), off.view(), w.view(), None, Some(m.view()), &p).unwrap()
                })
            });
            cr.bench_function(&format!("backward/{name}/{bname}"), |b| {
                b.iter(|| {
                    deform_conv2d_backward(
                        gy.view(),
                        x.view(),
                        off.view(),
                        w.view(),
                        None,
                        Some(m.view()),
                        &p,
                    )
                    .unwrap()
                })
            });
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
