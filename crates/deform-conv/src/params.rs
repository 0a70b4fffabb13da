//! Parameters and their one validation, shared by Rust, Python and the CLI.
//!
//! [`DeformParams`] holds what a caller wrote (signed, so a negative padding is reported, not
//! wrapped); [`DeformParams::validate`] checks it against the tensor shapes and returns a
//! [`Geometry`]: every size as `usize`, overflow-checked, with the output size computed by the
//! convention's rounding rule (SPEC §1, §4, §5).

use crate::error::{checked_product, DeformError, Result};

/// How a convention rounds the output size when the dilated window does not fit (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputRounding {
    /// `floor(num / stride) + 1`: MindSpore, torch_npu, ONNX. A window that does not fit gives
    /// `Ho <= 0`, which is rejected.
    #[default]
    Floor,
    /// C integer division, truncating toward zero: torchvision. `-stride < num < 0` gives `Ho = 1`.
    TruncateTowardZero,
}

/// Which samples receive offset and mask gradients (SPEC §2, "the gate at -1").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GradGate {
    /// torchvision, MindSpore CPU: the per-tap rule alone; a sample at exactly `p = -1` has value
    /// 0 but a non-zero offset gradient.
    #[default]
    PerTap,
    /// torch_npu (Ascend), mmcv: every gradient of a sample is zero unless `-1 < py < H` and
    /// `-1 < px < W`.
    Open,
}

/// Convolution parameters as a caller gives them.
///
/// `padding` is `[top, bottom, left, right]`; `kernel` is `None` when it is read from the weight,
/// or `Some([kh, kw])` when the convention also states it (it must then agree with the weight).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeformParams {
    /// `[kh, kw]` stated by the caller, checked against the weight.
    pub kernel: Option<[i64; 2]>,
    /// `[stride_h, stride_w]`, each >= 1.
    pub stride: [i64; 2],
    /// `[top, bottom, left, right]`, each >= 0.
    pub padding: [i64; 4],
    /// `[dil_h, dil_w]`, each >= 1.
    pub dilation: [i64; 2],
    /// Convolution groups `Gc` >= 1.
    pub groups: i64,
    /// Deformable (offset) groups `G` >= 1.
    pub deformable_groups: i64,
    /// Output-size rounding of the convention.
    pub rounding: OutputRounding,
}

impl Default for DeformParams {
    fn default() -> Self {
        DeformParams {
            kernel: None,
            stride: [1, 1],
            padding: [0; 4],
            dilation: [1, 1],
            groups: 1,
            deformable_groups: 1,
            rounding: OutputRounding::Floor,
        }
    }
}

/// The shapes a call brings, in canonical order: input `[N, C, H, W]`, weight
/// `[Cout, C/Gc, kh, kw]`, offset `[N, per_tap*G*K, Ho, Wo]`, mask `[N, G*K, Ho, Wo]`, bias `[Cout]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeSet {
    /// Input `[N, C, H, W]`.
    pub input: [usize; 4],
    /// Weight `[Cout, C/Gc, kh, kw]`.
    pub weight: [usize; 4],
    /// Offset `[N, offset_per_tap*G*K, Ho, Wo]`.
    pub offset: [usize; 4],
    /// Channels per (group, tap) in the offset tensor: 2 (dy, dx), 3 (dx, dy, mask) or 1.
    pub offset_per_tap: usize,
    /// Separate mask `[N, G*K, Ho, Wo]`, if any.
    pub mask: Option<[usize; 4]>,
    /// Bias length, if any.
    pub bias: Option<usize>,
}

/// A validated geometry: every size the kernels need, all in range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Batch.
    pub n: usize,
    /// Input channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride `[h, w]`.
    pub stride: [usize; 2],
    /// Padding `[top, bottom, left, right]`.
    pub padding: [usize; 4],
    /// Dilation `[h, w]`.
    pub dilation: [usize; 2],
    /// Convolution groups `Gc`.
    pub groups: usize,
    /// Deformable groups `G`.
    pub deformable_groups: usize,
    /// Output height.
    pub ho: usize,
    /// Output width.
    pub wo: usize,
}

fn positive(name: &str, v: i64) -> Result<usize> {
    if v < 1 {
        return Err(DeformError::parameter(name, "an integer >= 1", v));
    }
    usize::try_from(v).map_err(|_| DeformError::parameter(name, "a value that fits usize", v))
}

fn non_negative(name: &str, v: i64) -> Result<usize> {
    if v < 0 {
        return Err(DeformError::parameter(name, "an integer >= 0", v));
    }
    usize::try_from(v).map_err(|_| DeformError::parameter(name, "a value that fits usize", v))
}

/// `rounding(num / stride) + 1` with `num = size + pads - (dil*(k-1)+1)`, in i128 so that no
/// input can overflow it.
fn out_size(
    size: usize,
    pad_a: usize,
    pad_b: usize,
    k: usize,
    dil: usize,
    stride: usize,
    r: OutputRounding,
) -> (i128, i128) {
    let win = dil as i128 * (k as i128 - 1) + 1;
    let num = size as i128 + pad_a as i128 + pad_b as i128 - win;
    let s = stride as i128;
    let q = match r {
        OutputRounding::Floor => num.div_euclid(s),
        OutputRounding::TruncateTowardZero => num / s,
    };
    (q + 1, win)
}

impl DeformParams {
    /// Checks every parameter and shape of SPEC §5 and computes the geometry.
    ///
    /// Errors name the parameter or tensor, the expected value and the received one.
    pub fn validate(&self, s: &ShapeSet) -> Result<Geometry> {
        let sh = positive("stride[0] (height)", self.stride[0])?;
        let sw = positive("stride[1] (width)", self.stride[1])?;
        let dh = positive("dilation[0] (height)", self.dilation[0])?;
        let dw = positive("dilation[1] (width)", self.dilation[1])?;
        let pads = [
            non_negative("padding top", self.padding[0])?,
            non_negative("padding bottom", self.padding[1])?,
            non_negative("padding left", self.padding[2])?,
            non_negative("padding right", self.padding[3])?,
        ];
        let gc = positive("groups", self.groups)?;
        let g = positive("deformable_groups", self.deformable_groups)?;

        let [n, c, h, w] = s.input;
        let [cout, cg, kh, kw] = s.weight;
        checked_product("input", &s.input)?;
        checked_product("weight", &s.weight)?;
        if kh < 1 || kw < 1 {
            return Err(DeformError::shape(
                "weight",
                "[Cout, C/groups, kh, kw] with kh >= 1 and kw >= 1",
                &s.weight,
            ));
        }
        if let Some([skh, skw]) = self.kernel {
            let skh = positive("kernel_size[0] (height)", skh)?;
            let skw = positive("kernel_size[1] (width)", skw)?;
            if (skh, skw) != (kh, kw) {
                return Err(DeformError::parameter(
                    "kernel_size",
                    format!("[{kh}, {kw}], the weight's spatial size"),
                    [skh, skw],
                ));
            }
        }
        if c % gc != 0 {
            return Err(DeformError::parameter(
                "groups",
                format!("a divisor of the input channels C = {c}"),
                gc,
            ));
        }
        if cout % gc != 0 {
            return Err(DeformError::parameter(
                "groups",
                format!("a divisor of the output channels Cout = {cout}"),
                gc,
            ));
        }
        if c % g != 0 {
            return Err(DeformError::parameter(
                "deformable_groups",
                format!("a divisor of the input channels C = {c}"),
                g,
            ));
        }
        if cg != c / gc {
            return Err(DeformError::shape(
                "weight",
                format!("[Cout, C/groups = {}, kh, kw]", c / gc),
                &s.weight,
            ));
        }
        if let Some(len) = s.bias {
            if len != cout {
                return Err(DeformError::shape(
                    "bias",
                    format!("[Cout = {cout}]"),
                    &[len],
                ));
            }
        }

        let (ho, win_h) = out_size(h, pads[0], pads[1], kh, dh, sh, self.rounding);
        let (wo, win_w) = out_size(w, pads[2], pads[3], kw, dw, sw, self.rounding);
        if ho < 1 || wo < 1 {
            return Err(DeformError::OutputSize {
                ho,
                wo,
                h,
                w,
                win_h,
                win_w,
                sh: self.stride[0],
                sw: self.stride[1],
            });
        }
        let too_big = |what: &str| DeformError::Overflow {
            name: "output".into(),
            detail: format!("{what} does not fit usize"),
        };
        let ho = usize::try_from(ho).map_err(|_| too_big("Ho"))?;
        let wo = usize::try_from(wo).map_err(|_| too_big("Wo"))?;
        let k = checked_product("kernel", &[kh, kw])?;
        let gk = checked_product("offset", &[g, k])?;
        let off_c = checked_product("offset", &[s.offset_per_tap, gk])?;
        // Every tensor the op may form must have an element count that fits.
        checked_product("output", &[n, cout, ho, wo])?;
        checked_product("offset", &[n, off_c, ho, wo])?;
        checked_product("deformed image", &[n, c, ho, kh, wo, kw])?;
        // Sampling positions `o*stride + i*dil` must fit i64.
        checked_product("sampling grid", &[ho, sh])?;
        checked_product("sampling grid", &[wo, sw])?;
        checked_product("sampling grid", &[kh, dh])?;
        checked_product("sampling grid", &[kw, dw])?;
        if i64::try_from(ho.saturating_mul(sh).saturating_add(kh.saturating_mul(dh))).is_err()
            || i64::try_from(wo.saturating_mul(sw).saturating_add(kw.saturating_mul(dw))).is_err()
        {
            return Err(too_big("sampling grid"));
        }

        let expect_off = [n, off_c, ho, wo];
        if s.offset != expect_off {
            return Err(DeformError::shape(
                "offset",
                format!(
                    "[N = {n}, {}*deformable_groups*kh*kw = {off_c}, Ho = {ho}, Wo = {wo}]",
                    s.offset_per_tap
                ),
                &s.offset,
            ));
        }
        if let Some(m) = s.mask {
            let expect = [n, gk, ho, wo];
            if m != expect {
                return Err(DeformError::shape(
                    "mask",
                    format!("[N = {n}, deformable_groups*kh*kw = {gk}, Ho = {ho}, Wo = {wo}]"),
                    &m,
                ));
            }
        }
        Ok(Geometry {
            n,
            c,
            h,
            w,
            cout,
            kh,
            kw,
            stride: [sh, sw],
            padding: pads,
            dilation: [dh, dw],
            groups: gc,
            deformable_groups: g,
            ho,
            wo,
        })
    }
}

impl Geometry {
    /// Output height `Ho`.
    pub fn out_h(&self) -> usize {
        self.ho
    }
    /// Output width `Wo`.
    pub fn out_w(&self) -> usize {
        self.wo
    }
    /// Taps per kernel `K = kh*kw`.
    pub fn taps(&self) -> usize {
        self.kh * self.kw
    }
    /// Input channels per convolution group.
    pub fn c_per_group(&self) -> usize {
        self.c / self.groups
    }
    /// Output channels per convolution group.
    pub fn cout_per_group(&self) -> usize {
        self.cout / self.groups
    }
    /// Input channels per deformable group.
    pub fn c_per_deformable_group(&self) -> usize {
        self.c / self.deformable_groups
    }
    /// Output shape `[N, Cout, Ho, Wo]`.
    pub fn output_shape(&self) -> [usize; 4] {
        [self.n, self.cout, self.ho, self.wo]
    }
    /// Shape of one offset component or the mask: `[N, G*K, Ho, Wo]`.
    pub fn tap_shape(&self) -> [usize; 4] {
        [
            self.n,
            self.deformable_groups * self.taps(),
            self.ho,
            self.wo,
        ]
    }
    /// Deformed image shape `[N, C, Ho*kh, Wo*kw]`.
    pub fn deformed_shape(&self) -> [usize; 4] {
        [self.n, self.c, self.ho * self.kh, self.wo * self.kw]
    }
    /// Multiply-accumulates of the forward convolution (for GFLOP/s: flops = 2 * macs).
    pub fn macs(&self) -> f64 {
        self.n as f64
            * self.cout as f64
            * self.ho as f64
            * self.wo as f64
            * self.c_per_group() as f64
            * self.taps() as f64
    }
    /// Integer grid row of output row `oh`, tap row `i`: `oh*stride_h - pad_top + i*dil_h`.
    pub fn grid_y(&self, oh: usize, i: usize) -> i64 {
        (oh * self.stride[0]) as i64 - self.padding[0] as i64 + (i * self.dilation[0]) as i64
    }
    /// Integer grid column of output column `ow`, tap column `j`.
    pub fn grid_x(&self, ow: usize, j: usize) -> i64 {
        (ow * self.stride[1]) as i64 - self.padding[2] as i64 + (j * self.dilation[1]) as i64
    }
}
