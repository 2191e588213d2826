#![allow(dead_code)]
//! What the integration tests share: paths of the bundled fixtures (here),
//! running the binary and judging its output ([`cli`]), the demo fixtures
//! every test binary builds once ([`demo`]) and the peer tools ([`tools`]).
//!
//! Each test binary compiles its own copy of this module (`mod common;`), so
//! a fixture built "once" is built once per test binary.

pub mod cli;
pub mod demo;
pub mod tools;

use std::path::{Path, PathBuf};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The bundled demo model (a copy of ../shared/models/llama-8m).
pub fn demo_model() -> PathBuf {
    root().join("assets/demo-model")
}

/// The bundled text (a copy of ../shared/data).
pub fn data(name: &str) -> PathBuf {
    root().join("assets/data").join(name)
}

/// The bundled tasks (a copy of ../shared/tasks).
pub fn task(name: &str) -> PathBuf {
    root().join("assets/tasks").join(name)
}

/// The transformers reference for the demo model (a copy of ../shared/reference/llama-8m).
pub fn reference_dir() -> PathBuf {
    root().join("tests/reference/llama-8m")
}

/// reference.json, parsed.
pub fn reference() -> serde_json::Value {
    read_json(&reference_dir().join("reference.json"))
}

/// The built `dynapress` binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dynapress"))
}

/// A path as the `&str` a command line takes.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A JSON file, parsed.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// The `mean_kl` of the row of `kind` in a compress report.
pub fn row_mean_kl(report: &serde_json::Value, kind: &str) -> f64 {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["kind"] == kind)
        .and_then(|x| x["mean_kl"].as_f64())
        .unwrap_or_else(|| panic!("no {kind} row with a mean_kl"))
}

/// Reads the JSON file at `path`, lets `edit` change it, writes it back.
pub fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v = read_json(path);
    edit(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// Copies the directory `from` (recursively) to `to`, creating it.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// Copies the tiny random checkpoint `tests/fixtures/tiny/<name>` to `to`,
/// with the demo model's tokenizer (the fixtures carry none); returns the
/// fixture's own directory (its reference outputs).
pub fn tiny_model(name: &str, to: &Path) -> PathBuf {
    let src = root().join("tests/fixtures/tiny").join(name);
    copy_dir(&src, to);
    std::fs::copy(
        demo_model().join("tokenizer.json"),
        to.join("tokenizer.json"),
    )
    .unwrap();
    src
}

/// The sorted names of the entries of `dir`.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A transformers reference: the input ids (`[batch, seq]`, i64) and the
/// logits (f32) of a `*.safetensors` file, as (ids, batch, seq, logits).
pub fn reference_logits(path: &Path) -> (Vec<u32>, usize, usize, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ids = st.tensor("input_ids").unwrap();
    let (b, t) = (ids.shape()[0], ids.shape()[1]);
    let ids = ids
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
        .collect();
    let logits = st
        .tensor("logits")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (ids, b, t, logits)
}

/// A JSON array of token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array of ids: {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The largest absolute difference of two equally long slices.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
