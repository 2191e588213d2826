//! Checkpoint tensors: memory-mapped safetensors files (one file or shards
//! listed in `model.safetensors.index.json`), read through one name → tensor view.
//!
//! Headers are validated when a file is opened (offsets contiguous and inside
//! the file), so a truncated download fails at load with the file's name.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors, tensor::Metadata};

use crate::error::{Error, Result};

/// The bytes of one safetensors file: mapped from disk or decoded into memory.
enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

struct StFile {
    path: PathBuf,
    bytes: Bytes,
    header_len: usize,
    metadata: Metadata,
}

/// A raw tensor as stored in a checkpoint.
pub struct RawTensor<'a> {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
    pub path: &'a Path,
}

/// How a quantized linear layer of a dynapress-native checkpoint is stored
/// (`NAME.codes`/`.scales`/`.zeros`/`.perm`, or `NAME.ggml` blocks), from the
/// file's `dynapress.quant` metadata.
#[derive(Debug, Clone)]
enum QuantStorage {
    Grid(dynapress_compress::QuantMeta),
    Sparse(dynapress_compress::SparseMeta),
    Ggml {
        ty: dynapress_ggml::GgmlType,
        rows: usize,
        cols: usize,
    },
}

/// The metadata key listing a file's quantized layers.
pub const QUANT_METADATA_KEY: &str = "dynapress.quant";

/// Every tensor of a checkpoint, by name.
#[derive(Clone)]
pub struct WeightSource {
    dir: PathBuf,
    files: Arc<Vec<StFile>>,
    index: Arc<HashMap<String, usize>>,
    /// Quantized layers (dynapress-native export), by weight name.
    quant: Arc<HashMap<String, QuantStorage>>,
    /// A GGUF file whose tensors are decoded when loaded
    /// ([`WeightSource::from_gguf`]).
    gguf: Option<Arc<GgufTensors>>,
}

/// The tensors of a GGUF file, decoded on request.
struct GgufTensors {
    file: dynapress_gguf::GgufFile,
    import: dynapress_gguf::LazyImport,
    by_name: HashMap<String, usize>,
}

impl WeightSource {
    /// Opens `model.safetensors`, or the shards listed in
    /// `model.safetensors.index.json`, in `dir`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let paths: Vec<PathBuf> = if index_path.exists() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::config(&index_path, format!("not valid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::config(&index_path, "missing `weight_map` object"))?;
            let mut shards: Vec<String> = map
                .values()
                .map(|f| {
                    f.as_str().map(str::to_string).ok_or_else(|| {
                        Error::config(&index_path, "`weight_map` values must be file names")
                    })
                })
                .collect::<Result<_>>()?;
            shards.sort();
            shards.dedup();
            shards.into_iter().map(|f| dir.join(f)).collect()
        } else if single.exists() {
            vec![single]
        } else {
            return Err(Error::config(
                dir,
                "no model.safetensors or model.safetensors.index.json here; dynapress loads Hugging Face checkpoints in safetensors format",
            ));
        };
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            let f = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
            // SAFETY: the file is opened read-only; like every mmap user we rely on
            // nobody truncating it while the model is loaded.
            let mmap = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(&path, e))?;
            files.push(parse_file(path, Bytes::Mapped(mmap))?);
        }
        Self::from_files(dir.to_path_buf(), files)
    }

    /// Builds a source from safetensors files already in memory (for example
    /// decoded from a packed container). `dir` names the origin in errors.
    pub fn from_buffers(dir: &Path, buffers: Vec<(PathBuf, Vec<u8>)>) -> Result<Self> {
        let files = buffers
            .into_iter()
            .map(|(path, bytes)| parse_file(path, Bytes::Owned(bytes)))
            .collect::<Result<Vec<_>>>()?;
        Self::from_files(dir.to_path_buf(), files)
    }

    fn from_files(dir: PathBuf, files: Vec<StFile>) -> Result<Self> {
        let mut index = HashMap::new();
        let mut quant = HashMap::new();
        for f in &files {
            let Some(text) = f
                .metadata
                .metadata()
                .as_ref()
                .and_then(|m| m.get(QUANT_METADATA_KEY))
            else {
                continue;
            };
            let bad = |msg: String| Error::Safetensors {
                path: f.path.clone(),
                msg,
            };
            let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
                .map_err(|e| bad(format!("bad {QUANT_METADATA_KEY} metadata: {e}")))?;
            for (name, v) in map {
                let storage = match v.get("ggml") {
                    None if v.get("sparse").is_some() => QuantStorage::Sparse(
                        serde_json::from_value(v["sparse"].clone())
                            .map_err(|e| bad(format!("{name}: bad sparsity metadata: {e}")))?,
                    ),
                    Some(g) => QuantStorage::Ggml {
                        ty: g["type"]
                            .as_str()
                            .and_then(dynapress_ggml::GgmlType::from_name)
                            .ok_or_else(|| bad(format!("{name}: bad ggml type")))?,
                        rows: g["rows"].as_u64().unwrap_or(0) as usize,
                        cols: g["cols"].as_u64().unwrap_or(0) as usize,
                    },
                    None => QuantStorage::Grid(
                        serde_json::from_value(v)
                            .map_err(|e| bad(format!("{name}: bad quantization metadata: {e}")))?,
                    ),
                };
                quant.insert(name, storage);
            }
        }
        for (i, f) in files.iter().enumerate() {
            for name in f.metadata.tensors().keys() {
                if let Some(prev) = index.insert(name.clone(), i) {
                    return Err(Error::Safetensors {
                        path: f.path.clone(),
                        msg: format!(
                            "tensor `{name}` also appears in {}",
                            files[prev].path.display()
                        ),
                    });
                }
            }
        }
        Ok(WeightSource {
            dir,
            files: Arc::new(files),
            index: Arc::new(index),
            quant: Arc::new(quant),
            gguf: None,
        })
    }

    /// A source over a GGUF file whose tensors are decoded (dequantized, Q/K
    /// rows un-permuted) one at a time as they are loaded, so loading a model
    /// never holds a second copy of it. Only loading works on it:
    /// [`Self::raw`] answers an error naming the file.
    pub fn from_gguf(
        path: &Path,
        file: dynapress_gguf::GgufFile,
        import: dynapress_gguf::LazyImport,
    ) -> Self {
        let by_name = import
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        WeightSource {
            dir: path.to_path_buf(),
            files: Arc::new(Vec::new()),
            index: Arc::new(HashMap::new()),
            quant: Arc::new(HashMap::new()),
            gguf: Some(Arc::new(GgufTensors {
                file,
                import,
                by_name,
            })),
        }
    }

    /// The GGUF tensor named `name`, when this is a GGUF source that has it.
    fn gguf_tensor(&self, name: &str) -> Option<(&GgufTensors, &dynapress_gguf::LazyTensor)> {
        let g = self.gguf.as_deref()?;
        g.by_name.get(name).map(|&i| (g, &g.import.tensors[i]))
    }

    /// The checkpoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether a tensor exists (stored plainly or quantized).
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
            || self.quant.contains_key(name)
            || self.gguf_tensor(name).is_some()
    }

    /// Whether `name` is stored quantized (dynapress-native checkpoint).
    pub fn is_quantized(&self, name: &str) -> bool {
        self.quant.contains_key(name)
    }

    /// The f32 values of a quantized layer `[rows, cols]`.
    fn dequantized(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let bad = |path: &Path, msg: String| Error::Safetensors {
            path: path.to_path_buf(),
            msg: format!("{name}: {msg}"),
        };
        match &self.quant[name] {
            QuantStorage::Ggml { ty, rows, cols } => {
                let blocks = self.raw(&format!("{name}.ggml"))?;
                let v = dynapress_ggml::dequantize(*ty, blocks.data, rows * cols)
                    .map_err(|e| bad(blocks.path, e.to_string()))?;
                Ok((vec![*rows, *cols], v))
            }
            QuantStorage::Grid(meta) => {
                let parts = [
                    ("codes", true),
                    ("scales", true),
                    ("zeros", false),
                    ("perm", false),
                ];
                let (path, buffers) = self.named_buffers(name, &parts)?;
                let q = dynapress_compress::QuantizedLinear::from_buffers(meta, &buffers)
                    .map_err(|e| bad(&path, e.to_string()))?;
                Ok((vec![q.rows(), q.cols()], q.dequantize()))
            }
            QuantStorage::Sparse(meta) => {
                let parts = [
                    ("mask", true),
                    ("values", false),
                    ("codes", false),
                    ("scales", false),
                    ("zeros", false),
                ];
                let (path, buffers) = self.named_buffers(name, &parts)?;
                let sp = dynapress_compress::SparseLinear::from_buffers(meta, &buffers)
                    .map_err(|e| bad(&path, e.to_string()))?;
                Ok((vec![sp.rows(), sp.cols()], sp.dequantize()))
            }
        }
    }

    /// The stored parts `NAME.SUFFIX` of a quantized layer as named buffers
    /// (`(suffix, required)`; an absent optional part is skipped), and the
    /// file they were read from.
    fn named_buffers(
        &self,
        name: &str,
        parts: &[(&str, bool)],
    ) -> Result<(PathBuf, Vec<dynapress_compress::NamedBuffer>)> {
        use dynapress_compress::{BufferDtype, NamedBuffer};
        let mut buffers = Vec::new();
        let mut path = self.dir.clone();
        for &(suffix, required) in parts {
            let full = format!("{name}.{suffix}");
            if !self.index.contains_key(&full) {
                if required {
                    return Err(Error::MissingTensor {
                        name: full,
                        dir: self.dir.clone(),
                    });
                }
                continue;
            }
            let r = self.raw(&full)?;
            path = r.path.to_path_buf();
            let dtype = match r.dtype {
                Dtype::U8 => BufferDtype::U8,
                Dtype::F16 => BufferDtype::F16,
                Dtype::U16 => BufferDtype::U16,
                Dtype::U32 => BufferDtype::U32,
                other => {
                    return Err(Error::Safetensors {
                        path: r.path.to_path_buf(),
                        msg: format!("{name}: unexpected dtype {other:?} for {suffix}"),
                    });
                }
            };
            buffers.push(NamedBuffer {
                name: suffix.to_string(),
                dtype,
                shape: r.shape.clone(),
                data: r.data.to_vec(),
            });
        }
        Ok((path, buffers))
    }

    /// All tensor names, sorted (a quantized layer appears once, under its
    /// weight name, not as its parts).
    pub fn names(&self) -> Vec<String> {
        let part_of_quant = |n: &str| {
            n.rsplit_once('.')
                .is_some_and(|(base, _)| self.quant.contains_key(base))
        };
        let mut v: Vec<String> = self
            .index
            .keys()
            .filter(|n| !part_of_quant(n))
            .cloned()
            .chain(self.quant.keys().cloned())
            .chain(
                self.gguf
                    .iter()
                    .flat_map(|g| g.import.tensors.iter().map(|t| t.name.clone())),
            )
            .collect();
        v.sort();
        v
    }

    /// The safetensors file paths, in load order.
    pub fn file_paths(&self) -> Vec<PathBuf> {
        self.files.iter().map(|f| f.path.clone()).collect()
    }

    /// Every safetensors file's path and bytes (mapped or in memory).
    pub fn file_bytes(&self) -> Vec<(&Path, &[u8])> {
        self.files
            .iter()
            .map(|f| (f.path.as_path(), &*f.bytes))
            .collect()
    }

    /// Every safetensors file's path and sha256 (hex). A mapped file is read
    /// from disk rather than through its mapping: hashing through the
    /// mapping would leave the whole checkpoint resident in this process
    /// (1.2 GB at 0.5 B parameters in bf16) for the rest of the run.
    pub fn file_sha256(&self) -> Result<Vec<(&Path, String)>> {
        use sha2::{Digest, Sha256};
        self.files
            .iter()
            .map(|f| {
                let hash = match &f.bytes {
                    Bytes::Mapped(_) => crate::fsutil::sha256_file(&f.path)?,
                    Bytes::Owned(v) => crate::fsutil::hex(&Sha256::digest(v)),
                };
                Ok((f.path.as_path(), hash))
            })
            .collect()
    }

    /// Per-file tensor names (file path → names), for writers that keep the sharding.
    pub fn names_by_file(&self) -> BTreeMap<PathBuf, Vec<String>> {
        let mut out: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
        for (name, &i) in self.index.iter() {
            out.entry(self.files[i].path.clone())
                .or_default()
                .push(name.clone());
        }
        for v in out.values_mut() {
            v.sort();
        }
        out
    }

    /// The stored bytes, dtype and shape of a tensor.
    pub fn raw(&self, name: &str) -> Result<RawTensor<'_>> {
        if self.gguf_tensor(name).is_some() {
            return Err(Error::data(
                &self.dir,
                format!(
                    "{name}: this GGUF file was opened for loading only (a bug: open it with ModelFiles::open to read stored tensors)"
                ),
            ));
        }
        let &i = self.index.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            dir: self.dir.clone(),
        })?;
        let f = &self.files[i];
        let info = f.metadata.info(name).expect("index built from metadata");
        let start = 8 + f.header_len + info.data_offsets.0;
        let end = 8 + f.header_len + info.data_offsets.1;
        Ok(RawTensor {
            dtype: info.dtype,
            shape: info.shape.clone(),
            data: &f.bytes[start..end],
            path: &f.path,
        })
    }

    /// Drops the mapped pages of a tensor from this process's resident memory
    /// (they are read again from the file if touched later). Streaming
    /// consumers call this after converting a block so memory stays bounded by
    /// one block, not the checkpoint.
    pub fn release(&self, name: &str) {
        let Some(&i) = self.index.get(name) else {
            return;
        };
        let f = &self.files[i];
        if let (Bytes::Mapped(m), Some(info)) = (&f.bytes, f.metadata.info(name)) {
            let start = 8 + f.header_len + info.data_offsets.0;
            let len = info.data_offsets.1 - info.data_offsets.0;
            #[cfg(unix)]
            // SAFETY: the mapping is private and read-only; no slice into this
            // range outlives the call that converted it, so dropping the pages
            // only makes the kernel re-read them from the file on next access.
            unsafe {
                let _ = m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len);
            }
            #[cfg(not(unix))]
            let _ = (m, start, len);
        }
    }

    /// Shape of a tensor.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        match self.quant.get(name) {
            Some(QuantStorage::Ggml { rows, cols, .. }) => Ok(vec![*rows, *cols]),
            Some(QuantStorage::Grid(m)) => Ok(vec![m.rows, m.cols]),
            Some(QuantStorage::Sparse(m)) => Ok(vec![m.rows, m.cols]),
            None => match self.gguf_tensor(name) {
                Some((_, t)) => Ok(t.shape.clone()),
                None => Ok(self.raw(name)?.shape),
            },
        }
    }

    /// Loads a floating-point tensor as f32 values, checking its shape and that
    /// every value is finite.
    pub fn load_f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let decoded = match self.gguf_tensor(name) {
            Some((g, t)) => Some((
                t.shape.clone(),
                g.import
                    .decode(&g.file, t)
                    .map_err(|e| super::gguf_error(&self.dir, e))?,
            )),
            None if self.quant.contains_key(name) => Some(self.dequantized(name)?),
            None => None,
        };
        if let Some((shape, values)) = decoded {
            if shape != expected {
                return Err(Error::TensorShape {
                    name: name.to_string(),
                    path: self.dir.clone(),
                    expected: expected.to_vec(),
                    got: shape,
                });
            }
            check_finite(&values, name, &self.dir)?;
            return Ok(values);
        }
        let raw = self.raw(name)?;
        if raw.shape != expected {
            return Err(Error::TensorShape {
                name: name.to_string(),
                path: raw.path.to_path_buf(),
                expected: expected.to_vec(),
                got: raw.shape,
            });
        }
        let values = to_f32(&raw, name)?;
        check_finite(&values, name, raw.path)?;
        // The f32 copy is what the caller keeps: give the file's pages back,
        // or a loaded model would hold its checkpoint twice (f32 + mapped).
        drop(raw);
        self.release(name);
        Ok(values)
    }

    /// Loads a tensor as an f32 candle tensor of the expected shape.
    pub fn load(&self, name: &str, expected: &[usize], device: &Device) -> Result<Tensor> {
        let v = self.load_f32(name, expected)?;
        Ok(Tensor::from_vec(v, expected, device)?)
    }
}

/// An error naming the tensor and file when some of `values` are NaN or infinite.
fn check_finite(values: &[f32], name: &str, path: &Path) -> Result<()> {
    let bad = values.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        return Err(Error::NonFinite {
            name: name.to_string(),
            path: path.to_path_buf(),
            count: bad,
        });
    }
    Ok(())
}

fn parse_file(path: PathBuf, bytes: Bytes) -> Result<StFile> {
    let (header_len, metadata) =
        SafeTensors::read_metadata(&bytes).map_err(|e| Error::Safetensors {
            path: path.clone(),
            msg: e.to_string(),
        })?;
    Ok(StFile {
        path,
        bytes,
        header_len,
        metadata,
    })
}

/// Converts stored F32/F16/BF16 bytes (little endian) to f32.
pub fn to_f32(raw: &RawTensor<'_>, name: &str) -> Result<Vec<f32>> {
    let d = raw.data;
    Ok(match raw.dtype {
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::BF16 => d
            .chunks_exact(2)
            .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        Dtype::F16 => d
            .chunks_exact(2)
            .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        other => {
            return Err(Error::TensorDtype {
                name: name.to_string(),
                path: raw.path.to_path_buf(),
                dtype: format!("{other:?}"),
            });
        }
    })
}
