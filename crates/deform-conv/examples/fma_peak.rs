//! The machine's f32 FMA limit, for the "share of the FMA limit" figures in BENCHMARKS.md:
//! independent AVX2 (and, where the CPU has it, AVX-512) FMA chains on every thread, and the
//! `gemm` crate's own rate on one large product as the practical ceiling.
//! `cargo run --release -p deform-conv --example fma_peak`
use std::time::Instant;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_chains(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    // 10 independent accumulators hide the FMA latency on two FMA pipes.
    let mut acc = [_mm256_set1_ps(0.0); 10];
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    let mut out = [0f32; 8];
    let mut s = _mm256_set1_ps(0.0);
    for v in acc {
        s = _mm256_add_ps(s, v);
    }
    // SAFETY: `out` holds 8 f32.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
    out.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fma_chains_zmm(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    // 12 independent accumulators hide the FMA latency on two 512-bit FMA pipes.
    let mut acc = [_mm512_set1_ps(0.0); 12];
    let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    let mut s = _mm512_set1_ps(0.0);
    for v in acc {
        s = _mm512_add_ps(s, v);
    }
    _mm512_reduce_add_ps(s)
}

/// GFLOP/s of `chains(iters)` (`lanes`-wide, `accs` accumulators) on every thread at once.
fn rate(chains: fn(usize) -> f32, iters: usize, (accs, lanes): (usize, usize)) -> (f64, usize) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| std::hint::black_box(chains(iters)));
        }
    });
    let flop = (threads * iters * accs * lanes * 2) as f64;
    (flop / t.elapsed().as_secs_f64() / 1e9, threads)
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        fn zmm(iters: usize) -> f32 {
            // SAFETY: AVX-512F was detected above.
            unsafe { fma_chains_zmm(iters) }
        }
        let (gflops, threads) = rate(zmm, 200_000_000 / 12, (12, 16));
        println!(
            "AVX-512 FMA limit: {gflops:.1} GFLOP/s on {threads} threads ({:.1} per thread)",
            gflops / threads as f64
        );
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        fn ymm(iters: usize) -> f32 {
            // SAFETY: AVX2 and FMA were detected above.
            unsafe { fma_chains(iters) }
        }
        let (gflops, threads) = rate(ymm, 200_000_000 / 10, (10, 8));
        println!(
            "AVX2 FMA limit: {gflops:.1} GFLOP/s on {threads} threads ({:.1} per thread)",
            gflops / threads as f64
        );
    }
    let (m, n, k) = (1024, 512, 2304);
    let a = vec![1.0f32; m * k];
    let b = vec![0.5f32; k * n];
    let mut c = vec![0.0f32; m * n];
    let mut best = f64::MAX;
    for _ in 0..10 {
        let t = Instant::now();
        // SAFETY: a is m x k, b is k x n, c is m x n, all row-major and in bounds; c is unaliased.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                b.as_ptr(),
                1,
                n as isize,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "gemm crate, one thread, {m}x{k} * {k}x{n}: {:.1} GFLOP/s",
        2.0 * (m * n * k) as f64 / best / 1e9
    );
}
