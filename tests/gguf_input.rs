//! A GGUF file as the model of the whole pipeline (`compress`, `database`,
//! `search`, `export`): the demo model converted to F32 and BF16 GGUF gives
//! the same search, the same searched KL and the same exported weights as the
//! safetensors directory it came from.

mod common;

use std::path::Path;

use common::cli::{ok, run, run2};
use common::demo::gguf;
use common::{read_json, s};
use dynapress::model::ModelFiles;
use dynapress::model::weights::to_f32;
use dynapress_gguf::GgufFile;

/// `compress` of `model` into `out` with small settings.
fn compress(model: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let args = [
        "compress",
        "--model",
        s(model),
        "--out",
        s(out),
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
    ok(&run2(&args, extra));
    read_json(&out.join("report.json"))
}

/// Compresses the demo model's directory into `<tmp>/dir-<name>` and the
/// demo GGUF of type `ty` into `<tmp>/gguf-<name>` with the same `extra`
/// settings; asserts that both searches reach the same KL and the same
/// levels, layer by layer; returns the two output directories.
fn compress_both(
    tmp: &Path,
    name: &str,
    ty: &str,
    extra: &[&str],
) -> (std::path::PathBuf, std::path::PathBuf) {
    let from_dir = tmp.join(format!("dir-{name}"));
    let from_gguf = tmp.join(format!("gguf-{name}"));
    let a = compress(&common::demo_model(), &from_dir, extra);
    let b = compress(gguf(ty), &from_gguf, extra);
    let (ka, kb) = (
        a["search_fitness"].as_f64().unwrap(),
        b["search_fitness"].as_f64().unwrap(),
    );
    assert!(ka > 0.0 && (ka - kb).abs() <= 1e-6, "{ka} vs {kb}");
    assert_eq!(b["model"].as_str().unwrap(), s(gguf(ty)));
    let levels = |dir: &Path| read_json(&dir.join("config.json"))["layers"].clone();
    assert_eq!(levels(&from_dir), levels(&from_gguf));
    (from_dir, from_gguf)
}

#[test]
fn compress_from_an_f32_gguf_equals_compress_from_the_directory() {
    // GGUF export (kquant): the searched KL, the configuration and every
    // tensor of the written file are those of the same run from the
    // safetensors directory; the metadata differs only in the imatrix path.
    let tmp = tempfile::tempdir().unwrap();
    let extra = [
        "--format",
        "gguf",
        "--method",
        "kquant",
        "--types",
        common::cli::KQUANT_TYPES,
        "--target-bits",
        "4",
    ];
    let (from_dir, from_gguf) = compress_both(tmp.path(), "gguf", "F32", &extra);
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
    let tmp = tempfile::tempdir().unwrap();
    let bf16 = gguf("BF16");
    let (from_dir, from_gguf) = compress_both(
        tmp.path(),
        "st",
        "BF16",
        &["--bits", "3,4", "--target-bits", "3.5"],
    );
    let model = from_gguf.join("model");
    let config = read_json(&model.join("config.json"));
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
    ok(&common::cli::on_db(
        "search",
        s(bf16),
        &db,
        &cfg,
        &[
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
            "--quiet",
        ],
    ));
    let native = tmp.path().join("st-native");
    ok(&common::cli::on_db(
        "export",
        s(bf16),
        &db,
        &native,
        &["--config", s(&cfg), "--format", "dynapress"],
    ));
    assert!(native.join("model.safetensors").is_file());
    assert!(native.join("config.json").is_file());

    // The directory's database is another model's.
    let o = common::cli::on_db(
        "export",
        s(bf16),
        &from_dir.join("database"),
        &tmp.path().join("refused"),
        &["--config", s(&from_dir.join("config.json"))],
    );
    common::cli::clean_error(&o, &["built from another model"]);
}

#[test]
fn a_broken_gguf_is_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(gguf("F32")).unwrap();
    let cut = tmp.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..100_000]).unwrap();
    let o = run(&[
        "compress",
        "--model",
        s(&cut),
        "--out",
        s(&tmp.path().join("cut-run")),
        "--calib",
        "assets/data/docs.valid.txt",
        "--eval",
        "assets/data/docs.test.txt",
    ]);
    common::cli::clean_error(&o, &["cut.gguf", "malformed GGUF"]);
    let err = common::cli::stderr(&o);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!err.contains("config.json"), "{err}");
}

#[test]
fn loading_a_gguf_decodes_tensor_by_tensor_to_the_same_model() {
    // `Model::load` of a GGUF decodes each tensor as it is loaded (so
    // evaluating a GGUF holds the f32 model once, not the import beside it);
    // `ModelFiles::open` builds the whole import in memory (for export and
    // calibration). Both must give the same model: identical logits, bit for
    // bit, for a quantized file (dequantized, Q/K rows un-permuted) and a
    // BF16 one.
    use dynapress::model::Model;
    let tmp = tempfile::tempdir().unwrap();
    let q4 = tmp.path().join("demo-q4k.gguf");
    common::cli::convert(common::cli::DEMO, &q4, "Q4_K");
    let ids: Vec<u32> = (0..64).map(|i| (i * 37 + 11) % 4096).collect();
    for path in [q4.as_path(), gguf("BF16")] {
        let lazy = Model::load(path).unwrap();
        let eager =
            Model::from_files(&ModelFiles::open(path).unwrap(), &candle_core::Device::Cpu).unwrap();
        let (a, b) = (
            lazy.forward_vec(&ids, 1, 64).unwrap(),
            eager.forward_vec(&ids, 1, 64).unwrap(),
        );
        assert!(a == b, "{}: the two loads differ", path.display());
        assert_eq!(lazy.config.vocab_size, eager.config.vocab_size);
    }
    // The quantized file is not its F32 original: the test compares models
    // that went through dequantization.
    let f32_model = Model::load(gguf("F32")).unwrap();
    let q = Model::load(&q4).unwrap();
    assert!(f32_model.forward_vec(&ids, 1, 64).unwrap() != q.forward_vec(&ids, 1, 64).unwrap());
}
