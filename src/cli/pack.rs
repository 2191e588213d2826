use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use dynapress::fsutil::{Input, OutputKind, check_output};
use dynapress_pack::{PackOptions, UnpackOptions, pack_dir, unpack};

#[derive(Args)]
pub struct PackArgs {
    /// Model directory (safetensors shards, JSON and tokenizer files).
    input: PathBuf,
    /// Output container (.dpk).
    output: PathBuf,
    /// Original bytes per independently coded chunk.
    #[arg(long, default_value_t = 1 << 20)]
    chunk_size: usize,
    /// Replace the output if it exists.
    #[arg(long)]
    force: bool,
    #[arg(long)]
    json: bool,
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args)]
pub struct UnpackArgs {
    /// Container written by `dynapress pack`.
    input: PathBuf,
    /// Output directory (created; files are byte-identical to the packed ones).
    output: PathBuf,
    /// Write into an output directory that already holds files.
    #[arg(long)]
    force: bool,
    #[arg(long)]
    json: bool,
    #[arg(long, short)]
    quiet: bool,
}

fn progress_fn(quiet: bool, label: &str) -> (indicatif::ProgressBar, dynapress_pack::ProgressFn) {
    let pb = dynapress::progress::bar(0, label, "B", quiet);
    let p = pb.clone();
    let f: dynapress_pack::ProgressFn = Arc::new(move |pr: dynapress_pack::Progress| {
        p.set_length(pr.total);
        p.set_position(pr.done);
    });
    (pb, f)
}

pub fn run_pack(a: PackArgs) -> anyhow::Result<()> {
    check_output(
        &a.output,
        "the output",
        OutputKind::File,
        &[Input::Tree(&a.input)],
        a.force,
    )?;
    dynapress::fsutil::clean_stale_temps_for(&a.output);
    let (pb, f) = progress_fn(a.quiet, "pack");
    let r = pack_dir(
        &a.input,
        &a.output,
        &PackOptions {
            chunk_size: a.chunk_size,
            progress: Some(f),
            overwrite: a.force,
            ..Default::default()
        },
    )?;
    pb.finish_and_clear();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "output": a.output, "files": r.files, "input_bytes": r.input_bytes,
                "output_bytes": r.output_bytes, "ratio": r.ratio(), "seconds": r.seconds,
            })
        );
    } else {
        println!(
            "{}: {} files, {} → {} bytes ({:.2} % of the original) in {:.2} s",
            a.output.display(),
            r.files,
            r.input_bytes,
            r.output_bytes,
            100.0 * r.ratio(),
            r.seconds
        );
    }
    Ok(())
}

pub fn run_unpack(a: UnpackArgs) -> anyhow::Result<()> {
    dynapress::fsutil::check_input_file(&a.input)?;
    check_output(
        &a.output,
        "the output directory",
        OutputKind::IntoDir,
        &[Input::File(&a.input)],
        a.force,
    )?;
    dynapress::fsutil::clean_stale_temps_for(&a.output);
    let (pb, f) = progress_fn(a.quiet, "unpack");
    let r = unpack(
        &a.input,
        &a.output,
        &UnpackOptions {
            progress: Some(f),
            overwrite: a.force,
            ..Default::default()
        },
    )?;
    pb.finish_and_clear();
    if a.json {
        println!(
            "{}",
            serde_json::json!({"output": a.output, "files": r.files, "bytes": r.bytes, "seconds": r.seconds})
        );
    } else {
        println!(
            "{}: {} files, {} bytes in {:.2} s",
            a.output.display(),
            r.files,
            r.bytes,
            r.seconds
        );
    }
    Ok(())
}
