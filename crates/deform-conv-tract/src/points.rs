//! The weightless deformable operators as ONNX nodes: InternImage's `TRTDCNv3` (the node its
//! `DCNv3Function.symbolic` and `deform_conv.torch` export), `DCNv4` (the same attributes, one
//! packed `offset_mask` input), and mmdeploy's `MMCVMultiScaleDeformableAttention`.

use deform_conv::conventions::dcnv3::{self, Dcnv3Params};
use deform_conv::conventions::msda::{self, MsdaParams};
use deform_conv::Element;
use ndarray::{Ix1, Ix2, Ix4, Ix5, Ix6};
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

/// `TRTDCNv3` (inputs input, offset, mask) or `DCNv4` (inputs input, offset_mask); channels-last.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Dcnv3Op {
    v4: bool,
    kernel: [i64; 2],
    stride: [i64; 2],
    pad: [i64; 2],
    dilation: [i64; 2],
    group: i64,
    group_channels: i64,
    /// `offset_scale`'s bits (an op must hash).
    scale_bits: u64,
    remove_center: bool,
}

fn int(node: &NodeProto, name: &str, default: Option<i64>) -> TractResult<i64> {
    match (node.get_attr_opt::<i64>(name)?, default) {
        (Some(v), _) => Ok(v),
        (None, Some(d)) => Ok(d),
        (None, None) => bail!("{}: attribute {name} is missing", node.op_type),
    }
}

fn dcnv3_node(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let pair = |a: &str, b: &str, d: Option<i64>| {
        Ok::<_, TractError>([int(node, a, d)?, int(node, b, d)?])
    };
    let scale = node.get_attr_opt::<f32>("offset_scale")?.unwrap_or(1.0) as f64;
    let op = Dcnv3Op {
        v4: node.op_type == "DCNv4",
        kernel: pair("kernel_h", "kernel_w", None)?,
        stride: pair("stride_h", "stride_w", Some(1))?,
        pad: pair("pad_h", "pad_w", Some(0))?,
        dilation: pair("dilation_h", "dilation_w", Some(1))?,
        group: int(node, "group", None)?,
        group_channels: int(node, "group_channels", None)?,
        scale_bits: scale.to_bits(),
        remove_center: int(node, "remove_center", Some(0))? != 0,
    };
    Ok((expand(op), vec![]))
}

impl Dcnv3Op {
    fn name(&self) -> &'static str {
        if self.v4 {
            "DCNv4"
        } else {
            "TRTDCNv3"
        }
    }

    fn params(&self) -> Dcnv3Params {
        Dcnv3Params {
            kernel: self.kernel,
            stride: self.stride,
            padding: self.pad,
            dilation: self.dilation,
            group: self.group,
            group_channels: self.group_channels,
            offset_scale: f64::from_bits(self.scale_bits),
            remove_center: self.remove_center,
            ..Default::default()
        }
    }

    fn run<T: Element + Datum>(&self, inputs: &[TValue]) -> TractResult<Tensor> {
        let x = view::<T, Ix4>(&inputs[0], "input")?;
        let p = self.params();
        let y = if self.v4 {
            dcnv3::dcnv4(x, view::<T, Ix4>(&inputs[1], "offset_mask")?, &p)?
        } else {
            let off = view::<T, Ix4>(&inputs[1], "offset")?;
            dcnv3::dcnv3(x, off, view::<T, Ix4>(&inputs[2], "mask")?, &p)?
        };
        Ok(y.into_dyn().into_tensor())
    }
}

impl Expansion for Dcnv3Op {
    fn name(&self) -> StaticName {
        Dcnv3Op::name(self).into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, if self.v4 { 2 } else { 3 })?;
        check_output_arity(outputs, 1)?;
        for t in inputs {
            s.equals(&t.datum_type, &inputs[0].datum_type)?;
            s.equals(&t.rank, 4)?;
        }
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        s.equals(&outputs[0].rank, 4)?;
        // [N, Ho, Wo, G*D]: the offset's spatial size, the input's channels.
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[0].shape[1], &inputs[1].shape[1])?;
        s.equals(&outputs[0].shape[2], &inputs[1].shape[2])?;
        s.equals(&outputs[0].shape[3], &inputs[0].shape[3])?;
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

typed_op!(Dcnv3Op);

impl TypedOp for Dcnv3Op {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (x, off) = (inputs[0], inputs[1]);
        if x.rank() != 4 || off.rank() != 4 {
            bail!(
                "{}: expected 4-D input and offset, got ranks {} and {}",
                Dcnv3Op::name(self),
                x.rank(),
                off.rank()
            );
        }
        let shape: TVec<TDim> = tvec![
            x.shape[0].clone(),
            off.shape[1].clone(),
            off.shape[2].clone(),
            x.shape[3].clone()
        ];
        Ok(tvec!(x.datum_type.fact(&*shape)))
    }
}

impl EvalOp for Dcnv3Op {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let y = by_type(Dcnv3Op::name(self), inputs[0].datum_type(), |t| match t {
            DatumType::F32 => self.run::<f32>(&inputs),
            DatumType::F64 => self.run::<f64>(&inputs),
            _ => self.run::<half::f16>(&inputs),
        })?;
        Ok(tvec!(y.into_tvalue()))
    }
}

/// mmdeploy's `MMCVMultiScaleDeformableAttention`: inputs value `[N, S, M, D]`, spatial shapes
/// `[L, 2]` and level start index `[L]` (int64), sampling locations `[N, Lq, M, L, P, 2]`,
/// attention weights `[N, Lq, M, L, P]`; output `[N, Lq, M*D]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MsdaOp;

fn msda_node(
    _ctx: &ParsingContext,
    _node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((expand(MsdaOp), vec![]))
}

const MSDA: &str = "MMCVMultiScaleDeformableAttention";

impl MsdaOp {
    fn run<T: Element + Datum>(&self, inputs: &[TValue]) -> TractResult<Tensor> {
        let shapes = inputs[1].cast_to::<i64>()?;
        let starts = inputs[2].cast_to::<i64>()?;
        let y = msda::ms_deform_attn(
            view::<T, Ix4>(&inputs[0], "value")?,
            shapes
                .to_plain_array_view::<i64>()?
                .into_dimensionality::<Ix2>()
                .map_err(|_| {
                    format_err!(
                        "{MSDA}: spatial_shapes: expected [L, 2], got {:?}",
                        shapes.shape()
                    )
                })?,
            starts
                .to_plain_array_view::<i64>()?
                .into_dimensionality::<Ix1>()
                .map_err(|_| {
                    format_err!(
                        "{MSDA}: level_start_index: expected [L], got {:?}",
                        starts.shape()
                    )
                })?,
            view::<T, Ix6>(&inputs[3], "sampling_locations")?,
            view::<T, Ix5>(&inputs[4], "attention_weights")?,
            &MsdaParams::default(),
        )?;
        Ok(y.into_dyn().into_tensor())
    }
}

impl Expansion for MsdaOp {
    fn name(&self) -> StaticName {
        MSDA.into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 5)?;
        check_output_arity(outputs, 1)?;
        let (value, loc, attn) = (&inputs[0], &inputs[3], &inputs[4]);
        s.equals(&loc.datum_type, &value.datum_type)?;
        s.equals(&attn.datum_type, &value.datum_type)?;
        s.equals(&outputs[0].datum_type, &value.datum_type)?;
        s.equals(&value.rank, 4)?;
        s.equals(&loc.rank, 6)?;
        s.equals(&attn.rank, 5)?;
        s.equals(&outputs[0].rank, 3)?;
        s.equals(&outputs[0].shape[0], &value.shape[0])?;
        s.equals(&outputs[0].shape[1], &loc.shape[1])?;
        s.given_2(&value.shape[2], &value.shape[3], move |s, m, d| {
            s.equals(&outputs[0].shape[2], m * d)
        })?;
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

typed_op!(MsdaOp);

impl TypedOp for MsdaOp {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (value, loc) = (inputs[0], inputs[3]);
        if value.rank() != 4 || loc.rank() != 6 {
            bail!(
                "{MSDA}: expected a 4-D value and 6-D sampling locations, got ranks {} and {}",
                value.rank(),
                loc.rank()
            );
        }
        let shape: TVec<TDim> = tvec![
            value.shape[0].clone(),
            loc.shape[1].clone(),
            value.shape[2].clone() * value.shape[3].clone()
        ];
        Ok(tvec!(value.datum_type.fact(&*shape)))
    }
}

impl EvalOp for MsdaOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let y = by_type(MSDA, inputs[0].datum_type(), |t| match t {
            DatumType::F32 => self.run::<f32>(&inputs),
            DatumType::F64 => self.run::<f64>(&inputs),
            _ => self.run::<half::f16>(&inputs),
        })?;
        Ok(tvec!(y.into_tvalue()))
    }
}

/// `f(dt)` for the float types the ops take, or a named error.
fn by_type(
    name: &str,
    dt: DatumType,
    f: impl FnOnce(DatumType) -> TractResult<Tensor>,
) -> TractResult<Tensor> {
    match dt {
        DatumType::F32 | DatumType::F64 | DatumType::F16 => f(dt),
        other => bail!("{name}: expected float16, float32 or float64 tensors, got {other:?}"),
    }
}

fn view<'a, T: Datum, D: ndarray::Dimension>(
    t: &'a TValue,
    name: &str,
) -> TractResult<ndarray::ArrayView<'a, T, D>> {
    t.to_plain_array_view::<T>()?
        .into_dimensionality::<D>()
        .map_err(|_| {
            format_err!(
                "{name}: expected a {}-D tensor, got shape {:?}",
                D::NDIM.unwrap_or(0),
                t.shape()
            )
        })
}

/// Registers `TRTDCNv3`, `DCNv4` and `MMCVMultiScaleDeformableAttention` on `onnx`.
pub fn register(onnx: &mut tract_onnx::Onnx) {
    onnx.op_register.insert("TRTDCNv3", dcnv3_node);
    onnx.op_register.insert("DCNv4", dcnv3_node);
    onnx.op_register.insert(MSDA, msda_node);
}
