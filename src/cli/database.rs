use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use dynapress::calib::load_calibration;
use dynapress::database::{BuildOptions, Manifest, Method, build_database};
use dynapress::fsutil::{Input, OutputKind, check_output};
use dynapress::model::{LinearKind, ModelFiles};

use super::args::MethodArgs;

#[derive(Args)]
pub struct DatabaseArgs {
    /// Hugging Face model directory or GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// Calibration text (plain or JSONL); repeatable. Use held-out validation text, never test text.
    #[arg(long, required = true)]
    calib: Vec<PathBuf>,
    /// Calibration tokens (split evenly across the files, in windows of --seq-len).
    #[arg(long, default_value_t = 32768)]
    calib_tokens: usize,
    /// Tokens per calibration window.
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// Output database directory (created; an interrupted build in it is resumed).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    method: MethodArgs,
    /// Also store the Hessians (needed by later sparse/low-rank compressors).
    #[arg(long)]
    keep_hessians: bool,
    /// Rebuild even if --out holds a database of another model, calibration or method.
    #[arg(long)]
    force: bool,
    /// Calibration windows per forward pass.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Print the build report as JSON instead of the summary table.
    #[arg(long)]
    json: bool,
    #[arg(long, short)]
    quiet: bool,
    /// Testing only: abort the process after writing N new entries.
    #[arg(long, hide = true)]
    abort_after: Option<usize>,
}

pub fn run(a: DatabaseArgs) -> anyhow::Result<()> {
    if a.calib_tokens == 0 {
        crate::bad_arg!("--calib-tokens must be positive");
    }
    if a.seq_len < 2 {
        crate::bad_arg!("--seq-len must be at least 2");
    }
    if a.batch == 0 {
        crate::bad_arg!("--batch must be at least 1");
    }
    for c in &a.calib {
        dynapress::fsutil::check_input_file(c)?;
    }
    let mut inputs = vec![Input::Dir(&a.model)];
    inputs.extend(a.calib.iter().map(|c| Input::File(c)));
    check_output(&a.out, "--out", OutputKind::ResumeDir, &inputs, a.force)?;
    dynapress::fsutil::clean_stale_temps(&dynapress::fsutil::parent_dir(&a.out));
    let files = ModelFiles::open(&a.model).context("loading the model")?;
    let calib = load_calibration(&a.calib, &files.tokenizer, a.calib_tokens, a.seq_len)?;
    let opts = BuildOptions {
        spec: a.method.spec(Method::Gptq)?,
        batch: a.batch,
        keep_hessians: a.keep_hessians,
        force: a.force,
        quiet: a.quiet,
        abort_after: a.abort_after,
    };
    let report = build_database(&files, &calib, &a.out, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let m = Manifest::read(&a.out)?;
    println!(
        "database {}: {} entries ({} built, {} reused) in {:.1} s",
        a.out.display(),
        report.entries_total,
        report.entries_built,
        report.entries_reused,
        report.seconds
    );
    for line in &report.fallbacks {
        println!("note: {line}");
    }
    print!("{}", summary_table(&m));
    Ok(())
}

/// Per layer: bits per weight and relative output error at each level.
pub fn summary_table(m: &Manifest) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = write!(s, "\n{:<14}", "layer");
    for l in &m.levels {
        let _ = write!(s, " {:>22}", format!("{l}: bpw / error"));
    }
    s.push('\n');
    let mut blocks: Vec<usize> = m.entries.iter().map(|e| e.block).collect();
    blocks.dedup();
    for block in blocks {
        for kind in LinearKind::ALL {
            let id = dynapress::model::LinearId { block, kind };
            let es = m.layer_entries(id);
            if es.is_empty() {
                continue;
            }
            let _ = write!(s, "{:<14}", id.to_string());
            // One column per level; "-" where the layer lacks it (manifest.unavailable says why).
            for l in &m.levels {
                let cell = match m.entry(id, l) {
                    Some(e) => format!("{:.3} / {:.2e}", e.bits_per_weight, e.rel_error),
                    None => "-".to_string(),
                };
                let _ = write!(s, " {:>22}", cell);
            }
            s.push('\n');
        }
    }
    s
}
