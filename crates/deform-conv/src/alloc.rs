//! Fallible allocation: every buffer whose size comes from a caller is allocated here, so a shape
//! too large for the machine is [`DeformError::Allocation`] (or [`DeformError::Overflow`]), never
//! an allocation abort.

use crate::element::Element;
use crate::error::{checked_product, DeformError, Result};
use ndarray::{Array, ArrayView, ArrayViewMut, Dimension};
use std::mem::MaybeUninit;

/// A zero array of `shape`, or [`DeformError::Allocation`] / [`DeformError::Overflow`] instead
/// of an abort when the machine cannot hold it.
///
/// The memory comes from the allocator's zeroed allocation (`calloc`): a large buffer is fresh
/// pages the kernel provides as zeros, so no pass writes zeros over an output that the op then
/// overwrites in full.
pub fn try_alloc<T: ZeroBits, D: ndarray::Dimension>(
    name: &str,
    shape: D,
) -> Result<ndarray::Array<T, D>> {
    let dims = shape.slice().to_vec();
    let len = checked_product(name, &dims)?;
    let layout = std::alloc::Layout::array::<T>(len).map_err(|_| DeformError::Overflow {
        name: name.to_string(),
        detail: format!("{len} elements of {} bytes", std::mem::size_of::<T>()),
    })?;
    let v = if layout.size() == 0 {
        Vec::new()
    } else if let Some(mut v) = reused::<T>(len) {
        // A given-back output's memory: zeroed here, in parallel (cheaper than fresh pages).
        filled(&mut v.spare_capacity_mut()[..len], zero::<T>());
        // SAFETY: the first `len` elements were written just above.
        unsafe { v.set_len(len) };
        v
    } else {
        // SAFETY: `layout` has a non-zero size. A non-null result is a zeroed allocation of
        // `len` elements of `T` with `T`'s alignment, made by the global allocator with exactly
        // `layout`, which is what `Vec::from_raw_parts` needs (capacity = length = `len`), and
        // all-zero bytes are a valid `T` (the `ZeroBits` contract).
        unsafe {
            let ptr = std::alloc::alloc_zeroed(layout) as *mut T;
            if ptr.is_null() {
                return Err(DeformError::Allocation {
                    name: name.to_string(),
                    bytes: layout.size(),
                    shape: dims,
                });
            }
            Vec::from_raw_parts(ptr, len, len)
        }
    };
    Ok(ndarray::Array::from_shape_vec(shape, v).expect("length is the product of the shape"))
}

/// An output array of `shape` that the engine writes in full before anyone reads it
/// ([`Written::done`]), allocated fallibly with no pass over its memory: `calloc` must zero a
/// reused heap block (a 23 MB attention output: a serial `memset` of ~5% of the call). While
/// [`crate::engine::poison_scratch`] is on (tests) every element starts as NaN instead.
pub(crate) struct Written<T, D: Dimension>(Array<MaybeUninit<T>, D>, bool);

impl<T: Element, D: Dimension> Written<T, D> {
    pub(crate) fn new(name: &str, shape: D) -> Result<Self> {
        let len = checked_product(name, shape.slice())?;
        let (mut data, reused) = match reused::<T>(len) {
            Some(v) => (uninit(v), true),
            None => (try_vec::<MaybeUninit<T>>(name, len, shape.slice())?, false),
        };
        if crate::engine::scratch_poisoned() {
            let nan = T::from_acc(<T::Acc as num_traits::Float>::nan());
            data.resize(len, MaybeUninit::new(nan));
        } else {
            // Compiles to no pass over the memory.
            data.resize_with(len, MaybeUninit::uninit);
        }
        Ok(Written(
            Array::from_shape_vec(shape, data).expect("length is the product of the shape"),
            reused,
        ))
    }

    /// Whether the memory is a given-back output's (stale lines, not read since) rather than
    /// fresh pages, which the system zeroes into the caches as they are first written.
    pub(crate) fn reused(&self) -> bool {
        self.1
    }

    /// The view the engine writes every element of.
    pub(crate) fn view_mut(&mut self) -> ArrayViewMut<'_, MaybeUninit<T>, D> {
        self.0.view_mut()
    }

    /// The array, once the engine has written it.
    ///
    /// # Safety
    ///
    /// Every element of [`Self::view_mut`] has been written (the engine's point-core forwards
    /// and backwards write every element of the views they are given when they return `Ok`;
    /// the tests poison the array to check it).
    pub(crate) unsafe fn done(self) -> Array<T, D> {
        // SAFETY: every element is initialised (this function's contract).
        unsafe { self.0.assume_init() }
    }
}

/// Gives an output array's memory back for the engine to reuse: the next output or scratch
/// buffer of about its size takes it instead of fresh pages from the system, which the kernel
/// zeroes on first touch (a sixth of a large DCNv3 backward). The Python layer gives back every
/// output numpy releases. Arrays below a megabyte are simply dropped; the engine's pool keeps
/// at most 512 MB of scratch and given-back buffers together.
pub fn recycle<T: Element, D: Dimension>(a: Array<T, D>) {
    let (v, _) = a.into_raw_vec_and_offset();
    if v.capacity() * std::mem::size_of::<T>() >= RECYCLE_BYTES {
        crate::engine::scratch::give(v);
    }
}

/// Least bytes of an output worth recycling (below it the allocator's own free lists serve);
/// under Miri a few elements, so that its small problems run the reuse paths.
const RECYCLE_BYTES: usize = if cfg!(miri) { 64 } else { 1 << 20 };

/// A recycled allocation with room for `len` elements, for an output of at least
/// [`RECYCLE_BYTES`].
fn reused<T: Copy + Send + 'static>(len: usize) -> Option<Vec<T>> {
    (len.saturating_mul(std::mem::size_of::<T>()) >= RECYCLE_BYTES)
        .then(|| crate::engine::scratch::reuse::<T>(len))
        .flatten()
}

/// `v`'s allocation as a vector of uninitialised elements (empty, the same capacity).
fn uninit<T>(v: Vec<T>) -> Vec<MaybeUninit<T>> {
    let mut v = std::mem::ManuallyDrop::new(v);
    let (ptr, cap) = (v.as_mut_ptr(), v.capacity());
    // SAFETY: `MaybeUninit<T>` has `T`'s size and alignment, so the allocation's layout is that
    // of `cap` elements of either type; length 0, and ownership passes from `v` (not dropped).
    unsafe { Vec::from_raw_parts(ptr.cast::<MaybeUninit<T>>(), 0, cap) }
}

/// Zero, as all-zero bytes.
fn zero<T: ZeroBits>() -> T {
    // SAFETY: all-zero bytes are a valid `T` (the `ZeroBits` contract).
    unsafe { std::mem::zeroed() }
}

/// Types for which all-zero bytes are a valid value (zero).
///
/// # Safety
///
/// An implementor must be valid, and equal to zero, when every byte of it is 0.
pub unsafe trait ZeroBits: Copy + Send + Sync + 'static {}
// SAFETY: IEEE +0.0 is all-zero bits in each of these formats.
unsafe impl ZeroBits for f32 {}
// SAFETY: as above.
unsafe impl ZeroBits for f64 {}
// SAFETY: as above.
unsafe impl ZeroBits for half::f16 {}
// SAFETY: as above.
unsafe impl ZeroBits for half::bf16 {}

/// An owned copy of `v` in standard (row-major) layout, allocated fallibly: what
/// `as_standard_layout().into_owned()` does, with an error instead of an abort for a view whose
/// strides repeat elements (`np.broadcast_to`, torch `expand`) into more than the machine holds.
pub fn try_to_owned<T: Copy, D: Dimension>(
    name: &str,
    v: ArrayView<'_, T, D>,
) -> Result<Array<T, D>> {
    let len = checked_product(name, v.shape())?;
    let mut data = try_vec::<T>(name, len, v.shape())?;
    data.extend(v.iter().copied());
    Ok(Array::from_shape_vec(v.raw_dim(), data).expect("length is the product of the shape"))
}

/// An array of `shape` filled with `value`, allocated fallibly.
pub fn try_alloc_with<T: Copy, const R: usize>(
    name: &str,
    shape: [usize; R],
    value: T,
) -> Result<Array<T, ndarray::Dim<[usize; R]>>>
where
    ndarray::Dim<[usize; R]>: Dimension,
    [usize; R]: ndarray::IntoDimension<Dim = ndarray::Dim<[usize; R]>>,
{
    let len = checked_product(name, &shape)?;
    let data = try_vec_filled(name, len, value)?;
    Ok(Array::from_shape_vec(shape, data).expect("length is the product of the shape"))
}

/// A vector of `len` copies of `value` (an engine buffer), or [`DeformError::Allocation`].
pub(crate) fn try_vec_filled<T: Copy>(name: &str, len: usize, value: T) -> Result<Vec<T>> {
    let mut data = try_vec::<T>(name, len, &[len])?;
    data.resize(len, value);
    Ok(data)
}

/// `s` with every element set to `value` (in parallel chunks), as the initialised slice it
/// then is: an output the engine accumulates into in place.
pub(crate) fn filled<A: Copy + Send + Sync>(s: &mut [MaybeUninit<A>], value: A) -> &mut [A] {
    crate::engine::threads::for_each_chunk(s, 1 << 16, |_, part, _| {
        part.fill(MaybeUninit::new(value))
    });
    let (ptr, len) = (s.as_mut_ptr().cast::<A>(), s.len());
    // SAFETY: every element of `s` was written just above; `MaybeUninit<A>` has `A`'s size and
    // alignment, and the new slice takes over `s`'s unique borrow for as long.
    unsafe { std::slice::from_raw_parts_mut(ptr, len) }
}

/// An empty vector with room for `len` elements, or [`DeformError::Allocation`].
fn try_vec<T>(name: &str, len: usize, shape: &[usize]) -> Result<Vec<T>> {
    let mut data = Vec::new();
    data.try_reserve_exact(len)
        .map_err(|_| DeformError::Allocation {
            name: name.to_string(),
            bytes: len.saturating_mul(std::mem::size_of::<T>()),
            shape: shape.to_vec(),
        })?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    /// A given-back output's memory serves the next output of its size: zeroed for
    /// `try_alloc`, whatever it held. (f16: the engine's scratch never takes f16 buffers.)
    #[test]
    fn recycled_memory_is_reused_and_zeroed() {
        let shape = ndarray::Ix2(1021, 1031);
        let mut a: Array<f16, _> = try_alloc("a", shape).unwrap();
        a.fill(f16::from_f32(7.0));
        let ptr = a.as_ptr();
        recycle(a);
        let b: Array<f16, _> = try_alloc("b", shape).unwrap();
        assert_eq!(b.as_ptr(), ptr, "the recycled allocation");
        assert!(b.iter().all(|v| v.to_bits() == 0), "zeroed");
        // Much smaller outputs do not pin it: a fresh allocation instead.
        recycle(b);
        let c: Array<f16, _> = try_alloc("c", ndarray::Ix2(700, 1031)).unwrap();
        assert_ne!(c.as_ptr(), ptr);
        let d: Array<f16, _> = try_alloc("d", shape).unwrap();
        assert_eq!(d.as_ptr(), ptr, "still pooled");
        // Bounded: given back beyond 512 MB (address space only, never touched), the oldest
        // buffers go first and the newest stay.
        recycle(d);
        let mut given = Vec::new();
        for _ in 0..6 {
            let v: Vec<f16> = Vec::with_capacity(50 << 20); // 100 MB
            given.push(v.as_ptr() as usize);
            crate::engine::scratch::give(v);
            assert!(crate::engine::scratch::pooled_bytes() <= 512 << 20);
        }
        let mut kept: Vec<usize> =
            std::iter::from_fn(|| crate::engine::scratch::reuse::<f16>(50 << 20))
                .map(|v| v.as_ptr() as usize)
                .collect();
        kept.sort_unstable();
        let mut newest = given[1..].to_vec();
        newest.sort_unstable();
        assert_eq!(kept, newest, "the five newest kept, the oldest freed");
    }
}
