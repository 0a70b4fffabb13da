//! Runs an ONNX model with DeformConv nodes through tract:
//!
//!     cargo run -p deform-conv-tract --example run_model -- crates/deform-conv-tract/tests/data/dcn_block/model.onnx

use deform_conv_tract::WithDeformConv;
use tract_onnx::prelude::*;

fn main() -> TractResult<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "crates/deform-conv-tract/tests/data/dcn_block/model.onnx".into());
    let model = tract_onnx::onnx()
        .with_deform_conv()
        .model_for_path(&path)?
        .with_input_fact(0, f32::fact([2, 4, 9, 8]).into())?
        .into_optimized()?
        .into_runnable()?;
    let x: Tensor = tract_ndarray::Array4::<f32>::from_shape_fn((2, 4, 9, 8), |(n, c, y, x)| {
        ((n + c + y * x) % 7) as f32 / 7.0
    })
    .into();
    let y = model.run(tvec!(x.into()))?;
    println!("{path}: output shape {:?}", y[0].shape());
    Ok(())
}
