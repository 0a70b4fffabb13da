//! The one place the engine calls a GEMM: `gemm` 0.19 (runtime-dispatched AVX-512 / AVX2 /
//! scalar micro-kernels through pulp, `x86-v4` feature on), single-threaded inside a tile so
//! that the tile decomposition alone decides the summation order.

use crate::element::Real;

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
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "gemm: inner dimensions");
    let out = Mat {
        data: &*dst,
        rows: m,
        cols: n,
        rs: dst_rs,
        cs: 1,
    };
    assert!(
        lhs.in_bounds() && rhs.in_bounds() && out.in_bounds(),
        "gemm: matrix outside its buffer"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.iter_mut().for_each(|v| *v = A::zero());
        }
        return;
    }
    // SAFETY: `A` is f32 or f64 (the only `Real` types), which gemm supports. Every matrix was
    // checked above to lie inside its slice with non-negative strides that fit isize; `dst` is
    // borrowed mutably, so it aliases neither `lhs` nor `rhs`. Parallelism::None: no threads.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
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
