//! `compress --dry-run`: predicted time, peak memory and disk of each stage,
//! before doing anything.
//!
//! Forward-pass speed is not derived from a GEMM benchmark: it is measured on
//! the model itself — one real transformer block and the real LM head, timed
//! on a batch of the search's shape — so the kernels, the shapes (hidden 576
//! is not hidden 4096) and the vocabulary all count. Loading one block and
//! the head costs a second or two even for a large model. The GPTQ sweeps of
//! the database are costed from a GEMM probe on the model's shapes.
//!
//! Every stage's formula counts the work the implementation does (block
//! forwards, head rows, GPTQ flops); docs/scale.md compares the predictions
//! with measurements.

use std::time::Instant;

use candle_core::Device;
use serde::Serialize;

use crate::error::Result;
use crate::eval::compare::{Compare, EVAL_PROCESS_BYTES, eval_batch, eval_memory};
use crate::eval::perplexity::WindowOptions;
use crate::model::{ModelFiles, Rope, Scratch};
use crate::pipeline::CompressOptions;
use crate::search::evopress::RACE_MIN_WINDOWS;
use crate::search::fitness::SEARCH_BATCH;
use crate::selection::Algo;

/// One stage's predicted cost.
#[derive(Debug, Clone, Serialize)]
pub struct StageEstimate {
    pub stage: String,
    pub seconds: f64,
    pub peak_ram_mib: f64,
}

/// What `compress --dry-run` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    pub stages: Vec<StageEstimate>,
    /// Peak resident memory of the whole `compress`: the largest stage's.
    pub peak_ram_mib: f64,
    pub database_disk_mib: f64,
    /// Measured f32 GEMM throughput of this machine (GFLOP/s), for GPTQ.
    pub gemm_gflops: f64,
    /// Measured forward throughput of this model (tokens/s, blocks + head).
    pub forward_tokens_per_second: f64,
    /// Measured seconds per token of one block and of the LM head.
    pub block_seconds_per_token: f64,
    pub head_seconds_per_token: f64,
    /// Calibration-token forwards the search is expected to run (each
    /// counted as a whole-model forward).
    pub search_forward_tokens: f64,
}

/// Measures this machine's GEMM speed on the model's shapes.
fn gemm_probe(hidden: usize, ff: usize) -> f64 {
    let (n, k, m) = (1024, hidden.min(4096), ff.min(8192));
    let x = vec![0.5f32; n * k];
    let w = vec![0.25f32; m * k];
    let mut out = vec![0f32; n * m];
    crate::model::kernels::matmul_wt(&x, k, &w, &mut out, false);
    let t = Instant::now();
    let reps = 3;
    for _ in 0..reps {
        crate::model::kernels::matmul_wt(&x, k, &w, &mut out, false);
    }
    2.0 * (n * k * m * reps) as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// Seconds per token of one block and of the head, timed on `b` windows of
/// `t` tokens of the real weights (block 0 and the real head).
fn forward_probe(files: &ModelFiles, b: usize, t: usize) -> Result<(f64, f64)> {
    let dev = Device::Cpu;
    let c = &files.config;
    let block = files.load_block(0, &dev)?;
    let head = files.load_head(None, &dev)?;
    let rope = Rope::new(c);
    let (cos, sin) = rope.tables_vec(0, t);
    let n = b * t * c.hidden_size;
    // Activations of unit scale, deterministic.
    let x0: Vec<f32> = (0..n)
        .map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 3.4)
        .collect();
    let mut sc = Scratch::default();
    let mut x = x0.clone();
    block.forward_fast(&mut x, b, t, &cos, &sin, &mut sc, None)?;
    let reps = 2;
    let start = Instant::now();
    for _ in 0..reps {
        let mut x = x0.clone();
        block.forward_fast(&mut x, b, t, &cos, &sin, &mut sc, None)?;
    }
    let block_s = start.elapsed().as_secs_f64() / (reps * b * t) as f64;
    let mut xn = Vec::new();
    let _ = head.forward_fast(&x0, &mut xn);
    let start = Instant::now();
    let _ = head.forward_fast(&x0, &mut xn);
    let head_s = start.elapsed().as_secs_f64() / (b * t) as f64;
    Ok((block_s, head_s))
}

/// Predicts time, memory and disk of each stage without doing the work.
pub fn estimate(opts: &CompressOptions) -> Result<Estimate> {
    let files = ModelFiles::open(&opts.model)?;
    let c = &files.config;
    let space_ids = files.linear_ids();
    let shapes: Vec<(usize, usize)> = space_ids.iter().map(|id| id.shape(c)).collect();
    let linear: f64 = shapes.iter().map(|(r, k)| (r * k) as f64).sum();
    let t = opts.seq_len as f64;
    let layers = c.num_layers as f64;
    let head = (c.vocab_size * c.hidden_size) as f64;
    let (block_s, head_s) = forward_probe(&files, SEARCH_BATCH, opts.seq_len)?;
    let token_s = layers * block_s + head_s;
    let tps = 1.0 / token_s;
    let g = gemm_probe(c.hidden_size, c.intermediate_size);
    let mib = |b: f64| b / (1 << 20) as f64;
    let level_specs = opts.method.levels()?;
    let levels = level_specs.len() as f64;

    // Database: calibration forward (blocks only) + Hessians + GPTQ sweeps
    // (+ a fixed cost per entry for writing and checksumming).
    let ct = opts.calib_tokens as f64;
    let site_dims = [
        c.hidden_size,
        c.num_heads * c.head_dim,
        c.hidden_size,
        c.intermediate_size,
    ];
    let hess: f64 = site_dims.iter().map(|&n| (n * n) as f64).sum::<f64>() * ct * layers;
    let gptq: f64 = shapes
        .iter()
        .map(|&(r, k)| 2.0 * r as f64 * (k * k) as f64)
        .sum::<f64>()
        * levels;
    let entries = shapes.len() as f64 * levels;
    // ggml's lattice i-quant encoders (scale search with codebook neighbour
    // lookups) cost ≈ 1.4 µs of CPU per weight and level on the 2-core
    // development machine (demo: 54 s against 11 s user time for the
    // kquant database with and without the five lattice types), on the
    // layers whose rows hold 256-weight blocks; the database runs on every
    // core.
    let lattice_levels = level_specs
        .iter()
        .filter(|l| l.ggml.is_some_and(|t| t.is_lattice()))
        .count() as f64;
    let lattice_weights: f64 = shapes
        .iter()
        .filter(|(_, k)| k % 256 == 0)
        .map(|(r, k)| (r * k) as f64)
        .sum();
    let threads = rayon::current_num_threads().max(1) as f64;
    let lattice_s = lattice_weights * lattice_levels * 1.4e-6 / threads;
    let db_s =
        ct * layers * block_s + (hess + gptq) / (g * 1e9 * 0.4) + entries * 0.005 + lattice_s;
    let block_params = linear / layers;
    let scratch =
        8.0 * t * ((c.qkv_out() + 2 * c.intermediate_size * 2 + 4 * c.hidden_size) as f64) * 4.0;
    let hess_bytes: f64 = site_dims.iter().map(|&n| (n * n) as f64 * 8.0).sum();
    // The process itself (tokenizer, calibration text and ids), 64 MiB:
    // with it the 135 M shape's database is predicted at 289 MiB against
    // 283 measured (docs/scale.md).
    let db_ram = 64.0 * (1 << 20) as f64
        + ct * c.hidden_size as f64 * 4.0
        + scratch
        + 2.0 * block_params * 4.0
        + hess_bytes
        + 3.0 * (c.intermediate_size.pow(2) as f64) * 4.0;
    let db_disk: f64 = shapes
        .iter()
        .map(|&(r, k)| {
            level_specs
                .iter()
                .map(|l| match l.ggml {
                    Some(ty) => (r * k) as f64 * ty.bits_per_weight() / 8.0,
                    None => {
                        let groups = if opts.method.group_size == 0 {
                            1
                        } else {
                            k.div_ceil(opts.method.group_size)
                        };
                        (r * k * l.bits as usize + r * groups * (16 + l.bits as usize)) as f64 / 8.0
                    }
                })
                .sum::<f64>()
        })
        .sum();

    // Search, in whole-model token forwards. Per stage: the parent's blocks
    // once over the stage's tokens (its hidden states are kept for the
    // offspring; its head only in the last stage, where it competes), and
    // each entrant from its first changed block on, plus the head. Offspring
    // change 1-3 layers at random places, so on average they skip about a
    // fifth of the blocks; racing drops a few per cent of the entrant work
    // of the later stages that have more windows than a race needs before
    // it may eliminate (both measured on the demo, docs/search.md).
    let evo = &opts.search.evo;
    let max_stage = evo.stages.iter().map(|s| s.tokens).max().unwrap_or(0);
    let pool = opts
        .search
        .pool_tokens
        .unwrap_or(crate::search::evopress::DEFAULT_POOL_TOKENS)
        .max(max_stage) as f64;
    let block_frac = layers * block_s / token_s;
    let entrant = 0.8 * block_frac + (1.0 - block_frac);
    let race = if evo.race_z > 0.0 { 0.95 } else { 1.0 };
    let mut per_gen = 0.0;
    let mut cands = evo.offspring as f64;
    for (i, s) in evo.stages.iter().enumerate() {
        let tokens = s.tokens as f64;
        let races = s.tokens.div_ceil(opts.seq_len.max(1)) > RACE_MIN_WINDOWS;
        let factor = if i > 0 && races { race } else { 1.0 };
        let parent = if i + 1 == evo.stages.len() {
            1.0
        } else {
            block_frac
        };
        per_gen += tokens * parent + cands * tokens * entrant * factor;
        cands = s.survivors as f64;
    }
    // The base's targets (one pass over the pool), then the generations (the
    // start's own fitness is only computed when no generation runs).
    let search_tokens = match opts.search.algo {
        Algo::Evopress => pool + evo.generations as f64 * per_gen,
        _ => 0.0,
    };
    let search_s = search_tokens * token_s;
    let model_bytes = c.num_parameters() as f64 * 4.0;
    let targets = if pool * c.vocab_size as f64 * 4.0 <= opts.search.full_logits_budget as f64 {
        pool * c.vocab_size as f64 * 4.0
    } else {
        pool * opts.search.topk as f64 * 8.0
    };
    let sb = SEARCH_BATCH as f64;
    let search_ram = model_bytes
        + (linear * levels * 4.0).min(opts.search.weight_cache_budget as f64)
        + sb * t * c.hidden_size as f64 * 4.0 * (layers + 1.0)
        + targets
        + sb * t * c.vocab_size as f64 * 4.0 * 2.0;

    // Export: stream every tensor once.
    let export_s = c.num_parameters() as f64 * 2.0 / 300e6 + linear / 50e6;
    let export_ram = (linear / layers).max(head) * 4.0 * 2.0;

    // Evaluation: every compared configuration plus the base, on every file;
    // the base is re-run once per group of models that fit in memory.
    let configs = match opts.compare.resolve(c.num_parameters()) {
        Compare::All => levels + 3.0 + 2.0,
        Compare::Neighbours => 2.0 + 1.0 + 2.0,
        _ => 2.0,
    };
    let wopts = WindowOptions {
        seq_len: opts.seq_len,
        batch: eval_batch(opts.seq_len, c.vocab_size),
        ..WindowOptions::default()
    };
    let eval_tokens = opts.eval.len() * opts.eval_windows * opts.seq_len;
    // As the pipeline plans it: the scoring, the base's kept hidden states
    // and the process come off the budget; the rest holds a group's models.
    let memory = eval_memory(c, &wopts, eval_tokens);
    let per_group = (memory.models as f64 / (linear * 4.0)).floor().max(1.0);
    let groups = ((configs - 1.0) / per_group).ceil() + 1.0;
    // The base runs whole once and, in the later groups, only its head when
    // its hidden states are kept (whole again otherwise); scoring itself
    // reuses its logits.
    let head_frac = head_s / token_s;
    let base_passes = if memory.base_hidden > 0 {
        1.0 + (groups - 1.0) * head_frac
    } else {
        groups
    };
    let eval_s = (configs + base_passes) * eval_tokens as f64 * token_s;
    // Resident at once (freed memory is given back between groups): the
    // base, the largest group (configurations share the base's embeddings
    // and head, so each costs its linear weights; the exported model is
    // loaded whole, alone), the scoring and the kept hidden states.
    let group = (per_group.min(configs - 1.0) * linear * 4.0).max(model_bytes);
    let eval_ram =
        (EVAL_PROCESS_BYTES + memory.scoring + memory.base_hidden) as f64 + model_bytes + group;

    let stages = vec![
        StageEstimate {
            stage: "database".into(),
            seconds: db_s,
            peak_ram_mib: mib(db_ram),
        },
        StageEstimate {
            stage: "search".into(),
            seconds: search_s,
            peak_ram_mib: mib(search_ram),
        },
        StageEstimate {
            stage: "export".into(),
            seconds: export_s,
            peak_ram_mib: mib(export_ram),
        },
        StageEstimate {
            stage: "evaluation".into(),
            seconds: eval_s,
            peak_ram_mib: mib(eval_ram),
        },
    ];
    Ok(Estimate {
        peak_ram_mib: stages.iter().map(|s| s.peak_ram_mib).fold(0.0, f64::max),
        stages,
        database_disk_mib: mib(db_disk),
        gemm_gflops: g,
        forward_tokens_per_second: tps,
        block_seconds_per_token: block_s,
        head_seconds_per_token: head_s,
        search_forward_tokens: search_tokens,
    })
}
