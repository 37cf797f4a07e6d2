//! A checkpoint's tensors as a safetensors file, read and written through the
//! `safetensors` crate itself so that every failure comes back typed: the operating
//! system's error for the file (a full disk, a missing file), or what is wrong with its
//! contents, never a debug dump.

use std::borrow::Cow;
use std::path::Path;

use safetensors::{Dtype, SafeTensorError, SafeTensors, View};
use tch::{Device, Kind, Tensor};

/// Why a safetensors file could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The file could not be read (the operating system's reason).
    Io(std::io::Error),
    /// The file was read but is not a safetensors file elbo can use.
    Format(String),
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int16 => Dtype::I16,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

/// Every kind a checkpoint's tensors may have.
const KINDS: [Kind; 10] = [
    Kind::Float,
    Kind::Double,
    Kind::Half,
    Kind::BFloat16,
    Kind::Int64,
    Kind::Int,
    Kind::Int16,
    Kind::Int8,
    Kind::Uint8,
    Kind::Bool,
];

fn kind_of(dtype: Dtype) -> Option<Kind> {
    KINDS.into_iter().find(|&k| dtype_of(k) == Some(dtype))
}

/// One tensor, on the CPU and contiguous, as safetensors sees it.
struct Cpu {
    dtype: Dtype,
    shape: Vec<usize>,
    tensor: Tensor,
}

impl View for &Cpu {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let mut bytes = vec![0u8; self.data_len()];
        let numel = self.tensor.numel();
        // The tensor is contiguous, on the CPU and of a kind `dtype_of` knows: the copy
        // cannot fail.
        self.tensor
            .f_copy_data_u8(&mut bytes, numel)
            .expect("a contiguous CPU tensor copies");
        Cow::Owned(bytes)
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.bitsize() / 8
    }
}

fn io_error(e: SafeTensorError) -> std::io::Error {
    match e {
        SafeTensorError::IoError(e) => e,
        other => std::io::Error::other(other.to_string()),
    }
}

/// Writes `tensors` to `path` as a safetensors file. An error is the operating
/// system's (a full disk: `ENOSPC`), or names the tensor of a kind safetensors cannot
/// hold. (The crate writes a sibling temporary file and renames it over `path`, so
/// `path` must be a file of a folder the caller owns, never a device.)
pub fn write(path: &Path, tensors: &[(String, Tensor)]) -> std::io::Result<()> {
    let cpu = tensors
        .iter()
        .map(|(name, t)| {
            let dtype = dtype_of(t.kind()).ok_or_else(|| {
                std::io::Error::other(format!(
                    "tensor {name} is of kind {:?}, which a safetensors file cannot hold",
                    t.kind()
                ))
            })?;
            let shape = t.size().iter().map(|&d| d as usize).collect();
            let tensor = t.detach().to_device(Device::Cpu).contiguous();
            Ok((
                name.as_str(),
                Cpu {
                    dtype,
                    shape,
                    tensor,
                },
            ))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    safetensors::serialize_to_file(cpu.iter().map(|(n, c)| (*n, c)), None, path).map_err(io_error)
}

/// Reads the safetensors file at `path` (on the CPU).
pub fn read(path: &Path) -> std::result::Result<Vec<(String, Tensor)>, ReadError> {
    let bytes = std::fs::read(path).map_err(ReadError::Io)?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| {
        ReadError::Format(match e {
            SafeTensorError::HeaderTooLarge
            | SafeTensorError::HeaderTooSmall
            | SafeTensorError::InvalidHeaderLength => format!(
                "its first 8 bytes do not give the length of a safetensors header that fits \
                 in its {} bytes ({e})",
                bytes.len()
            ),
            other => format!("not a valid safetensors file ({other})"),
        })
    })?;
    let mut out = Vec::new();
    for (name, view) in file.tensors() {
        let kind = kind_of(view.dtype()).ok_or_else(|| {
            ReadError::Format(format!(
                "tensor {name} has the type {:?}, which elbo does not use",
                view.dtype()
            ))
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let tensor = Tensor::f_from_data_size(view.data(), &shape, kind)
            .map_err(|e| ReadError::Format(format!("tensor {name}: {e}")))?;
        out.push((name, tensor));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_and_failures_are_typed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let base = Tensor::arange(6, (Kind::Float, Device::Cpu)).reshape([2, 3]);
        let tensors: Vec<(String, Tensor)> = KINDS
            .into_iter()
            .map(|k| (format!("{k:?}"), base.to_kind(k)))
            .chain([
                ("scalar".to_string(), Tensor::from(7i64)),
                ("strided".to_string(), base.tr()),
            ])
            .collect();
        write(&path, &tensors).unwrap();
        let back: std::collections::BTreeMap<String, Tensor> =
            read(&path).unwrap().into_iter().collect();
        assert_eq!(back.len(), tensors.len());
        for (name, t) in &tensors {
            let b = &back[name];
            assert_eq!((b.kind(), b.size()), (t.kind(), t.size()), "{name}");
            assert!(b.equal(t), "{name}");
        }
        // A file that is not safetensors says what its header length claims.
        std::fs::write(&path, b"not tensors at all").unwrap();
        match read(&path) {
            Err(ReadError::Format(why)) => {
                assert!(why.contains("safetensors header"), "{why}")
            }
            other => panic!("expected a format error, found {other:?}"),
        }
        match read(&dir.path().join("absent")) {
            Err(ReadError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
            other => panic!("expected an io error, found {other:?}"),
        }
    }
}
