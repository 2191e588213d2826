//! GGUF against llama.cpp: our k-quant database entries equal llama-quantize's
//! blocks, our mixed GGUF runs in llama.cpp with the perplexity our
//! `--protocol llama-perplexity` computes, and the recipe reproduces the mix.
//! These tests need llama.cpp's tools (scripts/build-llama-cpp.sh); without
//! them they skip, unless DYNAPRESS_REQUIRE_INTEROP=1 (as in .ci/run).

mod common;

use std::path::Path;

use common::cli::{DEMO, clean_error, convert, database, database_of, export, knapsack, ok, run};
use common::demo::{gguf, kquant_db};
use common::tools::{llama_bin, llama_perplexity, quantize};
use common::{read_json, s};
use dynapress::database::{Manifest, Variant, load_entry_file};
use dynapress_gguf::GgufFile;
use dynapress_gguf::model::{gguf_tensor_name, permute_qk_rows};

/// (name, ggml type, bytes) of every tensor of a GGUF file.
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

/// Quantizes `source` (a GGUF of the model the kquant database `db` was built
/// from) with `llama-quantize --pure` and the database's imatrix to each of
/// `types`, and asserts that every database entry of that type
/// (of `cols` columns, if given) holds llama-quantize's bytes for its tensor
/// (q/k rows permuted to GGUF's order: `heads` = (query heads, key-value
/// heads)), `count` entries per type.
fn assert_entries_equal_llama_quantize(
    bin: &Path,
    db: &Path,
    source: &Path,
    types: &[&str],
    heads: (usize, usize),
    cols: Option<usize>,
    count: usize,
) {
    let m = Manifest::read(db).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let heads = |name: &str| match name.rsplit('.').nth(1) {
        Some("attn_q") => Some(heads.0),
        Some("attn_k") => Some(heads.1),
        _ => None,
    };
    for &ty in types {
        let out = scratch.path().join(format!("{ty}.gguf"));
        let imatrix = db.join("imatrix.gguf");
        quantize(
            bin,
            &[
                "--pure",
                "--imatrix",
                s(&imatrix),
                // Only the blocks' layers are compared; the embedding has
                // no imatrix entry, which IQ2_XXS/IQ2_XS/IQ1_* require.
                "--token-embedding-type",
                "q8_0",
                "--output-tensor-type",
                "q8_0",
                s(source),
                s(&out),
                ty,
                "2",
            ],
        );
        let theirs: std::collections::HashMap<String, Vec<u8>> =
            tensors(&out).into_iter().map(|(n, _, b)| (n, b)).collect();
        let mut compared = 0;
        for e in m
            .entries
            .iter()
            .filter(|e| e.level == ty && cols.is_none_or(|c| e.cols == c))
        {
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
        assert_eq!(compared, count, "{ty}");
    }
}

/// A knapsack search of `model` on `db` for a GGUF file of `target` bytes.
fn search_size(
    model: &str,
    db: &Path,
    target: &str,
    out: &Path,
    extra: &[&str],
) -> std::process::Output {
    common::cli::on_db(
        "search",
        model,
        db,
        out,
        &[&["--target-size", target, "--algo", "knapsack"], extra].concat(),
    )
}

#[test]
fn kquant_entries_equal_llama_quantize_blocks() {
    let Some(bin) = llama_bin() else { return };
    assert_entries_equal_llama_quantize(
        &bin,
        kquant_db(),
        gguf("BF16"),
        &["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"],
        (4, 2),
        None,
        56,
    );
}

#[test]
fn searched_gguf_runs_in_llama_cpp_and_the_recipe_reproduces_it() {
    let Some(bin) = llama_bin() else { return };
    assert_mix_runs_in_llama_cpp(&bin, kquant_db(), "3.6");
}

#[test]
fn iquant_levels_equal_llama_quantize_and_their_mix_runs_in_llama_cpp() {
    // Issue 13: the lattice i-quants as plain database levels. Every entry
    // equals llama-quantize's tensor byte for byte (same imatrix), a searched
    // mix of i- and k-quants is reproduced by the recipe, and llama.cpp's
    // perplexity of it agrees with ours within 1 %.
    let Some(bin) = llama_bin() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("iq-db");
    let types = ["IQ2_XS", "IQ3_XXS", "IQ4_XS", "Q4_K"];
    ok(&database(
        &db,
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
            &types.join(","),
        ],
    ));
    assert_entries_equal_llama_quantize(&bin, &db, gguf("BF16"), &types[..3], (4, 2), None, 56);
    let mix = assert_mix_runs_in_llama_cpp(&bin, &db, "3.3");
    for t in ["IQ2_XS", "IQ3_XXS"] {
        assert!(mix.contains(t), "the mix holds {t}: {mix:?}");
    }
}

/// A knapsack mix of `db` at `bits` exported as GGUF: the exported recipe
/// reproduces every tensor with llama-quantize, and llama-perplexity of the
/// file agrees with `eval --protocol llama-perplexity` within 1 %.
/// Returns the file's tensor types.
fn assert_mix_runs_in_llama_cpp(
    bin: &Path,
    db: &Path,
    bits: &str,
) -> std::collections::BTreeSet<String> {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("mix.json");
    knapsack(db, bits, &cfg);
    let ours = tmp.path().join("mix.gguf");
    let recipe = tmp.path().join("mix.txt");
    ok(&export(
        db,
        &cfg,
        &ours,
        &["--format", "gguf", "--recipe", s(&recipe)],
    ));
    // The recipe reproduces every tensor with llama-quantize alone.
    let theirs = tmp.path().join("mix-llama.gguf");
    quantize(
        bin,
        &[
            "--imatrix",
            s(&db.join("imatrix.gguf")),
            "--token-embedding-type",
            "q6_k",
            "--output-tensor-type",
            "q6_k",
            "--tensor-type-file",
            s(&recipe),
            s(gguf("BF16")),
            s(&theirs),
            "Q4_K_M",
            "2",
        ],
    );
    let (mut a, mut b) = (tensors(&ours), tensors(&theirs));
    a.sort();
    b.sort();
    assert_eq!(a.len(), b.len());
    let types: std::collections::BTreeSet<String> = a.iter().map(|(_, t, _)| t.clone()).collect();
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
    assert_llama_perplexity_agrees(bin, &ours);
    types
}

/// llama.cpp runs `file`, and its perplexity on 16 windows of docs.test.txt
/// agrees with `eval --protocol llama-perplexity` within 1 %.
fn assert_llama_perplexity_agrees(bin: &Path, ours: &Path) {
    let theirs_ppl = llama_perplexity(bin, ours, 16);
    let v = common::cli::eval_json(&[
        "--model",
        s(ours),
        "--data",
        "assets/data/docs.test.txt",
        "--protocol",
        "llama-perplexity",
        "--windows",
        "16",
    ]);
    let ours_ppl = common::cli::perplexity(&v, "docs.test.txt");
    let rel = (ours_ppl - theirs_ppl).abs() / theirs_ppl;
    eprintln!(
        "llama-perplexity {theirs_ppl}, dynapress {ours_ppl} ({:.3} %)",
        rel * 100.0
    );
    assert!(rel < 0.01, "llama.cpp {theirs_ppl} vs dynapress {ours_ppl}");
}

#[test]
fn gptq_iquant_mix_runs_in_llama_cpp_like_eval() {
    // Issue 13: GPTQ inside the lattice i-quants' codebooks writes ordinary
    // ggml blocks. A searched mix of gptq-IQ2_XS, gptq-IQ3_S and gptq-Q4_K
    // loads in llama.cpp, and its perplexity agrees with ours within 1 %.
    let Some(bin) = llama_bin() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("gptq-iq-db");
    ok(&database(
        &db,
        &[
            "--calib",
            "assets/data/docs.valid.txt",
            "--calib-tokens",
            "1024",
            "--seq-len",
            "128",
            "--method",
            "gptq-kquant",
            "--types",
            "IQ2_XS,IQ3_S,Q4_K",
        ],
    ));
    let cfg = tmp.path().join("mix.json");
    knapsack(&db, "3.3", &cfg);
    let ours = tmp.path().join("mix.gguf");
    ok(&export(&db, &cfg, &ours, &["--format", "gguf"]));
    let types: std::collections::BTreeSet<String> =
        tensors(&ours).into_iter().map(|(_, t, _)| t).collect();
    for t in ["IQ2_XS", "IQ3_S"] {
        assert!(types.contains(t), "the mix holds {t}: {types:?}");
    }
    assert_llama_perplexity_agrees(&bin, &ours);
}

#[test]
fn size_target_is_met() {
    let (tmp, db) = (tempfile::tempdir().unwrap(), kquant_db());
    let cfg = tmp.path().join("size.json");
    let target = 4_200_000u64;
    let embed = ["--embed-type", "Q4_K", "--output-type", "Q6_K"];
    ok(&search_size(
        DEMO,
        db,
        &target.to_string(),
        &cfg,
        &[&embed[..], &["--quiet"]].concat(),
    ));
    let out = tmp.path().join("size.gguf");
    ok(&export(
        db,
        &cfg,
        &out,
        &[&["--format", "gguf"], &embed[..]].concat(),
    ));
    let size = std::fs::metadata(&out).unwrap().len();
    assert!(
        size <= target && size > target - 40_000,
        "{size} vs {target}"
    );
    // The configuration above exists (--force); these searches fail. A size
    // below the fixed part is a clear error.
    let o = search_size(DEMO, db, "100000", &cfg, &["--force"]);
    clean_error(&o, &["cannot hold this model"]);
    // A size that holds the embeddings but not every layer at the lowest
    // level says which options to change.
    let fixed = [&embed[..], &["--force"]].concat();
    let o = search_size(DEMO, db, "3600000", &cfg, &fixed);
    clean_error(&o, &["--embed-type", "smallest file"]);
    // With the embedding and output types searched (the default) the same
    // size fits: they start smaller. The file holds the types the
    // configuration records, within the size.
    let auto = tmp.path().join("auto.json");
    ok(&search_size(DEMO, db, "3600000", &auto, &["--quiet"]));
    let c = read_json(&auto);
    let (e, o) = (
        c["embed_type"].as_str().unwrap().to_string(),
        c["output_type"].as_str().unwrap().to_string(),
    );
    let out = tmp.path().join("auto.gguf");
    ok(&export(db, &auto, &out, &["--format", "gguf"]));
    let size = std::fs::metadata(&out).unwrap().len();
    assert!(size <= 3_600_000 && size > 3_560_000, "{size}");
    let t = tensors(&out);
    let ty = |n: &str| t.iter().find(|x| x.0 == n).unwrap().1.clone();
    assert_eq!((ty("token_embd.weight"), ty("output.weight")), (e, o));
    // Below the smallest types: one line naming both tensors.
    let o = search_size(DEMO, db, "2000000", &auto, &["--force"]);
    clean_error(
        &o,
        &["token_embd and output at their smallest", "smallest file"],
    );
}

/// The search's fitness with the embedding and output types as layers: a
/// candidate scored from the parent's cached states (starting at its first
/// changed block, or at the head alone when only the output changed) gets
/// exactly the KL of a forward from scratch, and changing either tensor's
/// type changes the KL (it is applied, to the embedding lookup and the head).
#[test]
fn head_types_in_the_fitness_match_a_forward_from_scratch() {
    use dynapress::calib::load_calibration;
    use dynapress::database::Database;
    use dynapress::export::{GgufTypes, resolve_budget};
    use dynapress::model::{Model, ModelFiles};
    use dynapress::search::fitness::{BaseTargets, Evaluator};
    use dynapress::selection::Budget;

    let files = ModelFiles::open(Path::new(DEMO)).unwrap();
    let db = Database::open(kquant_db()).unwrap();
    let (_, head) = resolve_budget(
        Budget::GgufBytes(4_484_192),
        &files,
        &db,
        Some(GgufTypes::default()),
    )
    .unwrap();
    let head = head.expect("types searched by default");
    assert_eq!(head.layers.len(), 2, "the demo model is untied");
    let space = db.space.clone().with_head(head.layers);
    let n = space.layers.len();
    let calib = load_calibration(
        &[common::data("docs.valid.txt")],
        &files.tokenizer,
        1024,
        128,
    )
    .unwrap();
    let base = Model::from_files(&files, &candle_core::Device::Cpu).unwrap();
    let targets = BaseTargets::compute(&base, calib.ids.clone(), 128, 64, 1 << 30, |_| {}).unwrap();
    let mut ev = Evaluator::new(base, &db, &space, 64 << 20);
    let parent = space.all_at(2);
    let with = |f: &dyn Fn(&mut Vec<usize>)| {
        let mut c = parent.clone();
        f(&mut c);
        c
    };
    let cands = vec![
        with(&|c| c[n] = 0),     // token_embd smallest
        with(&|c| c[n + 1] = 0), // output smallest
        with(&|c| c[n + 1] = 5), // output largest
        with(&|c| c[5] += 1),    // a linear layer
        with(&|c| {
            c[n] = 5;
            c[20] -= 1;
        }),
    ];
    let windows: Vec<usize> = (0..targets.windows()).collect();
    let cached = ev
        .fitness_many(&cands, Some(&parent), &targets, &windows)
        .unwrap();
    let scratch = ev.fitness_many(&cands, None, &targets, &windows).unwrap();
    let p = ev.fitness(&parent, &targets, &windows).unwrap();
    for (a, b) in cached.iter().zip(&scratch) {
        assert!((a - b).abs() <= 1e-9 * b.abs(), "{cached:?} vs {scratch:?}");
    }
    // The search's evaluator re-reads the base head tensors from the
    // checkpoint instead of keeping them: the same levels, the same scores.
    let base = Model::from_files(&files, &candle_core::Device::Cpu).unwrap();
    let mut from_files = Evaluator::new(base, &db, &space, 64 << 20).reading_base_from(&files);
    let again = from_files
        .fitness_many(&cands, Some(&parent), &targets, &windows)
        .unwrap();
    assert_eq!(again, cached, "head levels encoded from the files differ");
    for (i, f) in scratch.iter().enumerate() {
        assert!(
            (f - p).abs() > 1e-4 * p,
            "candidate {i} scores as the parent: {f} vs {p}"
        );
    }
    // Smaller types are worse, here by a wide margin.
    assert!(
        scratch[0] > p && scratch[1] > p && scratch[2] < p,
        "{scratch:?} vs {p}"
    );
}

#[test]
fn gguf_export_needs_a_ggml_database() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    ok(&database(
        &db,
        &[
            "--calib",
            "assets/data/docs.valid.txt",
            "--calib-tokens",
            "2048",
            "--bits",
            "2,4",
        ],
    ));
    let cfg = tmp.path().join("c.json");
    knapsack(&db, "3", &cfg);
    let out = tmp.path().join("x.gguf");
    let o = export(&db, &cfg, &out, &["--format", "gguf"]);
    clean_error(&o, &["kquant"]);
    assert!(!out.exists());
}

#[test]
fn compress_by_file_size_reports_the_budget_it_searched() {
    // Issue 15: with --target-size, the knapsack comparison rows and the
    // progress message used the CLI's default 3.0 bits instead of the
    // bits the file size leaves for the layers.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("by-size");
    let o = run(&[
        "compress",
        "--db",
        s(kquant_db()),
        "--method",
        "kquant",
        "--types",
        common::cli::KQUANT_TYPES,
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
        s(&out),
    ]);
    let err = common::cli::stderr(&o);
    ok(&o);
    let r = read_json(&out.join("report.json"));
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
    // Row names carry the target rounded to 4 decimals.
    assert!(
        knapsack.iter().any(|n| n
            .strip_prefix("knapsack @ ")
            .and_then(|x| x.parse::<f64>().ok())
            .is_some_and(|x| (x - target).abs() < 5e-5)),
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
    ok(&run(&[
        "bench",
        "synth",
        "--out",
        s(&model),
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
    let m = s(&model);
    let db = tmp.path().join("db");
    let out = ok(&database_of(
        m,
        &db,
        &[
            "--calib",
            "assets/data/docs.valid.txt",
            "--calib-tokens",
            "2048",
            "--method",
            "kquant",
            "--types",
            common::cli::KQUANT_TYPES,
        ],
    ));
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
    let search = |target: &str| search_size(m, &db, target, &cfg, &["--quiet"]);
    let o = search_size(
        m,
        &db,
        "1000000",
        &cfg,
        &["--quiet", "--embed-type", "Q6_K"],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = common::cli::stderr(&o);
    assert!(
        err.contains("token_embd (Q8_0: rows of 576 cannot hold Q6_K; tied")
            && !err.contains("output (")
            && !err.contains("--output-type"),
        "{err}"
    );
    // Searched, the tied tensor's types are the 32-value fallbacks, and the
    // messages speak of token_embd alone.
    let o = search("1000000");
    let err = common::cli::stderr(&o);
    assert!(
        err.contains("token_embd at its smallest type (Q4_0; tied")
            && !err.contains("token_embd and output"),
        "{err}"
    );
    // `compress` end to end on it: the uniform comparison rows give a layer
    // without a level (rows of 576 cannot hold Q4_K) its largest level below.
    let run_dir = tmp.path().join("run");
    ok(&run(&[
        "compress",
        "--model",
        m,
        "--db",
        s(&db),
        "--method",
        "kquant",
        "--types",
        common::cli::KQUANT_TYPES,
        "--calib",
        "assets/data/docs.valid.txt",
        "--calib-tokens",
        "2048",
        "--eval",
        "assets/data/docs.test.txt",
        "--eval-windows",
        "2",
        "--format",
        "gguf",
        "--target-size",
        "9000000",
        "--generations",
        "1",
        "--offspring",
        "2",
        "--stages",
        "256:1",
        "--out",
        s(&run_dir),
        "--quiet",
    ]));
    let r = read_json(&run_dir.join("report.json"));
    let uniform = r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["kind"] == "uniform")
        .count();
    assert!(uniform >= 6, "{}", r["rows"]);
    // The report's budget is the one the configuration records: what the
    // chosen token_embd type left for the layers.
    let c = read_json(&run_dir.join("config.json"));
    assert_eq!(r["target_bits"], c["target_bits"]);
    assert!(c["embed_type"].is_string(), "{c}");
    // Every linear layer at its smallest level plus a Q8_0 token_embd.
    let target = 9_000_000u64;
    ok(&search(&target.to_string()));
    let gguf = tmp.path().join("s576.gguf");
    ok(&common::cli::on_db(
        "export",
        m,
        &db,
        &gguf,
        &["--config", s(&cfg), "--format", "gguf"],
    ));
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
    convert(m, &f32_gguf, "F32");
    assert_entries_equal_llama_quantize(&bin, &db, &f32_gguf, &fallback, (9, 3), Some(576), 12);
    // llama-quantize's Q4_K_M gives the tied token_embd Q8_0 too, the same bytes.
    let q = tmp.path().join("q4km.gguf");
    quantize(&bin, &[s(&f32_gguf), s(&q), "Q4_K_M", "2"]);
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
