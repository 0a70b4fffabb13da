//! The fast engine: channels-last sampling feeding a GEMM, tile by tile.
//!
//! **Flow.** `plan` fixes the call (kernels, packed weight, tile height); `image` copies each
//! input image once to channels-last, blocked by deformable group, with a zero pixel per group
//! for samples outside; `columns` describes each (pixel, tap) by one bilinear descriptor
//! (`sample`) and gathers the columns tile `cols[P x K*Cg]` across the group's channels;
//! `forward` multiplies it by the packed weight; `backward` runs `dcol = dY Wp^T`, then one
//! descriptor pass for the columns, the offset/mask gradients and the input-gradient scatter.
//! `points` is the same sampling without the GEMM, under DCNv3/v4 (`dcnv3`) and multi-scale
//! deformable attention (`msda`). `kernels` holds the row kernels and the GEMM tile per
//! instruction set, `threads` the executor, `blocking` the tile sizes, `scratch` the
//! buffer pool.
//!
//! **Same bits everywhere.** Work is split by the shape alone (fixed tiles and `LANES` backward
//! lanes, reduced in order), never by the thread count; every instruction set performs the same
//! operations in the same order.
//!
//! **Glossary.** `n` image, `q` conv group, `dg` deformable group, `cg` / `cdg` / `coutg`
//! channels per conv group / per deformable group / output channels per conv group, `kk` or
//! `K` taps (`kh * kw`), `tap` one of them, `oh`/`ow` output row/column, `P` or `px` pixels of a
//! tile, `row_len` = `K * Cg` (columns per pixel), `xt` a channels-last image, `wp` the packed
//! weight, `dyo` `dY` channel-major, `dcol` the columns' gradient, `acc` the four corner sums
//! `a_j`, `lane` a fixed share of the backward with its own sums.

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
pub(crate) mod scratch;
pub(crate) mod threads;

pub use kernels::{active_isa, kernels_name, Isa};
#[doc(hidden)]
pub use points::stream_all;
#[doc(hidden)]
pub use scratch::poison_scratch;
pub(crate) use scratch::poisoned as scratch_poisoned;
pub use threads::{
    num_threads, set_num_threads, with_executor, Executor, RayonExecutor, SerialExecutor, Task,
    MAX_THREADS,
};

pub(crate) use backward::backward;
pub(crate) use forward::forward;
pub(crate) use plan::supports;
