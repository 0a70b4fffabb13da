//! DCNv3 (InternImage) and DCNv4 (FlashInternImage): channels-last deformable sampling with no
//! weight inside the op (docs/SPEC.md §6).
//!
//! ```text
//! input  [N, H, W, G*D]            channels-last, G groups of D = group_channels channels
//! DCNv3: offset [N, Ho, Wo, G*P*2] (x, y) per point; mask [N, Ho, Wo, G*P] (already normalised)
//! DCNv4: offset_mask [N, Ho, Wo, >= G*P*3]: per group P (x, y) pairs then P masks; the last
//!        dimension padded (DCNv4 pads it to a multiple of 8), the padding ignored
//! output [N, Ho, Wo, G*D]
//! Ho = (H + 2*pad_h - (dil_h*(kh - 1) + 1)) / stride_h + 1   (and Wo alike)
//! ```
//!
//! Point `p` of a group runs over the kernel columns `i < kw` outer and rows `j < kh` inner
//! (`p = i*kh + j`), the centre `(kw/2, kh/2)` left out when `remove_center`:
//!
//! ```text
//! a_w = (dil_w*(kw - 1)) / 2                      (integer division)
//! x = (a_w - pad_w + ow*stride_w) - a_w*scale + (i*dil_w + off_x)*scale
//! y = (a_h - pad_h + oh*stride_h) - a_h*scale + (j*dil_h + off_y)*scale
//! out[n, oh, ow, g*D + c] = sum_p mask[n, oh, ow, g*P + p] * bilinear(X[n, :, :, g*D + c], y, x)
//! ```
//!
//! in pixel coordinates (pixel centres on integers), zero outside the image, a sample counted
//! only strictly inside `(-1, H) x (-1, W)`: InternImage's and DCNv4's CUDA kernels. The
//! gradients are the same formula's (`d off = scale * d position`; the mask gradient is the
//! sample's value).
//!
//! ```
//! use deform_conv::conventions::dcnv3::{dcnv3, dcnv3_backward, Dcnv3Params};
//! use ndarray::{Array4, Array};
//!
//! let p = Dcnv3Params { group: 2, group_channels: 4, padding: [1, 1], ..Dcnv3Params::default() };
//! let x = Array4::<f32>::from_shape_fn((1, 6, 5, 8), |(_, y, x, c)| (y * 5 + x + c) as f32);
//! let offset = Array4::<f32>::zeros((1, 6, 5, 2 * 9 * 2));
//! let mask = Array4::<f32>::from_elem((1, 6, 5, 2 * 9), 1.0 / 9.0);
//! let y = dcnv3(x.view(), offset.view(), mask.view(), &p)?;
//! assert_eq!(y.shape(), &[1, 6, 5, 8]);
//! // Zero offsets, a uniform mask: the 3x3 box mean (zero outside the image).
//! let box_mean: f32 = (0..3).flat_map(|dy| (0..3).map(move |dx| ((1 + dy) * 5 + 1 + dx) as f32)).sum::<f32>() / 9.0;
//! assert!((y[[0, 2, 2, 0]] - box_mean).abs() < 1e-5);
//! let g = dcnv3_backward(Array::ones(y.raw_dim()).view(), x.view(), offset.view(), mask.view(), &p)?;
//! assert_eq!(g.offset.shape(), offset.shape());
//! # Ok::<(), deform_conv::DeformError>(())
//! ```

use crate::alloc::try_alloc;
use crate::element::Element;
use crate::error::{check_rank, checked_product, DeformError, Result};
use crate::op::Backend;
use ndarray::{Array4, ArrayView4, ArrayViewMut4, IntoDimension, Ix4};

/// The operator's attributes, as `DCNv3Function` / `DCNv4Function` take them.
#[derive(Debug, Clone, PartialEq)]
pub struct Dcnv3Params {
    /// `[kernel_h, kernel_w]`.
    pub kernel: [i64; 2],
    /// `[stride_h, stride_w]`.
    pub stride: [i64; 2],
    /// `[pad_h, pad_w]`: InternImage's CUDA kernel pads H by `pad_h` and W by `pad_w` (its
    /// `dcnv3_core_pytorch` swaps them when they differ; SPEC §6).
    pub padding: [i64; 2],
    /// `[dilation_h, dilation_w]`.
    pub dilation: [i64; 2],
    /// Groups `G`.
    pub group: i64,
    /// Channels per group `D`.
    pub group_channels: i64,
    /// Scale of the offsets (and of the kernel's own grid around its centre).
    pub offset_scale: f64,
    /// Leave out the kernel's centre point (odd square kernels only).
    pub remove_center: bool,
    /// Which implementation computes.
    pub backend: Backend,
}

impl Default for Dcnv3Params {
    fn default() -> Self {
        Dcnv3Params {
            kernel: [3, 3],
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            group: 1,
            group_channels: 1,
            offset_scale: 1.0,
            remove_center: false,
            backend: Backend::Engine,
        }
    }
}

/// A validated DCNv3/DCNv4 geometry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dcnv3Geometry {
    /// Batch.
    pub n: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Groups.
    pub g: usize,
    /// Channels per group.
    pub d: usize,
    /// Kernel height and width.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Strides `[h, w]`.
    pub stride: [usize; 2],
    /// Paddings `[h, w]`.
    pub pad: [usize; 2],
    /// Dilations `[h, w]`.
    pub dil: [usize; 2],
    /// Output height.
    pub ho: usize,
    /// Output width.
    pub wo: usize,
    /// Points per group: `kh*kw`, less the centre when `remove_center`.
    pub points: usize,
    /// `offset_scale`.
    pub scale: f64,
    /// `remove_center`.
    pub remove_center: bool,
}

impl Dcnv3Geometry {
    /// Channels `G*D`.
    pub fn c(&self) -> usize {
        self.g * self.d
    }

    /// The kernel column and row `(i, j)` of point `p` (columns outer, rows inner, the centre
    /// skipped when `remove_center`).
    pub fn tap(&self, p: usize) -> (usize, usize) {
        let centre = (self.kw / 2) * self.kh + self.kh / 2;
        let q = if self.remove_center && p >= centre {
            p + 1
        } else {
            p
        };
        (q / self.kh, q % self.kh)
    }

    /// `(base_y, base_x)`: the sample of point `(i, j)` at output `(oh, ow)` is
    /// `base + (tap*dil + offset) * scale` with `base = (a - pad + o*stride) - a*scale`.
    pub fn base(&self, oh: usize, ow: usize) -> (f64, f64) {
        let ah = (self.dil[0] * (self.kh - 1) / 2) as i64;
        let aw = (self.dil[1] * (self.kw - 1) / 2) as i64;
        let p0h = ah - self.pad[0] as i64 + (oh * self.stride[0]) as i64;
        let p0w = aw - self.pad[1] as i64 + (ow * self.stride[1]) as i64;
        (
            p0h as f64 - ah as f64 * self.scale,
            p0w as f64 - aw as f64 * self.scale,
        )
    }

    /// The output shape `[N, Ho, Wo, G*D]`.
    pub fn output_shape(&self) -> [usize; 4] {
        [self.n, self.ho, self.wo, self.c()]
    }
}

fn positive(name: &str, v: i64) -> Result<usize> {
    if v < 1 {
        return Err(DeformError::parameter(name, "a positive integer", v));
    }
    usize::try_from(v).map_err(|_| DeformError::parameter(name, "a size that fits usize", v))
}

impl Dcnv3Params {
    /// Checks every attribute against the input's shape `[N, H, W, C]` and computes the
    /// geometry; the offset and mask shapes are checked by the op that reads them.
    pub fn validate(&self, input: &[usize]) -> Result<Dcnv3Geometry> {
        let [n, h, w, c]: [usize; 4] = check_rank("input", input)?;
        let kh = positive("kernel_h", self.kernel[0])?;
        let kw = positive("kernel_w", self.kernel[1])?;
        let sh = positive("stride_h", self.stride[0])?;
        let sw = positive("stride_w", self.stride[1])?;
        let dh = positive("dilation_h", self.dilation[0])?;
        let dw = positive("dilation_w", self.dilation[1])?;
        let g = positive("group", self.group)?;
        let d = positive("group_channels", self.group_channels)?;
        let pad = |name: &str, v: i64| {
            usize::try_from(v)
                .map_err(|_| DeformError::parameter(name, "a non-negative integer", v))
        };
        let (ph, pw) = (
            pad("pad_h", self.padding[0])?,
            pad("pad_w", self.padding[1])?,
        );
        if !self.offset_scale.is_finite() {
            return Err(DeformError::parameter(
                "offset_scale",
                "a finite number",
                self.offset_scale,
            ));
        }
        if self.remove_center && (kh != kw || kh % 2 == 0) {
            return Err(DeformError::parameter(
                "remove_center",
                "an odd square kernel (InternImage: remove_center is only compatible with square odd kernel size)",
                [kh, kw],
            ));
        }
        checked_product("input", input)?;
        if checked_product("group * group_channels", &[g, d])? != c {
            return Err(DeformError::shape(
                "input",
                format!(
                    "[N, H, W, group * group_channels = {}]",
                    g.saturating_mul(d)
                ),
                input,
            ));
        }
        let out = |size: usize, pad: usize, k: usize, dil: usize, s: usize, name: &str| {
            let span = checked_product(name, &[dil, k - 1])?.saturating_add(1);
            let padded = size.saturating_add(pad.saturating_mul(2));
            if padded < span || padded == usize::MAX {
                return Err(DeformError::parameter(
                    name,
                    format!("an input of at least {span} (the dilated kernel), padding included"),
                    padded,
                ));
            }
            Ok((padded - span) / s + 1)
        };
        let ho = out(h, ph, kh, dh, sh, "input height")?;
        let wo = out(w, pw, kw, dw, sw, "input width")?;
        let points = kh * kw - usize::from(self.remove_center);
        checked_product("offset", &[n, ho, wo, g, points, 3])?;
        // Sample positions must fit i64 and the engine's i32 pixel indices.
        checked_product("sampling grid", &[ho, sh])?;
        checked_product("sampling grid", &[wo, sw])?;
        Ok(Dcnv3Geometry {
            n,
            h,
            w,
            g,
            d,
            kh,
            kw,
            stride: [sh, sw],
            pad: [ph, pw],
            dil: [dh, dw],
            ho,
            wo,
            points,
            scale: self.offset_scale,
            remove_center: self.remove_center,
        })
    }
}

/// Input, offset and mask gradients of DCNv3, shaped like the operands.
#[derive(Debug)]
pub struct Dcnv3Gradients<T> {
    /// `dL/dinput` `[N, H, W, G*D]`.
    pub input: Array4<T>,
    /// `dL/doffset` `[N, Ho, Wo, G*P*2]`.
    pub offset: Array4<T>,
    /// `dL/dmask` `[N, Ho, Wo, G*P]`.
    pub mask: Array4<T>,
}

/// Input and offset_mask gradients of DCNv4 (the padding's gradient is zero).
#[derive(Debug)]
pub struct Dcnv4Gradients<T> {
    /// `dL/dinput` `[N, H, W, G*D]`.
    pub input: Array4<T>,
    /// `dL/doffset_mask`, shaped like `offset_mask`.
    pub offset_mask: Array4<T>,
}

/// Where point `p` of group `gi` keeps its offset and mask along the last axis of the offset
/// and mask tensors (one tensor for DCNv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointLayout {
    /// Elements between the offsets of consecutive groups (`2P`; DCNv4 `3P`).
    pub offset_group: usize,
    /// First mask element (`0`; DCNv4 `2P`).
    pub mask_base: usize,
    /// Elements between the masks of consecutive groups (`P`; DCNv4 `3P`).
    pub mask_group: usize,
}

impl PointLayout {
    /// `x` (`xy = 0`) or `y` (`xy = 1`) offset of point `p` of group `gi`.
    pub fn offset(&self, gi: usize, p: usize, xy: usize) -> usize {
        gi * self.offset_group + 2 * p + xy
    }

    /// Mask of point `p` of group `gi`.
    pub fn mask(&self, gi: usize, p: usize) -> usize {
        self.mask_base + gi * self.mask_group + p
    }
}

/// The views the core reads.
pub struct Dcnv3Operands<'a, T> {
    /// `[N, H, W, G*D]`.
    pub input: ArrayView4<'a, T>,
    /// `[N, Ho, Wo, ..]`: the offsets, where [`PointLayout::offset`] says.
    pub offset: ArrayView4<'a, T>,
    /// `[N, Ho, Wo, ..]`: the masks, where [`PointLayout::mask`] says (DCNv4: `offset` again).
    pub mask: ArrayView4<'a, T>,
    /// Where each point's values are.
    pub layout: PointLayout,
}

/// The gradient views the core writes (every element the layout names).
pub struct Dcnv3GradViews<'a, T> {
    /// `[N, H, W, G*D]`.
    pub input: ArrayViewMut4<'a, T>,
    /// `[N, Ho, Wo, ..]`: offset gradients where [`PointLayout::offset`] says, and the mask
    /// gradients too when `mask` is `None` (DCNv4's one tensor).
    pub offset: ArrayViewMut4<'a, T>,
    /// `[N, Ho, Wo, ..]`: mask gradients where [`PointLayout::mask`] says.
    pub mask: Option<ArrayViewMut4<'a, T>>,
}

fn expect_shape(name: &str, got: &[usize], want: &[usize], what: &str) -> Result<()> {
    if got != want {
        return Err(DeformError::shape(name, format!("{what} = {want:?}"), got));
    }
    Ok(())
}

fn run_forward<T: Element>(
    g: &Dcnv3Geometry,
    ops: &Dcnv3Operands<'_, T>,
    backend: Backend,
) -> Result<Array4<T>> {
    match backend {
        Backend::Reference => {
            let mut y: Array4<T> = try_alloc("output", Ix4(g.n, g.ho, g.wo, g.c()))?;
            crate::reference::dcnv3::forward(g, ops, y.view_mut());
            Ok(y)
        }
        Backend::Engine => crate::engine::dcnv3::forward(g, ops, crate::engine::active_isa()),
        Backend::EngineIsa(isa) => crate::engine::dcnv3::forward(g, ops, isa),
    }
}

/// The input, offset and (DCNv3) mask gradients.
pub(crate) type GradArrays<T> = (Array4<T>, Array4<T>, Option<Array4<T>>);

/// The input, offset (`offset_shape`) and, with `mask`, mask gradients' buffers, each made by
/// `alloc(name, shape)` (zeroed for the reference, unwritten for the engine).
pub(crate) fn grad_buffers<B>(
    g: &Dcnv3Geometry,
    (offset_shape, mask): ([usize; 4], bool),
    alloc: impl Fn(&str, Ix4) -> Result<B>,
) -> Result<(B, B, Option<B>)> {
    let gi = alloc("grad_input", Ix4(g.n, g.h, g.w, g.c()))?;
    let go = alloc("grad_offset", offset_shape.into_dimension())?;
    let gm = match mask {
        true => Some(alloc("grad_mask", Ix4(g.n, g.ho, g.wo, g.g * g.points))?),
        false => None,
    };
    Ok((gi, go, gm))
}

/// The input gradient, the offset gradient (`offset_shape`) and, with `mask`, the mask's.
fn run_backward<T: Element>(
    g: &Dcnv3Geometry,
    ops: &Dcnv3Operands<'_, T>,
    grad_output: ArrayView4<'_, T>,
    (offset_shape, mask): ([usize; 4], bool),
    backend: Backend,
) -> Result<GradArrays<T>> {
    expect_shape(
        "grad_output",
        grad_output.shape(),
        &g.output_shape(),
        "the output's shape",
    )?;
    let isa = match backend {
        Backend::Reference => {
            let (mut gi, mut go, mut gm) = grad_buffers(g, (offset_shape, mask), |name, shape| {
                try_alloc::<T, _>(name, shape)
            })?;
            let views = Dcnv3GradViews {
                input: gi.view_mut(),
                offset: go.view_mut(),
                mask: gm.as_mut().map(|m| m.view_mut()),
            };
            crate::reference::dcnv3::backward(g, ops, grad_output, views);
            return Ok((gi, go, gm));
        }
        Backend::Engine => crate::engine::active_isa(),
        Backend::EngineIsa(isa) => isa,
    };
    crate::engine::dcnv3::backward(g, ops, grad_output, (offset_shape, mask), isa)
}

fn dcnv3_operands<'a, T>(
    input: ArrayView4<'a, T>,
    offset: ArrayView4<'a, T>,
    mask: ArrayView4<'a, T>,
    p: &Dcnv3Params,
) -> Result<(Dcnv3Geometry, Dcnv3Operands<'a, T>)> {
    let g = p.validate(input.shape())?;
    let np = g.g * g.points;
    expect_shape(
        "offset",
        offset.shape(),
        &[g.n, g.ho, g.wo, np * 2],
        "[N, Ho, Wo, group * points * 2]",
    )?;
    expect_shape(
        "mask",
        mask.shape(),
        &[g.n, g.ho, g.wo, np],
        "[N, Ho, Wo, group * points]",
    )?;
    let ops = Dcnv3Operands {
        input,
        offset,
        mask,
        layout: PointLayout {
            offset_group: 2 * g.points,
            mask_base: 0,
            mask_group: g.points,
        },
    };
    Ok((g, ops))
}

/// DCNv3's forward: `output [N, Ho, Wo, G*D]` (see the module documentation).
pub fn dcnv3<T: Element>(
    input: ArrayView4<'_, T>,
    offset: ArrayView4<'_, T>,
    mask: ArrayView4<'_, T>,
    p: &Dcnv3Params,
) -> Result<Array4<T>> {
    let (g, ops) = dcnv3_operands(input, offset, mask, p)?;
    run_forward(&g, &ops, p.backend)
}

/// DCNv3's backward: the input, offset and mask gradients for `grad_output [N, Ho, Wo, G*D]`.
pub fn dcnv3_backward<T: Element>(
    grad_output: ArrayView4<'_, T>,
    input: ArrayView4<'_, T>,
    offset: ArrayView4<'_, T>,
    mask: ArrayView4<'_, T>,
    p: &Dcnv3Params,
) -> Result<Dcnv3Gradients<T>> {
    let (g, ops) = dcnv3_operands(input, offset, mask, p)?;
    let shape = [g.n, g.ho, g.wo, g.g * g.points * 2];
    let (input, offset, mask) = run_backward(&g, &ops, grad_output, (shape, true), p.backend)?;
    Ok(Dcnv3Gradients {
        input,
        offset,
        mask: mask.expect("asked for the mask gradient"),
    })
}

fn dcnv4_operands<'a, T>(
    input: ArrayView4<'a, T>,
    offset_mask: ArrayView4<'a, T>,
    p: &Dcnv3Params,
) -> Result<(Dcnv3Geometry, Dcnv3Operands<'a, T>)> {
    let g = p.validate(input.shape())?;
    let per_group = 3 * g.points;
    let used = g.g * per_group;
    let s = offset_mask.shape().to_vec();
    if s[..3] != [g.n, g.ho, g.wo] || s[3] < used {
        return Err(DeformError::shape(
            "offset_mask",
            format!(
                "[N = {}, Ho = {}, Wo = {}, at least group * points * 3 = {used}]",
                g.n, g.ho, g.wo
            ),
            &s,
        ));
    }
    Ok((
        g,
        Dcnv3Operands {
            input,
            offset: offset_mask,
            mask: offset_mask,
            layout: PointLayout {
                offset_group: per_group,
                mask_base: 2 * g.points,
                mask_group: per_group,
            },
        },
    ))
}

/// DCNv4's forward: `output [N, Ho, Wo, G*D]` from one packed `offset_mask` (no softmax inside).
pub fn dcnv4<T: Element>(
    input: ArrayView4<'_, T>,
    offset_mask: ArrayView4<'_, T>,
    p: &Dcnv3Params,
) -> Result<Array4<T>> {
    let (g, ops) = dcnv4_operands(input, offset_mask, p)?;
    run_forward(&g, &ops, p.backend)
}

/// DCNv4's backward: the input and offset_mask gradients (zero on `offset_mask`'s padding).
pub fn dcnv4_backward<T: Element>(
    grad_output: ArrayView4<'_, T>,
    input: ArrayView4<'_, T>,
    offset_mask: ArrayView4<'_, T>,
    p: &Dcnv3Params,
) -> Result<Dcnv4Gradients<T>> {
    let (g, ops) = dcnv4_operands(input, offset_mask, p)?;
    let s = offset_mask.shape();
    let shape = [s[0], s[1], s[2], s[3]];
    let (input, offset_mask, _) = run_backward(&g, &ops, grad_output, (shape, false), p.backend)?;
    Ok(Dcnv4Gradients { input, offset_mask })
}
