//! `onnx`: runs a whole ONNX model with tract and our deformable convolution operators.
//!
//! Every input is checked (present, known, dtype and shape against the model's declared input)
//! before the model runs; every output is computed before any file is written, and then written
//! all together (`outputs::Outputs`): a failure leaves nothing behind. A model is checked before
//! it runs: tensors kept in external files must lie inside the model's folder, every value the
//! typed graph declares must fit in memory, and a panic inside tract becomes an error.

use crate::npy::{self, Tensor as Npy};
use crate::outputs::Outputs;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use deform_conv_tract::WithDeformConv;
use std::path::{Path, PathBuf};
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

/// Runs a model with tract's panics turned into an error: a hostile model that trips an assertion
/// inside the loader, optimiser or an operator is a one-line error, not exit 101.
pub fn onnx(a: &OnnxArgs) -> Result<()> {
    guarded(a, || {
        let proto = read_proto(a)?;
        run_proto(a, &proto)
    })
}

/// `f`, with a panic inside it turned into an error naming the model (the panic hook silenced
/// meanwhile, so the error is the one line printed).
fn guarded(a: &OnnxArgs, f: impl FnOnce() -> Result<()>) -> Result<()> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    r.unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        Err(anyhow!(
            "model {}: tract cannot load or run this model (it failed inside: {what})",
            a.model.display()
        ))
    })
}

/// The graph before tract sees it: every graph output is produced by a node or is an input or an
/// initializer, and every tensor stored outside the model file names a file inside the model's
/// folder (a relative path of plain names that resolves, links followed, under the folder);
/// anything else is refused before tract reads a byte of it.
fn check_proto(model: &Path, proto: &tract_onnx::pb::ModelProto) -> Result<()> {
    use tract_onnx::pb::{GraphProto, TensorProto};
    let dir = parent_dir(model)
        .canonicalize()
        .with_context(|| format!("model {}: cannot resolve its folder", model.display()))?;
    let check = |t: &TensorProto| -> Result<()> {
        for e in t.external_data.iter().filter(|e| e.key == "location") {
            let loc = Path::new(&e.value);
            let plain = loc
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            let inside = plain
                && dir
                    .join(loc)
                    .canonicalize()
                    .is_ok_and(|p| p.starts_with(&dir) && p.is_file());
            if !inside {
                bail!(
                    "model {}: tensor {:?} keeps its data in {:?}, which is not a file inside the model's folder",
                    model.display(),
                    t.name,
                    e.value
                );
            }
        }
        Ok(())
    };
    fn walk(g: &GraphProto, check: &dyn Fn(&TensorProto) -> Result<()>) -> Result<()> {
        g.initializer.iter().try_for_each(check)?;
        for attr in g.node.iter().flat_map(|n| &n.attribute) {
            attr.t.iter().chain(&attr.tensors).try_for_each(check)?;
            for sub in attr.g.iter().chain(&attr.graphs) {
                walk(sub, check)?;
            }
        }
        Ok(())
    }
    let Some(g) = &proto.graph else {
        return Ok(());
    };
    let known: std::collections::HashSet<&str> = g
        .node
        .iter()
        .flat_map(|n| &n.output)
        .chain(g.input.iter().map(|i| &i.name))
        .chain(g.initializer.iter().map(|t| &t.name))
        .map(String::as_str)
        .collect();
    if let Some(o) = g.output.iter().find(|o| !known.contains(o.name.as_str())) {
        bail!(
            "model {}: graph output {:?} is produced by no node",
            model.display(),
            o.name
        );
    }
    walk(g, &check)
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Every value the typed graph declares fits this machine's memory, before anything runs (a huge
/// `ConstantOfShape`, `Expand`, `Tile` or `Range` is an error naming the node, not an abort).
fn check_sizes(model: &Path, typed: &TypedModel) -> Result<()> {
    let limit = memory_bytes();
    for node in typed.nodes() {
        for (slot, out) in node.outputs.iter().enumerate() {
            let Some(dims) = out.fact.shape.as_concrete() else {
                continue;
            };
            let bytes = dims
                .iter()
                .try_fold(out.fact.datum_type.size_of() as u128, |acc, &d| {
                    acc.checked_mul(d as u128)
                });
            if bytes.is_none_or(|b| b > limit as u128) {
                bail!(
                    "model {}: node {:?} output {slot} of shape {dims:?} needs more than this machine's {limit} bytes of memory",
                    model.display(),
                    node.name
                );
            }
        }
    }
    Ok(())
}

/// The machine's memory (`MemTotal`), or 2^40 bytes where it cannot be read.
fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(1 << 40, |kb| kb.saturating_mul(1024))
}

fn read_proto(a: &OnnxArgs) -> Result<tract_onnx::pb::ModelProto> {
    let mut file = std::fs::File::open(&a.model)
        .with_context(|| format!("model {}: cannot open", a.model.display()))?;
    tract_onnx::onnx()
        .proto_model_for_read(&mut file)
        .map_err(|e| anyhow!("model {}: not an ONNX model ({e})", a.model.display()))
}

fn run_proto(a: &OnnxArgs, proto: &tract_onnx::pb::ModelProto) -> Result<()> {
    if !a.output_dir.is_dir() {
        bail!(
            "--output-dir {}: the folder does not exist",
            a.output_dir.display()
        );
    }
    let loader = tract_onnx::onnx().with_deform_conv();
    check_proto(&a.model, proto)?;
    let dir = parent_dir(&a.model).to_str().ok_or_else(|| {
        anyhow!(
            "model {}: its folder's name is not UTF-8",
            a.model.display()
        )
    })?;
    let mut model = loader
        .parse(proto, Some(dir))
        .map_err(|e| anyhow!("model {}: {e:#}", a.model.display()))?
        .model;
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
    let typed = model
        .into_typed()
        .map_err(|e| anyhow!("model {}: {e:#}", a.model.display()))?;
    check_sizes(&a.model, &typed)?;
    let plan = typed
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cases(default: u32) -> u32 {
        std::env::var("DEFORM_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    fn data(file: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deform-conv-tract/tests/data/dcn_block")
            .join(file)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases(48)))]
        /// The ONNX front end on the DCN block model with its integer attributes (strides, pads,
        /// dilations, groups, kernel shapes, axes...) replaced by hostile values: an error or a
        /// result, never a panic past the guard. `DEFORM_FUZZ_CASES=100000` for a long run.
        #[test]
        fn hostile_attributes_are_errors(
            picks in proptest::collection::vec((0usize..64, 0usize..8, prop_oneof![
                -3i64..5, Just(0i64), Just(i64::MAX), Just(i64::MIN), Just(1i64 << 40), Just(1 - (1i64 << 62))
            ]), 1..4),
        ) {
            let out = tempfile::tempdir().unwrap();
            let a = OnnxArgs {
                model: data("model.onnx"),
                inputs: vec![("x".into(), data("input_0.npy"))],
                output_dir: out.path().to_path_buf(),
            };
            let mut proto = read_proto(&a).unwrap();
            let graph = proto.graph.as_mut().unwrap();
            let mut slots: Vec<&mut i64> = graph
                .node
                .iter_mut()
                .flat_map(|n| n.attribute.iter_mut())
                .flat_map(|at| std::iter::once(&mut at.i).chain(at.ints.iter_mut()))
                .collect();
            prop_assume!(!slots.is_empty());
            for (slot, _, v) in &picks {
                let n = slots.len();
                *slots[slot % n] = *v;
            }
            let _ = guarded(&a, || run_proto(&a, &proto));
        }
    }
}
