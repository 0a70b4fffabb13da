//! # deform-conv-candle
//!
//! Deformable convolution for [candle]: [`deform_conv2d`] on candle `Tensor`s in torchvision's
//! convention (offsets `[N, 2*G*kh*kw, Ho, Wo]` interleaved `(dy, dx)`, optional mask
//! `[N, G*kh*kw, Ho, Wo]`, symmetric padding, groups inferred from the shapes), as a CPU custom op
//! with a backward, so `Tensor::backward` gives every gradient; f32, f64, f16 and bf16 (half
//! types computed in f32). [`DeformConv2d`] is a module in candle-nn's style whose `VarBuilder`
//! names are `weight` and `bias`, so a torchvision `DeformConv2d`'s safetensors load unchanged.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use deform_conv_candle::{deform_conv2d, DeformConvConfig};
//! let dev = Device::Cpu;
//! let x = Tensor::randn(0f32, 1., (1, 4, 8, 8), &dev)?;
//! let w = Tensor::randn(0f32, 0.1, (6, 4, 3, 3), &dev)?;
//! let offset = Tensor::randn(0f32, 1., (1, 18, 8, 8), &dev)?;
//! let mask = Tensor::ones((1, 9, 8, 8), candle_core::DType::F32, &dev)?;
//! let cfg = DeformConvConfig { padding: (1, 1), ..Default::default() };
//! let y = deform_conv2d(&x, &offset, &w, None, Some(&mask), &cfg)?;
//! assert_eq!(y.dims(), &[1, 6, 8, 8]);
//! # Ok::<(), candle_core::Error>(())
//! ```
//!
//! The op is a thin adapter: it views candle's CPU storage with its layout (any strides) and calls
//! [`deform_conv::conventions::torchvision`]. Offset and mask travel as one tensor
//! (`cat([offset, mask], 1)`), since a candle custom op takes at most three tensors; the bias is
//! added with candle's own broadcast add, so both stay differentiable.
//!
//! [candle]: https://docs.rs/candle-core

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp3, DType, Layout, Module, Result, Shape, Storage, Tensor, WithDType,
};
use deform_conv::conventions::torchvision::{self, Params};
use deform_conv::Element;
use ndarray::{Array4, ArrayView4, ShapeBuilder};

/// Stride, padding and dilation as `(h, w)` pairs (torchvision's convention).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeformConvConfig {
    /// `(stride_h, stride_w)`.
    pub stride: (usize, usize),
    /// Symmetric `(pad_h, pad_w)`.
    pub padding: (usize, usize),
    /// `(dilation_h, dilation_w)`.
    pub dilation: (usize, usize),
}

impl Default for DeformConvConfig {
    fn default() -> Self {
        DeformConvConfig {
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
        }
    }
}

impl DeformConvConfig {
    fn params(&self) -> Params {
        let p = |(a, b): (usize, usize)| [a as i64, b as i64];
        Params {
            stride: p(self.stride),
            padding: p(self.padding),
            dilation: p(self.dilation),
            ..Params::default()
        }
    }
}

fn err(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("deform_conv2d: {e}"))
}

/// `torchvision.ops.deform_conv2d` on candle tensors (CPU): `y = DCN(input, offset, weight,
/// mask) + bias`. Differentiable in `input`, `offset`, `mask`, `weight` and `bias`.
pub fn deform_conv2d(
    input: &Tensor,
    offset: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    mask: Option<&Tensor>,
    cfg: &DeformConvConfig,
) -> Result<Tensor> {
    let op = DeformConvOp {
        cfg: *cfg,
        offset_channels: offset.dims().get(1).copied().unwrap_or(0),
        with_mask: mask.is_some(),
    };
    let offmask = match mask {
        Some(m) => Tensor::cat(&[offset, m], 1)?,
        None => offset.clone(),
    };
    let y = input.apply_op3(&offmask, weight, op)?;
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?),
        None => Ok(y),
    }
}

/// The custom op: `(input, cat(offset, mask), weight) -> y`.
#[derive(Clone, Copy, Debug)]
struct DeformConvOp {
    cfg: DeformConvConfig,
    offset_channels: usize,
    with_mask: bool,
}

/// A 4-D view of candle CPU data with its layout (any strides and start offset).
fn view<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, name: &str) -> Result<ArrayView4<'a, T>> {
    let data = s.as_slice::<T>()?;
    let (dims, strides) = (l.dims(), l.stride());
    if dims.len() != 4 {
        return Err(err(format!(
            "{name}: expected a 4-D tensor, got shape {dims:?}"
        )));
    }
    let shape = (dims[0], dims[1], dims[2], dims[3])
        .strides((strides[0], strides[1], strides[2], strides[3]));
    ArrayView4::from_shape(shape, &data[l.start_offset()..])
        .map_err(|e| err(format!("{name}: {e}")))
}

/// Splits `cat(offset, mask)` back into its two views.
fn split<'a, T>(
    om: ArrayView4<'a, T>,
    offset_channels: usize,
    with_mask: bool,
) -> (ArrayView4<'a, T>, Option<ArrayView4<'a, T>>) {
    if with_mask {
        let (o, m) = om.split_at(ndarray::Axis(1), offset_channels);
        (o, Some(m))
    } else {
        (om, None)
    }
}

/// The elements of `a` in standard order and its shape (no copy when `a` is standard, as every
/// result of the core is).
fn into_vec<T: WithDType>(a: Array4<T>) -> (Vec<T>, Shape) {
    let shape = Shape::from(a.shape().to_vec());
    let v = if a.is_standard_layout() {
        a.into_raw_vec_and_offset().0
    } else {
        a.iter().copied().collect()
    };
    (v, shape)
}

fn storage<T: WithDType>(a: Array4<T>) -> (CpuStorage, Shape) {
    let (v, shape) = into_vec(a);
    (T::to_cpu_storage_owned(v), shape)
}

impl DeformConvOp {
    fn forward<T: Element + WithDType>(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = view::<T>(s1, l1, "input")?;
        let (off, mask) = split(
            view::<T>(s2, l2, "offset")?,
            self.offset_channels,
            self.with_mask,
        );
        let w = view::<T>(s3, l3, "weight")?;
        let y =
            torchvision::deform_conv2d(x, off, w, None, mask, &self.cfg.params()).map_err(err)?;
        Ok(storage(y))
    }

    fn backward<T: Element + WithDType>(
        &self,
        x: &Tensor,
        om: &Tensor,
        w: &Tensor,
        gy: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (xs, xl) = x.storage_and_layout();
        let (oms, oml) = om.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let gy = gy.contiguous()?;
        let (gs, gl) = gy.storage_and_layout();
        // Borrowed in place: no copy of the operands.
        let (Storage::Cpu(xc), Storage::Cpu(omc), Storage::Cpu(wc), Storage::Cpu(gc)) =
            (&*xs, &*oms, &*ws, &*gs)
        else {
            return Err(err("only CPU tensors are supported"));
        };
        let xv = view::<T>(xc, xl, "input")?;
        let (off, mask) = split(
            view::<T>(omc, oml, "offset")?,
            self.offset_channels,
            self.with_mask,
        );
        let wv = view::<T>(wc, wl, "weight")?;
        let gv = view::<T>(gc, gl, "grad_output")?;
        let g =
            torchvision::deform_conv2d_backward(gv, xv, off, wv, None, mask, &self.cfg.params())
                .map_err(err)?;
        let gom = match g.mask {
            Some(m) => {
                ndarray::concatenate(ndarray::Axis(1), &[g.offset.view(), m.view()]).map_err(err)?
            }
            None => g.offset,
        };
        let dev = x.device();
        let tensor = |a: Array4<T>| -> Result<Tensor> {
            let (v, shape) = into_vec(a);
            Tensor::from_vec(v, shape, dev)
        };
        Ok((tensor(g.input)?, tensor(gom)?, tensor(g.weight)?))
    }
}

impl CustomOp3 for DeformConvOp {
    fn name(&self) -> &'static str {
        "deform-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        match (s1.dtype(), s2.dtype(), s3.dtype()) {
            (a, b, c) if a != b || a != c => Err(err(format!(
                "expected one dtype, got input {a:?}, offset/mask {b:?}, weight {c:?}"
            ))),
            (DType::F32, ..) => self.forward::<f32>(s1, l1, s2, l2, s3, l3),
            (DType::F64, ..) => self.forward::<f64>(s1, l1, s2, l2, s3, l3),
            (DType::F16, ..) => self.forward::<half::f16>(s1, l1, s2, l2, s3, l3),
            (DType::BF16, ..) => self.forward::<half::bf16>(s1, l1, s2, l2, s3, l3),
            (other, ..) => Err(err(format!(
                "expected dtype f16, bf16, f32 or f64, got {other:?}"
            ))),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        om: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (gx, gom, gw) = match x.dtype() {
            DType::F32 => self.backward::<f32>(x, om, w, gy)?,
            DType::F64 => self.backward::<f64>(x, om, w, gy)?,
            DType::F16 => self.backward::<half::f16>(x, om, w, gy)?,
            DType::BF16 => self.backward::<half::bf16>(x, om, w, gy)?,
            other => {
                return Err(err(format!(
                    "expected dtype f16, bf16, f32 or f64, got {other:?}"
                )))
            }
        };
        Ok((Some(gx), Some(gom), Some(gw)))
    }
}

/// A deformable convolution layer in candle-nn's style: `weight [Cout, Cin/groups, kh, kw]` and
/// `bias [Cout]` from a `VarBuilder` under those names (torchvision's `DeformConv2d` keys).
/// `forward(x, offset, mask)` as torchvision's module.
#[derive(Clone, Debug)]
pub struct DeformConv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    cfg: DeformConvConfig,
}

impl DeformConv2d {
    /// A layer from existing tensors.
    pub fn new(weight: Tensor, bias: Option<Tensor>, cfg: DeformConvConfig) -> Self {
        DeformConv2d { weight, bias, cfg }
    }

    /// `weight` (and `bias` when `bias`) from `vb`, initialised as torchvision does when `vb`
    /// creates them (kaiming-uniform bound `1/sqrt(fan_in)`).
    pub fn load(
        vb: candle_nn::VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize),
        groups: usize,
        bias: bool,
        cfg: DeformConvConfig,
    ) -> Result<Self> {
        if groups == 0
            || !in_channels.is_multiple_of(groups)
            || !out_channels.is_multiple_of(groups)
        {
            return Err(err(format!(
                "groups: expected a divisor of {in_channels} and {out_channels}, got {groups}"
            )));
        }
        let fan_in = in_channels / groups * kernel.0 * kernel.1;
        let bound = 1. / (fan_in as f64).sqrt();
        let init = candle_nn::Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let weight = vb.get_with_hints(
            (out_channels, in_channels / groups, kernel.0, kernel.1),
            "weight",
            init,
        )?;
        let bias = if bias {
            Some(vb.get_with_hints(out_channels, "bias", init)?)
        } else {
            None
        };
        Ok(DeformConv2d { weight, bias, cfg })
    }

    /// The weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// `y = deform_conv2d(x, offset, weight, bias, mask)`.
    pub fn forward(&self, x: &Tensor, offset: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        deform_conv2d(x, offset, &self.weight, self.bias.as_ref(), mask, &self.cfg)
    }
}

/// A DCNv2 block with its own offset/mask convolution (`conv_offset`), so it is a plain
/// [`Module`]: `offset, mask = split(conv_offset(x))`, `mask = sigmoid(mask)`.
#[derive(Clone, Debug)]
pub struct DeformConv2dPack {
    /// The offset/mask convolution: `3 * kh * kw` output channels.
    pub conv_offset: candle_nn::Conv2d,
    /// The deformable convolution.
    pub dcn: DeformConv2d,
}

impl Module for DeformConv2dPack {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let om = self.conv_offset.forward(x)?;
        let k = om.dim(1)? / 3;
        let offset = om.narrow(1, 0, 2 * k)?;
        let mask = candle_nn::ops::sigmoid(&om.narrow(1, 2 * k, k)?)?;
        self.dcn.forward(x, &offset, Some(&mask))
    }
}
