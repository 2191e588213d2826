//! Hugging Face causal LMs of the Llama family: loading and the forward pass.
//!
//! [`ModelFiles`] opens a checkpoint: a directory (config, tokenizer,
//! memory-mapped safetensors), a GGUF file (imported in memory) or a packed
//! directory; [`ModelSource`] says which, and what is known about it. [`Model`] holds the weights as f32 tensors and runs
//! `embed → blocks → head`; each part is public so calibration can run the
//! model block by block, and every linear weight can be read or replaced by
//! its Hugging Face name.

mod attention;
pub mod config;
mod decoder;
pub mod depth;
pub mod generate;
pub(crate) mod kernels;
pub mod logits;
mod rope;
pub mod synthetic;
pub mod tokenizer;
pub mod weights;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use dynapress_ggml::GgmlType;

pub use attention::{AttentionParams, attention, attention_reference};
pub use config::{Architecture, ModelConfig, RopeScaling};
pub use decoder::{Block, Capture, Head, KvCache, LinearId, LinearKind, Scratch, Site};
pub use depth::{DepthConfig, Sublayer, SublayerId};
pub use rope::Rope;
pub use tokenizer::Tokenizer;
pub use weights::WeightSource;

use crate::error::{Error, Result};

/// The files of a checkpoint, opened but not yet loaded.
#[derive(Clone)]
pub struct ModelFiles {
    /// The path the model was opened from: a directory, a `.gguf` file or a
    /// `.dpk` pack. Read its files through [`ModelFiles::side_file`] and
    /// [`ModelFiles::side_files`], which know each kind.
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    pub weights: WeightSource,
    /// What kind of checkpoint this is.
    pub source: ModelSource,
}

/// Where a model's files are.
#[derive(Clone)]
pub enum ModelSource {
    /// A Hugging Face directory: its files are on disk.
    Dir,
    /// A GGUF file, imported into Hugging Face form in memory.
    Gguf(Arc<GgufInput>),
    /// A directory packed with `dynapress pack`: its non-weight files, decoded.
    Packed(Arc<Vec<(String, Vec<u8>)>>),
}

/// What a GGUF input keeps besides its imported weights.
pub struct GgufInput {
    /// The file's metadata (`general.*`, the architecture, `tokenizer.*`).
    pub metadata: dynapress_gguf::Metadata,
    /// The hyper-parameters as read from the metadata.
    pub hparams: dynapress_gguf::LlamaHparams,
    /// Each weight's storage type in the file, by Hugging Face name.
    pub types: BTreeMap<String, GgmlType>,
    /// The imported `config.json` (pretty-printed).
    pub config_json: String,
    /// The imported `tokenizer.json`.
    pub tokenizer_json: String,
}

impl ModelFiles {
    /// Opens a model: a Hugging Face directory (`config.json`,
    /// `tokenizer.json`, `generation_config.json` if present, safetensors
    /// weights) or a GGUF file (imported into the same form in memory, every
    /// tensor dequantized to f32).
    pub fn open(dir: &Path) -> Result<Self> {
        if is_gguf_path(dir) {
            return Self::open_gguf(dir);
        }
        if dir.is_file()
            && dir
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("dpk"))
        {
            return Self::open_packed(dir);
        }
        if !dir.exists() {
            return Err(Error::config(
                dir,
                "model directory not found (expected a Hugging Face directory with config.json, tokenizer.json and *.safetensors)",
            ));
        }
        if !dir.is_dir() {
            return Err(Error::config(
                dir,
                "not a directory; pass a Hugging Face model directory",
            ));
        }
        let config_path = dir.join("config.json");
        if !config_path.exists() {
            return Err(Error::config(
                &config_path,
                "file not found; a Hugging Face model directory needs config.json",
            ));
        }
        let mut config = ModelConfig::from_file(&config_path)?;
        let gen_path = dir.join("generation_config.json");
        if gen_path.exists() {
            apply_generation_config(&mut config, &gen_path)?;
        }
        let tokenizer = Tokenizer::from_file(
            &dir.join("tokenizer.json"),
            config.eos_token_ids.first().copied(),
        )?;
        let weights = WeightSource::open_dir(dir)?;
        Ok(ModelFiles {
            dir: dir.to_path_buf(),
            config,
            tokenizer,
            weights,
            source: ModelSource::Dir,
        })
    }

    /// Imports a GGUF model file: F32, F16 and BF16 tensors keep their values
    /// and dtype (F32 stays f32, F16/BF16 are held as 16-bit safetensors);
    /// quantized tensors are dequantized to f32. The import is built tensor
    /// by tensor, so it peaks at its own size plus one tensor.
    pub fn open_gguf(path: &Path) -> Result<Self> {
        Self::open_gguf_as(path, false)
    }

    /// Opens a GGUF model file for [`Model::from_files`] only: no tensor is
    /// decoded until it is loaded, so loading holds the f32 model and one
    /// tensor, not the import beside it. [`WeightSource::raw`] is unavailable
    /// on the result (use [`Self::open_gguf`] for exporting or calibrating).
    pub fn open_gguf_for_loading(path: &Path) -> Result<Self> {
        Self::open_gguf_as(path, true)
    }

    fn open_gguf_as(path: &Path, lazy: bool) -> Result<Self> {
        let gerr = |e| gguf_error(path, e);
        let file = dynapress_gguf::GgufFile::open(path).map_err(gerr)?;
        let imported = dynapress_gguf::import_lazy(&file).map_err(gerr)?;
        // A NaN or infinite epsilon becomes JSON null, which would read as the default.
        if !imported
            .config
            .get("rms_norm_eps")
            .and_then(|v| v.as_f64())
            .is_some_and(|e| e.is_finite() && e >= 0.0)
        {
            return Err(Error::data(
                path,
                "attention.layer_norm_rms_epsilon is not a finite non-negative number; the file is corrupt",
            ));
        }
        let mut config_value = imported.config.clone();
        let types = imported.types();
        // The dtype the weights are held in: 16-bit when every matrix is.
        let matrix_dtypes: std::collections::BTreeSet<_> = imported
            .tensors
            .iter()
            .filter(|t| t.shape.len() == 2)
            .map(|t| gguf_held_dtype(t.ggml_type))
            .collect();
        if let (Some(&d), 1) = (matrix_dtypes.first(), matrix_dtypes.len()) {
            let name = match d {
                safetensors::Dtype::F16 => "float16",
                safetensors::Dtype::BF16 => "bfloat16",
                _ => "float32",
            };
            if let Some(o) = config_value.as_object_mut() {
                o.insert("torch_dtype".into(), name.into());
            }
        }
        let config = ModelConfig::from_json(&config_value, path)?;
        let tokenizer = Tokenizer::from_json(
            &imported.tokenizer_json,
            path,
            config.eos_token_ids.first().copied(),
        )?;
        let source = ModelSource::Gguf(Arc::new(GgufInput {
            metadata: file.metadata().clone(),
            hparams: imported.hparams.clone(),
            types,
            config_json: serde_json::to_string_pretty(&config_value).expect("json") + "\n",
            tokenizer_json: imported.tokenizer_json.clone(),
        }));
        let weights = if lazy {
            WeightSource::from_gguf(path, file, imported)
        } else {
            let bytes = serialize_gguf_import(path, &file, &imported)?;
            drop(file);
            WeightSource::from_buffers(path, vec![(path.to_path_buf(), bytes)])?
        };
        Ok(ModelFiles {
            dir: path.to_path_buf(),
            config,
            tokenizer,
            weights,
            source,
        })
    }

    /// Opens a model directory packed with `dynapress pack`, decoding it into memory.
    pub fn open_packed(path: &Path) -> Result<Self> {
        let perr = |e: dynapress_pack::Error| Error::Data {
            path: path.to_path_buf(),
            msg: e.to_string(),
        };
        let reader = dynapress_pack::PackedReader::open(path).map_err(perr)?;
        let read_text = |name: &str| -> Result<Option<String>> {
            if !reader.contains(name) {
                return Ok(None);
            }
            let bytes = reader.read_file(name).map_err(perr)?;
            String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| Error::data(path, format!("{name} in the pack is not UTF-8")))
        };
        let config_text = read_text("config.json")?.ok_or_else(|| {
            Error::data(
                path,
                "the pack holds no config.json: not a packed model directory",
            )
        })?;
        let value: serde_json::Value = serde_json::from_str(&config_text).map_err(|e| {
            Error::data(
                path,
                format!("config.json in the pack is not valid JSON: {e}"),
            )
        })?;
        let mut config = ModelConfig::from_json(&value, &path.join("config.json"))?;
        if let Some(g) = read_text("generation_config.json")? {
            apply_generation_config_text(&mut config, &g, &path.join("generation_config.json"))?;
        }
        let tok = read_text("tokenizer.json")?.ok_or_else(|| Error::Tokenizer {
            path: path.join("tokenizer.json"),
            msg: "the pack holds no tokenizer.json".into(),
        })?;
        let tokenizer = Tokenizer::from_json(
            &tok,
            &path.join("tokenizer.json"),
            config.eos_token_ids.first().copied(),
        )?;
        let mut buffers = Vec::new();
        let mut side = Vec::new();
        for f in reader.files() {
            if f.name.ends_with(".safetensors") {
                buffers.push((path.join(&f.name), reader.read_file(&f.name).map_err(perr)?));
            } else if f.name != "model.safetensors.index.json" {
                side.push((f.name.clone(), reader.read_file(&f.name).map_err(perr)?));
            }
        }
        if buffers.is_empty() {
            return Err(Error::data(path, "the pack holds no safetensors weights"));
        }
        let weights = WeightSource::from_buffers(path, buffers)?;
        Ok(ModelFiles {
            dir: path.to_path_buf(),
            config,
            tokenizer,
            weights,
            source: ModelSource::Packed(Arc::new(side)),
        })
    }

    /// The imported GGUF, when the model is one.
    pub fn gguf(&self) -> Option<&GgufInput> {
        match &self.source {
            ModelSource::Gguf(g) => Some(g),
            _ => None,
        }
    }

    /// The contents of one of the checkpoint's non-weight files
    /// (`config.json`, `tokenizer.json`, `tokenizer_config.json`, …), or
    /// `None` when it has none by that name. A GGUF input has the
    /// `config.json` and `tokenizer.json` it was imported into.
    pub fn side_file(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match &self.source {
            ModelSource::Dir => {
                let p = self.dir.join(name);
                match std::fs::read(&p) {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(Error::io(&p, e)),
                }
            }
            ModelSource::Gguf(g) => Ok(match name {
                "config.json" => Some(g.config_json.clone().into_bytes()),
                "tokenizer.json" => Some(g.tokenizer_json.clone().into_bytes()),
                _ => None,
            }),
            ModelSource::Packed(side) => {
                Ok(side.iter().find(|(n, _)| n == name).map(|(_, b)| b.clone()))
            }
        }
    }

    /// `config.json`, which every checkpoint has.
    pub fn config_json(&self) -> Result<Vec<u8>> {
        self.side_file("config.json")?
            .ok_or_else(|| Error::config(self.dir.join("config.json"), "file not found"))
    }

    /// Every non-weight file of the checkpoint (what a Hugging Face export
    /// copies), by file name: a directory's files other than safetensors and
    /// hidden ones; a GGUF's imported `config.json` and `tokenizer.json`.
    pub fn side_files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        match &self.source {
            ModelSource::Dir => {
                let dir = &self.dir;
                let mut out = Vec::new();
                for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
                    let entry = entry.map_err(|e| Error::io(dir, e))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if !entry.path().is_file()
                        || name.ends_with(".safetensors")
                        || name == "model.safetensors.index.json"
                        || name.starts_with('.')
                    {
                        continue;
                    }
                    let bytes =
                        std::fs::read(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
                    out.push((name, bytes));
                }
                out.sort();
                Ok(out)
            }
            ModelSource::Gguf(g) => Ok(vec![
                ("config.json".into(), g.config_json.clone().into_bytes()),
                (
                    "tokenizer.json".into(),
                    g.tokenizer_json.clone().into_bytes(),
                ),
            ]),
            ModelSource::Packed(side) => Ok(side.as_ref().clone()),
        }
    }

    /// Whether the checkpoint has no `lm_head.weight` (tied embeddings): the
    /// embedding is the output layer too.
    pub fn is_tied(&self) -> bool {
        !self.weights.names().iter().any(|n| n == "lm_head.weight")
    }

    /// A short name for the model: a GGUF's `general.name`, else the file or
    /// directory name (without `.gguf`/`.dpk`).
    pub fn name(&self) -> String {
        if let Some(n) = self
            .gguf()
            .and_then(|g| g.metadata.get("general.name"))
            .and_then(|v| v.as_str())
            .filter(|n| !n.is_empty())
        {
            return n.to_string();
        }
        let stem = match self.source {
            ModelSource::Dir => self.dir.file_name(),
            _ => self.dir.file_stem(),
        };
        stem.map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    }

    /// sha256 (hex) of every weight file, by file name, in path order: a
    /// directory's safetensors files, a pack's decoded safetensors, or the GGUF
    /// file itself.
    pub fn weight_digests(&self) -> Result<Vec<(String, String)>> {
        let name_of = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        if let ModelSource::Gguf(_) = self.source {
            return Ok(vec![(
                name_of(&self.dir),
                crate::fsutil::sha256_file(&self.dir)?,
            )]);
        }
        let mut files = self.weights.file_sha256()?;
        files.sort_by(|a, b| a.0.cmp(b.0));
        Ok(files
            .into_iter()
            .map(|(p, hash)| (name_of(p), hash))
            .collect())
    }

    /// Loads the embedding matrix `[vocab, hidden]`.
    pub fn load_embedding(&self, device: &Device) -> Result<Tensor> {
        let c = &self.config;
        self.weights.load(
            "model.embed_tokens.weight",
            &[c.vocab_size, c.hidden_size],
            device,
        )
    }

    /// Loads the final norm and LM head (the embedding when tied; pass it in to
    /// share the memory).
    pub fn load_head(&self, embedding: Option<&Tensor>, device: &Device) -> Result<Head> {
        let c = &self.config;
        let norm = self
            .weights
            .load("model.norm.weight", &[c.hidden_size], device)?;
        let weight = if c.tie_word_embeddings {
            match embedding {
                Some(e) => e.clone(),
                None => self.load_embedding(device)?,
            }
        } else {
            self.weights
                .load("lm_head.weight", &[c.vocab_size, c.hidden_size], device)?
        };
        Ok(Head {
            norm,
            weight,
            eps: c.rms_norm_eps as f32,
        })
    }

    /// Loads transformer block `index`.
    pub fn load_block(&self, index: usize, device: &Device) -> Result<Block> {
        Block::load(&self.weights, &self.config, index, device)
    }

    /// Every linear layer of the model, block by block in checkpoint order.
    pub fn linear_ids(&self) -> Vec<LinearId> {
        linear_ids(&self.config)
    }
}

/// Every linear layer of a configuration, block by block.
pub fn linear_ids(cfg: &ModelConfig) -> Vec<LinearId> {
    (0..cfg.num_layers)
        .flat_map(|block| LinearKind::ALL.map(|kind| LinearId { block, kind }))
        .collect()
}

fn apply_generation_config(config: &mut ModelConfig, path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    apply_generation_config_text(config, &text, path)
}

fn apply_generation_config_text(config: &mut ModelConfig, text: &str, path: &Path) -> Result<()> {
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Error::config(path, format!("not valid JSON: {e}")))?;
    let ids = |key: &str| -> Vec<u32> {
        match v.get(key) {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as u32)
                .collect(),
            Some(x) => x.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
            None => vec![],
        }
    };
    let eos = ids("eos_token_id");
    if !eos.is_empty() {
        config.eos_token_ids = eos;
    }
    if let Some(&b) = ids("bos_token_id").first() {
        config.bos_token_id = Some(b);
    }
    Ok(())
}

fn check_same_shape(name: &str, old: &Tensor, new: &Tensor) -> Result<()> {
    if old.dims() != new.dims() {
        return Err(Error::Tensor {
            name: name.to_string(),
            msg: format!("shape {:?} does not match {:?}", new.dims(), old.dims()),
        });
    }
    Ok(())
}

/// A loaded model: embeddings, blocks and head as f32 tensors on one device.
#[derive(Clone)]
pub struct Model {
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    dir: PathBuf,
    device: Device,
    embedding: Tensor,
    blocks: Vec<Block>,
    head: Head,
    rope: Rope,
}

impl Model {
    /// Loads a Hugging Face model directory onto the CPU.
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_on(dir, &Device::Cpu)
    }

    /// Loads a Hugging Face model directory onto `device`.
    pub fn load_on(dir: &Path, device: &Device) -> Result<Self> {
        let files = if is_gguf_path(dir) {
            ModelFiles::open_gguf_for_loading(dir)?
        } else {
            ModelFiles::open(dir)?
        };
        Self::from_files(&files, device)
    }

    /// Loads every tensor of opened model files.
    pub fn from_files(files: &ModelFiles, device: &Device) -> Result<Self> {
        let embedding = files.load_embedding(device)?;
        let head = files.load_head(Some(&embedding), device)?;
        let blocks = (0..files.config.num_layers)
            .map(|i| files.load_block(i, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Model {
            rope: Rope::new(&files.config),
            config: files.config.clone(),
            tokenizer: files.tokenizer.clone(),
            dir: files.dir.clone(),
            device: device.clone(),
            embedding,
            blocks,
            head,
        })
    }

    /// The directory the model was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The transformer blocks.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// The final norm and LM head.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// RoPE frequencies.
    pub fn rope(&self) -> &Rope {
        &self.rope
    }

    /// Token embeddings `[b, t, hidden]` of `ids` given as `b` rows of `t`.
    pub fn embed(&self, ids: &[u32], b: usize, t: usize) -> Result<Tensor> {
        assert_eq!(ids.len(), b * t, "ids must hold b × t tokens");
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.config.vocab_size) {
            return Err(Error::Invalid(format!(
                "token id {bad} is outside the model's vocabulary of {}",
                self.config.vocab_size
            )));
        }
        let ids = Tensor::from_slice(ids, b * t, &self.device)?;
        Ok(self
            .embedding
            .index_select(&ids, 0)?
            .reshape((b, t, self.config.hidden_size))?)
    }

    /// Logits `[b, t, vocab]` for `b` independent sequences of `t` tokens starting at position 0.
    pub fn forward(&self, ids: &[u32], b: usize, t: usize) -> Result<Tensor> {
        if let Some(logits) = self.forward_fast(ids, b, t)? {
            return Ok(logits);
        }
        self.forward_reference(ids, b, t)
    }

    /// Logits of [`Model::forward`] as one flat `[b·t·vocab]` vector, without
    /// the extra copy a tensor round trip costs on the fused CPU path.
    pub fn forward_vec(&self, ids: &[u32], b: usize, t: usize) -> Result<Vec<f32>> {
        if let Some(logits) = self.forward_fast_vec(ids, b, t)? {
            return Ok(logits);
        }
        Ok(self
            .forward_reference(ids, b, t)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }

    /// The last block's output (before the final norm), flat `[b·t·hidden]`:
    /// with [`Model::head_logits`] on slices of its rows, the logits of
    /// [`Model::forward_vec`] a few rows at a time, so that a caller never
    /// holds `[b·t, vocab]` at once.
    pub fn hidden_vec(&self, ids: &[u32], b: usize, t: usize) -> Result<Vec<f32>> {
        if let Some(xs) = self.hidden_fast_vec(ids, b, t)? {
            return Ok(xs);
        }
        let mut x = self.embed(ids, b, t)?;
        let (cos, sin) = self.rope.tables(0, t, &self.device)?;
        for block in &self.blocks {
            x = block.forward_reference(&x, &cos, &sin, None, None)?;
        }
        Ok(x.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Logits `[rows·vocab]` of hidden states `[rows·hidden]` from
    /// [`Model::hidden_vec`]: the final norm and the LM head.
    pub fn head_logits(&self, x: &[f32]) -> Result<Vec<f32>> {
        let mut xn = Vec::new();
        if self.device.is_cpu()
            && let Some(logits) = self.head.forward_fast(x, &mut xn)
        {
            return Ok(logits);
        }
        let h = self.config.hidden_size;
        let x = Tensor::from_slice(x, (1, x.len() / h, h), &self.device)?;
        Ok(self.head.forward(&x)?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// The fused CPU forward pass; `None` when the weights are not f32 CPU tensors.
    fn forward_fast(&self, ids: &[u32], b: usize, t: usize) -> Result<Option<Tensor>> {
        match self.forward_fast_vec(ids, b, t)? {
            Some(logits) => Ok(Some(Tensor::from_vec(
                logits,
                (b, t, self.config.vocab_size),
                &self.device,
            )?)),
            None => Ok(None),
        }
    }

    fn forward_fast_vec(&self, ids: &[u32], b: usize, t: usize) -> Result<Option<Vec<f32>>> {
        let Some(xs) = self.hidden_fast_vec(ids, b, t)? else {
            return Ok(None);
        };
        let mut xn = Vec::new();
        Ok(self.head.forward_fast(&xs, &mut xn))
    }

    /// The fused CPU blocks; `None` when the weights are not f32 CPU tensors.
    fn hidden_fast_vec(&self, ids: &[u32], b: usize, t: usize) -> Result<Option<Vec<f32>>> {
        if !self.device.is_cpu() || !self.blocks.iter().all(Block::fast_path_available) {
            return Ok(None);
        }
        let x = self.embed(ids, b, t)?;
        let mut xs = x.flatten_all()?.to_vec1::<f32>()?;
        let (cos, sin) = self.rope.tables_vec(0, t);
        let mut scratch = Scratch::default();
        for block in &self.blocks {
            block.forward_fast(&mut xs, b, t, &cos, &sin, &mut scratch, None)?;
        }
        Ok(Some(xs))
    }

    /// The forward pass written with candle ops only (the oracle for the fused path).
    pub fn forward_reference(&self, ids: &[u32], b: usize, t: usize) -> Result<Tensor> {
        let mut x = self.embed(ids, b, t)?;
        let (cos, sin) = self.rope.tables(0, t, &self.device)?;
        for block in &self.blocks {
            x = block.forward_reference(&x, &cos, &sin, None, None)?;
        }
        self.head.forward(&x)
    }

    /// Logits for `ids [b, t]` appended after the positions in `caches` (one per block).
    pub fn forward_cached(
        &self,
        ids: &[u32],
        b: usize,
        t: usize,
        caches: &mut [KvCache],
    ) -> Result<Tensor> {
        assert_eq!(caches.len(), self.blocks.len());
        // A block whose attention is dropped caches nothing: take the longest.
        let offset = caches.iter().map(KvCache::len).max().unwrap_or(0);
        let mut x = self.embed(ids, b, t)?;
        let (cos, sin) = self.rope.tables(offset, t, &self.device)?;
        for (block, cache) in self.blocks.iter().zip(caches.iter_mut()) {
            x = block.forward(&x, &cos, &sin, Some(cache), None)?;
        }
        self.head.forward(&x)
    }

    /// The current weight `[out, in]` of a linear layer, by Hugging Face name.
    pub fn linear_weight(&self, name: &str) -> Result<Tensor> {
        let id = self.resolve(name)?;
        self.blocks[id.block].linear_weight(id.kind)
    }

    /// Replaces a linear layer's weight, by Hugging Face name
    /// (`model.layers.3.mlp.down_proj.weight`); shapes must match.
    pub fn set_linear_weight(&mut self, name: &str, weight: &Tensor) -> Result<()> {
        let id = self.resolve(name)?;
        self.blocks[id.block].set_linear_weight(id.kind, weight)
    }

    /// Replaces a linear layer's weight by id.
    pub fn set_linear(&mut self, id: LinearId, weight: &Tensor) -> Result<()> {
        if id.block >= self.blocks.len() {
            return Err(Error::UnknownLayer {
                name: id.weight_name(),
            });
        }
        self.blocks[id.block].set_linear_weight(id.kind, weight)
    }

    /// Every linear layer, block by block.
    pub fn linear_ids(&self) -> Vec<LinearId> {
        linear_ids(&self.config)
    }

    /// The token embedding `[vocab, hidden]`.
    pub fn embedding(&self) -> &Tensor {
        &self.embedding
    }

    /// Replaces the token embedding (the LM head keeps its own weight, also
    /// when the checkpoint ties them: see [`Model::set_head_weight`]).
    pub fn set_embedding(&mut self, weight: &Tensor) -> Result<()> {
        check_same_shape("model.embed_tokens.weight", &self.embedding, weight)?;
        self.embedding = weight.clone();
        Ok(())
    }

    /// Replaces the LM head's weight `[vocab, hidden]`.
    pub fn set_head_weight(&mut self, weight: &Tensor) -> Result<()> {
        check_same_shape("lm_head.weight", &self.head.weight, weight)?;
        self.head.weight = weight.clone();
        Ok(())
    }

    /// Drops (skips) or restores a sublayer of `block` (depth pruning): a
    /// dropped sublayer adds nothing to the residual stream in every forward
    /// path (fused, candle, KV cache, block by block).
    pub fn set_dropped(&mut self, block: usize, sublayer: Sublayer, dropped: bool) -> Result<()> {
        let n = self.blocks.len();
        let b = self.blocks.get_mut(block).ok_or_else(|| {
            Error::Invalid(format!(
                "block {block} does not exist; the model has {n} blocks"
            ))
        })?;
        b.set_dropped(sublayer, dropped);
        Ok(())
    }

    /// The dropped sublayers, in forward order.
    pub fn dropped(&self) -> Vec<SublayerId> {
        self.blocks
            .iter()
            .enumerate()
            .flat_map(|(block, b)| {
                Sublayer::ALL
                    .into_iter()
                    .filter(|&s| b.is_dropped(s))
                    .map(move |sublayer| SublayerId { block, sublayer })
            })
            .collect()
    }

    fn resolve(&self, name: &str) -> Result<LinearId> {
        LinearId::parse(name)
            .filter(|id| id.block < self.blocks.len())
            .ok_or_else(|| Error::UnknownLayer {
                name: name.to_string(),
            })
    }
}

/// The safetensors dtype an imported GGUF tensor is held in: F16 and BF16
/// stay 16-bit (exactly), everything else is f32.
fn gguf_held_dtype(ty: GgmlType) -> safetensors::Dtype {
    match ty {
        GgmlType::F16 => safetensors::Dtype::F16,
        GgmlType::BF16 => safetensors::Dtype::BF16,
        _ => safetensors::Dtype::F32,
    }
}

/// One imported GGUF tensor as a safetensors view that decodes its values
/// only when the serializer asks for them (the serializer asks one tensor at
/// a time, so the whole import is never held twice). A decoding error is
/// kept in `failed` and reported once serialization ends.
struct LazyGgufView<'a> {
    file: &'a dynapress_gguf::GgufFile,
    import: &'a dynapress_gguf::LazyImport,
    tensor: &'a dynapress_gguf::LazyTensor,
    dtype: safetensors::Dtype,
    failed: &'a std::cell::RefCell<Option<dynapress_gguf::GgufError>>,
}

impl safetensors::View for LazyGgufView<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.tensor.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        let values = match self.import.decode(self.file, self.tensor) {
            Ok(v) => v,
            Err(e) => {
                self.failed.borrow_mut().get_or_insert(e);
                return vec![0u8; self.data_len()].into();
            }
        };
        match self.dtype {
            safetensors::Dtype::F16 => values
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
            safetensors::Dtype::BF16 => values
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
            _ => bytemuck::cast_slice::<f32, u8>(&values).to_vec().into(),
        }
    }

    fn data_len(&self) -> usize {
        self.tensor.shape.iter().product::<usize>() * self.dtype.bitsize() / 8
    }
}

/// The whole import as one in-memory safetensors file.
fn serialize_gguf_import(
    path: &Path,
    file: &dynapress_gguf::GgufFile,
    import: &dynapress_gguf::LazyImport,
) -> Result<Vec<u8>> {
    let failed = std::cell::RefCell::new(None);
    let views = import.tensors.iter().map(|t| {
        (
            t.name.clone(),
            LazyGgufView {
                file,
                import,
                tensor: t,
                dtype: gguf_held_dtype(t.ggml_type),
                failed: &failed,
            },
        )
    });
    let bytes = safetensors::serialize(views, None).map_err(|e| Error::Data {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    if let Some(e) = failed.into_inner() {
        return Err(gguf_error(path, e));
    }
    Ok(bytes)
}

/// Whether `path` is a GGUF model file (by its extension).
fn is_gguf_path(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// A GGUF error as ours: most already begin with the file's path.
pub(crate) fn gguf_error(path: &Path, e: dynapress_gguf::GgufError) -> Error {
    let msg = e.to_string();
    if msg.starts_with(&path.display().to_string()) {
        Error::Invalid(msg)
    } else {
        Error::data(path, msg)
    }
}
