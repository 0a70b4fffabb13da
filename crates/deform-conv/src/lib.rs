//! # deform-conv
//!
//! Exact, fast deformable convolution (DCN v1 and v2, "modulated") for CPUs, in every convention
//! that exposes it: torchvision / mmcv, ONNX `DeformConv`, MindSpore and torch_npu (NCHW and the
//! channels-last reading of its document). `SPEC.md` is the contract; in short:
//!
//! ```text
//! py = oh*stride_h - pad_top  + i*dil_h + dy        px = ow*stride_w - pad_left + j*dil_w + dx
//! col[n, c, k, oh, ow] = mask * bilinear(X[n, c], py, px)      (zero outside the image)
//! Y[n, o, oh, ow] = b[o] + sum_{c in group(o), k} Wt[o, c', i, j] * col[n, c, k, oh, ow]
//! ```
//!
//! The flow of the crate follows the data:
//! [`params`] (one validation) → [`conventions`] and [`layout`] (thin layers over strided views)
//! → [`op`] (canonical operator over the [`operands`]) → [`engine`] (fast path) or
//! [`reference`](mod@reference) (the oracle). `engine` and `reference` read only [`operands`] and
//! [`params`]; neither knows of `op` or of the other.

pub mod conventions;
pub mod element;
pub mod engine;
pub mod error;
pub mod layout;
pub mod op;
pub mod operands;
pub mod params;
pub mod reference;

pub use conventions::{Gradients, Layout};
pub use element::{Element, Real};
pub use error::{DeformError, Result};
pub use op::{Backend, ForwardOutputs, GradOutputs, Operands};
pub use params::{DeformParams, Geometry, GradGate, OutputRounding, ShapeSet};
