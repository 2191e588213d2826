//! Writes the bundled demo model as GGUF, for running llama.cpp on it by hand:
//!
//! ```text
//! cargo run --release -p dynapress-gguf --example demo_gguf -- OUT.gguf [f32|bf16]
//! ```
//!
//! (The same code the llama.cpp integration tests use; the real export lives in
//! the dynapress binary.)

#[path = "../tests/common/mod.rs"]
mod common;

use dynapress_gguf::GgmlType;

fn main() {
    let mut args = std::env::args().skip(1);
    // An option-like first argument (`--help`) is not an output path.
    let Some(out) = args.next().filter(|a| !a.starts_with('-')) else {
        eprintln!("usage: demo_gguf OUT.gguf [f32|bf16]");
        std::process::exit(2);
    };
    let ty = match args.next().as_deref() {
        None | Some("f32") => GgmlType::F32,
        Some("bf16") => GgmlType::BF16,
        Some(other) => {
            eprintln!("unknown type {other:?} (f32 or bf16)");
            std::process::exit(2);
        }
    };
    common::write_fixture_gguf(std::path::Path::new(&out), ty);
    println!("{out}");
}
