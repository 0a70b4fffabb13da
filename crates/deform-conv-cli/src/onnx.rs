//! `onnx`: runs a whole ONNX model with tract and our deformable convolution operators.
//!
//! Every input is checked (present, known, dtype and shape against the model's declared input)
//! before the model runs; every output is computed before any file is written, and then written
//! all together (`npy::Outputs`): a failure leaves nothing behind.

use crate::npy::{self, Tensor as Npy};
use crate::outputs::Outputs;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use deform_conv_tract::WithDeformConv;
use std::path::PathBuf;
use std::time::Instant;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

/// Arguments of `onnx`.
#[derive(Args, Debug)]
pub struct OnnxArgs {
    /// The ONNX model (.onnx).
    pub model: PathBuf,
    /// A graph input, NAME=FILE.npy (float16/32/64); one per input of the model.
    #[arg(long = "input", value_name = "NAME=FILE.npy", value_parser = name_and_path)]
    pub inputs: Vec<(String, PathBuf)>,
    /// Where each graph output is written as <output name>.npy (must exist).
    #[arg(long, default_value = ".")]
    pub output_dir: PathBuf,
}

fn name_and_path(s: &str) -> std::result::Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((n, p)) if !n.is_empty() && !p.is_empty() => Ok((n.to_string(), PathBuf::from(p))),
        _ => Err(format!("expected NAME=FILE.npy, got {s:?}")),
    }
}

fn to_tract(t: Npy) -> Tensor {
    match t {
        Npy::F16(a) => a.into_tensor(),
        Npy::F32(a) => a.into_tensor(),
        Npy::F64(a) => a.into_tensor(),
    }
}

fn dtype_name(dt: DatumType) -> String {
    match dt {
        DatumType::F16 => "float16".into(),
        DatumType::F32 => "float32".into(),
        DatumType::F64 => "float64".into(),
        other => format!("{other:?}"),
    }
}

pub fn onnx(a: &OnnxArgs) -> Result<()> {
    if !a.output_dir.is_dir() {
        bail!(
            "--output-dir {}: the folder does not exist",
            a.output_dir.display()
        );
    }
    let loader = tract_onnx::onnx().with_deform_conv();
    let mut file = std::fs::File::open(&a.model)
        .with_context(|| format!("model {}: cannot open", a.model.display()))?;
    let proto = loader
        .proto_model_for_read(&mut file)
        .map_err(|e| anyhow!("model {}: not an ONNX model ({e})", a.model.display()))?;
    let mut model = loader
        .model_for_proto_model(&proto)
        .map_err(|e| anyhow!("model {}: {e:#}", a.model.display()))?;
    for node in model.nodes() {
        let name = node.op.name();
        if let Some(op) = name
            .strip_prefix("Unimplemented(")
            .and_then(|s| s.strip_suffix(')'))
        {
            bail!(
                "model {}: unsupported operator {op} (node {:?})",
                a.model.display(),
                node.name
            );
        }
    }
    // Inputs: each model input exactly once, by name, checked against the declared fact.
    let names: Vec<String> = model
        .input_outlets()?
        .iter()
        .map(|o| model.node(o.node).name.clone())
        .collect();
    for (given, _) in &a.inputs {
        if !names.contains(given) {
            bail!(
                "--input {given}: the model has no such input (its inputs: {})",
                names.join(", ")
            );
        }
        if a.inputs.iter().filter(|(n, _)| n == given).count() > 1 {
            bail!("--input {given}: given more than once");
        }
    }
    let mut values = TVec::new();
    for (i, name) in names.iter().enumerate() {
        let (_, path) = a.inputs.iter().find(|(n, _)| n == name).ok_or_else(|| {
            anyhow!(
                "--input {name}=FILE.npy: missing (the model's inputs: {})",
                names.join(", ")
            )
        })?;
        let t = to_tract(npy::load(path, &format!("input {name}"))?);
        let declared = model.input_fact(i)?.clone();
        if let Some(dt) = declared.datum_type.concretize() {
            if dt != t.datum_type() {
                bail!(
                    "input {name} {}: expected dtype {}, got {}",
                    path.display(),
                    dtype_name(dt),
                    dtype_name(t.datum_type())
                );
            }
        }
        if let Some(shape) = declared.shape.concretize() {
            let fits = shape.len() == t.rank()
                && shape
                    .iter()
                    .zip(t.shape())
                    .all(|(d, &n)| d.to_i64().map_or(true, |d| d as usize == n));
            if !fits {
                bail!(
                    "input {name} {}: expected shape {:?}, got {:?}",
                    path.display(),
                    shape.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                    t.shape()
                );
            }
        }
        model.set_input_fact(i, InferenceFact::dt_shape(t.datum_type(), t.shape()))?;
        values.push(t.into_tvalue());
    }
    let started = Instant::now();
    let plan = model
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(|e| anyhow!("model {}: {e:#}", a.model.display()))?;
    let prepared = started.elapsed();
    let started = Instant::now();
    let outputs = plan
        .run(values)
        .map_err(|e| anyhow!("model {}: running it failed: {e:#}", a.model.display()))?;
    let ran = started.elapsed();
    let typed = plan.model();
    let mut files = Outputs::default();
    let mut report = Vec::new();
    for (o, value) in typed.output_outlets()?.iter().zip(outputs.iter()) {
        let name = typed
            .outlet_label(*o)
            .map(str::to_string)
            .unwrap_or_else(|| typed.node(o.node).name.clone());
        let file_name: String = name
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = a.output_dir.join(format!("{file_name}.npy"));
        match value.datum_type() {
            DatumType::F32 => files.add(&path, &value.to_plain_array_view::<f32>()?.to_owned())?,
            DatumType::F64 => files.add(&path, &value.to_plain_array_view::<f64>()?.to_owned())?,
            DatumType::F16 => files.add(&path, &value.to_plain_array_view::<half::f16>()?.to_owned())?,
            other => bail!("output {name}: dtype {other:?} cannot be written as .npy here (float16/32/64 only)"),
        }
        report.push(format!("{name:<20} {:?}", value.shape()));
    }
    println!(
        "{}: {} nodes, optimised and planned in {:.1} ms, ran in {:.2} ms ({} threads)",
        a.model.display(),
        typed.nodes().len(),
        prepared.as_secs_f64() * 1e3,
        ran.as_secs_f64() * 1e3,
        deform_conv::engine::num_threads()
    );
    for line in report {
        println!("output {line}");
    }
    files.commit()
}
