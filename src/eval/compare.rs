//! Several models evaluated against one base on the same held-out text, in
//! groups whose weights fit a memory budget (the base's f32 size + 512 MiB):
//! the comparison rows of `compress`'s report.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::perplexity::{
    BaseHidden, WindowOptions, WindowScores, logits_chunk_rows, score_windows_shared,
    usable_windows,
};
use crate::database::{Choice, Database};
use crate::error::Result;
use crate::model::{Model, ModelConfig};
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

/// How the evaluation spends the memory it may use besides the base
/// ([`eval_extra_budget`]); the pipeline sizes its groups with it and the
/// dry run predicts with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalMemory {
    /// Scoring one batch: the logits slices ([`eval_logits_bytes`]), the
    /// forward's activations and the base's and a model's final hidden
    /// states.
    pub scoring: u64,
    /// The base's hidden states over every evaluation token, kept across
    /// groups so that later groups run only the base's head; 0 when they
    /// would take more than an eighth of the budget (then the base is re-run
    /// whole in every group).
    pub base_hidden: u64,
    /// What is left for one group's models.
    pub models: u64,
}

/// The evaluation's memory plan for a model of config `c` scoring
/// `eval_tokens` tokens (all texts) with window options `w`.
pub fn eval_memory(c: &ModelConfig, w: &WindowOptions, eval_tokens: usize) -> EvalMemory {
    let extra = eval_extra_budget(c.num_parameters() as u64 * 4);
    let batch_tokens = (w.batch.max(1) * w.seq_len) as u64;
    // Per token of the batch, f32: q/k/v, gate and up with their product,
    // a few hidden-sized buffers; and the two final hidden states.
    let activations = batch_tokens
        * (c.qkv_out() + 4 * c.intermediate_size + 4 * c.hidden_size + 2 * c.hidden_size) as u64
        * 4;
    let scoring = eval_logits_bytes(w, c.vocab_size) + activations;
    let hidden = BaseHidden::bytes(eval_tokens, c.hidden_size);
    let base_hidden = if hidden <= extra / 8 { hidden } else { 0 };
    EvalMemory {
        scoring,
        base_hidden,
        models: extra.saturating_sub(scoring + base_hidden + EVAL_PROCESS_BYTES),
    }
}

/// Splits the contenders into groups evaluated together: a group holds as
/// many models as fit in `budget` bytes ([`EvalMemory::models`]), and at
/// least one. A configuration costs its linear weights in f32 (it shares the
/// base's embedding, norms and head); the exported model is loaded whole.
pub fn eval_groups(
    contenders: &[&Contender],
    model_bytes: u64,
    linear_bytes: u64,
    budget: u64,
) -> Vec<Vec<usize>> {
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
    let tokens: usize = texts
        .iter()
        .map(|(_, tokens)| usable_windows(tokens.len(), wopts) * wopts.seq_len)
        .sum();
    let memory = eval_memory(&base.config, wopts, tokens);
    let groups = eval_groups(
        &contenders.iter().collect::<Vec<_>>(),
        base.config.num_parameters() as u64 * 4,
        db.space.total_params * 4,
        memory.models,
    );
    // Every contender and the base (which scores itself once) advance it.
    let pb = progress::bar(
        (tokens * (contenders.len() + 1)) as u64,
        "evaluation",
        "tok",
        quiet,
    );
    let mut out = Compared {
        contenders: vec![BTreeMap::new(); contenders.len()],
        base: BTreeMap::new(),
    };
    // The base's hidden states per text, when the plan keeps them.
    let mut base_hidden: Vec<BaseHidden> = texts.iter().map(|_| BaseHidden::default()).collect();
    for (g, group) in groups.iter().enumerate() {
        // The previous group's models are dropped: free their memory first.
        super::release_freed_memory(&format!("before group {}", g + 1));
        let models: Vec<Model> = group
            .iter()
            .map(|&i| contenders[i].build(base, db))
            .collect::<Result<_>>()?;
        // Building (loading an export, dequantizing levels) frees temporaries
        // the allocator would otherwise keep under the scoring's peak.
        super::release_freed_memory(&format!("group {} built ({} models)", g + 1, models.len()));
        // The base scores itself once, with the first group.
        let mut refs: Vec<&Model> = models.iter().collect();
        if g == 0 {
            refs.push(base);
        }
        for ((label, tokens), cache) in texts.iter().zip(base_hidden.iter_mut()) {
            let cache = (memory.base_hidden > 0).then_some(cache);
            let scores = score_windows_shared(&refs, Some(base), cache, tokens, wopts, |k| {
                pb.inc(k as u64)
            })?;
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

    fn four_configurations_and_an_export() -> [Contender; 5] {
        let u = |s: &str| Contender::Uniform(s.into());
        [
            u("a"),
            u("b"),
            u("c"),
            u("d"),
            Contender::Exported("x".into()),
        ]
    }

    #[test]
    fn evaluation_groups_fit_the_memory_budget() {
        let cs = four_configurations_and_an_export();
        let refs: Vec<&Contender> = cs.iter().collect();
        let mib = 1u64 << 20;
        // A small model: everything in one group (the base runs once).
        assert_eq!(
            eval_groups(&refs, 30 * mib, 25 * mib, 290 * mib),
            vec![vec![0, 1, 2, 3, 4]]
        );
        // Two configurations of 300 MiB fit in 700 MiB; the exported
        // model of 650 MiB alone.
        let g = eval_groups(&refs, 650 * mib, 300 * mib, 700 * mib);
        assert_eq!(g, vec![vec![0, 1], vec![2, 3], vec![4]]);
        // Never an empty group, even when one model exceeds the budget.
        let g = eval_groups(&refs, 650 * mib, 2000 * mib, 300 * mib);
        assert_eq!(g.len(), 5);
    }

    /// The 135 M shape (untied, vocab 49,152), evaluated as `compress` does
    /// (2 texts × 32 windows of 256): each configuration alone, and the
    /// peak — process, base, the exported model, scoring, the kept hidden
    /// states — within 2 × the f32 model + 512 MiB. With two
    /// configurations in a group (what the plan did before it counted the
    /// scoring's activations and the process) the peak passed the bound by
    /// 55 MiB (docs/scale.md).
    #[test]
    fn the_135m_shape_is_evaluated_within_its_bound() {
        let c = ModelConfig::from_json(
            &serde_json::json!({
                "architectures": ["LlamaForCausalLM"], "model_type": "llama",
                "hidden_size": 576, "intermediate_size": 1536,
                "num_hidden_layers": 30, "num_attention_heads": 9,
                "num_key_value_heads": 3, "vocab_size": 49152,
                "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
                "tie_word_embeddings": false
            }),
            std::path::Path::new("config.json"),
        )
        .unwrap();
        let w = WindowOptions {
            seq_len: 256,
            batch: eval_batch(256, c.vocab_size),
            ..WindowOptions::default()
        };
        let m = eval_memory(&c, &w, 2 * 32 * 256);
        let model = c.num_parameters() as u64 * 4;
        let linear = 30 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536) as u64 * 4;
        assert_eq!(m.base_hidden, 2 * 32 * 256 * 576 * 4);
        let cs = four_configurations_and_an_export();
        let refs: Vec<&Contender> = cs.iter().collect();
        let g = eval_groups(&refs, model, linear, m.models);
        assert_eq!(g.len(), 5, "{g:?}");
        let peak = EVAL_PROCESS_BYTES + model + model + m.scoring + m.base_hidden;
        assert!(peak <= 2 * model + (512 << 20), "{peak}");
        // What the process measured with two configurations per group.
        assert!(EVAL_PROCESS_BYTES + model + 2 * linear + m.scoring > 2 * model + (512 << 20));
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
