//! Layout converters for values and gradients (SPEC §3).
//!
//! * interleaved (torchvision, ONNX): offset `[N, 2*G*K, Ho, Wo]`, channel `2*(g*K+k)` = dy,
//!   `+1` = dx; separate mask `[N, G*K, Ho, Wo]`;
//! * packed (MindSpore, torch_npu): `[N, 3*G*K, Ho, Wo]` = `[dx block | dy block | mask block]`;
//! * NCHW ⇄ NHWC for images and offsets, OIHW ⇄ HWCN for weights.
//!
//! The same maps carry gradients: the gradient of a packed offset is packed like the offset.
//! The split functions return strided views (no copy); the others return standard-layout arrays,
//! allocated fallibly (a broadcast view of 2^36 channels is an error, not an abort).

use crate::alloc::try_to_owned;
use crate::error::{check_rank, DeformError, Result};
use ndarray::{s, Array4, ArrayView4, Axis};

/// The interleaved offset as its `(dy, dx)` views, each `[N, G*K, Ho, Wo]`.
pub fn split_interleaved<'a, T>(
    offset: &ArrayView4<'a, T>,
) -> Result<(ArrayView4<'a, T>, ArrayView4<'a, T>)> {
    if !offset.shape()[1].is_multiple_of(2) {
        return Err(DeformError::shape(
            "offset",
            "[N, 2*G*K, Ho, Wo] (an even channel count)",
            offset.shape(),
        ));
    }
    // `1..` would start past the end of an empty channel axis.
    let x0 = offset.shape()[1].min(1);
    Ok((
        offset.slice_move(s![.., 0..;2, .., ..]),
        (*offset).slice_move(s![.., x0..;2, .., ..]),
    ))
}

/// The packed offset as its `(dx, dy, mask)` views, each `[N, G*K, Ho, Wo]`.
pub fn split_packed<'a, T>(
    packed: &ArrayView4<'a, T>,
) -> Result<(ArrayView4<'a, T>, ArrayView4<'a, T>, ArrayView4<'a, T>)> {
    let ch = packed.shape()[1];
    if !ch.is_multiple_of(3) {
        return Err(DeformError::shape(
            "offset",
            "[N, 3*G*K, Ho, Wo] (a channel count divisible by 3)",
            packed.shape(),
        ));
    }
    let gk = ch / 3;
    Ok((
        (*packed).slice_move(s![.., 0..gk, .., ..]),
        (*packed).slice_move(s![.., gk..2 * gk, .., ..]),
        (*packed).slice_move(s![.., 2 * gk..3 * gk, .., ..]),
    ))
}

/// Interleaved offset (+ optional mask; ones when absent) to packed `[x | y | mask]`.
pub fn interleaved_to_packed<T: Copy + num_traits::One>(
    offset: ArrayView4<'_, T>,
    mask: Option<ArrayView4<'_, T>>,
) -> Result<Array4<T>> {
    let (dy, dx) = split_interleaved(&offset)?;
    if let Some(m) = &mask {
        if m.shape() != dy.shape() {
            return Err(DeformError::shape(
                "mask",
                format!("{:?}", dy.shape()),
                m.shape(),
            ));
        }
    }
    let [n, gk, ho, wo]: [usize; 4] = check_rank("offset", dy.shape())?;
    let packed_c = gk.checked_mul(3).ok_or_else(|| DeformError::Overflow {
        name: "packed offset".into(),
        detail: format!("3 * {gk} channels"),
    })?;
    let mut out = crate::alloc::try_alloc_with("packed offset", [n, packed_c, ho, wo], T::one())?;
    out.slice_mut(s![.., 0..gk, .., ..]).assign(&dx);
    out.slice_mut(s![.., gk..2 * gk, .., ..]).assign(&dy);
    if let Some(m) = mask {
        out.slice_mut(s![.., 2 * gk.., .., ..]).assign(&m);
    }
    Ok(out)
}

/// Packed `[x | y | mask]` to interleaved offset `[N, 2*G*K, Ho, Wo]` and mask `[N, G*K, Ho, Wo]`.
pub fn packed_to_interleaved<T: Copy>(packed: ArrayView4<'_, T>) -> Result<(Array4<T>, Array4<T>)> {
    let (dx, dy, mask) = split_packed(&packed)?;
    let gk = dy.shape()[1];
    // An array of the right shape (the [x | y] blocks), then channel 2k = dy[k], 2k + 1 = dx[k].
    let mut out = try_to_owned(
        "interleaved offset",
        packed.slice(s![.., 0..2 * gk, .., ..]),
    )?;
    for k in 0..gk {
        out.index_axis_mut(Axis(1), 2 * k)
            .assign(&dy.index_axis(Axis(1), k));
        out.index_axis_mut(Axis(1), 2 * k + 1)
            .assign(&dx.index_axis(Axis(1), k));
    }
    Ok((out, try_to_owned("mask", mask)?))
}

/// `[N, C, H, W]` to `[N, H, W, C]`.
pub fn nchw_to_nhwc<T: Copy>(a: ArrayView4<'_, T>) -> Result<Array4<T>> {
    try_to_owned("NHWC copy", a.permuted_axes([0, 2, 3, 1]))
}

/// `[N, H, W, C]` to `[N, C, H, W]`.
pub fn nhwc_to_nchw<T: Copy>(a: ArrayView4<'_, T>) -> Result<Array4<T>> {
    try_to_owned("NCHW copy", a.permuted_axes([0, 3, 1, 2]))
}

/// Weight `[Cout, C/Gc, kh, kw]` (OIHW) to `[kh, kw, C/Gc, Cout]` (HWCN).
pub fn oihw_to_hwcn<T: Copy>(w: ArrayView4<'_, T>) -> Result<Array4<T>> {
    try_to_owned("HWCN weight", w.permuted_axes([2, 3, 1, 0]))
}

/// Weight `[kh, kw, C/Gc, Cout]` (HWCN) to `[Cout, C/Gc, kh, kw]` (OIHW).
pub fn hwcn_to_oihw<T: Copy>(w: ArrayView4<'_, T>) -> Result<Array4<T>> {
    try_to_owned("OIHW weight", w.permuted_axes([3, 2, 0, 1]))
}

/// NHWC view of a tensor as the NCHW-indexed view the canonical op takes (no copy).
pub fn nhwc_as_nchw<'a, T>(a: ArrayView4<'a, T>) -> ArrayView4<'a, T> {
    a.permuted_axes([0, 3, 1, 2])
}

/// HWCN weight view as the OIHW-indexed view the canonical op takes (no copy).
pub fn hwcn_as_oihw<'a, T>(w: ArrayView4<'a, T>) -> ArrayView4<'a, T> {
    w.permuted_axes([3, 2, 0, 1])
}
