//! `run` and `convert`: .npy files through the crate's conventions and layout converters.

use crate::npy::{self, Pick, Tensor};
use crate::outputs::Outputs;
use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use deform_conv::conventions::{int_or_pair, mindspore, npu, onnx, torchvision, Layout};
use deform_conv::{layout, Backend, Element};
use ndarray::{Array1, Array4};
use std::path::{Path, PathBuf};

/// A convention of SPEC §3.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Convention {
    /// torchvision / mmcv: interleaved (dy, dx) offsets, separate mask, symmetric padding.
    Torchvision,
    /// ONNX DeformConv: pads [top, left, bottom, right], group, offset_group.
    Onnx,
    /// MindSpore: packed [dx | dy | mask], strides (1, 1, h, w), padding (top, bottom, left, right).
    Mindspore,
    /// torch_npu, NCHW: MindSpore's packing, returns the output and the deformed image.
    Npu,
    /// torch_npu, channels-last reading of its document: NHWC input, HWCN weight, NHWC offset.
    NpuNhwc,
}

impl Convention {
    /// The convention's name as users know it.
    pub fn name(self) -> &'static str {
        match self {
            Convention::Torchvision => "torchvision",
            Convention::Onnx => "ONNX DeformConv",
            Convention::Mindspore => "MindSpore",
            Convention::Npu => "torch_npu",
            Convention::NpuNhwc => "torch_npu (NHWC)",
        }
    }
}

/// Which implementation computes.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum BackendArg {
    /// The fast engine.
    Engine,
    /// The plain reference path.
    Reference,
}

impl From<BackendArg> for Backend {
    fn from(b: BackendArg) -> Backend {
        match b {
            BackendArg::Engine => Backend::Engine,
            BackendArg::Reference => Backend::Reference,
        }
    }
}

/// Arguments of `run`. Lists are comma-separated and read with the convention's own meaning.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The convention the files and parameters follow.
    #[arg(long, value_enum)]
    pub convention: Convention,
    /// Input image .npy ([N, C, H, W]; npu-nhwc: [N, H, W, C]).
    #[arg(long)]
    pub input: PathBuf,
    /// Offset .npy (interleaved for torchvision/onnx, packed for mindspore/npu).
    #[arg(long)]
    pub offset: PathBuf,
    /// Weight .npy ([Cout, C/groups, kh, kw]; npu-nhwc: [kh, kw, C/groups, Cout]).
    #[arg(long)]
    pub weight: PathBuf,
    /// Bias .npy [Cout].
    #[arg(long)]
    pub bias: Option<PathBuf>,
    /// Mask .npy [N, G*kh*kw, Ho, Wo] (torchvision, onnx; packed conventions carry it in the offset).
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// torchvision: h[,w]; onnx: h,w; mindspore/npu: 1,1,h,w.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    pub stride: Option<Vec<i64>>,
    /// torchvision: h[,w]; onnx: top,left,bottom,right; mindspore/npu: top,bottom,left,right.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    pub padding: Option<Vec<i64>>,
    /// torchvision: h[,w]; onnx: h,w; mindspore/npu: 1,1,h,w.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    pub dilation: Option<Vec<i64>>,
    /// kh,kw (onnx, mindspore, npu; default: from the weight).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    pub kernel_size: Option<Vec<i64>>,
    /// Convolution groups (onnx: group). torchvision infers it from the shapes.
    #[arg(long, allow_negative_numbers = true)]
    pub groups: Option<i64>,
    /// Deformable groups (onnx: offset_group). torchvision infers it from the shapes.
    #[arg(long, allow_negative_numbers = true)]
    pub deformable_groups: Option<i64>,
    /// Where to write the output .npy.
    #[arg(long)]
    pub output: PathBuf,
    /// Where to write the deformed image .npy (npu, npu-nhwc).
    #[arg(long)]
    pub deformed: Option<PathBuf>,
    /// Gradient of the output .npy: also computes and writes the gradients.
    #[arg(long)]
    pub grad_output: Option<PathBuf>,
    /// Folder for grad_input.npy, grad_offset.npy, grad_mask.npy, grad_weight.npy, grad_bias.npy.
    #[arg(long, default_value = ".")]
    pub grad_dir: PathBuf,
    /// Which implementation computes.
    #[arg(long, value_enum, default_value = "engine")]
    pub backend: BackendArg,
}

pub fn run(a: &RunArgs) -> Result<()> {
    match npy::load(&a.input, "input")? {
        Tensor::F16(_) => run_typed::<half::f16>(a),
        Tensor::F32(_) => run_typed::<f32>(a),
        Tensor::F64(_) => run_typed::<f64>(a),
    }
}

fn kernel_from_weight(w: &Array4<impl Copy>, c: Convention) -> Vec<i64> {
    let s = w.shape();
    match c {
        Convention::NpuNhwc => vec![s[0] as i64, s[1] as i64],
        _ => vec![s[2] as i64, s[3] as i64],
    }
}

/// Queues the gradients that exist as `dir/<name>.npy`.
fn add_grads<T: npy::Save>(
    out: &mut Outputs,
    dir: &Path,
    list: Vec<(&str, Option<GradArray<T>>)>,
) -> Result<()> {
    if !dir.is_dir() {
        bail!("--grad-dir {}: the folder does not exist", dir.display());
    }
    for (name, g) in list {
        let path = dir.join(format!("{name}.npy"));
        match g {
            Some(GradArray::Four(a)) => out.add(&path, &a)?,
            Some(GradArray::One(a)) => out.add(&path, &a)?,
            None => {}
        }
    }
    Ok(())
}

enum GradArray<T> {
    Four(Array4<T>),
    One(Array1<T>),
}

fn run_typed<T: Element + Pick + npy::Save + num_traits::One>(a: &RunArgs) -> Result<()> {
    let x = npy::load4::<T>(&a.input, "input")?;
    let off = npy::load4::<T>(&a.offset, "offset")?;
    let w = npy::load4::<T>(&a.weight, "weight")?;
    let b = a
        .bias
        .as_deref()
        .map(|p| npy::load1::<T>(p, "bias"))
        .transpose()?;
    let m = a
        .mask
        .as_deref()
        .map(|p| npy::load4::<T>(p, "mask"))
        .transpose()?;
    let gy = a
        .grad_output
        .as_deref()
        .map(|p| npy::load4::<T>(p, "grad_output"))
        .transpose()?;
    let backend: Backend = a.backend.into();
    let mut out = Outputs::default();
    let packed = matches!(
        a.convention,
        Convention::Mindspore | Convention::Npu | Convention::NpuNhwc
    );
    if packed && m.is_some() {
        bail!(
            "--mask: the {:?} convention carries the mask in the offset's third block",
            a.convention
        );
    }
    if a.deformed.is_some() && !matches!(a.convention, Convention::Npu | Convention::NpuNhwc) {
        bail!("--deformed: only the npu conventions return the deformed image");
    }
    match a.convention {
        Convention::Torchvision => {
            if a.groups.is_some() || a.deformable_groups.is_some() || a.kernel_size.is_some() {
                bail!("--groups/--deformable-groups/--kernel-size: torchvision infers them from the shapes");
            }
            let p = torchvision::Params {
                stride: int_or_pair("stride", a.stride.as_deref().unwrap_or(&[1]))?,
                padding: int_or_pair("padding", a.padding.as_deref().unwrap_or(&[0]))?,
                dilation: int_or_pair("dilation", a.dilation.as_deref().unwrap_or(&[1]))?,
                backend,
                ..torchvision::Params::default()
            };
            let y = torchvision::deform_conv2d(
                x.view(),
                off.view(),
                w.view(),
                b.as_ref().map(|b| b.view()),
                m.as_ref().map(|m| m.view()),
                &p,
            )?;
            out.add(&a.output, &y)?;
            if let Some(gy) = gy {
                let g = torchvision::deform_conv2d_backward(
                    gy.view(),
                    x.view(),
                    off.view(),
                    w.view(),
                    b.as_ref().map(|b| b.view()),
                    m.as_ref().map(|m| m.view()),
                    &p,
                )?;
                add_grads(
                    &mut out,
                    &a.grad_dir,
                    vec![
                        ("grad_input", Some(GradArray::Four(g.input))),
                        ("grad_offset", Some(GradArray::Four(g.offset))),
                        ("grad_mask", g.mask.map(GradArray::Four)),
                        ("grad_weight", Some(GradArray::Four(g.weight))),
                        ("grad_bias", g.bias.map(GradArray::One)),
                    ],
                )?;
            }
        }
        Convention::Onnx => {
            if gy.is_some() {
                bail!("--grad-output: ONNX DeformConv defines no gradient");
            }
            let attrs = onnx::Attributes {
                dilations: a.dilation.clone(),
                group: a.groups.unwrap_or(1),
                kernel_shape: a.kernel_size.clone(),
                offset_group: a.deformable_groups.unwrap_or(1),
                pads: a.padding.clone(),
                strides: a.stride.clone(),
                backend,
            };
            let y = onnx::deform_conv(
                x.view(),
                w.view(),
                off.view(),
                b.as_ref().map(|b| b.view()),
                m.as_ref().map(|m| m.view()),
                &attrs,
            )?;
            out.add(&a.output, &y)?;
        }
        Convention::Mindspore | Convention::Npu | Convention::NpuNhwc => {
            let attrs = mindspore::Attributes {
                kernel_size: a
                    .kernel_size
                    .clone()
                    .unwrap_or_else(|| kernel_from_weight(&w, a.convention)),
                strides: a.stride.clone().unwrap_or(vec![1, 1, 1, 1]),
                padding: a.padding.clone().unwrap_or(vec![0, 0, 0, 0]),
                dilations: a.dilation.clone().unwrap_or(vec![1, 1, 1, 1]),
                groups: a.groups.unwrap_or(1),
                deformable_groups: a.deformable_groups.unwrap_or(1),
                modulated: true,
                backend,
            };
            if a.convention == Convention::Mindspore {
                let y = mindspore::deformable_conv2d(
                    x.view(),
                    w.view(),
                    off.view(),
                    b.as_ref().map(|b| b.view()),
                    &attrs,
                )?;
                out.add(&a.output, &y)?;
                if let Some(gy) = gy {
                    let g = mindspore::deformable_conv2d_backward(
                        gy.view(),
                        x.view(),
                        w.view(),
                        off.view(),
                        b.as_ref().map(|b| b.view()),
                        &attrs,
                    )?;
                    add_grads(
                        &mut out,
                        &a.grad_dir,
                        vec![
                            ("grad_input", Some(GradArray::Four(g.input))),
                            ("grad_offset", Some(GradArray::Four(g.offset))),
                            ("grad_weight", Some(GradArray::Four(g.weight))),
                            ("grad_bias", g.bias.map(GradArray::One)),
                        ],
                    )?;
                }
                return out.commit();
            }
            let layout = if a.convention == Convention::NpuNhwc {
                Layout::Nhwc
            } else {
                Layout::Nchw
            };
            let na = npu::NpuAttributes { attrs, layout };
            let (y, d) = npu::npu_deformable_conv2d(
                x.view(),
                w.view(),
                off.view(),
                b.as_ref().map(|b| b.view()),
                &na,
            )?;
            out.add(&a.output, &y)?;
            if let Some(p) = &a.deformed {
                out.add(p, &d)?;
            }
            if let Some(gy) = gy {
                let g = npu::npu_deformable_conv2dbk(
                    x.view(),
                    gy.view(),
                    d.view(),
                    w.view(),
                    off.view(),
                    &na,
                )?;
                add_grads(
                    &mut out,
                    &a.grad_dir,
                    vec![
                        ("grad_input", Some(GradArray::Four(g.input))),
                        ("grad_offset", Some(GradArray::Four(g.offset))),
                        ("grad_weight", Some(GradArray::Four(g.weight))),
                        ("grad_bias", Some(GradArray::One(g.bias))),
                    ],
                )?;
            }
        }
    }
    out.commit()
}

/// A layout conversion.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Conversion {
    /// Interleaved offset (+ --mask, default ones) → packed [dx | dy | mask].
    InterleavedToPacked,
    /// Packed [dx | dy | mask] → interleaved offset (+ mask to --mask-output).
    PackedToInterleaved,
    /// [N, C, H, W] → [N, H, W, C].
    NchwToNhwc,
    /// [N, H, W, C] → [N, C, H, W].
    NhwcToNchw,
    /// Weight [Cout, C/g, kh, kw] → [kh, kw, C/g, Cout].
    OihwToHwcn,
    /// Weight [kh, kw, C/g, Cout] → [Cout, C/g, kh, kw].
    HwcnToOihw,
}

/// Arguments of `convert`.
#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Which conversion.
    #[arg(value_enum)]
    pub conversion: Conversion,
    /// The array to convert (.npy).
    #[arg(long)]
    pub input: PathBuf,
    /// Mask .npy for interleaved-to-packed.
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// Where to write the result.
    #[arg(long)]
    pub output: PathBuf,
    /// Where packed-to-interleaved writes the mask.
    #[arg(long)]
    pub mask_output: Option<PathBuf>,
}

pub fn convert(a: &ConvertArgs) -> Result<()> {
    match npy::load(&a.input, "input")? {
        Tensor::F16(_) => convert_typed::<half::f16>(a),
        Tensor::F32(_) => convert_typed::<f32>(a),
        Tensor::F64(_) => convert_typed::<f64>(a),
    }
}

fn convert_typed<T: Element + Pick + npy::Save + num_traits::One>(a: &ConvertArgs) -> Result<()> {
    let x = npy::load4::<T>(&a.input, "input")?;
    if a.mask.is_some() && !matches!(a.conversion, Conversion::InterleavedToPacked) {
        bail!("--mask: only interleaved-to-packed takes a mask");
    }
    if a.mask_output.is_some() && !matches!(a.conversion, Conversion::PackedToInterleaved) {
        bail!("--mask-output: only packed-to-interleaved writes a mask");
    }
    let mut files = Outputs::default();
    let out = match a.conversion {
        Conversion::InterleavedToPacked => {
            let m = a
                .mask
                .as_deref()
                .map(|p| npy::load4::<T>(p, "mask"))
                .transpose()?;
            layout::interleaved_to_packed(x.view(), m.as_ref().map(|m| m.view()))?
        }
        Conversion::PackedToInterleaved => {
            let (o, m) = layout::packed_to_interleaved(x.view())?;
            if let Some(p) = &a.mask_output {
                files.add(p, &m)?;
            }
            o
        }
        Conversion::NchwToNhwc => layout::nchw_to_nhwc(x.view())?,
        Conversion::NhwcToNchw => layout::nhwc_to_nchw(x.view())?,
        Conversion::OihwToHwcn => layout::oihw_to_hwcn(x.view())?,
        Conversion::HwcnToOihw => layout::hwcn_to_oihw(x.view())?,
    };
    files.add(&a.output, &out)?;
    files.commit()
}
