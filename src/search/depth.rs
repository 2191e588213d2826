//! Depth pruning: which attention and MLP sublayers (or whole blocks) to
//! drop, with an exact budget of `drop` units.
//!
//! A configuration is a [`Choice`] over units (a sublayer, or a whole block
//! with `whole_blocks`): 1 keeps the unit, 0 drops it. The fitness is the
//! same mean KL(base ‖ pruned) on calibration windows as the quantization
//! search ([`BaseTargets`], [`Evaluator`] with [`Knobs::Depth`]), so the
//! prefix cache and racing apply unchanged.
//!
//! Methods, all computed in one run on the same calibration windows:
//! - `last`: the last `drop` units in forward order (uniform "last N blocks");
//! - `shortgpt`: Block Influence (ShortGPT, Men et al. 2024): a unit's
//!   `BI = 1 − mean over tokens of cos(x_in, x_out)` on the base model, the
//!   `drop` units with the lowest BI dropped (for a sublayer, `x_out` is
//!   `x_in` plus that sublayer's branch);
//! - `kl-alone`: the `drop` units whose removal alone costs the least KL;
//! - `evopress`: a (1 + λ) evolutionary search started from the best of the
//!   three, each offspring made by `min(U{1,m}, U{1,m})` swaps of one dropped
//!   and one kept unit of the same type (attention with attention, MLP with
//!   MLP), so the budget stays exact; multi-step selection with racing as in
//!   [`super::evopress`]. The result is the better, on all calibration
//!   windows, of the last parent and the starting point, so it is never worse
//!   than the best baseline there.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;
use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::evopress::{DEFAULT_POOL_TOKENS, EvoParams, GenerationLog, gen_rng, select};
use super::fitness::{BaseTargets, EvalStats, Evaluator, Knobs, SEARCH_BATCH};
use crate::calib::load_calibration;
use crate::database::Choice;
use crate::error::{Error, Result};
use crate::model::{DepthConfig, Model, ModelFiles, Scratch, Sublayer, SublayerId};
use crate::progress;

/// What a depth-pruning run must remove.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DepthBudget {
    /// Exactly this many units (sublayers, or blocks with `whole_blocks`).
    Drop(usize),
    /// At most this many parameters left in the whole model (embeddings and
    /// head included): units are dropped until the model has no more.
    Params(u64),
}

/// Parameters of a depth-pruning run.
#[derive(Debug, Clone)]
pub struct DepthOptions {
    pub budget: DepthBudget,
    /// Drop whole blocks only.
    pub whole_blocks: bool,
    /// EvoPress parameters (`init` and `initial_candidates` are not used: the
    /// search starts from the best baseline).
    pub evo: EvoParams,
    /// Calibration text.
    pub calib: Vec<PathBuf>,
    /// Calibration tokens in the pool (default [`DEFAULT_POOL_TOKENS`] or what the text holds).
    pub pool_tokens: Option<usize>,
    pub seq_len: usize,
    pub topk: usize,
    pub full_logits_budget: usize,
    pub quiet: bool,
    /// Where to checkpoint after each generation (resumed if it exists and
    /// matches the model, calibration, budget and parameters).
    pub checkpoint: Option<PathBuf>,
    /// Testing only: abort the process after this many generations.
    pub abort_after: Option<usize>,
    /// Also score every configuration of the budget (a `--drop` budget of
    /// at most [`MAX_EXHAUSTIVE`] configurations) and report the best as
    /// method `exhaustive`: the optimum on the calibration windows.
    pub exhaustive: bool,
}

/// The most configurations `exhaustive` scores.
pub const MAX_EXHAUSTIVE: u64 = 5000;

/// `n` choose `k`, saturating: the configurations of dropping `k` of `n`
/// units (what `exhaustive` scores).
pub fn choose(n: usize, k: usize) -> u64 {
    if k > n {
        return 0;
    }
    let k = k.min(n - k);
    let mut c = 1u128;
    for i in 0..k {
        c = c * (n - i) as u128 / (i + 1) as u128;
        if c > u64::MAX as u128 {
            return u64::MAX;
        }
    }
    c as u64
}

/// Checks that `--exhaustive` can score every configuration of `budget`
/// over `n_units` units: a `--drop` budget of at most [`MAX_EXHAUSTIVE`].
pub fn check_exhaustive(budget: DepthBudget, n_units: usize) -> Result<()> {
    let DepthBudget::Drop(k) = budget else {
        return Err(Error::option(
            "--exhaustive",
            "--exhaustive scores every configuration of a --drop budget; it does not take --target-params",
        ));
    };
    let n = choose(n_units, k);
    if n > MAX_EXHAUSTIVE {
        return Err(Error::option(
            "--exhaustive",
            format!(
                "--exhaustive: dropping {k} of {n_units} units has {n} configurations, more than the {MAX_EXHAUSTIVE} it scores"
            ),
        ));
    }
    Ok(())
}

/// Every way to drop `k` of `n` units, in lexicographic order of the
/// dropped indices.
fn all_drops(n: usize, k: usize) -> Vec<Choice> {
    let mut out = Vec::new();
    let mut idx: Vec<usize> = (0..k).collect();
    loop {
        let mut c = vec![1; n];
        for &i in &idx {
            c[i] = 0;
        }
        out.push(c);
        // Next combination.
        let Some(pos) = (0..k).rev().find(|&p| idx[p] < n - k + p) else {
            return out;
        };
        idx[pos] += 1;
        for q in pos + 1..k {
            idx[q] = idx[q - 1] + 1;
        }
    }
}

/// The depth search's state after a generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DepthCheckpoint {
    pub format: String,
    /// sha256 of every weight file of the model.
    pub model: Vec<(String, String)>,
    /// [`BaseTargets::fingerprint`] of the calibration windows.
    pub targets: String,
    pub budget: String,
    pub whole_blocks: bool,
    pub params: EvoParams,
    /// The best baseline EvoPress started from.
    pub start: Choice,
    pub generations_done: usize,
    pub parent: Choice,
    pub history: Vec<GenerationLog>,
    pub stats: EvalStats,
}

const DEPTH_CHECKPOINT: &str = "dynapress-depth-checkpoint";

impl Default for DepthOptions {
    fn default() -> Self {
        DepthOptions {
            budget: DepthBudget::Drop(2),
            whole_blocks: false,
            evo: EvoParams::default(),
            calib: vec![],
            pool_tokens: None,
            seq_len: 256,
            topk: 256,
            full_logits_budget: 256 << 20,
            quiet: false,
            checkpoint: None,
            abort_after: None,
            exhaustive: false,
        }
    }
}

/// What a depth-pruning run produced.
#[derive(Debug, Clone, Serialize)]
pub struct DepthOutcome {
    /// One configuration per method: `last`, `shortgpt`, `kl-alone`, `evopress`
    /// (each with its KL on all calibration windows).
    pub configs: Vec<DepthConfig>,
    /// Block Influence of each unit (forward order).
    pub block_influence: Vec<f64>,
    /// KL of each unit dropped alone (forward order).
    pub kl_alone: Vec<f64>,
    /// Calibration windows every method was scored on.
    pub calib_windows: usize,
    /// Parameters of the unpruned model.
    pub total_params: u64,
    /// Parameters of each unit (forward order).
    pub unit_params: Vec<u64>,
    pub history: Vec<GenerationLog>,
    pub stats: EvalStats,
    pub seconds: f64,
}

impl DepthOutcome {
    /// The configuration of one method.
    pub fn config(&self, method: &str) -> Option<&DepthConfig> {
        self.configs.iter().find(|c| c.method == method)
    }
}

/// The units of a model: each sublayer in forward order, or each block.
pub fn depth_units(num_layers: usize, whole_blocks: bool) -> Vec<Vec<SublayerId>> {
    let sub = |block, sublayer| SublayerId { block, sublayer };
    if whole_blocks {
        (0..num_layers)
            .map(|b| vec![sub(b, Sublayer::Attn), sub(b, Sublayer::Mlp)])
            .collect()
    } else {
        (0..num_layers)
            .flat_map(|b| Sublayer::ALL.map(|s| vec![sub(b, s)]))
            .collect()
    }
}

/// Checks that `drop` units out of `units` is a budget that leaves a model.
pub fn check_drop(drop: usize, units: usize, whole_blocks: bool) -> Result<()> {
    let what = if whole_blocks { "blocks" } else { "sublayers" };
    if drop == 0 || drop >= units {
        return Err(Error::option(
            "--drop",
            format!(
                "--drop {drop}: the model has {units} {what}; drop at least 1 and fewer than {units}"
            ),
        ));
    }
    Ok(())
}

/// Parameters of the whole model and of each unit of `units` (a
/// sublayer's projections, biases, its norms; a block's both sublayers).
pub fn unit_params(files: &ModelFiles, units: &[Vec<SublayerId>]) -> Result<(u64, Vec<u64>)> {
    let mut total = 0u64;
    let mut per = vec![[0u64; 2]; files.config.num_layers];
    for name in files.weights.names() {
        let n: u64 = files
            .weights
            .shape(&name)?
            .iter()
            .map(|&d| d as u64)
            .product();
        total += n;
        let Some((block, rest)) = name
            .strip_prefix("model.layers.")
            .and_then(|r| r.split_once('.'))
            .and_then(|(b, rest)| Some((b.parse::<usize>().ok()?, rest)))
        else {
            continue;
        };
        let attn = rest.starts_with("self_attn.") || rest.starts_with("input_layernorm.");
        if let Some(p) = per.get_mut(block) {
            p[usize::from(!attn)] += n;
        }
    }
    let sizes = units
        .iter()
        .map(|u| u.iter().map(|id| per[id.block][id.sublayer as usize]).sum())
        .collect();
    Ok((total, sizes))
}

/// The number of each unit's "size" to remove, and the sizes: one per unit
/// for [`DepthBudget::Drop`], parameters for [`DepthBudget::Params`]; an
/// error names the option when the budget does not leave a pruned model.
pub fn budget_sizes(
    budget: DepthBudget,
    total: u64,
    params: &[u64],
    whole_blocks: bool,
) -> Result<(u64, Vec<u64>)> {
    match budget {
        DepthBudget::Drop(n) => {
            check_drop(n, params.len(), whole_blocks)?;
            Ok((n as u64, vec![1; params.len()]))
        }
        DepthBudget::Params(p) => {
            let droppable: u64 = params.iter().sum();
            let floor = total - droppable + params.iter().min().copied().unwrap_or(0);
            if p >= total {
                return Err(Error::option(
                    "--target-params",
                    format!(
                        "--target-params {p}: the model has {total} parameters already; ask for fewer"
                    ),
                ));
            }
            if p < floor {
                return Err(Error::option(
                    "--target-params",
                    format!(
                        "--target-params {p}: keeping one unit and the embeddings leaves at least {floor} of the model's {total} parameters; ask for more"
                    ),
                ));
            }
            Ok((total - p, params.to_vec()))
        }
    }
}

/// Drops units in `order` until the removed size reaches `need` (never the
/// last unit), then puts back, latest dropped first, every unit the budget
/// does not need (with unequal sizes the greedy pass can overshoot).
fn drop_in_order(order: impl Iterator<Item = usize>, sizes: &[u64], need: u64) -> Choice {
    let mut c = vec![1; sizes.len()];
    let mut removed = 0u64;
    let mut dropped = Vec::new();
    for i in order {
        // Enough removed, or only one unit left.
        if removed >= need || dropped.len() + 1 == sizes.len() {
            break;
        }
        c[i] = 0;
        removed += sizes[i];
        dropped.push(i);
    }
    for &i in dropped.iter().rev() {
        if removed - sizes[i] >= need {
            c[i] = 1;
            removed -= sizes[i];
        }
    }
    c
}

/// The type a swap must preserve: the sublayer kind, or one type for blocks.
fn unit_type(unit: &[SublayerId]) -> usize {
    match unit {
        [one] => one.sublayer as usize,
        _ => 2,
    }
}

/// The units of smallest score (ties: the earlier unit) until `need` of
/// `sizes` is removed.
fn lowest(scores: &[f64], sizes: &[u64], need: u64) -> Choice {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    drop_in_order(order.into_iter(), sizes, need)
}

/// The `last` baseline: the last units in forward order until `need` of
/// `sizes` is removed.
pub fn last_units(sizes: &[u64], need: u64) -> Choice {
    drop_in_order((0..sizes.len()).rev(), sizes, need)
}

/// Block Influence `1 − mean cos(x_in, x_out)` of every unit, on the base
/// model (nothing dropped) over `windows` of `targets`.
pub fn block_influence(
    model: &mut Model,
    units: &[Vec<SublayerId>],
    targets: &BaseTargets,
    windows: &[usize],
) -> Result<Vec<f64>> {
    let t = targets.seq_len;
    let h = model.config.hidden_size;
    let (cos, sin) = model.rope().tables_vec(0, t);
    let n_blocks = model.blocks().len();
    let whole = units.first().is_some_and(|u| u.len() == 2);
    // Σ cos and token counts per unit.
    let mut sums = vec![0f64; units.len()];
    let mut count = 0usize;
    let mut sc = Scratch::default();
    let cos_rows = |a: &[f32], b: &[f32]| -> f64 {
        a.chunks_exact(h)
            .zip(b.chunks_exact(h))
            .map(|(x, y)| {
                let (mut xy, mut xx, mut yy) = (0f64, 0f64, 0f64);
                for (&p, &q) in x.iter().zip(y) {
                    let (p, q) = (p as f64, q as f64);
                    xy += p * q;
                    xx += p * p;
                    yy += q * q;
                }
                xy / (xx.sqrt() * yy.sqrt()).max(1e-30)
            })
            .sum()
    };
    for ws in windows.chunks(SEARCH_BATCH) {
        let b = ws.len();
        let ids: Vec<u32> = ws
            .iter()
            .flat_map(|&w| targets.ids[w * t..(w + 1) * t].iter().copied())
            .collect();
        let mut x = model.embed(&ids, b, t)?.flatten_all()?.to_vec1::<f32>()?;
        for block in 0..n_blocks {
            let x_in = x.clone();
            if !whole {
                // The residual after attention only: the MLP's input.
                model.set_dropped(block, Sublayer::Mlp, true)?;
                let mut mid = x_in.clone();
                model.blocks()[block].forward_fast(&mut mid, b, t, &cos, &sin, &mut sc, None)?;
                model.set_dropped(block, Sublayer::Mlp, false)?;
                model.blocks()[block].forward_fast(&mut x, b, t, &cos, &sin, &mut sc, None)?;
                sums[2 * block] += cos_rows(&x_in, &mid);
                sums[2 * block + 1] += cos_rows(&mid, &x);
            } else {
                model.blocks()[block].forward_fast(&mut x, b, t, &cos, &sin, &mut sc, None)?;
                sums[block] += cos_rows(&x_in, &x);
            }
        }
        count += b * t;
    }
    Ok(sums.iter().map(|s| 1.0 - s / count.max(1) as f64).collect())
}

/// Offspring of `parent` by `min(U{1,m}, U{1,m})` same-type swaps; `None`
/// when no swap is possible or the result equals the parent.
fn mutate(
    parent: &Choice,
    types: &[usize],
    max_mutations: usize,
    rng: &mut ChaCha8Rng,
) -> Option<Choice> {
    let m = max_mutations.max(1);
    let swaps = rng.random_range(1..=m).min(rng.random_range(1..=m));
    let mut c = parent.clone();
    for _ in 0..swaps {
        // Types that have both a dropped and a kept unit.
        let mut open: Vec<usize> = types.to_vec();
        open.sort_unstable();
        open.dedup();
        open.retain(|&ty| {
            let of = |k: usize| (0..c.len()).any(|i| types[i] == ty && c[i] == k);
            of(0) && of(1)
        });
        if open.is_empty() {
            return None;
        }
        let ty = open[rng.random_range(0..open.len())];
        let pick = |k: usize, c: &Choice, rng: &mut ChaCha8Rng| {
            let v: Vec<usize> = (0..c.len())
                .filter(|&i| types[i] == ty && c[i] == k)
                .collect();
            v[rng.random_range(0..v.len())]
        };
        let d = pick(0, &c, rng);
        let k = pick(1, &c, rng);
        c[d] = 1;
        c[k] = 0;
    }
    (c != *parent).then_some(c)
}

fn to_config(
    units: &[Vec<SublayerId>],
    c: &Choice,
    num_layers: usize,
    method: &str,
    whole_blocks: bool,
    kl: f64,
    params: u64,
) -> DepthConfig {
    let dropped = units
        .iter()
        .zip(c)
        .filter(|(_, k)| **k == 0)
        .flat_map(|(u, _)| u.iter().copied())
        .collect();
    let mut c = DepthConfig::new(num_layers, method, whole_blocks, dropped, Some(kl));
    c.params = Some(params);
    c
}

/// Runs the three baselines and EvoPress on calibration text.
pub fn run_depth(files: &ModelFiles, opts: &DepthOptions) -> Result<DepthOutcome> {
    let start_time = Instant::now();
    let num_layers = files.config.num_layers;
    let units = depth_units(num_layers, opts.whole_blocks);
    let (total_params, unit_sizes) = unit_params(files, &units)?;
    let (need, sizes) = budget_sizes(opts.budget, total_params, &unit_sizes, opts.whole_blocks)?;
    if opts.exhaustive {
        check_exhaustive(opts.budget, units.len())?;
    }
    if opts.calib.is_empty() {
        return Err(Error::option(
            "--calib",
            "depth pruning needs calibration text (--calib FILE) for its fitness",
        ));
    }
    if opts.evo.offspring == 0 {
        return Err(Error::option(
            "--offspring",
            "--offspring must be at least 1",
        ));
    }
    let max_stage = opts.evo.stages.iter().map(|s| s.tokens).max().unwrap_or(0);
    let pool = opts
        .pool_tokens
        .unwrap_or(DEFAULT_POOL_TOKENS)
        .max(max_stage);
    let calib = match load_calibration(&opts.calib, &files.tokenizer, pool, opts.seq_len) {
        Err(_) if opts.pool_tokens.is_none() && pool > max_stage => {
            load_calibration(&opts.calib, &files.tokenizer, max_stage, opts.seq_len)?
        }
        r => r?,
    };
    let mut base = Model::from_files(files, &Device::Cpu)?;
    if !base.blocks().iter().all(|b| b.fast_path_available()) {
        return Err(Error::Invalid(
            "depth pruning needs f32 CPU weights for its fitness".into(),
        ));
    }
    let pb = progress::bar(calib.tokens() as u64, "base logits", "tok", opts.quiet);
    let targets = BaseTargets::compute(
        &base,
        calib.ids.clone(),
        opts.seq_len,
        opts.topk,
        opts.full_logits_budget,
        |n| pb.inc(n as u64),
    )?;
    pb.finish_and_clear();
    let all: Vec<usize> = (0..targets.windows()).collect();
    let n = units.len();

    // Baselines.
    let influence = block_influence(&mut base, &units, &targets, &all)?;
    let mut eval = Evaluator::with_knobs(base, Knobs::Depth(units.clone()), 0);
    let kept = vec![1usize; n];
    let singles: Vec<Choice> = (0..n)
        .map(|i| {
            let mut c = kept.clone();
            c[i] = 0;
            c
        })
        .collect();
    let kl_alone = eval.fitness_many(&singles, Some(&kept), &targets, &all)?;
    let baselines = [
        ("last", last_units(&sizes, need)),
        ("shortgpt", lowest(&influence, &sizes, need)),
        ("kl-alone", lowest(&kl_alone, &sizes, need)),
    ];
    let choices: Vec<Choice> = baselines.iter().map(|(_, c)| c.clone()).collect();
    let base_fit = eval.fitness_many(&choices, None, &targets, &all)?;
    let best = (0..baselines.len())
        .min_by(|&a, &b| base_fit[a].total_cmp(&base_fit[b]).then(a.cmp(&b)))
        .expect("three baselines");

    // EvoPress from the best baseline.
    // Swaps keep the type and the size (so a parameter budget stays exact).
    let mut kinds: Vec<(usize, u64)> = Vec::new();
    let types: Vec<usize> = units
        .iter()
        .zip(&sizes)
        .map(|(u, &size)| {
            let k = (unit_type(u), size);
            kinds.iter().position(|&x| x == k).unwrap_or_else(|| {
                kinds.push(k);
                kinds.len() - 1
            })
        })
        .collect();
    let params_kept = |c: &Choice| -> u64 {
        total_params
            - c.iter()
                .zip(&unit_sizes)
                .filter(|(k, _)| **k == 0)
                .map(|(_, p)| p)
                .sum::<u64>()
    };
    let params = &opts.evo;
    let start = choices[best].clone();
    let fingerprint = targets.fingerprint();
    let model_digests = files.weight_digests()?;
    let budget_text = format!("{:?}", opts.budget);
    let resumed = match opts.checkpoint.as_deref().filter(|p| p.exists()) {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            let ck: DepthCheckpoint = serde_json::from_str(&text)
                .map_err(|e| Error::data(p, format!("not a depth-pruning checkpoint: {e}")))?;
            if ck.format != DEPTH_CHECKPOINT
                || ck.model != model_digests
                || ck.targets != fingerprint
                || ck.budget != budget_text
                || ck.whole_blocks != opts.whole_blocks
                || ck.params != *params
                || ck.start != start
            {
                return Err(Error::data(
                    p,
                    "this checkpoint belongs to another pruning run (model, calibration, budget or search parameters differ); give --force to start afresh, or choose another --out",
                ));
            }
            Some(ck)
        }
        None => None,
    };
    let (mut parent, mut history, first) = match resumed {
        Some(ck) => {
            eval.stats = ck.stats;
            (ck.parent, ck.history, ck.generations_done)
        }
        None => (start.clone(), Vec::with_capacity(params.generations), 0),
    };
    let pb = progress::bar(params.generations as u64, "evopress", "gen", opts.quiet);
    pb.set_position(first as u64);
    for generation in first..params.generations {
        let mut rng = gen_rng(params.seed, generation as u64, 0);
        let mut seen: HashSet<Choice> = HashSet::from([parent.clone()]);
        let mut candidates = Vec::with_capacity(params.offspring);
        let mut attempts = 0;
        while candidates.len() < params.offspring && attempts < params.offspring * 100 {
            attempts += 1;
            if let Some(c) = mutate(&parent, &types, params.max_mutations, &mut rng)
                && seen.insert(c.clone())
            {
                candidates.push(c);
            }
        }
        if candidates.is_empty() {
            break;
        }
        let (winner, fitness, stage_best) =
            select(&mut eval, params, &parent, candidates, &targets, &mut rng)?;
        let improved = winner != parent;
        parent = winner;
        let log = GenerationLog {
            generation,
            fitness,
            stage_best,
            bits_per_weight: 0.0,
            improved,
        };
        pb.set_position(generation as u64 + 1);
        pb.set_message(format!("KL {:.5}", log.fitness));
        history.push(log);
        if let Some(p) = &opts.checkpoint {
            let ck = DepthCheckpoint {
                format: DEPTH_CHECKPOINT.into(),
                model: model_digests.clone(),
                targets: fingerprint.clone(),
                budget: budget_text.clone(),
                whole_blocks: opts.whole_blocks,
                params: params.clone(),
                start: start.clone(),
                generations_done: generation + 1,
                parent: parent.clone(),
                history: history.clone(),
                stats: eval.stats,
            };
            let text = serde_json::to_string_pretty(&ck).expect("serialises");
            crate::fsutil::write_atomic(p, text.as_bytes())?;
        }
        if opts.abort_after == Some(generation + 1 - first) {
            // Simulated crash for the resume test.
            std::process::abort();
        }
    }
    pb.finish_and_clear();
    // The better of the last parent and the start, on all windows.
    let final_fit = eval.fitness(&parent, &targets, &all)?;
    let (evo, evo_fit) = if final_fit <= base_fit[best] {
        (parent, final_fit)
    } else {
        (start, base_fit[best])
    };

    // The optimum on the calibration windows, when asked (a --drop budget
    // small enough: checked above).
    let exhaustive = if let (true, DepthBudget::Drop(k)) = (opts.exhaustive, opts.budget) {
        let all_configs = all_drops(n, k);
        let pb = progress::bar(all_configs.len() as u64, "exhaustive", "cfg", opts.quiet);
        let mut best: Option<(f64, Choice)> = None;
        for chunk in all_configs.chunks(16) {
            let fit = eval.fitness_many(chunk, None, &targets, &all)?;
            for (c, f) in chunk.iter().zip(fit) {
                if best.as_ref().is_none_or(|(b, _)| f < *b) {
                    best = Some((f, c.clone()));
                }
            }
            pb.inc(chunk.len() as u64);
        }
        pb.finish_and_clear();
        best
    } else {
        None
    };

    let mut configs: Vec<DepthConfig> = baselines
        .iter()
        .zip(&base_fit)
        .map(|((name, c), &f)| {
            to_config(
                &units,
                c,
                num_layers,
                name,
                opts.whole_blocks,
                f,
                params_kept(c),
            )
        })
        .collect();
    configs.push(to_config(
        &units,
        &evo,
        num_layers,
        "evopress",
        opts.whole_blocks,
        evo_fit,
        params_kept(&evo),
    ));
    if let Some((f, c)) = exhaustive {
        configs.push(to_config(
            &units,
            &c,
            num_layers,
            "exhaustive",
            opts.whole_blocks,
            f,
            params_kept(&c),
        ));
    }
    Ok(DepthOutcome {
        configs,
        block_influence: influence,
        kl_alone,
        calib_windows: all.len(),
        total_params,
        unit_params: unit_sizes,
        history,
        stats: eval.stats,
        seconds: start_time.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dropped(c: &Choice) -> usize {
        c.iter().filter(|&&k| k == 0).count()
    }

    #[test]
    fn swaps_keep_the_budget_and_the_type_counts() {
        let units = depth_units(8, false);
        let types: Vec<usize> = units.iter().map(|u| unit_type(u)).collect();
        let parent = lowest(
            &(0..16).map(|i| (i * 7 % 16) as f64).collect::<Vec<_>>(),
            &[1; 16],
            5,
        );
        assert_eq!(dropped(&parent), 5);
        let count =
            |c: &Choice, ty: usize| (0..16).filter(|&i| types[i] == ty && c[i] == 0).count();
        let mut rng = gen_rng(3, 0, 0);
        let mut made = 0;
        for _ in 0..300 {
            if let Some(c) = mutate(&parent, &types, 3, &mut rng) {
                assert_eq!(dropped(&c), 5);
                assert_ne!(c, parent);
                assert_eq!(count(&c, 0), count(&parent, 0));
                assert_eq!(count(&c, 1), count(&parent, 1));
                made += 1;
            }
        }
        assert!(made > 200, "only {made} offspring");
    }

    #[test]
    fn baselines_pick_exactly_the_budget() {
        assert_eq!(last_units(&[1; 6], 2), vec![1, 1, 1, 1, 0, 0]);
        // Ties go to the earlier unit, so the choice is deterministic.
        assert_eq!(lowest(&[0.5, 0.1, 0.1, 0.9], &[1; 4], 2), vec![1, 0, 0, 1]);
        assert_eq!(lowest(&[0.2, 0.2, 0.2, 0.2], &[1; 4], 3), vec![0, 0, 0, 1]);
        // A parameter budget drops until enough is removed: sizes 3, 5 and
        // need 6 take two units.
        assert_eq!(last_units(&[3, 5, 3, 5], 6), vec![1, 1, 0, 0]);
        assert_eq!(
            lowest(&[0.1, 0.3, 0.2, 0.9], &[3, 5, 3, 5], 6),
            vec![0, 1, 0, 1]
        );
        // Overshoot put back: 3 + 3 < 7, 3 + 3 + 5 ≥ 7, and one 3 is not
        // needed: the later (more important) one returns.
        assert_eq!(
            lowest(&[0.1, 0.3, 0.2, 0.9], &[3, 5, 3, 5], 7),
            vec![0, 0, 1, 1]
        );
        assert_eq!(
            lowest(&[0.1, 0.2, 0.3, 0.9], &[3, 3, 5, 5], 7),
            vec![0, 1, 0, 1]
        );
    }

    #[test]
    fn exhaustive_enumeration_is_every_combination_once() {
        let all = all_drops(6, 2);
        assert_eq!(all.len() as u64, choose(6, 2));
        assert_eq!(all.len(), 15);
        let set: HashSet<Choice> = all.iter().cloned().collect();
        assert_eq!(set.len(), 15);
        assert!(all.iter().all(|c| dropped(c) == 2));
        assert_eq!(choose(16, 4), 1820);
        assert_eq!(choose(8, 0), 1);
        assert_eq!(choose(3, 5), 0);
        assert_eq!(all_drops(4, 4), vec![vec![0, 0, 0, 0]]);
    }

    #[test]
    fn the_budget_must_leave_a_model() {
        // 100 parameters, units of 20 and 30: at least 100 − 50 + 20 = 70 stay.
        let p = [20, 30];
        assert!(budget_sizes(DepthBudget::Params(100), 100, &p, false).is_err());
        assert!(budget_sizes(DepthBudget::Params(69), 100, &p, false).is_err());
        assert_eq!(
            budget_sizes(DepthBudget::Params(70), 100, &p, false).unwrap(),
            (30, vec![20, 30])
        );
        assert!(check_drop(0, 16, false).is_err());
        assert!(check_drop(16, 16, false).is_err());
        assert!(check_drop(8, 8, true).is_err());
        assert!(check_drop(15, 16, false).is_ok());
    }

    #[test]
    fn units_cover_every_sublayer_once() {
        for whole in [false, true] {
            let u = depth_units(5, whole);
            assert_eq!(u.len(), if whole { 5 } else { 10 });
            let mut all: Vec<SublayerId> = u.into_iter().flatten().collect();
            let n = all.len();
            all.sort();
            all.dedup();
            assert_eq!(all.len(), n);
            assert_eq!(n, 10);
        }
    }
}
