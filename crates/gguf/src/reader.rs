//! The GGUF reader: a validating parser over a byte slice plus a memory-mapped
//! file that hands out tensor bytes without copying.
//!
//! Layout (GGUF v2/v3, little-endian; see ggml's `docs/gguf.md`):
//!
//! ```text
//! "GGUF"  u32 version  u64 n_tensors  u64 n_kv
//! n_kv ×      { string key, u32 value_type, value }
//! n_tensors × { string name, u32 n_dims, u64 dims[n_dims], u32 ggml_type, u64 offset }
//! padding to `general.alignment` (default 32), counted from the file start
//! data section: tensor i at data_start + offset_i, offsets aligned
//! ```
//!
//! A string is `u64 len` + `len` bytes of UTF-8; an array is `u32 elem_type`,
//! `u64 count`, then the elements.
//!
//! Hardening: every count and length is checked against the bytes that remain
//! before anything is allocated (an array of n elements of a type whose smallest
//! encoding is s bytes needs n·s bytes), all arithmetic on sizes and offsets is
//! checked, arrays nest at most [`MAX_NESTING`] deep, and tensor data ranges are
//! checked against the file length. The parser never panics on any input and
//! allocates at most a small constant times the input length.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use dynapress_ggml::GgmlType;

use crate::error::{GgufError, ParseError, Result};
use crate::value::{Array, Metadata, Value, ValueType};

/// The magic bytes at the start of every GGUF file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The version this crate writes.
pub const GGUF_VERSION: u32 = 3;
/// Data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u32 = 32;
/// The metadata key that sets the data alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Most dimensions a ggml tensor has.
pub const MAX_DIMS: usize = 4;
/// How deep arrays may nest before the reader refuses the file.
pub const MAX_NESTING: usize = 8;

/// One tensor as described by the file's tensor info table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the contiguous (row) length,
    /// i.e. the reverse of the PyTorch/NumPy shape.
    pub dims: Vec<u64>,
    /// Storage type.
    pub ggml_type: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Number of elements (product of the dimensions).
    pub fn n_elements(&self) -> u64 {
        // Checked when the file was parsed.
        self.dims.iter().product()
    }

    /// The PyTorch/NumPy (row-major) shape: the dimensions reversed.
    pub fn shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }
}

/// Everything before the data section, parsed and validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// GGUF version (2 or 3).
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Metadata,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    /// Data alignment in bytes.
    pub alignment: u32,
    /// Absolute offset of the data section.
    pub data_offset: u64,
}

/// A byte cursor whose every read is bounds-checked.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn truncated(&self, what: &str, needed: u64) -> ParseError {
        ParseError::Truncated {
            what: what.to_owned(),
            offset: self.pos as u64,
            needed,
            file_len: self.buf.len() as u64,
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ParseError> {
        if n > self.remaining() {
            return Err(self.truncated(what, n as u64));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], ParseError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32, ParseError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, ParseError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length-prefixed UTF-8 string; the length is checked against the bytes left
    /// before anything is copied.
    fn string(&mut self, what: &str) -> Result<String, ParseError> {
        let at = self.pos as u64;
        let len = self.u64(what)?;
        if len > self.remaining() as u64 {
            return Err(ParseError::Truncated {
                what: format!("{what} ({len}-byte string)"),
                offset: self.pos as u64,
                needed: len,
                file_len: self.buf.len() as u64,
            });
        }
        let bytes = self.take(len as usize, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| ParseError::InvalidUtf8 {
                what: what.to_owned(),
                offset: at,
            })
    }
}

/// Parses and validates everything up to the data section and checks every
/// tensor's data range against `bytes.len()`.
pub fn parse_header(bytes: &[u8]) -> Result<Header, ParseError> {
    let mut c = Cursor { buf: bytes, pos: 0 };
    let magic: [u8; 4] = c.array("magic")?;
    if magic != GGUF_MAGIC {
        return Err(ParseError::BadMagic { found: magic });
    }
    let version = c.u32("version")?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(ParseError::UnsupportedVersion {
                version,
                hint: "GGUF v1 (32-bit counts) is obsolete; re-convert the model with a current llama.cpp",
            });
        }
        v if (1..=3).contains(&v.swap_bytes()) => {
            return Err(ParseError::UnsupportedVersion {
                version,
                hint: "this looks like a big-endian GGUF file; only little-endian files are supported",
            });
        }
        _ => {
            return Err(ParseError::UnsupportedVersion {
                version,
                hint: "this reader understands versions 2 and 3",
            });
        }
    }
    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.u64("metadata count")?;

    // Smallest encodings: a kv is key length (8) + type (4) + a 1-byte value; a
    // tensor info is name length (8) + n_dims (4) + type (4) + offset (8).
    bound_count(&c, n_kv, 13, "metadata key/value pairs")?;
    bound_count(&c, n_tensors, 24, "tensor infos")?;

    let mut entries = Vec::with_capacity(n_kv as usize);
    let mut keys = HashSet::with_capacity(n_kv as usize);
    for i in 0..n_kv {
        let key_at = c.pos as u64;
        let key = c.string(&format!("metadata key #{i}"))?;
        if key.is_empty() {
            return Err(ParseError::Malformed {
                offset: key_at,
                msg: format!("metadata key #{i} is empty"),
            });
        }
        let type_at = c.pos as u64;
        let type_id = c.u32(&format!("type of metadata key {key:?}"))?;
        let ty = ValueType::from_id(type_id).ok_or_else(|| ParseError::UnknownValueType {
            key: key.clone(),
            type_id,
            offset: type_at,
        })?;
        let value = read_value(&mut c, ty, &key, 0)?;
        if !keys.insert(key.clone()) {
            return Err(ParseError::DuplicateKey { key });
        }
        entries.push((key, value));
    }
    let metadata = Metadata::from_unique(entries);

    let alignment = match metadata.get(ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if a.is_power_of_two() => *a,
        Some(v) => {
            return Err(ParseError::Malformed {
                offset: 0,
                msg: format!("{ALIGNMENT_KEY} must be a power-of-two u32, found {v:?}"),
            });
        }
    };

    let mut tensors = Vec::with_capacity(n_tensors as usize);
    let mut names = HashSet::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = c.string(&format!("name of tensor #{i}"))?;
        let ndim_at = c.pos as u64;
        let n_dims = c.u32(&format!("n_dims of tensor {name:?}"))? as usize;
        if n_dims > MAX_DIMS {
            return Err(ParseError::BadTensor {
                tensor: name,
                reason: format!(
                    "{n_dims} dimensions at offset {ndim_at}; ggml allows at most {MAX_DIMS}"
                ),
            });
        }
        let mut dims = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            dims.push(c.u64(&format!("dimensions of tensor {name:?}"))?);
        }
        let type_id = c.u32(&format!("type of tensor {name:?}"))?;
        let offset = c.u64(&format!("offset of tensor {name:?}"))?;
        let ggml_type =
            GgmlType::from_id(type_id).ok_or_else(|| ParseError::UnknownTensorType {
                tensor: name.clone(),
                type_id,
            })?;
        let n_bytes = tensor_n_bytes(&name, &dims, ggml_type)?;
        if !offset.is_multiple_of(u64::from(alignment)) {
            return Err(ParseError::BadTensor {
                tensor: name,
                reason: format!("offset {offset} is not a multiple of the alignment {alignment}"),
            });
        }
        if !names.insert(name.clone()) {
            return Err(ParseError::DuplicateTensor { name });
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            n_bytes,
        });
    }

    let end_of_infos = c.pos as u64;
    let data_offset =
        align_up(end_of_infos, u64::from(alignment)).ok_or(ParseError::Malformed {
            offset: end_of_infos,
            msg: "data section offset overflows".into(),
        })?;
    let file_len = bytes.len() as u64;
    if !tensors.is_empty() && data_offset > file_len {
        return Err(ParseError::Truncated {
            what: "padding before the data section".into(),
            offset: end_of_infos,
            needed: data_offset - end_of_infos,
            file_len,
        });
    }
    let data_len = file_len.saturating_sub(data_offset);
    for t in &tensors {
        let end = t.offset.checked_add(t.n_bytes);
        if end.is_none_or(|e| e > data_len) {
            return Err(ParseError::TensorOutOfBounds {
                tensor: t.name.clone(),
                offset: t.offset,
                size: t.n_bytes,
                data_len,
            });
        }
    }
    check_overlaps(&tensors)?;

    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

fn bound_count(c: &Cursor<'_>, n: u64, min_size: u64, what: &str) -> Result<(), ParseError> {
    let remaining = c.remaining() as u64;
    if n.checked_mul(min_size).is_none_or(|b| b > remaining) {
        return Err(ParseError::Malformed {
            offset: c.pos as u64,
            msg: format!(
                "header declares {n} {what}, which cannot fit in the {remaining} bytes left in the file"
            ),
        });
    }
    Ok(())
}

fn align_up(x: u64, a: u64) -> Option<u64> {
    Some(x.checked_add(a - 1)? / a * a)
}

/// Bytes of a tensor with ggml dimensions `dims`, with checked arithmetic.
pub(crate) fn tensor_n_bytes(name: &str, dims: &[u64], ty: GgmlType) -> Result<u64, ParseError> {
    let bad = |reason: String| ParseError::BadTensor {
        tensor: name.to_owned(),
        reason,
    };
    let mut n: u64 = 1;
    for &d in dims {
        if d > i64::MAX as u64 {
            return Err(bad(format!("dimension {d} is negative as ggml's int64")));
        }
        n = n
            .checked_mul(d)
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| bad(format!("element count of dimensions {dims:?} overflows")))?;
    }
    let row = dims.first().copied().unwrap_or(1);
    let bs = ty.block_size() as u64;
    if !row.is_multiple_of(bs) {
        return Err(bad(format!(
            "row length {row} is not a multiple of the {} block size {bs}",
            ty.name()
        )));
    }
    (n / bs)
        .checked_mul(ty.type_size() as u64)
        .ok_or_else(|| bad(format!("byte size of dimensions {dims:?} overflows")))
}

fn check_overlaps(tensors: &[TensorInfo]) -> Result<(), ParseError> {
    let mut spans: Vec<(u64, u64, &str)> = tensors
        .iter()
        .filter(|t| t.n_bytes > 0)
        .map(|t| (t.offset, t.offset + t.n_bytes, t.name.as_str()))
        .collect();
    spans.sort_unstable();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(ParseError::BadTensor {
                tensor: w[1].2.to_owned(),
                reason: format!(
                    "data at offset {} overlaps tensor {:?} (bytes {}..{})",
                    w[1].0, w[0].2, w[0].0, w[0].1
                ),
            });
        }
    }
    Ok(())
}

fn read_value(
    c: &mut Cursor<'_>,
    ty: ValueType,
    key: &str,
    depth: usize,
) -> Result<Value, ParseError> {
    let what = || format!("value of metadata key {key:?}");
    Ok(match ty {
        ValueType::U8 => Value::U8(c.array::<1>(&what())?[0]),
        ValueType::I8 => Value::I8(i8::from_le_bytes(c.array(&what())?)),
        ValueType::U16 => Value::U16(u16::from_le_bytes(c.array(&what())?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(c.array(&what())?)),
        ValueType::U32 => Value::U32(u32::from_le_bytes(c.array(&what())?)),
        ValueType::I32 => Value::I32(i32::from_le_bytes(c.array(&what())?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(c.array(&what())?)),
        ValueType::Bool => Value::Bool(c.array::<1>(&what())?[0] != 0),
        ValueType::String => Value::String(c.string(&what())?),
        ValueType::U64 => Value::U64(u64::from_le_bytes(c.array(&what())?)),
        ValueType::I64 => Value::I64(i64::from_le_bytes(c.array(&what())?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(c.array(&what())?)),
        ValueType::Array => Value::Array(read_array(c, key, depth)?),
    })
}

fn read_array(c: &mut Cursor<'_>, key: &str, depth: usize) -> Result<Array, ParseError> {
    if depth >= MAX_NESTING {
        return Err(ParseError::NestingTooDeep {
            key: key.to_owned(),
            max: MAX_NESTING,
        });
    }
    let what = format!("array header of metadata key {key:?}");
    let type_at = c.pos as u64;
    let type_id = c.u32(&what)?;
    let elem = ValueType::from_id(type_id).ok_or_else(|| ParseError::UnknownValueType {
        key: key.to_owned(),
        type_id,
        offset: type_at,
    })?;
    let len_at = c.pos as u64;
    let len = c.u64(&what)?;
    let remaining = c.remaining() as u64;
    if len
        .checked_mul(elem.min_size() as u64)
        .is_none_or(|b| b > remaining)
    {
        return Err(ParseError::ArrayTooLong {
            key: key.to_owned(),
            len,
            offset: len_at,
            remaining,
        });
    }
    let n = len as usize;
    // Fixed-size elements: slice once, then decode.
    if let Some(size) = elem.fixed_size() {
        let raw = c.take(n * size, &what)?;
        macro_rules! decode {
            ($t:ty, $v:ident) => {
                Array::$v(
                    raw.chunks_exact(size)
                        .map(|b| <$t>::from_le_bytes(b.try_into().expect("chunk size")))
                        .collect(),
                )
            };
        }
        return Ok(match elem {
            ValueType::U8 => Array::U8(raw.to_vec()),
            ValueType::I8 => decode!(i8, I8),
            ValueType::U16 => decode!(u16, U16),
            ValueType::I16 => decode!(i16, I16),
            ValueType::U32 => decode!(u32, U32),
            ValueType::I32 => decode!(i32, I32),
            ValueType::F32 => decode!(f32, F32),
            ValueType::Bool => Array::Bool(raw.iter().map(|&b| b != 0).collect()),
            ValueType::U64 => decode!(u64, U64),
            ValueType::I64 => decode!(i64, I64),
            ValueType::F64 => decode!(f64, F64),
            ValueType::String | ValueType::Array => unreachable!("not fixed-size"),
        });
    }
    match elem {
        ValueType::String => {
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                v.push(c.string(&format!("element {i} of metadata key {key:?}"))?);
            }
            Ok(Array::String(v))
        }
        _ => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(read_array(c, key, depth + 1)?);
            }
            Ok(Array::Array(v))
        }
    }
}

enum Storage {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// An open, validated GGUF file. Tensor data stays in the (memory-mapped) file
/// and is handed out as slices.
pub struct GgufFile {
    path: PathBuf,
    storage: Storage,
    header: Header,
    by_name: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.header.version)
            .field("n_kv", &self.header.metadata.len())
            .field("n_tensors", &self.header.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and validates `path` (memory-mapped).
    ///
    /// The mapping assumes the file is not modified while it is open, as every
    /// mmap-based model loader does.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| GgufError::io(path, e))?;
        let len = file.metadata().map_err(|e| GgufError::io(path, e))?.len();
        let storage = if len == 0 {
            Storage::Owned(Vec::new())
        } else {
            // SAFETY: read-only mapping of a regular file; the data is only read
            // through bounds-checked slices. Concurrent truncation by another
            // process is outside what any mmap reader can defend against.
            Storage::Mmap(unsafe { memmap2::Mmap::map(&file) }.map_err(|e| GgufError::io(path, e))?)
        };
        Self::from_storage(path.to_path_buf(), storage)
    }

    /// Validates a GGUF file held in memory; `name` is used in error messages.
    pub fn from_bytes(bytes: Vec<u8>, name: impl Into<PathBuf>) -> Result<Self> {
        Self::from_storage(name.into(), Storage::Owned(bytes))
    }

    fn from_storage(path: PathBuf, storage: Storage) -> Result<Self> {
        let header = parse_header(storage.bytes()).map_err(|e| GgufError::parse(&path, e))?;
        let by_name = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(GgufFile {
            path,
            storage,
            header,
            by_name,
        })
    }

    /// The path (or name) the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.header.version
    }

    /// Data alignment in bytes.
    pub fn alignment(&self) -> u32 {
        self.header.alignment
    }

    /// Absolute offset of the data section in the file.
    pub fn data_offset(&self) -> u64 {
        self.header.data_offset
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &Metadata {
        &self.header.metadata
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The info of tensor `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.header.tensors[i])
    }

    /// The raw bytes of tensor `name` (in its ggml storage type).
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self.tensor(name).ok_or_else(|| GgufError::TensorNotFound {
            path: self.path.clone(),
            name: name.to_owned(),
        })?;
        Ok(self.data(info))
    }

    /// The raw bytes of a tensor of this file.
    ///
    /// # Panics
    /// If `info` does not come from this file (its range was validated at open).
    pub fn data(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.header.data_offset + info.offset) as usize;
        &self.storage.bytes()[start..start + info.n_bytes as usize]
    }

    /// Drops the mapped pages of a tensor from the process's resident memory
    /// (the kernel reads them again from the file if they are touched later):
    /// a caller that decodes tensor by tensor calls this after each, so a
    /// loaded model does not also hold its file.
    pub fn release(&self, info: &TensorInfo) {
        #[cfg(unix)]
        if let Storage::Mmap(m) = &self.storage {
            let start = (self.header.data_offset + info.offset) as usize;
            // SAFETY: a private read-only mapping; dropping pages only makes the
            // kernel re-read them from the file on the next access, and slices
            // handed out earlier stay valid (they read the same bytes again).
            unsafe {
                let _ = m.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start,
                    info.n_bytes as usize,
                );
            }
        }
        #[cfg(not(unix))]
        let _ = info;
    }

    /// Tensor `name` decoded to f32, for F32, F16 and BF16 tensors (quantized
    /// types need `dynapress-ggml`'s dequantizers).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let bytes = self.tensor_bytes(name)?;
        let info = self.tensor(name).expect("found above");
        decode_float(bytes, info.ggml_type).ok_or_else(|| GgufError::NotFloat {
            path: self.path.clone(),
            tensor: name.to_owned(),
            type_name: info.ggml_type.name(),
        })
    }
}

/// Decodes F32/F16/BF16 little-endian bytes; `None` for other types.
pub fn decode_float(bytes: &[u8], ty: GgmlType) -> Option<Vec<f32>> {
    match ty {
        GgmlType::F32 => Some(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        GgmlType::F16 => Some(
            bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        ),
        GgmlType::BF16 => Some(
            bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        ),
        _ => None,
    }
}
