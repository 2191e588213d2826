//! Perplexity, KL divergence to a base model and top-1 agreement over
//! independent windows.
//!
//! Protocol (as in `reference.json`): keep the first `seq_len × windows` tokens,
//! cut them into `windows` windows of `seq_len` scored independently (each
//! starts at position 0, no BOS); the `seq_len − 1` positions that predict a
//! next token in the window are scored:
//!
//! - NLL per token = mean over scored positions of `−log p(x_{t+1} | x_{≤t})`,
//!   perplexity = exp(NLL);
//! - KL(base ‖ model) = mean over the same positions of
//!   `Σ_v p_base(v) (log p_base(v) − log p_model(v))`;
//! - top-1 agreement = fraction of those positions where both argmaxes agree.

use candle_core::Tensor;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::model::Model;

/// How windows are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// The reference protocol: all `seq_len − 1` predictions of each window.
    #[default]
    Windows,
    /// llama.cpp's `llama-perplexity`: the file tokenized with its BOS (if the
    /// tokenizer adds one), each chunk's first token replaced by BOS (idem),
    /// and only the predictions of the second half of each chunk scored
    /// (positions `seq_len/2 … seq_len−2`).
    LlamaPerplexity,
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "windows" => Ok(Protocol::Windows),
            "llama-perplexity" => Ok(Protocol::LlamaPerplexity),
            o => Err(format!(
                "unknown protocol `{o}`; choose windows or llama-perplexity"
            )),
        }
    }
}

/// Window settings.
#[derive(Debug, Clone, Copy)]
pub struct WindowOptions {
    pub seq_len: usize,
    pub windows: usize,
    /// Windows per forward pass.
    pub batch: usize,
    pub protocol: Protocol,
    /// With [`Protocol::LlamaPerplexity`]: the BOS id written at the start of
    /// every chunk, if the tokenizer adds BOS.
    pub bos: Option<u32>,
}

impl Default for WindowOptions {
    fn default() -> Self {
        WindowOptions {
            seq_len: 256,
            windows: 64,
            batch: 8,
            protocol: Protocol::Windows,
            bos: None,
        }
    }
}

impl WindowOptions {
    /// First scored position in a window (predictions from it to the end).
    pub fn first_scored(&self) -> usize {
        match self.protocol {
            Protocol::Windows => 0,
            Protocol::LlamaPerplexity => self.seq_len / 2,
        }
    }

    /// Predictions scored per window.
    pub fn scored_per_window(&self) -> usize {
        self.seq_len.saturating_sub(1 + self.first_scored())
    }

    /// Refuses settings that score nothing (or divide by zero).
    pub fn validate(&self) -> Result<()> {
        if self.windows == 0 {
            return Err(Error::option(
                "--windows",
                "--windows must be at least 1 (windows scored per file)",
            ));
        }
        if self.batch == 0 {
            return Err(Error::option("--batch", "--batch must be at least 1"));
        }
        let min = match self.protocol {
            Protocol::Windows => 2,
            Protocol::LlamaPerplexity => 3,
        };
        if self.seq_len < min || self.scored_per_window() == 0 {
            return Err(Error::option(
                "--seq-len",
                format!(
                    "--seq-len {} scores no token{}; give at least {min}",
                    self.seq_len,
                    match self.protocol {
                        Protocol::Windows => "",
                        Protocol::LlamaPerplexity =>
                            " (llama-perplexity scores the second half of each window)",
                    }
                ),
            ));
        }
        Ok(())
    }
}

/// Scores of one dataset.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct WindowScores {
    pub nll_per_token: f64,
    pub perplexity: f64,
    /// Scored (predicted) positions.
    pub tokens: usize,
    pub windows: usize,
    pub kl: Option<f64>,
    pub top1_agreement: Option<f64>,
}

pub use crate::model::logits::{RowStats, row_kl, row_stats};

/// Running sums over scored positions.
#[derive(Debug, Clone, Copy, Default)]
pub struct WindowAccumulator {
    pub nll: f64,
    pub kl: f64,
    pub agree: usize,
    pub positions: usize,
    pub windows: usize,
}

impl WindowAccumulator {
    /// Adds a batch: `logits [b, t, v]` for `ids [b·t]`, and optionally the base
    /// model's logits for the same ids.
    pub fn add(&mut self, ids: &[u32], logits: &Tensor, base: Option<&Tensor>) -> Result<()> {
        let (b, t, v) = logits.dims3()?;
        let lg = logits.flatten_all()?.to_vec1::<f32>()?;
        let bl = match base {
            Some(x) => Some(x.flatten_all()?.to_vec1::<f32>()?),
            None => None,
        };
        let base_stats = bl.as_deref().map(|bl| base_row_stats(bl, b, t, v));
        self.add_rows(
            ids,
            &lg,
            b,
            t,
            v,
            0,
            bl.as_deref().zip(base_stats.as_deref()),
        );
        Ok(())
    }

    /// [`WindowAccumulator::add`] on flat logits, scoring the predictions
    /// made at positions `first..t−1` of each window, with the base model's
    /// logits and their per-row statistics (from [`base_row_stats`]) if any.
    #[allow(clippy::too_many_arguments)]
    pub fn add_rows(
        &mut self,
        ids: &[u32],
        lg: &[f32],
        b: usize,
        t: usize,
        v: usize,
        first: usize,
        base: Option<(&[f32], &[RowStats])>,
    ) {
        self.add_row_range(ids, lg, t, v, first, 0, base);
        self.windows += b;
    }

    /// Scores rows `r0..r0 + lg.len()/v` of a batch of windows of `t`
    /// tokens (`ids` the whole batch, `lg` and `base` only those rows):
    /// the rows at positions `first..t−1` of their window. Windows are not
    /// counted here; the caller adds them once per batch.
    #[allow(clippy::too_many_arguments)]
    pub fn add_row_range(
        &mut self,
        ids: &[u32],
        lg: &[f32],
        t: usize,
        v: usize,
        first: usize,
        r0: usize,
        base: Option<(&[f32], &[RowStats])>,
    ) {
        let n = lg.len() / v;
        let rows: Vec<usize> = (r0..r0 + n)
            .filter(|r| (first..t - 1).contains(&(r % t)))
            .collect();
        let per_row: Vec<(f64, f64, bool)> = rows
            .par_iter()
            .map(|&r| {
                let i = r - r0;
                let row = &lg[i * v..(i + 1) * v];
                let s = row_stats(row);
                let target = ids[r + 1] as usize;
                let nll = s.lse - row[target] as f64;
                match base {
                    Some((bl, bs)) => {
                        let brow = &bl[i * v..(i + 1) * v];
                        let bs = bs[i];
                        (nll, row_kl(brow, bs.lse, row, s.lse), bs.argmax == s.argmax)
                    }
                    None => (nll, 0.0, false),
                }
            })
            .collect();
        for (nll, kl, agree) in per_row {
            self.nll += nll;
            self.kl += kl;
            self.agree += agree as usize;
        }
        self.positions += rows.len();
    }

    /// Final scores.
    pub fn finish(&self, with_base: bool) -> WindowScores {
        let n = self.positions.max(1) as f64;
        let nll = self.nll / n;
        WindowScores {
            nll_per_token: nll,
            perplexity: nll.exp(),
            tokens: self.positions,
            windows: self.windows,
            kl: with_base.then(|| self.kl / n),
            top1_agreement: with_base.then(|| self.agree as f64 / n),
        }
    }
}

/// Row statistics of every row of flat base logits `[b·t, v]`.
pub fn base_row_stats(bl: &[f32], b: usize, t: usize, v: usize) -> Vec<RowStats> {
    bl[..b * t * v].par_chunks(v).map(row_stats).collect()
}

/// Bytes of logits one slice of rows holds during scoring.
pub const LOGITS_CHUNK_BYTES: usize = 64 << 20;

/// Rows of logits computed at once when scoring: as many as fit in
/// [`LOGITS_CHUNK_BYTES`] at this vocabulary (at least 64, at most 4,096, so
/// the LM head's weight is read once per 64 rows or more).
pub fn logits_chunk_rows(vocab: usize) -> usize {
    (LOGITS_CHUNK_BYTES / (vocab.max(1) * 4)).clamp(64, 4096)
}

/// How many windows of `seq_len` the token stream allows (at most `wanted`).
pub fn usable_windows(n_tokens: usize, opts: &WindowOptions) -> usize {
    n_tokens
        .checked_div(opts.seq_len)
        .unwrap_or(0)
        .min(opts.windows)
}

/// Scores `model` (and its divergence from `base`) on windows of `tokens`.
/// `on_batch` is called with the number of tokens after each batch.
pub fn score_windows(
    model: &Model,
    base: Option<&Model>,
    tokens: &[u32],
    opts: &WindowOptions,
    on_batch: impl FnMut(usize),
) -> Result<WindowScores> {
    Ok(score_windows_multi(&[model], base, tokens, opts, on_batch)?.remove(0))
}

/// The base model's final hidden states on one text, batch by batch, kept
/// so that scoring more models against the same base on the same windows
/// runs only the base's final norm and LM head again, not its blocks
/// ([`score_windows_shared`]). `tokens × hidden` f32 — never logits.
#[derive(Debug, Default)]
pub struct BaseHidden {
    /// What the states were computed for: a hash of the tokens, window
    /// length, windows, batch, protocol and BOS; a different request
    /// recomputes.
    key: Option<(u64, usize, usize, usize, Protocol, Option<u32>)>,
    batches: Vec<Vec<f32>>,
}

impl BaseHidden {
    /// Bytes of f32 hidden states kept for `tokens` scored tokens.
    pub fn bytes(tokens: usize, hidden: usize) -> u64 {
        (tokens * hidden * 4) as u64
    }
}

/// Scores several models on the same windows, running the base model once
/// per batch for all of them.
pub fn score_windows_multi(
    models: &[&Model],
    base: Option<&Model>,
    tokens: &[u32],
    opts: &WindowOptions,
    on_batch: impl FnMut(usize),
) -> Result<Vec<WindowScores>> {
    score_windows_shared(models, base, None, tokens, opts, on_batch)
}

/// [`score_windows_multi`], with the base's hidden states taken from (or
/// written to) `cache`: a second call with the same cache, tokens and
/// options does not run the base's blocks. A model of `models` that *is*
/// `base` (the same object) reuses the base's states as well. The scores
/// are the same with or without the cache: the same head on the same rows.
pub fn score_windows_shared(
    models: &[&Model],
    base: Option<&Model>,
    mut cache: Option<&mut BaseHidden>,
    tokens: &[u32],
    opts: &WindowOptions,
    mut on_batch: impl FnMut(usize),
) -> Result<Vec<WindowScores>> {
    opts.validate()?;
    for m in models.iter().chain(base.as_ref()) {
        let max = m.config.max_position_embeddings;
        if opts.seq_len > max {
            return Err(Error::option(
                "--seq-len",
                format!(
                    "seq-len {} exceeds the model's max_position_embeddings ({max})",
                    opts.seq_len
                ),
            ));
        }
    }
    let n = usable_windows(tokens.len(), opts);
    if n == 0 {
        return Err(Error::Invalid(format!(
            "only {} tokens, fewer than one window of {}",
            tokens.len(),
            opts.seq_len
        )));
    }
    if opts.protocol == Protocol::LlamaPerplexity && tokens.len() < 2 * opts.seq_len {
        return Err(Error::Invalid(format!(
            "llama-perplexity needs at least {} tokens for a context of {} (this text has {})",
            2 * opts.seq_len,
            opts.seq_len,
            tokens.len()
        )));
    }
    let t = opts.seq_len;
    let first = opts.first_scored();
    let mut accs = vec![WindowAccumulator::default(); models.len()];
    let key = (
        {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            tokens.hash(&mut h);
            h.finish()
        },
        t,
        n,
        opts.batch,
        opts.protocol,
        opts.bos,
    );
    if let Some(c) = cache.as_deref_mut()
        && c.key != Some(key)
    {
        c.key = Some(key);
        c.batches.clear();
    }
    let is_base = |m: &Model| base.is_some_and(|bm| std::ptr::eq(m, bm));
    let mut w = 0;
    let mut batch_index = 0;
    while w < n {
        let b = opts.batch.max(1).min(n - w);
        let mut chunk = tokens[w * t..(w + b) * t].to_vec();
        if let (Protocol::LlamaPerplexity, Some(bos)) = (opts.protocol, opts.bos) {
            for c in chunk.chunks_mut(t) {
                c[0] = bos;
            }
        }
        let ids = &chunk[..];
        // Hidden states of the whole batch, then the logits a slice of
        // rows at a time: at most two slices of logits (the base's and
        // one model's) are held, whatever the vocabulary.
        let v = models
            .first()
            .copied()
            .or(base)
            .map_or(0, |m| m.config.vocab_size);
        if models.iter().any(|m| m.config.vocab_size != v) {
            return Err(Error::Invalid(
                "models with different vocabularies cannot be compared".into(),
            ));
        }
        let cached = cache
            .as_deref()
            .and_then(|c| c.batches.get(batch_index))
            .is_some();
        let mut local = None;
        if let Some(bm) = base
            && !cached
        {
            let h = bm.hidden_vec(ids, b, t)?;
            match cache.as_deref_mut() {
                Some(c) => c.batches.push(h),
                None => local = Some(h),
            }
        }
        let base_hidden: Option<&[f32]> = match (&local, cache.as_deref()) {
            (Some(h), _) => Some(h),
            (None, Some(c)) if base.is_some() => c.batches.get(batch_index).map(|v| &v[..]),
            _ => None,
        };
        // `None`: the model is the base, whose states are `base_hidden`.
        let hidden: Vec<Option<Vec<f32>>> = models
            .iter()
            .map(|m| {
                if is_base(m) && base_hidden.is_some() {
                    Ok(None)
                } else {
                    m.hidden_vec(ids, b, t).map(Some)
                }
            })
            .collect::<Result<_>>()?;
        let rows = b * t;
        let step = logits_chunk_rows(v);
        for r0 in (0..rows).step_by(step) {
            let r1 = (r0 + step).min(rows);
            let base_logits = match (base, base_hidden) {
                (Some(bm), Some(bh)) => {
                    let h = bm.config.hidden_size;
                    Some(bm.head_logits(&bh[r0 * h..r1 * h])?)
                }
                _ => None,
            };
            let stats = base_logits
                .as_deref()
                .map(|bl| base_row_stats(bl, 1, r1 - r0, v));
            for ((m, x), acc) in models.iter().zip(&hidden).zip(accs.iter_mut()) {
                let h = m.config.hidden_size;
                let x = match (x, base_hidden) {
                    (Some(x), _) => &x[..],
                    (None, Some(bh)) => bh,
                    (None, None) => unreachable!("a model without states is the base"),
                };
                let own;
                let lg: &[f32] = match (&base_logits, is_base(m)) {
                    // The base against itself: its logits are already here.
                    (Some(bl), true) => bl,
                    _ => {
                        own = m.head_logits(&x[r0 * h..r1 * h])?;
                        &own
                    }
                };
                acc.add_row_range(
                    ids,
                    lg,
                    t,
                    v,
                    first,
                    r0,
                    base_logits.as_deref().zip(stats.as_deref()),
                );
            }
        }
        for acc in accs.iter_mut() {
            acc.windows += b;
            on_batch(ids.len());
        }
        w += b;
        batch_index += 1;
    }
    Ok(accs.iter().map(|a| a.finish(base.is_some())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_of_rows_score_like_the_whole_batch() {
        // Two windows of 7 tokens, vocabulary 11, scored from position 2:
        // any cut of the 14 rows into slices gives the same sums.
        let (b, t, v, first) = (2, 7, 11, 2);
        let ids: Vec<u32> = (0..b * t).map(|i| (i * 5 % v) as u32).collect();
        let logit = |seed: usize| -> Vec<f32> {
            (0..b * t * v)
                .map(|i| ((i * seed) % 97) as f32 / 13.0 - 3.0)
                .collect()
        };
        let (lg, bl) = (logit(31), logit(57));
        let bs = base_row_stats(&bl, b, t, v);
        let mut whole = WindowAccumulator::default();
        whole.add_rows(&ids, &lg, b, t, v, first, Some((&bl, &bs)));
        assert_eq!(whole.positions, b * (t - 1 - first));
        for step in [1, 3, 5, 14] {
            let mut acc = WindowAccumulator::default();
            for r0 in (0..b * t).step_by(step) {
                let r1 = (r0 + step).min(b * t);
                let part = &bl[r0 * v..r1 * v];
                let stats = base_row_stats(part, 1, r1 - r0, v);
                acc.add_row_range(
                    &ids,
                    &lg[r0 * v..r1 * v],
                    t,
                    v,
                    first,
                    r0,
                    Some((part, &stats)),
                );
            }
            assert_eq!(acc.positions, whole.positions, "step {step}");
            assert_eq!(acc.agree, whole.agree, "step {step}");
            assert!(
                (acc.nll - whole.nll).abs() < 1e-9 * whole.nll.abs(),
                "step {step}"
            );
            assert!((acc.kl - whole.kl).abs() < 1e-9 * whole.kl, "step {step}");
        }
        assert!(whole.kl > 0.0 && whole.nll > 0.0);
    }

    #[test]
    fn row_stats_and_kl_match_direct_formulas() {
        let a = [1.0f32, 2.0, 0.5, -1.0];
        let b = [0.0f32, 2.5, 0.0, -3.0];
        let sa = row_stats(&a);
        let sb = row_stats(&b);
        let lse = |r: &[f32]| r.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
        assert!((sa.lse - lse(&a)).abs() < 1e-6);
        assert_eq!(sa.argmax, 1);
        let pa: Vec<f64> = a.iter().map(|&x| (x as f64 - lse(&a)).exp()).collect();
        let pb: Vec<f64> = b.iter().map(|&x| (x as f64 - lse(&b)).exp()).collect();
        let kl: f64 = pa.iter().zip(&pb).map(|(p, q)| p * (p / q).ln()).sum();
        assert!((row_kl(&a, sa.lse, &b, sb.lse) - kl).abs() < 1e-6 * kl);
        assert!(row_kl(&a, sa.lse, &a, sa.lse).abs() < 1e-12);
        // A long row (vectorised path) against an f64 reference.
        let x: Vec<f32> = (0..4099)
            .map(|i| ((i * 7919 % 1000) as f32) / 97.0 - 5.0)
            .collect();
        let y: Vec<f32> = (0..4099)
            .map(|i| ((i * 104729 % 1000) as f32) / 101.0 - 5.0)
            .collect();
        let (sx, sy) = (row_stats(&x), row_stats(&y));
        assert!((sx.lse - lse(&x)).abs() < 1e-6);
        let px: Vec<f64> = x.iter().map(|&v| (v as f64 - lse(&x)).exp()).collect();
        let want: f64 = px
            .iter()
            .zip(x.iter().zip(&y))
            .map(|(p, (&a, &b))| p * ((a as f64 - lse(&x)) - (b as f64 - lse(&y))))
            .sum();
        assert!(
            (row_kl(&x, sx.lse, &y, sy.lse) - want).abs() < 1e-5 * want,
            "{want}"
        );
    }
}
