//! The one place the engine calls the `gemm` crate: `gemm` 0.19 (runtime-dispatched AVX-512 /
//! AVX2 / scalar micro-kernels through pulp, `x86-v4` feature on), single-threaded inside a tile
//! so that the tile decomposition alone decides the summation order. Every backward GEMM and the
//! forward's where the kernels have no panel GEMM (f64, or a CPU without fused multiply-add) run
//! here; the f32 forward runs `kernels::panel_gemm`.

use crate::element::Real;
use ndarray::ArrayViewMut2;

/// A read-only strided matrix over a slice.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, A> {
    pub data: &'a [A],
    pub rows: usize,
    pub cols: usize,
    /// Row stride (elements).
    pub rs: usize,
    /// Column stride (elements).
    pub cs: usize,
}

impl<A> Mat<'_, A> {
    /// True when every element `(r, c)` with `r < rows, c < cols` lies inside `data`.
    fn in_bounds(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        let last = (self.rows - 1).checked_mul(self.rs).and_then(|a| {
            (self.cols - 1)
                .checked_mul(self.cs)
                .and_then(|b| a.checked_add(b))
        });
        matches!(last, Some(l) if l < self.data.len() && self.rs <= isize::MAX as usize && self.cs <= isize::MAX as usize)
    }
}

/// `dst[m x n] (row-major, row stride dst_rs) = (accumulate ? dst : 0) + lhs[m x k] * rhs[k x n]`.
///
/// Panics (a bug in the engine, never an input error) if a matrix does not fit its slice.
pub(crate) fn gemm<A: Real>(
    dst: &mut [A],
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat<'_, A>,
    rhs: Mat<'_, A>,
) {
    let out = Mat {
        data: &*dst,
        rows: lhs.rows,
        cols: rhs.cols,
        rs: dst_rs,
        cs: 1,
    };
    assert!(out.in_bounds(), "gemm: matrix outside its buffer");
    // SAFETY: `dst` is borrowed mutably and holds every element (r, c) at r * dst_rs + c
    // (checked just above).
    unsafe { gemm_raw(dst.as_mut_ptr(), dst_rs, 1, accumulate, lhs, rhs) }
}

/// `dst = lhs * rhs` into a strided view: tasks can fill disjoint column blocks of one
/// row-major buffer (`axis_chunks_iter_mut(Axis(1), ..)`), each block a GEMM of its own.
///
/// Panics (a bug in the engine) if the shapes disagree or the view has negative strides.
pub(crate) fn gemm_view<A: Real>(mut dst: ArrayViewMut2<'_, A>, lhs: Mat<'_, A>, rhs: Mat<'_, A>) {
    assert_eq!(dst.dim(), (lhs.rows, rhs.cols), "gemm_view: output shape");
    let (rs, cs) = (dst.strides()[0], dst.strides()[1]);
    assert!(rs >= 0 && cs >= 0, "gemm_view: negative strides");
    // SAFETY: `dst` is a mutable view, borrowed exclusively: each of its elements (r, c) lies
    // at its pointer + r * rs + c * cs inside the buffer it views (ndarray's invariant).
    unsafe { gemm_raw(dst.as_mut_ptr(), rs as usize, cs as usize, false, lhs, rhs) }
}

/// # Safety
///
/// `dst + r * dst_rs + c * dst_cs` must be valid for reads and writes, for `r < lhs.rows` and
/// `c < rhs.cols`, and alias neither operand for the duration of the call.
unsafe fn gemm_raw<A: Real>(
    dst: *mut A,
    dst_rs: usize,
    dst_cs: usize,
    accumulate: bool,
    lhs: Mat<'_, A>,
    rhs: Mat<'_, A>,
) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "gemm: inner dimensions");
    assert!(
        lhs.in_bounds() && rhs.in_bounds(),
        "gemm: matrix outside its buffer"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                for c in 0..n {
                    // SAFETY: (r, c) is inside dst (the caller's contract).
                    unsafe { *dst.add(r * dst_rs + c * dst_cs) = A::zero() };
                }
            }
        }
        return;
    }
    // SAFETY: `A` is f32 or f64 (the only `Real` types), which gemm supports. Both operands were
    // checked above to lie inside their slices with non-negative strides that fit isize; `dst`
    // is valid and unaliased (the caller's contract). Parallelism::None: no threads.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            A::one(),
            A::one(),
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}
