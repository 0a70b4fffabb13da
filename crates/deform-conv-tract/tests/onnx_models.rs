//! Whole ONNX models through tract with our operators: ONNX's own DeformConv node test cases
//! (from the onnx package's test-case generator), an mmcv::MMCVModulatedDeformConv2d node
//! (expected output from torchvision), and a DCN block exported from torch (expected output
//! from onnxruntime), and DCNv3, DCNv4 and multi-scale deformable attention blocks exported from
//! torch (expected outputs from the grid_sample formulations). Fixtures: tools/make_onnx_fixtures.py.

use deform_conv_tract::WithDeformConv;
use ndarray::ArrayD;
use ndarray_npy::read_npy;
use std::path::{Path, PathBuf};
use tract_onnx::prelude::*;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn npys(dir: &Path, prefix: &str) -> Vec<ArrayD<f32>> {
    (0..)
        .map(|i| dir.join(format!("{prefix}_{i}.npy")))
        .take_while(|p| p.exists())
        .map(|p| read_npy(&p).unwrap())
        .collect()
}

/// Loads `dir/model.onnx` with the inputs' shapes, optimises it, runs it, and compares every
/// output with the expected one to `rel` relative to its largest magnitude.
fn check(dir: &Path, rel: f32) {
    let inputs = npys(dir, "input");
    let want = npys(dir, "output");
    let mut model = tract_onnx::onnx()
        .with_deform_conv()
        .model_for_path(dir.join("model.onnx"))
        .unwrap_or_else(|e| panic!("{}: {e:?}", dir.display()));
    for (i, a) in inputs.iter().enumerate() {
        model
            .set_input_fact(i, f32::fact(a.shape()).into())
            .unwrap();
    }
    let plan = model
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .unwrap_or_else(|e| panic!("{}: {e:?}", dir.display()));
    let out = plan
        .run(inputs.into_iter().map(|a| a.into_tensor().into()).collect())
        .unwrap_or_else(|e| panic!("{}: {e:?}", dir.display()));
    assert_eq!(out.len(), want.len());
    for (got, want) in out.iter().zip(&want) {
        let got = got.to_plain_array_view::<f32>().unwrap();
        assert_eq!(got.shape(), want.shape(), "{}", dir.display());
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let err = got
            .iter()
            .zip(want.iter())
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            err <= rel * scale,
            "{}: max error {err} (scale {scale})",
            dir.display()
        );
    }
}

#[test]
fn onnx_node_test_cases_match_their_expected_outputs() {
    let mut n = 0;
    for entry in std::fs::read_dir(data()).unwrap() {
        let dir = entry.unwrap().path();
        if dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("test_")
        {
            check(&dir, 1e-5);
            n += 1;
        }
    }
    assert!(
        n >= 4,
        "expected ONNX's DeformConv node test cases, found {n}"
    );
}

#[test]
fn mmcv_modulated_deform_conv_node_matches_torchvision() {
    check(&data().join("mmcv_modulated"), 1e-5);
}

#[test]
fn a_dcn_block_exported_from_torch_matches_onnxruntime() {
    check(&data().join("dcn_block"), 1e-5);
}

#[test]
fn without_the_registration_the_operator_is_unknown() {
    let err = tract_onnx::onnx()
        .model_for_path(data().join("dcn_block/model.onnx"))
        .and_then(|m| m.into_optimized())
        .err()
        .map(|e| format!("{e:?}"))
        .unwrap_or_default();
    assert!(err.contains("DeformConv"), "{err}");
}

#[test]
fn an_internimage_dcnv3_block_matches_the_grid_sample_formulation() {
    check(&data().join("dcnv3_block"), 1e-4);
}

#[test]
fn a_dcnv4_block_matches_the_grid_sample_formulation() {
    check(&data().join("dcnv4_block"), 1e-4);
}

#[test]
fn an_mmcv_deformable_attention_block_matches_the_grid_sample_formulation() {
    check(&data().join("msda_block"), 1e-4);
}
