//! EvoPress (Sieberling, Kuznedelev, Kurtic, Alistarh, arXiv 2410.14649):
//! a (1 + λ) evolutionary search with level-switch mutations and
//! multi-step selection on increasingly many calibration tokens.
//!
//! Per generation:
//! 1. λ offspring of the parent, each with `min(U{1,3}, U{1,3})` level
//!    switches that keep the total at or under the budget and close to it:
//!    either within a group of same-shaped layers one layer goes one level
//!    up and another one down, or one layer goes up and random layers go down
//!    until the total is back under the budget (rejected if they gave back
//!    much more than the raise took). No offspring equals the parent or
//!    another offspring.
//! 2. Selection in stages: each stage draws a fresh random sample of
//!    calibration windows and keeps the fittest; the parent joins the last
//!    stage (elitism). The winner is the next parent.
//!
//! Head tensors in the space (the GGUF embedding and output, whose types a
//! file-size budget pays for): the first parent is the knapsack solution at
//! the default types, the knapsack solutions for every other combination of
//! their types join generation 0's offspring (selected on the same stages and
//! tokens), and mutations move them like any layer.
//!
//! Every random choice comes from a generator seeded by (seed, generation),
//! and the state is checkpointed after each generation, so a search killed
//! and resumed ends with the same configuration as an uninterrupted one.

use std::collections::HashSet;
use std::path::Path;

use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::fitness::{BaseTargets, EvalStats, Evaluator, RaceRule};
use crate::database::{Choice, SearchSpace};
use crate::error::{Error, Result};

/// One selection stage: evaluate on `tokens` calibration tokens, keep `survivors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    pub tokens: usize,
    pub survivors: usize,
}

/// The default selection stages: 16 offspring on 512 fresh tokens, the best 4
/// and the parent on 2,048 (stages of at most [`RACE_MIN_WINDOWS`] windows
/// never race), each stage drawing its windows from a 32 k-token pool ([`DEFAULT_POOL_TOKENS`]). One generation then
/// costs ≈ 19 k forward tokens, and the default 16 generations ≈ 9 passes
/// over the pool at any model size. On the demo this is within 1–3 % of the
/// held-out KL of the three-stage `512:4,1024:2,4096:1` (the default until
/// 2026-12-03) for 24 % fewer forward tokens, and within 5 % of the earlier
/// 40 × `1024:4,4096:2,16384:1` schedule's for 11 × fewer (docs/search.md).
pub const DEFAULT_STAGES: [Stage; 2] = [
    Stage {
        tokens: 512,
        survivors: 4,
    },
    Stage {
        tokens: 2048,
        survivors: 1,
    },
];

/// `DEFAULT_STAGES` as a command-line string.
pub const DEFAULT_STAGES_ARG: &str = "512:4,2048:1";

/// Calibration tokens the stages sample their windows from, by default (less
/// when the calibration text is shorter, never less than the largest stage).
pub const DEFAULT_POOL_TOKENS: usize = 32768;

/// Parses `2048:8,16384:2,65536:1`.
pub fn parse_stages(s: &str) -> std::result::Result<Vec<Stage>, String> {
    let stages: Vec<Stage> = s
        .split(',')
        .map(|p| {
            let (t, k) = p
                .split_once(':')
                .ok_or_else(|| format!("stage `{p}` is not TOKENS:SURVIVORS"))?;
            Ok(Stage {
                tokens: t
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad token count in `{p}`"))?,
                survivors: k
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad survivor count in `{p}`"))?,
            })
        })
        .collect::<std::result::Result<_, String>>()?;
    if stages.is_empty() || stages.last().map(|s| s.survivors) != Some(1) {
        return Err("the last stage must keep exactly 1 survivor".into());
    }
    if stages.iter().any(|s| s.survivors == 0 || s.tokens == 0) {
        return Err("stages need at least one token and one survivor".into());
    }
    Ok(stages)
}

/// How the first parent is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// All layers at the target if it is a level; otherwise the fittest of
    /// several random feasible points.
    Random,
    /// The knapsack solution (raced against the uniform configuration when
    /// the target is exactly a level; when GGUF head types are searched, the
    /// other types' knapsack solutions join the first generation's offspring).
    Knapsack,
}

impl std::str::FromStr for Init {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "random" => Ok(Init::Random),
            "knapsack" => Ok(Init::Knapsack),
            o => Err(format!("unknown init `{o}`; choose random or knapsack")),
        }
    }
}

/// Search parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvoParams {
    pub generations: usize,
    pub offspring: usize,
    pub stages: Vec<Stage>,
    /// Largest number of switches per offspring (the reference uses 3).
    pub max_mutations: usize,
    pub init: Init,
    /// Random feasible starting points to compare (random init, fractional target).
    pub initial_candidates: usize,
    pub seed: u64,
    /// Racing within a stage: an offspring is dropped once it is worse than
    /// the stage's last survivor by this many standard errors of the paired
    /// per-window KL difference (0: score every offspring on every window).
    #[serde(default)]
    pub race_z: f64,
}

/// Windows scored before a race may eliminate anyone.
pub(crate) const RACE_MIN_WINDOWS: usize = 8;

impl Default for EvoParams {
    fn default() -> Self {
        EvoParams {
            generations: 16,
            offspring: 16,
            stages: DEFAULT_STAGES.to_vec(),
            max_mutations: 3,
            init: Init::Knapsack,
            initial_candidates: 8,
            seed: 0,
            race_z: 2.5,
        }
    }
}

/// What one generation did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationLog {
    pub generation: usize,
    /// The parent's fitness after selection (mean KL on the last stage's tokens).
    pub fitness: f64,
    /// Best fitness in each stage.
    pub stage_best: Vec<f64>,
    pub bits_per_weight: f64,
    /// Whether an offspring replaced the parent.
    pub improved: bool,
}

/// The checkpoint written after every generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub format: String,
    pub params: EvoParams,
    pub target_bits: f64,
    pub levels: Vec<String>,
    pub layers: Vec<String>,
    /// [`BaseTargets::fingerprint`] of the calibration data the fitness used.
    #[serde(default)]
    pub targets: String,
    pub generations_done: usize,
    pub parent: Choice,
    pub parent_fitness: f64,
    pub history: Vec<GenerationLog>,
    pub stats: EvalStats,
}

/// The search's result.
#[derive(Debug, Clone)]
pub struct EvoResult {
    pub choice: Choice,
    pub fitness: f64,
    pub history: Vec<GenerationLog>,
    pub stats: EvalStats,
}

pub(crate) fn gen_rng(seed: u64, generation: u64, salt: u64) -> ChaCha8Rng {
    // SplitMix-style mixing so neighbouring generations get unrelated streams.
    let mut z = seed
        ^ generation.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ salt.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ChaCha8Rng::seed_from_u64(z ^ (z >> 31))
}

/// Groups of layers with identical shapes and level costs.
fn groups(space: &SearchSpace) -> Vec<Vec<usize>> {
    let mut keys: Vec<(Vec<u64>, Vec<usize>)> = Vec::new();
    for i in 0..space.len() {
        let key: Vec<u64> = space.options(i).iter().map(|o| o.storage_bits).collect();
        match keys.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(i),
            None => keys.push((key, vec![i])),
        }
    }
    keys.into_iter().map(|(_, v)| v).collect()
}

struct Mutator<'a> {
    space: &'a SearchSpace,
    budget: u64,
    groups: Vec<Vec<usize>>,
}

impl Mutator<'_> {
    fn cost(&self, i: usize, k: usize) -> u64 {
        self.space.options(i)[k].storage_bits
    }

    /// One layer up and another of the same group down.
    fn group_swap(&self, c: &mut Choice, rng: &mut ChaCha8Rng) -> bool {
        let eligible: Vec<&Vec<usize>> = self.groups.iter().filter(|g| g.len() >= 2).collect();
        let Some(g) = eligible.get(rng.random_range(0..eligible.len().max(1))) else {
            return false;
        };
        let ups: Vec<usize> = g
            .iter()
            .copied()
            .filter(|&i| c[i] < self.space.top(i))
            .collect();
        let downs: Vec<usize> = g.iter().copied().filter(|&i| c[i] > 0).collect();
        if ups.is_empty() || downs.is_empty() {
            return false;
        }
        let up = ups[rng.random_range(0..ups.len())];
        let down = downs[rng.random_range(0..downs.len())];
        if up == down {
            return false;
        }
        let total = self.space.storage_bits(c);
        let new_total = total + self.cost(up, c[up] + 1) - self.cost(up, c[up])
            + self.cost(down, c[down] - 1)
            - self.cost(down, c[down]);
        if new_total > self.budget {
            return false;
        }
        c[up] += 1;
        c[down] -= 1;
        true
    }

    /// One layer up, then random layers down until back under the budget.
    fn raise_lower(&self, c: &mut Choice, rng: &mut ChaCha8Rng) -> bool {
        let n = c.len();
        let ups: Vec<usize> = (0..n).filter(|&i| c[i] < self.space.top(i)).collect();
        if ups.is_empty() {
            return false;
        }
        let before = self.space.storage_bits(c);
        let mut trial = c.clone();
        let up = ups[rng.random_range(0..ups.len())];
        let raised = self.cost(up, trial[up] + 1) - self.cost(up, trial[up]);
        trial[up] += 1;
        let mut total = before + raised;
        while total > self.budget {
            let downs: Vec<usize> = (0..n).filter(|&i| i != up && trial[i] > 0).collect();
            if downs.is_empty() {
                return false;
            }
            let d = downs[rng.random_range(0..downs.len())];
            total -= self.cost(d, trial[d]) - self.cost(d, trial[d] - 1);
            trial[d] -= 1;
        }
        // Reject moves that leave much more slack than before and than the raise.
        let slack_before = self.budget - before.min(self.budget);
        if self.budget - total > slack_before.max(raised) {
            return false;
        }
        *c = trial;
        true
    }

    fn mutate(
        &self,
        parent: &Choice,
        max_mutations: usize,
        rng: &mut ChaCha8Rng,
    ) -> Option<Choice> {
        let m = max_mutations.max(1);
        let switches = rng.random_range(1..=m).min(rng.random_range(1..=m));
        let mut c = parent.clone();
        for _ in 0..switches {
            let mut done = false;
            for _ in 0..64 {
                done = if rng.random_bool(0.5) {
                    self.group_swap(&mut c, rng)
                } else {
                    self.raise_lower(&mut c, rng)
                };
                if done {
                    break;
                }
            }
            if !done {
                return None;
            }
        }
        (c != *parent && self.space.storage_bits(&c) <= self.budget).then_some(c)
    }
}

/// Random feasible point: everything at `start`, lowered at random until it fits.
fn random_feasible(space: &SearchSpace, start: usize, budget: u64, rng: &mut ChaCha8Rng) -> Choice {
    let mut c = space.all_at(start);
    let mut total = space.storage_bits(&c);
    while total > budget {
        let downs: Vec<usize> = (0..c.len()).filter(|&i| c[i] > 0).collect();
        let d = downs[rng.random_range(0..downs.len())];
        let l = space.options(d);
        total -= l[c[d]].storage_bits - l[c[d] - 1].storage_bits;
        c[d] -= 1;
    }
    c
}

/// For every combination of the head tensors' levels that leaves the linear
/// layers at least their lowest levels, the knapsack solution of what is left.
fn head_starts(space: &SearchSpace, budget: u64) -> Vec<Choice> {
    let n = space.layers.len();
    let mut combos: Vec<Vec<usize>> = vec![vec![]];
    for h in &space.head {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                (0..h.levels.len()).map(move |k| {
                    let mut c = c.clone();
                    c.push(k);
                    c
                })
            })
            .collect();
    }
    let linear_low: u64 = space.storage_bits(&space.lowest()[..n]);
    combos
        .into_iter()
        .filter_map(|head| {
            let left = budget.checked_sub(space.head_storage_bits(&head))?;
            if left < linear_low {
                return None;
            }
            let mut c = super::knapsack::solve_linear(space, left).ok()?;
            c.extend(head);
            Some(c)
        })
        .collect()
}

pub(crate) fn sample_windows(
    n_pool: usize,
    tokens: usize,
    seq_len: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<usize> {
    let want = tokens.div_ceil(seq_len).clamp(1, n_pool);
    if want == n_pool {
        return (0..n_pool).collect();
    }
    let mut all: Vec<usize> = (0..n_pool).collect();
    all.shuffle(rng);
    all.truncate(want);
    all.sort_unstable();
    all
}

/// Runs (or resumes from `checkpoint`) the search.
#[allow(clippy::too_many_arguments)]
pub fn evopress(
    space: &SearchSpace,
    eval: &mut Evaluator<'_>,
    targets: &BaseTargets,
    target_bits: f64,
    params: &EvoParams,
    checkpoint: Option<&Path>,
    abort_after: Option<usize>,
    mut on_generation: impl FnMut(&GenerationLog, &EvalStats),
) -> Result<EvoResult> {
    space.check_target(target_bits)?;
    if params.offspring == 0 {
        return Err(Error::option(
            "--offspring",
            "--offspring must be at least 1",
        ));
    }
    let budget = space.budget_bits(target_bits);
    let mutator = Mutator {
        space,
        budget,
        groups: groups(space),
    };
    let layer_names: Vec<String> = (0..space.len()).map(|i| space.name(i)).collect();
    let n_pool = targets.windows();
    let seq = targets.seq_len;
    let fingerprint = targets.fingerprint();

    let resumed = match checkpoint.filter(|p| p.exists()) {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            let ck: Checkpoint = serde_json::from_str(&text)
                .map_err(|e| Error::data(p, format!("not a search checkpoint: {e}")))?;
            if ck.targets != fingerprint {
                return Err(Error::data(
                    p,
                    "this checkpoint belongs to a search on other calibration data (files, --calib-tokens, --seq-len or --topk differ); delete it or choose another --out",
                ));
            }
            if ck.params != *params
                || ck.target_bits != target_bits
                || ck.levels != space.levels
                || ck.layers != layer_names
            {
                return Err(Error::data(
                    p,
                    "this checkpoint belongs to a search with other parameters, target or database; delete it or choose another --out",
                ));
            }
            Some(ck)
        }
        None => None,
    };

    // The other GGUF head types' starts join generation 0's offspring: they
    // are selected on the same stages and tokens as its mutations, at no
    // extra selection of their own.
    let mut rivals: Vec<Choice> = Vec::new();
    let mut start_rng = gen_rng(params.seed, u64::MAX, 1);
    let (mut parent, mut parent_fitness, mut history, start_gen) = match resumed {
        Some(ck) => {
            eval.stats = ck.stats;
            (
                ck.parent,
                Some(ck.parent_fitness),
                ck.history,
                ck.generations_done,
            )
        }
        None => {
            let rng = &mut start_rng;
            let exact = (0..space.levels.len())
                .find(|&k| (space.bits_per_weight(&space.all_at(k)) - target_bits).abs() < 1e-9);
            let first = params.stages[0];
            let windows = sample_windows(n_pool, first.tokens, seq, rng);
            let start = match (params.init, exact) {
                (Init::Knapsack, _) if !space.head.is_empty() => {
                    let default = super::knapsack::knapsack(space, target_bits)?;
                    rivals = head_starts(space, budget)
                        .into_iter()
                        .filter(|c| *c != default)
                        .collect();
                    default
                }
                // The target is exactly a level: the uniform configuration
                // races the knapsack's (the knapsack's additive layer-error
                // model misjudges sparsity levels: on the demo at 50 % its
                // start has 1.5 × uniform's KL).
                (Init::Knapsack, Some(k)) => {
                    let default = super::knapsack::knapsack(space, target_bits)?;
                    let uniform = space.all_at(k);
                    if uniform == default {
                        default
                    } else {
                        select(eval, params, &default, vec![uniform], targets, rng)?.0
                    }
                }
                (Init::Knapsack, None) => super::knapsack::knapsack(space, target_bits)?,
                (Init::Random, Some(k)) => space.all_at(k),
                (Init::Random, None) => {
                    let ceil = (0..space.levels.len())
                        .find(|&k| space.bits_per_weight(&space.all_at(k)) >= target_bits)
                        .unwrap_or(space.levels.len() - 1);
                    let cands: Vec<Choice> = (0..params.initial_candidates.max(1))
                        .map(|_| random_feasible(space, ceil, budget, rng))
                        .collect();
                    let f = eval.fitness_many(&cands, None, targets, &windows)?;
                    let best = (0..cands.len())
                        .min_by(|&a, &b| f[a].total_cmp(&f[b]).then(a.cmp(&b)))
                        .expect("non-empty");
                    cands[best].clone()
                }
            };
            (start, None, Vec::new(), 0)
        }
    };

    for generation in start_gen..params.generations {
        let mut rng = gen_rng(params.seed, generation as u64, 0);
        // Offspring: unique, different from the parent.
        let mut seen: HashSet<Choice> = HashSet::from([parent.clone()]);
        let mut offspring = Vec::with_capacity(params.offspring);
        let mut attempts = 0;
        while offspring.len() < params.offspring && attempts < params.offspring * 100 {
            attempts += 1;
            if let Some(c) = mutator.mutate(&parent, params.max_mutations, &mut rng)
                && seen.insert(c.clone())
            {
                offspring.push(c);
            }
        }
        if generation == 0 {
            for r in std::mem::take(&mut rivals) {
                if seen.insert(r.clone()) {
                    offspring.push(r);
                }
            }
        }
        if offspring.is_empty() {
            // No other configuration fits the budget (one level per layer,
            // or a budget at the ends of the levels): the parent is the
            // answer; nothing is left to search.
            break;
        }
        let (winner, fitness, stage_best) =
            select(eval, params, &parent, offspring, targets, &mut rng)?;
        let improved = winner != parent;
        parent = winner;
        parent_fitness = Some(fitness);
        let log = GenerationLog {
            generation,
            fitness,
            stage_best,
            bits_per_weight: space.bits_per_weight(&parent),
            improved,
        };
        on_generation(&log, &eval.stats);
        history.push(log);
        if let Some(p) = checkpoint {
            let ck = Checkpoint {
                format: "dynapress-evopress-checkpoint".into(),
                params: params.clone(),
                target_bits,
                levels: space.levels.clone(),
                layers: layer_names.clone(),
                targets: fingerprint.clone(),
                generations_done: generation + 1,
                parent: parent.clone(),
                parent_fitness: fitness,
                history: history.clone(),
                stats: eval.stats,
            };
            let text = serde_json::to_string_pretty(&ck).expect("serialises");
            crate::fsutil::write_atomic(p, text.as_bytes())?;
        }
        if abort_after == Some(generation + 1 - start_gen) {
            // Simulated crash for the resume test.
            std::process::abort();
        }
    }
    debug_assert!(space.storage_bits(&parent) <= budget);
    // No generation ran (nothing else fits the budget, or none asked for):
    // the start's fitness, on a last stage's worth of tokens (only then is it
    // needed: every generation scores the parent in its last stage).
    let fitness = match parent_fitness {
        Some(f) => f,
        None => {
            let last = params.stages.last().expect("validated").tokens;
            let windows = sample_windows(n_pool, last, seq, &mut start_rng);
            eval.fitness(&parent, targets, &windows)?
        }
    };
    Ok(EvoResult {
        choice: parent,
        fitness,
        history,
        stats: eval.stats,
    })
}

/// Multi-step selection of one generation (EvoPress's elitist staging): each
/// stage samples fresh calibration windows and keeps its fittest candidates,
/// racing out the clearly worse ones; the parent joins the last stage. Returns
/// the winner, its fitness on the last stage and each stage's best fitness.
pub(crate) fn select(
    eval: &mut Evaluator<'_>,
    params: &EvoParams,
    parent: &Choice,
    mut candidates: Vec<Choice>,
    targets: &BaseTargets,
    rng: &mut ChaCha8Rng,
) -> Result<(Choice, f64, Vec<f64>)> {
    let n_pool = targets.windows();
    let seq = targets.seq_len;
    let mut stage_best = Vec::with_capacity(params.stages.len());
    let mut fits = Vec::new();
    for (s, stage) in params.stages.iter().enumerate() {
        let last = s + 1 == params.stages.len();
        let windows = sample_windows(n_pool, stage.tokens, seq, rng);
        let keep = stage.survivors.min(candidates.len() + usize::from(last));
        let rule = RaceRule {
            keep,
            z: params.race_z,
            min_windows: RACE_MIN_WINDOWS,
            parent_competes: last,
        };
        let race = eval.race(&candidates, Some(parent), targets, &windows, &rule)?;
        if last {
            candidates.push(parent.clone());
        }
        let all: Vec<f64> = race
            .fitness
            .iter()
            .copied()
            .chain(race.parent_fitness)
            .collect();
        let order: Vec<usize> = race.order.into_iter().take(keep).collect();
        stage_best.push(all[order[0]]);
        candidates = order.iter().map(|&i| candidates[i].clone()).collect();
        fits = order.iter().map(|&i| all[i]).collect();
    }
    let winner = candidates.swap_remove(0);
    Ok((winner, fits[0], stage_best))
}

#[cfg(test)]
mod tests {
    use super::super::tests::toy_space;
    use super::*;

    #[test]
    fn mutations_respect_the_budget_and_differ_from_the_parent() {
        let s = toy_space(21);
        for target in [2.3, 3.0, 3.7, 5.0] {
            let budget = s.budget_bits(target);
            let m = Mutator {
                space: &s,
                budget,
                groups: groups(&s),
            };
            let mut rng = gen_rng(1, 0, 0);
            let parent = random_feasible(&s, 3, budget, &mut rng);
            assert!(s.storage_bits(&parent) <= budget);
            let mut made = 0;
            for _ in 0..500 {
                if let Some(c) = m.mutate(&parent, 3, &mut rng) {
                    assert!(s.storage_bits(&c) <= budget, "target {target}");
                    assert_ne!(c, parent);
                    let changed = c.iter().zip(&parent).filter(|(a, b)| a != b).count();
                    assert!(changed >= 1);
                    made += 1;
                }
            }
            assert!(
                made > 250,
                "target {target}: only {made} mutations succeeded"
            );
        }
    }

    #[test]
    fn stages_parse_and_validate() {
        assert_eq!(
            parse_stages("2048:8,16384:2,65536:1").unwrap(),
            vec![
                Stage {
                    tokens: 2048,
                    survivors: 8
                },
                Stage {
                    tokens: 16384,
                    survivors: 2
                },
                Stage {
                    tokens: 65536,
                    survivors: 1
                }
            ]
        );
        assert!(parse_stages("2048:8,16384:2").is_err());
        assert!(parse_stages("x").is_err());
    }

    #[test]
    fn generation_streams_are_reproducible_and_distinct() {
        let a: u64 = gen_rng(7, 3, 0).random();
        let b: u64 = gen_rng(7, 3, 0).random();
        let c: u64 = gen_rng(7, 4, 0).random();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
