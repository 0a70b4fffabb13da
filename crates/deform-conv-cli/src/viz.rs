//! `viz`: the K sampling points of chosen output pixels, drawn over the input image — the picture
//! DCN papers show. Each output pixel gets a colour; its regular grid (no offsets) is drawn as
//! small grey squares, a line leads from each grid point to where the offset moved it, and the
//! sampled point is a filled disc of the pixel's colour.

use crate::npy::{self, Tensor};
use crate::run::Convention;
use anyhow::{bail, Context, Result};
use clap::Args;
use image::{Rgb, RgbImage};
use ndarray::{Array4, ArrayView4};
use std::path::PathBuf;

/// Arguments of `viz`.
#[derive(Args, Debug)]
pub struct VizArgs {
    /// Offset .npy in the given convention (torchvision/onnx: interleaved; mindspore/npu: packed).
    #[arg(long)]
    pub offset: PathBuf,
    /// The convention of the offset file.
    #[arg(long, value_enum, default_value = "torchvision")]
    pub convention: Convention,
    /// Kernel kh,kw.
    #[arg(long, value_delimiter = ',', default_value = "3,3")]
    pub kernel: Vec<usize>,
    /// Stride h,w.
    #[arg(long, value_delimiter = ',', default_value = "1,1")]
    pub stride: Vec<usize>,
    /// Padding top,left (only these enter the sampling positions).
    #[arg(long, value_delimiter = ',', default_value = "0,0")]
    pub padding: Vec<usize>,
    /// Dilation h,w.
    #[arg(long, value_delimiter = ',', default_value = "1,1")]
    pub dilation: Vec<usize>,
    /// Background image (PNG or JPEG); a synthetic one when absent.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Size H,W of the synthetic image (default: the output size times the stride).
    #[arg(long, value_delimiter = ',')]
    pub size: Option<Vec<usize>>,
    /// Output pixels to draw, "oh,ow;oh,ow" (default: a 3x3 spread).
    #[arg(long)]
    pub pixels: Option<String>,
    /// Batch item.
    #[arg(long, default_value_t = 0)]
    pub batch: usize,
    /// Deformable group.
    #[arg(long, default_value_t = 0)]
    pub group: usize,
    /// Canvas pixels per input pixel (default: about 640 pixels across).
    #[arg(long)]
    pub scale: Option<usize>,
    /// Where to write the PNG.
    #[arg(long, default_value = "deform-conv-viz.png")]
    pub output: PathBuf,
}

/// Sampling geometry of one layer, for drawing.
#[derive(Clone, Copy, Debug)]
pub struct Grid {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub pad: [usize; 2],
    pub dil: [usize; 2],
}

/// One output pixel's points: (regular grid position, sampled position), in input pixels.
pub type Points = Vec<((f64, f64), (f64, f64))>;

/// The points of output pixel `(oh, ow)` from row/column offsets `dy`, `dx` `[G*K, Ho, Wo]` of one
/// batch item, deformable group `g`.
pub fn points(
    grid: &Grid,
    dy: &ArrayView4<'_, f64>,
    dx: &ArrayView4<'_, f64>,
    n: usize,
    g: usize,
    oh: usize,
    ow: usize,
) -> Points {
    let [kh, kw] = grid.kernel;
    let mut out = Vec::with_capacity(kh * kw);
    for i in 0..kh {
        for j in 0..kw {
            let ch = g * kh * kw + i * kw + j;
            let by = (oh * grid.stride[0] + i * grid.dil[0]) as f64 - grid.pad[0] as f64;
            let bx = (ow * grid.stride[1] + j * grid.dil[1]) as f64 - grid.pad[1] as f64;
            out.push((
                (by, bx),
                (by + dy[[n, ch, oh, ow]], bx + dx[[n, ch, oh, ow]]),
            ));
        }
    }
    out
}

/// A gently textured synthetic background: rings over a soft checkerboard.
pub fn synthetic(h: usize, w: usize) -> image::GrayImage {
    image::GrayImage::from_fn(w as u32, h as u32, |x, y| {
        let (cy, cx) = (h as f64 / 2.0, w as f64 / 2.0);
        let r = ((y as f64 - cy).powi(2) + (x as f64 - cx).powi(2)).sqrt();
        let checker = if (x / 4 + y / 4) % 2 == 0 {
            0.08
        } else {
            -0.08
        };
        let v = 0.55 + 0.2 * (r / 2.5).sin() + checker;
        image::Luma([(v.clamp(0.0, 1.0) * 255.0) as u8])
    })
}

/// The colour of the `i`-th drawn output pixel.
pub fn palette(i: usize) -> Rgb<u8> {
    const P: [[u8; 3]; 9] = [
        [230, 25, 75],
        [60, 180, 75],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [255, 225, 25],
    ];
    Rgb(P[i % P.len()])
}

/// Canvas position of an input-pixel coordinate (pixel centres at integers).
pub fn canvas(p: (f64, f64), scale: usize) -> (f64, f64) {
    ((p.0 + 0.5) * scale as f64, (p.1 + 0.5) * scale as f64)
}

fn put(img: &mut RgbImage, y: f64, x: f64, c: Rgb<u8>) {
    if y >= 0.0 && x >= 0.0 && (y as u32) < img.height() && (x as u32) < img.width() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

fn disc(img: &mut RgbImage, (cy, cx): (f64, f64), r: f64, c: Rgb<u8>) {
    let ri = r.ceil() as i64;
    for dy in -ri..=ri {
        for dx in -ri..=ri {
            if ((dy * dy + dx * dx) as f64) <= r * r {
                put(img, cy + dy as f64, cx + dx as f64, c);
            }
        }
    }
}

fn line(img: &mut RgbImage, a: (f64, f64), b: (f64, f64), c: Rgb<u8>) {
    let steps = ((b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil() as usize).clamp(1, 4096);
    for s in 0..=steps {
        let t = s as f64 / steps as f64;
        put(img, a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1), c);
    }
}

/// Draws `sets` (one per output pixel) over `bg` magnified by `scale`.
pub fn render(bg: &image::GrayImage, sets: &[Points], scale: usize) -> RgbImage {
    let (w, h) = (bg.width() as usize * scale, bg.height() as usize * scale);
    let mut img = RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let v = bg.get_pixel(x / scale as u32, y / scale as u32).0[0];
        let v = (v as u16 * 3 / 4 + 32) as u8; // dimmed, so the points stand out
        Rgb([v, v, v])
    });
    let r = (scale as f64 / 3.0).clamp(2.0, 7.0);
    for (i, set) in sets.iter().enumerate() {
        let c = palette(i);
        for &(grid, at) in set {
            line(&mut img, canvas(grid, scale), canvas(at, scale), c);
        }
        for &(grid, _) in set {
            let (gy, gx) = canvas(grid, scale);
            for d in -1..=1 {
                put(&mut img, gy + d as f64, gx - 1.0, Rgb([90, 90, 90]));
                put(&mut img, gy + d as f64, gx + 1.0, Rgb([90, 90, 90]));
                put(&mut img, gy - 1.0, gx + d as f64, Rgb([90, 90, 90]));
                put(&mut img, gy + 1.0, gx + d as f64, Rgb([90, 90, 90]));
            }
        }
        for &(_, at) in set {
            disc(&mut img, canvas(at, scale), r, c);
        }
    }
    img
}

/// The offsets of a file in `conv` as (dy, dx) views `[N, G*K, Ho, Wo]` in f64.
fn split(conv: Convention, off: &Array4<f64>) -> Result<(Array4<f64>, Array4<f64>)> {
    use deform_conv::layout::{split_interleaved, split_packed};
    Ok(match conv {
        Convention::Torchvision | Convention::Onnx => {
            let (dy, dx) = split_interleaved(&off.view())?;
            (dy.to_owned(), dx.to_owned())
        }
        Convention::Mindspore | Convention::Npu => {
            let (dx, dy, _) = split_packed(&off.view())?;
            (dy.to_owned(), dx.to_owned())
        }
        Convention::NpuNhwc => {
            let nchw = off.view().permuted_axes([0, 3, 1, 2]);
            let (dx, dy, _) = split_packed(&nchw)?;
            (dy.to_owned(), dx.to_owned())
        }
    })
}

fn pair(name: &str, v: &[usize]) -> Result<[usize; 2]> {
    match v {
        [a, b] => Ok([*a, *b]),
        [a] => Ok([*a, *a]),
        _ => bail!("--{name}: expected h,w, got {v:?}"),
    }
}

pub fn viz(a: &VizArgs) -> Result<()> {
    let off = match npy::load(&a.offset, "offset")? {
        Tensor::F16(x) => x.mapv(f64::from),
        Tensor::F32(x) => x.mapv(f64::from),
        Tensor::F64(x) => x,
    };
    deform_conv::error::check_rank::<4>("offset", off.shape())
        .with_context(|| a.offset.display().to_string())?;
    let off = off
        .into_dimensionality::<ndarray::Ix4>()
        .expect("rank checked");
    let grid = Grid {
        kernel: pair("kernel", &a.kernel)?,
        stride: pair("stride", &a.stride)?,
        pad: pair("padding", &a.padding)?,
        dil: pair("dilation", &a.dilation)?,
    };
    if grid.kernel.contains(&0) || grid.stride.contains(&0) || grid.dil.contains(&0) {
        bail!("--kernel/--stride/--dilation: expected values >= 1");
    }
    let (dy, dx) = split(a.convention, &off)?;
    let [n, gk, ho, wo] = [dy.shape()[0], dy.shape()[1], dy.shape()[2], dy.shape()[3]];
    let k = grid.kernel[0] * grid.kernel[1];
    if gk % k != 0 || gk == 0 {
        bail!(
            "offset {}: {gk} channels per component is not a multiple of kh*kw = {k}",
            a.offset.display()
        );
    }
    if a.batch >= n || a.group >= gk / k {
        bail!(
            "--batch {} / --group {}: the offset has {n} batch items and {} groups",
            a.batch,
            a.group,
            gk / k
        );
    }
    let bg = match &a.image {
        Some(p) => image::open(p)
            .with_context(|| format!("image {}: cannot decode", p.display()))?
            .to_luma8(),
        None => {
            let [h, w] = match &a.size {
                Some(s) => pair("size", s)?,
                None => [ho * grid.stride[0], wo * grid.stride[1]],
            };
            synthetic(h, w)
        }
    };
    let pixels: Vec<(usize, usize)> = match &a.pixels {
        Some(s) => s
            .split(';')
            .map(|p| {
                let v: Vec<usize> = p
                    .split(',')
                    .map(|t| t.trim().parse())
                    .collect::<std::result::Result<_, _>>()
                    .with_context(|| format!("--pixels: cannot read {p:?} as oh,ow"))?;
                match v[..] {
                    [y, x] if y < ho && x < wo => Ok((y, x)),
                    _ => bail!("--pixels: {p:?} is not an output pixel oh,ow inside {ho}x{wo}"),
                }
            })
            .collect::<Result<_>>()?,
        None => (1..4)
            .flat_map(|i| (1..4).map(move |j| (ho * i / 4, wo * j / 4)))
            .collect(),
    };
    let scale = a
        .scale
        .unwrap_or_else(|| (640 / bg.width().max(bg.height()).max(1) as usize).clamp(1, 64));
    let sets: Vec<Points> = pixels
        .iter()
        .map(|&(y, x)| points(&grid, &dy.view(), &dx.view(), a.batch, a.group, y, x))
        .collect();
    let img = render(&bg, &sets, scale);
    img.save(&a.output)
        .with_context(|| format!("{}: cannot write PNG", a.output.display()))?;
    println!(
        "wrote {} ({}x{} px, {} output pixels, {} points each)",
        a.output.display(),
        img.width(),
        img.height(),
        sets.len(),
        k
    );
    Ok(())
}
