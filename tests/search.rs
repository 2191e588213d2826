//! Search, export and the one-command pipeline on the demo model.

mod common;

use std::path::Path;
use std::process::Output;

use common::cli::{DEMO, clean_error, eval_json, export, knapsack, ok, perplexity, run};
use common::demo::gptq_db as db;
use common::{read_json, s};
use dynapress::selection::ConfigFile;

const SMALL: [&str; 6] = [
    "--generations",
    "4",
    "--offspring",
    "6",
    "--stages",
    "512:2,2048:1",
];

/// A small seeded (3 unless `extra` names one) EvoPress search at 2.6 bits.
fn search(out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "--calib",
        "assets/data/docs.valid.txt",
        "--target-bits",
        "2.6",
        "--quiet",
    ];
    args.extend_from_slice(&SMALL);
    if !extra.contains(&"--seed") {
        args.extend_from_slice(&["--seed", "3"]);
    }
    args.extend_from_slice(extra);
    common::cli::search(db(), out, &args)
}

#[test]
fn same_seed_gives_the_same_configuration() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a.json"), tmp.path().join("b.json"));
    ok(&search(&a, &[]));
    ok(&search(&b, &[]));
    let (ca, cb) = (ConfigFile::read(&a).unwrap(), ConfigFile::read(&b).unwrap());
    assert_eq!(ca.layers, cb.layers);
    assert_eq!(ca.fitness, cb.fitness);
    assert!(ca.bits_per_weight <= 2.6);
    // Another seed explores differently (its history differs).
    let c = tmp.path().join("c.json");
    ok(&search(&c, &["--seed", "4"]));
    let sa = std::fs::read_to_string(tmp.path().join("a.json.state")).unwrap();
    let sc = std::fs::read_to_string(tmp.path().join("c.json.state")).unwrap();
    assert_ne!(sa, sc);
}

#[test]
fn killed_and_resumed_search_gives_the_same_configuration() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a.json"), tmp.path().join("b.json"));
    ok(&search(&a, &["--init", "random"]));
    let o = search(&b, &["--init", "random", "--abort-after", "2"]);
    assert!(!o.status.success(), "the abort hook must stop the process");
    assert!(
        !b.exists(),
        "no configuration is written before the search ends"
    );
    ok(&search(&b, &["--init", "random"]));
    let (ca, cb) = (ConfigFile::read(&a).unwrap(), ConfigFile::read(&b).unwrap());
    assert_eq!(ca, cb);
}

#[test]
fn a_checkpoint_of_other_calibration_data_is_refused() {
    // Issue 11, row 6: the checkpoint records what its fitness was computed
    // on; resuming with other calibration text (or --seq-len) is an error,
    // never the old configuration.
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.json");
    let o = search(&a, &["--abort-after", "1"]);
    assert!(!o.status.success(), "the abort hook must stop the process");
    assert!(tmp.path().join("a.json.state").is_file());
    let o = search(&a, &["--calib", "assets/data/code.valid.txt"]);
    clean_error(&o, &["checkpoint", "calibration"]);
    let o = search(&a, &["--seq-len", "128"]);
    clean_error(&o, &["checkpoint", "calibration"]);
    // The same command resumes.
    ok(&search(&a, &[]));
}

#[test]
fn allocations_respect_the_budget() {
    let tmp = tempfile::tempdir().unwrap();
    for algo in ["uniform", "knapsack"] {
        for target in ["2.3", "3.0", "3.9"] {
            let out = tmp.path().join(format!("{algo}-{target}.json"));
            ok(&common::cli::search(
                db(),
                &out,
                &["--target-bits", target, "--algo", algo, "--quiet"],
            ));
            let c = ConfigFile::read(&out).unwrap();
            let t: f64 = target.parse().unwrap();
            assert!(
                c.bits_per_weight <= t,
                "{algo} at {target}: {}",
                c.bits_per_weight
            );
            assert_eq!(c.layers.len(), 56);
        }
    }
}

#[test]
fn targets_outside_the_levels_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("c.json");
    for (t, needle) in [
        ("1.5", "below the lowest level"),
        ("9", "above the highest level"),
    ] {
        let o = common::cli::search(db(), &out, &["--target-bits", t, "--algo", "knapsack"]);
        clean_error(&o, &[needle]);
    }
}

#[test]
fn a_database_of_another_model_is_refused() {
    // A tiny Qwen2 checkpoint with the demo tokenizer.
    let tmp = tempfile::tempdir().unwrap();
    let other = tmp.path().join("other");
    common::tiny_model("qwen2", &other);
    let out = tmp.path().join("c.json");
    let o = common::cli::on_db(
        "search",
        s(&other),
        db(),
        &out,
        &["--target-bits", "3", "--algo", "knapsack"],
    );
    clean_error(&o, &["another model"]);
}

#[test]
fn a_configuration_naming_unknown_layers_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("c.json");
    knapsack(db(), "3", &cfg);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("model.layers.7.mlp.up_proj", "model.layers.9.mlp.up_proj");
    std::fs::write(&cfg, text).unwrap();
    let out = tmp.path().join("model");
    let o = export(db(), &cfg, &out, &[]);
    clean_error(&o, &["model.layers.9.mlp.up_proj", "c.json"]);
    assert!(!out.exists(), "nothing exported");
    let o = run(&[
        "eval",
        "--model",
        DEMO,
        "--db",
        s(db()),
        "--config",
        s(&cfg),
        "--data",
        "assets/data/docs.test.txt",
    ]);
    clean_error(&o, &["model.layers.9.mlp.up_proj"]);
}

#[test]
fn exported_model_evaluates_like_the_configuration() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("c.json");
    knapsack(db(), "3", &cfg);
    let out = tmp.path().join("model");
    ok(&export(db(), &cfg, &out, &["--dtype", "f32"]));
    for f in [
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "dynapress.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let eval = |extra: &[&str]| -> f64 {
        let v = eval_json(
            &[
                &["--data", "assets/data/docs.test.txt", "--windows", "4"],
                extra,
            ]
            .concat(),
        );
        perplexity(&v, "docs.test.txt")
    };
    // f32 export = the in-memory configuration exactly.
    let a = eval(&["--model", s(&out)]);
    let b = eval(&["--model", DEMO, "--db", s(db()), "--config", s(&cfg)]);
    assert_eq!(a, b);
    // The native export stores the codes; it loads to the same weights, is
    // several times smaller, and packs (entropy-codes) smaller still.
    let native = tmp.path().join("native");
    ok(&export(db(), &cfg, &native, &["--format", "dynapress"]));
    assert_eq!(eval(&["--model", s(&native)]), a);
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    let st_native = size(&native.join("model.safetensors"));
    let st_bf16 = size(&common::demo_model().join("model.safetensors"));
    assert!(
        (st_native as f64) < 0.5 * st_bf16 as f64,
        "native {st_native} vs bf16 {st_bf16}"
    );
    let dpk = tmp.path().join("native.dpk");
    ok(&run(&["pack", s(&native), s(&dpk), "--quiet"]));
    assert!(size(&dpk) < st_native, "pack {} vs {st_native}", size(&dpk));
    assert_eq!(eval(&["--model", s(&dpk)]), a);
    // Exporting again over it needs --force.
    let o = export(db(), &cfg, &out, &[]);
    clean_error(&o, &["--force"]);
}

#[test]
fn compress_runs_end_to_end_and_writes_the_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut args = vec![
        "compress",
        "--out",
        s(&out),
        "--db",
        s(db()),
        "--bits",
        "2,3,4",
        "--calib-tokens",
        "8192",
        "--target-bits",
        "2.8",
        "--eval-windows",
        "4",
        "--quiet",
    ];
    args.extend_from_slice(&SMALL);
    let stdout = ok(&run(&args));
    assert!(stdout.contains("report.html"), "{stdout}");
    let r = read_json(&out.join("report.json"));
    assert!(r["achieved_bits_per_weight"].as_f64().unwrap() <= 2.8);
    assert_eq!(r["layers"].as_array().unwrap().len(), 56);
    let kinds: Vec<&str> = r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["kind"].as_str().unwrap())
        .collect();
    for k in ["uniform", "knapsack", "evopress", "exported", "base"] {
        assert!(kinds.contains(&k), "{kinds:?}");
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert_eq!(
        html.matches("<svg").count(),
        3,
        "heatmap, plot and zoomed plot"
    );
    assert!(html.contains("block 7") && html.contains("down_proj"));
    assert!(
        std::fs::read_to_string(out.join("report.md"))
            .unwrap()
            .contains("| block |")
    );
    assert!(out.join("model/model.safetensors").is_file());
    // The compressed form is written beside it; under half the size (the
    // embeddings and the head stay bf16).
    let compact = r["compressed_bytes"].as_u64().unwrap();
    assert_eq!(
        compact,
        std::fs::metadata(out.join("model-dynapress/model.safetensors"))
            .unwrap()
            .len()
    );
    assert!(
        compact * 2 < r["exported_bytes"].as_u64().unwrap(),
        "{compact}"
    );
}

#[test]
fn dry_run_estimates_without_working() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let v = common::cli::ok_json(&run(&["compress", "--dry-run", "--json", "--out", s(&out)]));
    let stages: Vec<&str> = v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["database", "search", "export", "evaluation"]);
    // The whole run's peak is its largest stage's.
    let peaks: Vec<f64> = v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["peak_ram_mib"].as_f64().unwrap())
        .collect();
    let peak = v["peak_ram_mib"].as_f64().unwrap();
    assert!(
        peaks.iter().all(|&p| p > 0.0 && p <= peak),
        "{peaks:?} {peak}"
    );
    assert!(peaks.contains(&peak), "{peaks:?} {peak}");
    assert!(v["database_disk_mib"].as_f64().unwrap() > 1.0);
    assert!(!out.exists(), "a dry run writes nothing");
}

/// `--runtime vllm`: the database holds only what vLLM's Marlin kernels
/// serve (symmetric 4- and 8-bit grids), so every searched layer is at 4 or
/// 8 bits; a ggml method or a GGUF is refused for it, and llama.cpp needs one.
#[test]
fn runtime_restricts_the_levels() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("vllm");
    ok(&common::cli::database(
        &db,
        &[
            "--calib",
            "assets/data/docs.valid.txt",
            "--calib-tokens",
            "2048",
            "--runtime",
            "vllm",
        ],
    ));
    let m = read_json(&db.join("manifest.json"));
    assert_eq!(m["method"]["bits"], serde_json::json!([4, 8]));
    assert_eq!(m["method"]["sym"], serde_json::json!(true));
    let cfg = tmp.path().join("c.json");
    knapsack(&db, "4.5", &cfg);
    let c = ConfigFile::read(&cfg).unwrap();
    assert!(c.layers.iter().all(|l| l.bits == 4 || l.bits == 8));
    assert!(c.layers.iter().any(|l| l.bits == 8), "a mix at 4.5 bits");
    let o = common::cli::database(
        &tmp.path().join("x"),
        &[
            "--calib",
            "assets/data/docs.valid.txt",
            "--runtime",
            "vllm",
            "--method",
            "kquant",
        ],
    );
    common::cli::fails(&o, 2, &["--runtime vllm", "gptq or rtn"]);
    let o = run(&[
        "compress",
        "--model",
        DEMO,
        "--calib",
        "assets/data/docs.valid.txt",
        "--eval",
        "assets/data/docs.test.txt",
        "--runtime",
        "llama.cpp",
        "--out",
        s(&tmp.path().join("y")),
    ]);
    common::cli::fails(&o, 2, &["--format gguf"]);

    // vLLM fuses q/k/v and gate/up and needs one scheme per fused module:
    // --tie-fused (which `compress --runtime vllm` sets) gives them one
    // level per block, for the knapsack and EvoPress, within the budget.
    let fused_levels_agree = |c: &ConfigFile| {
        let level = |b: usize, k: &str| {
            c.layers
                .iter()
                .find(|l| l.layer == format!("model.layers.{b}.{k}.weight"))
                .map(|l| l.level.clone())
                .unwrap()
        };
        (0..8).all(|b| {
            level(b, "self_attn.q_proj") == level(b, "self_attn.k_proj")
                && level(b, "self_attn.k_proj") == level(b, "self_attn.v_proj")
                && level(b, "mlp.gate_proj") == level(b, "mlp.up_proj")
        })
    };
    assert!(!fused_levels_agree(&c), "the untied knapsack mixes them");
    for algo in ["knapsack", "evopress"] {
        let tied = tmp.path().join(format!("tied-{algo}.json"));
        ok(&common::cli::search(
            &db,
            &tied,
            &[
                "--target-bits",
                "6",
                "--algo",
                algo,
                "--tie-fused",
                "--calib",
                "assets/data/docs.valid.txt",
                "--generations",
                "3",
                "--offspring",
                "4",
                "--stages",
                "512:2,1024:1",
                "--quiet",
            ],
        ));
        let t = ConfigFile::read(&tied).unwrap();
        assert!(fused_levels_agree(&t), "{algo}");
        assert!(
            t.bits_per_weight <= 6.0 + 1e-9,
            "{algo}: {}",
            t.bits_per_weight
        );
        assert!(t.layers.iter().any(|l| l.bits == 8) && t.layers.iter().any(|l| l.bits == 4));
    }
}

#[test]
fn compress_writes_gptq_with_gptqmodel_widths() {
    // `compress --format gptq` without --runtime: the levels are GPTQModel's
    // widths (2, 3, 4, 8; a default database would hold 5 and 6 bits, which
    // GPTQ cannot store), model/ is the GPTQ checkpoint (tests/served.rs
    // loads such files in GPTQModel) with one dynamic rule per module off
    // the default scheme, and the exported row equals the search's.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("gptq");
    ok(&run(&[
        "compress",
        "--model",
        DEMO,
        "--format",
        "gptq",
        "--target-bits",
        "4.5",
        "--calib",
        "assets/data/docs.valid.txt",
        "--eval",
        "assets/data/docs.test.txt",
        "--calib-tokens",
        "4096",
        "--generations",
        "2",
        "--offspring",
        "4",
        "--stages",
        "512:2,1024:1",
        "--eval-windows",
        "4",
        "--no-compare",
        "--quiet",
        "--out",
        s(&out),
    ]));
    let q = read_json(&out.join("model/quantize_config.json"));
    assert_eq!(q["quant_method"], "gptq");
    // The default database is asymmetric: GPTQModel's v2 format.
    assert_eq!(q["checkpoint_format"], "gptq_v2");
    let cfg = read_json(&out.join("model/config.json"));
    assert_eq!(cfg["quantization_config"], q);
    let c = ConfigFile::read(&out.join("config.json")).unwrap();
    let widths: std::collections::BTreeSet<u8> = c.layers.iter().map(|l| l.bits).collect();
    assert!(widths.len() > 1, "{widths:?}");
    assert!(
        widths.iter().all(|b| [2, 3, 4, 8].contains(b)),
        "{widths:?}"
    );
    let default = q["bits"].as_u64().unwrap() as u8;
    let off_default = c.layers.iter().filter(|l| l.bits != default).count();
    assert_eq!(q["dynamic"].as_object().unwrap().len(), off_default);
    let r = read_json(&out.join("report.json"));
    let kl = |kind: &str| common::row_mean_kl(&r, kind);
    assert!(kl("evopress") > 0.0);
    assert_eq!(kl("exported"), kl("evopress"));
}

#[test]
fn compress_writes_compressed_tensors_for_vllm() {
    // `compress --runtime vllm --format compressed-tensors`: model/ is the
    // packed compressed-tensors checkpoint (tests/served.rs loads such files
    // in transformers), the fused modules share levels, and the report's
    // exported row (the same codes, read from model-dynapress) equals the
    // search's. A ggml method is refused.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ct");
    ok(&run(&[
        "compress",
        "--model",
        DEMO,
        "--runtime",
        "vllm",
        "--format",
        "compressed-tensors",
        "--target-bits",
        "5",
        "--calib",
        "assets/data/docs.valid.txt",
        "--eval",
        "assets/data/docs.test.txt",
        "--calib-tokens",
        "4096",
        "--generations",
        "2",
        "--offspring",
        "4",
        "--stages",
        "512:2,1024:1",
        "--eval-windows",
        "4",
        "--quiet",
        "--out",
        s(&out),
    ]));
    let cfg = read_json(&out.join("model/config.json"));
    assert_eq!(cfg["quantization_config"]["format"], "pack-quantized");
    let r = read_json(&out.join("report.json"));
    let kl = |kind: &str| common::row_mean_kl(&r, kind);
    assert!(kl("evopress") > 0.0);
    assert_eq!(kl("exported"), kl("evopress"));
    let c = ConfigFile::read(&out.join("config.json")).unwrap();
    for b in 0..8 {
        let level = |k: &str| {
            c.layers
                .iter()
                .find(|l| l.layer == format!("model.layers.{b}.{k}.weight"))
                .map(|l| l.level.clone())
                .unwrap()
        };
        assert_eq!(level("self_attn.q_proj"), level("self_attn.v_proj"), "{b}");
        assert_eq!(level("mlp.gate_proj"), level("mlp.up_proj"), "{b}");
    }
    let o = run(&[
        "compress",
        "--model",
        DEMO,
        "--method",
        "kquant",
        "--format",
        "compressed-tensors",
        "--calib",
        "assets/data/docs.valid.txt",
        "--eval",
        "assets/data/docs.test.txt",
        "--out",
        s(&tmp.path().join("refused")),
    ]);
    common::cli::clean_error(&o, &["--method gptq or rtn"]);
}
