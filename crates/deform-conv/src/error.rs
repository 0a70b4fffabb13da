//! The one error type of the crate.
//!
//! Every rejection of SPEC §5 is a variant here. Each message names the tensor or parameter,
//! what was expected and what came, so that Python (`ValueError` / `TypeError`) and the CLI can
//! show it unchanged.

/// Why an operation was refused. Nothing in the crate panics on bad input: it returns one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeformError {
    /// A tensor does not have the rank the convention needs.
    #[error("{name}: expected a {expected}-D tensor, got {got}-D with shape {shape:?}")]
    Rank {
        /// The tensor.
        name: String,
        /// Expected rank.
        expected: usize,
        /// Received rank.
        got: usize,
        /// Received shape.
        shape: Vec<usize>,
    },
    /// A scalar or list parameter is out of range or of the wrong length.
    #[error("{name}: expected {expected}, got {got}")]
    Parameter {
        /// The parameter.
        name: String,
        /// What was expected, in words.
        expected: String,
        /// What came.
        got: String,
    },
    /// A tensor has the right rank but the wrong shape.
    #[error("{name}: expected shape {expected}, got {got:?}")]
    Shape {
        /// The tensor.
        name: String,
        /// The expected shape, in words (may name symbols such as `N` or `Ho`).
        expected: String,
        /// The received shape.
        got: Vec<usize>,
    },
    /// The output would be empty: `Ho < 1` or `Wo < 1`.
    #[error(
        "output size: expected Ho >= 1 and Wo >= 1, got Ho = {ho}, Wo = {wo} \
         (input {h}x{w}, padded window {win_h}x{win_w}, stride {sh}x{sw})"
    )]
    OutputSize {
        /// Computed output height (may be < 1).
        ho: i128,
        /// Computed output width (may be < 1).
        wo: i128,
        /// Input height.
        h: usize,
        /// Input width.
        w: usize,
        /// Dilated kernel height `dil_h*(kh-1)+1`.
        win_h: i128,
        /// Dilated kernel width.
        win_w: i128,
        /// Stride height.
        sh: i64,
        /// Stride width.
        sw: i64,
    },
    /// Shape arithmetic overflowed `usize`.
    #[error("{name}: shape arithmetic overflows usize ({detail})")]
    Overflow {
        /// The tensor or quantity.
        name: String,
        /// Which product overflowed.
        detail: String,
    },
    /// A result buffer could not be allocated (the shapes are valid but too large for this machine).
    #[error("{name}: cannot allocate {bytes} bytes for shape {shape:?}")]
    Allocation {
        /// The output or gradient.
        name: String,
        /// Requested bytes.
        bytes: usize,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// An unsupported or mixed element type (raised as `TypeError` in Python).
    #[error("{name}: expected dtype {expected}, got {got}")]
    DType {
        /// The tensor.
        name: String,
        /// Expected dtype(s).
        expected: String,
        /// Received dtype.
        got: String,
    },
}

/// Result alias of the crate.
pub type Result<T> = std::result::Result<T, DeformError>;

impl DeformError {
    /// Shorthand for [`DeformError::Parameter`].
    pub fn parameter(
        name: impl Into<String>,
        expected: impl Into<String>,
        got: impl std::fmt::Debug,
    ) -> Self {
        DeformError::Parameter {
            name: name.into(),
            expected: expected.into(),
            got: format!("{got:?}"),
        }
    }

    /// Shorthand for [`DeformError::Shape`].
    pub fn shape(name: impl Into<String>, expected: impl Into<String>, got: &[usize]) -> Self {
        DeformError::Shape {
            name: name.into(),
            expected: expected.into(),
            got: got.to_vec(),
        }
    }

    /// True for errors that Python raises as `TypeError` (dtype problems); the rest are `ValueError`.
    pub fn is_type_error(&self) -> bool {
        matches!(self, DeformError::DType { .. })
    }
}

/// Checks that a dynamic shape has `rank` dimensions and returns it as an array.
pub fn check_rank<const R: usize>(name: &str, shape: &[usize]) -> Result<[usize; R]> {
    shape.try_into().map_err(|_| DeformError::Rank {
        name: name.to_string(),
        expected: R,
        got: shape.len(),
        shape: shape.to_vec(),
    })
}

/// Product of dimensions, overflow-checked.
pub fn checked_product(name: &str, dims: &[usize]) -> Result<usize> {
    dims.iter().try_fold(1usize, |acc, &d| {
        acc.checked_mul(d).ok_or_else(|| DeformError::Overflow {
            name: name.to_string(),
            detail: format!("product of {dims:?}"),
        })
    })
}
