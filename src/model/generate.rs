//! Autoregressive generation with a KV cache: greedy at temperature 0,
//! otherwise seeded sampling from `softmax(logits / T)` (optionally top-p).

use candle_core::Tensor;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{KvCache, Model, Tokenizer};
use crate::error::{Error, Result};

/// Sampling settings.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens with probability ≥ top_p.
    pub top_p: f32,
    pub seed: u64,
    /// Stop when the model emits its end-of-sequence token.
    pub stop_at_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop_at_eos: true,
        }
    }
}

/// Generates up to `max_new_tokens` after `prompt`, calling `on_token` with each
/// new id as soon as it is chosen. Returns the new ids.
pub fn generate(
    model: &Model,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(Error::Invalid(
            "the prompt is empty after tokenization; give at least one token".into(),
        ));
    }
    if !(opts.temperature >= 0.0 && opts.temperature.is_finite()) {
        return Err(Error::option(
            "--temperature",
            "temperature must be a finite number ≥ 0",
        ));
    }
    if !(opts.top_p > 0.0 && opts.top_p <= 1.0) {
        return Err(Error::option("--top-p", "top-p must be in (0, 1]"));
    }
    let eos = model.tokenizer.eos_id();
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut caches = vec![KvCache::default(); model.blocks().len()];
    let mut out = Vec::with_capacity(opts.max_new_tokens);
    let mut logits = last_logits(&model.forward_cached(prompt, 1, prompt.len(), &mut caches)?)?;
    for _ in 0..opts.max_new_tokens {
        let next = if opts.temperature == 0.0 {
            argmax(&logits)
        } else {
            sample(&logits, opts.temperature, opts.top_p, &mut rng)
        };
        out.push(next);
        on_token(next)?;
        if opts.stop_at_eos && Some(next) == eos {
            break;
        }
        if out.len() == opts.max_new_tokens {
            break;
        }
        logits = last_logits(&model.forward_cached(&[next], 1, 1, &mut caches)?)?;
    }
    Ok(out)
}

fn last_logits(logits: &Tensor) -> Result<Vec<f32>> {
    let t = logits.dim(1)?;
    Ok(logits
        .narrow(1, t - 1, 1)?
        .squeeze(1)?
        .squeeze(0)?
        .to_vec1::<f32>()?)
}

/// Index of the largest logit (the first one on ties, like `torch.argmax`).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn sample(logits: &[f32], temperature: f32, top_p: f32, rng: &mut ChaCha8Rng) -> u32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (i as u32, (((x - max) / temperature) as f64).exp()))
        .collect();
    if top_p < 1.0 {
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let total: f64 = probs.iter().map(|p| p.1).sum();
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            acc += p.1 / total;
            if acc >= top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
    }
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let mut u = rng.random::<f64>() * total;
    for &(i, p) in &probs {
        if u < p {
            return i;
        }
        u -= p;
    }
    probs.last().map_or(0, |p| p.0)
}

/// Turns a stream of token ids into text pieces, holding back bytes that do not
/// yet form complete UTF-8 characters.
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    printed: usize,
}

impl<'a> TextStream<'a> {
    /// A stream that decodes with `tokenizer`.
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        TextStream {
            tokenizer,
            ids: Vec::new(),
            printed: 0,
        }
    }

    /// Adds a token; returns the text that became printable.
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids)?;
        if text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        // Decoding more tokens only ever appends text for byte-level BPE; if an
        // earlier part changed, print nothing rather than garble the output.
        let Some(new) = text.get(self.printed..) else {
            return Ok(String::new());
        };
        let new = new.to_string();
        self.printed = text.len();
        Ok(new)
    }

    /// The whole decoded text.
    pub fn text(&self) -> Result<String> {
        self.tokenizer.decode(&self.ids)
    }
}
