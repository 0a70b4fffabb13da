//! Multi-scale deformable attention at the Deformable DETR encoder shape (800x1333: 4 levels,
//! 8 heads of 32, 4 points, every pixel a query) in a loop, for profilers:
//! `cargo run --release -p deform-conv --example profile_msda -- fwd 5` (or `bwd`); a third
//! argument `near` places each query's samples within a few pixels of its own position (as a
//! trained encoder does) instead of uniformly; `decoder` runs the decoder's 300 queries (uniform).
//! Outputs are given back as the Python layer does (`fresh` as a fourth argument: dropped).
mod common;
use deform_conv::conventions::msda::{ms_deform_attn, ms_deform_attn_backward, MsdaParams};
use ndarray::{Array, Array1, Array2};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map_or("fwd", |s| s.as_str());
    let reps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let mut r = common::uniform(7);
    let levels = [(100usize, 167usize), (50, 84), (25, 42), (13, 21)];
    let s: usize = levels.iter().map(|(h, w)| h * w).sum();
    let (m, d, l, p) = (8, 32, levels.len(), 4);
    let shapes = Array2::from_shape_fn((l, 2), |(i, j)| {
        (if j == 0 { levels[i].0 } else { levels[i].1 }) as i64
    });
    let mut at = 0;
    let starts = Array1::from_iter(levels.iter().map(|(h, w)| {
        let s0 = at;
        at += (h * w) as i64;
        s0
    }));
    let value = Array::from_shape_simple_fn((1, s, m, d), || r() - 0.5);
    let near = args.get(3).is_some_and(|a| a == "near");
    let queries = if args.get(3).is_some_and(|a| a == "decoder") {
        300
    } else {
        s
    };
    // Query q's own position, normalised (its level's pixel centre).
    let centre: Vec<(f32, f32)> = levels
        .iter()
        .flat_map(|&(h, w)| {
            (0..h * w).map(move |i| {
                (
                    ((i % w) as f32 + 0.5) / w as f32,
                    ((i / w) as f32 + 0.5) / h as f32,
                )
            })
        })
        .collect();
    let loc = Array::from_shape_fn((1, queries, m, l, p, 2), |(_, q, _, lv, _, xy)| {
        let u = r();
        if !near {
            return u;
        }
        let size = if xy == 0 { levels[lv].1 } else { levels[lv].0 } as f32;
        let c = if xy == 0 { centre[q].0 } else { centre[q].1 };
        c + 4.0 * (u - 0.5) / size
    });
    let attn = Array::from_shape_simple_fn((1, queries, m, l, p), || r() / 16.0);
    let gy = Array::from_elem((1, queries, m * d), 0.01f32);
    let prm = MsdaParams::default();
    let recycle = args.get(4).map(|s| s.as_str()) != Some("fresh");
    let give = |a: ndarray::ArrayD<f32>| {
        if recycle {
            deform_conv::alloc::recycle(a)
        }
    };
    let t = Instant::now();
    for _ in 0..reps {
        let (sv, st) = (shapes.view(), starts.view());
        if what == "bwd" {
            let grads = ms_deform_attn_backward(
                gy.view(),
                value.view(),
                sv,
                st,
                loc.view(),
                attn.view(),
                &prm,
            )
            .unwrap();
            give(grads.value.into_dyn());
            give(grads.sampling_locations.into_dyn());
            give(grads.attention_weights.into_dyn());
        } else {
            let out = ms_deform_attn(value.view(), sv, st, loc.view(), attn.view(), &prm).unwrap();
            give(out.into_dyn());
        }
    }
    let ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
    println!("msda {what}: {ms:.2} ms per call");
}
