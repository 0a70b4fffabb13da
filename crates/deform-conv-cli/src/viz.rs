//! `viz`: the K sampling points of chosen output pixels, drawn over the input image — the picture
//! DCN papers show. Each output pixel gets a colour; its regular grid (no offsets) is drawn as
//! small grey squares, a line leads from each grid point to where the offset moved it, and the
//! sampled point is a filled disc of the pixel's colour.

use crate::npy::{self, Tensor};
use crate::outputs::Outputs;
use crate::run::Convention;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use ndarray::{Array4, ArrayView4};
use plotters::prelude::*;
use plotters::style::FontStyle;
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
pub fn palette(i: usize) -> RGBColor {
    const P: [(u8, u8, u8); 9] = [
        (230, 25, 75),
        (60, 180, 75),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (0, 170, 170),
        (240, 50, 230),
        (128, 128, 0),
        (170, 110, 40),
    ];
    let (r, g, b) = P[i % P.len()];
    RGBColor(r, g, b)
}

/// Largest canvas side, in pixels: `--size` and `--scale` beyond it are refused, not allocated.
pub const MAX_CANVAS: usize = 8192;

/// One output pixel to draw: its position `(oh, ow)`, where its window centre lies in the input,
/// and its taps.
pub struct Drawn {
    pub pixel: (usize, usize),
    pub centre: (f64, f64),
    pub points: Points,
}

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // DejaVu Sans ships inside the binary: no system font is needed.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

/// Draws `sets` over `bg` (input pixel `(y, x)` covers `[y-0.5, y+0.5] x [x-0.5, x+0.5]`) with a
/// title, axes in input pixels and a legend; `scale` canvas pixels per input pixel. Returns the
/// PNG bytes.
pub fn render(bg: &image::GrayImage, sets: &[Drawn], scale: usize, title: &str) -> Result<Vec<u8>> {
    register_font();
    let (ih, iw) = (bg.height() as usize, bg.width() as usize);
    let (pw, ph) = (iw * scale, ih * scale);
    // Canvas: title band on top, y labels left, x labels below, legend right. The plotting
    // area is exactly `pw x ph`, so one input pixel is `scale` canvas pixels.
    let (margin, ylab, xlab, top) = (12usize, 70usize, 50usize, 40usize);
    let title_w = title.chars().count() * 9 + 2 * margin;
    let left = margin + ylab;
    let right = 230usize.max(title_w.saturating_sub(left + pw));
    let (cw, ch) = (left + pw + right, top + ph + xlab + margin);
    if cw > MAX_CANVAS || ch > MAX_CANVAS {
        bail!(
            "the picture would be {cw}x{ch} pixels (image {iw}x{ih} at --scale {scale}); \
             expected at most {MAX_CANVAS} per side: lower --scale or --size"
        );
    }
    let mut buf = vec![255u8; cw * ch * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (cw as u32, ch as u32)).into_drawing_area();
        let err = |e: &dyn std::fmt::Display| anyhow!("drawing the picture: {e}");
        root.draw(&Text::new(
            title.to_string(),
            (margin as i32, 12),
            ("sans-serif", 17).into_font(),
        ))
        .map_err(|e| err(&e))?;
        let area = root.margin(top as u32, margin as u32, margin as u32, right as u32);
        let mut chart = ChartBuilder::on(&area)
            .x_label_area_size(xlab as u32)
            .y_label_area_size(ylab as u32)
            .build_cartesian_2d(-0.5..iw as f64 - 0.5, ih as f64 - 0.5..-0.5)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("x (input column, pixels)")
            .y_desc("y (input row, pixels)")
            .label_style(("sans-serif", 13))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .axis_desc_style(("sans-serif", 14))
            .draw()
            .map_err(|e| err(&e))?;
        // The image, dimmed so the points stand out, scaled to the plotting area.
        let (xr, yr) = chart.plotting_area().get_pixel_range();
        let (aw, ah) = ((xr.end - xr.start) as usize, (yr.end - yr.start) as usize);
        let mut px = Vec::with_capacity(aw * ah * 3);
        for y in 0..ah {
            for x in 0..aw {
                let v = bg
                    .get_pixel((x * iw / aw.max(1)) as u32, (y * ih / ah.max(1)) as u32)
                    .0[0];
                let v = (v as u16 * 3 / 5 + 90) as u8;
                px.extend_from_slice(&[v, v, v]);
            }
        }
        if let Some(img) =
            BitMapElement::with_owned_buffer((-0.5, -0.5), (aw as u32, ah as u32), px)
        {
            chart
                .draw_series(std::iter::once(img))
                .map_err(|e| err(&e))?;
        }
        let grey = RGBColor(40, 40, 40);
        let r = (scale as f64 / 4.0).clamp(3.0, 7.0) as i32;
        for (i, set) in sets.iter().enumerate() {
            let c = palette(i);
            let lines = set.points.iter().map(|&(g, at)| {
                PathElement::new(vec![(g.1, g.0), (at.1, at.0)], c.stroke_width(2))
            });
            chart.draw_series(lines).map_err(|e| err(&e))?;
            let grid = set.points.iter().map(|&(g, _)| {
                EmptyElement::at((g.1, g.0))
                    + Rectangle::new([(-3, -3), (3, 3)], grey.stroke_width(1))
            });
            chart.draw_series(grid).map_err(|e| err(&e))?;
            chart
                .draw_series(
                    set.points
                        .iter()
                        .map(|&(_, at)| Circle::new((at.1, at.0), r, c.filled())),
                )
                .map_err(|e| err(&e))?;
            chart
                .draw_series(std::iter::once(Cross::new(
                    (set.centre.1, set.centre.0),
                    7,
                    c.stroke_width(3),
                )))
                .map_err(|e| err(&e))?;
        }
        // The legend, in the right margin: one colour per output pixel, then the markers.
        let (lx, ly) = ((left + pw + 20) as i32, (top + 10) as i32);
        let font = ("sans-serif", 14).into_font();
        let mut row = 0;
        let mut entry = |marker: &dyn Fn(i32, i32) -> Result<()>, text: &str| -> Result<()> {
            let y = ly + 22 * row;
            marker(lx + 8, y)?;
            root.draw(&Text::new(text.to_string(), (lx + 24, y - 8), font.clone()))
                .map_err(|e| err(&e))?;
            row += 1;
            Ok(())
        };
        for (i, set) in sets.iter().enumerate() {
            let c = palette(i);
            let (oh, ow) = set.pixel;
            entry(
                &|x, y| {
                    root.draw(&Circle::new((x, y), 5, c.filled()))
                        .map_err(|e| err(&e))
                },
                &format!("output pixel ({oh}, {ow})"),
            )?;
        }
        entry(
            &|x, y| {
                root.draw(&Circle::new((x, y), 5, BLACK.filled()))
                    .map_err(|e| err(&e))
            },
            "deformed sample",
        )?;
        entry(
            &|x, y| {
                root.draw(&PathElement::new(
                    vec![(x - 10, y), (x + 6, y)],
                    BLACK.stroke_width(2),
                ))
                .map_err(|e| err(&e))
            },
            "offset (grid -> sample)",
        )?;
        entry(
            &|x, y| {
                root.draw(&Rectangle::new(
                    [(x - 3, y - 3), (x + 3, y + 3)],
                    grey.stroke_width(1),
                ))
                .map_err(|e| err(&e))
            },
            "regular grid (no offset)",
        )?;
        entry(
            &|x, y| {
                root.draw(&Cross::new((x, y), 5, BLACK.stroke_width(2)))
                    .map_err(|e| err(&e))
            },
            "window centre",
        )?;
        root.present().map_err(|e| err(&e))?;
    }
    let img = image::RgbImage::from_raw(cw as u32, ch as u32, buf)
        .ok_or_else(|| anyhow!("picture buffer has the wrong size"))?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| anyhow!("encoding the PNG: {e}"))?;
    Ok(png)
}

/// Where the window of output pixel `(oh, ow)` is centred in the input (no offsets).
pub fn centre(grid: &Grid, oh: usize, ow: usize) -> (f64, f64) {
    let c = |o: usize, a: usize| {
        (o * grid.stride[a]) as f64 - grid.pad[a] as f64
            + (grid.kernel[a] - 1) as f64 * grid.dil[a] as f64 / 2.0
    };
    (c(oh, 0), c(ow, 1))
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
        Some(p) => {
            let img = image::open(p)
                .with_context(|| format!("image {}: cannot decode", p.display()))?
                .to_luma8();
            let (eh, ew) = (ho * grid.stride[0], wo * grid.stride[1]);
            if (img.height() as usize, img.width() as usize) != (eh, ew) {
                eprintln!(
                    "warning: image {} is {}x{}, but the offsets imply an input of about {eh}x{ew} \
                     (output {ho}x{wo} x stride): the points may not line up with the picture",
                    p.display(),
                    img.height(),
                    img.width()
                );
            }
            img
        }
        None => {
            let [h, w] = match &a.size {
                Some(s) => pair("size", s)?,
                None => [ho * grid.stride[0], wo * grid.stride[1]],
            };
            if h == 0 || w == 0 || h > MAX_CANVAS || w > MAX_CANVAS {
                bail!("--size: expected H,W between 1 and {MAX_CANVAS}, got {h},{w}");
            }
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
    let side = bg.width().max(bg.height()).max(1) as usize;
    let scale = match a.scale {
        Some(0) => bail!("--scale: expected at least 1 canvas pixel per input pixel, got 0"),
        Some(s) if s.saturating_mul(side) > MAX_CANVAS => bail!(
            "--scale {s}: the {side}-pixel image would be {} canvas pixels across; expected at most {MAX_CANVAS}",
            s.saturating_mul(side)
        ),
        Some(s) => s,
        None => (640 / side).clamp(1, 64),
    };
    let sets: Vec<Drawn> = pixels
        .iter()
        .map(|&(y, x)| Drawn {
            pixel: (y, x),
            centre: centre(&grid, y, x),
            points: points(&grid, &dy.view(), &dx.view(), a.batch, a.group, y, x),
        })
        .collect();
    let title = format!(
        "{} offsets, kernel {}x{}, stride {}x{}, dilation {}x{}: batch {}, deformable group {}",
        a.convention.name(),
        grid.kernel[0],
        grid.kernel[1],
        grid.stride[0],
        grid.stride[1],
        grid.dil[0],
        grid.dil[1],
        a.batch,
        a.group
    );
    let png = render(&bg, &sets, scale, &title)?;
    let mut out = Outputs::default();
    out.add_bytes(
        &a.output,
        png,
        format!("({} output pixels, {} points each)", sets.len(), k),
    )?;
    out.commit()
}
