//! .npy files in and out, with errors that name the file and what was wrong.
//!
//! **Reading trusts nothing.** The header is parsed and checked against the file before anything
//! is allocated: the declared shape times the item size must equal, exactly, the bytes the file
//! really holds after its header (overflow-checked). A truncated, corrupt, lying or huge header is
//! an error naming the file, never a panic or an allocation abort.
//! Arrays are encoded here ([`Save`]) and written by [`crate::outputs::Outputs`].

use anyhow::{anyhow, bail, Context, Result};
use deform_conv::error::check_rank;
use half::f16;
use ndarray::{Array, ArrayD, Dimension, Ix1, Ix4, IxDyn, ShapeBuilder};
use ndarray_npy::{WritableElement, WriteDataError, WriteNpyExt};
use py_literal::Value as PyValue;
use std::fs::File;
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

/// The element types a file may hold, as numpy's little-endian descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F16,
    F32,
    F64,
}

impl DType {
    fn size(self) -> usize {
        match self {
            DType::F16 => 2,
            DType::F32 => 4,
            DType::F64 => 8,
        }
    }
}

/// What a checked header says: dtype, shape, order, and where the data starts.
#[derive(Debug, PartialEq, Eq)]
pub struct Header {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub fortran_order: bool,
    /// Bytes before the data (magic, version, length, header text).
    pub data_offset: usize,
}

const MAGIC: &[u8] = b"\x93NUMPY";
/// Longest header text accepted. numpy writes a few hundred bytes; this bound only stops a
/// hostile length field from making us read megabytes of "header".
const MAX_HEADER: usize = 1 << 20;

/// Parses and checks the header of an .npy file of `file_len` bytes whose start is `head`
/// (at least the whole header, or the whole file if shorter). Pure: fuzzed by the tests.
pub fn parse_header(head: &[u8], file_len: u64) -> std::result::Result<Header, String> {
    if head.len() < 10 || &head[..6] != MAGIC {
        return Err("not an .npy file (no \\x93NUMPY magic)".into());
    }
    let (len, prefix) = match head[6] {
        1 => (u16::from_le_bytes([head[8], head[9]]) as usize, 10),
        2 | 3 => {
            if head.len() < 12 {
                return Err("truncated header".into());
            }
            (
                u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize,
                12,
            )
        }
        v => return Err(format!("unsupported .npy version {v}")),
    };
    if len > MAX_HEADER {
        return Err(format!("header length {len} is implausible"));
    }
    let data_offset = prefix + len;
    if head.len() < data_offset || (file_len as u128) < data_offset as u128 {
        return Err(format!(
            "truncated header: declares {len} header bytes, the file has {file_len} in all"
        ));
    }
    let text = std::str::from_utf8(&head[prefix..data_offset])
        .map_err(|_| "header is not text".to_string())?;
    let value: PyValue = text
        .trim()
        .parse()
        .map_err(|e| format!("header is not a Python literal ({e})"))?;
    let PyValue::Dict(items) = value else {
        return Err("header is not a dict".into());
    };
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    for (k, v) in items {
        match (k, v) {
            (PyValue::String(k), PyValue::String(d)) if k == "descr" => descr = Some(d),
            (PyValue::String(k), PyValue::Boolean(b)) if k == "fortran_order" => fortran = Some(b),
            (PyValue::String(k), PyValue::Tuple(t)) if k == "shape" => {
                let dims = t
                    .iter()
                    .map(|d| match d {
                        PyValue::Integer(i) => usize::try_from(i.clone())
                            .map_err(|_| format!("shape entry {i} is not a size")),
                        other => Err(format!("shape entry {other} is not an integer")),
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                shape = Some(dims);
            }
            (PyValue::String(k), v) => {
                return Err(format!("header entry '{k}' has an unexpected value {v}"))
            }
            (k, _) => return Err(format!("header key {k} is not a string")),
        }
    }
    let descr = descr.ok_or("header has no 'descr'")?;
    let fortran_order = fortran.ok_or("header has no 'fortran_order'")?;
    let shape = shape.ok_or("header has no 'shape'")?;
    let dtype = match descr.as_str() {
        "<f2" => DType::F16,
        "<f4" => DType::F32,
        "<f8" => DType::F64,
        other => {
            return Err(format!(
                "expected dtype float16, float32 or float64 (little-endian '<f2', '<f4', '<f8'), got '{other}'"
            ))
        }
    };
    // ndarray (and every array library) also needs the product of the non-zero dimensions to
    // fit in memory, even when another dimension is zero: (0, 2, 2**62, 8) is no array either.
    let bytes_of = |skip_zeros: bool| {
        shape
            .iter()
            .filter(|&&d| !(skip_zeros && d == 0))
            .try_fold(dtype.size() as u128, |acc, &d| acc.checked_mul(d as u128))
            .filter(|&b| b <= isize::MAX as u128)
    };
    bytes_of(true).ok_or_else(|| format!("shape {shape:?} is too large to exist"))?;
    let want = bytes_of(false).ok_or_else(|| format!("shape {shape:?} is too large to exist"))?;
    let have = file_len as u128 - data_offset as u128;
    if want != have {
        return Err(format!(
            "header declares shape {shape:?} of {} ({want} bytes of data), the file holds {have}",
            descr
        ));
    }
    Ok(Header {
        dtype,
        shape,
        fortran_order,
        data_offset,
    })
}

fn from_le<T, const B: usize>(bytes: &[u8], f: impl Fn([u8; B]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(B)
        .map(|c| f(c.try_into().expect("chunks of B bytes")))
        .collect()
}

fn shaped<T>(h: &Header, v: Vec<T>) -> Result<ArrayD<T>> {
    let shape = IxDyn(&h.shape);
    let shape = if h.fortran_order {
        shape.f()
    } else {
        shape.into_shape_with_order()
    };
    Array::from_shape_vec(shape, v).map_err(|e| anyhow!("shape {:?}: {e}", h.shape))
}

/// Reads a float16, float32 or float64 .npy file, checking its header against its real size.
pub fn load(path: &Path, what: &str) -> Result<Tensor> {
    let ctx = || format!("{what} {}", path.display());
    let mut f = File::open(path).with_context(|| format!("{}: cannot open", ctx()))?;
    let file_len = f
        .metadata()
        .with_context(|| format!("{}: cannot stat", ctx()))?
        .len();
    let mut head = Vec::new();
    (&mut f)
        .take((MAX_HEADER + 12) as u64)
        .read_to_end(&mut head)
        .with_context(|| format!("{}: cannot read", ctx()))?;
    let h = parse_header(&head, file_len)
        .map_err(|e| anyhow!("{}: not a readable .npy file: {e}", ctx()))?;
    // The data: what was read past the header plus the rest, exactly as many bytes as checked.
    let total = file_len as usize - h.data_offset;
    let mut data = Vec::new();
    data.try_reserve_exact(total)
        .map_err(|_| anyhow!("{}: cannot allocate {total} bytes", ctx()))?;
    data.extend_from_slice(&head[h.data_offset.min(head.len())..]);
    f.read_to_end(&mut data)
        .with_context(|| format!("{}: cannot read", ctx()))?;
    if data.len() != total {
        bail!(
            "{}: the file changed while it was read ({} of {total} data bytes)",
            ctx(),
            data.len()
        );
    }
    let tensor = match h.dtype {
        DType::F16 => shaped(&h, from_le(&data, f16::from_le_bytes)).map(Tensor::F16),
        DType::F32 => shaped(&h, from_le(&data, f32::from_le_bytes)).map(Tensor::F32),
        DType::F64 => shaped(&h, from_le(&data, f64::from_le_bytes)).map(Tensor::F64),
    };
    tensor.map_err(|e| anyhow!("{}: {e}", ctx()))
}

/// The array of `t` as `T`, or an error naming the file when its dtype differs from the call's.
pub trait Pick: Sized + Clone {
    /// numpy's name of `Self`.
    const NAME: &'static str;
    fn take(t: Tensor) -> std::result::Result<ArrayD<Self>, Tensor>;
    fn pick(t: Tensor, what: &str, path: &Path) -> Result<ArrayD<Self>> {
        Self::take(t).map_err(|other| {
            anyhow!(
                "{what} {}: expected dtype {} (the input's), got {}",
                path.display(),
                Self::NAME,
                other.dtype()
            )
        })
    }
}

impl Pick for f16 {
    const NAME: &'static str = "float16";
    fn take(t: Tensor) -> std::result::Result<ArrayD<Self>, Tensor> {
        match t {
            Tensor::F16(a) => Ok(a),
            o => Err(o),
        }
    }
}

impl Pick for f32 {
    const NAME: &'static str = "float32";
    fn take(t: Tensor) -> std::result::Result<ArrayD<Self>, Tensor> {
        match t {
            Tensor::F32(a) => Ok(a),
            o => Err(o),
        }
    }
}

impl Pick for f64 {
    const NAME: &'static str = "float64";
    fn take(t: Tensor) -> std::result::Result<ArrayD<Self>, Tensor> {
        match t {
            Tensor::F64(a) => Ok(a),
            o => Err(o),
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

/// numpy's `<f2` (IEEE half) as an .npy element for writing: ndarray-npy has none.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
#[repr(transparent)]
pub struct NpyF16(pub f16);

impl WritableElement for NpyF16 {
    fn type_descriptor() -> PyValue {
        PyValue::String("<f2".into())
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

/// An element the CLI can write as .npy: the bytes of a whole array, ready to write.
pub trait Save: Copy {
    /// The .npy encoding of `a`.
    fn encode<D: Dimension>(a: &Array<Self, D>) -> Result<Vec<u8>>;
}

fn encode<T: WritableElement, D: Dimension>(a: &Array<T, D>) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    a.write_npy(&mut buf)
        .map_err(|e| anyhow!("cannot encode .npy ({e})"))?;
    Ok(buf)
}

impl Save for f32 {
    fn encode<D: Dimension>(a: &Array<f32, D>) -> Result<Vec<u8>> {
        encode(a)
    }
}

impl Save for f64 {
    fn encode<D: Dimension>(a: &Array<f64, D>) -> Result<Vec<u8>> {
        encode(a)
    }
}

impl Save for f16 {
    fn encode<D: Dimension>(a: &Array<f16, D>) -> Result<Vec<u8>> {
        encode(&a.mapv(NpyF16))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn npy(header: &str, version: u8, data: usize) -> Vec<u8> {
        let mut v = b"\x93NUMPY".to_vec();
        v.extend_from_slice(&[version, 0]);
        if version == 1 {
            v.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            v.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        v.extend_from_slice(header.as_bytes());
        v.extend(std::iter::repeat_n(0u8, data));
        v
    }

    #[test]
    fn an_honest_header_is_read_and_a_lying_one_is_refused() {
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\n";
        let ok = npy(h, 1, 24);
        let got = parse_header(&ok, ok.len() as u64).unwrap();
        assert_eq!((got.dtype, got.shape.clone()), (DType::F32, vec![2, 3]));
        for (file, why) in [
            (npy(h, 1, 23), "holds 23"),
            (npy(h, 1, 25), "holds 25"),
            (npy(h, 7, 24), "version 7"),
            (npy(&h.replace("<f4", ">f4"), 1, 24), "'>f4'"),
            (npy(&h.replace("(2, 3)", "(-2, 3)"), 1, 24), "not a size"),
            (
                npy(&h.replace("(2, 3)", "(2**70, 3)"), 1, 24),
                "Python literal",
            ),
            (
                npy(
                    &h.replace("(2, 3)", "(18446744073709551615, 18446744073709551615)"),
                    1,
                    24,
                ),
                "too large",
            ),
            (
                npy(&h.replace("'shape': (2, 3), ", ""), 1, 24),
                "no 'shape'",
            ),
        ] {
            let e = parse_header(&file, file.len() as u64).unwrap_err();
            assert!(e.contains(why), "{why}: {e}");
        }
        // A header length beyond the file.
        let mut cut = ok.clone();
        cut.truncate(20);
        assert!(parse_header(&cut, 20).unwrap_err().contains("truncated"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("DEFORM_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(4000)
        ))]
        /// Random bytes, random truncations and random corruptions of a valid file: never a
        /// panic, and every accepted header describes exactly the bytes the file holds.
        #[test]
        fn any_bytes_give_a_checked_header_or_an_error(
            keep in 0usize..200,
            flips in proptest::collection::vec((0usize..200, any::<u8>()), 0..6),
            claimed_extra in 0u64..1_000_000_000_000,
            junk in proptest::collection::vec(any::<u8>(), 0..100),
            which in 0u8..3,
        ) {
            let h = "{'descr': '<f8', 'fortran_order': True, 'shape': (3, 1, 2), }      \n";
            let mut file = match which {
                0 => npy(h, 1, 48),
                1 => npy(h, 2, 48),
                _ => junk,
            };
            for (i, b) in flips {
                if let Some(v) = file.get_mut(i) { *v = b; }
            }
            file.truncate(keep.max(1).min(file.len()));
            for len in [file.len() as u64, file.len() as u64 + claimed_extra] {
                if let Ok(hd) = parse_header(&file, len) {
                    let bytes: u128 = hd.shape.iter().map(|&d| d as u128).product::<u128>()
                        * hd.dtype.size() as u128;
                    prop_assert_eq!(bytes, len as u128 - hd.data_offset as u128);
                }
            }
        }
    }
}
