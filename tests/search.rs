//! Search, export and the one-command pipeline on the demo model.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use dynapress::search::ConfigFile;

fn run(args: &[&str]) -> Output {
    Command::new(common::bin())
        .args(args)
        .current_dir(common::root())
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn clean_error(o: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "missing {n:?} in: {err}");
    }
}

/// A small GPTQ database of the demo model, built once.
fn db() -> &'static Path {
    static DB: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DB.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("db");
        ok(&run(&[
            "database",
            "--model",
            "assets/demo-model",
            "--calib",
            "assets/data/docs.valid.txt",
            "--calib",
            "assets/data/code.valid.txt",
            "--calib-tokens",
            "8192",
            "--bits",
            "2,3,4",
            "--out",
            dir.to_str().unwrap(),
            "--quiet",
        ]));
        (tmp, dir)
    })
    .1
}

const SMALL: [&str; 6] = [
    "--generations",
    "4",
    "--offspring",
    "6",
    "--stages",
    "512:2,2048:1",
];

fn search(out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "search",
        "--model",
        "assets/demo-model",
        "--db",
        db().to_str().unwrap(),
        "--calib",
        "assets/data/docs.valid.txt",
        "--target-bits",
        "2.6",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ];
    args.extend_from_slice(&SMALL);
    if !extra.contains(&"--seed") {
        args.extend_from_slice(&["--seed", "3"]);
    }
    args.extend_from_slice(extra);
    run(&args)
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
            ok(&run(&[
                "search",
                "--model",
                "assets/demo-model",
                "--db",
                db().to_str().unwrap(),
                "--target-bits",
                target,
                "--algo",
                algo,
                "--out",
                out.to_str().unwrap(),
                "--quiet",
            ]));
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
        let o = run(&[
            "search",
            "--model",
            "assets/demo-model",
            "--db",
            db().to_str().unwrap(),
            "--target-bits",
            t,
            "--algo",
            "knapsack",
            "--out",
            out.to_str().unwrap(),
        ]);
        clean_error(&o, &[needle]);
    }
}

#[test]
fn a_database_of_another_model_is_refused() {
    // A tiny Qwen2 checkpoint with the demo tokenizer.
    let tmp = tempfile::tempdir().unwrap();
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    for e in std::fs::read_dir(common::root().join("tests/fixtures/tiny/qwen2")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, other.join(p.file_name().unwrap())).unwrap();
    }
    std::fs::copy(
        common::demo_model().join("tokenizer.json"),
        other.join("tokenizer.json"),
    )
    .unwrap();
    let out = tmp.path().join("c.json");
    let o = run(&[
        "search",
        "--model",
        other.to_str().unwrap(),
        "--db",
        db().to_str().unwrap(),
        "--target-bits",
        "3",
        "--algo",
        "knapsack",
        "--out",
        out.to_str().unwrap(),
    ]);
    clean_error(&o, &["another model"]);
}

#[test]
fn a_configuration_naming_unknown_layers_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("c.json");
    ok(&run(&[
        "search",
        "--model",
        "assets/demo-model",
        "--db",
        db().to_str().unwrap(),
        "--target-bits",
        "3",
        "--algo",
        "knapsack",
        "--out",
        cfg.to_str().unwrap(),
        "--quiet",
    ]));
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("model.layers.7.mlp.up_proj", "model.layers.9.mlp.up_proj");
    std::fs::write(&cfg, text).unwrap();
    let out = tmp.path().join("model");
    let o = run(&[
        "export",
        "--model",
        "assets/demo-model",
        "--db",
        db().to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    clean_error(&o, &["model.layers.9.mlp.up_proj", "c.json"]);
    assert!(!out.exists(), "nothing exported");
    let o = run(&[
        "eval",
        "--model",
        "assets/demo-model",
        "--db",
        db().to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--data",
        "assets/data/docs.test.txt",
    ]);
    clean_error(&o, &["model.layers.9.mlp.up_proj"]);
}

#[test]
fn exported_model_evaluates_like_the_configuration() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("c.json");
    ok(&run(&[
        "search",
        "--model",
        "assets/demo-model",
        "--db",
        db().to_str().unwrap(),
        "--target-bits",
        "3",
        "--algo",
        "knapsack",
        "--out",
        cfg.to_str().unwrap(),
        "--quiet",
    ]));
    let out = tmp.path().join("model");
    ok(&run(&[
        "export",
        "--model",
        "assets/demo-model",
        "--db",
        db().to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--dtype",
        "f32",
    ]));
    for f in [
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "dynapress.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let eval = |extra: &[&str]| -> f64 {
        let mut args = vec![
            "eval",
            "--data",
            "assets/data/docs.test.txt",
            "--windows",
            "4",
            "--json",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        let v: serde_json::Value = serde_json::from_str(&ok(&run(&args))).unwrap();
        v["datasets"]["docs.test.txt"]["perplexity"]
            .as_f64()
            .unwrap()
    };
    // f32 export = the in-memory configuration exactly.
    let a = eval(&["--model", out.to_str().unwrap()]);
    let b = eval(&[
        "--model",
        "assets/demo-model",
        "--db",
        db().to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(a, b);
    // The native export stores the codes; it loads to the same weights, is
    // several times smaller, and packs (entropy-codes) smaller still.
    let native = tmp.path().join("native");
    ok(&run(&[
        "export",
        "--model",
        "assets/demo-model",
        "--db",
        db().to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        native.to_str().unwrap(),
        "--format",
        "dynapress",
    ]));
    assert_eq!(eval(&["--model", native.to_str().unwrap()]), a);
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    let st_native = size(&native.join("model.safetensors"));
    let st_bf16 = size(&common::demo_model().join("model.safetensors"));
    assert!(
        (st_native as f64) < 0.5 * st_bf16 as f64,
        "native {st_native} vs bf16 {st_bf16}"
    );
    let dpk = tmp.path().join("native.dpk");
    ok(&run(&[
        "pack",
        native.to_str().unwrap(),
        dpk.to_str().unwrap(),
        "--quiet",
    ]));
    assert!(size(&dpk) < st_native, "pack {} vs {st_native}", size(&dpk));
    assert_eq!(eval(&["--model", dpk.to_str().unwrap()]), a);
    // Exporting again over it needs --force.
    let o = run(&[
        "export",
        "--model",
        "assets/demo-model",
        "--db",
        db().to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    clean_error(&o, &["--force"]);
}

#[test]
fn compress_runs_end_to_end_and_writes_the_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut args = vec![
        "compress",
        "--out",
        out.to_str().unwrap(),
        "--db",
        db().to_str().unwrap(),
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
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
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
        std::fs::metadata(out.join("model-compressed/model.safetensors"))
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
    let o = run(&[
        "compress",
        "--dry-run",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
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
