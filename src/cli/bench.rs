use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use dynapress::eval::data::load_tokens;
use dynapress::model::Model;

#[derive(Args)]
pub struct BenchArgs {
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
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
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
    model.forward(ids, a.batch, a.seq_len)?; // warm-up
    let mut times = Vec::with_capacity(a.runs);
    for _ in 0..a.runs.max(1) {
        let t = Instant::now();
        let logits = model.forward(ids, a.batch, a.seq_len)?;
        drop(logits);
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
                "threads": threads, "runs": times.len(),
                "median_seconds": median, "best_seconds": best,
                "median_tokens_per_second": tps(median), "best_tokens_per_second": tps(best),
            })
        );
    } else {
        println!(
            "forward {}×{} on {} threads: median {:.0} tokens/s ({:.1} ms), best {:.0} tokens/s",
            a.batch,
            a.seq_len,
            threads,
            tps(median),
            median * 1e3,
            tps(best)
        );
    }
    Ok(())
}
