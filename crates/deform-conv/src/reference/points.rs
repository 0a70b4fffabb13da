//! The bilinear sample of the weightless operators' oracles (DCNv3/DCNv4, attention).

use crate::element::Real;

/// The four corners `((row, col), weight)` of a sample strictly inside `(-1, H) x (-1, W)`, the
/// ones outside the image dropped; `None` outside (NaN included).
#[allow(clippy::type_complexity)]
pub(super) fn corners<A: Real>(
    h: usize,
    w: usize,
    y: A,
    x: A,
) -> Option<(A, A, Vec<((usize, usize), [bool; 2], A)>)> {
    let one = A::one();
    let inside = y > -one && x > -one && y < A::of_i64(h as i64) && x < A::of_i64(w as i64);
    if !inside {
        return None;
    }
    let (fy, fx) = (y.floor(), x.floor());
    let (ly, lx) = (y - fy, x - fx);
    let (yi, xi) = (fy.to_i64().unwrap_or(-1), fx.to_i64().unwrap_or(-1));
    let mut out = Vec::new();
    for (dy, wy) in [(0i64, one - ly), (1, ly)] {
        for (dx, wx) in [(0i64, one - lx), (1, lx)] {
            let (r, c) = (yi + dy, xi + dx);
            if r >= 0 && c >= 0 && (r as usize) < h && (c as usize) < w {
                out.push(((r as usize, c as usize), [dy == 1, dx == 1], wy * wx));
            }
        }
    }
    Some((ly, lx, out))
}
