use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use dynapress::data::load_tokens;
use dynapress::model::Model;
use dynapress::model::synthetic::{SyntheticSpec, write_synthetic};

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchCommand,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Forward-pass throughput on a batch of windows (tokens/s).
    Forward(ForwardArgs),
    /// Write a random Llama checkpoint of a given size (for memory benchmarks).
    Synth(SynthArgs),
}

#[derive(Args)]
struct ForwardArgs {
    /// Hugging Face model directory.
    #[arg(long, default_value = "assets/demo-model")]
    model: PathBuf,
    /// Text whose first batch × seq-len tokens are the input.
    #[arg(long, default_value = "assets/data/docs.test.txt")]
    data: PathBuf,
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Timed repetitions (after one warm-up).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Time the candle-ops path instead of the fused CPU kernels.
    #[arg(long)]
    reference: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SynthArgs {
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 24)]
    layers: usize,
    #[arg(long, default_value_t = 1024)]
    hidden: usize,
    #[arg(long, default_value_t = 2816)]
    intermediate: usize,
    #[arg(long, default_value_t = 16)]
    heads: usize,
    #[arg(long, default_value_t = 8)]
    kv_heads: usize,
    #[arg(long, default_value_t = 16384)]
    vocab: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Tied embeddings (no lm_head.weight; the embedding is the output layer).
    #[arg(long)]
    tied: bool,
    /// tokenizer.json to copy into the model (its ids must be < vocab).
    #[arg(long, default_value = "assets/demo-model/tokenizer.json")]
    tokenizer: PathBuf,
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    match a.what {
        BenchCommand::Forward(f) => forward(f),
        BenchCommand::Synth(s) => synth(s),
    }
}

fn synth(a: SynthArgs) -> anyhow::Result<()> {
    let spec = SyntheticSpec {
        layers: a.layers,
        hidden: a.hidden,
        intermediate: a.intermediate,
        heads: a.heads,
        kv_heads: a.kv_heads,
        vocab: a.vocab,
        tied: a.tied,
        seed: a.seed,
    };
    if spec.heads == 0
        || !spec.hidden.is_multiple_of(spec.heads)
        || spec.kv_heads == 0
        || !spec.heads.is_multiple_of(spec.kv_heads)
    {
        anyhow::bail!(
            "--hidden must be a multiple of --heads, and --heads a multiple of --kv-heads"
        );
    }
    write_synthetic(&a.out, &spec, &a.tokenizer)?;
    println!(
        "{}: {} parameters ({:.1} MB as f32)",
        a.out.display(),
        spec.parameters(),
        spec.parameters() as f64 * 4.0 / 1e6
    );
    Ok(())
}

fn forward(a: ForwardArgs) -> anyhow::Result<()> {
    let model = Model::load(&a.model).context("loading the model")?;
    let tokens = load_tokens(&a.data, &model.tokenizer)?;
    let n = a.batch * a.seq_len;
    if tokens.len() < n {
        anyhow::bail!(
            "{}: only {} tokens, need {n}",
            a.data.display(),
            tokens.len()
        );
    }
    let ids = &tokens[..n];
    let run = || {
        if a.reference {
            model.forward_reference(ids, a.batch, a.seq_len)
        } else {
            model.forward(ids, a.batch, a.seq_len)
        }
    };
    run()?; // warm-up
    let mut times = Vec::with_capacity(a.runs);
    for _ in 0..a.runs.max(1) {
        let t = Instant::now();
        drop(run()?);
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let best = times[0];
    let threads = rayon::current_num_threads();
    let tps = |s: f64| n as f64 / s;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "model": a.model, "batch": a.batch, "seq_len": a.seq_len,
                "threads": threads, "runs": times.len(), "path": if a.reference { "candle-ops" } else { "fused" },
                "median_seconds": median, "best_seconds": best,
                "median_tokens_per_second": tps(median), "best_tokens_per_second": tps(best),
            })
        );
    } else {
        println!(
            "forward {}×{} on {} threads ({}): median {:.0} tokens/s ({:.1} ms), best {:.0} tokens/s",
            a.batch,
            a.seq_len,
            threads,
            if a.reference {
                "candle ops"
            } else {
                "fused kernels"
            },
            tps(median),
            median * 1e3,
            tps(best)
        );
    }
    Ok(())
}
