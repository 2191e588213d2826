//! GGUF against llama.cpp: our k-quant database entries equal llama-quantize's
//! blocks, our mixed GGUF runs in llama.cpp with the perplexity our
//! `--protocol llama-perplexity` computes, and the recipe reproduces the mix.
//! These tests need llama.cpp's tools (scripts/build-llama-cpp.sh); without
//! them they skip, unless DYNAPRESS_REQUIRE_INTEROP=1 (as in .ci/run).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use dynapress::database::{Manifest, Variant, load_entry_file};
use dynapress_gguf::GgufFile;
use dynapress_gguf::model::{gguf_tensor_name, permute_qk_rows};

fn llama_bin() -> Option<PathBuf> {
    let dir = match std::env::var_os("DYNAPRESS_LLAMA_CPP_BIN") {
        Some(d) => PathBuf::from(d),
        None => {
            let out = Command::new("bash")
                .arg(common::root().join("scripts/build-llama-cpp.sh"))
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
    if std::env::var("DYNAPRESS_REQUIRE_INTEROP").is_ok_and(|v| v == "1") {
        panic!(
            "DYNAPRESS_REQUIRE_INTEROP=1 but llama.cpp tools are missing in {}",
            dir.display()
        );
    }
    eprintln!("skipped: llama.cpp tools not found (run scripts/build-llama-cpp.sh)");
    None
}

fn run(args: &[&str]) -> Output {
    Command::new(common::bin())
        .args(args)
        .current_dir(common::root())
        .output()
        .unwrap()
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A kquant database of the demo model (all default types, imatrix), and a
/// BF16 GGUF of the model, built once.
fn fixtures() -> &'static (tempfile::TempDir, PathBuf, PathBuf) {
    static F: OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> = OnceLock::new();
    F.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("db");
        ok(run(&[
            "database",
            "--model",
            "assets/demo-model",
            "--calib",
            "assets/data/docs.valid.txt",
            "--calib",
            "assets/data/code.valid.txt",
            "--calib-tokens",
            "8192",
            "--method",
            "kquant",
            "--out",
            db.to_str().unwrap(),
            "--quiet",
        ]));
        let bf16 = tmp.path().join("bf16.gguf");
        ok(run(&[
            "convert",
            "--model",
            "assets/demo-model",
            "--out",
            bf16.to_str().unwrap(),
            "--type",
            "BF16",
        ]));
        (tmp, db, bf16)
    })
}

fn quantize(bin: &Path, args: &[&str]) {
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

/// Tensor bytes of a GGUF file by name.
fn tensors(path: &Path) -> Vec<(String, String, Vec<u8>)> {
    let f = GgufFile::open(path).unwrap();
    f.tensors()
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.ggml_type.name().to_string(),
                f.tensor_bytes(&t.name).unwrap().to_vec(),
            )
        })
        .collect()
}

#[test]
fn kquant_entries_equal_llama_quantize_blocks() {
    let Some(bin) = llama_bin() else { return };
    let (tmp, db, bf16) = fixtures();
    let m = Manifest::read(db).unwrap();
    let heads = |name: &str| match name.rsplit('.').nth(1) {
        Some("attn_q") => Some(4),
        Some("attn_k") => Some(2),
        _ => None,
    };
    for ty in ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"] {
        let out = tmp.path().join(format!("{ty}.gguf"));
        quantize(
            &bin,
            &[
                "--pure",
                "--imatrix",
                db.join("imatrix.gguf").to_str().unwrap(),
                bf16.to_str().unwrap(),
                out.to_str().unwrap(),
                ty,
                "2",
            ],
        );
        let theirs: std::collections::HashMap<String, Vec<u8>> =
            tensors(&out).into_iter().map(|(n, _, b)| (n, b)).collect();
        let mut compared = 0;
        for e in m.entries.iter().filter(|e| e.level == ty) {
            let name = gguf_tensor_name(&e.layer).unwrap().unwrap();
            let Variant::Ggml(g) = load_entry_file(db, e).unwrap() else {
                panic!("ggml entry")
            };
            let ours = match heads(&name) {
                Some(h) => permute_qk_rows(&g.bytes, g.rows, h).unwrap(),
                None => g.bytes.clone(),
            };
            assert!(
                ours == theirs[&name],
                "{ty}: {name} differs from llama-quantize"
            );
            compared += 1;
        }
        assert_eq!(compared, 56, "{ty}");
    }
}

#[test]
fn searched_gguf_runs_in_llama_cpp_and_the_recipe_reproduces_it() {
    let Some(bin) = llama_bin() else { return };
    let (tmp, db, bf16) = fixtures();
    let cfg = tmp.path().join("mix.json");
    ok(run(&[
        "search",
        "--model",
        "assets/demo-model",
        "--db",
        db.to_str().unwrap(),
        "--target-bits",
        "3.6",
        "--algo",
        "knapsack",
        "--out",
        cfg.to_str().unwrap(),
        "--quiet",
    ]));
    let ours = tmp.path().join("mix.gguf");
    let recipe = tmp.path().join("mix.txt");
    ok(run(&[
        "export",
        "--model",
        "assets/demo-model",
        "--db",
        db.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--format",
        "gguf",
        "--out",
        ours.to_str().unwrap(),
        "--recipe",
        recipe.to_str().unwrap(),
    ]));
    // The recipe reproduces every tensor with llama-quantize alone.
    let theirs = tmp.path().join("mix-llama.gguf");
    quantize(
        &bin,
        &[
            "--imatrix",
            db.join("imatrix.gguf").to_str().unwrap(),
            "--token-embedding-type",
            "q6_k",
            "--output-tensor-type",
            "q6_k",
            "--tensor-type-file",
            recipe.to_str().unwrap(),
            bf16.to_str().unwrap(),
            theirs.to_str().unwrap(),
            "Q4_K_M",
            "2",
        ],
    );
    let (mut a, mut b) = (tensors(&ours), tensors(&theirs));
    a.sort();
    b.sort();
    assert_eq!(a.len(), b.len());
    let types: std::collections::BTreeSet<&str> = a.iter().map(|(_, t, _)| t.as_str()).collect();
    assert!(types.len() >= 3, "a mixed file: {types:?}");
    for (x, y) in a.iter().zip(&b) {
        assert!(
            x == y,
            "tensor {} ({}) differs from the recipe's ({} {})",
            x.0,
            x.1,
            y.0,
            y.1
        );
    }
    // llama.cpp runs it; its perplexity agrees with ours (same protocol).
    let theirs_ppl = llama_perplexity(&bin, &ours, 16);
    let v: serde_json::Value = serde_json::from_str(&ok(run(&[
        "eval",
        "--model",
        ours.to_str().unwrap(),
        "--data",
        "assets/data/docs.test.txt",
        "--protocol",
        "llama-perplexity",
        "--windows",
        "16",
        "--json",
        "--quiet",
    ])))
    .unwrap();
    let ours_ppl = v["datasets"]["docs.test.txt"]["perplexity"]
        .as_f64()
        .unwrap();
    let rel = (ours_ppl - theirs_ppl).abs() / theirs_ppl;
    eprintln!(
        "llama-perplexity {theirs_ppl}, dynapress {ours_ppl} ({:.3} %)",
        rel * 100.0
    );
    assert!(rel < 0.01, "llama.cpp {theirs_ppl} vs dynapress {ours_ppl}");
}

/// Runs llama-perplexity and returns its final estimate.
///
/// llama.cpp's logger is asynchronous and not flushed at exit (llama.cpp
/// issue #22142): when the output is a pipe, the last lines (the last
/// chunk's `[i]ppl,` and "Final estimate") are sometimes lost, as in one CI
/// run. The estimate after the last chunk equals the final one, so either is
/// accepted, and the run is repeated (up to 5 times) until one is there.
fn llama_perplexity(bin: &Path, model: &Path, chunks: usize) -> f64 {
    let mut last = String::new();
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
                &chunks.to_string(),
                "-t",
                "2",
            ])
            .current_dir(common::root())
            .output()
            .unwrap();
        let log =
            String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout);
        let fin = log
            .lines()
            .find_map(|l| l.split("Final estimate: PPL = ").nth(1))
            .and_then(|r| r.split_whitespace().next());
        let chunk = log
            .split(&format!("[{chunks}]"))
            .nth(1)
            .and_then(|s| s.split(',').next());
        if let Some(ppl) = fin.or(chunk).and_then(|v| v.trim().parse::<f64>().ok()) {
            return ppl;
        }
        last = format!("exit status {:?}; output:\n{log}", o.status);
    }
    panic!("no estimate in 5 llama-perplexity runs; the last: {last}");
}

#[test]
fn size_target_is_met() {
    let (tmp, db, _) = fixtures();
    let cfg = tmp.path().join("size.json");
    let target = 4_200_000u64;
    ok(run(&[
        "search",
        "--model",
        "assets/demo-model",
        "--db",
        db.to_str().unwrap(),
        "--target-size",
        &target.to_string(),
        "--embed-type",
        "Q4_K",
        "--algo",
        "knapsack",
        "--out",
        cfg.to_str().unwrap(),
        "--quiet",
    ]));
    let out = tmp.path().join("size.gguf");
    ok(run(&[
        "export",
        "--model",
        "assets/demo-model",
        "--db",
        db.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--format",
        "gguf",
        "--embed-type",
        "Q4_K",
        "--out",
        out.to_str().unwrap(),
    ]));
    let size = std::fs::metadata(&out).unwrap().len();
    assert!(
        size <= target && size > target - 40_000,
        "{size} vs {target}"
    );
    // A size below the fixed part is a clear error.
    let o = run(&[
        "search",
        "--model",
        "assets/demo-model",
        "--db",
        db.to_str().unwrap(),
        "--target-size",
        "100000",
        "--algo",
        "knapsack",
        "--out",
        cfg.to_str().unwrap(),
        "--force", // the configuration above exists; this search fails
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot hold this model"));
    // A size that holds the embeddings but not every layer at the lowest
    // level says which options to change.
    let o = run(&[
        "search",
        "--model",
        "assets/demo-model",
        "--db",
        db.to_str().unwrap(),
        "--target-size",
        "3600000",
        "--algo",
        "knapsack",
        "--out",
        cfg.to_str().unwrap(),
        "--force", // the configuration above exists; this search fails
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--embed-type") && err.contains("smallest file"),
        "{err}"
    );
}

#[test]
fn gguf_export_needs_a_ggml_database() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    ok(run(&[
        "database",
        "--model",
        "assets/demo-model",
        "--calib",
        "assets/data/docs.valid.txt",
        "--calib-tokens",
        "2048",
        "--bits",
        "2,4",
        "--out",
        db.to_str().unwrap(),
        "--quiet",
    ]));
    let cfg = tmp.path().join("c.json");
    ok(run(&[
        "search",
        "--model",
        "assets/demo-model",
        "--db",
        db.to_str().unwrap(),
        "--target-bits",
        "3",
        "--algo",
        "knapsack",
        "--out",
        cfg.to_str().unwrap(),
        "--quiet",
    ]));
    let out = tmp.path().join("x.gguf");
    let o = run(&[
        "export",
        "--model",
        "assets/demo-model",
        "--db",
        db.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--format",
        "gguf",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("kquant"));
    assert!(!out.exists());
}

#[test]
fn compress_by_file_size_reports_the_budget_it_searched() {
    // Issue 15: with --target-size, the knapsack comparison rows and the
    // progress message used the CLI's default 3.0 bits instead of the
    // bits the file size leaves for the layers.
    let (tmp, db, _) = fixtures();
    let out = tmp.path().join("by-size");
    let o = run(&[
        "compress",
        "--db",
        db.to_str().unwrap(),
        "--method",
        "kquant",
        "--calib-tokens",
        "8192",
        "--format",
        "gguf",
        "--target-size",
        "4484192",
        "--algo",
        "knapsack",
        "--eval-windows",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    ok(o);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let target = r["target_bits"].as_f64().unwrap();
    assert!((target - 3.0).abs() > 0.05, "budget {target}");
    assert!(
        err.contains(&format!("{target:.4} bits per weight")),
        "{err}"
    );
    let knapsack: Vec<&str> = r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["kind"] == "knapsack")
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert!(
        knapsack.contains(&format!("knapsack @ {target}").as_str()),
        "{knapsack:?} at {target}"
    );
}

/// A tied checkpoint whose hidden size (576, SmolLM2-135M's) is not a
/// multiple of 256: the database gives its q/k/v/o/gate/up layers the
/// fallback levels (and says why they lack the k-quants), `down_proj` (rows of
/// 1 536) the k-quants; `token_embd` falls back to Q8_0 as in llama-quantize
/// (never F32), and no budget message speaks of an output tensor. With the
/// llama.cpp tools: every fallback level's blocks equal llama-quantize's (with
/// the same imatrix), and so does the exported `token_embd`.
#[test]
fn tied_576_checkpoint_gets_fallback_levels_and_types() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("s576");
    ok(run(&[
        "bench",
        "synth",
        "--out",
        model.to_str().unwrap(),
        "--layers",
        "2",
        "--hidden",
        "576",
        "--intermediate",
        "1536",
        "--heads",
        "9",
        "--kv-heads",
        "3",
        "--vocab",
        "4096",
        "--tied",
    ]));
    let m = model.to_str().unwrap();
    let db = tmp.path().join("db");
    let out = ok(run(&[
        "database",
        "--model",
        m,
        "--calib",
        "assets/data/docs.valid.txt",
        "--calib-tokens",
        "2048",
        "--method",
        "kquant",
        "--out",
        db.to_str().unwrap(),
        "--quiet",
    ]));
    assert!(
        out.contains("12 layers with rows of 576 weights cannot hold Q2_K, Q3_K, Q4_K, Q5_K, Q6_K")
            && out.contains("IQ4_NL, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 instead"),
        "{out}"
    );
    let man = Manifest::read(&db).unwrap();
    let fallback = ["IQ4_NL", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"];
    let kquants = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"];
    let has = |layer: &str, level: &str| {
        man.entries
            .iter()
            .any(|e| e.layer == layer && e.level == level)
    };
    let why = |layer: &str, level: &str| {
        man.unavailable
            .iter()
            .find(|u| u.layer == layer && u.level == level)
            .map(|u| u.reason.clone())
    };
    for block in 0..2 {
        for kind in ["self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj"] {
            let layer = format!("model.layers.{block}.{kind}.weight");
            for t in fallback {
                assert!(has(&layer, t), "{layer} lacks {t}");
            }
            for t in kquants {
                let r = why(&layer, t).unwrap_or_else(|| panic!("{layer} {t}"));
                assert!(
                    r.contains("rows of 576") && r.contains("llama-quantize would write"),
                    "{r}"
                );
            }
        }
        let down = format!("model.layers.{block}.mlp.down_proj.weight");
        for t in kquants.iter().chain(&["Q8_0"]) {
            assert!(has(&down, t), "{down} lacks {t}");
        }
        for t in ["IQ4_NL", "Q4_0", "Q5_1"] {
            assert!(why(&down, t).is_some_and(|r| r.contains("fallback level")));
        }
    }

    // Budgets speak of token_embd alone, at its fallback type.
    let cfg = tmp.path().join("c.json");
    let search = |target: &str| {
        run(&[
            "search",
            "--model",
            m,
            "--db",
            db.to_str().unwrap(),
            "--target-size",
            target,
            "--algo",
            "knapsack",
            "--out",
            cfg.to_str().unwrap(),
            "--quiet",
        ])
    };
    let o = search("1000000");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("token_embd (Q8_0: rows of 576 cannot hold Q6_K; tied")
            && !err.contains("output (")
            && !err.contains("--output-type"),
        "{err}"
    );
    // Every linear layer at its smallest level plus a Q8_0 token_embd.
    let target = 9_000_000u64;
    ok(search(&target.to_string()));
    let gguf = tmp.path().join("s576.gguf");
    ok(run(&[
        "export",
        "--model",
        m,
        "--db",
        db.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--format",
        "gguf",
        "--out",
        gguf.to_str().unwrap(),
    ]));
    let size = std::fs::metadata(&gguf).unwrap().len();
    assert!(
        size <= target && size > target - 200_000,
        "{size} vs {target}"
    );
    let ours = tensors(&gguf);
    let ty_of = |n: &str| ours.iter().find(|t| t.0 == n).map(|t| t.1.clone());
    assert_eq!(ty_of("token_embd.weight").as_deref(), Some("Q8_0"));
    assert_eq!(ty_of("output.weight"), None);
    for (name, ty, _) in &ours {
        if name.starts_with("blk.") && !name.ends_with("norm.weight") {
            assert_ne!(ty, "F32", "{name}");
        }
    }

    let Some(bin) = llama_bin() else { return };
    let f32_gguf = tmp.path().join("f32.gguf");
    ok(run(&[
        "convert",
        "--model",
        m,
        "--out",
        f32_gguf.to_str().unwrap(),
        "--type",
        "F32",
    ]));
    let heads = |name: &str| match name.rsplit('.').nth(1) {
        Some("attn_q") => Some(9),
        Some("attn_k") => Some(3),
        _ => None,
    };
    for ty in fallback {
        let q = tmp.path().join(format!("{ty}.gguf"));
        quantize(
            &bin,
            &[
                "--pure",
                "--imatrix",
                db.join("imatrix.gguf").to_str().unwrap(),
                f32_gguf.to_str().unwrap(),
                q.to_str().unwrap(),
                ty,
                "2",
            ],
        );
        let theirs: std::collections::HashMap<String, Vec<u8>> =
            tensors(&q).into_iter().map(|(n, _, b)| (n, b)).collect();
        let mut compared = 0;
        for e in man
            .entries
            .iter()
            .filter(|e| e.level == ty && e.cols == 576)
        {
            let name = gguf_tensor_name(&e.layer).unwrap().unwrap();
            let Variant::Ggml(g) = load_entry_file(&db, e).unwrap() else {
                panic!("ggml entry")
            };
            let ours = match heads(&name) {
                Some(h) => permute_qk_rows(&g.bytes, g.rows, h).unwrap(),
                None => g.bytes.clone(),
            };
            assert!(
                ours == theirs[&name],
                "{ty}: {name} differs from llama-quantize"
            );
            compared += 1;
        }
        assert_eq!(compared, 12, "{ty}");
    }
    // llama-quantize's Q4_K_M gives the tied token_embd Q8_0 too, the same bytes.
    let q = tmp.path().join("q4km.gguf");
    quantize(
        &bin,
        &[
            f32_gguf.to_str().unwrap(),
            q.to_str().unwrap(),
            "Q4_K_M",
            "2",
        ],
    );
    let theirs = tensors(&q);
    let embd = |v: &[(String, String, Vec<u8>)]| {
        v.iter()
            .find(|t| t.0 == "token_embd.weight")
            .cloned()
            .unwrap()
    };
    assert!(
        embd(&ours) == embd(&theirs),
        "token_embd differs from llama-quantize's"
    );
}
