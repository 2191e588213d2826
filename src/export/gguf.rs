//! GGUF export of a searched configuration: every linear layer is written
//! with the exact ggml blocks its database entry holds (Q/K rows permuted as
//! llama.cpp expects for the `llama` architecture), embeddings and output at
//! chosen types (encoded with our ggml codecs, bit-exact with llama-quantize),
//! norms in F32, and the tokenizer and hyper-parameters as metadata.
//!
//! [`gguf_target`] converts a file-size budget into the bits per weight the
//! searched layers may use (the one place that does). The same search result
//! can also be written as a recipe for llama-quantize (`super::recipe`), and a
//! checkpoint converted at one type (`super::convert`); all three write
//! through [`write_gguf`].

use std::collections::BTreeMap;
use std::path::Path;

use dynapress_ggml::GgmlType;
use dynapress_gguf::model::{gguf_tensor_name, permute_qk_rows};
use dynapress_gguf::{
    GgufWriter, LlamaHparams, Metadata, TensorSpec, TokenizerMetadata, planned_size,
};

use super::TensorSink;
use crate::database::space::head_storage_bits;
use crate::database::{Choice, Database, HeadLayer, HeadTensor, LevelOption, Manifest, Variant};
use crate::error::{Error, Result};
use crate::model::weights::to_f32;
use crate::model::{LinearId, ModelFiles};
use crate::search::HeadSearch;
use crate::selection::{Budget, Selection, Target};

/// Types of the GGUF tensors outside the linear layers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GgufTypes {
    /// `token_embd.weight`.
    pub embed: GgmlType,
    /// `output.weight` (when the embeddings are not tied).
    pub output: GgmlType,
    /// Whether a file-size search chooses the embedding's type
    /// ([`head_search`]; `embed` is then where it starts, and the type when
    /// the budget is bits per weight).
    pub search_embed: bool,
    /// Whether a file-size search chooses the output's type.
    pub search_output: bool,
}

impl GgufTypes {
    /// These types with the ones a search chose (recorded in its
    /// configuration) in place of the searched ones.
    pub fn chosen(self, config: &crate::selection::ConfigFile) -> Result<Self> {
        let parse = |name: &String| {
            GgmlType::from_name(name).ok_or_else(|| {
                Error::Invalid(format!(
                    "the configuration's GGUF type `{name}` is not a ggml type"
                ))
            })
        };
        let mut t = self;
        if let (true, Some(e)) = (t.search_embed, &config.embed_type) {
            t.embed = parse(e)?;
        }
        if let (true, Some(o)) = (t.search_output, &config.output_type) {
            t.output = parse(o)?;
        }
        Ok(t)
    }
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
        let tied = files.is_tied();
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

impl Default for GgufTypes {
    /// Q6_K embedding and output (llama.cpp's choice in its K presets from
    /// Q3_K_M up), searched under a file-size budget.
    fn default() -> Self {
        GgufTypes {
            embed: GgmlType::Q6K,
            output: GgmlType::Q6K,
            search_embed: true,
            search_output: true,
        }
    }
}

/// The types a searched `token_embd` or `output` may take (each through
/// llama.cpp's fallback for rows it cannot hold): the k-quants and Q8_0.
pub const HEAD_TYPES: [GgmlType; 6] = [
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::Q8_0,
];

/// Bytes of a `rows × cols` tensor of type `ty` in a GGUF file: its data
/// padded to the alignment every tensor's data gets; `None` if the rows
/// cannot hold the type.
fn aligned_bytes(ty: GgmlType, rows: usize, cols: usize) -> Option<u64> {
    Some(((ty.row_bytes(cols)? * rows) as u64).next_multiple_of(GGUF_ALIGNMENT))
}

/// The levels of a `rows × cols` head tensor: each type as written (through
/// the row fallback) with its bytes in the file, smallest first, one per
/// distinct written type; and the index of the largest level no bigger than
/// `asked_bytes`.
fn head_levels(
    rows: usize,
    cols: usize,
    types: &[GgmlType],
    asked_bytes: u64,
) -> (Vec<LevelOption>, usize) {
    let mut written: Vec<(u64, GgmlType)> = types
        .iter()
        .map(|t| t.fallback_for_row(cols))
        .filter_map(|t| Some((aligned_bytes(t, rows, cols)?, t)))
        .collect();
    written.sort_by_key(|&(b, t)| (b, t.id()));
    written.dedup_by_key(|(_, t)| *t);
    let levels: Vec<LevelOption> = written
        .iter()
        .enumerate()
        .map(|(g, &(bytes, t))| LevelOption {
            level: t.name().to_string(),
            global: g,
            bits: t.bits_per_weight().round() as u8,
            storage_bits: bytes * 8,
            rel_error: 0.0,
        })
        .collect();
    let default = written
        .iter()
        .rposition(|&(b, _)| b <= asked_bytes)
        .unwrap_or(0);
    (levels, default)
}

/// GGUF's default data alignment (our writer's).
const GGUF_ALIGNMENT: u64 = 32;

/// The embedding and output as layers of a file-size search
/// ([`crate::search::HeadSearch`]): their levels, the bits the whole file
/// leaves for them and the linear layers, and where the search starts — the
/// asked types, or the largest smaller ones with which every linear layer at
/// its lowest level still fits. `None` when neither type is searched.
pub fn head_search(
    files: &ModelFiles,
    db: &Database,
    types: GgufTypes,
    bytes: u64,
) -> Result<Option<HeadSearch>> {
    let eff = EffectiveTypes::of(files, types);
    // A tied checkpoint has no output tensor to search.
    if !(types.search_embed || (types.search_output && eff.output.is_some())) {
        return Ok(None);
    }
    let (rows, cols) = (files.config.vocab_size, eff.cols);
    let mut head = Vec::new();
    let mut at_asked = 0u64;
    for (tensor, asked, searched) in [
        (HeadTensor::Embed, types.embed, types.search_embed),
        (HeadTensor::Output, types.output, types.search_output),
    ] {
        if tensor == HeadTensor::Output && eff.output.is_none() {
            continue; // tied: token_embd is the output too
        }
        let list: &[GgmlType] = if searched { &HEAD_TYPES } else { &[asked] };
        // The fallback always fits the rows (F16 at worst).
        let asked_bytes = aligned_bytes(asked.fallback_for_row(cols), rows, cols)
            .expect("a row fallback holds the rows");
        let (levels, default) = head_levels(rows, cols, list, asked_bytes);
        at_asked += asked_bytes;
        head.push(HeadLayer {
            tensor,
            params: (rows * cols) as u64,
            levels,
            default,
        });
    }
    // Everything but the head tensors and the linear layers' data.
    let fixed = fixed_bytes(files, db, types)? - at_asked;
    let linear_low = db.space.storage_bits(&db.space.lowest());
    let smallest: u64 = head.iter().map(|l| l.levels[0].storage_bits).sum();
    let budget_bits = bytes.saturating_sub(fixed) * 8;
    if budget_bits < linear_low + smallest {
        let min_bytes = fixed + (linear_low + smallest).div_ceil(8);
        let names: Vec<&str> = head
            .iter()
            .map(|h| h.tensor.gguf_name().trim_end_matches(".weight"))
            .collect();
        let smallest_types: Vec<&str> = head.iter().map(|h| h.levels[0].level.as_str()).collect();
        return Err(Error::budget(format!(
            "a {bytes}-byte file cannot hold this model: metadata and norms take {fixed} bytes, \
             every linear layer at its lowest level ({}) {} bytes and {} at {} smallest type{} ({}{}) {} bytes; \
             the smallest file is about {min_bytes} bytes: raise --target-size",
            db.space.levels[0],
            linear_low / 8,
            names.join(" and "),
            if names.len() == 1 { "its" } else { "their" },
            if names.len() == 1 { "" } else { "s" },
            smallest_types.join(", "),
            if eff.output.is_none() {
                "; tied, it is the output too"
            } else {
                ""
            },
            smallest / 8,
        )));
    }
    // Lower the largest head tensor until the lowest linear levels fit.
    let at_defaults = |h: &[HeadLayer]| {
        let d: Vec<usize> = h.iter().map(|l| l.default).collect();
        head_storage_bits(h, &d)
    };
    while budget_bits < linear_low + at_defaults(&head) {
        let j = (0..head.len())
            .filter(|&j| head[j].default > 0)
            .max_by_key(|&j| {
                (
                    head[j].levels[head[j].default].storage_bits,
                    std::cmp::Reverse(j),
                )
            })
            .expect("the smallest types fit");
        head[j].default -= 1;
    }
    Ok(Some(HeadSearch {
        layers: head,
        budget_bits,
    }))
}

pub(super) fn gerr(path: &Path) -> impl Fn(dynapress_gguf::GgufError) -> Error + '_ {
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
pub(super) struct Header {
    pub(super) hparams: LlamaHparams,
    name: String,
    tokenizer: Metadata,
}

impl Header {
    pub(super) fn of(files: &ModelFiles) -> Result<Self> {
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
    pub(super) fn metadata(&self, file_type: u32) -> Metadata {
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
    choice: &Choice,
    types: GgufTypes,
    imatrix: Option<&dynapress_gguf::Imatrix>,
) -> Result<Plan> {
    let space = &db.space;
    let dir = &files.dir;
    let header = Header::of(files)?;
    let hparams = header.hparams.clone();
    // The file type is the most common linear type.
    let mut counts: BTreeMap<GgmlType, usize> = BTreeMap::new();
    let mut linear_types = Vec::with_capacity(space.layers.len());
    for (l, &k) in space.layers.iter().zip(choice) {
        let e = db.manifest.entry(l.id, &l.levels[k].level).ok_or_else(|| {
            Error::layer(
                l.id.weight_name(),
                format!("no database entry at {}", l.levels[k].level),
            )
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
    if let Some(m) = imatrix {
        let im = db.imatrix_path();
        metadata.set("quantize.imatrix.file", im.display().to_string());
        metadata.set("quantize.imatrix.dataset", m.datasets.join(", "));
        metadata.set("quantize.imatrix.entries_count", m.entries.len() as u32);
        metadata.set("quantize.imatrix.chunks_count", m.chunk_count);
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
pub fn ggml_type_of(manifest: &Manifest, level: &str) -> Option<GgmlType> {
    manifest.method.level(level).and_then(|l| l.ggml)
}

/// Bytes of the file outside the searched linear layers' data (header,
/// metadata, embeddings, output, norms, alignment), for converting a file-size
/// budget into a bits-per-weight budget.
pub fn fixed_bytes(files: &ModelFiles, db: &Database, types: GgufTypes) -> Result<u64> {
    let space = &db.space;
    let low = space.lowest();
    // The imatrix provenance keys are part of the file's metadata.
    let p = plan(files, db, &low, types, db.imatrix()?.as_ref())?;
    let specs: Vec<TensorSpec> = p.tensors.iter().map(|(s, _)| s.clone()).collect();
    let total = planned_size(&p.metadata, &specs).map_err(gerr(&files.dir))?;
    let linear: u64 = space.storage_bits(&low) / 8;
    Ok(total - linear)
}

/// The budget of a GGUF file at most `bytes` long: the bits per weight its
/// searched layers may average once the fixed part is paid. The only place a
/// file size becomes bits.
pub fn gguf_target(
    files: &ModelFiles,
    db: &Database,
    types: GgufTypes,
    bytes: u64,
) -> Result<Target> {
    let space = &db.space;
    let fixed = fixed_bytes(files, db, types)?;
    let eff = EffectiveTypes::of(files, types);
    if bytes <= fixed {
        return Err(Error::budget(format!(
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
        return Err(Error::budget(format!(
            "a {bytes}-byte file leaves {bits:.4} bits per weight for the linear layers after \
             {}, below the lowest level ({} at {lowest:.4}); \
             the smallest file with these types is about {min_bytes} bytes: raise --target-size \
             or choose {}",
            eff.describe(),
            space.levels[0],
            eff.smaller_hint(),
        )));
    }
    Ok(Target {
        budget: Budget::GgufBytes(bytes),
        bits,
    })
}

/// What was written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GgufReport {
    pub path: String,
    pub bytes: u64,
    pub tensor_types: BTreeMap<String, String>,
}

/// Writes the GGUF model file of a selection.
pub fn export_gguf(
    files: &ModelFiles,
    sel: &Selection,
    out: &Path,
    types: GgufTypes,
) -> Result<GgufReport> {
    let db = sel.db;
    let types = types.chosen(&sel.config)?;
    let imatrix = db.imatrix()?;
    let p = plan(files, db, &sel.choice, types, imatrix.as_ref())?;
    let head_importance = db.head_importance()?;
    write_gguf(out, &p.metadata, &p.hparams, p.tensors, |spec, src| {
        Ok(match src {
            Source::Linear(i) => {
                let l = &db.space.layers[*i];
                let e = db
                    .manifest
                    .entry(l.id, &l.levels[sel.choice[*i]].level)
                    .expect("planned");
                let Variant::Ggml(g) = db.load(e)? else {
                    return Err(Error::data(&db.dir, "not a ggml entry"));
                };
                g.bytes
            }
            Source::Checkpoint(hf) => {
                // The output's importance; a tied token_embd is the output.
                let head = spec.name == "output.weight"
                    || (spec.name == "token_embd.weight" && files.is_tied());
                let imatrix = head.then_some(head_importance.as_deref()).flatten();
                encode_checkpoint(files, hf, spec.ggml_type, imatrix)?
            }
            Source::RopeFreqs(f) => f.iter().flat_map(|v| v.to_le_bytes()).collect(),
        })
    })
}

/// Writes a GGUF file: `tensors` in order, each one's bytes from `bytes_of`
/// (Q/K rows permuted as llama.cpp expects), through the file's
/// [`TensorSink`]; the file appears complete or not at all.
pub(super) fn write_gguf<S>(
    out: &Path,
    metadata: &Metadata,
    hparams: &LlamaHparams,
    tensors: Vec<(TensorSpec, S)>,
    mut bytes_of: impl FnMut(&TensorSpec, &S) -> Result<Vec<u8>>,
) -> Result<GgufReport> {
    let specs: Vec<TensorSpec> = tensors.iter().map(|(s, _)| s.clone()).collect();
    let mut w = GgufSink {
        writer: GgufWriter::create(out, metadata, specs).map_err(gerr(out))?,
        path: out,
    };
    let mut tensor_types = BTreeMap::new();
    for (spec, src) in &tensors {
        let bytes = bytes_of(spec, src)?;
        let bytes = match hparams.qk_permute_heads(&spec.name) {
            Some(n_head) => {
                let rows = spec.dims.get(1).copied().unwrap_or(1) as usize;
                permute_qk_rows(&bytes, rows, n_head).map_err(gerr(out))?
            }
            None => bytes,
        };
        w.tensor(&spec.name, &bytes)?;
        tensor_types.insert(spec.name.clone(), spec.ggml_type.name().to_string());
    }
    w.finish()?;
    let bytes = std::fs::metadata(out).map_err(|e| Error::io(out, e))?.len();
    Ok(GgufReport {
        path: out.display().to_string(),
        bytes,
        tensor_types,
    })
}

/// A GGUF file being written, as a [`TensorSink`].
struct GgufSink<'a> {
    writer: GgufWriter,
    path: &'a Path,
}

impl TensorSink for GgufSink<'_> {
    fn tensor(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        self.writer
            .write_tensor(name, bytes)
            .map_err(gerr(self.path))
    }

    fn finish(self) -> Result<()> {
        self.writer.finish().map_err(gerr(self.path))
    }
}

/// A checkpoint tensor encoded at `ty` (F32 as is, else our ggml codecs).
pub(super) fn encode_checkpoint(
    files: &ModelFiles,
    hf: &str,
    ty: GgmlType,
    imatrix: Option<&[f32]>,
) -> Result<Vec<u8>> {
    let raw = files.weights.raw(hf)?;
    let values = to_f32(&raw, hf)?;
    let cols = *raw.shape.last().unwrap_or(&1);
    encode(ty, &values, cols, imatrix).map_err(|msg| Error::Tensor {
        name: hf.to_string(),
        msg,
    })
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
