//! The pickle machine of [`super`]: the opcodes `torch.save` writes, building only the
//! values a state dict holds; tensors are recorded as references to storages, gathered
//! by the caller.

use std::collections::HashMap;

use super::Dtype;
use crate::error::{DataError, Offset, Result};

/// What the pickle machine builds.
#[derive(Debug, Clone)]
pub(super) enum Value {
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
pub(super) struct TensorRef {
    pub(super) dtype: Dtype,
    pub(super) key: String,
    /// The storage's own element count (its bytes must be that many elements).
    pub(super) storage_numel: usize,
    pub(super) offset: usize,
    pub(super) shape: Vec<usize>,
    pub(super) strides: Vec<usize>,
}

pub(super) struct Machine<'a> {
    pub(super) file: &'a str,
    pub(super) bytes: &'a [u8],
    pub(super) at: usize,
    pub(super) stack: Vec<Value>,
    pub(super) memo: HashMap<u32, Value>,
    pub(super) tensors: &'a mut Vec<TensorRef>,
    pub(super) legacy: bool,
}

impl Machine<'_> {
    pub(super) fn bad(&self, expected: &str, found: impl Into<String>) -> DataError {
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
    pub(super) fn run(&mut self) -> Result<Value> {
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
            return Err(self.bad(
                "a ('storage', type, key, location, size) id",
                format!("{items:?}"),
            ));
        }
        let dtype = match &items[1] {
            Value::Global(_, name) => Dtype::of_storage(name),
            _ => None,
        }
        .ok_or_else(|| {
            self.bad(
                "a storage type such as torch.FloatStorage",
                format!("{:?}", items[1]),
            )
        })?;
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
                _ => {
                    return Err(self.bad("a storage view (key, offset, size)", format!("{view:?}")));
                }
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
                    return Err(self.bad(
                        "a storage as the tensor's first argument",
                        format!("{storage:?}"),
                    ));
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

pub(super) fn describe(v: &Value) -> String {
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
