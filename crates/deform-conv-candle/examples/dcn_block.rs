//! A DCNv2 block in candle: offset/mask conv, deformable conv, one SGD step through backprop.
//!
//!     cargo run -p deform-conv-candle --example dcn_block

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2dConfig, Optimizer, VarBuilder, VarMap};
use deform_conv_candle::{DeformConv2d, DeformConv2dPack, DeformConvConfig};

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let cfg = DeformConvConfig {
        padding: (1, 1),
        ..Default::default()
    };
    let block = DeformConv2dPack {
        conv_offset: candle_nn::conv2d(
            16,
            27,
            3,
            Conv2dConfig {
                padding: 1,
                ..Default::default()
            },
            vb.pp("conv_offset"),
        )?,
        dcn: DeformConv2d::load(vb.clone(), 16, 32, (3, 3), 1, true, cfg)?,
    };
    let x = Tensor::randn(0f32, 1., (2, 16, 24, 24), &dev)?;
    let target = Tensor::zeros((2, 32, 24, 24), DType::F32, &dev)?;
    let mut sgd = candle_nn::SGD::new(vm.all_vars(), 0.01)?;
    for step in 0..3 {
        let loss = block.forward(&x)?.sub(&target)?.sqr()?.mean_all()?;
        sgd.backward_step(&loss)?;
        println!("step {step}: loss {:.5}", loss.to_scalar::<f32>()?);
    }
    Ok(())
}
