//! Layout converters for values and gradients (SPEC §3).
//!
//! * interleaved (torchvision, ONNX): offset `[N, 2*G*K, Ho, Wo]`, channel `2*(g*K+k)` = dy,
//!   `+1` = dx; separate mask `[N, G*K, Ho, Wo]`;
//! * packed (MindSpore, torch_npu): `[N, 3*G*K, Ho, Wo]` = `[dx block | dy block | mask block]`;
//! * NCHW ⇄ NHWC for images and offsets, OIHW ⇄ HWCN for weights.
//!
//! The same maps carry gradients: the gradient of a packed offset is packed like the offset.
//! The split functions return strided views (no copy); the others return standard-layout arrays.

use crate::error::{check_rank, DeformError, Result};
use ndarray::{concatenate, s, Array4, ArrayView4, Axis};

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
    Ok((
        offset.slice_move(s![.., 0..;2, .., ..]),
        (*offset).slice_move(s![.., 1..;2, .., ..]),
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
    let mask = match mask {
        Some(m) if m.shape() == dy.shape() => m.to_owned(),
        Some(m) => {
            return Err(DeformError::shape(
                "mask",
                format!("{:?}", dy.shape()),
                m.shape(),
            ))
        }
        None => Array4::from_elem(dy.raw_dim(), T::one()),
    };
    Ok(concatenate(Axis(1), &[dx.view(), dy.view(), mask.view()])
        .expect("three views of one shape concatenate"))
}

/// Packed `[x | y | mask]` to interleaved offset `[N, 2*G*K, Ho, Wo]` and mask `[N, G*K, Ho, Wo]`.
pub fn packed_to_interleaved<T: Copy>(packed: ArrayView4<'_, T>) -> Result<(Array4<T>, Array4<T>)> {
    let (dx, dy, mask) = split_packed(&packed)?;
    let [n, gk, ho, wo]: [usize; 4] = check_rank("offset", dy.shape())?;
    let out = Array4::from_shape_fn((n, 2 * gk, ho, wo), |(a, ch, y, x)| {
        if ch % 2 == 0 {
            dy[[a, ch / 2, y, x]]
        } else {
            dx[[a, ch / 2, y, x]]
        }
    });
    Ok((out, mask.to_owned()))
}

/// `[N, C, H, W]` to `[N, H, W, C]`.
pub fn nchw_to_nhwc<T: Copy>(a: ArrayView4<'_, T>) -> Array4<T> {
    a.permuted_axes([0, 2, 3, 1])
        .as_standard_layout()
        .into_owned()
}

/// `[N, H, W, C]` to `[N, C, H, W]`.
pub fn nhwc_to_nchw<T: Copy>(a: ArrayView4<'_, T>) -> Array4<T> {
    a.permuted_axes([0, 3, 1, 2])
        .as_standard_layout()
        .into_owned()
}

/// Weight `[Cout, C/Gc, kh, kw]` (OIHW) to `[kh, kw, C/Gc, Cout]` (HWCN).
pub fn oihw_to_hwcn<T: Copy>(w: ArrayView4<'_, T>) -> Array4<T> {
    w.permuted_axes([2, 3, 1, 0])
        .as_standard_layout()
        .into_owned()
}

/// Weight `[kh, kw, C/Gc, Cout]` (HWCN) to `[Cout, C/Gc, kh, kw]` (OIHW).
pub fn hwcn_to_oihw<T: Copy>(w: ArrayView4<'_, T>) -> Array4<T> {
    w.permuted_axes([3, 2, 0, 1])
        .as_standard_layout()
        .into_owned()
}

/// NHWC view of a tensor as the NCHW-indexed view the canonical op takes (no copy).
pub fn nhwc_as_nchw<'a, T>(a: ArrayView4<'a, T>) -> ArrayView4<'a, T> {
    a.permuted_axes([0, 3, 1, 2])
}

/// HWCN weight view as the OIHW-indexed view the canonical op takes (no copy).
pub fn hwcn_as_oihw<'a, T>(w: ArrayView4<'a, T>) -> ArrayView4<'a, T> {
    w.permuted_axes([3, 2, 0, 1])
}
