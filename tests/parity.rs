//! Parity with Hugging Face transformers on the demo model
//! (`tests/reference/llama-8m`, produced with transformers 5.23 in float32).

mod common;

use std::sync::OnceLock;

use dynapress::eval::data::load_tokens;
use dynapress::eval::perplexity::{
    BaseHidden, WindowOptions, score_windows, score_windows_multi, score_windows_shared,
};
use dynapress::eval::tasks;
use dynapress::model::Model;
use dynapress::model::generate::{GenerateOptions, generate};

fn model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::load(&common::demo_model()).expect("demo model loads"))
}

#[test]
fn tokenization_ids_identical() {
    let r = common::reference();
    let cases = r["tokenization"]["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want = common::ids(&case["ids"]);
        assert_eq!(
            model().tokenizer.encode(text).unwrap(),
            want,
            "text {text:?}"
        );
    }
}

#[test]
fn logits_within_2e_3() {
    let (ids, b, t, want) =
        common::reference_logits(&common::reference_dir().join("logits.safetensors"));
    // The reference ids are the first 192 tokens of docs.test.txt.
    let doc = load_tokens(&common::data("docs.test.txt"), &model().tokenizer).unwrap();
    assert_eq!(&doc[..b * t], &ids[..]);
    let got = model()
        .forward(&ids, b, t)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let max = common::max_diff(&got, &want);
    eprintln!("max |logit difference| = {max:e}");
    assert!(max <= 2e-3, "max abs logit difference {max}");
}

fn check_ppl(file: &str, seq_len: usize, windows: usize) {
    let r = common::reference();
    let key = format!("{file}@{seq_len}x{windows}");
    let want = &r["perplexity"]["results"][&key];
    let tokens = load_tokens(&common::data(file), &model().tokenizer).unwrap();
    assert_eq!(tokens.len() as u64, want["file_tokens"].as_u64().unwrap());
    let opts = WindowOptions {
        seq_len,
        windows,
        ..Default::default()
    };
    let s = score_windows(model(), None, &tokens, &opts, |_| {}).unwrap();
    assert_eq!(s.tokens as u64, want["scored_tokens"].as_u64().unwrap());
    let ppl = want["perplexity"].as_f64().unwrap();
    let rel = (s.perplexity - ppl).abs() / ppl;
    eprintln!("{key}: ppl {} vs {ppl} (rel {rel:e})", s.perplexity);
    assert!(rel < 1e-3, "{key}: {} vs {ppl}", s.perplexity);
    let nll = want["nll_per_token"].as_f64().unwrap();
    assert!((s.nll_per_token - nll).abs() / nll < 1e-3);
}

#[test]
fn perplexity_docs_256() {
    check_ppl("docs.test.txt", 256, 64);
}

#[test]
fn perplexity_code_256() {
    check_ppl("code.test.txt", 256, 64);
}

#[test]
fn perplexity_docs_1024() {
    check_ppl("docs.test.txt", 1024, 16);
}

#[test]
fn perplexity_code_1024() {
    check_ppl("code.test.txt", 1024, 16);
}

fn check_task(stem: &str) {
    let r = common::reference();
    let want = &r["tasks"]["results"][stem];
    let items = tasks::load_tasks(&common::task(&format!("{stem}.jsonl"))).unwrap();
    let reqs = tasks::task_requests(model(), &items).unwrap();
    let lls = tasks::score_requests(model(), &reqs, 8192, |_| {}).unwrap();
    let s = tasks::task_scores(&items, &lls);
    assert_eq!(s.items as u64, want["items"].as_u64().unwrap());
    eprintln!("{stem}: acc {} acc_norm {}", s.acc, s.acc_norm);
    assert_eq!(s.acc, want["acc"].as_f64().unwrap(), "{stem} acc");
    assert_eq!(
        s.acc_norm,
        want["acc_norm"].as_f64().unwrap(),
        "{stem} acc_norm"
    );
}

#[test]
fn task_accuracy_docs_cloze() {
    check_task("docs-cloze");
}

#[test]
fn task_accuracy_code_cloze() {
    check_task("code-cloze");
}

#[test]
fn greedy_generation_identical() {
    let r = common::reference();
    let g = &r["greedy_generation"];
    let ids = |k: &str| common::ids(&g[k]);
    let prompt = model()
        .tokenizer
        .encode(g["prompt"].as_str().unwrap())
        .unwrap();
    assert_eq!(prompt, ids("prompt_ids"));
    let want = ids("new_ids");
    let opts = GenerateOptions {
        max_new_tokens: want.len(),
        temperature: 0.0,
        ..Default::default()
    };
    let got = generate(model(), &prompt, &opts, |_| Ok(())).unwrap();
    assert_eq!(got, want);
    assert_eq!(
        model().tokenizer.decode(&got).unwrap(),
        g["text"].as_str().unwrap()
    );
}

/// The repository's copies of the shared fixtures must not drift from ../shared.
#[test]
fn bundled_fixtures_match_shared_when_present() {
    let shared = common::root().join("../shared");
    if !shared.exists() {
        eprintln!("../shared not present: nothing to compare");
        return;
    }
    let pairs = [
        ("models/llama-8m", "assets/demo-model"),
        ("data", "assets/data"),
        ("tasks", "assets/tasks"),
        ("reference/llama-8m", "tests/reference/llama-8m"),
    ];
    for (s, ours) in pairs {
        for entry in std::fs::read_dir(shared.join(s)).unwrap() {
            let p = entry.unwrap().path();
            let name = p.file_name().unwrap();
            let mine = common::root().join(ours).join(name);
            assert_eq!(
                std::fs::read(&p).unwrap(),
                std::fs::read(&mine).unwrap_or_default(),
                "{} differs from {}",
                mine.display(),
                p.display()
            );
        }
    }
}

/// The evaluation keeps the base's hidden states across groups of models
/// and scores the base against itself from its own logits: every number
/// must equal a plain rerun of the base (the same head on the same rows).
/// A model differing in one layer gives a positive KL only if each batch's
/// kept states are matched with the right windows (batches of 4 and 2).
#[test]
fn kept_base_states_score_like_a_rerun_of_the_base() {
    use dynapress::model::{LinearId, LinearKind};
    let base = model();
    let c = &base.config;
    let mut other = base.clone();
    let w = candle_core::Tensor::zeros(
        (c.hidden_size, c.intermediate_size),
        candle_core::DType::F32,
        base.device(),
    )
    .unwrap();
    other
        .set_linear(
            LinearId {
                block: 1,
                kind: LinearKind::Down,
            },
            &w,
        )
        .unwrap();
    let tokens = load_tokens(&common::data("docs.test.txt"), &base.tokenizer).unwrap();
    let opts = WindowOptions {
        seq_len: 128,
        windows: 6,
        batch: 4,
        ..Default::default()
    };
    let plain = score_windows_multi(&[&other, base], Some(base), &tokens, &opts, |_| {}).unwrap();
    let mut cache = BaseHidden::default();
    let mut shared = |models: &[&Model], opts: &WindowOptions| {
        score_windows_shared(models, Some(base), Some(&mut cache), &tokens, opts, |_| {}).unwrap()
    };
    let first = shared(&[&other], &opts);
    let second = shared(&[&other, base], &opts);
    let a = &plain[0];
    assert!(a.kl.unwrap() > 1e-3, "{:?}", a.kl);
    for s in [&first[0], &second[0]] {
        assert_eq!(s.kl, a.kl);
        assert_eq!(s.top1_agreement, a.top1_agreement);
        assert_eq!(s.nll_per_token, a.nll_per_token);
        assert_eq!(s.tokens, a.tokens);
    }
    // The base against itself, from the kept states.
    assert_eq!(second[1].kl, Some(0.0));
    assert_eq!(second[1].top1_agreement, Some(1.0));
    assert_eq!(second[1].nll_per_token, plain[1].nll_per_token);
    // … and equal to the base scored as any other model (a copy of it).
    let copy = base.clone();
    let as_model = score_windows_multi(&[&copy], Some(base), &tokens, &opts, |_| {}).unwrap();
    assert_eq!(as_model[0].nll_per_token, plain[1].nll_per_token);
    assert_eq!(as_model[0].kl, Some(0.0));
    // Other windows recompute (a stale cache is never used).
    let opts2 = WindowOptions { windows: 3, ..opts };
    let fresh = score_windows_multi(&[&other], Some(base), &tokens, &opts2, |_| {}).unwrap();
    let again = shared(&[&other], &opts2);
    assert_eq!(again[0].kl, fresh[0].kl);
    // Other tokens of the same length too (the first 3 windows of each text).
    let code = load_tokens(&common::data("code.test.txt"), &base.tokenizer).unwrap();
    let (a, b) = (&tokens[..3 * 128], &code[..3 * 128]);
    let mut shared = |text: &[u32]| {
        score_windows_shared(
            &[&other],
            Some(base),
            Some(&mut cache),
            text,
            &opts2,
            |_| {},
        )
        .unwrap()
    };
    let _ = shared(a);
    let again = shared(b);
    let fresh = score_windows_multi(&[&other], Some(base), b, &opts2, |_| {}).unwrap();
    assert_eq!(again[0].kl, fresh[0].kl);
}
