//! llama.cpp importance-matrix ("imatrix") files, both formats that the
//! vendored llama.cpp (llama-cpp-python 0.3.36) reads
//! (`common/imatrix-loader.cpp`):
//!
//! **GGUF** (what `llama-imatrix` writes by default): `general.type =
//! "imatrix"`, `imatrix.datasets` (string array), `imatrix.chunk_count` and
//! `imatrix.chunk_size` (u32), and per weight matrix `W` two F32 tensors:
//! `W.in_sum2` with dims `[n_in, n_mat]` — the sum over tokens of xⱼ² for each
//! input column j (n_mat > 1 only for stacked MoE experts) — and `W.counts`
//! with dims `[1, n_mat]`, the number of tokens summed. llama-quantize uses
//! `in_sum2 / counts`, the mean of x² per column, as quantization weights.
//!
//! **Legacy `.dat`** (`--output-format dat`): little-endian
//! `i32 n_entries`, then per entry `i32 name_len, name, i32 ncall, i32 nval,
//! f32 values[nval]` with values = mean(x²)·ncall, then optionally
//! `i32 chunk_count, i32 dataset_len, dataset`. The mean is values / ncall.
//!
//! Both are represented here the way llama.cpp's loader does: `sums` and
//! `counts` such that `sums / counts` is the mean (a legacy entry has one
//! count, its ncall).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use dynapress_ggml::GgmlType;

use crate::error::{GgufError, Result};
use crate::reader::GgufFile;
use crate::value::{Array, Metadata, Value};
use crate::writer::{GgufWriter, TensorSpec};

/// Key of the dataset list.
pub const KEY_DATASETS: &str = "imatrix.datasets";
/// Key of the number of chunks the statistics were collected over.
pub const KEY_CHUNK_COUNT: &str = "imatrix.chunk_count";
/// Key of the tokens per chunk.
pub const KEY_CHUNK_SIZE: &str = "imatrix.chunk_size";

/// The activation statistics of one weight matrix (or a stack of `n_mat`
/// expert matrices sharing a name).
#[derive(Debug, Clone, PartialEq)]
pub struct ImatrixEntry {
    /// Σ x² per input column, `n_mat` blocks of `n_in` values.
    pub sums: Vec<f32>,
    /// Tokens summed, one per matrix.
    pub counts: Vec<f32>,
}

impl ImatrixEntry {
    /// An entry for one matrix from Σx² per column over `n_tokens` tokens.
    pub fn new(sums: Vec<f32>, n_tokens: f32) -> Self {
        ImatrixEntry {
            sums,
            counts: vec![n_tokens],
        }
    }

    /// Input columns per matrix.
    pub fn n_in(&self) -> usize {
        self.sums.len() / self.counts.len().max(1)
    }

    /// The mean of x² per column (`sums / counts`), with llama-quantize's rule
    /// that a matrix never reached (count 0) gets weight 1.
    pub fn mean_squares(&self) -> Vec<f32> {
        let n_in = self.n_in();
        let mut out = Vec::with_capacity(self.sums.len());
        for (m, &c) in self.counts.iter().enumerate() {
            let s = &self.sums[m * n_in..(m + 1) * n_in];
            if c > 0.0 {
                out.extend(s.iter().map(|&x| x / c));
            } else {
                out.extend(std::iter::repeat_n(1.0, n_in));
            }
        }
        out
    }
}

/// Which on-disk format an imatrix was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImatrixFormat {
    /// GGUF-based (`.gguf`), llama.cpp's current default.
    Gguf,
    /// Legacy binary (`.dat`).
    Legacy,
}

/// An importance matrix: statistics by GGUF weight name (`blk.0.attn_q.weight`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Imatrix {
    /// Statistics by weight name.
    pub entries: BTreeMap<String, ImatrixEntry>,
    /// Calibration data sets (file names), oldest first.
    pub datasets: Vec<String>,
    /// Chunks the statistics were collected over.
    pub chunk_count: u32,
    /// Tokens per chunk (0 if unknown, as for legacy files).
    pub chunk_size: u32,
}

fn bad(path: &Path, reason: impl Into<String>) -> GgufError {
    GgufError::Imatrix {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl Imatrix {
    /// Reads either format (GGUF if the file starts with `GGUF`).
    pub fn read(path: impl AsRef<Path>) -> Result<(Imatrix, ImatrixFormat)> {
        let path = path.as_ref();
        let mut head = [0u8; 4];
        {
            use std::io::Read;
            let mut f = std::fs::File::open(path).map_err(|e| GgufError::io(path, e))?;
            let n = f.read(&mut head).map_err(|e| GgufError::io(path, e))?;
            if n < 4 {
                return Err(bad(path, format!("only {n} bytes")));
            }
        }
        if head == *b"GGUF" {
            Ok((Self::read_gguf(path)?, ImatrixFormat::Gguf))
        } else {
            let bytes = std::fs::read(path).map_err(|e| GgufError::io(path, e))?;
            Ok((Self::parse_legacy(&bytes, path)?, ImatrixFormat::Legacy))
        }
    }

    /// Reads the GGUF format.
    pub fn read_gguf(path: impl AsRef<Path>) -> Result<Imatrix> {
        let path = path.as_ref();
        let f = GgufFile::open(path)?;
        let md = f.metadata();
        let mut im = Imatrix {
            datasets: match md.get(KEY_DATASETS) {
                Some(Value::Array(Array::String(v))) => v.clone(),
                _ => Vec::new(),
            },
            chunk_count: md.get(KEY_CHUNK_COUNT).and_then(Value::as_u64).unwrap_or(0) as u32,
            chunk_size: md.get(KEY_CHUNK_SIZE).and_then(Value::as_u64).unwrap_or(0) as u32,
            entries: BTreeMap::new(),
        };
        let mut sums: BTreeMap<&str, Vec<f32>> = BTreeMap::new();
        let mut counts: BTreeMap<&str, (Vec<f32>, u64)> = BTreeMap::new();
        for t in f.tensors() {
            let (base, is_sums) = if let Some(b) = t.name.strip_suffix(".in_sum2") {
                (b, true)
            } else if let Some(b) = t.name.strip_suffix(".counts") {
                (b, false)
            } else {
                continue;
            };
            if t.ggml_type != GgmlType::F32 {
                return Err(bad(
                    path,
                    format!("tensor {} is {}, not F32", t.name, t.ggml_type.name()),
                ));
            }
            let v = f.tensor_f32(&t.name)?;
            if is_sums {
                sums.insert(base, v);
            } else {
                let n_mat = t.dims.get(1).copied().unwrap_or(1);
                counts.insert(base, (v, n_mat));
            }
        }
        for (name, s) in &sums {
            let Some((c, _)) = counts.remove(name) else {
                return Err(bad(path, format!("{name}.in_sum2 has no {name}.counts")));
            };
            if c.is_empty() || !s.len().is_multiple_of(c.len()) {
                return Err(bad(
                    path,
                    format!(
                        "{name}: {} sums do not split into {} matrices",
                        s.len(),
                        c.len()
                    ),
                ));
            }
            im.entries.insert(
                (*name).to_owned(),
                ImatrixEntry {
                    sums: s.clone(),
                    counts: c,
                },
            );
        }
        if let Some(name) = counts.keys().next() {
            return Err(bad(path, format!("{name}.counts has no {name}.in_sum2")));
        }
        if im.entries.is_empty() {
            return Err(bad(path, "no imatrix entries"));
        }
        Ok(im)
    }

    /// Parses the legacy binary format; `path` is for error messages.
    pub fn parse_legacy(bytes: &[u8], path: &Path) -> Result<Imatrix> {
        let read_i32 = |pos: &mut usize, what: &str| -> Result<i32> {
            let b = bytes
                .get(*pos..pos.saturating_add(4))
                .ok_or_else(|| bad(path, format!("truncated at offset {pos} reading {what}")))?;
            *pos += 4;
            Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let read_bytes = |pos: &mut usize, len: usize, what: &str| -> Result<&[u8]> {
            let end = pos
                .checked_add(len)
                .filter(|&e| e <= bytes.len())
                .ok_or_else(|| {
                    bad(
                        path,
                        format!(
                            "{what} of {len} bytes at offset {pos} runs past the end ({} bytes)",
                            bytes.len()
                        ),
                    )
                })?;
            let s = &bytes[*pos..end];
            *pos = end;
            Ok(s)
        };
        let len_of = |len: i32, what: &str| -> Result<usize> {
            usize::try_from(len).map_err(|_| bad(path, format!("negative length {len} for {what}")))
        };

        let mut pos = 0usize;
        let n_entries = read_i32(&mut pos, "entry count")?;
        if n_entries < 1 {
            return Err(bad(
                path,
                format!("entry count {n_entries} (expected at least 1)"),
            ));
        }
        // Each entry takes at least 16 bytes: a bound on the loop before any work.
        if (n_entries as usize).saturating_mul(16) > bytes.len() {
            return Err(bad(
                path,
                format!("{n_entries} entries cannot fit in {} bytes", bytes.len()),
            ));
        }
        let mut im = Imatrix::default();
        for i in 0..n_entries {
            let len = len_of(read_i32(&mut pos, "name length")?, "an entry name")?;
            let name = std::str::from_utf8(read_bytes(&mut pos, len, "entry name")?)
                .map_err(|_| bad(path, format!("name of entry {i} is not UTF-8")))?
                .to_owned();
            let ncall = read_i32(&mut pos, "ncall")?;
            let nval = read_i32(&mut pos, "value count")?;
            if nval < 1 {
                return Err(bad(path, format!("entry {name:?} has {nval} values")));
            }
            let raw = read_bytes(&mut pos, nval as usize * 4, &format!("values of {name:?}"))?;
            let sums = raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let entry = ImatrixEntry {
                sums,
                counts: vec![ncall as f32],
            };
            if im.entries.insert(name.clone(), entry).is_some() {
                return Err(bad(path, format!("duplicate entry {name:?}")));
            }
        }
        // Optional trailer: chunk count, dataset name.
        if pos < bytes.len() {
            im.chunk_count = read_i32(&mut pos, "chunk count")?.max(0) as u32;
            if pos < bytes.len() {
                let len = read_i32(&mut pos, "dataset name length")?;
                if len > 0 {
                    let d = read_bytes(&mut pos, len as usize, "dataset name")?;
                    im.datasets.push(
                        std::str::from_utf8(d)
                            .map_err(|_| bad(path, "dataset name is not UTF-8"))?
                            .to_owned(),
                    );
                }
            }
        }
        Ok(im)
    }

    /// Writes the GGUF format (what `llama-imatrix` writes and `llama-quantize
    /// --imatrix` reads), entries in name order.
    pub fn write_gguf(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut md = Metadata::new();
        md.set("general.type", "imatrix");
        md.set(KEY_DATASETS, self.datasets.clone());
        md.set(KEY_CHUNK_COUNT, self.chunk_count);
        md.set(KEY_CHUNK_SIZE, self.chunk_size);
        let mut specs = Vec::with_capacity(2 * self.entries.len());
        for (name, e) in &self.entries {
            self.check_entry(path, name, e)?;
            let n_mat = e.counts.len() as u64;
            specs.push(TensorSpec::new(
                format!("{name}.in_sum2"),
                GgmlType::F32,
                &[e.n_in() as u64, n_mat],
            ));
            specs.push(TensorSpec::new(
                format!("{name}.counts"),
                GgmlType::F32,
                &[1, n_mat],
            ));
        }
        let mut w = GgufWriter::create(path, &md, specs)?;
        for (name, e) in &self.entries {
            w.write_tensor(&format!("{name}.in_sum2"), &f32_bytes(&e.sums))?;
            w.write_tensor(&format!("{name}.counts"), &f32_bytes(&e.counts))?;
        }
        w.finish()
    }

    /// Writes the legacy `.dat` format (for llama.cpp builds before the GGUF
    /// imatrix). `ncall` is `chunk_count` if set, else the largest count
    /// divided by `chunk_size` (rounded up), else 1; values are
    /// mean(x²)·ncall so that readers recover the mean exactly up to f32
    /// rounding.
    pub fn write_legacy(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut buf = Vec::new();
        buf.extend_from_slice(&(self.entries.len() as i32).to_le_bytes());
        for (name, e) in &self.entries {
            self.check_entry(path, name, e)?;
            let max_count = e.counts.iter().fold(0f32, |a, &b| a.max(b));
            let ncall: i32 = if self.chunk_count > 0 {
                self.chunk_count as i32
            } else if self.chunk_size > 0 {
                ((max_count as f64) / self.chunk_size as f64)
                    .ceil()
                    .max(1.0) as i32
            } else {
                1
            };
            buf.extend_from_slice(&(name.len() as i32).to_le_bytes());
            buf.extend_from_slice(name.as_bytes());
            buf.extend_from_slice(&ncall.to_le_bytes());
            buf.extend_from_slice(&(e.sums.len() as i32).to_le_bytes());
            for m in e.mean_squares() {
                buf.extend_from_slice(&(m * ncall as f32).to_le_bytes());
            }
        }
        buf.extend_from_slice(&(self.chunk_count as i32).to_le_bytes());
        let dataset = self.datasets.last().map_or("", String::as_str);
        buf.extend_from_slice(&(dataset.len() as i32).to_le_bytes());
        buf.extend_from_slice(dataset.as_bytes());
        write_atomic(path, &buf)
    }

    fn check_entry(&self, path: &Path, name: &str, e: &ImatrixEntry) -> Result<()> {
        if e.counts.is_empty() || e.sums.is_empty() || !e.sums.len().is_multiple_of(e.counts.len())
        {
            return Err(bad(
                path,
                format!(
                    "entry {name:?}: {} sums do not split into {} matrices",
                    e.sums.len(),
                    e.counts.len()
                ),
            ));
        }
        Ok(())
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = crate::fsutil::parent_dir(path);
    let mut tmp = crate::fsutil::temp_in(&dir).map_err(|e| GgufError::io(&dir, e))?;
    tmp.write_all(bytes).map_err(|e| GgufError::io(path, e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| GgufError::io(path, e))?;
    tmp.persist(path)
        .map_err(|e| GgufError::io(path, e.error))?;
    Ok(())
}
