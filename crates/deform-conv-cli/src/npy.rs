//! .npy files in and out, with errors that name the file and what was wrong.

use anyhow::{anyhow, bail, Context, Result};
use deform_conv::error::check_rank;
use half::f16;
use ndarray::{Array, ArrayD, Dimension, Ix1, Ix4};
use ndarray_npy::{
    ReadDataError, ReadNpyError, ReadNpyExt, ReadableElement, WritableElement, WriteDataError,
    WriteNpyExt,
};
use py_literal::Value as PyValue;
use std::fs::File;
use std::io::BufWriter;
use std::io::{Read, Write};
use std::path::Path;

/// A loaded array of a supported dtype.
pub enum Tensor {
    F16(ArrayD<f16>),
    F32(ArrayD<f32>),
    F64(ArrayD<f64>),
}

impl Tensor {
    pub fn dtype(&self) -> &'static str {
        match self {
            Tensor::F16(_) => "float16",
            Tensor::F32(_) => "float32",
            Tensor::F64(_) => "float64",
        }
    }
}

/// numpy's `<f2` (IEEE half) as an .npy element: ndarray-npy has none. Stored as `half::f16`.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
#[repr(transparent)]
pub struct NpyF16(pub f16);

fn f2() -> PyValue {
    PyValue::String("<f2".into())
}

impl ReadableElement for NpyF16 {
    fn read_to_end_exact_vec<R: Read>(
        mut reader: R,
        type_desc: &PyValue,
        len: usize,
    ) -> Result<Vec<Self>, ReadDataError> {
        if *type_desc != f2() {
            return Err(ReadDataError::WrongDescriptor(type_desc.clone()));
        }
        let mut bytes = vec![0u8; len.checked_mul(2).ok_or(ReadDataError::MissingData)?];
        reader
            .read_exact(&mut bytes)
            .map_err(|_| ReadDataError::MissingData)?;
        let mut extra = Vec::new();
        reader.read_to_end(&mut extra).map_err(ReadDataError::Io)?;
        if !extra.is_empty() {
            return Err(ReadDataError::ExtraBytes(extra.len()));
        }
        Ok(bytes
            .chunks_exact(2)
            .map(|b| NpyF16(f16::from_le_bytes([b[0], b[1]])))
            .collect())
    }
}

impl WritableElement for NpyF16 {
    fn type_descriptor() -> PyValue {
        f2()
    }
    fn write<W: Write>(&self, mut writer: W) -> Result<(), WriteDataError> {
        writer
            .write_all(&self.0.to_le_bytes())
            .map_err(WriteDataError::Io)
    }
    fn write_slice<W: Write>(slice: &[Self], mut writer: W) -> Result<(), WriteDataError> {
        let bytes: Vec<u8> = slice.iter().flat_map(|v| v.0.to_le_bytes()).collect();
        writer.write_all(&bytes).map_err(WriteDataError::Io)
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
        Ok(a) => return Ok(Tensor::F64(a)),
        Err(ReadNpyError::WrongDescriptor(_)) => {}
        Err(e) => return Err(bad(path, what, e)),
    }
    match ArrayD::<NpyF16>::read_npy(open(path, what)?) {
        Ok(a) => Ok(Tensor::F16(a.mapv(|v| v.0))),
        Err(ReadNpyError::WrongDescriptor(d)) => {
            bail!(
                "{what} {}: expected dtype float16, float32 or float64, got {d}",
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

impl Pick for f16 {
    fn pick(t: Tensor, what: &str, path: &Path) -> Result<ArrayD<f16>> {
        match t {
            Tensor::F16(a) => Ok(a),
            other => bail!(
                "{what} {}: expected dtype float16 (the input's), got {}",
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

/// An element the CLI can write as .npy.
pub trait Save: Copy {
    /// Writes `a` to `path`.
    fn save<D: Dimension>(path: &Path, a: &Array<Self, D>) -> Result<()>;
}

fn write<T: WritableElement, D: Dimension>(path: &Path, a: &Array<T, D>) -> Result<()> {
    let f = File::create(path).with_context(|| format!("{}: cannot create", path.display()))?;
    a.write_npy(BufWriter::new(f))
        .with_context(|| format!("{}: cannot write", path.display()))
}

impl Save for f32 {
    fn save<D: Dimension>(path: &Path, a: &Array<f32, D>) -> Result<()> {
        write(path, a)
    }
}

impl Save for f64 {
    fn save<D: Dimension>(path: &Path, a: &Array<f64, D>) -> Result<()> {
        write(path, a)
    }
}

impl Save for f16 {
    fn save<D: Dimension>(path: &Path, a: &Array<f16, D>) -> Result<()> {
        write(path, &a.mapv(NpyF16))
    }
}

/// Writes an array as .npy (float16, float32 or float64).
pub fn save<T: Save, D: Dimension>(path: &Path, a: &Array<T, D>) -> Result<()> {
    T::save(path, a)
}
