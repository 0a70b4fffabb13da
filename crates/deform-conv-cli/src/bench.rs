//! `bench`: the benchmark shapes built in, forward and backward through the engine, with the
//! ratio to the reference path (measured once per shape; it is slow by design).

use crate::data::{problem, shapes};
use anyhow::{bail, Result};
use clap::Args;
use deform_conv::conventions::torchvision::{deform_conv2d, deform_conv2d_backward, Params};
use deform_conv::Backend;
use ndarray::Array4;
use std::io::{IsTerminal, Write};
use std::time::Instant;

/// Arguments of `bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Only these shapes (names as in bench/shapes.json), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub shapes: Option<Vec<String>>,
    /// Timed repetitions per measurement (the median is reported); at least 1.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Skip the reference path (it takes seconds to minutes per shape).
    #[arg(long)]
    pub no_reference: bool,
}

fn median(mut f: impl FnMut(), repeat: u32) -> f64 {
    f();
    let mut t: Vec<f64> = (0..repeat.max(1))
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// A progress line on stderr, redrawn in place on a terminal; nothing when stderr is a file or a
/// pipe (no escape codes in logs).
fn progress(msg: &str) {
    let err = std::io::stderr();
    if err.is_terminal() {
        eprint!("\r\x1b[2K{msg}");
        let _ = err.lock().flush();
    }
}

/// A ratio column: `-` when the reference was not measured.
fn ratio(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}x"))
}

pub fn bench(a: &BenchArgs) -> Result<()> {
    let all = shapes();
    if let Some(names) = &a.shapes {
        let unknown: Vec<&str> = names
            .iter()
            .filter(|n| !all.iter().any(|s| &s.name == *n))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            bail!(
                "--shapes: {} is not a built-in shape; expected names from {}",
                unknown.join(", "),
                all.iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let chosen: Vec<_> = all
        .iter()
        .filter(|s| {
            a.shapes
                .as_ref()
                .is_none_or(|names| names.iter().any(|n| n == &s.name))
        })
        .collect();
    println!(
        "deform-conv bench: float32, {} threads, {} kernels, median of {} runs",
        deform_conv::engine::num_threads(),
        deform_conv::engine::active_isa().name(),
        a.repeat
    );
    println!(
        "{:<18} {:>9} {:>9} {:>9} {:>10} {:>9} {:>10} {:>10}",
        "shape", "GFLOP", "fwd ms", "GFLOP/s", "fwd+bwd ms", "GFLOP/s", "ref/fwd", "ref/f+b"
    );
    let steps = chosen.len();
    for (i, s) in chosen.into_iter().enumerate() {
        progress(&format!("[{}/{steps}] {}: preparing", i + 1, s.name));
        let p = problem(s, 7 + i as u64);
        let params = |backend| Params {
            stride: [s.stride as i64; 2],
            padding: [s.pad as i64; 2],
            dilation: [s.dil as i64; 2],
            backend,
            ..Params::default()
        };
        let eng = params(Backend::Engine);
        let (ho, wo) = (s.out(s.h), s.out(s.w));
        let gy = Array4::from_elem((s.n, s.cout, ho, wo), 0.01f32);
        let fwd = |pp: &Params| {
            deform_conv2d(
                p.x.view(),
                p.offset.view(),
                p.weight.view(),
                Some(p.bias.view()),
                Some(p.mask.view()),
                pp,
            )
            .expect("valid built-in shape")
        };
        let bwd = |pp: &Params| {
            deform_conv2d_backward(
                gy.view(),
                p.x.view(),
                p.offset.view(),
                p.weight.view(),
                Some(p.bias.view()),
                Some(p.mask.view()),
                pp,
            )
            .expect("valid built-in shape")
        };
        progress(&format!("[{}/{steps}] {}: forward", i + 1, s.name));
        let tf = median(|| drop(fwd(&eng)), a.repeat);
        progress(&format!("[{}/{steps}] {}: backward", i + 1, s.name));
        let tb = median(|| drop(bwd(&eng)), a.repeat);
        let flop = 2.0 * (s.n * s.cout * ho * wo * (s.c / s.groups) * s.k * s.k) as f64;
        let reference = if a.no_reference {
            None
        } else {
            progress(&format!(
                "[{}/{steps}] {}: reference forward",
                i + 1,
                s.name
            ));
            let rp = params(Backend::Reference);
            let rf = median(|| drop(fwd(&rp)), 0);
            progress(&format!(
                "[{}/{steps}] {}: reference backward",
                i + 1,
                s.name
            ));
            Some((rf, median(|| drop(bwd(&rp)), 0)))
        };
        progress("");
        println!(
            "{:<18} {:>9.2} {:>9.2} {:>9.1} {:>10.2} {:>9.1} {:>10} {:>10}",
            s.name,
            flop / 1e9,
            tf * 1e3,
            flop / tf / 1e9,
            (tf + tb) * 1e3,
            3.0 * flop / (tf + tb) / 1e9,
            ratio(reference.map(|(rf, _)| rf / tf)),
            ratio(reference.map(|(rf, rb)| (rf + rb) / (tf + tb))),
        );
    }
    println!("GFLOP counts 2*N*Cout*Ho*Wo*(C/groups)*kh*kw per forward; forward+backward counts 3x that.");
    Ok(())
}
