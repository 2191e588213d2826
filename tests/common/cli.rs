//! Running the `dynapress` binary from the repository root, and judging how
//! it ended.

use std::path::Path;
use std::process::{Command, Output};

use super::{bin, root, s};

/// The demo model, as the command lines name it (relative to the root).
pub const DEMO: &str = "assets/demo-model";

/// The k-quant types (the ggml default before it gained the i-quants): the
/// GGUF mechanics tests use them, so that their databases build as fast as
/// before (ggml's lattice encoders cost about 5× the k-quants' time).
pub const KQUANT_TYPES: &str = "Q2_K,Q3_K,Q4_K,Q5_K,Q6_K,Q8_0";

/// Runs the binary with `args` in the repository root.
pub fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

/// Runs `args` then `extra` (a command's fixed flags and a test's own).
pub fn run2(args: &[&str], extra: &[&str]) -> Output {
    run(&[args, extra].concat())
}

/// The standard error of a run, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts that the run succeeded (showing both streams if not) and returns
/// its standard output.
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        stderr(o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts that the run succeeded and parses its standard output as JSON.
pub fn ok_json(o: &Output) -> serde_json::Value {
    let out = ok(o);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// A clean failure with exit `code`: no panic, exactly one `error:` line,
/// containing every needle.
pub fn fails(o: &Output, code: i32, needles: &[&str]) {
    let err = stderr(o);
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "expected one error line: {err}");
    for n in needles {
        assert!(lines[0].contains(n), "error line lacks {n:?}: {}", lines[0]);
    }
}

/// A failure with exit 1 and no panic whose standard error contains every
/// needle (anywhere: it may say more than one line).
pub fn clean_error(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "missing {n:?} in: {err}");
    }
}

/// `dynapress <command> --model <model> --db <db> --out <out>`, then `args`:
/// the shape of `search`, `export` and `compress` on a database.
pub fn on_db(command: &str, model: &str, db: &Path, out: &Path, args: &[&str]) -> Output {
    run2(
        &[command, "--model", model, "--db", s(db), "--out", s(out)],
        args,
    )
}

/// `search` of the demo model on `db` into `out`, then `args`.
pub fn search(db: &Path, out: &Path, args: &[&str]) -> Output {
    on_db("search", DEMO, db, out, args)
}

/// A quiet knapsack search of the demo model on `db` at `target` bits per
/// weight, written to `out`; asserts that it succeeds.
pub fn knapsack(db: &Path, target: &str, out: &Path) {
    ok(&search(
        db,
        out,
        &["--target-bits", target, "--algo", "knapsack", "--quiet"],
    ));
}

/// `export` of the demo model on `db` with the configuration `config` into
/// `out`, then `args`.
pub fn export(db: &Path, config: &Path, out: &Path, args: &[&str]) -> Output {
    on_db(
        "export",
        DEMO,
        db,
        out,
        &[&["--config", s(config)], args].concat(),
    )
}

/// `eval --json --quiet` with `args`; asserts success and returns the report.
pub fn eval_json(args: &[&str]) -> serde_json::Value {
    ok_json(&run2(&["eval", "--json", "--quiet"], args))
}

/// The perplexity of `dataset` in an `eval --json` report.
pub fn perplexity(report: &serde_json::Value, dataset: &str) -> f64 {
    report["datasets"][dataset]["perplexity"]
        .as_f64()
        .unwrap_or_else(|| panic!("no perplexity of {dataset} in {report}"))
}

/// Calibration on both validation texts, 8192 tokens: the demo databases'.
pub const CALIB_BOTH: [&str; 6] = [
    "--calib",
    "assets/data/docs.valid.txt",
    "--calib",
    "assets/data/code.valid.txt",
    "--calib-tokens",
    "8192",
];

/// `database --model <model> --out <out> --quiet`, then `args`.
pub fn database_of(model: &str, out: &Path, args: &[&str]) -> Output {
    run2(
        &["database", "--model", model, "--out", s(out), "--quiet"],
        args,
    )
}

/// `database` of the demo model into `out`, quiet, then `args`.
pub fn database(out: &Path, args: &[&str]) -> Output {
    database_of(DEMO, out, args)
}

/// `convert` of `model` into `out` as GGUF of type `ty`; asserts success.
pub fn convert(model: &str, out: &Path, ty: &str) {
    ok(&run(&[
        "convert",
        "--model",
        model,
        "--out",
        s(out),
        "--type",
        ty,
    ]));
}
