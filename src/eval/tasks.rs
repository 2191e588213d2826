//! lm-eval-style multiple choice: `{"context", "choices", "label"}` per line.
//!
//! Protocol (as in `reference.json`): tokenize context + choice together; the
//! continuation is every token after the longest common prefix with the
//! tokenized context (at least position 1); its log-likelihood is the sum of
//! `log p(token | everything before)`. `acc` takes the choice with the largest
//! log-likelihood, `acc_norm` the largest log-likelihood per UTF-8 byte of the
//! choice. Ties go to the first choice (like `numpy.argmax`).
//!
//! Sequences longer than the model's context keep their last tokens.

use std::path::Path;

use rayon::prelude::*;

use super::perplexity::row_stats;
use crate::error::{Error, Result};
use crate::model::{Model, Tokenizer};

/// One multiple-choice question.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct TaskItem {
    pub context: String,
    pub choices: Vec<String>,
    pub label: usize,
}

/// Accuracy on a task.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct TaskScores {
    pub acc: f64,
    pub acc_norm: f64,
    pub items: usize,
}

/// Reads a JSONL task file.
pub fn load_tasks(path: &Path) -> Result<Vec<TaskItem>> {
    crate::fsutil::check_input_file(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let item: TaskItem = serde_json::from_str(line).map_err(|e| {
            Error::data(
                path,
                format!(
                    "line {}: expected {{\"context\": str, \"choices\": [str], \"label\": int}}: {e}",
                    i + 1
                ),
            )
        })?;
        if item.context.is_empty() {
            return Err(Error::data(
                path,
                format!(
                    "line {}: empty context; every choice is scored as a continuation of the context",
                    i + 1
                ),
            ));
        }
        if let Some(k) = item.choices.iter().position(|c| c.is_empty()) {
            return Err(Error::data(
                path,
                format!(
                    "line {}: choice {k} is empty; an empty continuation has no likelihood to compare",
                    i + 1
                ),
            ));
        }
        if item.choices.is_empty() || item.label >= item.choices.len() {
            return Err(Error::data(
                path,
                format!(
                    "line {}: label {} does not index one of {} choices",
                    i + 1,
                    item.label,
                    item.choices.len()
                ),
            ));
        }
        items.push(item);
    }
    if items.is_empty() {
        return Err(Error::data(path, "no task items"));
    }
    Ok(items)
}

/// A sequence to score: tokens and where the continuation starts.
#[derive(Debug, Clone)]
pub struct Request {
    pub tokens: Vec<u32>,
    pub cont_start: usize,
}

/// Builds the scoring request for one (context, choice) pair.
pub fn build_request(
    tok: &Tokenizer,
    context: &str,
    choice: &str,
    max_len: usize,
) -> Result<Request> {
    let ctx = tok.encode(context)?;
    let mut full = tok.encode(&format!("{context}{choice}"))?;
    let lcp = ctx.iter().zip(&full).take_while(|(a, b)| a == b).count();
    let mut cont_start = lcp.max(1);
    if full.len() > max_len {
        let cut = full.len() - max_len;
        full.drain(..cut);
        cont_start = cont_start.saturating_sub(cut).max(1);
    }
    if cont_start >= full.len() {
        return Err(Error::Invalid(format!(
            "the choice {choice:?} adds no token to the context {context:?}"
        )));
    }
    Ok(Request {
        tokens: full,
        cont_start,
    })
}

/// Log-likelihoods of the continuations of `requests`, batched by length.
/// `on_done` is called with the number of tokens forwarded after each batch.
pub fn score_requests(
    model: &Model,
    requests: &[Request],
    max_batch_tokens: usize,
    mut on_done: impl FnMut(usize),
) -> Result<Vec<f64>> {
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(requests[i].tokens.len()));
    let mut out = vec![0f64; requests.len()];
    let v = model.config.vocab_size;
    let mut i = 0;
    while i < order.len() {
        let t = requests[order[i]].tokens.len();
        let b = (max_batch_tokens / t.max(1)).clamp(1, order.len() - i);
        let batch = &order[i..i + b];
        // Right padding: causal attention never lets a real position see it.
        let mut ids = vec![0u32; b * t];
        for (row, &r) in batch.iter().enumerate() {
            let toks = &requests[r].tokens;
            ids[row * t..row * t + toks.len()].copy_from_slice(toks);
        }
        let logits = model.forward_vec(&ids, b, t)?;
        let lls: Vec<f64> = batch
            .par_iter()
            .enumerate()
            .map(|(row, &r)| {
                let req = &requests[r];
                (req.cont_start..req.tokens.len())
                    .map(|p| {
                        let lrow = &logits[(row * t + p - 1) * v..(row * t + p) * v];
                        lrow[req.tokens[p] as usize] as f64 - row_stats(lrow).lse
                    })
                    .sum()
            })
            .collect();
        for (&r, ll) in batch.iter().zip(lls) {
            out[r] = ll;
        }
        on_done(batch.iter().map(|&r| requests[r].tokens.len()).sum());
        i += b;
    }
    Ok(out)
}

/// Index of the largest value, first on ties.
fn first_argmax(xs: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, x) in xs.enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    best.0
}

/// Prepares every request of a task (in item order, choices in order).
pub fn task_requests(model: &Model, items: &[TaskItem]) -> Result<Vec<Request>> {
    let max_len = model.config.max_position_embeddings;
    items
        .par_iter()
        .map(|item| {
            item.choices
                .iter()
                .map(|c| build_request(&model.tokenizer, &item.context, c, max_len))
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<Vec<_>>>()
        .map(|v| v.into_iter().flatten().collect())
}

/// acc and acc_norm from per-choice log-likelihoods (in `task_requests` order).
pub fn task_scores(items: &[TaskItem], lls: &[f64]) -> TaskScores {
    let mut k = 0;
    let (mut acc, mut acc_norm) = (0usize, 0usize);
    for item in items {
        let ll = &lls[k..k + item.choices.len()];
        k += item.choices.len();
        if first_argmax(ll.iter().copied()) == item.label {
            acc += 1;
        }
        let norm = ll
            .iter()
            .zip(&item.choices)
            .map(|(l, c)| l / c.len().max(1) as f64);
        if first_argmax(norm) == item.label {
            acc_norm += 1;
        }
    }
    TaskScores {
        acc: acc as f64 / items.len() as f64,
        acc_norm: acc_norm as f64 / items.len() as f64,
        items: items.len(),
    }
}
