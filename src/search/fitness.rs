//! Fitness of a configuration: the mean KL divergence KL(base ‖ candidate)
//! over calibration tokens, from base-model targets computed once.
//!
//! Targets are the base model's full log-probabilities when they fit in the
//! memory budget, otherwise its top-k (k ≥ 256) log-probabilities per position,
//! with the rest of the vocabulary merged into one "tail" outcome: the KL
//! between these coarsened distributions is a lower bound of the full KL
//! (data-processing inequality) and equal to it when the tail is empty.
//!
//! An offspring differs from its parent in a few layers, so the evaluator can
//! keep the parent's hidden states at every block boundary for a token sample
//! and start each offspring's forward pass at its first changed block.

use std::collections::{HashMap, VecDeque};

use candle_core::Tensor;
use rayon::prelude::*;

use super::{Choice, SearchSpace};
use crate::database::Database;
use crate::error::{Error, Result};
use crate::eval::perplexity::row_stats;
use crate::model::{Model, Scratch};

/// Windows per forward pass during the search.
const BATCH: usize = 8;

/// The base model's predictions on a pool of calibration windows.
pub struct BaseTargets {
    pub seq_len: usize,
    /// `[windows, seq_len]` token ids.
    pub ids: Vec<u32>,
    vocab: usize,
    kind: TargetKind,
}

enum TargetKind {
    /// log p_base over the whole vocabulary, `[positions, vocab]`.
    Full(Vec<f32>),
    /// The `k` most likely tokens per position and their log-probabilities.
    TopK {
        k: usize,
        idx: Vec<u32>,
        logp: Vec<f32>,
    },
}

impl BaseTargets {
    /// Runs the base model over `ids` (windows of `seq_len`). Full
    /// log-probabilities are kept if they take at most `full_budget` bytes,
    /// otherwise the top `k`.
    pub fn compute(
        base: &Model,
        ids: Vec<u32>,
        seq_len: usize,
        k: usize,
        full_budget: usize,
        mut on_batch: impl FnMut(usize),
    ) -> Result<Self> {
        let vocab = base.config.vocab_size;
        let windows = ids.len() / seq_len;
        let positions = windows * seq_len;
        let full = positions * vocab * 4 <= full_budget;
        let k = k.min(vocab);
        let mut full_lp = Vec::new();
        let mut idx = Vec::new();
        let mut logp = Vec::new();
        let mut w = 0;
        while w < windows {
            let b = BATCH.min(windows - w);
            let batch = &ids[w * seq_len..(w + b) * seq_len];
            let logits = base
                .forward(batch, b, seq_len)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let rows: Vec<(Vec<f32>, Vec<u32>)> = logits
                .par_chunks(vocab)
                .map(|row| {
                    let lse = row_stats(row).lse as f32;
                    if full {
                        (row.iter().map(|&x| x - lse).collect(), vec![])
                    } else {
                        let mut order: Vec<u32> = (0..vocab as u32).collect();
                        order.select_nth_unstable_by(k - 1, |&a, &b| {
                            row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b))
                        });
                        order.truncate(k);
                        order.sort_unstable();
                        (
                            order.iter().map(|&i| row[i as usize] - lse).collect(),
                            order,
                        )
                    }
                })
                .collect();
            for (lp, ix) in rows {
                if full {
                    full_lp.extend(lp);
                } else {
                    logp.extend(lp);
                    idx.extend(ix);
                }
            }
            on_batch(b * seq_len);
            w += b;
        }
        Ok(BaseTargets {
            seq_len,
            ids,
            vocab,
            kind: if full {
                TargetKind::Full(full_lp)
            } else {
                TargetKind::TopK { k, idx, logp }
            },
        })
    }

    /// Number of windows.
    pub fn windows(&self) -> usize {
        self.ids.len() / self.seq_len
    }

    /// Whether full distributions are kept.
    pub fn is_full(&self) -> bool {
        matches!(self.kind, TargetKind::Full(_))
    }

    /// Σ over the positions of window `w` of KL(base ‖ model) given the model's logits.
    fn window_kl(&self, w: usize, logits: &[f32]) -> f64 {
        let v = self.vocab;
        (0..self.seq_len)
            .into_par_iter()
            .map(|p| {
                let row = &logits[p * v..(p + 1) * v];
                let lse = row_stats(row).lse;
                let pos = w * self.seq_len + p;
                match &self.kind {
                    TargetKind::Full(lp) => {
                        let b = &lp[pos * v..(pos + 1) * v];
                        b.iter()
                            .zip(row)
                            .map(|(&lb, &x)| {
                                let lb = lb as f64;
                                lb.exp() * (lb - (x as f64 - lse))
                            })
                            .sum::<f64>()
                            .max(0.0)
                    }
                    TargetKind::TopK { k, idx, logp } => {
                        let (ix, lb) =
                            (&idx[pos * k..(pos + 1) * k], &logp[pos * k..(pos + 1) * k]);
                        let (mut s, mut pb_sum, mut qm_sum) = (0f64, 0f64, 0f64);
                        for (&i, &l) in ix.iter().zip(lb) {
                            let l = l as f64;
                            let pb = l.exp();
                            let lq = row[i as usize] as f64 - lse;
                            s += pb * (l - lq);
                            pb_sum += pb;
                            qm_sum += lq.exp();
                        }
                        let pt = (1.0 - pb_sum).max(0.0);
                        let qt = (1.0 - qm_sum).max(1e-300);
                        if pt > 1e-12 {
                            s += pt * (pt / qt).ln();
                        }
                        s.max(0.0)
                    }
                }
            })
            .collect::<Vec<f64>>()
            .into_iter()
            .sum()
    }
}

/// Counters of the evaluator's work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EvalStats {
    pub evaluations: u64,
    /// Block forward passes run (one block over one batch of windows).
    pub block_forwards: u64,
    /// Block forward passes avoided by starting at the first changed block.
    pub block_forwards_saved: u64,
    /// Block forward passes spent caching the parent's hidden states.
    pub cache_forwards: u64,
    pub tokens: u64,
}

/// Dequantized weights of (layer, level), least recently used first out.
struct WeightCache {
    map: HashMap<(usize, usize), Tensor>,
    order: VecDeque<(usize, usize)>,
    bytes: usize,
    budget: usize,
}

/// Evaluates configurations by swapping database weights into one model.
pub struct Evaluator<'a> {
    model: Model,
    db: &'a Database,
    space: &'a SearchSpace,
    /// The level each layer of `model` currently holds (`None`: original weight).
    loaded: Vec<Option<usize>>,
    cache: WeightCache,
    /// Bytes allowed for cached hidden states.
    pub hidden_budget: usize,
    pub stats: EvalStats,
}

impl<'a> Evaluator<'a> {
    /// An evaluator over `model` (consumed: its linear weights get replaced).
    pub fn new(
        model: Model,
        db: &'a Database,
        space: &'a SearchSpace,
        weight_budget: usize,
    ) -> Self {
        let n = space.layers.len();
        Evaluator {
            model,
            db,
            space,
            loaded: vec![None; n],
            cache: WeightCache {
                map: HashMap::new(),
                order: VecDeque::new(),
                bytes: 0,
                budget: weight_budget,
            },
            hidden_budget: 1 << 30,
            stats: EvalStats::default(),
        }
    }

    fn weight(&mut self, layer: usize, level: usize) -> Result<Tensor> {
        let key = (layer, level);
        if let Some(t) = self.cache.map.get(&key) {
            let t = t.clone();
            self.cache.order.retain(|k| *k != key);
            self.cache.order.push_back(key);
            return Ok(t);
        }
        let l = &self.space.layers[layer];
        let entry = self
            .db
            .manifest
            .entry(l.id, &l.levels[level].level)
            .ok_or_else(|| {
                Error::Invalid(format!("no database entry for {}", l.id.weight_name()))
            })?;
        let q = self.db.load(entry)?;
        let t = Tensor::from_vec(q.dequantize()?, (q.rows(), q.cols()), self.model.device())?;
        let size = q.rows() * q.cols() * 4;
        while self.cache.bytes + size > self.cache.budget {
            let Some(old) = self.cache.order.pop_front() else {
                break;
            };
            if self.cache.map.remove(&old).is_some() {
                let (r, c) = self.space.layers[old.0].id.shape(&self.model.config);
                self.cache.bytes -= r * c * 4;
            }
        }
        if size <= self.cache.budget {
            self.cache.map.insert(key, t.clone());
            self.cache.order.push_back(key);
            self.cache.bytes += size;
        }
        Ok(t)
    }

    /// Makes the model hold configuration `c`.
    pub fn load(&mut self, c: &Choice) -> Result<()> {
        for (i, &k) in c.iter().enumerate() {
            if self.loaded[i] != Some(k) {
                let w = self.weight(i, k)?;
                let id = self.space.layers[i].id;
                self.model.set_linear(id, &w)?;
                self.loaded[i] = Some(k);
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn blocks_from(
        &mut self,
        x: &mut [f32],
        b: usize,
        first: usize,
        cos: &[f32],
        sin: &[f32],
        sc: &mut Scratch,
        t: usize,
    ) -> Result<()> {
        let blocks = self.model.blocks();
        for block in &blocks[first..] {
            block.forward_fast(x, b, t, cos, sin, sc, None)?;
        }
        self.stats.block_forwards += (blocks.len() - first) as u64;
        self.stats.block_forwards_saved += first as u64;
        Ok(())
    }

    /// Mean KL over the positions of `windows` for configuration `c`.
    pub fn fitness(&mut self, c: &Choice, targets: &BaseTargets, windows: &[usize]) -> Result<f64> {
        Ok(self.fitness_many(std::slice::from_ref(c), None, targets, windows)?[0])
    }

    /// Fitness of several candidates on the same windows. With `parent`, its
    /// hidden states at block boundaries are computed once (memory permitting)
    /// and each candidate starts at its first block that differs.
    pub fn fitness_many(
        &mut self,
        candidates: &[Choice],
        parent: Option<&Choice>,
        targets: &BaseTargets,
        windows: &[usize],
    ) -> Result<Vec<f64>> {
        let t = targets.seq_len;
        let h = self.model.config.hidden_size;
        let n_blocks = self.model.blocks().len();
        let (cos, sin) = self.model.rope().tables_vec(0, t);
        let batches: Vec<&[usize]> = windows.chunks(BATCH).collect();
        let gather = |ws: &[usize]| -> Vec<u32> {
            ws.iter()
                .flat_map(|&w| targets.ids[w * t..(w + 1) * t].iter().copied())
                .collect()
        };
        let mut sc = Scratch::default();
        // Parent hidden states: cache[batch][block] = input of that block.
        let cache_bytes = windows.len() * t * h * 4 * (n_blocks + 1);
        let cache: Option<Vec<Vec<Vec<f32>>>> = match parent {
            Some(p) if cache_bytes <= self.hidden_budget => {
                self.load(p)?;
                let mut all = Vec::with_capacity(batches.len());
                for ws in &batches {
                    let ids = gather(ws);
                    let mut x = self
                        .model
                        .embed(&ids, ws.len(), t)?
                        .flatten_all()?
                        .to_vec1::<f32>()?;
                    let mut states = Vec::with_capacity(n_blocks + 1);
                    for block in self.model.blocks() {
                        states.push(x.clone());
                        block.forward_fast(&mut x, ws.len(), t, &cos, &sin, &mut sc, None)?;
                    }
                    self.stats.block_forwards += n_blocks as u64;
                    self.stats.cache_forwards += n_blocks as u64;
                    states.push(x);
                    all.push(states);
                }
                Some(all)
            }
            _ => None,
        };
        let mut out = Vec::with_capacity(candidates.len());
        for c in candidates {
            let first = match (parent, &cache) {
                (Some(p), Some(_)) => self
                    .space
                    .layers
                    .iter()
                    .zip(c.iter().zip(p))
                    .filter(|(_, (a, b))| a != b)
                    .map(|(l, _)| l.id.block)
                    .min()
                    .unwrap_or(n_blocks),
                _ => 0,
            };
            self.load(c)?;
            let mut kl = 0f64;
            for (bi, ws) in batches.iter().enumerate() {
                let mut x = match &cache {
                    Some(all) => all[bi][first].clone(),
                    None => {
                        let ids = gather(ws);
                        self.model
                            .embed(&ids, ws.len(), t)?
                            .flatten_all()?
                            .to_vec1::<f32>()?
                    }
                };
                self.blocks_from(&mut x, ws.len(), first, &cos, &sin, &mut sc, t)?;
                let mut xn = Vec::new();
                let logits = self
                    .model
                    .head()
                    .forward_fast(&x, &mut xn)
                    .ok_or_else(|| Error::Invalid("the search needs f32 CPU weights".into()))?;
                let v = self.model.config.vocab_size;
                for (j, &w) in ws.iter().enumerate() {
                    kl += targets.window_kl(w, &logits[j * t * v..(j + 1) * t * v]);
                }
            }
            self.stats.evaluations += 1;
            self.stats.tokens += (windows.len() * t) as u64;
            out.push(kl / (windows.len() * t) as f64);
        }
        Ok(out)
    }

    /// The model (holding whatever configuration was loaded last).
    pub fn model(&self) -> &Model {
        &self.model
    }
}
