//! The layer database: for every linear layer of a model, compressed variants
//! ("levels") with their exact storage cost and their output error, built
//! from calibration text.
//!
//! ```text
//! DB_DIR/manifest.json                     identity, parameters, every entry
//! DB_DIR/entries/<block>/<layer>.<level>.safetensors
//! DB_DIR/hessians/<block>.<site>.safetensors   (with --keep-hessians)
//! DB_DIR/imatrix.gguf                      Σx² per input channel (llama.cpp's format)
//! ```
//!
//! Every file is written to a temporary name and renamed. The manifest is
//! rewritten after each layer, so a killed build resumes where it stopped; an
//! entry is reused only if its file's sha256 matches the manifest.

mod build;
pub mod space;

use std::path::{Path, PathBuf};

use dynapress_compress::{BufferDtype, NamedBuffer, QuantMeta, QuantizedLinear};
use dynapress_ggml::GgmlType;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

pub use build::{BuildOptions, BuildReport, build_database, fallback_summary};
pub use space::{Choice, HeadLayer, HeadTensor, LevelOption, SearchSpace, SpaceLayer};

use crate::calib::CalibSource;
use crate::error::{Error, Result};
use crate::model::{LinearId, LinearKind, Model, ModelFiles};

/// The importance matrix of the calibration data (llama.cpp's GGUF imatrix
/// format, names as in GGUF files), written when a build completes.
pub const IMATRIX_FILE: &str = "imatrix.gguf";

/// Manifest format version; bumped when the layout changes.
pub const FORMAT_VERSION: u32 = 1;

pub use dynapress_compress::method::{
    DEFAULT_GGML_TYPES, DEFAULT_SPARSITIES, FALLBACK_GGML_TYPES, GgmlBlocks, KQUANT_GGML_TYPES,
    LevelSparsity, LevelSpec, Method, MethodError, MethodSpec, SparseLevel, Variant,
};

/// What identifies the model a database belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelIdentity {
    /// Where it was loaded from (informational; not compared).
    pub dir: String,
    pub architecture: String,
    pub num_layers: usize,
    /// sha256 of config.json (for a GGUF input: of the imported one).
    pub config_sha256: String,
    /// sha256 over the safetensors files (names and bytes, in name order); for
    /// a GGUF input, over the GGUF file.
    pub weights_sha256: String,
}

impl ModelIdentity {
    /// Hashes a model's configuration and weights. For a GGUF input these are
    /// the imported `config.json` and the GGUF file itself.
    pub fn of(files: &ModelFiles) -> Result<Self> {
        use sha2::{Digest, Sha256};
        let config_sha256 = crate::fsutil::hex(&Sha256::digest(files.config_json()?));
        let mut h = Sha256::new();
        for (name, digest) in files.weight_digests()? {
            h.update(name);
            h.update(digest.as_bytes());
        }
        Ok(ModelIdentity {
            dir: files.dir.display().to_string(),
            architecture: files.config.arch.model_type().to_string(),
            num_layers: files.config.num_layers,
            config_sha256,
            weights_sha256: crate::fsutil::hex(&h.finalize()),
        })
    }

    /// Same model (the directory may have moved).
    pub fn same_model(&self, other: &ModelIdentity) -> bool {
        self.config_sha256 == other.config_sha256 && self.weights_sha256 == other.weights_sha256
    }
}

/// The calibration data a database was built from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibIdentity {
    pub sources: Vec<CalibSource>,
    pub seq_len: usize,
    pub windows: usize,
    pub tokens: usize,
}

impl CalibIdentity {
    /// Same data: file contents and windows (paths may differ).
    pub fn same_data(&self, other: &CalibIdentity) -> bool {
        let key = |c: &CalibIdentity| {
            c.sources
                .iter()
                .map(|s| (s.sha256.clone(), s.windows))
                .collect::<Vec<_>>()
        };
        self.seq_len == other.seq_len && self.tokens == other.tokens && key(self) == key(other)
    }
}

/// One stored variant of one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Hugging Face weight name.
    pub layer: String,
    pub block: usize,
    pub kind: LinearKind,
    /// Level name (e.g. `gptq-b4-g128`).
    pub level: String,
    pub bits: u8,
    pub rows: usize,
    pub cols: usize,
    /// Exact stored bits: codes, scales, zeros and permutation.
    pub storage_bits: u64,
    /// `storage_bits / (rows · cols)`.
    pub bits_per_weight: f64,
    /// `tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)` on the calibration activations.
    pub rel_error: f64,
    /// GPTQ: the relative damping finally used (larger than asked if the
    /// Hessian needed it).
    pub damp: Option<f64>,
    /// File, relative to the database directory.
    pub file: String,
    /// sha256 of the file.
    pub sha256: String,
}

impl Entry {
    /// The layer id.
    pub fn id(&self) -> LinearId {
        LinearId {
            block: self.block,
            kind: self.kind,
        }
    }
}

/// A level that a layer cannot have.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unavailable {
    pub layer: String,
    pub level: String,
    pub reason: String,
}

/// A kept Hessian.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HessianEntry {
    pub block: usize,
    pub site: crate::model::Site,
    pub dim: usize,
    pub tokens: u64,
    pub file: String,
    pub sha256: String,
}

/// `DB_DIR/manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub dynapress_version: String,
    pub model: ModelIdentity,
    pub calibration: CalibIdentity,
    pub method: MethodSpec,
    /// Level names, lowest bits first.
    pub levels: Vec<String>,
    /// Every entry written so far, sorted by (block, kind, storage).
    pub entries: Vec<Entry>,
    /// (layer, level) pairs that cannot exist (a ggml type whose block does
    /// not divide the layer's rows): known to the search and the report.
    #[serde(default)]
    pub unavailable: Vec<Unavailable>,
    pub hessians: Vec<HessianEntry>,
    /// True once every entry exists.
    pub complete: bool,
}

impl Manifest {
    /// Reads `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join("manifest.json");
        let text = crate::fsutil::read_text_limited(&path, 1 << 30)?;
        Manifest::parse(&text, &path)
    }

    /// Parses the text of a `manifest.json`; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest> {
        let path = path.to_path_buf();
        let m: Manifest = serde_json::from_str(text)
            .map_err(|e| Error::data(&path, format!("not a dynapress database manifest: {e}")))?;
        if m.format != "dynapress-database" {
            return Err(Error::data(&path, "not a dynapress database manifest"));
        }
        if m.format_version > FORMAT_VERSION {
            return Err(Error::data(
                &path,
                format!(
                    "database format {} is newer than this dynapress supports ({FORMAT_VERSION}); upgrade dynapress",
                    m.format_version
                ),
            ));
        }
        Ok(m)
    }

    /// Writes `dir/manifest.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("manifest serialises");
        crate::fsutil::write_atomic(&dir.join("manifest.json"), text.as_bytes())
    }

    /// The entry of a layer at a level, if built.
    pub fn entry(&self, id: LinearId, level: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.block == id.block && e.kind == id.kind && e.level == level)
    }

    /// Entries of one layer, smallest first.
    pub fn layer_entries(&self, id: LinearId) -> Vec<&Entry> {
        let mut v: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| e.block == id.block && e.kind == id.kind)
            .collect();
        v.sort_by_key(|e| e.storage_bits);
        v
    }

    /// The level name with `bits` nominal bits.
    pub fn level_for_bits(&self, bits: u8) -> Option<String> {
        self.method
            .levels()
            .ok()?
            .into_iter()
            .find(|l| l.bits == bits)
            .map(|l| l.name)
    }
}

/// An opened database.
pub struct Database {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// The searched layers and their levels, read once from the manifest.
    pub space: SearchSpace,
}

impl Database {
    /// Opens a complete database.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.join("manifest.json").exists() {
            return Err(Error::data(
                dir,
                "no manifest.json: not a dynapress database (build one with `dynapress database`)",
            ));
        }
        let manifest = Manifest::read(dir)?;
        if !manifest.complete {
            return Err(Error::data(
                dir,
                "the database is incomplete (its build was interrupted); rerun the same `dynapress database` command to finish it",
            ));
        }
        verify_entries(&manifest, dir)?;
        let space = SearchSpace::from_manifest(&manifest)?;
        Ok(Database {
            dir: dir.to_path_buf(),
            manifest,
            space,
        })
    }

    /// Refuses a model other than the one the database was built from.
    pub fn check_model(&self, files: &ModelFiles) -> Result<()> {
        let id = ModelIdentity::of(files)?;
        if !id.same_model(&self.manifest.model) {
            return Err(Error::data(
                &self.dir,
                format!(
                    "this database was built from another model ({}); the model in {} has different config.json or weights",
                    self.manifest.model.dir,
                    files.dir.display()
                ),
            ));
        }
        for (i, e) in self.manifest.entries.iter().enumerate() {
            if e.block >= files.config.num_layers || e.id().shape(&files.config) != (e.rows, e.cols)
            {
                return Err(Error::data(
                    self.dir.join("manifest.json"),
                    format!(
                        "entries[{i}] ({}) states {}×{}, which is not a layer of the model in {}; rebuild the database",
                        e.layer,
                        e.rows,
                        e.cols,
                        files.dir.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Where the database keeps its importance matrix (ggml-type methods).
    pub fn imatrix_path(&self) -> PathBuf {
        self.dir.join(IMATRIX_FILE)
    }

    /// The importance matrix, if the method made one (read once per caller).
    pub fn imatrix(&self) -> Result<Option<dynapress_gguf::Imatrix>> {
        if !(self.manifest.method.imatrix && self.manifest.method.is_ggml()) {
            return Ok(None);
        }
        let p = self.imatrix_path();
        match dynapress_gguf::Imatrix::read_gguf(&p) {
            Ok(m) => Ok(Some(m)),
            Err(_) if !p.exists() => Ok(None),
            Err(e) => Err(Error::data(&p, e.to_string())),
        }
    }

    /// The importance of the output layer's inputs (mean squares per input
    /// column) from the database's imatrix, if it has one: what the output
    /// tensor (or a tied `token_embd`) is encoded with in a GGUF.
    pub fn head_importance(&self) -> Result<Option<Vec<f32>>> {
        Ok(self.imatrix()?.and_then(|im| {
            im.entries
                .get("output.weight")
                .or_else(|| im.entries.get("token_embd.weight"))
                .map(|e| e.mean_squares())
        }))
    }

    /// Loads and verifies one entry.
    pub fn load(&self, entry: &Entry) -> Result<Variant> {
        load_entry_file(&self.dir, entry)
    }

    /// Replaces every linear layer of `model` with its entry at the level
    /// chosen by `choose` (dequantized to f32).
    pub fn apply(
        &self,
        model: &mut Model,
        choose: impl Fn(LinearId) -> Option<String>,
    ) -> Result<()> {
        for id in model.linear_ids() {
            let Some(level) = choose(id) else { continue };
            let entry = self.manifest.entry(id, &level).ok_or_else(|| {
                Error::data(
                    &self.dir,
                    format!("no entry for {} at level {level}", id.weight_name()),
                )
            })?;
            let q = self.load(entry)?;
            let w = candle_core::Tensor::from_vec(
                q.dequantize()?,
                (q.rows(), q.cols()),
                model.device(),
            )?;
            model.set_linear(id, &w)?;
        }
        Ok(())
    }
}

impl Database {
    /// Gives every linear layer the level with `bits` bits.
    pub fn apply_uniform(&self, model: &mut Model, bits: u8) -> Result<String> {
        let level = self.manifest.level_for_bits(bits).ok_or_else(|| {
            Error::data(
                &self.dir,
                format!(
                    "the database has no {bits}-bit level (it has {:?})",
                    self.manifest.levels
                ),
            )
        })?;
        self.apply(model, |_| Some(level.clone()))?;
        Ok(level)
    }
}

/// Serialises a variant to safetensors bytes (one metadata key, so the bytes
/// are deterministic).
pub fn entry_bytes(layer: &str, level: &str, v: &Variant) -> Vec<u8> {
    let (buffers, meta) = match v {
        Variant::Grid(q) => (
            q.to_buffers(),
            serde_json::json!({ "layer": layer, "level": level, "quant": q.meta() }),
        ),
        Variant::Sparse(sp) => (
            sp.to_buffers(),
            serde_json::json!({ "layer": layer, "level": level, "sparse": sp.meta() }),
        ),
        Variant::Ggml(g) => (
            vec![NamedBuffer {
                name: "blocks".into(),
                dtype: BufferDtype::U8,
                shape: vec![g.rows, g.bytes.len() / g.rows.max(1)],
                data: g.bytes.clone(),
            }],
            serde_json::json!({
                "layer": layer, "level": level,
                "ggml": { "type": g.ty.name(), "rows": g.rows, "cols": g.cols },
            }),
        ),
    };
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = buffers
        .iter()
        .map(|b| {
            let dtype = match b.dtype {
                BufferDtype::U8 => Dtype::U8,
                BufferDtype::F16 => Dtype::F16,
                BufferDtype::U16 => Dtype::U16,
                BufferDtype::U32 => Dtype::U32,
            };
            (
                b.name.clone(),
                safetensors::tensor::TensorView::new(dtype, b.shape.clone(), &b.data)
                    .expect("buffer sizes match their shapes"),
            )
        })
        .collect();
    let mut md = std::collections::HashMap::new();
    md.insert("dynapress".to_string(), meta.to_string());
    safetensors::serialize(views, Some(md)).expect("in-memory serialisation")
}

/// Reads an entry file, checking its sha256 and contents.
pub fn load_entry_file(dir: &Path, entry: &Entry) -> Result<Variant> {
    let path = dir.join(&entry.file);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let sha = {
        use sha2::{Digest, Sha256};
        crate::fsutil::hex(&Sha256::digest(&bytes))
    };
    if sha != entry.sha256 {
        return Err(Error::data(
            &path,
            "checksum mismatch: the entry file is corrupt; rerun `dynapress database` to rebuild it",
        ));
    }
    parse_entry(&path, &bytes)
}

fn parse_entry(path: &Path, bytes: &[u8]) -> Result<Variant> {
    let bad = |msg: String| Error::data(path, msg);
    let (_, md) = SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
    let meta_json = md
        .metadata()
        .as_ref()
        .and_then(|m| m.get("dynapress"))
        .ok_or_else(|| bad("missing dynapress metadata".into()))?;
    let v: serde_json::Value =
        serde_json::from_str(meta_json).map_err(|e| bad(format!("bad metadata: {e}")))?;
    if let Some(g) = v.get("ggml") {
        let ty = g["type"]
            .as_str()
            .and_then(GgmlType::from_name)
            .ok_or_else(|| bad("bad ggml type in metadata".into()))?;
        let (rows, cols) = (
            g["rows"].as_u64().unwrap_or(0) as usize,
            g["cols"].as_u64().unwrap_or(0) as usize,
        );
        let blocks = st.tensor("blocks").map_err(|e| bad(e.to_string()))?;
        let want = ty.row_bytes(cols).map(|r| r * rows);
        if want != Some(blocks.data().len()) {
            return Err(bad(format!(
                "{} blocks of a {rows}×{cols} layer should take {want:?} bytes, found {}",
                ty.name(),
                blocks.data().len()
            )));
        }
        return Ok(Variant::Ggml(GgmlBlocks {
            ty,
            rows,
            cols,
            bytes: blocks.data().to_vec(),
        }));
    }
    let mut buffers = Vec::new();
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            Dtype::U8 => BufferDtype::U8,
            Dtype::F16 => BufferDtype::F16,
            Dtype::U16 => BufferDtype::U16,
            Dtype::U32 => BufferDtype::U32,
            other => return Err(bad(format!("unexpected dtype {other:?} for `{name}`"))),
        };
        buffers.push(NamedBuffer {
            name,
            dtype,
            shape: view.shape().to_vec(),
            data: view.data().to_vec(),
        });
    }
    if let Some(sparse) = v.get("sparse") {
        let meta: dynapress_compress::SparseMeta = serde_json::from_value(sparse.clone())
            .map_err(|e| bad(format!("bad sparsity metadata: {e}")))?;
        return dynapress_compress::SparseLinear::from_buffers(&meta, &buffers)
            .map(Variant::Sparse)
            .map_err(|e| bad(e.to_string()));
    }
    let meta: QuantMeta = serde_json::from_value(v["quant"].clone())
        .map_err(|e| bad(format!("bad quantization metadata: {e}")))?;
    QuantizedLinear::from_buffers(&meta, &buffers)
        .map(Variant::Grid)
        .map_err(|e| bad(e.to_string()))
}

/// Checks the numbers the manifest states for every entry (layer name, nominal
/// bits, rows, columns, storage bits, bits per weight) against what they are
/// computed from: the level's specification and the entry file's own header.
/// The search and the reports use these numbers, so they are not trusted.
pub fn verify_entries(m: &Manifest, dir: &Path) -> Result<()> {
    let path = dir.join("manifest.json");
    let specs = m.method.all_levels(true)?;
    let mut seen = std::collections::HashSet::new();
    for (i, e) in m.entries.iter().enumerate() {
        let bad = |msg: String| {
            Error::data(
                &path,
                format!(
                    "entries[{i}] ({} at {}): {msg}; the manifest was edited or is corrupt: rebuild the database (`dynapress database --force`)",
                    e.layer, e.level
                ),
            )
        };
        if e.layer != e.id().weight_name() {
            return Err(bad(format!(
                "layer name does not match block {} {}",
                e.block,
                e.kind.short_name()
            )));
        }
        match specs.iter().find(|l| l.name == e.level) {
            None => return Err(bad("unknown level".into())),
            Some(l) if l.bits != e.bits => {
                return Err(bad(format!("bits {} but the level has {}", e.bits, l.bits)));
            }
            Some(_) => {}
        }
        if !seen.insert((e.block, e.kind, e.level.as_str())) {
            return Err(bad("listed twice".into()));
        }
        let rel = Path::new(&e.file);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(bad(format!("file `{}` is outside the database", e.file)));
        }
        let (rows, cols, bytes) = entry_header_numbers(&dir.join(rel))?;
        if (rows, cols) != (e.rows, e.cols) {
            return Err(bad(format!(
                "states {}×{} but its file holds {rows}×{cols}",
                e.rows, e.cols
            )));
        }
        if e.storage_bits != 8 * bytes {
            return Err(bad(format!(
                "states {} storage bits but its file stores {}",
                e.storage_bits,
                8 * bytes
            )));
        }
        let bpw = e.storage_bits as f64 / (rows as f64 * cols as f64);
        if !(e.bits_per_weight - bpw).abs().le(&(1e-9 * bpw)) {
            return Err(bad(format!(
                "states {} bits per weight but storage bits / weights = {bpw}",
                e.bits_per_weight
            )));
        }
    }
    Ok(())
}

/// Rows, columns and stored bytes of an entry file, from its header alone.
fn entry_header_numbers(path: &Path) -> Result<(usize, usize, u64)> {
    use std::io::Read;
    let bad = |msg: &str| Error::data(path, format!("not a database entry file: {msg}"));
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(|e| Error::io(path, e))?;
    let n = u64::from_le_bytes(n);
    if n > (64 << 20) || n > len.saturating_sub(8) {
        return Err(bad("header length out of range"));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    let v: serde_json::Value =
        serde_json::from_slice(&header).map_err(|_| bad("header is not JSON"))?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad("header is not an object"))?;
    let mut bytes = 0u64;
    for (k, t) in obj {
        if k == "__metadata__" {
            continue;
        }
        let off = t.get("data_offsets").and_then(|o| o.as_array());
        match off.map(|o| {
            (
                o.first().and_then(|x| x.as_u64()),
                o.get(1).and_then(|x| x.as_u64()),
            )
        }) {
            Some((Some(a), Some(b))) if a <= b => bytes += b - a,
            _ => return Err(bad("bad data_offsets")),
        }
    }
    let meta: serde_json::Value = obj
        .get("__metadata__")
        .and_then(|m| m.get("dynapress"))
        .and_then(|m| m.as_str())
        .and_then(|m| serde_json::from_str(m).ok())
        .ok_or_else(|| bad("missing dynapress metadata"))?;
    let dims = meta
        .get("ggml")
        .or_else(|| meta.get("quant"))
        .or_else(|| meta.get("sparse"));
    let dim = |k: &str| {
        dims.and_then(|d| d.get(k))
            .and_then(|x| x.as_u64())
            .map(|x| x as usize)
    };
    match (dim("rows"), dim("cols")) {
        (Some(r), Some(c)) => Ok((r, c, bytes)),
        _ => Err(bad("metadata lacks rows and cols")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_levels_for_rows_k_quants_cannot_hold() {
        let spec = MethodSpec {
            method: Method::GptqKquant,
            types: KQUANT_GGML_TYPES.split(',').map(String::from).collect(),
            ..Default::default()
        };
        assert!(spec.needs_fallback(576).unwrap());
        assert!(spec.needs_fallback(896).unwrap());
        assert!(!spec.needs_fallback(1536).unwrap());
        let names: Vec<String> = spec
            .all_levels(true)
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert_eq!(
            names,
            [
                "gptq-Q2_K",
                "gptq-Q3_K",
                "gptq-IQ4_NL",
                "gptq-Q4_0",
                "gptq-Q4_K",
                "gptq-Q4_1",
                "gptq-Q5_0",
                "gptq-Q5_K",
                "gptq-Q5_1",
                "gptq-Q6_K",
                "gptq-Q8_0"
            ]
        );
        // Q8_0 is one of the types already: not repeated as a fallback.
        let fb = spec.fallback_levels().unwrap();
        assert_eq!(fb.len(), 5);
        assert!(fb.iter().all(|l| l.fallback));
        assert_eq!(spec.all_levels(false).unwrap().len(), 6);
        assert_eq!(
            spec.level("gptq-IQ4_NL").and_then(|l| l.ggml),
            Some(GgmlType::IQ4NL)
        );
        assert!(MethodSpec::default().fallback_levels().unwrap().is_empty());
    }

    #[test]
    fn default_ggml_types_are_the_i_and_k_quants_with_gptq() {
        let spec = MethodSpec {
            method: Method::GptqKquant,
            types: DEFAULT_GGML_TYPES.split(',').map(String::from).collect(),
            ..Default::default()
        };
        let levels = spec.all_levels(false).unwrap();
        assert_eq!(levels.len(), 12);
        assert!(levels.iter().all(|l| l.name.starts_with("gptq-")));
        // The i-quants' fallback for rows of 576 is IQ4_NL, already a
        // fallback level of the k-quants.
        let fb: Vec<String> = spec
            .fallback_levels()
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert!(fb.contains(&"gptq-IQ4_NL".to_string()), "{fb:?}");
    }
}
