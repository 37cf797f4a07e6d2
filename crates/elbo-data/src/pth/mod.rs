//! State dicts from `torch.save` files (`.pth`, `.pt`, `.bin`), without Python or
//! libtorch: both of PyTorch's formats, the ZIP archive of torch 1.6 and later
//! (`data.pkl` and one member per storage) and the legacy sequence of pickles followed by
//! the raw storages (what files saved before 2020 are, among them pytorch-fid's FID
//! Inception weights).
//!
//! The pickles are run by a small stack machine that knows the opcodes `torch.save`
//! writes (protocol 2, and those of protocols 3-4 too) and builds only what a state dict
//! holds: dicts (ordered), lists, tuples, strings, numbers and tensors. A tensor is
//! rebuilt as `torch._utils._rebuild_tensor_v2` does it: a storage, an offset, a size and
//! strides, gathered here into C order. Nothing in the file is executed: any other
//! global it names is kept as a name and refused where a tensor is needed.

use std::collections::HashMap;
use std::path::Path;

mod pickle;

use pickle::{Machine, TensorRef, Value, describe};

use crate::error::{DataError, Offset, Result};
use crate::zip::ZipArchive;

/// An element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// float32.
    F32,
    /// float64.
    F64,
    /// float16.
    F16,
    /// bfloat16.
    BF16,
    /// int64.
    I64,
    /// int32.
    I32,
    /// int16.
    I16,
    /// int8.
    I8,
    /// uint8.
    U8,
    /// bool.
    Bool,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 | Dtype::I16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
        }
    }

    fn of_storage(name: &str) -> Option<Dtype> {
        Some(match name {
            "FloatStorage" => Dtype::F32,
            "DoubleStorage" => Dtype::F64,
            "HalfStorage" => Dtype::F16,
            "BFloat16Storage" => Dtype::BF16,
            "LongStorage" => Dtype::I64,
            "IntStorage" => Dtype::I32,
            "ShortStorage" => Dtype::I16,
            "CharStorage" => Dtype::I8,
            "ByteStorage" => Dtype::U8,
            "BoolStorage" => Dtype::Bool,
            _ => return None,
        })
    }
}

/// One tensor of a state dict, contiguous (C order), little-endian.
#[derive(Debug, Clone, PartialEq)]
pub struct PthTensor {
    /// The element type.
    pub dtype: Dtype,
    /// The shape.
    pub shape: Vec<usize>,
    /// `product(shape) * dtype.size()` bytes.
    pub data: Vec<u8>,
}

impl PthTensor {
    /// The values as f32, for a float tensor (float16 and bfloat16 widened exactly,
    /// float64 rounded).
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        let d = &self.data;
        Some(match self.dtype {
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F64 => d
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default()) as f32)
                .collect(),
            Dtype::BF16 => d
                .chunks_exact(2)
                .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
                .collect(),
            Dtype::F16 => d
                .chunks_exact(2)
                .map(|c| half_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            _ => return None,
        })
    }

    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

fn half_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0f32 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1F);
    let frac = f32::from(h & 0x3FF);
    match exp {
        0 => sign * frac * 2f32.powi(-24),
        31 if frac == 0.0 => sign * f32::INFINITY,
        31 => f32::NAN,
        _ => sign * (1.0 + frac / 1024.0) * 2f32.powi(exp - 15),
    }
}

/// Gathers a tensor's elements from its storage's bytes into C order.
fn gather(file: &str, t: &TensorRef, storage: &[u8]) -> Result<PthTensor> {
    let size = t.dtype.size();
    let numel: usize = t.shape.iter().product();
    let mut data = Vec::with_capacity(numel * size);
    let reach = if numel == 0 {
        0
    } else {
        t.offset
            + t.shape
                .iter()
                .zip(&t.strides)
                .map(|(d, s)| (d - 1) * s)
                .sum::<usize>()
            + 1
    };
    if storage.len() != t.storage_numel * size {
        return Err(DataError::Malformed {
            file: file.to_owned(),
            offset: Offset::File(0),
            expected: format!(
                "storage {} of {} elements ({} bytes), as the pickle says",
                t.key,
                t.storage_numel,
                t.storage_numel * size
            ),
            found: format!("{} bytes", storage.len()),
        });
    }
    if reach * size > storage.len() || t.shape.len() != t.strides.len() {
        return Err(DataError::Malformed {
            file: file.to_owned(),
            offset: Offset::File(0),
            expected: format!(
                "storage {} of at least {} bytes for a tensor of shape {:?}, strides {:?}, \
                 offset {}",
                t.key,
                reach * size,
                t.shape,
                t.strides,
                t.offset
            ),
            found: format!("{} bytes", storage.len()),
        });
    }
    let contiguous = {
        let mut expect = 1;
        let mut ok = true;
        for (d, s) in t.shape.iter().zip(&t.strides).rev() {
            if *d != 1 && *s != expect {
                ok = false;
            }
            expect *= d;
        }
        ok
    };
    if contiguous {
        data.extend_from_slice(&storage[t.offset * size..(t.offset + numel) * size]);
    } else {
        let mut index = vec![0usize; t.shape.len()];
        for _ in 0..numel {
            let at = t.offset
                + index
                    .iter()
                    .zip(&t.strides)
                    .map(|(i, s)| i * s)
                    .sum::<usize>();
            data.extend_from_slice(&storage[at * size..(at + 1) * size]);
            for k in (0..index.len()).rev() {
                index[k] += 1;
                if index[k] < t.shape[k] {
                    break;
                }
                index[k] = 0;
            }
        }
    }
    Ok(PthTensor {
        dtype: t.dtype,
        shape: t.shape.clone(),
        data,
    })
}

/// The legacy format's magic number (the first pickle of such a file).
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// Reads the state dict saved in the `torch.save` file at `path`: its tensors by name,
/// in the file's order. A file holding `{"state_dict": {...}, ...}` (a training
/// checkpoint) gives the inner dict's tensors; any other value is refused.
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, PthTensor)>> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, "reading", e))?;
    state_dict_from_bytes(&path.display().to_string(), &bytes)
}

/// [`read_state_dict`] of the file's bytes; `file` names it in errors.
pub fn state_dict_from_bytes(file: &str, bytes: &[u8]) -> Result<Vec<(String, PthTensor)>> {
    let mut tensors = Vec::new();
    let (top, storages) = if bytes.starts_with(b"PK\x03\x04") {
        let zip = ZipArchive::new(file, bytes)?;
        let pkl = zip
            .members()
            .iter()
            .find(|m| m.name.ends_with("/data.pkl") || m.name == "data.pkl")
            .ok_or_else(|| DataError::Malformed {
                file: file.to_owned(),
                offset: Offset::File(0),
                expected: "a torch.save archive (a member <name>/data.pkl)".into(),
                found: "a ZIP archive without one".into(),
            })?;
        let prefix = pkl
            .name
            .strip_suffix("data.pkl")
            .unwrap_or_default()
            .to_owned();
        if let Some(order) = zip.member(&format!("{prefix}byteorder")) {
            let order = zip.read(order)?;
            if order != b"little" {
                return Err(DataError::Malformed {
                    file: file.to_owned(),
                    offset: Offset::File(0),
                    expected: "little-endian storages (byteorder: little)".into(),
                    found: format!("byteorder {}", String::from_utf8_lossy(&order)),
                });
            }
        }
        let pickle = zip.read(pkl)?;
        let where_ = format!("{file}:{}", pkl.name);
        let top = Machine {
            file: &where_,
            bytes: &pickle,
            at: 0,
            stack: Vec::new(),
            memo: HashMap::new(),
            tensors: &mut tensors,
            legacy: false,
        }
        .run()?;
        let mut storages = HashMap::new();
        for key in tensors.iter().map(|t| t.key.clone()) {
            if let std::collections::hash_map::Entry::Vacant(slot) = storages.entry(key) {
                let data = zip.read_named(&format!("{prefix}data/{}", slot.key()))?;
                slot.insert(data);
            }
        }
        (top, storages)
    } else {
        let mut m = Machine {
            file,
            bytes,
            at: 0,
            stack: Vec::new(),
            memo: HashMap::new(),
            tensors: &mut tensors,
            legacy: true,
        };
        let magic = m.run()?;
        if !matches!(&magic, Value::Bytes(b) if b[..] == LEGACY_MAGIC) {
            return Err(DataError::Malformed {
                file: file.to_owned(),
                offset: Offset::File(0),
                expected: "a torch.save file (a ZIP archive, or the legacy format's magic number)"
                    .into(),
                found: "other bytes".into(),
            });
        }
        for _ in 0..2 {
            // The protocol version, then the system information.
            m.stack.clear();
            m.memo.clear();
            m.run()?;
        }
        m.stack.clear();
        m.memo.clear();
        let top = m.run()?;
        m.stack.clear();
        m.memo.clear();
        let keys = match m.run()? {
            Value::List(keys) => keys,
            other => {
                return Err(m.bad("the list of storage keys", format!("{other:?}")));
            }
        };
        let mut at = m.at;
        let mut storages = HashMap::new();
        let sizes: HashMap<String, usize> = m
            .tensors
            .iter()
            .map(|t| (t.key.clone(), t.dtype.size()))
            .collect();
        for key in keys {
            let Value::Str(key) = key else {
                return Err(m.bad("a storage key", format!("{key:?}")));
            };
            let count = bytes
                .get(at..at + 8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
                .ok_or_else(|| DataError::Malformed {
                    file: file.to_owned(),
                    offset: Offset::File(at as u64),
                    expected: format!("the element count of storage {key}"),
                    found: "the end of the file".into(),
                })?;
            // A storage no tensor uses is skipped by the size of its own elements when
            // known, else of bytes (torch writes element counts).
            let len = count.saturating_mul(sizes.get(&key).copied().unwrap_or(1));
            let data = bytes
                .get(at + 8..at + 8 + len)
                .ok_or_else(|| DataError::Malformed {
                    file: file.to_owned(),
                    offset: Offset::File(at as u64 + 8),
                    expected: format!("{len} bytes of storage {key}"),
                    found: format!(
                        "{} bytes to the end of the file",
                        bytes.len() - (at + 8).min(bytes.len())
                    ),
                })?;
            storages.insert(key, data.to_vec());
            at += 8 + len;
        }
        (top, storages)
    };
    let dict = match top {
        Value::Dict(items) => {
            let inner = items.iter().find_map(|(k, v)| match (k, v) {
                (Value::Str(k), Value::Dict(d)) if k == "state_dict" => Some(d.clone()),
                _ => None,
            });
            inner.unwrap_or(items)
        }
        other => {
            return Err(DataError::Malformed {
                file: file.to_owned(),
                offset: Offset::File(0),
                expected: "a state dict (a dict of names to tensors)".into(),
                found: describe(&other),
            });
        }
    };
    let mut out = Vec::with_capacity(dict.len());
    for (k, v) in dict {
        let (Value::Str(name), Value::Tensor(i)) = (&k, &v) else {
            return Err(DataError::Malformed {
                file: file.to_owned(),
                offset: Offset::File(0),
                expected: "a state dict: every entry a name and a tensor".into(),
                found: format!("{} -> {}", describe(&k), describe(&v)),
            });
        };
        let t = &tensors[*i];
        let storage = storages.get(&t.key).map(Vec::as_slice).unwrap_or_default();
        out.push((name.clone(), gather(file, t, storage)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
