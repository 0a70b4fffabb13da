//! Tile and blocking constants, each with the reason for its value.
//!
//! The engine never materialises the `C*K x Ho*Wo` columns matrix of a whole image: it walks the
//! output in tiles of whole output rows and builds the columns of one tile at a time.

/// Target pixels per tile. The GEMM `out[P x Cout] = cols[P x K*C] * W[K*C x Cout]` re-reads
/// the packed weight once per tile, so bigger tiles cut that traffic (resnet_c4: W is 2.4 MB, read
/// 16 times at P = 256 against 64 times at P = 64), while the columns tile must stay within
/// [`COLS_BUDGET_BYTES`].
pub(crate) const TILE_PIXELS: usize = 256;

/// Upper bound on the bytes of one thread's columns tile (`P * K * C/Gc` accumulators): large
/// enough for a whole 256-pixel image of a ResNet c5 layer (K*C = 4608) in one tile, and a
/// bound on memory per thread that does not grow with the batch.
pub(crate) const COLS_BUDGET_BYTES: usize = 8 << 20;

/// Work lanes of the backward. Each lane owns its grad-input and grad-weight buffers and walks
/// a fixed, contiguous range of tiles; lanes are reduced in lane order. The count is a constant,
/// not the thread count, so results are bitwise identical for any number of threads. Four
/// lanes keep two cores busy with slack for uneven tiles while bounding the extra memory at four
/// grad-input images and four grad-weights.
pub(crate) const LANES: usize = 4;

/// Tasks a forward wave should offer. A wave with fewer tiles (one 16x16 image of ResNet's c5
/// at batch 1 is one tile) also splits its GEMMs by blocks of output channels. A constant, not
/// the thread count, so that the split, and with it every bit, is the same on any machine.
pub(crate) const MIN_TASKS: usize = 4;

/// Below this much work (multiply-adds of the GEMM plus four per sampled channel value) a call
/// runs on the calling thread alone: handing it to other threads costs more than it takes (a
/// 1x8x8x8 3x3 layer is ~6e4), and on busy cores a worker that is not scheduled holds the whole
/// call up. About 25 us of one core.
pub(crate) const SERIAL_WORK: f64 = (1u32 << 18) as f64;

/// Target pixels per tile of the backward's row-split schedule. A backward lane holds two tiles
/// (the columns and their gradient `dcol`, `2 * P * K*C` accumulators) beside its `dX` image:
/// at half the forward's tile they stay nearer the core (docs/optimisation-history.md, round
/// 5). Images that fit one [`TILE_PIXELS`] tile keep the whole-image schedule.
pub(crate) const BACKWARD_TILE_PIXELS: usize = 128;

/// Output rows per tile of `pixels` target pixels, for an output of width `wo` and `row_len`
/// accumulators per pixel, within [`COLS_BUDGET_BYTES`].
fn rows_for(pixels: usize, wo: usize, row_len: usize, elem_bytes: usize) -> usize {
    let by_budget = COLS_BUDGET_BYTES / (row_len.max(1) * elem_bytes).max(1);
    let pixels = pixels.min(by_budget).max(1);
    (pixels / wo.max(1)).max(1)
}

/// Output rows per forward tile ([`TILE_PIXELS`]).
pub(crate) fn rows_per_tile(wo: usize, row_len: usize, elem_bytes: usize) -> usize {
    rows_for(TILE_PIXELS, wo, row_len, elem_bytes)
}

/// Output rows per tile of the backward's row-split schedule ([`BACKWARD_TILE_PIXELS`]).
pub(crate) fn backward_rows_per_tile(wo: usize, row_len: usize, elem_bytes: usize) -> usize {
    rows_for(BACKWARD_TILE_PIXELS, wo, row_len, elem_bytes)
}

/// Least channels per deformable group for which a backward lane zeroes its `dX` rows on first
/// touch (`LazyDx`): finding the rows a descriptor row touches is a scan of its four corner
/// index rows, next to a scatter of `4 * C/G` values per pixel: with few channels the scan
/// costs what the zeroing saves. Below it, lanes zero the whole image.
pub(crate) const LAZY_DX_CHANNELS: usize = 32;

/// Least pixels per task of the channels-last copy: each task reads runs of this many elements
/// from every channel plane (1 KB of f32), long enough for the hardware prefetcher.
pub(crate) const NHWC_BAND_PIXELS: usize = 256;

/// Tasks the channels-last copy should offer at least (one 16x16 image in one band was one
/// thread's work).
pub(crate) const NHWC_TASKS: usize = 8;

/// Least bytes of a call's position and weight gradients (the point core's backward) that are
/// staged per row and streamed into the tensors ([`super::points::write_group`]). Smaller ones
/// stay in the caches until the next op reads them, where streaming would only add a pass
/// (DCNv3 stage 3, 7 MB: 1.02x slower; stage 2, 15 MB: 0.94x; BENCHMARKS.md).
pub(crate) const STREAM_BYTES: usize = 10 << 20;
