//! Reused scratch buffers.
//!
//! The engine's buffers (columns tiles, channels-last image copies, packed weights, backward lane
//! buffers) are megabytes each. Allocated fresh per call, they cost page faults and zeroing.
//! A buffer taken here comes back to the pool when its guard drops; outputs given back
//! ([`crate::alloc::recycle`]) join it. The pool keeps at most [`KEEP_BYTES`], the most recently
//! given buffers, so memory stays bounded by the recent calls' working set, never by the batch.
//!
//! A reused buffer's contents are stale: every user overwrites the part it reads (or zeroes it)
//! first. [`poison_scratch`] makes every buffer taken NaN throughout, so that a test sees any
//! read of an element its user did not write first.

use crate::element::Real;
use std::any::Any;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static POISON: AtomicBool = AtomicBool::new(false);

/// A test aid: from now on (`true`) every scratch buffer the engine takes is filled with NaN, so
/// a result that reads an element before it is written (or zeroed) turns NaN. Costs a fill of
/// every buffer; off by default.
#[doc(hidden)]
pub fn poison_scratch(on: bool) {
    POISON.store(on, Ordering::Relaxed);
}

/// Most bytes the pool keeps between calls.
const KEEP_BYTES: usize = 512 << 20;

/// Is [`poison_scratch`] on?
pub(crate) fn poisoned() -> bool {
    POISON.load(Ordering::Relaxed)
}

/// The pooled vectors, least recently given first, each with its allocation's size in bytes.
type Pool = Vec<(usize, Box<dyn Any + Send>)>;

static POOL: Mutex<Pool> = Mutex::new(Vec::new());

/// A pooled `Vec<A>`, returned to the pool on drop.
pub(crate) struct Buf<A: Copy + Send + 'static> {
    v: Vec<A>,
}

impl<A: Copy + Send + 'static> Deref for Buf<A> {
    type Target = [A];
    fn deref(&self) -> &[A] {
        &self.v
    }
}

impl<A: Copy + Send + 'static> DerefMut for Buf<A> {
    fn deref_mut(&mut self) -> &mut [A] {
        &mut self.v
    }
}

impl<A: Copy + Send + 'static> Drop for Buf<A> {
    fn drop(&mut self) {
        give(std::mem::take(&mut self.v));
    }
}

/// Keeps `v`'s allocation in the pool (scratch buffers, and outputs given back through
/// [`crate::alloc::recycle`]), the least recently given buffers freed to keep the pool within
/// [`KEEP_BYTES`]: the pool holds the recent calls' working set, whatever came before.
pub(crate) fn give<A: Copy + Send + 'static>(v: Vec<A>) {
    let bytes = v.capacity() * std::mem::size_of::<A>();
    if bytes == 0 || bytes > KEEP_BYTES {
        return;
    }
    // Kept with its length: `take` resizes over stale contents, writing only what it adds.
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let mut kept: usize = pool.iter().map(|&(b, _)| b).sum();
    while kept + bytes > KEEP_BYTES && !pool.is_empty() {
        kept -= pool.remove(0).0;
    }
    pool.push((bytes, Box::new(v)));
}

/// Takes from `pool` the `Vec<A>` of least capacity in `len..=most`, if there is one.
fn take_pooled<A: 'static>(pool: &mut Pool, len: usize, most: usize) -> Option<Vec<A>> {
    let best = pool
        .iter()
        .enumerate()
        .filter_map(|(i, (_, b))| b.downcast_ref::<Vec<A>>().map(|v| (i, v.capacity())))
        .filter(|&(_, cap)| (len..=most).contains(&cap))
        .min_by_key(|&(_, cap)| cap)
        .map(|(i, _)| i)?;
    pool.remove(best).1.downcast::<Vec<A>>().ok().map(|v| *v)
}

/// An empty pooled `Vec<A>` with room for `len` to `len + len/4` elements (an output's
/// allocation: a much larger one would stay pinned by the output), if the pool has one.
pub(crate) fn reuse<A: Copy + Send + 'static>(len: usize) -> Option<Vec<A>> {
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let mut v = take_pooled::<A>(&mut pool, len, len.saturating_add(len / 4))?;
    v.clear();
    Some(v)
}

/// The bytes the pool holds (tests).
#[cfg(test)]
pub(crate) fn pooled_bytes() -> usize {
    let pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    pool.iter().map(|&(b, _)| b).sum()
}

/// A buffer of `len` elements with unspecified (stale or `fill`) contents.
pub(crate) fn take<A: Real>(len: usize, fill: A) -> Buf<A> {
    match take_with(len, fill, |len| {
        Ok::<_, std::convert::Infallible>(Vec::with_capacity(len))
    }) {
        Ok(buf) => buf,
        Err(never) => match never {},
    }
}

/// [`take`] for a caller-sized buffer: a new allocation that fails is an error naming `name`.
pub(crate) fn try_take<A: Real>(name: &str, len: usize, fill: A) -> crate::error::Result<Buf<A>> {
    take_with(len, fill, |len| {
        let mut v = Vec::new();
        v.try_reserve_exact(len)
            .map_err(|_| crate::error::DeformError::Allocation {
                name: name.to_string(),
                bytes: len.saturating_mul(std::mem::size_of::<A>()),
                shape: vec![len],
            })?;
        Ok(v)
    })
}

fn take_with<A: Real, E>(
    len: usize,
    fill: A,
    new: impl FnOnce(usize) -> std::result::Result<Vec<A>, E>,
) -> std::result::Result<Buf<A>, E> {
    // The smallest pooled Vec<A> that is large enough.
    let found = take_pooled::<A>(
        &mut POOL.lock().unwrap_or_else(|e| e.into_inner()),
        len,
        usize::MAX,
    );
    let mut v = match found {
        Some(v) => v,
        None => new(len)?,
    };
    v.resize(len, fill);
    if POISON.load(Ordering::Relaxed) {
        v.fill(A::nan());
    }
    Ok(Buf { v })
}
