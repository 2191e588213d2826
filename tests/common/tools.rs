//! Peer tools the interoperability tests compare against. Without them those
//! tests skip, unless `DYNAPRESS_REQUIRE_INTEROP=1` (as in .ci/run), which
//! turns a missing tool into a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::root;

/// Whether a missing peer tool must fail the test instead of skipping it.
pub fn interop_required() -> bool {
    std::env::var("DYNAPRESS_REQUIRE_INTEROP").is_ok_and(|v| v == "1")
}

/// The directory of llama.cpp's tools (`DYNAPRESS_LLAMA_CPP_BIN`, else what
/// scripts/build-llama-cpp.sh has cached), or `None` (after saying so) when
/// `llama-quantize` or `llama-perplexity` is not there.
pub fn llama_bin() -> Option<PathBuf> {
    let dir = match std::env::var_os("DYNAPRESS_LLAMA_CPP_BIN") {
        Some(d) => PathBuf::from(d),
        None => {
            let out = Command::new("bash")
                .arg(root().join("scripts/build-llama-cpp.sh"))
                .arg("--print-dir")
                .output()
                .ok()?;
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
    };
    if ["llama-quantize", "llama-perplexity"]
        .iter()
        .all(|t| dir.join(t).is_file())
    {
        return Some(dir);
    }
    if interop_required() {
        panic!(
            "DYNAPRESS_REQUIRE_INTEROP=1 but llama.cpp tools are missing in {}",
            dir.display()
        );
    }
    eprintln!("skipped: llama.cpp tools not found (run scripts/build-llama-cpp.sh)");
    None
}

/// Runs `llama-quantize` with `args`; asserts that it succeeds.
pub fn quantize(bin: &Path, args: &[&str]) {
    let o = Command::new(bin.join("llama-quantize"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "llama-quantize {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Runs llama-perplexity on the first `chunks` windows of 256 tokens of
/// docs.test.txt and returns its final estimate.
///
/// llama.cpp's logger is asynchronous and not flushed at exit (llama.cpp
/// issue #22142): when the output is a pipe, the last lines (the last
/// chunk's `[i]ppl,` and "Final estimate") are sometimes lost — on a loaded
/// machine five runs in a row. So it runs one more batch of 8 chunks than
/// asked (2048-token batches of 256-token chunks) and reads the running
/// estimate after chunk `chunks`, which is printed a whole pass before the
/// end and equals a `chunks`-chunk run's final one; the run is repeated (up
/// to 5 times) if even that line is missing.
pub fn llama_perplexity(bin: &Path, model: &Path, chunks: usize) -> f64 {
    let mut last = String::new();
    let run_chunks = chunks + 8;
    for _attempt in 0..5 {
        let o = Command::new(bin.join("llama-perplexity"))
            .args([
                "-m",
                model.to_str().unwrap(),
                "-f",
                "assets/data/docs.test.txt",
                "-c",
                "256",
                "--chunks",
                &run_chunks.to_string(),
                "-t",
                "2",
            ])
            .current_dir(root())
            .output()
            .unwrap();
        let log =
            String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout);
        let chunk = log
            .split(&format!("[{chunks}]"))
            .nth(1)
            .and_then(|s| s.split(',').next());
        if let Some(ppl) = chunk.and_then(|v| v.trim().parse::<f64>().ok()) {
            return ppl;
        }
        last = format!("exit status {:?}; output:\n{log}", o.status);
    }
    panic!("no estimate in 5 llama-perplexity runs; the last: {last}");
}
