//! The GGUF v3 container: header, typed metadata, tensor infos and aligned data; read and written.

use crate::{Error, Result};

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const VERSION: u32 = 3;
/// Data alignment when the file has no `general.alignment`.
pub const DEFAULT_ALIGNMENT: usize = 32;

/// A metadata value (the GGUF value types; arrays hold one type).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// The GGUF type code. An empty array is written as an array of u8.
    fn code(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    /// Any integer type as u64 (None for negatives and non-integers).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor: its name, dims in GGML order (innermost first), ggml type code and bytes.
#[derive(Clone, Debug)]
pub struct TensorData {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: u32,
    pub bytes: Vec<u8>,
}

/// A whole GGUF file in memory.
#[derive(Clone, Debug, Default)]
pub struct GgufFile {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorData>,
}

impl GgufFile {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorData> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The file's bytes; each tensor's data starts at a multiple of the alignment.
    pub fn to_bytes(&self) -> Vec<u8> {
        let align = self.get("general.alignment").and_then(Value::as_u64).map_or(DEFAULT_ALIGNMENT, |a| a as usize);
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut out, k);
            out.extend_from_slice(&v.code().to_le_bytes());
            put_value(&mut out, v);
        }
        let mut offset = 0usize;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset = (offset + t.bytes.len()).next_multiple_of(align);
        }
        for t in &self.tensors {
            out.resize(out.len().next_multiple_of(align), 0);
            out.extend_from_slice(&t.bytes);
        }
        out
    }

    /// Parses a file's bytes. `byte_size(ty, dims)` gives a tensor's data size in bytes, or an
    /// error for a type the caller does not handle. Errors say what is wrong and where.
    pub fn parse(bytes: &[u8], byte_size: impl Fn(u32, &[u64]) -> Result<usize>) -> Result<GgufFile> {
        let mut r = Reader { bytes, pos: 0 };
        if r.take(4, "the magic")? != MAGIC {
            return Err(Error::Invalid(format!("not a GGUF file: the magic is {:?}, expected \"GGUF\"", &bytes[..4])));
        }
        let version = r.u32("the version")?;
        if version != 3 && version != 2 {
            return Err(Error::Invalid(format!("GGUF version {version} is not supported (2 and 3 are)")));
        }
        let n_tensors = r.u64("the tensor count")?;
        let n_kv = r.u64("the metadata count")?;
        let mut file = GgufFile::default();
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key {i}"))?;
            let code = r.u32(&format!("the type of {key:?}"))?;
            let v = r.value(code, &key, 0)?;
            file.metadata.push((key, v));
        }
        let mut infos = Vec::new();
        for i in 0..n_tensors {
            let name = r.string(&format!("tensor name {i}"))?;
            let n_dims = r.u32(&format!("the rank of {name}"))?;
            if n_dims > 4 {
                return Err(Error::Invalid(format!("tensor {name} has {n_dims} dimensions (at most 4)")));
            }
            let dims = (0..n_dims).map(|_| r.u64(&format!("the dims of {name}"))).collect::<Result<Vec<_>>>()?;
            let ty = r.u32(&format!("the type of {name}"))?;
            let offset = r.u64(&format!("the offset of {name}"))?;
            infos.push((name, dims, ty, offset));
        }
        let align = file.get("general.alignment").and_then(Value::as_u64).unwrap_or(DEFAULT_ALIGNMENT as u64);
        if align == 0 || !align.is_power_of_two() {
            return Err(Error::Invalid(format!("general.alignment {align} is not a power of two")));
        }
        let data_start = r.pos.next_multiple_of(align as usize);
        for (name, dims, ty, offset) in infos {
            let size = byte_size(ty, &dims).map_err(|e| Error::Invalid(format!("tensor {name}: {e}")))?;
            let start = (data_start as u64).saturating_add(offset);
            let end = start.saturating_add(size as u64);
            if end > bytes.len() as u64 {
                return Err(Error::Invalid(format!(
                    "truncated: tensor {name} needs bytes {start}..{end} but the file has {} bytes",
                    bytes.len()
                )));
            }
            file.tensors.push(TensorData { name, dims, ty, bytes: bytes[start as usize..end as usize].to_vec() });
        }
        Ok(file)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::Str(s) => put_str(out, s),
        Value::Array(a) => {
            out.extend_from_slice(&a.first().map_or(0, Value::code).to_le_bytes());
            out.extend_from_slice(&(a.len() as u64).to_le_bytes());
            for x in a {
                put_value(out, x);
            }
        }
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

/// A bounds-checked cursor: running past the end is a "truncated" error naming what was read.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: u64, what: &str) -> Result<&[u8]> {
        let left = (self.bytes.len() - self.pos) as u64;
        if n > left {
            return Err(Error::Invalid(format!(
                "truncated at byte {} while reading {what} ({n} bytes needed, {left} left)",
                self.pos
            )));
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N as u64, what)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| Error::Invalid(format!("{what} is not UTF-8")))
    }

    fn value(&mut self, code: u32, key: &str, depth: u32) -> Result<Value> {
        Ok(match code {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(self.array::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => Value::Bool(self.array::<1>(key)?[0] != 0),
            8 => Value::Str(self.string(key)?),
            9 if depth == 0 => {
                let inner = self.u32(key)?;
                let n = self.u64(key)?;
                // Every element takes at least one byte: a larger count is a corrupt file.
                if n > (self.bytes.len() - self.pos) as u64 {
                    return Err(Error::Invalid(format!("truncated: array {key:?} claims {n} elements")));
                }
                Value::Array((0..n).map(|_| self.value(inner, key, depth + 1)).collect::<Result<_>>()?)
            }
            9 => return Err(Error::Invalid(format!("metadata {key:?} is an array of arrays (not supported)"))),
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            _ => return Err(Error::Invalid(format!("metadata {key:?} has unknown value type {code}"))),
        })
    }
}
