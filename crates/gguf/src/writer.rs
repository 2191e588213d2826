//! The streaming GGUF writer: header, metadata and tensor infos up front (all
//! sizes are known from the tensor specs), then tensor data in order, then an
//! atomic rename.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use dynapress_ggml::GgmlType;

use crate::error::{GgufError, Result};
use crate::reader::{
    ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION, MAX_DIMS, tensor_n_bytes,
};
use crate::value::{Array, Metadata, Value};

/// Longest tensor name ggml accepts (`GGML_MAX_NAME` is 64 including the NUL).
pub const MAX_TENSOR_NAME: usize = 63;

/// A tensor to be written: name, ggml dimensions and storage type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Tensor name in llama.cpp's convention.
    pub name: String,
    /// Dimensions in ggml order (`dims[0]` is the row length): the reverse of
    /// the PyTorch shape. A `[out, in]` linear weight has `dims = [in, out]`.
    pub dims: Vec<u64>,
    /// Storage type.
    pub ggml_type: GgmlType,
}

impl TensorSpec {
    /// A spec from ggml-order dimensions.
    pub fn new(name: impl Into<String>, ggml_type: GgmlType, dims: &[u64]) -> Self {
        TensorSpec {
            name: name.into(),
            dims: dims.to_vec(),
            ggml_type,
        }
    }

    /// A spec from a PyTorch/NumPy (row-major) shape such as `[out, in]`.
    pub fn from_shape(name: impl Into<String>, ggml_type: GgmlType, shape: &[usize]) -> Self {
        TensorSpec {
            name: name.into(),
            dims: shape.iter().rev().map(|&d| d as u64).collect(),
            ggml_type,
        }
    }

    /// Bytes of the tensor's data, or why the spec is invalid.
    pub fn n_bytes(&self) -> std::result::Result<u64, String> {
        tensor_n_bytes(&self.name, &self.dims, self.ggml_type).map_err(|e| e.to_string())
    }
}

/// Streams one GGUF file: create with the metadata and every tensor's spec,
/// write each tensor's bytes in the declared order, then [`finish`](Self::finish).
///
/// The data goes to a temporary file next to the destination, renamed into
/// place by `finish`; dropping the writer before that deletes the temporary
/// file and leaves nothing behind.
pub struct GgufWriter {
    path: PathBuf,
    out: Option<std::io::BufWriter<tempfile::NamedTempFile>>,
    specs: Vec<TensorSpec>,
    sizes: Vec<u64>,
    next: usize,
    alignment: u64,
    pos: u64,
}

impl std::fmt::Debug for GgufWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufWriter")
            .field("path", &self.path)
            .field("next", &self.next)
            .field("n_tensors", &self.specs.len())
            .finish()
    }
}

impl GgufWriter {
    /// Validates the metadata and tensor specs, then writes the header,
    /// metadata and tensor infos to a temporary file beside `path`.
    ///
    /// The alignment is `general.alignment` from `metadata` if present (it must
    /// be a power-of-two u32), else 32.
    pub fn create(
        path: impl AsRef<Path>,
        metadata: &Metadata,
        tensors: Vec<TensorSpec>,
    ) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let alignment = match metadata.get(ALIGNMENT_KEY) {
            None => DEFAULT_ALIGNMENT,
            Some(Value::U32(a)) if a.is_power_of_two() => *a,
            Some(v) => {
                return Err(GgufError::Metadata {
                    key: ALIGNMENT_KEY.into(),
                    reason: format!("must be a power-of-two u32, found {v:?}"),
                });
            }
        } as u64;
        for (k, v) in metadata.iter() {
            if k.is_empty() {
                return Err(GgufError::Metadata {
                    key: k.into(),
                    reason: "empty key".into(),
                });
            }
            check_nesting(k, v)?;
        }

        let bad = |t: &TensorSpec, reason: String| GgufError::Write {
            path: path.clone(),
            tensor: t.name.clone(),
            reason,
        };
        let mut names = HashSet::new();
        let mut sizes = Vec::with_capacity(tensors.len());
        for t in &tensors {
            if t.name.is_empty() || t.name.len() > MAX_TENSOR_NAME {
                return Err(bad(
                    t,
                    format!("name must be 1..={MAX_TENSOR_NAME} bytes (ggml's limit)"),
                ));
            }
            if !names.insert(t.name.as_str()) {
                return Err(bad(t, "duplicate tensor name".into()));
            }
            if t.dims.is_empty() || t.dims.len() > MAX_DIMS {
                return Err(bad(
                    t,
                    format!("{} dimensions; ggml needs 1..={MAX_DIMS}", t.dims.len()),
                ));
            }
            sizes.push(t.n_bytes().map_err(|r| bad(t, r))?);
        }

        let dir = crate::fsutil::parent_dir(&path);
        let tmp = crate::fsutil::temp_in(&dir).map_err(|e| GgufError::io(&dir, e))?;
        let mut w = GgufWriter {
            path,
            out: Some(std::io::BufWriter::with_capacity(1 << 20, tmp)),
            specs: tensors,
            sizes,
            next: 0,
            alignment,
            pos: 0,
        };
        w.write_header(metadata)?;
        Ok(w)
    }

    fn write_header(&mut self, metadata: &Metadata) -> Result<()> {
        let mut buf = Vec::with_capacity(1 << 16);
        buf.extend_from_slice(&GGUF_MAGIC);
        buf.extend_from_slice(&GGUF_VERSION.to_le_bytes());
        buf.extend_from_slice(&(self.specs.len() as u64).to_le_bytes());
        buf.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata.iter() {
            put_str(&mut buf, k);
            buf.extend_from_slice(&v.value_type().id().to_le_bytes());
            put_value(&mut buf, v);
        }
        let mut offset = 0u64;
        for (t, &size) in self.specs.iter().zip(&self.sizes) {
            put_str(&mut buf, &t.name);
            buf.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                buf.extend_from_slice(&d.to_le_bytes());
            }
            buf.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            buf.extend_from_slice(&offset.to_le_bytes());
            offset = offset
                .checked_add(size.next_multiple_of(self.alignment))
                .ok_or_else(|| GgufError::Write {
                    path: self.path.clone(),
                    tensor: t.name.clone(),
                    reason: "total data size overflows u64".into(),
                })?;
        }
        self.put(&buf)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        let out = self.out.as_mut().expect("writer used after finish");
        out.write_all(bytes)
            .map_err(|e| GgufError::io(&self.path, e))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<()> {
        const ZEROS: [u8; 256] = [0; 256];
        let mut n = (self.pos.next_multiple_of(self.alignment) - self.pos) as usize;
        while n > 0 {
            let k = n.min(ZEROS.len());
            self.put(&ZEROS[..k])?;
            n -= k;
        }
        Ok(())
    }

    /// The spec of the tensor [`write_tensor`](Self::write_tensor) expects next.
    pub fn next_tensor(&self) -> Option<&TensorSpec> {
        self.specs.get(self.next)
    }

    /// The tensors declared at creation, in write order.
    pub fn tensors(&self) -> &[TensorSpec] {
        &self.specs
    }

    /// Writes the data of the next tensor, which must be `name`, exactly its
    /// byte size, in its ggml type's little-endian layout.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let Some(spec) = self.specs.get(self.next) else {
            return Err(GgufError::Write {
                path: self.path.clone(),
                tensor: name.into(),
                reason: format!(
                    "all {} declared tensors are already written",
                    self.specs.len()
                ),
            });
        };
        if spec.name != name {
            return Err(GgufError::Write {
                path: self.path.clone(),
                tensor: name.into(),
                reason: format!("out of order: tensor {:?} comes next", spec.name),
            });
        }
        let expected = self.sizes[self.next];
        if data.len() as u64 != expected {
            return Err(GgufError::Write {
                path: self.path.clone(),
                tensor: name.into(),
                reason: format!(
                    "{} bytes given, but {} {:?} needs {expected}",
                    data.len(),
                    spec.ggml_type.name(),
                    spec.dims
                ),
            });
        }
        self.put(data)?;
        self.pad()?;
        self.next += 1;
        Ok(())
    }

    /// Checks that every tensor was written, syncs the file and renames it to
    /// its destination.
    pub fn finish(mut self) -> Result<()> {
        if self.next != self.specs.len() {
            return Err(GgufError::Write {
                path: self.path.clone(),
                tensor: self.specs[self.next].name.clone(),
                reason: format!(
                    "finish() called after {} of {} tensors; this one was never written",
                    self.next,
                    self.specs.len()
                ),
            });
        }
        let out = self.out.take().expect("finish once");
        let tmp = out
            .into_inner()
            .map_err(|e| GgufError::io(&self.path, e.into_error()))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| GgufError::io(&self.path, e))?;
        tmp.persist(&self.path)
            .map_err(|e| GgufError::io(&self.path, e.error))?;
        Ok(())
    }
}

/// The exact size in bytes of the file [`GgufWriter`] would write for this
/// metadata and these tensors (header, infos and data, with alignment
/// padding), without writing anything.
pub fn planned_size(metadata: &Metadata, tensors: &[TensorSpec]) -> Result<u64> {
    let dir = std::env::temp_dir();
    let alignment = match metadata.get(ALIGNMENT_KEY) {
        Some(Value::U32(a)) if a.is_power_of_two() => *a as u64,
        _ => DEFAULT_ALIGNMENT as u64,
    };
    let mut header = Vec::with_capacity(1 << 16);
    header.extend_from_slice(&GGUF_MAGIC);
    header.extend_from_slice(&GGUF_VERSION.to_le_bytes());
    header.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata.iter() {
        put_str(&mut header, k);
        header.extend_from_slice(&v.value_type().id().to_le_bytes());
        put_value(&mut header, v);
    }
    let mut data = 0u64;
    for t in tensors {
        put_str(&mut header, &t.name);
        header.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            header.extend_from_slice(&d.to_le_bytes());
        }
        header.extend_from_slice(&t.ggml_type.id().to_le_bytes());
        header.extend_from_slice(&0u64.to_le_bytes());
        let n = t.n_bytes().map_err(|reason| GgufError::Write {
            path: dir.clone(),
            tensor: t.name.clone(),
            reason,
        })?;
        data += n.next_multiple_of(alignment);
    }
    Ok((header.len() as u64).next_multiple_of(alignment) + data)
}

/// Writes a whole file from tensors held in memory.
pub fn write_gguf<'a>(
    path: impl AsRef<Path>,
    metadata: &Metadata,
    tensors: impl IntoIterator<Item = (TensorSpec, &'a [u8])>,
) -> Result<()> {
    let (specs, data): (Vec<TensorSpec>, Vec<&[u8]>) = tensors.into_iter().unzip();
    let mut w = GgufWriter::create(path, metadata, specs.clone())?;
    for (s, d) in specs.iter().zip(data) {
        w.write_tensor(&s.name, d)?;
    }
    w.finish()
}

fn check_nesting(key: &str, v: &Value) -> Result<()> {
    fn depth(a: &Array) -> usize {
        match a {
            Array::Array(v) => 1 + v.iter().map(depth).max().unwrap_or(0),
            _ => 1,
        }
    }
    if let Value::Array(a) = v
        && depth(a) > crate::reader::MAX_NESTING
    {
        return Err(GgufError::Metadata {
            key: key.into(),
            reason: format!(
                "arrays nested deeper than {} levels (readers refuse them)",
                crate::reader::MAX_NESTING
            ),
        });
    }
    Ok(())
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_value(buf: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => buf.push(*x),
        Value::I8(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => buf.push(u8::from(*x)),
        Value::String(s) => put_str(buf, s),
        Value::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::Array(a) => put_array(buf, a),
    }
}

fn put_array(buf: &mut Vec<u8>, a: &Array) {
    buf.extend_from_slice(&a.elem_type().id().to_le_bytes());
    buf.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! each {
        ($v:expr) => {
            for x in $v {
                buf.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        Array::U8(v) => buf.extend_from_slice(v),
        Array::I8(v) => each!(v),
        Array::U16(v) => each!(v),
        Array::I16(v) => each!(v),
        Array::U32(v) => each!(v),
        Array::I32(v) => each!(v),
        Array::F32(v) => each!(v),
        Array::Bool(v) => buf.extend(v.iter().map(|&b| u8::from(b))),
        Array::String(v) => v.iter().for_each(|s| put_str(buf, s)),
        Array::Array(v) => v.iter().for_each(|x| put_array(buf, x)),
        Array::U64(v) => each!(v),
        Array::I64(v) => each!(v),
        Array::F64(v) => each!(v),
    }
}
