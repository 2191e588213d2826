//! The `dynapress` binary on the demo model: normal runs and bad input.
//! Bad input must give one clear error line naming the file and exit non-zero,
//! never a panic.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::SafeTensors;
use safetensors::tensor::TensorView;

fn run(args: &[&str]) -> Output {
    Command::new(common::bin())
        .args(args)
        .current_dir(common::root())
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a clean failure: non-zero exit, no panic, one `error:` line containing every needle.
fn assert_clean_error(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "expected one error line: {err}");
    for n in needles {
        assert!(lines[0].contains(n), "error line lacks {n:?}: {}", lines[0]);
    }
}

fn copy_demo(dir: &Path) {
    for e in std::fs::read_dir(common::demo_model()).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
}

fn eval_args(model: &Path) -> Vec<String> {
    vec![
        "eval".into(),
        "--model".into(),
        model.display().to_string(),
        "--data".into(),
        "assets/data/docs.test.txt".into(),
        "--windows".into(),
        "2".into(),
        "--quiet".into(),
    ]
}

fn run_eval(model: &Path) -> Output {
    let args = eval_args(model);
    run(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn eval_json_has_the_documented_shape() {
    let o = run(&[
        "eval",
        "--model",
        "assets/demo-model",
        "--data",
        "assets/data/docs.test.txt",
        "--windows",
        "4",
        "--tasks",
        "assets/tasks/docs-cloze.jsonl",
        "--base",
        "assets/demo-model",
        "--json",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let d = &v["datasets"]["docs.test.txt"];
    assert_eq!(d["tokens"], 4 * 255);
    assert!(d["perplexity"].as_f64().unwrap() > 1.0);
    assert!(d["nll_per_token"].as_f64().unwrap() > 0.0);
    // The model against itself: no divergence, full agreement.
    assert!(d["kl"].as_f64().unwrap().abs() < 1e-9);
    assert_eq!(d["top1_agreement"].as_f64().unwrap(), 1.0);
    let t = &v["tasks"]["docs-cloze"];
    assert_eq!(t["items"], 260);
    assert!(t["acc"].as_f64().is_some() && t["acc_norm"].as_f64().is_some());
    assert!(v["tokens_per_second"].as_f64().unwrap() > 0.0);
    assert!(v["model"].as_str().unwrap().contains("demo-model"));
}

#[test]
fn eval_table_without_base_has_no_kl() {
    let o = run(&[
        "eval",
        "--model",
        "assets/demo-model",
        "--data",
        "assets/data/code.test.txt",
        "--windows",
        "2",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(
        out.contains("code.test.txt") && out.contains("perplexity"),
        "{out}"
    );
}

#[test]
fn jsonl_data_joins_documents() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("d.jsonl");
    let text = std::fs::read_to_string(common::data("docs.test.txt")).unwrap();
    let lines: Vec<String> = text
        .split("\n\n")
        .take(200)
        .map(|t| serde_json::json!({ "text": t }).to_string())
        .collect();
    std::fs::write(&p, lines.join("\n")).unwrap();
    let o = run(&[
        "eval",
        "--model",
        "assets/demo-model",
        "--data",
        p.to_str().unwrap(),
        "--windows",
        "2",
        "--json",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["datasets"]["d.jsonl"]["tokens"], 2 * 255);
}

#[test]
fn generate_streams_the_reference_greedy_text() {
    let o = run(&[
        "generate",
        "--model",
        "assets/demo-model",
        "--prompt",
        "fn main() {",
        "--max-new-tokens",
        "32",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = common::reference();
    let want = format!(
        "fn main() {{{}\n",
        r["greedy_generation"]["text"].as_str().unwrap()
    );
    assert_eq!(String::from_utf8(o.stdout).unwrap(), want);
}

#[test]
fn sampling_is_reproducible_with_a_seed() {
    let args = [
        "generate",
        "--model",
        "assets/demo-model",
        "--prompt",
        "The borrow checker",
        "--temperature",
        "0.8",
        "--seed",
        "7",
        "--max-new-tokens",
        "24",
        "--ids",
    ];
    let a = run(&args);
    let b = run(&args);
    assert!(a.status.success(), "{}", stderr(&a));
    assert_eq!(a.stdout, b.stdout);
    let mut other = args.to_vec();
    other[8] = "8";
    assert_ne!(run(&other).stdout, a.stdout);
}

#[test]
fn missing_tokenizer_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    copy_demo(tmp.path());
    std::fs::remove_file(tmp.path().join("tokenizer.json")).unwrap();
    assert_clean_error(&run_eval(tmp.path()), &["tokenizer.json"]);
}

#[test]
fn truncated_safetensors_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    copy_demo(tmp.path());
    let p = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert_clean_error(&run_eval(tmp.path()), &["model.safetensors", "truncated"]);
}

#[test]
fn wrong_tensor_shape_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    copy_demo(tmp.path());
    let p = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let name = "model.layers.2.mlp.down_proj.weight";
    let mut views: Vec<(String, TensorView<'_>)> = Vec::new();
    let original = st.tensor(name).unwrap();
    // Same bytes, transposed shape [768, 256] instead of [256, 768].
    let bad = TensorView::new(original.dtype(), vec![768, 256], original.data()).unwrap();
    for (n, v) in st.tensors() {
        views.push((n.clone(), if n == name { bad.clone() } else { v }));
    }
    safetensors::serialize_to_file(views, None, &p).unwrap();
    assert_clean_error(
        &run_eval(tmp.path()),
        &[name, "model.safetensors", "[256, 768]"],
    );
}

#[test]
fn unknown_model_type_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    copy_demo(tmp.path());
    let p = tmp.path().join("config.json");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"llama\"", "\"gpt_neox\"");
    std::fs::write(&p, text).unwrap();
    assert_clean_error(
        &run_eval(tmp.path()),
        &["gpt_neox", "config.json", "llama, mistral, qwen2, qwen3"],
    );
}

#[test]
fn missing_data_file_is_a_clear_error() {
    let o = run(&[
        "eval",
        "--model",
        "assets/demo-model",
        "--data",
        "no/such/file.txt",
    ]);
    assert_clean_error(&o, &["no/such/file.txt"]);
}

#[test]
fn missing_model_dir_is_a_clear_error() {
    let o = run(&[
        "eval",
        "--model",
        "no/such/model",
        "--data",
        "assets/data/docs.test.txt",
    ]);
    assert_clean_error(&o, &["no/such/model"]);
}

#[test]
fn nan_weights_are_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    copy_demo(tmp.path());
    let p = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let name = "model.layers.0.self_attn.q_proj.weight";
    let t = st.tensor(name).unwrap();
    let mut data = t.data().to_vec();
    data[10..12].copy_from_slice(&half::bf16::NAN.to_bits().to_le_bytes());
    let bad = TensorView::new(t.dtype(), t.shape().to_vec(), &data).unwrap();
    let views: Vec<(String, TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| if n == name { (n, bad.clone()) } else { (n, v) })
        .collect();
    safetensors::serialize_to_file(views, None, &p).unwrap();
    assert_clean_error(&run_eval(tmp.path()), &[name, "NaN"]);
}

#[test]
fn help_explains_every_subcommand() {
    let o = run(&["--help"]);
    let out = String::from_utf8(o.stdout).unwrap();
    for sub in ["eval", "generate", "database", "bench"] {
        assert!(out.contains(sub), "{out}");
    }
    let _unused: PathBuf = common::root();
}
