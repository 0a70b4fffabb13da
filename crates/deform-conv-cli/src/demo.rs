//! `demo`: the torch_npu documentation example (input 16x32x32x32, weight 32x32x5x5, packed
//! offset 16x75x32x32, kernel 5x5, stride 1, padding 2), forward and backward through the
//! engine, checked against the reference path, timed, and its sampling points drawn.

use crate::data::Rng;
use crate::outputs::Outputs;
use crate::viz::{centre, points, render, synthetic, Drawn, Grid};
use anyhow::{bail, Result};
use clap::Args;
use deform_conv::conventions::mindspore::Attributes;
use deform_conv::conventions::npu::{
    npu_deformable_conv2d, npu_deformable_conv2dbk, NpuAttributes,
};
use deform_conv::conventions::Layout;
use deform_conv::Backend;
use ndarray::{s, Array4};
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where to write the picture of the sampling points.
    #[arg(long, default_value = "deform-conv-demo.png")]
    pub picture: PathBuf,
    /// Skip the check against the reference path.
    #[arg(long)]
    pub no_check: bool,
}

/// A smooth, visible deformation: each 5x5 window turns and grows around its centre, with a
/// little noise, so the drawn sampling points look like a learned DCN field.
fn offsets(r: &mut Rng, n: usize, kh: usize, kw: usize, ho: usize, wo: usize) -> Array4<f32> {
    let k = kh * kw;
    let mut packed = Array4::<f32>::zeros((n, 3 * k, ho, wo));
    for b in 0..n {
        for oh in 0..ho {
            for ow in 0..wo {
                let (u, v) = (oh as f32 / ho as f32 - 0.5, ow as f32 / wo as f32 - 0.5);
                let angle = 1.2 * (u * u + v * v).sqrt() + 0.3 * b as f32;
                let grow = 1.0 + 0.6 * (3.0 * u).cos() * (3.0 * v).cos();
                let (sin, cos) = angle.sin_cos();
                for i in 0..kh {
                    for j in 0..kw {
                        let (ry, rx) = (i as f32 - (kh / 2) as f32, j as f32 - (kw / 2) as f32);
                        let ty = grow * (cos * ry - sin * rx);
                        let tx = grow * (sin * ry + cos * rx);
                        let t = i * kw + j;
                        packed[[b, t, oh, ow]] = tx - rx + 0.15 * r.normal();
                        packed[[b, k + t, oh, ow]] = ty - ry + 0.15 * r.normal();
                        packed[[b, 2 * k + t, oh, ow]] = r.uniform();
                    }
                }
            }
        }
    }
    packed
}

fn max_rel_err(a: &Array4<f32>, b: &Array4<f32>) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    a.iter()
        .zip(b.iter())
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

fn median_time(mut f: impl FnMut() -> Result<()>, repeat: usize) -> Result<f64> {
    f()?;
    let mut t = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    Ok(t[repeat / 2])
}

pub fn demo(a: &DemoArgs) -> Result<()> {
    let (n, c, h, w, cout, kh, kw) = (16, 32, 32, 32, 32, 5, 5);
    let mut r = Rng::new(2024);
    let x = Array4::from_shape_simple_fn((n, c, h, w), || r.normal());
    let weight = Array4::from_shape_simple_fn((cout, c, kh, kw), || {
        r.normal() / ((c * kh * kw) as f32).sqrt()
    });
    let offset = offsets(&mut r, n, kh, kw, h, w);
    let mut attrs = Attributes::new([kh as i64, kw as i64]);
    attrs.padding = vec![2, 2, 2, 2];
    let na = NpuAttributes {
        attrs,
        layout: Layout::Nchw,
    };
    println!("torch_npu documentation example: input {:?}, weight {:?}, offset {:?}, kernel 5x5, stride 1, padding 2", x.shape(), weight.shape(), offset.shape());

    let (y, d) = npu_deformable_conv2d(x.view(), weight.view(), offset.view(), None, &na)?;
    println!("output shape          {}", tuple(y.shape()));
    println!("deformed image shape  {}", tuple(d.shape()));
    let gy = Array4::from_shape_simple_fn(y.raw_dim(), || r.normal());
    let g = npu_deformable_conv2dbk(
        x.view(),
        gy.view(),
        d.view(),
        weight.view(),
        offset.view(),
        &na,
    )?;
    println!(
        "gradient shapes       input {}, weight {}, offset {}, bias {}",
        tuple(g.input.shape()),
        tuple(g.weight.shape()),
        tuple(g.offset.shape()),
        tuple(g.bias.shape())
    );

    let flops = 2.0 * (n * cout * h * w * c * kh * kw) as f64;
    let tf = median_time(
        || {
            npu_deformable_conv2d(x.view(), weight.view(), offset.view(), None, &na)
                .map(drop)
                .map_err(Into::into)
        },
        5,
    )?;
    let tb = median_time(
        || {
            npu_deformable_conv2dbk(
                x.view(),
                gy.view(),
                d.view(),
                weight.view(),
                offset.view(),
                &na,
            )
            .map(drop)
            .map_err(Into::into)
        },
        3,
    )?;
    println!(
        "forward               {:8.2} ms  {:7.1} GFLOP/s   ({} threads, {})",
        tf * 1e3,
        flops / tf / 1e9,
        deform_conv::engine::num_threads(),
        deform_conv::engine::active_isa().name()
    );
    println!(
        "backward (all grads)  {:8.2} ms  {:7.1} GFLOP/s",
        tb * 1e3,
        2.0 * flops / tb / 1e9
    );

    if !a.no_check {
        let mut ra = na.clone();
        ra.attrs.backend = Backend::Reference;
        let t = Instant::now();
        let (yr, dr) = npu_deformable_conv2d(x.view(), weight.view(), offset.view(), None, &ra)?;
        let gr = npu_deformable_conv2dbk(
            x.view(),
            gy.view(),
            dr.view(),
            weight.view(),
            offset.view(),
            &ra,
        )?;
        let errs = [
            ("output", max_rel_err(&y, &yr)),
            ("deformed image", max_rel_err(&d, &dr)),
            ("grad input", max_rel_err(&g.input, &gr.input)),
            ("grad weight", max_rel_err(&g.weight, &gr.weight)),
            ("grad offset", max_rel_err(&g.offset, &gr.offset)),
        ];
        let worst = errs.iter().fold(0f32, |m, e| m.max(e.1));
        println!("reference check       max |engine - reference| / max|reference| = {worst:.2e}  (reference path took {:.2} s)", t.elapsed().as_secs_f64());
        if worst > 1e-4 {
            bail!("the engine disagrees with the reference path: {errs:?}");
        }
    }

    let grid = Grid {
        kernel: [kh, kw],
        stride: [1, 1],
        pad: [2, 2],
        dil: [1, 1],
    };
    let dy = offset
        .slice(s![.., kh * kw..2 * kh * kw, .., ..])
        .mapv(f64::from);
    let dx = offset.slice(s![.., ..kh * kw, .., ..]).mapv(f64::from);
    let pixels = [(8, 8), (8, 24), (24, 8), (24, 24), (16, 16)];
    let sets: Vec<_> = pixels
        .iter()
        .map(|&(oh, ow)| Drawn {
            pixel: (oh, ow),
            centre: centre(&grid, oh, ow),
            points: points(&grid, &dy.view(), &dx.view(), 0, 0, oh, ow),
        })
        .collect();
    let png = render(
        &synthetic(h, w),
        &sets,
        20,
        "torch_npu documentation example: 5x5 kernel, padding 2, batch 0",
    )?;
    let mut out = Outputs::default();
    out.add_bytes(
        &a.picture,
        png,
        format!(
            "({} output pixels x {} taps over the 32x32 input)",
            pixels.len(),
            kh * kw
        ),
    )?;
    print!("sampling points       ");
    out.commit()
}

/// `(16, 32, 32, 32)`, as Python prints a shape.
fn tuple(s: &[usize]) -> String {
    format!(
        "({})",
        s.iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}
