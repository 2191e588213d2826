//! Command-line interface (clap derive). Exit codes: 0 success, 1 error (one
//! line on stderr), 2 bad arguments.

mod args;
mod bench;
mod compress;
mod convert;
mod database;
mod eval;
mod export;
mod generate;
mod pack;
mod prune;
mod search;

use clap::{Parser, Subcommand};

/// dynapress: compress large language models layer by layer, each layer at the
/// level a whole-model search chose.
#[derive(Parser)]
#[command(name = "dynapress", version, about, long_about = None)]
struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole pipeline in one command: database, search, export, evaluation
    /// and report. Without --model it compresses the bundled demo model.
    Compress(compress::CompressArgs),
    /// Evaluate a model: perplexity on text, KL divergence and top-1 agreement
    /// against a base model, multiple-choice accuracy.
    Eval(eval::EvalArgs),
    /// Generate text from a prompt (greedy at temperature 0), streaming tokens to stdout.
    Generate(generate::GenerateArgs),
    /// Calibrate on text and build the per-layer database of compressed variants
    /// (GPTQ or RTN at several bit widths), streaming the model block by block.
    Database(database::DatabaseArgs),
    /// Choose a level for every layer under a bits-per-weight budget
    /// (EvoPress, knapsack or uniform).
    Search(search::SearchArgs),
    /// Depth pruning: choose which attention/MLP sublayers (or whole blocks) to
    /// drop, exactly --drop of them, by EvoPress on calibration KL, next to the
    /// ShortGPT, KL-alone and last-N baselines.
    Prune(prune::PruneArgs),
    /// Write a searched configuration as a Hugging Face directory or a GGUF file.
    Export(export::ExportArgs),
    /// Write a checkpoint as GGUF with one type for every matrix (F32, F16,
    /// BF16, or a ggml quant type): the input llama.cpp's tools start from.
    Convert(convert::ConvertArgs),
    /// Pack a model directory losslessly into one file (entropy-coded float
    /// planes; `eval` and `generate` load .dpk files directly).
    Pack(pack::PackArgs),
    /// Restore a packed model directory, byte for byte.
    Unpack(pack::UnpackArgs),
    /// Measure forward-pass throughput (tokens/s).
    Bench(bench::BenchArgs),
}

/// More threads than this per core only add scheduling overhead.
const MAX_THREADS_PER_CORE: usize = 4;

/// An option out of range: exit code 2, like clap's own argument errors.
#[derive(Debug)]
pub struct BadArgument(pub String);

impl std::fmt::Display for BadArgument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadArgument {}

/// `Err(BadArgument)` (exit code 2) with a formatted message.
#[macro_export]
macro_rules! bad_arg {
    ($($t:tt)*) => {
        return Err($crate::cli::BadArgument(format!($($t)*)).into())
    };
}

pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        if n == 0 || n > MAX_THREADS_PER_CORE * cores {
            return Err(BadArgument(format!(
                "--threads {n}: give 1 to {} ({MAX_THREADS_PER_CORE} per available core; this machine has {cores})",
                MAX_THREADS_PER_CORE * cores
            ))
            .into());
        }
        // candle's matmul reads RAYON_NUM_THREADS; the global pool serves the rest.
        // SAFETY: set before any thread is spawned.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    match cli.command {
        Command::Compress(a) => compress::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Database(a) => database::run(a),
        Command::Search(a) => search::run(a),
        Command::Prune(a) => prune::run(a),
        Command::Export(a) => export::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Pack(a) => pack::run_pack(a),
        Command::Unpack(a) => pack::run_unpack(a),
        Command::Bench(a) => bench::run(a),
    }
}

/// Budget in bits per weight: a positive finite number no larger than 32.
pub fn check_target_bits(b: f64) -> anyhow::Result<()> {
    if !(b.is_finite() && b > 0.0 && b <= 32.0) {
        bad_arg!("--target-bits {b}: give a number of bits per weight between 0 and 32 (e.g. 3.0)");
    }
    Ok(())
}

/// EvoPress selection: each stage keeps at most as many candidates as it gets.
pub fn check_evo_args(
    offspring: usize,
    stages: &[dynapress::search::evopress::Stage],
) -> anyhow::Result<()> {
    if offspring == 0 {
        bad_arg!("--offspring must be at least 1");
    }
    let mut candidates = offspring;
    for (i, s) in stages.iter().enumerate() {
        if s.survivors > candidates {
            bad_arg!(
                "--stages: stage {} keeps {} survivors of {candidates} candidates; keep at most {candidates}",
                i + 1,
                s.survivors
            );
        }
        candidates = s.survivors;
    }
    Ok(())
}
