#![allow(dead_code)]
//! Paths shared by the integration tests.

use std::path::PathBuf;

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
    let text = std::fs::read_to_string(reference_dir().join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The built `dynapress` binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dynapress"))
}
