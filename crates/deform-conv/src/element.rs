//! The element types the crate computes with, through one small trait.
//!
//! A storage type `T` names the accumulation type `T::Acc` in which all sampling weights,
//! coordinates and sums are formed: `f64` stays `f64` end to end; `f32`, `f16` and `bf16` sample
//! and accumulate in `f32` (SPEC §4: half storage, f32 arithmetic).

use half::{bf16, f16};
use num_traits::{Float, FromPrimitive};
use std::fmt::Debug;
use std::iter::Sum;
use std::mem::MaybeUninit;
use std::ops::AddAssign;

/// The arithmetic type of a computation: `f32` or `f64`.
pub trait Real:
    Float + FromPrimitive + AddAssign + Sum + Default + Debug + Send + Sync + 'static
{
    /// `v` as this type (exact for the integer grid positions the op forms).
    fn of_i64(v: i64) -> Self;
    /// Truncation to i32, saturating (NaN gives 0): Rust's `as`, well defined for every value.
    fn to_i32_sat(self) -> i32;
}

impl Real for f32 {
    #[inline(always)]
    fn of_i64(v: i64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn to_i32_sat(self) -> i32 {
        self as i32
    }
}

impl Real for f64 {
    #[inline(always)]
    fn of_i64(v: i64) -> Self {
        v as f64
    }
    #[inline(always)]
    fn to_i32_sat(self) -> i32 {
        self as i32
    }
}

/// A storage element type: `f32`, `f64`, `half::f16` or `half::bf16`.
pub trait Element: Copy + Default + Debug + Send + Sync + crate::alloc::ZeroBits + 'static {
    /// The type every sum and sampling weight is computed in.
    type Acc: Real;
    /// numpy / torch style name (`"float32"`), for messages.
    const NAME: &'static str;
    /// Widen to the accumulation type.
    fn to_acc(self) -> Self::Acc;
    /// Round from the accumulation type (round-to-nearest-even for half types).
    fn from_acc(a: Self::Acc) -> Self;
    /// `s` itself when `Self` is its own accumulation type (f32, f64), so rows can be read in
    /// place instead of widened into a copy; `None` for the half types.
    #[inline(always)]
    fn as_acc(_s: &[Self]) -> Option<&[Self::Acc]> {
        None
    }
    /// `s` itself when `Self` is its own accumulation type, so outputs can be written in place.
    #[inline(always)]
    fn as_acc_out(_s: &mut [MaybeUninit<Self>]) -> Option<&mut [MaybeUninit<Self::Acc>]> {
        None
    }
}

impl Element for f32 {
    type Acc = f32;
    const NAME: &'static str = "float32";
    #[inline(always)]
    fn to_acc(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_acc(a: f32) -> Self {
        a
    }
    #[inline(always)]
    fn as_acc(s: &[f32]) -> Option<&[f32]> {
        Some(s)
    }
    #[inline(always)]
    fn as_acc_out(s: &mut [MaybeUninit<f32>]) -> Option<&mut [MaybeUninit<f32>]> {
        Some(s)
    }
}

impl Element for f64 {
    type Acc = f64;
    const NAME: &'static str = "float64";
    #[inline(always)]
    fn to_acc(self) -> f64 {
        self
    }
    #[inline(always)]
    fn from_acc(a: f64) -> Self {
        a
    }
    #[inline(always)]
    fn as_acc(s: &[f64]) -> Option<&[f64]> {
        Some(s)
    }
    #[inline(always)]
    fn as_acc_out(s: &mut [MaybeUninit<f64>]) -> Option<&mut [MaybeUninit<f64>]> {
        Some(s)
    }
}

impl Element for f16 {
    type Acc = f32;
    const NAME: &'static str = "float16";
    #[inline(always)]
    fn to_acc(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn from_acc(a: f32) -> Self {
        f16::from_f32(a)
    }
}

impl Element for bf16 {
    type Acc = f32;
    const NAME: &'static str = "bfloat16";
    #[inline(always)]
    fn to_acc(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn from_acc(a: f32) -> Self {
        bf16::from_f32(a)
    }
}
