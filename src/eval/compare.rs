//! Several models evaluated against one base on the same held-out text, in
//! groups whose weights fit a memory budget (the base's f32 size + 512 MiB):
//! the comparison rows of `compress`'s report.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::perplexity::{
    WindowOptions, WindowScores, logits_chunk_rows, score_windows_multi, usable_windows,
};
use crate::database::{Choice, Database};
use crate::error::Result;
use crate::model::Model;
use crate::progress;

/// The comparison rows of the report (each is a forward pass over the
/// evaluation text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compare {
    /// Every uniform level, knapsack at the target and ± 0.5 bits.
    All,
    /// The uniform levels just below and above the target, knapsack at it.
    Neighbours,
    /// No comparison rows.
    None,
    /// `All` for models under 50 M parameters, `Neighbours` above.
    Auto,
}

impl Compare {
    /// `Auto` resolved for a model of `params` parameters.
    pub fn resolve(self, params: usize) -> Compare {
        match self {
            Compare::Auto if params < 50_000_000 => Compare::All,
            Compare::Auto => Compare::Neighbours,
            c => c,
        }
    }
}

/// A model the evaluation compares with the base, built when its turn comes.
pub enum Contender {
    /// Every layer at one database level (every layer must have it; for a
    /// database whose layers lack some levels use `Choice(space.all_at(k))`).
    Uniform(String),
    /// A level per layer of the database's search space (a searched or
    /// knapsack selection).
    Choice(Choice),
    /// The exported model, loaded from disk.
    Exported(PathBuf),
}

impl Contender {
    fn build(&self, base: &Model, db: &Database) -> Result<Model> {
        let mut m = match self {
            Contender::Exported(path) => return Model::load(path),
            _ => base.clone(),
        };
        match self {
            Contender::Uniform(level) => db.apply(&mut m, |_| Some(level.clone()))?,
            Contender::Choice(c) => {
                let levels = db.space.level_names(c);
                db.apply(&mut m, |id| levels.get(&id).cloned())?
            }
            Contender::Exported(_) => unreachable!("returned above"),
        }
        Ok(m)
    }
}

/// Bytes the evaluation may use besides the base model: the base's f32 size
/// plus 512 MiB, so that evaluation peaks near 2 × the model + 512 MiB.
fn eval_extra_budget(model_bytes: u64) -> u64 {
    model_bytes + (512 << 20)
}

/// Resident memory of the process during the evaluation besides the base,
/// the compared models and the logits: what the earlier stages leave live
/// (153 MiB on the 135 M shape after freed memory is returned) and the
/// allocator's slack around the models (docs/scale.md).
pub const EVAL_PROCESS_BYTES: u64 = 192 << 20;

/// Windows per evaluation batch (one forward pass): at most 8, and fewer
/// when `windows·seq_len·vocab` f32 would pass 128 MiB. The logits are no
/// longer held for a whole batch (they are computed a slice of rows at a
/// time, [`eval_logits_bytes`]); the rule stays because large vocabularies
/// go with large models, whose forward scratch grows with the batch.
pub fn eval_batch(seq_len: usize, vocab: usize) -> usize {
    ((128usize << 20) / (seq_len.max(1) * vocab.max(1) * 4)).clamp(1, 8)
}

/// Bytes of logits the scoring holds at once: one slice of rows
/// ([`logits_chunk_rows`]) of the base's logits and one of a model's.
pub fn eval_logits_bytes(w: &WindowOptions, vocab: usize) -> u64 {
    let rows = logits_chunk_rows(vocab).min(w.batch.max(1) * w.seq_len);
    2 * (rows * vocab * 4) as u64
}

/// Splits the contenders into groups evaluated together (the base is re-run
/// once per group): a group holds as many models as fit in the budget, and
/// at least one.
pub fn eval_groups(
    contenders: &[&Contender],
    model_bytes: u64,
    linear_bytes: u64,
    logits_bytes: u64,
) -> Vec<Vec<usize>> {
    let budget = eval_extra_budget(model_bytes).saturating_sub(logits_bytes + EVAL_PROCESS_BYTES);
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut used = 0u64;
    for (i, c) in contenders.iter().enumerate() {
        let cost = match c {
            Contender::Exported(_) => model_bytes,
            _ => linear_bytes,
        };
        match groups.last_mut() {
            Some(g) if used + cost <= budget => {
                g.push(i);
                used += cost;
            }
            _ => {
                groups.push(vec![i]);
                used = cost;
            }
        }
    }
    groups
}

/// What [`compare`] measured: each contender's scores per text label, and the
/// base's own.
pub struct Compared {
    pub contenders: Vec<BTreeMap<String, WindowScores>>,
    pub base: BTreeMap<String, WindowScores>,
}

/// Scores every contender (and the base itself) on every text, KL against
/// `base`, building at most one group of contenders at a time.
pub fn compare(
    base: &Model,
    db: &Database,
    contenders: &[Contender],
    texts: &[(String, Vec<u32>)],
    wopts: &WindowOptions,
    quiet: bool,
) -> Result<Compared> {
    let vocab = base.config.vocab_size;
    let groups = eval_groups(
        &contenders.iter().collect::<Vec<_>>(),
        base.config.num_parameters() as u64 * 4,
        db.space.total_params * 4,
        eval_logits_bytes(wopts, vocab),
    );
    let total: usize = texts
        .iter()
        .map(|(_, tokens)| usable_windows(tokens.len(), wopts) * wopts.seq_len)
        .sum::<usize>()
        * (contenders.len() + groups.len());
    let pb = progress::bar(total as u64, "evaluation", "tok", quiet);
    let mut out = Compared {
        contenders: vec![BTreeMap::new(); contenders.len()],
        base: BTreeMap::new(),
    };
    for (g, group) in groups.iter().enumerate() {
        // The previous group's models are dropped: free their memory first.
        super::release_freed_memory(&format!("before group {}", g + 1));
        let models: Vec<Model> = group
            .iter()
            .map(|&i| contenders[i].build(base, db))
            .collect::<Result<_>>()?;
        super::log_memory(&format!("group {} built ({} models)", g + 1, models.len()));
        // The base scores itself once, with the first group.
        let mut refs: Vec<&Model> = models.iter().collect();
        if g == 0 {
            refs.push(base);
        }
        for (label, tokens) in texts {
            let scores =
                score_windows_multi(&refs, Some(base), tokens, wopts, |k| pb.inc(k as u64))?;
            for (k, s) in scores.into_iter().enumerate() {
                match group.get(k) {
                    Some(&i) => out.contenders[i].insert(label.clone(), s),
                    None => out.base.insert(label.clone(), s),
                };
            }
            super::log_memory(&format!("group {} scored {label}", g + 1));
        }
    }
    pb.finish_and_clear();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluation_groups_fit_the_memory_budget() {
        let u = |s: &str| Contender::Uniform(s.into());
        let cs = [
            u("a"),
            u("b"),
            u("c"),
            u("d"),
            Contender::Exported("x".into()),
        ];
        let refs: Vec<&Contender> = cs.iter().collect();
        let mib = 1u64 << 20;
        // A small model: everything in one group (the base runs once).
        assert_eq!(
            eval_groups(&refs, 30 * mib, 25 * mib, 60 * mib),
            vec![vec![0, 1, 2, 3, 4]]
        );
        // A 650 MiB model with 425 MiB of linear weights (the 135 M shape):
        // a second configuration next to the first would pass 2 × 650 +
        // 512 MiB with the base, the logits and the process, so one per group.
        let g = eval_groups(&refs, 650 * mib, 425 * mib, 300 * mib);
        assert_eq!(g, vec![vec![0], vec![1], vec![2], vec![3], vec![4]]);
        // With 300 MiB of linear weights two fit.
        let g = eval_groups(&refs, 650 * mib, 300 * mib, 300 * mib);
        assert_eq!(g, vec![vec![0, 1], vec![2, 3], vec![4]]);
        // Never an empty group, even when one model exceeds the budget.
        let g = eval_groups(&refs, 650 * mib, 2000 * mib, 300 * mib);
        assert_eq!(g.len(), 5);
    }

    #[test]
    fn evaluation_batches_bound_the_logits() {
        assert_eq!(eval_batch(256, 4096), 8);
        assert_eq!(eval_batch(256, 49_152), 2);
        assert_eq!(eval_batch(256, 151_936), 1);
        assert_eq!(eval_batch(64, 49_152), 8);
        // Scoring holds two slices of logits, not a batch: at most 128 MiB
        // whatever the vocabulary, less when the batch is smaller.
        let w = |batch| WindowOptions {
            seq_len: 256,
            batch,
            ..WindowOptions::default()
        };
        for vocab in [49_152, 128_256, 151_936, 262_144] {
            assert!(eval_logits_bytes(&w(8), vocab) <= 128 << 20, "{vocab}");
        }
        assert_eq!(eval_logits_bytes(&w(1), 4096), 2 * 256 * 4096 * 4);
    }

    #[test]
    fn auto_comparison_depends_on_the_model_size() {
        assert_eq!(Compare::Auto.resolve(8_400_000), Compare::All);
        assert_eq!(Compare::Auto.resolve(135_000_000), Compare::Neighbours);
        assert_eq!(Compare::None.resolve(1), Compare::None);
    }
}
