//! The fast engine: channels-last sampling feeding a GEMM, tile by tile.
//!
//! **Forward.** Images go in waves of `blocking::LANES`; each is copied once to channels-last,
//! blocked by deformable group (`[G, H*W + 1, C/G]`: `T` → accumulation type, plus one zero pixel
//! per group, see `sample` and `Plan::images_nhwc`). The output is walked in tiles of whole output
//! rows (`blocking`); per tile and convolution group the sampler builds the columns tile
//! `cols[P x K*C/Gc]` (row = pixel, column = tap-major, channel-minor) from one bilinear
//! descriptor per (pixel, tap, deformable group), reused for every channel of the group, and one
//! GEMM `out[P x Cout/Gc] = cols * Wp`. In f32 on CPUs with fused multiply-add that GEMM is the
//! engine's own (`kernels::panel_gemm`): it reads the columns tile in place and the weight
//! packed once per call in panels of 16 output channels, the same fma chain per element on every
//! instruction set; otherwise (f64) the `gemm` crate reads the weight packed once per call as
//! `[Cout/Gc, K*C/Gc]` rows, through strides. All tiles of a wave run in parallel; a wave with fewer than
//! `blocking::MIN_TASKS` tiles (one small image) first builds its columns row by row, then splits
//! its GEMMs by blocks of output channels (`forward`). Each output element is produced by one
//! GEMM whose shape depends only on the problem, so the result does not depend on the thread
//! count.
//!
//! **Backward.** Per tile (of `blocking::BACKWARD_TILE_PIXELS`): `dcols = dY Wp^T` by GEMM,
//! then one descriptor pass per (row, deformable group, tap) that, pixel by pixel from one load
//! of each corner run (`kernels`' `backward_row` where written, else three kernels in turn),
//! rebuilds the columns (for `dW^T += dY^T cols`, the GEMM that follows, each weight row's
//! sums contiguous), gives four channel dot
//! products `a_j = sum_c dcol[c] X[idx_j, c]`, from them right away the offset and mask
//! gradients (SPEC §2), and scatters `dX[idx_j, c] += w_j dcol[c]` for the input gradient.
//! Tiles are dealt to `blocking::LANES`
//! fixed lanes (whole images when there are at least `LANES` of them or they are small; else the
//! images side by side, `LANES / N` lanes each, each lane a contiguous range of its image's rows,
//! shorter tiles when one image has fewer tiles than lanes),
//! each owning its `dX`, `dW` and `db` buffers, reduced in lane order: bitwise identical results
//! for any thread count, no atomics. Images that are one tile each, with one conv group (small
//! late-stage layers), instead run each weight-sized GEMM once per wave of images, split by
//! blocks of the weight, and only the descriptor pass per image or row range
//! (`backward::whole_images`).
//!
//! Kernels ([`kernels`]) are chosen once per call from the run-time instruction set; the hot f32
//! ones have explicit AVX-512 and AVX2 bodies (and on AVX2 one fused backward row kernel) that
//! perform the portable bodies' operations in the same order, so every instruction set returns
//! the same bits.

mod backward;
mod blocking;
mod columns;
pub(crate) mod dcnv3;
mod forward;
mod gemm;
mod image;
pub(crate) mod kernels;
pub(crate) mod msda;
mod pack;
mod plan;
mod points;
mod sample;
mod scratch;
mod threads;

pub use kernels::{active_isa, kernels_name, Isa};
#[doc(hidden)]
pub use scratch::poison_scratch;
pub use threads::{
    num_threads, set_num_threads, with_executor, Executor, RayonExecutor, SerialExecutor, Task,
    MAX_THREADS,
};

pub(crate) use backward::backward;
pub(crate) use forward::forward;
pub(crate) use plan::supports;
