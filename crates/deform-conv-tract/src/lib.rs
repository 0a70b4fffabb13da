//! # deform-conv-tract
//!
//! Whole ONNX models with deformable convolutions, in pure Rust: adds the ONNX `DeformConv`
//! operator (opset 19 and 22: `group`, `offset_group`, optional bias and mask, `pads`, `strides`,
//! `dilations`, `kernel_shape`; f16, f32, f64) and mmcv's `MMCVModulatedDeformConv2d` (the node
//! that mmdeploy-exported detection and video models carry) to [tract-onnx]'s model loader,
//! computed by deform-conv's engine; and the weightless family: InternImage's `TRTDCNv3`, `DCNv4`
//! and mmdeploy's `MMCVMultiScaleDeformableAttention` (Deformable DETR and its descendants). Shapes are inferred, so tract's optimiser and
//! `into_runnable` work on the whole graph.
//!
//! ```no_run
//! use deform_conv_tract::WithDeformConv;
//! use tract_onnx::prelude::*;
//!
//! let model = tract_onnx::onnx()
//!     .with_deform_conv()                              // the one call
//!     .model_for_path("dcn.onnx")?
//!     .into_optimized()?
//!     .into_runnable()?;
//! let x: Tensor = tract_ndarray::Array4::<f32>::zeros((1, 4, 9, 8)).into();
//! let y = model.run(tvec!(x.into()))?;
//! # Ok::<(), TractError>(())
//! ```
//!
//! The adapter only translates attributes and layouts: `DeformConv` is
//! [`deform_conv::conventions::onnx::deform_conv`], `MMCVModulatedDeformConv2d` is
//! [`deform_conv::conventions::torchvision::deform_conv2d`] (mmcv's layouts; see docs/SPEC.md).
//!
//! [tract-onnx]: https://docs.rs/tract-onnx

use deform_conv::conventions::{onnx as dc_onnx, torchvision};
use deform_conv::Element;
use ndarray::{ArrayView1, ArrayView4, Ix1, Ix4};
use tract_onnx::model::{optional_inputs, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

/// Enables the deformable convolution operators on an ONNX model loader.
pub trait WithDeformConv {
    /// The loader with every operator of [`register`] registered.
    fn with_deform_conv(self) -> Self;
}

impl WithDeformConv for tract_onnx::Onnx {
    fn with_deform_conv(mut self) -> Self {
        register(&mut self);
        self
    }
}

/// `Op` for an adapter whose typed form is itself, named by its `Expansion`.
macro_rules! typed_op {
    ($t:ty) => {
        impl Op for $t {
            fn name(&self) -> StaticName {
                Expansion::name(self)
            }

            op_as_typed_op!();
        }
    };
}

mod points;
pub use points::{Dcnv3Op, MsdaOp};

/// Registers `DeformConv`, `MMCVModulatedDeformConv2d`, `TRTDCNv3`, `DCNv4` and
/// `MMCVMultiScaleDeformableAttention` on `onnx`.
pub fn register(onnx: &mut tract_onnx::Onnx) {
    onnx.op_register.insert("DeformConv", deform_conv_node);
    onnx.op_register
        .insert("MMCVModulatedDeformConv2d", mmcv_node);
    points::register(onnx);
}

/// Which convention a node follows, with its attributes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Convention {
    /// ONNX `DeformConv`; inputs X, W, offset, B?, mask?.
    Onnx {
        dilations: Option<Vec<i64>>,
        group: i64,
        kernel_shape: Option<Vec<i64>>,
        offset_group: i64,
        pads: Option<Vec<i64>>,
        strides: Option<Vec<i64>>,
    },
    /// mmcv `MMCVModulatedDeformConv2d`; inputs input, offset, mask, weight, bias?.
    Mmcv {
        stride: [i64; 2],
        padding: [i64; 2],
        dilation: [i64; 2],
        groups: i64,
        deform_groups: i64,
    },
}

/// The typed op: where each operand is among the node's inputs, and the convention.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeformConvOp {
    conv: Convention,
    x: usize,
    weight: usize,
    offset: usize,
    bias: Option<usize>,
    mask: Option<usize>,
}

fn deform_conv_node(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let mut present = optional_inputs(node).skip(3);
    let (bias, mask) = (present.next().flatten(), present.next().flatten());
    let conv = Convention::Onnx {
        dilations: node.get_attr_opt_vec("dilations")?,
        group: node.get_attr_opt("group")?.unwrap_or(1),
        kernel_shape: node.get_attr_opt_vec("kernel_shape")?,
        offset_group: node.get_attr_opt("offset_group")?.unwrap_or(1),
        pads: node.get_attr_opt_vec("pads")?,
        strides: node.get_attr_opt_vec("strides")?,
    };
    let op = DeformConvOp {
        conv,
        x: 0,
        weight: 1,
        offset: 2,
        bias,
        mask,
    };
    Ok((expand(op), vec![]))
}

fn pair(node: &NodeProto, name: &str, default: i64) -> TractResult<[i64; 2]> {
    match node.get_attr_opt_vec::<i64>(name)?.as_deref() {
        None => Ok([default; 2]),
        Some([a]) => Ok([*a, *a]),
        Some([a, b]) => Ok([*a, *b]),
        Some(v) => bail!(
            "MMCVModulatedDeformConv2d: attribute {name}: expected 1 or 2 integers, got {v:?}"
        ),
    }
}

fn mmcv_node(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let bias = optional_inputs(node).nth(4).flatten();
    let conv = Convention::Mmcv {
        stride: pair(node, "stride", 1)?,
        padding: pair(node, "padding", 0)?,
        dilation: pair(node, "dilation", 1)?,
        groups: node.get_attr_opt("groups")?.unwrap_or(1),
        deform_groups: node.get_attr_opt("deform_groups")?.unwrap_or(1),
    };
    let op = DeformConvOp {
        conv,
        x: 0,
        offset: 1,
        mask: Some(2),
        weight: 3,
        bias,
    };
    Ok((expand(op), vec![]))
}

impl Expansion for DeformConvOp {
    fn name(&self) -> StaticName {
        match self.conv {
            Convention::Onnx { .. } => "DeformConv".into(),
            Convention::Mmcv { .. } => "MMCVModulatedDeformConv2d".into(),
        }
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(
            inputs,
            3 + self.mask.is_some() as usize + self.bias.is_some() as usize,
        )?;
        check_output_arity(outputs, 1)?;
        let (x, w, off) = (&inputs[self.x], &inputs[self.weight], &inputs[self.offset]);
        for t in inputs {
            s.equals(&t.datum_type, &x.datum_type)?;
        }
        s.equals(&outputs[0].datum_type, &x.datum_type)?;
        s.equals(&x.rank, 4)?;
        s.equals(&w.rank, 4)?;
        s.equals(&off.rank, 4)?;
        s.equals(&outputs[0].rank, 4)?;
        // Y [N, Cout, Ho, Wo]: the offset's spatial size is the output's (the op checks the rest).
        s.equals(&outputs[0].shape[0], &x.shape[0])?;
        s.equals(&outputs[0].shape[1], &w.shape[0])?;
        s.equals(&outputs[0].shape[2], &off.shape[2])?;
        s.equals(&outputs[0].shape[3], &off.shape[3])?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.clone(), inputs)
    }
}

typed_op!(DeformConvOp);

impl TypedOp for DeformConvOp {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (x, w, off) = (inputs[self.x], inputs[self.weight], inputs[self.offset]);
        if x.rank() != 4 || w.rank() != 4 || off.rank() != 4 {
            bail!(
                "{}: expected 4-D input, weight and offset, got ranks {}, {}, {}",
                Expansion::name(self),
                x.rank(),
                w.rank(),
                off.rank()
            );
        }
        let shape: TVec<TDim> = tvec![
            x.shape[0].clone(),
            w.shape[0].clone(),
            off.shape[2].clone(),
            off.shape[3].clone()
        ];
        Ok(tvec!(x.datum_type.fact(&*shape)))
    }
}

impl EvalOp for DeformConvOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let dt = inputs[self.x].datum_type();
        let y = match dt {
            DatumType::F32 => self.run::<f32>(&inputs)?,
            DatumType::F64 => self.run::<f64>(&inputs)?,
            DatumType::F16 => self.run::<half::f16>(&inputs)?,
            other => bail!(
                "{}: expected float16, float32 or float64 tensors, got {other:?}",
                Expansion::name(self)
            ),
        };
        Ok(tvec!(y.into_tvalue()))
    }
}

fn view4<'a, T: Datum>(t: &'a TValue, name: &str) -> TractResult<ArrayView4<'a, T>> {
    t.to_plain_array_view::<T>()?
        .into_dimensionality::<Ix4>()
        .map_err(|_| format_err!("{name}: expected a 4-D tensor, got shape {:?}", t.shape()))
}

fn view1<'a, T: Datum>(t: &'a TValue, name: &str) -> TractResult<ArrayView1<'a, T>> {
    t.to_plain_array_view::<T>()?
        .into_dimensionality::<Ix1>()
        .map_err(|_| format_err!("{name}: expected a 1-D tensor, got shape {:?}", t.shape()))
}

impl DeformConvOp {
    fn run<T: Element + Datum>(&self, inputs: &[TValue]) -> TractResult<Tensor> {
        let x = view4::<T>(&inputs[self.x], "X")?;
        let w = view4::<T>(&inputs[self.weight], "W")?;
        let off = view4::<T>(&inputs[self.offset], "offset")?;
        let b = self.bias.map(|i| view1::<T>(&inputs[i], "B")).transpose()?;
        let m = self
            .mask
            .map(|i| view4::<T>(&inputs[i], "mask"))
            .transpose()?;
        let y = match &self.conv {
            Convention::Onnx {
                dilations,
                group,
                kernel_shape,
                offset_group,
                pads,
                strides,
            } => {
                let attrs = dc_onnx::Attributes {
                    dilations: dilations.clone(),
                    group: *group,
                    kernel_shape: kernel_shape.clone(),
                    offset_group: *offset_group,
                    pads: pads.clone(),
                    strides: strides.clone(),
                    ..Default::default()
                };
                dc_onnx::deform_conv(x, w, off, b, m, &attrs)?
            }
            Convention::Mmcv {
                stride,
                padding,
                dilation,
                groups,
                deform_groups,
            } => {
                for (name, v) in [("groups", groups), ("deform_groups", deform_groups)] {
                    if *v < 1 {
                        bail!("MMCVModulatedDeformConv2d: attribute {name}: expected a positive integer, got {v}");
                    }
                }
                let (c, cg) = (x.shape()[1] as i64, w.shape()[1] as i64);
                if cg == 0 || cg.checked_mul(*groups) != Some(c) {
                    bail!("MMCVModulatedDeformConv2d: attribute groups = {groups} disagrees with input channels {c} and weight.shape[1] = {cg}");
                }
                let taps = (w.shape()[2] * w.shape()[3]) as i64;
                let want = deform_groups.checked_mul(2 * taps);
                if want != Some(off.shape()[1] as i64) {
                    bail!(
                        "MMCVModulatedDeformConv2d: attribute deform_groups = {deform_groups} disagrees with the offset's {} channels (expected 2 * deform_groups * kh * kw)",
                        off.shape()[1]
                    );
                }
                let p = torchvision::Params {
                    stride: *stride,
                    padding: *padding,
                    dilation: *dilation,
                    ..Default::default()
                };
                torchvision::deform_conv2d(x, off, w, b, m, &p)?
            }
        };
        Ok(y.into_dyn().into_tensor())
    }
}
