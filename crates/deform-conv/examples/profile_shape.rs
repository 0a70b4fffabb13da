//! Runs one benchmark shape forward (and backward) in a loop, for profilers:
//! `cargo run --release -p deform-conv --example profile_shape -- edvr_align_dg8 fwd 20`
mod common;
use deform_conv::conventions::torchvision::{deform_conv2d, deform_conv2d_backward, Params};
use ndarray::{Array1, Array4};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let name = args.get(1).map_or("resnet_c4_dcn", |s| s.as_str());
    let what = args.get(2).map_or("fwd", |s| s.as_str());
    let reps: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(10);
    let [n, c, h, w, cout, k, s, p, d, g, dg] = match name {
        "npu_doc_example" => [16, 32, 32, 32, 32, 5, 1, 2, 1, 1, 1],
        "resnet_c4_dcn" => [1, 256, 64, 64, 256, 3, 1, 1, 1, 1, 1],
        "resnet_c3_dcn_b4" => [4, 128, 56, 56, 128, 3, 1, 1, 1, 1, 1],
        "edvr_align_dg8" => [1, 64, 128, 128, 64, 3, 1, 1, 1, 1, 8],
        "stride2_c5" => [2, 512, 32, 32, 512, 3, 2, 1, 1, 1, 1],
        // ResNet-50-DCN's 3x3 layers in a training step at 2x3x256x256 (bench/model.py).
        "train_c3" => [2, 128, 32, 32, 128, 3, 1, 1, 1, 1, 1],
        "train_c4" => [2, 256, 16, 16, 256, 3, 1, 1, 1, 1, 1],
        "train_c5" => [2, 512, 8, 8, 512, 3, 1, 1, 1, 1, 1],
        // ... c3's first block (stride 2), and bench/model.py's EDVR training step (batch 2).
        "train_c3_s2" => [2, 128, 64, 64, 128, 3, 2, 1, 1, 1, 1],
        "train_edvr" => [2, 64, 96, 96, 64, 3, 1, 1, 1, 1, 8],
        // ... and the 16x16 c5 layer of an inference-size image (1x3x512x512), trained at batch 1.
        "b1_c5" => [1, 512, 16, 16, 512, 3, 1, 1, 1, 1, 1],
        // ... and its 64x64 c3 layer (the slowest against conv2d in bench/small_layers.py).
        "b1_c3" => [1, 128, 64, 64, 128, 3, 1, 1, 1, 1, 1],
        _ => panic!("unknown shape {name}"),
    };
    let ho = (h + 2 * p - d * (k - 1) - 1) / s + 1;
    let wo = (w + 2 * p - d * (k - 1) - 1) / s + 1;
    let mut u = common::uniform(1);
    let mut r = move || u() * 2.0 - 1.0;
    let x = Array4::from_shape_simple_fn((n, c, h, w), &mut r);
    let wt = Array4::from_shape_simple_fn((cout, c / g, k, k), &mut r);
    let off = Array4::from_shape_simple_fn((n, 2 * dg * k * k, ho, wo), || 4.0 * r());
    let m = Array4::from_shape_simple_fn((n, dg * k * k, ho, wo), || 0.5 + 0.5 * r());
    let b = Array1::zeros(cout);
    let gy = Array4::from_elem((n, cout, ho, wo), 0.01f32);
    let pp = Params {
        stride: [s as i64; 2],
        padding: [p as i64; 2],
        dilation: [d as i64; 2],
        ..Params::default()
    };
    let t = Instant::now();
    for _ in 0..reps {
        if what == "fwd" {
            std::hint::black_box(
                deform_conv2d(
                    x.view(),
                    off.view(),
                    wt.view(),
                    Some(b.view()),
                    Some(m.view()),
                    &pp,
                )
                .unwrap(),
            );
        } else {
            std::hint::black_box(
                deform_conv2d_backward(
                    gy.view(),
                    x.view(),
                    off.view(),
                    wt.view(),
                    Some(b.view()),
                    Some(m.view()),
                    &pp,
                )
                .unwrap(),
            );
        }
    }
    println!(
        "{name} {what}: {:.2} ms per call",
        t.elapsed().as_secs_f64() * 1e3 / reps as f64
    );
}
