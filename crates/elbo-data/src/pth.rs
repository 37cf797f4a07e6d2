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

/// What the pickle machine builds.
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    /// A storage named by a persistent id: its element type, key and element count,
    /// and for a legacy view, the root key and the view's offset.
    Storage {
        dtype: Dtype,
        key: String,
        numel: usize,
        view_of: Option<(String, usize)>,
    },
    Tensor(usize),
    /// Any other call: kept by name, never run.
    Called(String),
    Mark,
}

/// A tensor as the pickle describes it, before its bytes are gathered.
#[derive(Debug, Clone)]
struct TensorRef {
    dtype: Dtype,
    key: String,
    /// The storage's own element count (its bytes must be that many elements).
    storage_numel: usize,
    offset: usize,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

struct Machine<'a> {
    file: &'a str,
    bytes: &'a [u8],
    at: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
    tensors: &'a mut Vec<TensorRef>,
    legacy: bool,
}

impl Machine<'_> {
    fn bad(&self, expected: &str, found: impl Into<String>) -> DataError {
        DataError::Malformed {
            file: self.file.to_owned(),
            offset: Offset::File(self.at as u64),
            expected: expected.to_owned(),
            found: found.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.at..end];
                self.at = end;
                Ok(s)
            }
            None => Err(self.bad(&format!("{n} more bytes of the pickle"), "its end")),
        }
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn line(&mut self) -> Result<String> {
        let rest = &self.bytes[self.at..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.bad("a line ending in \\n", "the end of the pickle"))?;
        let s = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.at += end + 1;
        Ok(s)
    }

    fn pop(&mut self) -> Result<Value> {
        self.stack
            .pop()
            .ok_or_else(|| self.bad("a value on the pickle's stack", "an empty stack"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let at = self
            .stack
            .iter()
            .rposition(|v| matches!(v, Value::Mark))
            .ok_or_else(|| self.bad("a MARK on the pickle's stack", "none"))?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    fn text(&mut self, n: usize) -> Result<Value> {
        let s = String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| self.bad("a UTF-8 string", "other bytes"))?;
        Ok(Value::Str(s))
    }

    fn memo_top(&mut self, key: u32) -> Result<()> {
        let top = self
            .stack
            .last()
            .cloned()
            .ok_or_else(|| self.bad("a value to memoise", "an empty stack"))?;
        self.memo.insert(key, top);
        Ok(())
    }

    fn get(&mut self, key: u32) -> Result<()> {
        let v = self
            .memo
            .get(&key)
            .cloned()
            .ok_or_else(|| self.bad("a memoised value", format!("no entry {key}")))?;
        self.stack.push(v);
        Ok(())
    }

    fn extend_dict(&mut self, pairs: Vec<Value>) -> Result<()> {
        let target = self.stack.last_mut();
        match target {
            Some(Value::Dict(items)) => {
                let mut it = pairs.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    items.push((k, v));
                }
                Ok(())
            }
            // An object built by a call (e.g. a dict subclass) takes its items unused.
            Some(Value::Called(_)) => Ok(()),
            _ => Err(self.bad("a dict to set items of", "another value")),
        }
    }

    /// Runs the pickle starting at `self.at` to its STOP; returns what it built.
    fn run(&mut self) -> Result<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.le::<8>()?; // FRAME
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Value::Mark),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.stack.push(Value::Int(i64::from(v)));
                }
                0x8a => {
                    let n = usize::from(self.u8()?);
                    let b = self.take(n)?.to_vec();
                    if n > 8 {
                        // Only the legacy format's magic number is this long.
                        self.stack.push(Value::Bytes(b));
                    } else {
                        let mut v: i64 = 0;
                        for (i, byte) in b.iter().enumerate() {
                            v |= i64::from(*byte) << (8 * i);
                        }
                        if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                            v -= 1i64 << (8 * n);
                        }
                        self.stack.push(Value::Int(v));
                    }
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.le()?);
                    self.stack.push(Value::Float(v));
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.le()?) as usize;
                    let v = self.text(n)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = usize::from(self.u8()?);
                    let v = self.text(n)?;
                    self.stack.push(v);
                }
                b'C' => {
                    let n = usize::from(self.u8()?);
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b));
                }
                b'B' => {
                    let n = u32::from_le_bytes(self.le()?) as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b));
                }
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    if self.stack.len() < n {
                        return Err(self.bad("tuple items on the stack", "too few"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items));
                }
                b'q' => {
                    let k = self.u8()?;
                    self.memo_top(u32::from(k))?;
                }
                b'r' => {
                    let k = u32::from_le_bytes(self.le()?);
                    self.memo_top(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memo_top(k)?;
                }
                b'h' => {
                    let k = self.u8()?;
                    self.get(u32::from(k))?;
                }
                b'j' => {
                    let k = u32::from_le_bytes(self.le()?);
                    self.get(k)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(module, name));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(m, n)),
                        _ => return Err(self.bad("STACK_GLOBAL's two strings", "other values")),
                    }
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.stack.last_mut() {
                        Some(Value::List(items)) => items.push(v),
                        _ => return Err(self.bad("a list to append to", "another value")),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.stack.last_mut() {
                        Some(Value::List(list)) => list.extend(items),
                        _ => return Err(self.bad("a list to extend", "another value")),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.extend_dict(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.extend_dict(items)?;
                }
                b'b' => {
                    // BUILD: an object's state (an OrderedDict's `_metadata`): not needed.
                    self.pop()?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = self.storage(pid)?;
                    self.stack.push(storage);
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.call(callable, args)?;
                    self.stack.push(v);
                }
                b'0' => {
                    self.pop()?;
                }
                other => {
                    self.at -= 1;
                    return Err(self.bad(
                        "an opcode of the pickles torch.save writes",
                        format!("opcode {other:#04x}"),
                    ));
                }
            }
        }
    }

    /// A persistent id: `('storage', torch.FloatStorage, key, location, numel)` (ZIP
    /// format) or the legacy `(..., numel, view_metadata)`.
    fn storage(&self, pid: Value) -> Result<Value> {
        let Value::Tuple(items) = pid else {
            return Err(self.bad("a persistent id tuple", "another value"));
        };
        let kind = match items.first() {
            Some(Value::Str(s)) => s.as_str(),
            _ => "",
        };
        if kind != "storage" || items.len() < 5 {
            return Err(self.bad("a ('storage', type, key, location, size) id", format!("{items:?}")));
        }
        let dtype = match &items[1] {
            Value::Global(_, name) => Dtype::of_storage(name),
            _ => None,
        }
        .ok_or_else(|| self.bad("a storage type such as torch.FloatStorage", format!("{:?}", items[1])))?;
        let key = match &items[2] {
            Value::Str(s) => s.clone(),
            other => return Err(self.bad("a storage key", format!("{other:?}"))),
        };
        let numel = match items[4] {
            Value::Int(n) if n >= 0 => n as usize,
            ref other => return Err(self.bad("a storage size", format!("{other:?}"))),
        };
        let view_of = match items.get(5) {
            Some(Value::Tuple(view)) if self.legacy => match view.as_slice() {
                [Value::Str(view_key), Value::Int(offset), Value::Int(_)] => {
                    Some((view_key.clone(), *offset as usize))
                }
                _ => return Err(self.bad("a storage view (key, offset, size)", format!("{view:?}"))),
            },
            _ => None,
        };
        // A legacy view is named by its own key and reads its root's bytes from an offset.
        let (key, view_of) = match view_of {
            Some((view_key, offset)) => (view_key, Some((key, offset))),
            None => (key, None),
        };
        Ok(Value::Storage {
            dtype,
            key,
            numel,
            view_of,
        })
    }

    fn call(&mut self, callable: Value, args: Value) -> Result<Value> {
        let Value::Global(module, name) = callable else {
            return Ok(Value::Called(String::from("a value called as a function")));
        };
        let args = match args {
            Value::Tuple(a) => a,
            _ => return Ok(Value::Called(format!("{module}.{name}"))),
        };
        match (module.as_str(), name.as_str()) {
            ("collections", "OrderedDict") | ("builtins", "dict") | ("__builtin__", "dict") => {
                Ok(Value::Dict(Vec::new()))
            }
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
                let ints = |v: &Value, what: &str| -> Result<Vec<usize>> {
                    match v {
                        Value::Tuple(items) | Value::List(items) => items
                            .iter()
                            .map(|i| match i {
                                Value::Int(n) if *n >= 0 => Ok(*n as usize),
                                _ => Err(self.bad(what, format!("{i:?}"))),
                            })
                            .collect(),
                        other => Err(self.bad(what, format!("{other:?}"))),
                    }
                };
                let [storage, offset, size, stride, ..] = args.as_slice() else {
                    return Err(self.bad("_rebuild_tensor's 4 arguments", format!("{args:?}")));
                };
                let Value::Storage {
                    dtype,
                    key,
                    view_of,
                    numel,
                } = storage
                else {
                    return Err(self.bad("a storage as the tensor's first argument", format!("{storage:?}")));
                };
                let Value::Int(offset) = offset else {
                    return Err(self.bad("a storage offset", format!("{offset:?}")));
                };
                let (key, base) = match view_of {
                    Some((root, start)) => (root.clone(), *start),
                    None => (key.clone(), 0),
                };
                let shape = ints(size, "a tensor size")?;
                let strides = ints(stride, "tensor strides")?;
                let offset = base + (*offset).max(0) as usize;
                let dtype = *dtype;
                let storage_numel = *numel;
                self.tensors.push(TensorRef {
                    dtype,
                    key,
                    storage_numel,
                    offset,
                    shape,
                    strides,
                });
                Ok(Value::Tensor(self.tensors.len() - 1))
            }
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                Ok(args.into_iter().next().unwrap_or(Value::None))
            }
            _ => Ok(Value::Called(format!("{module}.{name}"))),
        }
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
            let at = t.offset + index.iter().zip(&t.strides).map(|(i, s)| i * s).sum::<usize>();
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
        let prefix = pkl.name.strip_suffix("data.pkl").unwrap_or_default().to_owned();
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
            if !storages.contains_key(&key) {
                let data = zip.read_named(&format!("{prefix}data/{key}"))?;
                storages.insert(key, data);
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
            let data = bytes.get(at + 8..at + 8 + len).ok_or_else(|| DataError::Malformed {
                file: file.to_owned(),
                offset: Offset::File(at as u64 + 8),
                expected: format!("{len} bytes of storage {key}"),
                found: format!("{} bytes to the end of the file", bytes.len() - (at + 8).min(bytes.len())),
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

fn describe(v: &Value) -> String {
    match v {
        Value::Str(s) => format!("the string {s:?}"),
        Value::Bool(b) => format!("the value {b}"),
        Value::Int(i) => format!("the number {i}"),
        Value::Float(f) => format!("the number {f}"),
        Value::Called(what) => format!("an object built by {what}"),
        Value::Dict(_) => "a dict".into(),
        Value::List(_) => "a list".into(),
        Value::Tuple(_) => "a tuple".into(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/pth")
            .join(name)
    }

    fn f32s(t: &PthTensor) -> Vec<f32> {
        t.to_f32().unwrap()
    }

    /// The fixtures are written by `benches/reference/pth_fixtures.py` (torch 2.13.0):
    /// one state dict in both formats, with a view, a shared tensor, a scalar and three
    /// float types.
    fn check(named: &[(String, PthTensor)]) {
        let get = |name: &str| {
            &named
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("{name} missing"))
                .1
        };
        let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "a.weight",
                "b.bias",
                "c.running_var",
                "d.num_batches_tracked",
                "e.view",
                "f.half",
                "g.shared"
            ]
        );
        assert_eq!(get("a.weight").shape, [2, 3]);
        assert_eq!(f32s(get("a.weight")), [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]);
        assert_eq!(f32s(get("b.bias")), [1.5, -2.25, 3.0, 0.125]);
        assert_eq!(get("c.running_var").dtype, Dtype::F64);
        assert_eq!(f32s(get("c.running_var")), [0.5, 2.0]);
        let n = get("d.num_batches_tracked");
        assert_eq!((n.dtype, n.shape.len()), (Dtype::I64, 0));
        assert_eq!(n.data, 7i64.to_le_bytes());
        // arange(12).reshape(3, 4).t()[1:]: rows 1..4 of the transpose, gathered.
        let view = get("e.view");
        assert_eq!(view.shape, [3, 3]);
        assert_eq!(f32s(view), [1.0, 5.0, 9.0, 2.0, 6.0, 10.0, 3.0, 7.0, 11.0]);
        assert_eq!(get("f.half").dtype, Dtype::F16);
        assert_eq!(f32s(get("f.half")), [1.0, 0.5]);
        assert_eq!(get("g.shared"), get("a.weight"));
    }

    #[test]
    fn both_torch_save_formats_give_the_same_state_dict() {
        check(&read_state_dict(&fixture("state-zip.pth")).unwrap());
        check(&read_state_dict(&fixture("state-legacy.pth")).unwrap());
        // A checkpoint with the state dict inside.
        check(&read_state_dict(&fixture("model-zip.pth")).unwrap());
    }

    #[test]
    fn damaged_files_are_refused_naming_the_file() {
        let bytes = std::fs::read(fixture("state-legacy.pth")).unwrap();
        let err = state_dict_from_bytes("cut.pth", &bytes[..bytes.len() - 5])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cut.pth") && err.contains("bytes"), "{err}");
        let err = state_dict_from_bytes("text.pth", b"hello").unwrap_err().to_string();
        assert!(err.contains("text.pth"), "{err}");
        let zip = std::fs::read(fixture("state-zip.pth")).unwrap();
        let mut damaged = zip.clone();
        let at = zip.len() / 2;
        damaged[at] ^= 0x55;
        assert!(state_dict_from_bytes("damaged.pth", &damaged).is_err());
    }

    #[test]
    fn half_floats_widen_exactly() {
        assert_eq!(half_to_f32(0x3C00), 1.0);
        assert_eq!(half_to_f32(0xC000), -2.0);
        assert_eq!(half_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(half_to_f32(0x7BFF), 65504.0);
        assert!(half_to_f32(0x7C00).is_infinite());
    }
}
