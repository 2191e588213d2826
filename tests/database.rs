//! The layer database on the demo model: GPTQ against RTN on real layers,
//! the bits accounting, grids, resume after a crash, and bad input.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use common::cli::{CALIB_BOTH, clean_error, database, ok, ok_json, stderr};
use dynapress::calib::load_calibration;
use dynapress::database::{BuildOptions, Database, Manifest, Method, MethodSpec, build_database};
use dynapress::model::ModelFiles;

const CALIB_TOKENS: usize = 64 * 256;

fn calib_files() -> Vec<PathBuf> {
    vec![
        common::data("docs.valid.txt"),
        common::data("code.valid.txt"),
    ]
}

fn build(method: Method, dir: &Path) -> Manifest {
    let files = ModelFiles::open(&common::demo_model()).unwrap();
    let calib = load_calibration(&calib_files(), &files.tokenizer, CALIB_TOKENS, 256).unwrap();
    let opts = BuildOptions {
        spec: MethodSpec {
            method,
            ..Default::default()
        },
        batch: 8,
        keep_hessians: false,
        force: false,
        quiet: true,
        abort_after: None,
    };
    build_database(&files, &calib, dir, &opts).unwrap();
    Manifest::read(dir).unwrap()
}

/// (GPTQ, RTN) databases of the demo model, built once per test binary.
fn databases() -> &'static (tempfile::TempDir, Manifest, Manifest) {
    static DB: OnceLock<(tempfile::TempDir, Manifest, Manifest)> = OnceLock::new();
    DB.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let g = build(Method::Gptq, &tmp.path().join("gptq"));
        let r = build(Method::Rtn, &tmp.path().join("rtn"));
        (tmp, g, r)
    })
}

#[test]
fn gptq_error_is_below_rtn_per_layer_and_in_total() {
    let (_, g, r) = databases();
    assert!(g.complete && r.complete);
    assert_eq!(g.entries.len(), 8 * 7 * 6);
    for bits in [2u8, 3, 4, 5, 6, 8] {
        let (mut sg, mut sr) = (0.0, 0.0);
        for e in g.entries.iter().filter(|e| e.bits == bits) {
            let rtn = r
                .entries
                .iter()
                .find(|x| x.layer == e.layer && x.bits == bits)
                .unwrap();
            // Same grid, same storage.
            assert_eq!(e.storage_bits, rtn.storage_bits);
            if bits <= 4 {
                assert!(
                    e.rel_error < rtn.rel_error,
                    "{} at {bits} bits: GPTQ {} vs RTN {}",
                    e.layer,
                    e.rel_error,
                    rtn.rel_error
                );
            }
            sg += e.rel_error;
            sr += rtn.rel_error;
        }
        eprintln!("{bits} bits: summed relative error GPTQ {sg:.4e}, RTN {sr:.4e}");
        assert!(sg < sr, "{bits} bits: GPTQ {sg} vs RTN {sr}");
    }
}

#[test]
fn bits_accounting_matches_stored_bytes() {
    let (tmp, g, _) = databases();
    for e in &g.entries {
        let bytes = std::fs::read(tmp.path().join("gptq").join(&e.file)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let stored: usize = st.tensors().iter().map(|(_, v)| v.data().len()).sum();
        assert_eq!(e.storage_bits, 8 * stored as u64, "{}", e.file);
        // 4-bit, g128, f16 scale, 4-bit zero = 4 + 20/128 bits per weight.
        let want = e.bits as f64 + (16.0 + e.bits as f64) / 128.0;
        assert!(
            (e.bits_per_weight - want).abs() < 1e-12,
            "{}: {}",
            e.file,
            e.bits_per_weight
        );
    }
}

#[test]
fn dequantized_groups_lie_on_their_grid() {
    let (tmp, g, _) = databases();
    let db = Database::open(&tmp.path().join("gptq")).unwrap();
    for e in g.entries.iter().filter(|e| e.block == 3) {
        let q = db.load(e).unwrap();
        let w = q.dequantize().unwrap();
        for row in 0..e.rows {
            for group in 0..e.cols / 128 {
                let vals: BTreeSet<u32> = w
                    [row * e.cols + group * 128..row * e.cols + (group + 1) * 128]
                    .iter()
                    .map(|v| v.to_bits())
                    .collect();
                assert!(
                    vals.len() <= 1 << e.bits,
                    "{} row {row} group {group}: {} values",
                    e.file,
                    vals.len()
                );
            }
        }
    }
}

/// A GPTQ database of the demo model at 2 and 4 bits, then `extra`.
fn run_database(out: &Path, extra: &[&str]) -> Output {
    database(out, &[&CALIB_BOTH[..], &["--bits", "2,4"], extra].concat())
}

fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn killed_and_resumed_build_is_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let one_go = tmp.path().join("one");
    let halves = tmp.path().join("two");
    ok(&run_database(&one_go, &[]));
    // Crash (abort, no unwinding) after 50 of 112 entries.
    let o = run_database(&halves, &["--abort-after", "50"]);
    assert!(!o.status.success());
    let partial = Manifest::read(&halves).unwrap();
    assert!(!partial.complete);
    assert_eq!(partial.entries.len(), 50);
    // Corrupt one finished entry: the resume must notice and rebuild it.
    let victim = halves.join(&partial.entries[7].file);
    std::fs::write(&victim, b"garbage").unwrap();
    let report = ok_json(&run_database(&halves, &["--json"]));
    assert_eq!(report["entries_reused"], 49);
    assert_eq!(report["entries_repaired"], 1);
    assert_eq!(report["entries_built"], 112 - 49);
    let a = tree(&one_go);
    let b = tree(&halves);
    assert_eq!(a.len(), b.len());
    for ((na, da), (nb, db)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(
            da == db,
            "{na} differs between the one-go and the resumed build"
        );
    }
}

#[test]
fn another_models_database_is_refused_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("db");
    assert!(run_database(&out, &[]).status.success());
    // Same directory, other calibration amount: refused, then rebuilt with --force.
    let again = |extra: &[&str]| {
        let args = [
            "--calib",
            "assets/data/docs.valid.txt",
            "--bits",
            "2,4",
            "--calib-tokens",
            "4096",
        ];
        database(&out, &[&args[..], extra].concat())
    };
    let o = again(&[]);
    let err = stderr(&o);
    assert!(
        !o.status.success() && err.contains("--force") && err.contains("calibration"),
        "{err}"
    );
    ok(&again(&["--force"]));
}

#[test]
fn bad_calibration_input_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("db");
    let run =
        |calib: &str, tokens: &str| database(&out, &["--calib", calib, "--calib-tokens", tokens]);
    let check = |o: Output, needle: &str| {
        clean_error(&o, &[needle]);
        assert!(stderr(&o).starts_with("error:"), "{}", stderr(&o));
    };
    check(run("no/such.txt", "4096"), "no/such.txt");
    let binary = tmp.path().join("bin.txt");
    std::fs::write(&binary, [0xffu8, 0xfe, 0x00, 0x80]).unwrap();
    check(run(binary.to_str().unwrap(), "4096"), "not UTF-8");
    let short = tmp.path().join("short.txt");
    std::fs::write(&short, "fn main() {}\n").unwrap();
    check(
        run(short.to_str().unwrap(), "4096"),
        "fewer than one calibration window",
    );
    check(
        run("assets/data/docs.valid.txt", "100"),
        "less than one window",
    );
    check(
        run("assets/data/docs.valid.txt", "100000000"),
        "--calib-tokens asks for",
    );
    // Nothing half-written: no manifest claims completeness.
    assert!(!out.join("manifest.json").exists() || !Manifest::read(&out).unwrap().complete);
}
