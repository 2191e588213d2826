//! `export --format compressed-tensors` loads in plain transformers on CPU with
//! the logits of dynapress's forward pass on the same searched configuration;
//! `export --format gptq` loads in GPTQModel with every module at its searched
//! width, and its weights give those logits too.
//!
//! Needs a Python with torch, transformers and compressed-tensors (and
//! gptqmodel + optimum for the GPTQ test; docs/served-formats.md says how to
//! make one) named by
//! DYNAPRESS_SERVED_PYTHON; without it the test skips, unless
//! DYNAPRESS_REQUIRE_SERVED=1. `.ci/run` installs that venv when the disk
//! has room for it (PyPI's torch is the CUDA build: 5.6 GB installed;
//! docs/served-formats.md) and then sets DYNAPRESS_REQUIRE_SERVED=1; this
//! gate is separate from DYNAPRESS_REQUIRE_INTEROP for that reason.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dynapress::model::{Model, Tokenizer};

fn served_python() -> Option<PathBuf> {
    match std::env::var_os("DYNAPRESS_SERVED_PYTHON") {
        Some(p) if Path::new(&p).is_file() => Some(PathBuf::from(p)),
        other => {
            if std::env::var("DYNAPRESS_REQUIRE_SERVED").is_ok_and(|v| v == "1") {
                panic!(
                    "DYNAPRESS_REQUIRE_SERVED=1 but DYNAPRESS_SERVED_PYTHON ({other:?}) is not a Python with torch, transformers and compressed-tensors (docs/served-formats.md)"
                );
            }
            eprintln!(
                "skipped: set DYNAPRESS_SERVED_PYTHON to a Python with torch, transformers and compressed-tensors"
            );
            None
        }
    }
}

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

/// The largest |ours − theirs| against the little-endian f32 logits that
/// scripts/check_served.py wrote to `path` (same length asserted).
fn max_diff_to_file(ours: &[f32], path: &Path) -> f32 {
    let theirs: Vec<f32> = std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(theirs.len(), ours.len());
    ours.iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

/// Builds a database with `db_args`, searches a mix at `bits` bits per
/// weight, exports it as compressed-tensors and as dequantized safetensors,
/// loads the former in transformers and compares logits with our forward
/// pass of the latter (f32: the configuration's exact weights).
/// How transformers loads the checkpoint.
#[derive(Clone, Copy, Debug)]
enum Route {
    /// The default: compressed-tensors modules that decompress the packed
    /// weights; the script reports each module's scheme.
    Compressed,
    /// `CompressedTensorsConfig(dequantize=True)`: each packed weight is
    /// dequantized while loading and the model stays dense (no schemes to
    /// report; the logits are the check).
    Dequantize,
    /// `export --format gptq`, loaded by GPTQModel (scripts/check_gptq.py):
    /// each module's width as GPTQModel built it, and the logits of its
    /// unpacked weights in a float32 transformers model (GPTQModel's CPU
    /// kernel computes in float16; its difference is reported).
    Gptq,
}

impl Route {
    fn flag(self) -> &'static [&'static str] {
        match self {
            Route::Compressed | Route::Gptq => &[],
            Route::Dequantize => &["--dequantize"],
        }
    }
}

fn check(python: &Path, db_args: &[&str], bits: &str, route: Route) {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n).to_str().unwrap().to_string();
    let mut args = vec![
        "database",
        "--model",
        "assets/demo-model",
        "--calib",
        "assets/data/docs.valid.txt",
        "--calib-tokens",
        "4096",
        "--quiet",
    ];
    let db = p("db");
    args.extend_from_slice(&["--out", &db]);
    args.extend_from_slice(db_args);
    ok(&run(&args));
    let cfg = p("c.json");
    ok(&run(&[
        "search",
        "--model",
        "assets/demo-model",
        "--db",
        &db,
        "--target-bits",
        bits,
        "--algo",
        "knapsack",
        "--out",
        &cfg,
        "--quiet",
    ]));
    let export = |out: &str, extra: &[&str]| -> serde_json::Value {
        let mut a = vec![
            "export",
            "--model",
            "assets/demo-model",
            "--db",
            &db,
            "--config",
            &cfg,
            "--out",
            out,
            "--json",
        ];
        a.extend_from_slice(extra);
        serde_json::from_str(&ok(&run(&a))).unwrap()
    };
    let (ct, deq, deq32) = (p("ct"), p("deq"), p("deq32"));
    let format = match route {
        Route::Gptq => "gptq",
        _ => "compressed-tensors",
    };
    let r = export(&ct, &["--format", format]);
    let d = export(&deq, &[]);
    export(&deq32, &["--dtype", "f32"]);

    // Our logits: the f32 export is the configuration's weights exactly
    // (tests/search.rs checks it evaluates like `eval --db --config`).
    let tok = Tokenizer::from_file(&common::demo_model().join("tokenizer.json"), None).unwrap();
    let text = std::fs::read_to_string(common::data("docs.test.txt")).unwrap();
    let ids: Vec<u32> = tok.encode(&text).unwrap().into_iter().take(96).collect();
    let model = Model::load(Path::new(&deq32)).unwrap();
    let ours = model.forward_vec(&ids, 1, ids.len()).unwrap();

    let out = p("logits.f32");
    let ids_arg = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let script = match route {
        Route::Gptq => "scripts/check_gptq.py",
        _ => "scripts/check_served.py",
    };
    let o = Command::new(python)
        .arg(common::root().join(script))
        .args(["--model", &ct, "--ids", &ids_arg, "--out", &out])
        .args(route.flag())
        .output()
        .unwrap();
    let info: serde_json::Value =
        serde_json::from_str(ok(&o).lines().last().expect("a JSON line")).unwrap();
    let config = dynapress::selection::ConfigFile::read(Path::new(&cfg)).unwrap();
    let widths: std::collections::BTreeSet<u8> = config.layers.iter().map(|l| l.bits).collect();
    if let Route::Compressed | Route::Gptq = route {
        assert!(widths.len() > 1, "a mix of widths, got {widths:?}");
        // Every searched layer loaded as a quantized module at its searched width.
        let loaded = info["bits"].as_object().expect("bits");
        assert_eq!(loaded.len(), config.layers.len(), "{info}");
        for l in &config.layers {
            let module = l.layer.strip_suffix(".weight").unwrap_or(&l.layer);
            let got = loaded.get(module).map(|v| match v {
                // GPTQ: [bits, group size].
                serde_json::Value::Array(a) => a[0].as_u64(),
                other => other.as_u64(),
            });
            assert_eq!(got, Some(Some(l.bits as u64)), "{module}: {info}");
        }
    }

    let max_diff = max_diff_to_file(&ours, Path::new(&out));
    let max_logit = ours.iter().fold(0f32, |m, v| m.max(v.abs()));
    eprintln!(
        "{db_args:?} at {bits} bits: max |Δlogit| {max_diff:.3e} (max |logit| {max_logit:.1}); {info}"
    );
    assert!(max_diff < 1e-3, "max |Δlogit| {max_diff}");

    // Size: the searched layers at their compressed bits, the rest as in the
    // dequantized (original dtype, bf16) export. GPTQ stores more than the
    // database counts: g_idx (4 bytes per input column) and, for symmetric
    // grids, the fixed zero points; those tensors' bytes are taken out.
    let mut ct_bytes = r["safetensors_bytes"].as_f64().unwrap();
    if let Route::Gptq = route {
        let bytes = std::fs::read(Path::new(&ct).join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let sym = db_args.contains(&"--sym");
        let extra: usize = st
            .tensors()
            .iter()
            .filter(|(n, _)| n.ends_with(".g_idx") || (sym && n.ends_with(".qzeros")))
            .map(|(_, t)| t.data().len())
            .sum();
        eprintln!("GPTQ: {extra} bytes of g_idx and symmetric zero points");
        ct_bytes -= extra as f64;
    }
    let deq_bytes = d["safetensors_bytes"].as_f64().unwrap();
    let params = r["searched_params"].as_f64().unwrap();
    let expected =
        deq_bytes - 2.0 * params + r["searched_bits_per_weight"].as_f64().unwrap() * params / 8.0;
    eprintln!(
        "{format} {ct_bytes} B, dequantized bf16 {deq_bytes} B: ratio {:.3} (expected {:.3})",
        ct_bytes / deq_bytes,
        expected / deq_bytes
    );
    assert!(
        (ct_bytes - expected).abs() < 0.01 * expected,
        "{ct_bytes} vs expected {expected}"
    );
}

#[test]
fn compressed_tensors_asymmetric_uniform_loads_in_transformers() {
    let Some(python) = served_python() else {
        return;
    };
    // transformers 5.24 cannot load an asymmetric *mix*: its compressed route
    // expects the zero point unpacked ([rows, G], a shape mismatch with the
    // packed [⌈rows·b/32⌉, G] that compressed-tensors 0.20 itself writes), and
    // its dequantize route applies the first config group's scheme to every
    // module (docs/served-formats.md). A uniform asymmetric 3-bit model (zero
    // points straddling int32 words) goes through the dequantize route.
    check(
        &python,
        // 3 bits at g64 take 3.2969 bits per weight, one 4-bit layer more
        // than the target allows: every layer at 3 bits.
        &["--bits", "3,4", "--group-size", "64"],
        "3.3",
        Route::Dequantize,
    );
}

#[test]
fn compressed_tensors_symmetric_act_order_mix_loads_in_transformers() {
    let Some(python) = served_python() else {
        return;
    };
    check(
        &python,
        &[
            "--bits",
            "3,4,8",
            "--sym",
            "--act-order",
            "--group-size",
            "64",
        ],
        "5",
        Route::Compressed,
    );
}

#[test]
fn gptq_mix_loads_in_gptqmodel_with_every_module_at_its_width() {
    let Some(python) = served_python() else {
        return;
    };
    // GPTQModel's widths (2, 3, 4, 8), asymmetric: written as gptq_v2.
    check(
        &python,
        &["--runtime", "gptqmodel", "--group-size", "64"],
        "4.5",
        Route::Gptq,
    );
    // Symmetric 3/4/8 bits: the classic gptq (v1) format.
    check(
        &python,
        &["--bits", "3,4,8", "--sym", "--group-size", "128"],
        "5",
        Route::Gptq,
    );
}

/// A ggml-type database has no grids the format can store: a one-line error
/// naming the layer and the way out, and no output directory.
#[test]
fn a_ggml_database_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n).to_str().unwrap().to_string();
    let (db, cfg, out) = (p("db"), p("c.json"), p("ct"));
    ok(&run(&[
        "database",
        "--model",
        "assets/demo-model",
        "--calib",
        "assets/data/docs.valid.txt",
        "--calib-tokens",
        "2048",
        "--method",
        "kquant",
        "--types",
        "Q4_K,Q8_0",
        "--out",
        &db,
        "--quiet",
    ]));
    ok(&run(&[
        "search",
        "--model",
        "assets/demo-model",
        "--db",
        &db,
        "--target-bits",
        "5",
        "--algo",
        "knapsack",
        "--out",
        &cfg,
        "--quiet",
    ]));
    for format in ["compressed-tensors", "gptq"] {
        let o = run(&[
            "export",
            "--model",
            "assets/demo-model",
            "--db",
            &db,
            "--config",
            &cfg,
            "--out",
            &out,
            "--format",
            format,
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        for needle in ["ggml", "--format gguf", ".weight", format] {
            assert!(err.contains(needle), "missing {needle:?} in: {err}");
        }
        assert!(!Path::new(&out).exists());
    }
}

/// A depth-pruned Hugging Face export (whole blocks removed, renumbered)
/// loads in plain transformers with the logits of dynapress's forward pass of
/// the same directory, and those equal `eval --config`'s in-memory pruning
/// of the original (issue 10: ≤ 2e-3).
#[test]
fn depth_pruned_export_loads_in_transformers_with_our_logits() {
    let Some(python) = served_python() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n).to_str().unwrap().to_string();
    let id = |block| dynapress::model::SublayerId {
        block,
        sublayer: dynapress::model::Sublayer::Attn,
    };
    let mlp = |block| dynapress::model::SublayerId {
        block,
        sublayer: dynapress::model::Sublayer::Mlp,
    };
    let cfg = dynapress::model::DepthConfig::new(
        8,
        "hand",
        true,
        vec![id(1), mlp(1), id(6), mlp(6)],
        None,
    );
    let cfg_path = p("depth.json");
    cfg.write(Path::new(&cfg_path)).unwrap();
    let out = p("hf");
    ok(&run(&[
        "export",
        "--model",
        "assets/demo-model",
        "--config",
        &cfg_path,
        "--out",
        &out,
    ]));

    let tok = Tokenizer::from_file(&common::demo_model().join("tokenizer.json"), None).unwrap();
    let text = std::fs::read_to_string(common::data("docs.test.txt")).unwrap();
    let ids: Vec<u32> = tok.encode(&text).unwrap().into_iter().take(96).collect();
    let exported = Model::load(Path::new(&out)).unwrap();
    assert_eq!(exported.blocks().len(), 6);
    let ours = exported.forward_vec(&ids, 1, ids.len()).unwrap();
    let mut pruned = Model::load(&common::demo_model()).unwrap();
    cfg.apply(&mut pruned).unwrap();
    let in_memory = pruned.forward_vec(&ids, 1, ids.len()).unwrap();
    assert_eq!(ours, in_memory, "the export is the in-memory pruning");

    let logits = p("logits.f32");
    let ids_arg = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let o = Command::new(&python)
        .arg(common::root().join("scripts/check_served.py"))
        .args(["--model", &out, "--ids", &ids_arg, "--out", &logits])
        .output()
        .unwrap();
    ok(&o);
    let max_diff = max_diff_to_file(&ours, Path::new(&logits));
    eprintln!("depth-pruned export: max |Δlogit| transformers vs dynapress {max_diff:.3e}");
    assert!(max_diff < 2e-3, "max |Δlogit| {max_diff}");
}
