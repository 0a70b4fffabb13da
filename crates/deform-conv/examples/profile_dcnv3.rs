//! DCNv3 at InternImage-T stage 1 (1x200x336x64, 4 groups, 3x3) in a loop, for profilers:
//! `cargo run --release -p deform-conv --example profile_dcnv3 -- fwd 10` (or `bwd`); three more
//! arguments `H W G` set another shape (16 channels a group: `56 56 4` is stage 1 at 224).
//! `DEFORM_CONV_FLUSH=write:256` (or `read:256`) writes (reads) 256 MB between the timed calls,
//! as a model's other layers would. `OFF_SCALE=s` draws the offsets from `[-s, s]` pixels
//! (default 3).
mod common;
use deform_conv::conventions::dcnv3::{dcnv3, dcnv3_backward, Dcnv3Params};
use ndarray::Array4;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map_or("fwd", |s| s.as_str());
    let reps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    let mut u = common::uniform(1);
    let mut r = move || u() * 2.0 - 1.0;
    let size =
        |i: usize, default: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let (n, h, w, g, d) = (1, size(3, 200), size(4, 336), size(5, 4), 16);
    let x = Array4::from_shape_simple_fn((n, h, w, g * d), &mut r);
    let os: f32 = std::env::var("OFF_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let off = Array4::from_shape_simple_fn((n, h, w, g * 18), || os * r());
    let m = Array4::from_shape_simple_fn((n, h, w, g * 9), || 0.5 + 0.5 * r());
    let gy = Array4::from_elem((n, h, w, g * d), 0.01f32);
    let p = Dcnv3Params {
        group: g as i64,
        group_channels: d as i64,
        padding: [1, 1],
        ..Default::default()
    };
    // Outputs given back as the Python layer does (`fresh` as the last argument: dropped).
    let recycle = std::env::args().nth(6).as_deref() != Some("fresh");
    let give = |a: Array4<f32>| {
        if recycle {
            deform_conv::alloc::recycle(a)
        }
    };
    // `DEFORM_CONV_FLUSH=write:N` (or `read:N`): N MB written (read) between calls, untimed, as
    // another op's traffic leaves the caches (dirty lines, or clean ones).
    let flush = std::env::var("DEFORM_CONV_FLUSH").unwrap_or_default();
    let (mode, mb) = flush.split_once(':').unwrap_or(("", "0"));
    let mut other = vec![0u8; mb.parse::<usize>().unwrap_or(0) << 20];
    let mut timed = std::time::Duration::ZERO;
    for i in 0..reps {
        if mode == "read" {
            std::hint::black_box(other.iter().step_by(64).map(|&b| b as u64).sum::<u64>());
        } else if mode == "write" {
            other
                .iter_mut()
                .for_each(|b| *b = b.wrapping_add(i as u8 | 1));
            std::hint::black_box(&other);
        }
        let t = Instant::now();
        if what == "fwd" {
            give(std::hint::black_box(
                dcnv3(x.view(), off.view(), m.view(), &p).unwrap(),
            ));
        } else {
            let gr = std::hint::black_box(
                dcnv3_backward(gy.view(), x.view(), off.view(), m.view(), &p).unwrap(),
            );
            give(gr.input);
            give(gr.offset);
            give(gr.mask);
        }
        timed += t.elapsed();
    }
    println!(
        "dcnv3 {what}: {:.3} ms per call",
        timed.as_secs_f64() * 1e3 / reps as f64
    );
}
