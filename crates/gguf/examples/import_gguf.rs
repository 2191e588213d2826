//! Imports a GGUF model file into Hugging Face form (in memory) and reports
//! what came out and how long it took:
//!
//! ```text
//! cargo run --release -p dynapress-gguf --example import_gguf -- MODEL.gguf [--runs N] [--print-config]
//! ```
//!
//! Each run opens the file (mmap) and calls `dynapress_gguf::import::import`;
//! the minimum and median wall times are printed. The page cache is warm after
//! the first run, so these are in-memory decode times.

use std::collections::BTreeMap;
use std::time::Instant;

use dynapress_gguf::GgufFile;
use dynapress_gguf::import;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut path = None;
    let mut runs = 5usize;
    let mut print_config = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|s| s.parse().ok()).unwrap_or(5).max(1),
            "--print-config" => print_config = true,
            _ => path = Some(a),
        }
    }
    let Some(path) = path else {
        eprintln!("usage: import_gguf MODEL.gguf [--runs N] [--print-config]");
        std::process::exit(2);
    };

    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let t0 = Instant::now();
        let file = match GgufFile::open(&path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        };
        let imp = match import::import(&file) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        };
        times.push(t0.elapsed().as_secs_f64());
        last = Some(imp);
    }
    let imp = last.expect("at least one run");
    times.sort_by(f64::total_cmp);

    let params: usize = imp.tensors.iter().map(|t| t.data.len()).sum();
    let mut by_type: BTreeMap<&str, usize> = BTreeMap::new();
    for ty in imp.types.values() {
        *by_type.entry(ty.name()).or_default() += 1;
    }
    println!("{path}");
    println!(
        "  {} tensors, {params} parameters, types {by_type:?}",
        imp.tensors.len()
    );
    println!(
        "  tokenizer.json {} bytes, config: {} {} layers, hidden {}",
        imp.tokenizer_json.len(),
        imp.config["model_type"],
        imp.config["num_hidden_layers"],
        imp.config["hidden_size"]
    );
    println!(
        "  import: min {:.1} ms, median {:.1} ms over {runs} runs",
        times[0] * 1e3,
        times[runs / 2] * 1e3
    );
    if print_config {
        println!("{}", serde_json::to_string_pretty(&imp.config).unwrap());
    }
}
