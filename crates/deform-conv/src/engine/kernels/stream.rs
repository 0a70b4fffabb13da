//! A staged row written whole ([`StreamFn`]): the point core's gradient records, built group by
//! group in a worker's staging rows, copied into the tensors' rows in one pass once the row's
//! last group is in. The bodies (AVX2, AVX-512) store the destination's lines past the caches
//! (non-temporal stores), so those lines are written once, never read for ownership, and do not
//! push the kernel's working set out of cache. A table without one does not stage (a plain
//! copy of the staging rows measured no faster than writing in place).

use super::interleave::Lanes;
use std::mem::MaybeUninit;

/// `dst = src`, of one length.
///
/// # Safety
/// Every element of `src` is initialised; the CPU runs the body's instructions.
pub(crate) type StreamFn<A> = unsafe fn(&[MaybeUninit<A>], &mut [MaybeUninit<A>]);

/// [`StreamFn`] in registers of `N` lanes: the values of `dst` from its first `4 * N`-byte
/// boundary stored non-temporally `N` at a time, those before and after with masked stores,
/// then a fence, so the stores are ordered before whatever the caller (or a thread it hands the
/// tensor to) does next.
///
/// # Safety
/// As [`StreamFn`]; the CPU runs `L`'s instructions.
#[inline(always)]
pub(crate) unsafe fn rows<const N: usize, L: Lanes<N>>(
    src: &[MaybeUninit<f32>],
    dst: &mut [MaybeUninit<f32>],
) {
    assert_eq!(src.len(), dst.len(), "stream: rows of one length");
    let n = dst.len();
    let (s, d) = (src.as_ptr().cast::<f32>(), dst.as_mut_ptr().cast::<f32>());
    // Values before the first boundary (an f32 slice is 4-byte aligned).
    let head = ((4 * N - d as usize % (4 * N)) % (4 * N) / 4).min(n);
    // SAFETY: every access is to values `i < n` of both slices (the partial ones masked);
    // `src` is initialised and the CPU runs `L` (the contract); `d + i` is aligned for the
    // streaming stores (`head` reaches the boundary).
    unsafe {
        L::store(d, L::load(s, head), head);
        let mut i = head;
        while i + N <= n {
            L::stream(d.add(i), L::load(s.add(i), N));
            i += N;
        }
        L::store(d.add(i), L::load(s.add(i), n - i), n - i);
        L::fence();
    }
}

#[cfg(test)]
mod tests {
    use super::super::{table, test_rng, Isa, TEST_POISON};
    use rand::Rng;
    use std::mem::MaybeUninit;

    /// Every table's stream copies rows of 0-200 values at every alignment of their start,
    /// bit for bit, and writes nothing around them (poisoned values stay).
    #[test]
    fn every_stream_copies_its_row_and_nothing_else() {
        let mut rng = test_rng("every_stream_copies_its_row_and_nothing_else");
        let poison = f32::from_bits(TEST_POISON);
        let mut tested = 0;
        for isa in Isa::ALL {
            let Some(f) = table::<f32>(isa).and_then(|k| k.stream) else {
                continue;
            };
            for _ in 0..400 {
                let (at, n) = (rng.gen_range(0..32), rng.gen_range(0..201));
                let src: Vec<MaybeUninit<f32>> = (0..n)
                    .map(|_| MaybeUninit::new(rng.gen_range(-4.0f32..4.0)))
                    .collect();
                let mut dst = vec![MaybeUninit::new(poison); at + n + 17];
                // SAFETY: every element of `src` is initialised; the table is this CPU's.
                unsafe { f(&src, &mut dst[at..at + n]) };
                // SAFETY: every element was initialised (poisoned or copied).
                let bits: Vec<u32> = dst
                    .iter()
                    .map(|v| unsafe { v.assume_init() }.to_bits())
                    .collect();
                for (i, b) in bits.iter().enumerate() {
                    let want = if (at..at + n).contains(&i) {
                        // SAFETY: initialised above.
                        unsafe { src[i - at].assume_init() }.to_bits()
                    } else {
                        poison.to_bits()
                    };
                    assert_eq!(*b, want, "{isa:?}: value {i} of a row of {n} at {at}");
                }
            }
            tested += 1;
        }
        eprintln!("tables with a stream body: {tested}");
    }
}
