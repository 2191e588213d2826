//! The `dynapress` binary on the demo model: normal runs and bad input.
//! Bad input must give one clear error line naming the file and exit non-zero,
//! never a panic.

mod common;

use std::path::Path;

use common::cli::{eval_json, fails, ok, run, stderr};
use safetensors::SafeTensors;
use safetensors::tensor::TensorView;

/// Evaluates (two windows of docs.test.txt) a copy of the demo model that
/// `edit` has changed in its directory.
fn eval_broken_demo(edit: impl FnOnce(&Path)) -> std::process::Output {
    let tmp = tempfile::tempdir().unwrap();
    common::copy_dir(&common::demo_model(), tmp.path());
    edit(tmp.path());
    run(&[
        "eval",
        "--model",
        common::s(tmp.path()),
        "--data",
        "assets/data/docs.test.txt",
        "--windows",
        "2",
        "--quiet",
    ])
}

/// Rewrites `model.safetensors` in `dir` with the tensor `name` replaced by
/// what `change` makes of it (its dtype, shape and bytes).
fn rewrite_tensor(
    dir: &Path,
    name: &str,
    change: impl FnOnce(&TensorView<'_>) -> (Vec<usize>, Vec<u8>),
) {
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let original = st.tensor(name).unwrap();
    let (shape, data) = change(&original);
    let bad = TensorView::new(original.dtype(), shape, &data).unwrap();
    let views: Vec<(String, TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| if n == name { (n, bad.clone()) } else { (n, v) })
        .collect();
    safetensors::serialize_to_file(views, None, &p).unwrap();
}

#[test]
fn eval_json_has_the_documented_shape() {
    let v = eval_json(&[
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
    ]);
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
    let out = ok(&o);
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
    let v = eval_json(&[
        "--model",
        "assets/demo-model",
        "--data",
        common::s(&p),
        "--windows",
        "2",
    ]);
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
    let out = ok(&o);
    let r = common::reference();
    let want = format!(
        "fn main() {{{}\n",
        r["greedy_generation"]["text"].as_str().unwrap()
    );
    assert_eq!(out, want);
}

#[test]
fn generate_starts_with_bos_when_the_tokenizer_adds_one() {
    // The demo tokenizer adds no BOS; give a copy a post-processor that adds
    // <|endoftext|> (id 0) first, as Llama 3's adds <|begin_of_text|>.
    let tmp = tempfile::tempdir().unwrap();
    common::copy_dir(&common::demo_model(), tmp.path());
    let path = tmp.path().join("tokenizer.json");
    let mut t: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let bos = serde_json::json!({"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}});
    t["post_processor"] = serde_json::json!({
        "type": "TemplateProcessing",
        "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [0], "tokens": ["<|endoftext|>"]}}
    });
    std::fs::write(&path, serde_json::to_vec(&t).unwrap()).unwrap();
    let gen_ids = |extra: &[&str]| -> (Vec<u32>, Vec<u32>) {
        let mut args = vec![
            "generate",
            "--model",
            common::s(tmp.path()),
            "--prompt",
            "fn main() {",
            "--max-new-tokens",
            "12",
            "--ignore-eos",
            "--ids",
        ];
        args.extend_from_slice(extra);
        let v: serde_json::Value = serde_json::from_str(&ok(&run(&args))).unwrap();
        let ids = |k: &str| serde_json::from_value::<Vec<u32>>(v[k].clone()).unwrap();
        (ids("prompt_ids"), ids("new_ids"))
    };
    let model = dynapress::model::Model::load(tmp.path()).unwrap();
    assert_eq!(model.tokenizer.added_bos(), Some(0));
    let prompt = model.tokenizer.encode("fn main() {").unwrap();
    let opts = dynapress::model::generate::GenerateOptions {
        max_new_tokens: 12,
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
        stop_at_eos: false,
    };
    let greedy =
        |p: &[u32]| dynapress::model::generate::generate(&model, p, &opts, |_| Ok(())).unwrap();
    let with_bos: Vec<u32> = [0].into_iter().chain(prompt.iter().copied()).collect();
    assert_eq!(gen_ids(&[]), (with_bos.clone(), greedy(&with_bos)));
    assert_eq!(gen_ids(&["--no-bos"]), (prompt.clone(), greedy(&prompt)));
    assert_ne!(
        greedy(&with_bos),
        greedy(&prompt),
        "BOS changes nothing: the test cannot tell"
    );
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
    let o = eval_broken_demo(|d| std::fs::remove_file(d.join("tokenizer.json")).unwrap());
    fails(&o, 1, &["tokenizer.json"]);
}

#[test]
fn truncated_safetensors_is_a_clear_error() {
    let o = eval_broken_demo(|d| {
        let p = d.join("model.safetensors");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    });
    fails(&o, 1, &["model.safetensors", "truncated"]);
}

#[test]
fn wrong_tensor_shape_is_a_clear_error() {
    let name = "model.layers.2.mlp.down_proj.weight";
    // Same bytes, transposed shape [768, 256] instead of [256, 768].
    let o = eval_broken_demo(|d| rewrite_tensor(d, name, |t| (vec![768, 256], t.data().to_vec())));
    fails(&o, 1, &[name, "model.safetensors", "[256, 768]"]);
}

#[test]
fn unknown_model_type_is_a_clear_error() {
    let o = eval_broken_demo(|d| {
        let p = d.join("config.json");
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("\"llama\"", "\"gpt_neox\"");
        std::fs::write(&p, text).unwrap();
    });
    fails(
        &o,
        1,
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
    fails(&o, 1, &["no/such/file.txt"]);
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
    fails(&o, 1, &["no/such/model"]);
}

#[test]
fn nan_weights_are_a_clear_error() {
    let name = "model.layers.0.self_attn.q_proj.weight";
    let o = eval_broken_demo(|d| {
        rewrite_tensor(d, name, |t| {
            let mut data = t.data().to_vec();
            data[10..12].copy_from_slice(&half::bf16::NAN.to_bits().to_le_bytes());
            (t.shape().to_vec(), data)
        })
    });
    fails(&o, 1, &[name, "NaN"]);
}

#[test]
fn help_explains_every_subcommand() {
    let o = run(&["--help"]);
    let out = String::from_utf8(o.stdout).unwrap();
    for sub in ["eval", "generate", "database", "bench"] {
        assert!(out.contains(sub), "{out}");
    }
}
