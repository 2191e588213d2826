//! Calibration: token windows from text, and a block-by-block forward pass
//! over them that keeps only the current block's input activations.
//!
//! The activations entering block `i+1` are the output of the *uncompressed*
//! block `i`. The database stores, for each layer, variants measured against
//! the original model's activations, so an entry does not depend on the
//! levels other layers will get later (see docs/database.md).

use std::path::PathBuf;

use candle_core::Device;

use crate::data::load_tokens;
use crate::error::{Error, Result};
use crate::model::{Block, Capture, ModelConfig, ModelFiles, Rope, Scratch, Site, Tokenizer};

/// Where calibration tokens come from.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct CalibSource {
    pub path: PathBuf,
    /// sha256 of the file's bytes.
    pub sha256: String,
    /// Tokens in the whole file.
    pub file_tokens: usize,
    /// Windows taken from it.
    pub windows: usize,
}

/// Calibration windows: `n_windows × seq_len` token ids.
#[derive(Debug, Clone)]
pub struct CalibSet {
    pub seq_len: usize,
    pub ids: Vec<u32>,
    pub sources: Vec<CalibSource>,
}

impl CalibSet {
    /// Number of windows.
    pub fn windows(&self) -> usize {
        self.ids.len() / self.seq_len
    }

    /// Number of tokens.
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }
}

pub use crate::fsutil::{hex, sha256_file};

/// Builds `tokens / seq_len` windows split evenly across `files`, each file's
/// windows spread evenly over it (deterministic; no window crosses another).
pub fn load_calibration(
    files: &[PathBuf],
    tokenizer: &Tokenizer,
    tokens: usize,
    seq_len: usize,
) -> Result<CalibSet> {
    if files.is_empty() {
        return Err(Error::option(
            "--calib",
            "no calibration file given (--calib FILE)",
        ));
    }
    if seq_len < 2 {
        return Err(Error::option(
            "--seq-len",
            "calibration seq-len must be at least 2",
        ));
    }
    let want = tokens / seq_len;
    if want == 0 {
        return Err(Error::option(
            "--calib-tokens",
            format!("--calib-tokens {tokens} is less than one window of {seq_len} tokens"),
        ));
    }
    let mut streams = Vec::new();
    for path in files {
        let t = load_tokens(path, tokenizer)?;
        let available = t.len() / seq_len;
        if available == 0 {
            return Err(Error::data(
                path,
                format!(
                    "only {} tokens, fewer than one calibration window of {seq_len}",
                    t.len()
                ),
            ));
        }
        streams.push((path.clone(), sha256_file(path)?, t, available));
    }
    // Split the windows evenly, giving leftovers to files that still have room.
    let mut quota = vec![0usize; streams.len()];
    let mut left = want;
    loop {
        let open: Vec<usize> = (0..streams.len())
            .filter(|&i| quota[i] < streams[i].3)
            .collect();
        if left == 0 || open.is_empty() {
            break;
        }
        let share = (left / open.len()).max(1);
        for i in open {
            let add = share.min(streams[i].3 - quota[i]).min(left);
            quota[i] += add;
            left -= add;
        }
    }
    if left > 0 {
        let have: usize = quota.iter().sum();
        return Err(Error::option(
            "--calib-tokens",
            format!(
                "the calibration files hold {have} windows of {seq_len} tokens ({} tokens); --calib-tokens asks for {want} windows",
                have * seq_len
            ),
        ));
    }
    let mut ids = Vec::with_capacity(want * seq_len);
    let mut sources = Vec::new();
    for ((path, sha, t, available), q) in streams.into_iter().zip(quota) {
        for k in 0..q {
            // Evenly spaced window indices over the file.
            let w = k * available / q;
            ids.extend_from_slice(&t[w * seq_len..(w + 1) * seq_len]);
        }
        sources.push(CalibSource {
            path,
            sha256: sha,
            file_tokens: t.len(),
            windows: q,
        });
    }
    Ok(CalibSet {
        seq_len,
        ids,
        sources,
    })
}

/// Embedding rows for `ids`, read straight from the checkpoint (the whole
/// embedding matrix is never converted).
pub fn embed_rows(files: &ModelFiles, ids: &[u32]) -> Result<Vec<f32>> {
    let cfg = &files.config;
    let name = "model.embed_tokens.weight";
    let raw = files.weights.raw(name)?;
    if raw.shape != [cfg.vocab_size, cfg.hidden_size] {
        return Err(Error::TensorShape {
            name: name.into(),
            path: raw.path.to_path_buf(),
            expected: vec![cfg.vocab_size, cfg.hidden_size],
            got: raw.shape.clone(),
        });
    }
    let h = cfg.hidden_size;
    let el = raw.data.len() / (cfg.vocab_size * h);
    let mut out = Vec::with_capacity(ids.len() * h);
    for &id in ids {
        let id = id as usize;
        if id >= cfg.vocab_size {
            return Err(Error::Invalid(format!(
                "token id {id} is outside the vocabulary ({})",
                cfg.vocab_size
            )));
        }
        let row = crate::model::weights::RawTensor {
            dtype: raw.dtype,
            shape: vec![h],
            data: &raw.data[id * h * el..(id + 1) * h * el],
            path: raw.path,
        };
        let v = crate::model::weights::to_f32(&row, name)?;
        if let Some(bad) = v.iter().position(|x| !x.is_finite()) {
            return Err(Error::NonFinite {
                name: format!("{name} (row {id}, column {bad})"),
                path: raw.path.to_path_buf(),
                count: v.iter().filter(|x| !x.is_finite()).count(),
            });
        }
        out.extend(v);
    }
    files.weights.release(name);
    Ok(out)
}

/// The hidden states of the calibration windows, advanced one block at a time.
pub struct BlockStream {
    config: ModelConfig,
    seq_len: usize,
    windows: usize,
    /// Windows per forward pass.
    batch: usize,
    /// `[windows, seq_len, hidden]`, the input of the next block.
    hidden: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    next_block: usize,
}

impl BlockStream {
    /// Embeds the calibration windows.
    pub fn new(files: &ModelFiles, calib: &CalibSet, batch: usize) -> Result<Self> {
        let (cos, sin) = Rope::new(&files.config).tables_vec(0, calib.seq_len);
        Ok(BlockStream {
            config: files.config.clone(),
            seq_len: calib.seq_len,
            windows: calib.windows(),
            batch: batch.max(1),
            hidden: embed_rows(files, &calib.ids)?,
            cos,
            sin,
            next_block: 0,
        })
    }

    /// Index of the block whose input `hidden` currently holds.
    pub fn next_block(&self) -> usize {
        self.next_block
    }

    /// The current hidden states `[windows, seq_len, hidden]`.
    pub fn hidden(&self) -> &[f32] {
        &self.hidden
    }

    /// Runs `block` (which must be the next one) over all windows, observing
    /// the inputs of its linear layers with `capture`.
    pub fn advance(
        &mut self,
        block: &Block,
        mut capture: Option<&mut (dyn Capture + '_)>,
    ) -> Result<()> {
        assert_eq!(block.index(), self.next_block, "blocks must run in order");
        let per_window = self.seq_len * self.config.hidden_size;
        let mut scratch = Scratch::default();
        let mut w = 0;
        while w < self.windows {
            let b = self.batch.min(self.windows - w);
            let x = &mut self.hidden[w * per_window..(w + b) * per_window];
            block.forward_fast(
                x,
                b,
                self.seq_len,
                &self.cos,
                &self.sin,
                &mut scratch,
                capture.as_deref_mut(),
            )?;
            w += b;
        }
        if let Some(bad) = self.hidden.iter().position(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "block {} produced a non-finite activation (window {}): the model overflows in f32 on this text",
                block.index(),
                bad / per_window
            )));
        }
        self.next_block += 1;
        Ok(())
    }

    /// Σx² per channel of the LM head's input (the final RMSNorm of the
    /// current hidden states, which must have passed every block).
    pub fn head_sum_sq(&self, files: &ModelFiles) -> Result<(Vec<f64>, u64)> {
        assert_eq!(
            self.next_block, self.config.num_layers,
            "run every block first"
        );
        let h = self.config.hidden_size;
        let norm = files.weights.load_f32("model.norm.weight", &[h])?;
        let mut normed = vec![0f32; self.hidden.len()];
        crate::model::kernels::rms_norm(
            &self.hidden,
            &norm,
            self.config.rms_norm_eps as f32,
            &mut normed,
        );
        let mut acc = vec![0f64; h];
        add_sum_sq(&mut acc, &normed, h);
        Ok((acc, (self.hidden.len() / h) as u64))
    }

    /// Loads block `i` from the checkpoint and releases its mapped pages.
    pub fn load_block(files: &ModelFiles, i: usize) -> Result<Block> {
        let block = files.load_block(i, &Device::Cpu)?;
        for name in files.weights.names() {
            if name.starts_with(&format!("model.layers.{i}.")) {
                files.weights.release(&name);
            }
        }
        Ok(block)
    }
}

/// Per input site of one block: `H = Σ x xᵀ` (when Hessians are wanted) and
/// the per-channel `Σ x²` that llama.cpp calls the importance matrix.
pub struct HessianCapture {
    pub block: usize,
    /// Hessian accumulators (empty for a statistics-only capture).
    pub sites: Vec<(Site, dynapress_compress::Hessian)>,
    /// `Σ x²` per input channel, summed in f64 token by token.
    pub sum_sq: Vec<(Site, Vec<f64>)>,
    /// Tokens seen per site.
    pub tokens: u64,
}

fn site_dim(cfg: &ModelConfig, block: usize, s: Site) -> usize {
    crate::model::LinearId {
        block,
        kind: s.kinds()[0],
    }
    .shape(cfg)
    .1
}

impl HessianCapture {
    /// Empty accumulators (Hessians and Σx²) for every site of `block`.
    pub fn new(cfg: &ModelConfig, block: usize) -> Self {
        let mut c = Self::stats_only(cfg, block);
        c.sites = Site::ALL
            .iter()
            .map(|&s| (s, dynapress_compress::Hessian::new(site_dim(cfg, block, s))))
            .collect();
        c
    }

    /// Only the Σx² statistics (cheap: one pass over the activations).
    pub fn stats_only(cfg: &ModelConfig, block: usize) -> Self {
        HessianCapture {
            block,
            sites: vec![],
            sum_sq: Site::ALL
                .iter()
                .map(|&s| (s, vec![0f64; site_dim(cfg, block, s)]))
                .collect(),
            tokens: 0,
        }
    }

    /// The Hessian accumulator of a site.
    pub fn get(&self, site: Site) -> &dynapress_compress::Hessian {
        &self
            .sites
            .iter()
            .find(|(s, _)| *s == site)
            .expect("a capture with Hessians")
            .1
    }

    /// Σx² of a site.
    pub fn sums(&self, site: Site) -> &[f64] {
        &self
            .sum_sq
            .iter()
            .find(|(s, _)| *s == site)
            .expect("all sites")
            .1
    }

    /// The importance vector llama-quantize would read from an imatrix file
    /// holding these statistics: `(Σx² as f32) / (tokens as f32)`.
    pub fn importance(&self, site: Site) -> Vec<f32> {
        importance(self.sums(site), self.tokens)
    }
}

/// `(Σx² as f32) / (tokens as f32)`, the division llama-quantize does.
pub fn importance(sums: &[f64], tokens: u64) -> Vec<f32> {
    let n = tokens as f32;
    sums.iter().map(|&v| v as f32 / n).collect()
}

/// Adds the per-column squares of row-major `x [tokens, width]` into `acc`.
pub fn add_sum_sq(acc: &mut [f64], x: &[f32], width: usize) {
    for row in x.chunks_exact(width) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += (v as f64) * (v as f64);
        }
    }
}

impl Capture for HessianCapture {
    fn capture(&mut self, block: usize, site: Site, x: &[f32], width: usize) -> Result<()> {
        assert_eq!(block, self.block);
        if site == Site::AttnIn {
            self.tokens += (x.len() / width) as u64;
        }
        let acc = &mut self
            .sum_sq
            .iter_mut()
            .find(|(s, _)| *s == site)
            .expect("all sites")
            .1;
        add_sum_sq(acc, x, width);
        if let Some((_, h)) = self.sites.iter_mut().find(|(s, _)| *s == site) {
            debug_assert_eq!(h.dim(), width);
            h.add_batch(x).map_err(|e| {
                Error::layer(format!("block {block}, {}", site.name()), e.to_string())
            })?;
        }
        Ok(())
    }
}
