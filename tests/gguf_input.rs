//! A GGUF file as the model of the whole pipeline (`compress`, `database`,
//! `search`, `export`): the demo model converted to F32 and BF16 GGUF gives
//! the same search, the same searched KL and the same exported weights as the
//! safetensors directory it came from.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use dynapress::model::ModelFiles;
use dynapress::model::weights::to_f32;
use dynapress_gguf::GgufFile;

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

/// The demo model as an F32 and a BF16 GGUF, converted once.
fn ggufs() -> &'static (tempfile::TempDir, PathBuf, PathBuf) {
    static F: OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> = OnceLock::new();
    F.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        for ty in ["F32", "BF16"] {
            let p = tmp.path().join(format!("demo-{ty}.gguf"));
            ok(run(&[
                "convert",
                "--model",
                "assets/demo-model",
                "--out",
                p.to_str().unwrap(),
                "--type",
                ty,
            ]));
            out.push(p);
        }
        let bf16 = out.pop().unwrap();
        let f32 = out.pop().unwrap();
        (tmp, f32, bf16)
    })
}

/// `compress` of `model` into `out` with small settings.
fn compress(model: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "compress",
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
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
        "2",
        "--seed",
        "5",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    ok(run(&args));
    serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap()
}

/// The searched levels of a configuration file, layer by layer.
fn levels(config: &Path) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(config).unwrap()).unwrap();
    v["layers"].clone()
}

#[test]
fn compress_from_an_f32_gguf_equals_compress_from_the_directory() {
    // GGUF export (kquant): the searched KL, the configuration and every
    // tensor of the written file are those of the same run from the
    // safetensors directory; the metadata differs only in the imatrix path.
    let (tmp, f32, _) = ggufs();
    let from_dir = tmp.path().join("dir-gguf");
    let from_gguf = tmp.path().join("gguf-gguf");
    let extra = [
        "--format",
        "gguf",
        "--method",
        "kquant",
        "--target-bits",
        "4",
    ];
    let a = compress(&common::demo_model(), &from_dir, &extra);
    let b = compress(f32, &from_gguf, &extra);
    let (ka, kb) = (
        a["search_fitness"].as_f64().unwrap(),
        b["search_fitness"].as_f64().unwrap(),
    );
    assert!(ka > 0.0 && (ka - kb).abs() <= 1e-6, "{ka} vs {kb}");
    assert_eq!(b["model"].as_str().unwrap(), f32.to_str().unwrap());
    assert_eq!(
        levels(&from_dir.join("config.json")),
        levels(&from_gguf.join("config.json"))
    );
    let (fa, fb) = (
        GgufFile::open(from_dir.join("model.gguf")).unwrap(),
        GgufFile::open(from_gguf.join("model.gguf")).unwrap(),
    );
    let names: Vec<&str> = fb.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        fa.tensors()
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        names
    );
    for t in fa.tensors() {
        let u = fb.tensor(&t.name).unwrap();
        assert_eq!(t.ggml_type, u.ggml_type, "{}", t.name);
        assert!(
            fa.tensor_bytes(&t.name).unwrap() == fb.tensor_bytes(&t.name).unwrap(),
            "{}",
            t.name
        );
    }
    let meta = |f: &GgufFile| -> Vec<(String, String)> {
        f.metadata()
            .iter()
            .filter(|(k, _)| *k != "quantize.imatrix.file")
            .map(|(k, v)| (k.to_string(), format!("{v:?}")))
            .collect()
    };
    assert_eq!(meta(&fa), meta(&fb));
    assert!(
        fb.metadata()
            .get("tokenizer.ggml.tokens")
            .is_some_and(|v| v.as_array().is_some_and(|a| a.len() == 4096))
    );
}

#[test]
fn compress_from_a_bf16_gguf_exports_the_directory_s_weights() {
    // Safetensors export (GPTQ): same searched KL and configuration as from
    // the directory; the exported model holds the imported config.json and
    // tokenizer.json and the same values in every tensor; `database`,
    // `search` and `export` take the GGUF too, and refuse a database built
    // from another model with one clear line.
    let (tmp, _, bf16) = ggufs();
    let from_dir = tmp.path().join("dir-st");
    let from_gguf = tmp.path().join("gguf-st");
    let extra = ["--bits", "3,4", "--target-bits", "3.5"];
    let a = compress(&common::demo_model(), &from_dir, &extra);
    let b = compress(bf16, &from_gguf, &extra);
    let (ka, kb) = (
        a["search_fitness"].as_f64().unwrap(),
        b["search_fitness"].as_f64().unwrap(),
    );
    assert!(ka > 0.0 && (ka - kb).abs() <= 1e-6, "{ka} vs {kb}");
    assert_eq!(
        levels(&from_dir.join("config.json")),
        levels(&from_gguf.join("config.json"))
    );
    let model = from_gguf.join("model");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["num_hidden_layers"], 8);
    assert_eq!(config["torch_dtype"], "bfloat16");
    assert!(model.join("tokenizer.json").is_file());
    let (ea, eb) = (
        ModelFiles::open(&from_dir.join("model")).unwrap(),
        ModelFiles::open(&model).unwrap(),
    );
    let mut names = ea.weights.names();
    names.sort();
    let mut names_b = eb.weights.names();
    names_b.sort();
    assert_eq!(names, names_b);
    for n in &names {
        let (x, y) = (ea.weights.raw(n).unwrap(), eb.weights.raw(n).unwrap());
        assert_eq!(x.shape, y.shape, "{n}");
        assert!(to_f32(&x, n).unwrap() == to_f32(&y, n).unwrap(), "{n}");
    }
    // The same tokenizer: identical ids on the evaluation text.
    let text = std::fs::read_to_string(common::data("docs.test.txt")).unwrap();
    let text = &text[..4000];
    assert_eq!(
        ea.tokenizer.encode(text).unwrap(),
        eb.tokenizer.encode(text).unwrap()
    );

    // The separate commands, from the GGUF's database.
    let db = from_gguf.join("database");
    let cfg = tmp.path().join("st-search.json");
    ok(run(&[
        "search",
        "--model",
        bf16.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
        "--calib",
        "assets/data/docs.valid.txt",
        "--target-bits",
        "3.5",
        "--generations",
        "1",
        "--offspring",
        "2",
        "--stages",
        "512:1",
        "--out",
        cfg.to_str().unwrap(),
        "--quiet",
    ]));
    let native = tmp.path().join("st-native");
    ok(run(&[
        "export",
        "--model",
        bf16.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--format",
        "dynapress",
        "--out",
        native.to_str().unwrap(),
    ]));
    assert!(native.join("model.safetensors").is_file());
    assert!(native.join("config.json").is_file());

    // The directory's database is another model's.
    let o = run(&[
        "export",
        "--model",
        bf16.to_str().unwrap(),
        "--db",
        from_dir.join("database").to_str().unwrap(),
        "--config",
        from_dir.join("config.json").to_str().unwrap(),
        "--out",
        tmp.path().join("refused").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("built from another model"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_broken_gguf_is_one_clear_line() {
    let (tmp, f32, _) = ggufs();
    let bytes = std::fs::read(f32).unwrap();
    let cut = tmp.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..100_000]).unwrap();
    let o = run(&[
        "compress",
        "--model",
        cut.to_str().unwrap(),
        "--out",
        tmp.path().join("cut-run").to_str().unwrap(),
        "--calib",
        "assets/data/docs.valid.txt",
        "--eval",
        "assets/data/docs.test.txt",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("cut.gguf") && err.contains("malformed GGUF"),
        "{err}"
    );
    assert!(!err.contains("config.json"), "{err}");
}
