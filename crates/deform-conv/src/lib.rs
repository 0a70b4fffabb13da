//! # deform-conv
//!
//! Exact, fast deformable convolution (DCN v1 and v2, "modulated") for CPUs, in every convention
//! that exposes it: torchvision / mmcv, ONNX `DeformConv`, MindSpore and torch_npu (NCHW and the
//! channels-last reading of its document). `docs/SPEC.md` (in the repository) is the contract; in short:
//!
//! ```text
//! py = oh*stride_h - pad_top  + i*dil_h + dy        px = ow*stride_w - pad_left + j*dil_w + dx
//! col[n, c, k, oh, ow] = mask * bilinear(X[n, c], py, px)      (zero outside the image)
//! Y[n, o, oh, ow] = b[o] + sum_{c in group(o), k} Wt[o, c', i, j] * col[n, c, k, oh, ow]
//! ```
//!
//! One layer in torchvision's convention, forward and backward, checked against the reference
//! path (the oracle the engine is tested against):
//!
//! ```
//! use deform_conv::conventions::torchvision::{deform_conv2d, deform_conv2d_backward, Params};
//! use deform_conv::Backend;
//! use ndarray::{Array1, Array4};
//! let (n, c, h, w, cout) = (1, 8, 12, 12, 16);
//! let x = Array4::<f32>::from_shape_fn((n, c, h, w), |(_, c, y, x)| ((c * 31 + y * 7 + x) % 11) as f32 / 11.0);
//! let weight = Array4::<f32>::from_shape_fn((cout, c, 3, 3), |(o, c, i, j)| ((o + c + i * 3 + j) % 5) as f32 * 0.05);
//! let bias = Array1::<f32>::zeros(cout);
//! // Offsets [N, 2*K, Ho, Wo], interleaved (dy, dx) per tap; mask [N, K, Ho, Wo].
//! let offset = Array4::<f32>::from_shape_fn((n, 18, h, w), |(_, k, y, x)| ((k + y + x) % 7) as f32 * 0.3 - 0.9);
//! let mask = Array4::<f32>::from_elem((n, 9, h, w), 0.5);
//! let p = Params { padding: [1, 1], ..Params::default() };
//! let y = deform_conv2d(x.view(), offset.view(), weight.view(), Some(bias.view()), Some(mask.view()), &p)?;
//! let r = Params { backend: Backend::Reference, ..p.clone() };
//! let y_ref = deform_conv2d(x.view(), offset.view(), weight.view(), Some(bias.view()), Some(mask.view()), &r)?;
//! assert!(y.iter().zip(&y_ref).all(|(a, b)| (a - b).abs() <= 1e-5 * (1.0 + b.abs())));
//! let g = deform_conv2d_backward(
//!     Array4::ones(y.raw_dim()).view(), x.view(), offset.view(), weight.view(),
//!     Some(bias.view()), Some(mask.view()), &p,
//! )?;
//! assert_eq!(g.offset.shape(), offset.shape());
//! assert_eq!(g.bias.unwrap()[0], (h * w) as f32); // db = sum of dY
//! # Ok::<(), deform_conv::DeformError>(())
//! ```
//!
//! The flow of the crate follows the data:
//! [`params`] (one validation) → [`conventions`] and [`layout`] (thin layers over strided views)
//! → [`op`] (canonical operator over the [`operands`]) → [`engine`] (fast path) or
//! [`reference`](mod@reference) (the oracle). `engine` and `reference` read only [`operands`] and
//! [`params`]; neither knows of `op` or of the other.

pub mod alloc;
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
