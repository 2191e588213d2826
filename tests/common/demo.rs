//! Fixtures of the demo model that take a while to build: each is built the
//! first time a test of the binary asks for it and shared by the others.
//! (They live in temporary directories that the end of the test process
//! leaves behind, as statics are never dropped.)

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::cli::{CALIB_BOTH, DEMO, convert, database, ok};

/// A directory built once.
pub struct Built {
    _tmp: tempfile::TempDir,
    path: PathBuf,
}

/// The path `cell` holds, made by `build(path)` (`path` = `<new temp dir>/<name>`)
/// the first time.
pub fn once(
    cell: &'static OnceLock<Built>,
    name: &str,
    build: impl FnOnce(&Path),
) -> &'static Path {
    &cell
        .get_or_init(|| {
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().join(name);
            build(&path);
            Built { _tmp: tmp, path }
        })
        .path
}

/// A database of the demo model calibrated on both validation texts (8192
/// tokens), of the method and levels that `args` choose.
fn db_on_both_texts(cell: &'static OnceLock<Built>, args: &[&str]) -> &'static Path {
    once(cell, "db", |dir| {
        ok(&database(dir, &[&CALIB_BOTH[..], args].concat()));
    })
}

/// A GPTQ database of the demo model at 2, 3 and 4 bits (both validation
/// texts, 8192 tokens).
pub fn gptq_db() -> &'static Path {
    static DB: OnceLock<Built> = OnceLock::new();
    db_on_both_texts(&DB, &["--bits", "2,3,4"])
}

/// A kquant database of the demo model: the k-quant types and Q8_0, with
/// the imatrix (both validation texts, 8192 tokens).
pub fn kquant_db() -> &'static Path {
    static DB: OnceLock<Built> = OnceLock::new();
    db_on_both_texts(
        &DB,
        &["--method", "kquant", "--types", super::cli::KQUANT_TYPES],
    )
}

/// A small database of two ggml types (Q4_K, Q6_K; so GGUF export works
/// too), calibrated on 1024 tokens of docs.valid.txt in windows of 128.
pub fn small_kquant_db() -> &'static Path {
    static DB: OnceLock<Built> = OnceLock::new();
    once(&DB, "db", |dir| {
        ok(&database(
            dir,
            &[
                "--calib",
                "assets/data/docs.valid.txt",
                "--calib-tokens",
                "1024",
                "--seq-len",
                "128",
                "--method",
                "kquant",
                "--types",
                "Q4_K,Q6_K",
            ],
        ));
    })
}

/// The demo model converted to a GGUF of type `ty` ("F32" or "BF16").
pub fn gguf(ty: &str) -> &'static Path {
    static F32: OnceLock<Built> = OnceLock::new();
    static BF16: OnceLock<Built> = OnceLock::new();
    let cell = match ty {
        "F32" => &F32,
        "BF16" => &BF16,
        _ => panic!("no demo GGUF of type {ty}"),
    };
    once(cell, &format!("demo-{ty}.gguf"), |p| convert(DEMO, p, ty))
}
