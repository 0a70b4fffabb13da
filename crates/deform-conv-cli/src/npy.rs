//! .npy files in and out, with errors that name the file and what was wrong.

use anyhow::{anyhow, bail, Context, Result};
use deform_conv::error::check_rank;
use ndarray::{Array, ArrayD, Dimension, Ix1, Ix4};
use ndarray_npy::{ReadNpyError, ReadNpyExt, WritableElement, WriteNpyExt};
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

/// A loaded array of a supported dtype.
pub enum Tensor {
    F32(ArrayD<f32>),
    F64(ArrayD<f64>),
}

impl Tensor {
    pub fn dtype(&self) -> &'static str {
        match self {
            Tensor::F32(_) => "float32",
            Tensor::F64(_) => "float64",
        }
    }
}

fn open(path: &Path, what: &str) -> Result<File> {
    File::open(path).with_context(|| format!("{what} {}: cannot open", path.display()))
}

/// Reads a float32 or float64 .npy file.
pub fn load(path: &Path, what: &str) -> Result<Tensor> {
    match ArrayD::<f32>::read_npy(open(path, what)?) {
        Ok(a) => return Ok(Tensor::F32(a)),
        Err(ReadNpyError::WrongDescriptor(_)) => {}
        Err(e) => return Err(bad(path, what, e)),
    }
    match ArrayD::<f64>::read_npy(open(path, what)?) {
        Ok(a) => Ok(Tensor::F64(a)),
        Err(ReadNpyError::WrongDescriptor(d)) => {
            bail!(
                "{what} {}: expected dtype float32 or float64, got {d}",
                path.display()
            )
        }
        Err(e) => Err(bad(path, what, e)),
    }
}

fn bad(path: &Path, what: &str, e: ReadNpyError) -> anyhow::Error {
    anyhow!("{what} {}: not a readable .npy file ({e})", path.display())
}

/// The array of `t` as `T`, or an error naming the file when its dtype differs from the call's.
pub trait Pick: Sized + Clone {
    fn pick(t: Tensor, what: &str, path: &Path) -> Result<ArrayD<Self>>;
}

impl Pick for f32 {
    fn pick(t: Tensor, what: &str, path: &Path) -> Result<ArrayD<f32>> {
        match t {
            Tensor::F32(a) => Ok(a),
            other => bail!(
                "{what} {}: expected dtype float32 (the input's), got {}",
                path.display(),
                other.dtype()
            ),
        }
    }
}

impl Pick for f64 {
    fn pick(t: Tensor, what: &str, path: &Path) -> Result<ArrayD<f64>> {
        match t {
            Tensor::F64(a) => Ok(a),
            other => bail!(
                "{what} {}: expected dtype float64 (the input's), got {}",
                path.display(),
                other.dtype()
            ),
        }
    }
}

/// Loads a 4-D array of dtype `T`.
pub fn load4<T: Pick>(path: &Path, what: &str) -> Result<Array<T, Ix4>> {
    let a = T::pick(load(path, what)?, what, path)?;
    check_rank::<4>(what, a.shape()).with_context(|| path.display().to_string())?;
    Ok(a.into_dimensionality::<Ix4>().expect("rank checked"))
}

/// Loads a 1-D array of dtype `T`.
pub fn load1<T: Pick>(path: &Path, what: &str) -> Result<Array<T, Ix1>> {
    let a = T::pick(load(path, what)?, what, path)?;
    check_rank::<1>(what, a.shape()).with_context(|| path.display().to_string())?;
    Ok(a.into_dimensionality::<Ix1>().expect("rank checked"))
}

/// Writes an array as .npy.
pub fn save<T: WritableElement, D: Dimension>(path: &Path, a: &Array<T, D>) -> Result<()> {
    let f = File::create(path).with_context(|| format!("{}: cannot create", path.display()))?;
    a.write_npy(BufWriter::new(f))
        .with_context(|| format!("{}: cannot write", path.display()))
}
