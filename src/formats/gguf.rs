//! GGUF export of a searched configuration: every linear layer is written
//! with the exact ggml blocks its database entry holds (Q/K rows permuted as
//! llama.cpp expects for the `llama` architecture), embeddings and output at
//! chosen types (encoded with our ggml codecs, bit-exact with llama-quantize),
//! norms in F32, and the tokenizer and hyper-parameters as metadata.
//!
//! The same search result can also be written as a recipe for llama-quantize
//! (`--tensor-type` overrides), so the mix can be reproduced with llama.cpp
//! alone (with the database's `imatrix.gguf`).

use std::collections::BTreeMap;
use std::path::Path;

use dynapress_ggml::GgmlType;
use dynapress_gguf::model::{gguf_tensor_name, permute_qk_rows};
use dynapress_gguf::{
    GgufWriter, LlamaHparams, Metadata, TensorSpec, TokenizerMetadata, planned_size,
};

use crate::database::{Database, IMATRIX_FILE, Variant};
use crate::error::{Error, Result};
use crate::model::weights::to_f32;
use crate::model::{LinearId, ModelFiles};
use crate::search::{Choice, ConfigFile, SearchSpace};

/// Types of the tensors the search does not choose.
#[derive(Debug, Clone, Copy)]
pub struct GgufTypes {
    /// `token_embd.weight`.
    pub embed: GgmlType,
    /// `output.weight` (when the embeddings are not tied).
    pub output: GgmlType,
}

/// The types `token_embd` and `output` actually get for a checkpoint: the
/// chosen types, or llama-quantize's fallback where the rows cannot hold them
/// (`tensor_type_fallback`: Q6_K → Q8_0, Q4_K → Q5_0, Q5_K → Q5_1, Q2_K/Q3_K →
/// Q4_0; F16 when the rows are not a multiple of 32 either), never F32.
/// For tied checkpoints there is no `output` tensor: `token_embd` serves both
/// uses at the embedding type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EffectiveTypes {
    /// Row length of the embedding (the hidden size).
    pub cols: usize,
    /// The chosen embedding type.
    pub embed_asked: GgmlType,
    /// `token_embd.weight`'s type.
    pub embed: GgmlType,
    /// `output.weight`'s chosen and written types; `None` when tied.
    pub output: Option<(GgmlType, GgmlType)>,
}

impl EffectiveTypes {
    /// The types for `files` (tied when the checkpoint has no `lm_head.weight`).
    pub fn of(files: &ModelFiles, types: GgufTypes) -> Self {
        let cols = files.config.hidden_size;
        let tied = is_tied(files);
        EffectiveTypes {
            cols,
            embed_asked: types.embed,
            embed: types.embed.fallback_for_row(cols),
            output: (!tied).then(|| (types.output, types.output.fallback_for_row(cols))),
        }
    }

    /// How the budget messages name these tensors, e.g. `token_embd (Q8_0:
    /// rows of 576 cannot hold Q6_K), shared with the output`.
    pub fn describe(&self) -> String {
        let one = |asked: GgmlType, got: GgmlType| {
            if asked == got {
                asked.name().to_string()
            } else {
                format!("{got}: rows of {} cannot hold {asked}", self.cols)
            }
        };
        match self.output {
            None => format!(
                "token_embd ({}; tied, it is the output too)",
                one(self.embed_asked, self.embed)
            ),
            Some((asked, got)) => format!(
                "token_embd ({}), output ({})",
                one(self.embed_asked, self.embed),
                one(asked, got)
            ),
        }
    }

    /// What to change to make them smaller.
    fn smaller_hint(&self) -> &'static str {
        match self.output {
            None => "a smaller --embed-type",
            Some(_) => "a smaller --embed-type/--output-type",
        }
    }
}

/// Whether the GGUF file has no `output.weight` (the checkpoint has no
/// `lm_head.weight`: tied embeddings), so `token_embd` is the output layer too.
pub fn is_tied(files: &ModelFiles) -> bool {
    !files.weights.names().iter().any(|n| n == "lm_head.weight")
}

impl Default for GgufTypes {
    fn default() -> Self {
        GgufTypes {
            embed: GgmlType::Q6K,
            output: GgmlType::Q6K,
        }
    }
}

fn gerr(path: &Path) -> impl Fn(dynapress_gguf::GgufError) -> Error + '_ {
    move |e| Error::Data {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}

/// What a GGUF written from `files` says besides its tensors: the
/// hyper-parameters, `general.name` and the `tokenizer.*` keys. From a
/// Hugging Face checkpoint they are converted from its JSON files; from a GGUF
/// input they are the input's own (its tokenizer keys copied as they are, so
/// a SentencePiece or any other vocabulary llama.cpp reads survives).
struct Header {
    hparams: LlamaHparams,
    name: String,
    tokenizer: Metadata,
}

impl Header {
    fn of(files: &ModelFiles) -> Result<Self> {
        let dir = &files.dir;
        let name = files.name();
        if let Some(g) = files.gguf() {
            let mut tokenizer = Metadata::new();
            for (k, v) in g.metadata.iter() {
                if k.starts_with("tokenizer.") {
                    tokenizer.set(k, v.clone());
                }
            }
            return Ok(Header {
                hparams: g.hparams.clone(),
                name,
                tokenizer,
            });
        }
        let json = |file: &str| -> Result<Option<serde_json::Value>> {
            match files.side_file(file)? {
                None => Ok(None),
                Some(bytes) => serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| Error::config(dir.join(file), format!("not valid JSON: {e}"))),
            }
        };
        let config = json("config.json")?
            .ok_or_else(|| Error::config(dir.join("config.json"), "file not found"))?;
        let hparams = LlamaHparams::from_hf_config(&config).map_err(gerr(dir))?;
        let tokenizer_json = json("tokenizer.json")?.ok_or_else(|| {
            Error::data(
                dir.join("tokenizer.json"),
                "not found (only tokenizer.json tokenizers are supported)",
            )
        })?;
        let tok = TokenizerMetadata::from_hf_json(
            &tokenizer_json,
            json("tokenizer_config.json")?.as_ref(),
            Some(&config),
            json("generation_config.json")?.as_ref(),
            Some(hparams.vocab_size as usize),
        )
        .map_err(gerr(dir))?;
        let mut tokenizer = Metadata::new();
        tok.write_metadata(&mut tokenizer);
        Ok(Header {
            hparams,
            name,
            tokenizer,
        })
    }

    /// The file's metadata, in the order [`dynapress_gguf::model_metadata`]
    /// writes it.
    fn metadata(&self, file_type: u32) -> Metadata {
        let mut md = Metadata::new();
        self.hparams.write_metadata(&mut md);
        dynapress_gguf::model::write_general(&mut md, &self.name, file_type);
        for (k, v) in self.tokenizer.iter() {
            md.set(k, v.clone());
        }
        md
    }
}

/// What goes into the file: metadata, and for every tensor its GGUF spec and
/// where its bytes come from.
struct Plan {
    metadata: Metadata,
    hparams: LlamaHparams,
    tensors: Vec<(TensorSpec, Source)>,
}

enum Source {
    /// A linear layer from the database (layer index in the search space).
    Linear(usize),
    /// A checkpoint tensor encoded to the spec's type.
    Checkpoint(String),
    /// Llama 3 RoPE frequency factors.
    RopeFreqs(Vec<f32>),
}

fn plan(
    files: &ModelFiles,
    db: &Database,
    space: &SearchSpace,
    choice: &Choice,
    types: GgufTypes,
) -> Result<Plan> {
    let dir = &files.dir;
    let header = Header::of(files)?;
    let hparams = header.hparams.clone();
    // The file type is the most common linear type.
    let mut counts: BTreeMap<GgmlType, usize> = BTreeMap::new();
    let mut linear_types = Vec::with_capacity(space.layers.len());
    for (l, &k) in space.layers.iter().zip(choice) {
        let e = db.manifest.entry(l.id, &l.levels[k].level).ok_or_else(|| {
            Error::Invalid(format!(
                "no database entry for {} at {}",
                l.id.weight_name(),
                l.levels[k].level
            ))
        })?;
        let ty = ggml_type_of(&db.manifest, &e.level).ok_or_else(|| {
            Error::data(
                &db.dir,
                "GGUF export needs a database of ggml types: build it with --method kquant or gptq-kquant",
            )
        })?;
        *counts.entry(ty).or_default() += 1;
        linear_types.push(ty);
    }
    let main = counts
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(t, _)| *t)
        .unwrap_or(GgmlType::Q4K);
    let mut metadata = header.metadata(dynapress_gguf::model::file_type_for(main));
    // The same provenance keys llama-quantize writes when given an imatrix.
    if db.manifest.method.imatrix && db.manifest.method.is_ggml() {
        let im = db.dir.join(IMATRIX_FILE);
        if let Ok(m) = dynapress_gguf::Imatrix::read_gguf(&im) {
            metadata.set("quantize.imatrix.file", im.display().to_string());
            metadata.set("quantize.imatrix.dataset", m.datasets.join(", "));
            metadata.set("quantize.imatrix.entries_count", m.entries.len() as u32);
            metadata.set("quantize.imatrix.chunks_count", m.chunk_count);
        }
    }

    let index: BTreeMap<LinearId, usize> = space
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| (l.id, i))
        .collect();
    let eff = EffectiveTypes::of(files, types);
    let mut tensors = Vec::new();
    for hf in files.weights.names() {
        let Some(gname) = gguf_tensor_name(&hf).map_err(gerr(dir))? else {
            continue;
        };
        let shape = files.weights.shape(&hf)?;
        let (ty, src) = match LinearId::parse(&hf).and_then(|id| index.get(&id)) {
            Some(&i) if hf.ends_with(".weight") => (linear_types[i], Source::Linear(i)),
            _ => {
                let cols = *shape.last().unwrap_or(&1);
                let ty = if shape.len() == 1 {
                    GgmlType::F32
                } else if gname == "token_embd.weight" {
                    types.embed.fallback_for_row(cols)
                } else if gname == "output.weight" {
                    eff.output
                        .map_or(types.output, |(asked, _)| asked)
                        .fallback_for_row(cols)
                } else {
                    GgmlType::F32
                };
                (ty, Source::Checkpoint(hf.clone()))
            }
        };
        tensors.push((TensorSpec::from_shape(gname, ty, &shape), src));
    }
    if let Some(freqs) = hparams.rope_freqs() {
        let n = freqs.len();
        tensors.push((
            TensorSpec::from_shape(
                dynapress_gguf::model::ROPE_FREQS_TENSOR,
                GgmlType::F32,
                &[n],
            ),
            Source::RopeFreqs(freqs),
        ));
    }
    tensors.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    Ok(Plan {
        metadata,
        hparams,
        tensors,
    })
}

/// The ggml type of a database level, if it is one.
pub fn ggml_type_of(manifest: &crate::database::Manifest, level: &str) -> Option<GgmlType> {
    manifest.method.level(level).and_then(|l| l.ggml)
}

/// Bytes of the file outside the searched linear layers' data (header,
/// metadata, embeddings, output, norms, alignment), for converting a file-size
/// budget into a bits-per-weight budget.
pub fn fixed_bytes(
    files: &ModelFiles,
    db: &Database,
    space: &SearchSpace,
    types: GgufTypes,
) -> Result<u64> {
    let low = space.lowest();
    let p = plan(files, db, space, &low, types)?;
    let specs: Vec<TensorSpec> = p.tensors.iter().map(|(s, _)| s.clone()).collect();
    let total = planned_size(&p.metadata, &specs).map_err(gerr(&files.dir))?;
    let linear: u64 = space.storage_bits(&low) / 8;
    Ok(total - linear)
}

/// The bits-per-weight budget of the searched layers that makes the GGUF
/// file at most `bytes` long.
pub fn bits_for_file_size(
    files: &ModelFiles,
    db: &Database,
    space: &SearchSpace,
    types: GgufTypes,
    bytes: u64,
) -> Result<f64> {
    let fixed = fixed_bytes(files, db, space, types)?;
    let eff = EffectiveTypes::of(files, types);
    if bytes <= fixed {
        return Err(Error::Invalid(format!(
            "a {bytes}-byte file cannot hold this model: metadata, {} and norms alone take {fixed} bytes; \
             raise --target-size or choose {}",
            eff.describe(),
            eff.smaller_hint()
        )));
    }
    let bits = (bytes - fixed) as f64 * 8.0 / space.total_params as f64;
    let lowest = space.bits_per_weight(&space.lowest());
    if bits < lowest {
        // The smallest file this database can make with these types.
        let min_bytes = fixed + (lowest * space.total_params as f64 / 8.0).ceil() as u64;
        return Err(Error::Invalid(format!(
            "a {bytes}-byte file leaves {bits:.4} bits per weight for the linear layers after \
             {}, below the lowest level ({} at {lowest:.4}); \
             the smallest file with these types is about {min_bytes} bytes: raise --target-size \
             or choose {}",
            eff.describe(),
            space.levels[0],
            eff.smaller_hint(),
        )));
    }
    Ok(bits)
}

/// What was written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GgufReport {
    pub path: String,
    pub bytes: u64,
    pub tensor_types: BTreeMap<String, String>,
}

/// Writes the GGUF model file of `config`.
pub fn export_gguf(
    files: &ModelFiles,
    db: &Database,
    config: &ConfigFile,
    config_path: &Path,
    out: &Path,
    types: GgufTypes,
) -> Result<GgufReport> {
    let space = SearchSpace::from_manifest(&db.manifest)?;
    let choice = config.choice(&space, config_path)?;
    let p = plan(files, db, &space, &choice, types)?;
    let head_importance = read_head_importance(db);
    let specs: Vec<TensorSpec> = p.tensors.iter().map(|(s, _)| s.clone()).collect();
    let mut w = GgufWriter::create(out, &p.metadata, specs).map_err(gerr(out))?;
    let mut tensor_types = BTreeMap::new();
    for (spec, src) in &p.tensors {
        let bytes = match src {
            Source::Linear(i) => {
                let l = &space.layers[*i];
                let e = db
                    .manifest
                    .entry(l.id, &l.levels[choice[*i]].level)
                    .expect("planned");
                let Variant::Ggml(g) = db.load(e)? else {
                    return Err(Error::data(&db.dir, "not a ggml entry"));
                };
                g.bytes
            }
            Source::Checkpoint(hf) => {
                let raw = files.weights.raw(hf)?;
                let values = to_f32(&raw, hf)?;
                let cols = *raw.shape.last().unwrap_or(&1);
                // The output's importance; a tied token_embd is the output.
                let head = spec.name == "output.weight"
                    || (spec.name == "token_embd.weight" && is_tied(files));
                let imatrix = head.then_some(head_importance.as_deref()).flatten();
                encode(spec.ggml_type, &values, cols, imatrix)
                    .map_err(|e| Error::Invalid(format!("{hf}: {e}")))?
            }
            Source::RopeFreqs(f) => f.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        let bytes = match p.hparams.qk_permute_heads(&spec.name) {
            Some(n_head) => {
                let rows = spec.dims.get(1).copied().unwrap_or(1) as usize;
                permute_qk_rows(&bytes, rows, n_head).map_err(gerr(out))?
            }
            None => bytes,
        };
        w.write_tensor(&spec.name, &bytes).map_err(gerr(out))?;
        tensor_types.insert(spec.name.clone(), spec.ggml_type.name().to_string());
    }
    w.finish().map_err(gerr(out))?;
    let bytes = std::fs::metadata(out).map_err(|e| Error::io(out, e))?.len();
    Ok(GgufReport {
        path: out.display().to_string(),
        bytes,
        tensor_types,
    })
}

/// The output layer's importance from the database's imatrix, if present.
fn read_head_importance(db: &Database) -> Option<Vec<f32>> {
    let im = dynapress_gguf::Imatrix::read_gguf(db.dir.join(IMATRIX_FILE)).ok()?;
    im.entries
        .get("output.weight")
        .or_else(|| im.entries.get("token_embd.weight"))
        .map(|e| e.mean_squares())
}

fn encode(
    ty: GgmlType,
    values: &[f32],
    cols: usize,
    imatrix: Option<&[f32]>,
) -> std::result::Result<Vec<u8>, String> {
    match ty {
        GgmlType::F32 => Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        _ => dynapress_ggml::quantize(ty, values, cols, imatrix).map_err(|e| e.to_string()),
    }
}

/// A `--tensor-type-file` for llama-quantize that reproduces the
/// configuration's linear types (one `^name$=type` per line; llama-quantize
/// reads the file as whitespace-separated overrides, so it holds nothing else).
pub fn llama_quantize_recipe(
    db: &Database,
    config: &ConfigFile,
    config_path: &Path,
) -> Result<String> {
    let space = SearchSpace::from_manifest(&db.manifest)?;
    let choice = config.choice(&space, config_path)?;
    let mut lines = Vec::new();
    for (l, &k) in space.layers.iter().zip(&choice) {
        let ty = ggml_type_of(&db.manifest, &l.levels[k].level).ok_or_else(|| {
            Error::data(
                &db.dir,
                "a llama-quantize recipe needs a database of ggml types",
            )
        })?;
        let name = gguf_tensor_name(&l.id.weight_name())
            .ok()
            .flatten()
            .ok_or_else(|| Error::Invalid(format!("no GGUF name for {}", l.id.weight_name())))?;
        lines.push(format!(
            "^{}$={}",
            regex_escape(&name),
            ty.name().to_lowercase()
        ));
    }
    Ok(lines.join("\n") + "\n")
}

/// The llama-quantize command line that applies a recipe file.
pub fn llama_quantize_command(db: &Database, recipe: &Path, types: GgufTypes) -> String {
    format!(
        "llama-quantize --imatrix {} --token-embedding-type {} --output-tensor-type {} --tensor-type-file {} MODEL-F32-OR-BF16.gguf OUT.gguf Q4_K_M",
        db.dir.join(IMATRIX_FILE).display(),
        types.embed.name().to_lowercase(),
        types.output.name().to_lowercase(),
        recipe.display()
    )
}

fn regex_escape(s: &str) -> String {
    s.replace('.', "\\.")
}

/// Writes the checkpoint as a GGUF file with every matrix at `ty` (F32, F16,
/// BF16 or a quantized type, encoded as llama-quantize would with
/// `imatrix`; a matrix whose rows cannot hold `ty` gets llama-quantize's
/// fallback type, as with `--pure`), norms in F32: the input llama.cpp's tools
/// start from.
pub fn convert_gguf(
    files: &ModelFiles,
    out: &Path,
    ty: GgmlType,
    imatrix: Option<&dynapress_gguf::Imatrix>,
) -> Result<GgufReport> {
    let dir = &files.dir;
    let header = Header::of(files)?;
    let hparams = &header.hparams;
    let metadata = header.metadata(dynapress_gguf::model::file_type_for(ty));
    let mut items: Vec<(TensorSpec, Option<String>)> = Vec::new();
    for hf in files.weights.names() {
        let Some(gname) = gguf_tensor_name(&hf).map_err(gerr(dir))? else {
            continue;
        };
        let shape = files.weights.shape(&hf)?;
        let cols = *shape.last().unwrap_or(&1);
        // Rows a block type cannot hold get llama-quantize's fallback type.
        let t = if shape.len() == 1 {
            GgmlType::F32
        } else {
            ty.fallback_for_row(cols)
        };
        items.push((TensorSpec::from_shape(gname, t, &shape), Some(hf)));
    }
    if let Some(freqs) = hparams.rope_freqs() {
        let n = freqs.len();
        items.push((
            TensorSpec::from_shape(
                dynapress_gguf::model::ROPE_FREQS_TENSOR,
                GgmlType::F32,
                &[n],
            ),
            None,
        ));
    }
    items.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let specs: Vec<TensorSpec> = items.iter().map(|(s, _)| s.clone()).collect();
    let mut w = GgufWriter::create(out, &metadata, specs).map_err(gerr(out))?;
    let mut tensor_types = BTreeMap::new();
    for (spec, hf) in &items {
        let bytes = match hf {
            Some(hf) => {
                let raw = files.weights.raw(hf)?;
                let values = to_f32(&raw, hf)?;
                let cols = *raw.shape.last().unwrap_or(&1);
                let im = imatrix
                    .and_then(|m| m.entries.get(&spec.name))
                    .map(|e| e.mean_squares());
                encode(spec.ggml_type, &values, cols, im.as_deref())
                    .map_err(|e| Error::Invalid(format!("{hf}: {e}")))?
            }
            None => hparams
                .rope_freqs()
                .unwrap_or_default()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        };
        let bytes = match hparams.qk_permute_heads(&spec.name) {
            Some(n_head) => {
                let rows = spec.dims.get(1).copied().unwrap_or(1) as usize;
                permute_qk_rows(&bytes, rows, n_head).map_err(gerr(out))?
            }
            None => bytes,
        };
        w.write_tensor(&spec.name, &bytes).map_err(gerr(out))?;
        tensor_types.insert(spec.name.clone(), spec.ggml_type.name().to_string());
    }
    w.finish().map_err(gerr(out))?;
    let bytes = std::fs::metadata(out).map_err(|e| Error::io(out, e))?.len();
    Ok(GgufReport {
        path: out.display().to_string(),
        bytes,
        tensor_types,
    })
}
