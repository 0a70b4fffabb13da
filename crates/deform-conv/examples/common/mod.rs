//! What the profiling examples share: a small deterministic generator of test data.

/// Uniform values in `[0, 1)` from a 64-bit linear congruential generator seeded with `seed`
/// (reproducible inputs without a dependency).
pub fn uniform(mut seed: u64) -> impl FnMut() -> f32 {
    move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 40) as f32 / (1u64 << 24) as f32
    }
}
