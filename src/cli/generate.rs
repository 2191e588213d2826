use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use dynapress::model::Model;
use dynapress::model::generate::{GenerateOptions, TextStream, generate};

#[derive(Args)]
pub struct GenerateArgs {
    /// Hugging Face model directory.
    #[arg(long)]
    model: PathBuf,
    /// The prompt text.
    #[arg(long)]
    prompt: String,
    /// Maximum number of tokens to generate.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep generating after the end-of-sequence token.
    #[arg(long)]
    ignore_eos: bool,
    /// Print the generated token ids (JSON) instead of text.
    #[arg(long)]
    ids: bool,
    /// Do not start the prompt with the BOS token (by default it does when
    /// the tokenizer adds one, as transformers' tokenizer call and
    /// llama.cpp do).
    #[arg(long)]
    no_bos: bool,
}

pub fn run(a: GenerateArgs) -> anyhow::Result<()> {
    let model = Model::load(&a.model).context("loading the model")?;
    let mut prompt = model.tokenizer.encode(&a.prompt)?;
    if !a.no_bos
        && let Some(bos) = model.tokenizer.added_bos()
    {
        prompt.insert(0, bos);
    }
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        seed: a.seed,
        stop_at_eos: !a.ignore_eos,
    };
    let start = std::time::Instant::now();
    let mut stream = TextStream::new(&model.tokenizer);
    let mut out = std::io::stdout().lock();
    if !a.ids {
        write!(out, "{}", a.prompt)?;
        out.flush()?;
    }
    let new = generate(&model, &prompt, &opts, |id| {
        if !a.ids {
            let piece = stream.push(id)?;
            write!(out, "{piece}")
                .and_then(|_| out.flush())
                .map_err(|e| dynapress::Error::io("<stdout>", e))?;
        }
        Ok(())
    })?;
    if a.ids {
        writeln!(
            out,
            "{}",
            serde_json::json!({"prompt_ids": prompt, "new_ids": new})
        )?;
    } else {
        writeln!(out)?;
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{} tokens in {:.2} s ({:.1} tokens/s)",
        new.len(),
        secs,
        new.len() as f64 / secs
    );
    Ok(())
}
