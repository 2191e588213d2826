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

use crate::database::Database;
use crate::database::{Choice, HeadTensor, SearchSpace};
use crate::error::{Error, Result};
use crate::model::kernels::F32View;
use crate::model::logits::row_stats;
use crate::model::{Model, ModelFiles, Scratch, SublayerId};

/// Windows per forward pass during the search (and per racing step).
pub const SEARCH_BATCH: usize = 4;
const BATCH: usize = SEARCH_BATCH;

/// When a race may eliminate an entrant (see [`Evaluator::race`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RaceRule {
    /// How many entrants the stage keeps.
    pub keep: usize,
    /// Standard errors of the paired difference needed to eliminate (0: never).
    pub z: f64,
    /// Windows scored before the first elimination.
    pub min_windows: usize,
    /// Whether the parent is an entrant (the last stage: elitism).
    pub parent_competes: bool,
}

impl RaceRule {
    /// Score everything on every window.
    pub const NONE: RaceRule = RaceRule {
        keep: usize::MAX,
        z: 0.0,
        min_windows: usize::MAX,
        parent_competes: false,
    };
}

/// What [`Evaluator::race`] measured.
#[derive(Debug, Clone)]
pub struct Race {
    /// Mean KL per token of each candidate over the windows it was scored on.
    pub fitness: Vec<f64>,
    /// The parent's mean KL over all windows (when it competed).
    pub parent_fitness: Option<f64>,
    /// Entrants best first (candidates `0..n`, then the parent as `n` if it
    /// competed): those never eliminated by fitness, then the eliminated.
    pub order: Vec<usize>,
    /// Windows each entrant was scored on.
    pub windows_scored: Vec<usize>,
}

/// Marks as eliminated every alive entrant that is worse than the `keep`-th
/// best alive one by more than `z` standard errors of the paired per-window
/// difference.
fn eliminate(per_window: &[Vec<f64>], alive: &mut [bool], keep: usize, z: f64) {
    let live: Vec<usize> = (0..alive.len()).filter(|&i| alive[i]).collect();
    if live.len() <= keep {
        return;
    }
    let n = per_window[live[0]].len();
    let mean = |i: usize| per_window[i].iter().sum::<f64>() / n as f64;
    let mut ranked = live.clone();
    ranked.sort_by(|&a, &b| mean(a).total_cmp(&mean(b)).then(a.cmp(&b)));
    let pivot = ranked[keep - 1];
    for &i in &ranked[keep..] {
        let d: Vec<f64> = (0..n)
            .map(|w| per_window[i][w] - per_window[pivot][w])
            .collect();
        let m = d.iter().sum::<f64>() / n as f64;
        let var = d.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1).max(1) as f64;
        let se = (var / n as f64).sqrt();
        if m > z * se {
            alive[i] = false;
        }
    }
}

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
        // Windows per forward: a batch's logits stay under 128 MiB.
        let per = ((128usize << 20) / (seq_len.max(1) * vocab.max(1) * 4)).clamp(1, BATCH);
        while w < windows {
            let b = per.min(windows - w);
            let batch = &ids[w * seq_len..(w + b) * seq_len];
            let logits = base.forward_vec(batch, b, seq_len)?;
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

    /// A digest of everything the fitness depends on: the calibration token
    /// ids (so the files, the tokenizer, `--calib-tokens` and `--seq-len`),
    /// the window length, the vocabulary and how base predictions are kept.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update((self.seq_len as u64).to_le_bytes());
        h.update((self.vocab as u64).to_le_bytes());
        let k = match &self.kind {
            TargetKind::Full(_) => 0u64,
            TargetKind::TopK { k, .. } => *k as u64,
        };
        h.update(k.to_le_bytes());
        for id in &self.ids {
            h.update(id.to_le_bytes());
        }
        crate::fsutil::hex(&h.finalize())
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
    /// Entrant windows not scored because racing eliminated the entrant.
    #[serde(default)]
    pub race_windows_skipped: u64,
}

/// A cached weight: a linear layer's dequantized values, or a head tensor's
/// ggml encoding (a twelfth to a quarter of its f32 bytes; decoding it is far
/// cheaper than encoding it again, and keeping every head level decoded
/// would fill the cache with two tensors).
#[derive(Clone)]
enum Cached {
    Dense(Tensor),
    Codes(dynapress_ggml::GgmlType, std::sync::Arc<Vec<u8>>),
}

/// Weights of (layer, member, level), least recently used first out.
struct WeightCache {
    map: HashMap<(usize, usize, usize), (Cached, usize)>,
    order: VecDeque<(usize, usize, usize)>,
    bytes: usize,
    budget: usize,
}

/// What a configuration (a [`Choice`]) does to the model.
pub enum Knobs<'a> {
    /// Entry `i` is the level of `space.layers[i]`, loaded from the
    /// database; the entries after them are the head tensors' ggml types
    /// ([`SearchSpace::head`]), encoded from the base's own weights as the
    /// GGUF export encodes them.
    Levels {
        db: &'a Database,
        space: &'a SearchSpace,
    },
    /// Entry `i` is 0 to drop every sublayer of unit `i` (depth pruning), 1 to keep it.
    Depth(Vec<Vec<SublayerId>>),
}

impl Knobs<'_> {
    fn len(&self) -> usize {
        match self {
            Knobs::Levels { space, .. } => space.len(),
            Knobs::Depth(units) => units.len(),
        }
    }

    /// Whether entry `i` is the token embedding.
    fn changes_embedding(&self, i: usize) -> bool {
        match self {
            Knobs::Levels { space, .. } => space
                .head_of(i)
                .is_some_and(|h| h.tensor == HeadTensor::Embed),
            Knobs::Depth(_) => false,
        }
    }

    /// The first block entry `i` changes (`n_blocks`: only the LM head).
    fn block(&self, i: usize, n_blocks: usize) -> usize {
        match self {
            Knobs::Levels { space, .. } => match space.layers.get(i) {
                Some(l) => l.id.block,
                None => match space.head[i - space.layers.len()].tensor {
                    HeadTensor::Embed => 0,
                    HeadTensor::Output => n_blocks,
                },
            },
            Knobs::Depth(units) => units[i].iter().map(|s| s.block).min().unwrap_or(0),
        }
    }
}

/// What head-tensor levels are encoded from: the base model's own embedding
/// and LM head weights, and the output's importance.
struct HeadBase<'a> {
    source: HeadSource<'a>,
    /// Whether the checkpoint ties the head to the embedding.
    tied: bool,
    importance: Option<Vec<f32>>,
    shape: (usize, usize),
}

/// Where the base's head tensors are read from when a level is encoded.
enum HeadSource<'a> {
    /// Kept in memory (shared with the model until it holds searched
    /// levels in their place; then an extra f32 copy of each).
    Held {
        embedding: Tensor,
        output: Option<Tensor>,
    },
    /// Read again from the checkpoint for each encoding (levels are encoded
    /// once and their codes cached, so this is rare, and the f32 copies
    /// are not kept: 226 MB at the 135 M shape).
    Files(&'a ModelFiles),
}

/// Evaluates configurations by swapping database weights into one model (or
/// dropping sublayers, see [`Knobs`]).
pub struct Evaluator<'a> {
    model: Model,
    knobs: Knobs<'a>,
    /// The level each layer of `model` currently holds (`None`: original weight).
    loaded: Vec<Option<usize>>,
    cache: WeightCache,
    head_base: Option<HeadBase<'a>>,
    files: Option<&'a ModelFiles>,
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
        Self::with_knobs(model, Knobs::Levels { db, space }, weight_budget)
    }

    /// An evaluator over `model` whose configurations do what `knobs` says.
    pub fn with_knobs(model: Model, knobs: Knobs<'a>, weight_budget: usize) -> Self {
        let n = knobs.len();
        Evaluator {
            model,
            knobs,
            loaded: vec![None; n],
            cache: WeightCache {
                map: HashMap::new(),
                order: VecDeque::new(),
                bytes: 0,
                budget: weight_budget,
            },
            head_base: None,
            files: None,
            stats: EvalStats::default(),
        }
    }

    /// Encodes head-tensor levels from `files` (the checkpoint the model was
    /// loaded from) instead of keeping the base's embedding and output in
    /// memory next to the searched levels.
    pub fn reading_base_from(mut self, files: &'a ModelFiles) -> Self {
        self.files = Some(files);
        self
    }

    /// Keeps what the head tensors' levels are encoded from (once, when the
    /// space has head tensors).
    fn head_base(&mut self, db: &Database, space: &SearchSpace) -> Result<&HeadBase<'a>> {
        if self.head_base.is_none() {
            let tied = space.head.iter().all(|h| h.tensor != HeadTensor::Output);
            let emb = self.model.embedding();
            let shape = emb.dims2()?;
            let source = match self.files {
                Some(f) => HeadSource::Files(f),
                None => HeadSource::Held {
                    embedding: emb.clone(),
                    output: (!tied).then(|| self.model.head().weight.clone()),
                },
            };
            self.head_base = Some(HeadBase {
                source,
                tied,
                importance: db.head_importance()?,
                shape,
            });
        }
        Ok(self.head_base.as_ref().expect("just set"))
    }

    /// Head tensor `j` of the space at level `level`, encoded as the GGUF
    /// export writes it (the output and a tied embedding with the imatrix's
    /// output importance, an untied embedding without).
    fn head_codes(
        &mut self,
        db: &Database,
        space: &SearchSpace,
        j: usize,
        level: usize,
    ) -> Result<Cached> {
        let h = &space.head[j];
        let name = h.tensor.gguf_name();
        let ty = dynapress_ggml::GgmlType::from_name(&h.levels[level].level)
            .ok_or_else(|| Error::layer(name, "a head level is not a ggml type"))?;
        let device = self.model.device().clone();
        let base = self.head_base(db, space)?;
        // The output, and a tied embedding, with the output's importance.
        let output = h.tensor == HeadTensor::Output || base.tied;
        let importance = if output {
            base.importance.as_deref()
        } else {
            None
        };
        let values = match &base.source {
            HeadSource::Held { embedding, output } => match (h.tensor, output) {
                (HeadTensor::Output, Some(out)) => out.clone(),
                _ => embedding.clone(),
            },
            HeadSource::Files(f) if h.tensor == HeadTensor::Output && !base.tied => {
                f.load_head(None, &device)?.weight
            }
            HeadSource::Files(f) => f.load_embedding(&device)?,
        };
        let cols = base.shape.1;
        let enc = |e: dynapress_ggml::Error| Error::layer(name, e.to_string());
        let view = F32View::new(&values)
            .ok_or_else(|| Error::Invalid("the search needs f32 CPU weights".into()))?;
        let bytes = dynapress_ggml::quantize(ty, view.as_slice(), cols, importance).map_err(enc)?;
        Ok(Cached::Codes(ty, std::sync::Arc::new(bytes)))
    }

    /// The f32 tensor a cached weight stands for.
    fn decode(&self, cached: Cached) -> Result<Tensor> {
        match cached {
            Cached::Dense(t) => Ok(t),
            Cached::Codes(ty, bytes) => {
                let base = self.head_base.as_ref().expect("encoded from it");
                let (rows, cols) = base.shape;
                let deq = dynapress_ggml::dequantize(ty, &bytes, rows * cols)
                    .map_err(|e| Error::Invalid(format!("a cached head tensor: {e}")))?;
                Ok(Tensor::from_vec(deq, base.shape, self.model.device())?)
            }
        }
    }

    /// The weight of entry `layer` at `level`; for a linear layer with tied
    /// members, `member` 0 is the layer itself and `m` its `m`-th member.
    fn weight(
        &mut self,
        db: &Database,
        space: &SearchSpace,
        layer: usize,
        member: usize,
        level: usize,
    ) -> Result<Tensor> {
        let key = (layer, member, level);
        if let Some((t, _)) = self.cache.map.get(&key) {
            let t = t.clone();
            self.cache.order.retain(|k| *k != key);
            self.cache.order.push_back(key);
            return self.decode(t);
        }
        let t = match space.layers.get(layer) {
            Some(l) => {
                let id = l.ids().nth(member).unwrap_or(l.id);
                let entry = db
                    .manifest
                    .entry(id, &l.levels[level].level)
                    .ok_or_else(|| Error::layer(id.weight_name(), "no database entry"))?;
                let q = db.load(entry)?;
                Cached::Dense(Tensor::from_vec(
                    q.dequantize()?,
                    (q.rows(), q.cols()),
                    self.model.device(),
                )?)
            }
            None => self.head_codes(db, space, layer - space.layers.len(), level)?,
        };
        let size = match &t {
            Cached::Dense(t) => t.elem_count() * 4,
            Cached::Codes(_, bytes) => bytes.len(),
        };
        while self.cache.bytes + size > self.cache.budget {
            let Some(old) = self.cache.order.pop_front() else {
                break;
            };
            if let Some((_, bytes)) = self.cache.map.remove(&old) {
                self.cache.bytes -= bytes;
            }
        }
        if size <= self.cache.budget {
            self.cache.map.insert(key, (t.clone(), size));
            self.cache.order.push_back(key);
            self.cache.bytes += size;
        }
        self.decode(t)
    }

    /// Makes the model hold configuration `c`.
    pub fn load(&mut self, c: &Choice) -> Result<()> {
        for (i, &k) in c.iter().enumerate() {
            if self.loaded[i] == Some(k) {
                continue;
            }
            match &self.knobs {
                Knobs::Levels { db, space } => {
                    let (db, space) = (*db, *space);
                    match space.layers.get(i) {
                        Some(l) => {
                            for (m, id) in l.ids().enumerate() {
                                let w = self.weight(db, space, i, m, k)?;
                                self.model.set_linear(id, &w)?;
                            }
                        }
                        None => {
                            let w = self.weight(db, space, i, 0, k)?;
                            let tied = self.head_base.as_ref().is_some_and(|b| b.tied);
                            match space.head[i - space.layers.len()].tensor {
                                HeadTensor::Embed => {
                                    self.model.set_embedding(&w)?;
                                    if tied {
                                        self.model.set_head_weight(&w)?;
                                    }
                                }
                                HeadTensor::Output => self.model.set_head_weight(&w)?,
                            }
                        }
                    }
                }
                Knobs::Depth(units) => {
                    for s in &units[i] {
                        self.model.set_dropped(s.block, s.sublayer, k == 0)?;
                    }
                }
            }
            self.loaded[i] = Some(k);
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

    /// Fitness of several candidates on the same windows (no elimination).
    /// With `parent`, each candidate starts at its first block that differs.
    pub fn fitness_many(
        &mut self,
        candidates: &[Choice],
        parent: Option<&Choice>,
        targets: &BaseTargets,
        windows: &[usize],
    ) -> Result<Vec<f64>> {
        let r = self.race(candidates, parent, targets, windows, &RaceRule::NONE)?;
        Ok(r.fitness)
    }

    /// Scores `candidates` on `windows`, batch by batch, on the same tokens.
    ///
    /// With `parent`, its hidden states at every block boundary are computed
    /// once per batch (its own fitness, when it competes, then costs only the LM head), and each
    /// candidate starts its forward pass at its first changed block.
    ///
    /// Racing (`rule.z > 0`): after each batch, once `rule.min_windows`
    /// windows are scored, a candidate whose per-window KL is worse than the
    /// `rule.keep`-th best's by more than `z` standard errors of their paired
    /// difference (same windows) is eliminated: it cannot be among the `keep`
    /// best at this confidence, so scoring it further would be wasted. The
    /// parent takes part in the race when `rule.parent_competes`.
    pub fn race(
        &mut self,
        candidates: &[Choice],
        parent: Option<&Choice>,
        targets: &BaseTargets,
        windows: &[usize],
        rule: &RaceRule,
    ) -> Result<Race> {
        let t = targets.seq_len;
        let n_blocks = self.model.blocks().len();
        let (cos, sin) = self.model.rope().tables_vec(0, t);
        let gather = |ws: &[usize]| -> Vec<u32> {
            ws.iter()
                .flat_map(|&w| targets.ids[w * t..(w + 1) * t].iter().copied())
                .collect()
        };
        let firsts: Vec<usize> = candidates
            .iter()
            .map(|c| match parent {
                Some(p) => (0..c.len())
                    .filter(|&i| c[i] != p[i])
                    .map(|i| self.knobs.block(i, n_blocks))
                    .min()
                    .unwrap_or(n_blocks),
                None => 0,
            })
            .collect();
        // Candidates whose token embedding differs from the parent's: their
        // forward starts before the parent's first cached state.
        let new_embedding: Vec<bool> = candidates
            .iter()
            .map(|c| {
                parent.is_some_and(|p| {
                    (0..c.len()).any(|i| c[i] != p[i] && self.knobs.changes_embedding(i))
                })
            })
            .collect();
        // Entrants: the candidates, then the parent if it competes.
        let competes = parent.is_some() && rule.parent_competes;
        let n = candidates.len() + usize::from(competes);
        let mut per_window: Vec<Vec<f64>> = vec![Vec::new(); n];
        let mut parent_windows: Vec<f64> = Vec::new();
        let mut alive = vec![true; n];
        let mut sc = Scratch::default();
        let mut xn = Vec::new();
        let mut done = 0usize;
        for ws in windows.chunks(BATCH) {
            let b = ws.len();
            let ids = gather(ws);
            // Parent states: inputs of every block, and the final output.
            let states: Option<Vec<Vec<f32>>> = match parent {
                Some(p) => {
                    self.load(p)?;
                    let mut x = self
                        .model
                        .embed(&ids, b, t)?
                        .flatten_all()?
                        .to_vec1::<f32>()?;
                    let mut states = Vec::with_capacity(n_blocks + 1);
                    for block in self.model.blocks() {
                        states.push(x.clone());
                        block.forward_fast(&mut x, b, t, &cos, &sin, &mut sc, None)?;
                    }
                    self.stats.block_forwards += n_blocks as u64;
                    self.stats.cache_forwards += n_blocks as u64;
                    states.push(x);
                    // Its scores only matter where it competes (its LM head
                    // is a fifth of a forward at vocabularies of 49 k).
                    if competes {
                        let kls = self.window_kls(&states[n_blocks], ws, targets, &mut xn)?;
                        parent_windows.extend(kls);
                    }
                    self.stats.tokens += (b * t) as u64;
                    Some(states)
                }
                None => None,
            };
            for (i, c) in candidates.iter().enumerate() {
                if !alive[i] {
                    continue;
                }
                let first = if states.is_some() { firsts[i] } else { 0 };
                // Loaded also when no block changes: the head may have.
                self.load(c)?;
                let mut x = match &states {
                    Some(s) if !new_embedding[i] => s[first].clone(),
                    _ => self
                        .model
                        .embed(&ids, b, t)?
                        .flatten_all()?
                        .to_vec1::<f32>()?,
                };
                if first < n_blocks {
                    self.blocks_from(&mut x, b, first, &cos, &sin, &mut sc, t)?;
                }
                let kls = self.window_kls(&x, ws, targets, &mut xn)?;
                per_window[i].extend(kls);
                self.stats.tokens += (b * t) as u64;
            }
            if competes {
                per_window[n - 1].extend_from_slice(&parent_windows[done..done + b]);
            }
            done += b;
            if rule.z > 0.0 && done >= rule.min_windows && done < windows.len() {
                eliminate(&per_window, &mut alive, rule.keep, rule.z);
            }
        }
        self.stats.evaluations += candidates.len() as u64;
        self.stats.race_windows_skipped += per_window
            .iter()
            .map(|x| (windows.len() - x.len()) as u64)
            .sum::<u64>();
        let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len().max(1) as f64;
        let fitness: Vec<f64> = per_window.iter().map(|x| mean(x)).collect();
        // Survivors of the race first (by fitness), then the eliminated.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| {
            alive[b]
                .cmp(&alive[a])
                .then(fitness[a].total_cmp(&fitness[b]))
                .then(a.cmp(&b))
        });
        Ok(Race {
            fitness: fitness[..candidates.len()].to_vec(),
            parent_fitness: competes.then(|| mean(&parent_windows)),
            order,
            windows_scored: per_window.iter().map(Vec::len).collect(),
        })
    }

    /// Mean KL per token of each window of a batch, from the final hidden
    /// states `x` (`[windows·seq_len, hidden]`). The head runs one window at a
    /// time, so only one window's logits exist at once (vocabularies of
    /// 150 k make a batch's logits large).
    fn window_kls(
        &self,
        x: &[f32],
        ws: &[usize],
        targets: &BaseTargets,
        xn: &mut Vec<f32>,
    ) -> Result<Vec<f64>> {
        let t = targets.seq_len;
        let h = self.model.config.hidden_size;
        ws.iter()
            .enumerate()
            .map(|(j, &w)| {
                let logits = self
                    .model
                    .head()
                    .forward_fast(&x[j * t * h..(j + 1) * t * h], xn)
                    .ok_or_else(|| Error::Invalid("the search needs f32 CPU weights".into()))?;
                Ok(targets.window_kl(w, &logits) / t as f64)
            })
            .collect()
    }

    /// The model (holding whatever configuration was loaded last).
    pub fn model(&self) -> &Model {
        &self.model
    }
}

#[cfg(test)]
mod tests {
    use super::eliminate;

    fn noisy(base: f64, n: usize, seed: u64) -> Vec<f64> {
        // Deterministic noise of ±0.05 shared in shape across entrants.
        (0..n)
            .map(|w| base + 0.05 * (((w as u64 * 7 + seed) % 11) as f64 / 10.0 - 0.5))
            .collect()
    }

    #[test]
    fn racing_drops_only_entrants_that_are_significantly_worse() {
        let n = 12;
        // a and b differ by a sliver well inside the per-window noise of
        // their paired difference; c is worse on every window.
        let a = noisy(1.0, n, 0);
        let b: Vec<f64> = noisy(1.0, n, 3).iter().map(|x| x + 0.001).collect();
        let c: Vec<f64> = a.iter().map(|x| x + 0.2).collect();
        let per_window = vec![a, b, c];
        let mut alive = vec![true; 3];
        eliminate(&per_window, &mut alive, 1, 2.5);
        assert_eq!(alive, [true, true, false]);
        // Keeping two of three: c is compared with the second best, still out.
        let mut alive = vec![true; 3];
        eliminate(&per_window, &mut alive, 2, 2.5);
        assert_eq!(alive, [true, true, false]);
        // Keeping three: nobody can be eliminated.
        let mut alive = vec![true; 3];
        eliminate(&per_window, &mut alive, 3, 2.5);
        assert_eq!(alive, [true; 3]);
    }

    #[test]
    fn racing_keeps_a_worse_mean_whose_difference_is_noise() {
        // d is worse on average but better on some windows: the paired
        // difference's standard error is larger than its mean / 2.5.
        let a = vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        let d = vec![1.3, 0.8, 1.3, 0.8, 1.3, 0.8, 1.3, 0.8];
        let mut alive = vec![true; 2];
        eliminate(&[a, d], &mut alive, 1, 2.5);
        assert_eq!(alive, [true, true]);
    }
}
