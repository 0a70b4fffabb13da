//! Multi-scale deformable attention (Deformable DETR, DINO, Mask2Former; docs/SPEC.md §7).
//!
//! ```text
//! value               [N, S, M, D]      S = sum_l H_l*W_l, M heads of D channels
//! spatial_shapes      [L, 2]            (H_l, W_l)
//! level_start_index   [L]               where level l starts in S (its prefix sums)
//! sampling_locations  [N, Lq, M, L, P, 2]  (x, y) in [0, 1] of level l's image
//! attention_weights   [N, Lq, M, L, P]
//! output              [N, Lq, M*D]
//! out[n, q, m*D + d] = sum_{l, p} A[n, q, m, l, p] * bilinear(V_l[n, :, :, m, d], y*H_l - 0.5, x*W_l - 0.5)
//! ```
//!
//! `bilinear` is SPEC §1's (zero outside level l's image, a sample counted only strictly inside
//! `(-1, H_l) x (-1, W_l)`): `ms_deform_attn_core_pytorch`'s `grid_sample(align_corners=False,
//! padding_mode='zeros')` and the CUDA kernels of Deformable-DETR and mmcv.
//!
//! ```
//! use deform_conv::conventions::msda::{ms_deform_attn, MsdaParams};
//! use ndarray::{Array, Array2, Array1};
//!
//! // Two levels, 4x4 and 2x2; one head of 3 channels; 5 queries, 2 points per level.
//! let shapes = Array2::from_shape_vec((2, 2), vec![4i64, 4, 2, 2]).unwrap();
//! let start = Array1::from(vec![0i64, 16]);
//! let value = Array::from_shape_fn((1, 20, 1, 3), |(_, s, _, d)| (s + d) as f32);
//! let loc = Array::from_elem((1, 5, 1, 2, 2, 2), 0.5f32);
//! let attn = Array::from_elem((1, 5, 1, 2, 2), 0.25f32);
//! let out = ms_deform_attn(value.view(), shapes.view(), start.view(), loc.view(), attn.view(), &MsdaParams::default())?;
//! assert_eq!(out.shape(), &[1, 5, 3]);
//! # Ok::<(), deform_conv::DeformError>(())
//! ```

use crate::alloc::try_alloc;
use crate::element::Element;
use crate::error::{checked_product, DeformError, Result};
use crate::op::Backend;
use ndarray::{Array3, Array4, Array5, Array6, ArrayView1, ArrayView2, ArrayView3, ArrayView4};
use ndarray::{ArrayView5, ArrayView6, ArrayViewMut4, ArrayViewMut5, ArrayViewMut6};
use ndarray::{Ix3, Ix4, Ix5, Ix6};

/// How the operator runs (it has no attributes of its own: `im2col_step` is a CUDA batching knob).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsdaParams {
    /// Which implementation computes.
    pub backend: Backend,
}

/// A validated problem: the levels and every size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsdaGeometry {
    /// Batch.
    pub n: usize,
    /// Value pixels over all levels.
    pub s: usize,
    /// Heads.
    pub m: usize,
    /// Channels per head.
    pub d: usize,
    /// Queries.
    pub q: usize,
    /// Points per level.
    pub p: usize,
    /// `(H_l, W_l, start_l)` of each level.
    pub levels: Vec<(usize, usize, usize)>,
}

impl MsdaGeometry {
    /// Channels of a value pixel, `M*D`.
    pub fn c(&self) -> usize {
        self.m * self.d
    }
}

fn shape_error(name: &str, expected: String, got: &[usize]) -> DeformError {
    DeformError::shape(name, expected, got)
}

/// Checks the shapes and the levels (each `H_l, W_l >= 1`, starts the prefix sums of
/// `H_l*W_l`, their total `S`) and returns the geometry.
pub fn validate(
    value: &[usize],
    spatial_shapes: ArrayView2<'_, i64>,
    level_start_index: ArrayView1<'_, i64>,
    sampling_locations: &[usize],
    attention_weights: &[usize],
) -> Result<MsdaGeometry> {
    let [n, s, m, d]: [usize; 4] = crate::error::check_rank("value", value)?;
    checked_product("value", value)?;
    let l = spatial_shapes.shape()[0];
    if spatial_shapes.shape() != [l, 2] || l == 0 {
        return Err(shape_error(
            "spatial_shapes",
            "[L >= 1, 2] of (H, W)".into(),
            spatial_shapes.shape(),
        ));
    }
    if level_start_index.len() != l {
        return Err(shape_error(
            "level_start_index",
            format!("[L = {l}] (one start per level)"),
            level_start_index.shape(),
        ));
    }
    let mut levels = Vec::with_capacity(l);
    let mut total = 0usize;
    for li in 0..l {
        let (h, w) = (spatial_shapes[[li, 0]], spatial_shapes[[li, 1]]);
        if h < 1 || w < 1 || h > i32::MAX as i64 || w > i32::MAX as i64 {
            return Err(DeformError::parameter(
                format!("spatial_shapes[{li}]"),
                "a level of H >= 1 and W >= 1 rows and columns (each below 2^31)",
                [h, w],
            ));
        }
        let (h, w) = (h as usize, w as usize);
        let start = level_start_index[li];
        if start != total as i64 {
            return Err(DeformError::parameter(
                format!("level_start_index[{li}]"),
                format!("{total}, the pixels of the levels before it (sum of H*W)"),
                start,
            ));
        }
        let hw = checked_product("spatial_shapes", &[h, w])?;
        if hw >= i32::MAX as usize {
            return Err(DeformError::parameter(
                format!("spatial_shapes[{li}]"),
                "a level of fewer than 2^31 pixels",
                [h, w],
            ));
        }
        levels.push((h, w, total));
        total = total.checked_add(hw).ok_or_else(|| DeformError::Overflow {
            name: "spatial_shapes".into(),
            detail: "sum of H*W".into(),
        })?;
    }
    if total != s {
        return Err(shape_error(
            "value",
            format!("[N, S = {total} (sum of the levels' H*W), M, D]"),
            value,
        ));
    }
    let q = sampling_locations.get(1).copied().unwrap_or(0);
    let p = sampling_locations.get(4).copied().unwrap_or(0);
    if sampling_locations != [n, q, m, l, p, 2] || p == 0 {
        return Err(shape_error(
            "sampling_locations",
            format!("[N = {n}, Lq, M = {m}, L = {l}, P >= 1, 2]"),
            sampling_locations,
        ));
    }
    if attention_weights != [n, q, m, l, p] {
        return Err(shape_error(
            "attention_weights",
            format!("[N = {n}, Lq = {q}, M = {m}, L = {l}, P = {p}]"),
            attention_weights,
        ));
    }
    checked_product("sampling_locations", sampling_locations)?;
    checked_product("output", &[n, q, m, d])?;
    Ok(MsdaGeometry {
        n,
        s,
        m,
        d,
        q,
        p,
        levels,
    })
}

/// The operands the core reads.
pub struct MsdaOperands<'a, T> {
    /// `[N, S, M, D]`.
    pub value: ArrayView4<'a, T>,
    /// `[N, Lq, M, L, P, 2]`.
    pub loc: ArrayView6<'a, T>,
    /// `[N, Lq, M, L, P]`.
    pub attn: ArrayView5<'a, T>,
}

/// The gradient views the core writes (every element).
pub struct MsdaGradViews<'a, T> {
    /// `[N, S, M, D]`.
    pub value: ArrayViewMut4<'a, T>,
    /// `[N, Lq, M, L, P, 2]`.
    pub loc: ArrayViewMut6<'a, T>,
    /// `[N, Lq, M, L, P]`.
    pub attn: ArrayViewMut5<'a, T>,
}

/// Value, sampling-location and attention-weight gradients.
#[derive(Debug)]
pub struct MsdaGradients<T> {
    /// `dL/dvalue` `[N, S, M, D]`.
    pub value: Array4<T>,
    /// `dL/dsampling_locations` `[N, Lq, M, L, P, 2]`.
    pub sampling_locations: Array6<T>,
    /// `dL/dattention_weights` `[N, Lq, M, L, P]`.
    pub attention_weights: Array5<T>,
}

/// The checked geometry and the operands' views.
fn operands<'a, T>(
    value: ArrayView4<'a, T>,
    spatial_shapes: ArrayView2<'_, i64>,
    level_start_index: ArrayView1<'_, i64>,
    sampling_locations: ArrayView6<'a, T>,
    attention_weights: ArrayView5<'a, T>,
) -> Result<(MsdaGeometry, MsdaOperands<'a, T>)> {
    let g = validate(
        value.shape(),
        spatial_shapes,
        level_start_index,
        sampling_locations.shape(),
        attention_weights.shape(),
    )?;
    let ops = MsdaOperands {
        value,
        loc: sampling_locations,
        attn: attention_weights,
    };
    Ok((g, ops))
}

/// The forward: `output [N, Lq, M*D]`.
pub fn ms_deform_attn<T: Element>(
    value: ArrayView4<'_, T>,
    spatial_shapes: ArrayView2<'_, i64>,
    level_start_index: ArrayView1<'_, i64>,
    sampling_locations: ArrayView6<'_, T>,
    attention_weights: ArrayView5<'_, T>,
    p: &MsdaParams,
) -> Result<Array3<T>> {
    let (g, ops) = operands(
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations,
        attention_weights,
    )?;
    match p.backend {
        Backend::Reference => {
            let mut out: Array3<T> = try_alloc("output", Ix3(g.n, g.q, g.c()))?;
            crate::reference::msda::forward(&g, &ops, out.view_mut());
            Ok(out)
        }
        Backend::Engine => crate::engine::msda::forward(&g, &ops, crate::engine::active_isa()),
        Backend::EngineIsa(isa) => crate::engine::msda::forward(&g, &ops, isa),
    }
}

/// The backward for `grad_output [N, Lq, M*D]`.
pub fn ms_deform_attn_backward<T: Element>(
    grad_output: ArrayView3<'_, T>,
    value: ArrayView4<'_, T>,
    spatial_shapes: ArrayView2<'_, i64>,
    level_start_index: ArrayView1<'_, i64>,
    sampling_locations: ArrayView6<'_, T>,
    attention_weights: ArrayView5<'_, T>,
    p: &MsdaParams,
) -> Result<MsdaGradients<T>> {
    let (g, ops) = operands(
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations,
        attention_weights,
    )?;
    if grad_output.shape() != [g.n, g.q, g.c()] {
        return Err(shape_error(
            "grad_output",
            format!("the output's shape [N, Lq, M*D] = {:?}", [g.n, g.q, g.c()]),
            grad_output.shape(),
        ));
    }
    let isa = match p.backend {
        Backend::Reference => return reference_backward(&g, &ops, grad_output),
        Backend::Engine => crate::engine::active_isa(),
        Backend::EngineIsa(isa) => isa,
    };
    crate::engine::msda::backward(&g, &ops, grad_output, isa)
}

fn reference_backward<T: Element>(
    g: &MsdaGeometry,
    ops: &MsdaOperands<'_, T>,
    grad_output: ArrayView3<'_, T>,
) -> Result<MsdaGradients<T>> {
    let l = g.levels.len();
    let mut gv: Array4<T> = try_alloc("grad_value", Ix4(g.n, g.s, g.m, g.d))?;
    let mut gl: Array6<T> = try_alloc("grad_sampling_locations", Ix6(g.n, g.q, g.m, l, g.p, 2))?;
    let mut ga: Array5<T> = try_alloc("grad_attention_weights", Ix5(g.n, g.q, g.m, l, g.p))?;
    let views = MsdaGradViews {
        value: gv.view_mut(),
        loc: gl.view_mut(),
        attn: ga.view_mut(),
    };
    crate::reference::msda::backward(g, ops, grad_output, views);
    Ok(MsdaGradients {
        value: gv,
        sampling_locations: gl,
        attention_weights: ga,
    })
}
