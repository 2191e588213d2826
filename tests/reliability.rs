//! Regression tests for the defects of issue 11 (a bad-input campaign against
//! the release binary), one test per row: each failed before its fix. The
//! promises they back are listed in docs/reliability.md.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::cli::{DEMO, export, fails, ok, run, run2, search};
use common::demo::small_kquant_db as db;
use common::{copy_dir, edit_json, names, s};

/// `eval` of `model` on docs.test.txt, then `extra`.
fn eval_args<'a>(model: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "eval",
        "--model",
        model,
        "--data",
        "assets/data/docs.test.txt",
    ];
    args.extend_from_slice(extra);
    args
}

/// `eval` of `model` on docs.test.txt (the defaults).
fn eval(model: &Path) -> std::process::Output {
    run(&eval_args(s(model), &[]))
}

/// `eval` of `model` on one window of 32 tokens of docs.test.txt.
fn eval_one_window(model: &Path) -> std::process::Output {
    run(&eval_args(s(model), &["--windows", "1", "--seq-len", "32"]))
}

/// A knapsack configuration of [`db`] at 5 bits per weight, written to `out`.
fn config(out: &Path) {
    common::cli::knapsack(db(), "5", out);
}

/// `eval --tasks` of the demo model on a task file `t.jsonl` holding `text`.
fn eval_task(text: &str) -> std::process::Output {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("t.jsonl");
    std::fs::write(&t, text).unwrap();
    run(&["eval", "--model", "assets/demo-model", "--tasks", s(&t)])
}

/// A knapsack search of the demo model on `db` at 5 bits into `out`.
fn search5(db: &Path, out: &Path) -> std::process::Output {
    search(db, out, &["--target-bits", "5", "--algo", "knapsack"])
}

#[test]
fn row01_seq_len_zero_is_a_bad_argument_not_a_panic() {
    for protocol in ["windows", "llama-perplexity"] {
        let args = eval_args(
            DEMO,
            &["--windows", "1", "--seq-len", "0", "--protocol", protocol],
        );
        fails(&run(&args), 2, &["--seq-len 0"]);
    }
}

#[test]
fn row02_task_with_empty_context_and_choices_is_a_clear_error() {
    let o = eval_task("{\"context\":\"\",\"choices\":[\"\",\"\"],\"label\":0}\n");
    fails(&o, 1, &["t.jsonl", "line 1", "empty context"]);
}

#[test]
fn row03_a_closed_stdout_ends_the_run_quietly() {
    let args = eval_args(DEMO, &["--windows", "1", "--seq-len", "32", "-q"]);
    let mut child = Command::new(common::bin())
        .args(&args)
        .current_dir(common::root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before anything is printed
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.is_empty(), "nothing on stderr: {err}");
    assert_ne!(status.code(), Some(101), "{err}");
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc_sigpipe()), "{status:?}");
    }
}

#[cfg(unix)]
fn libc_sigpipe() -> i32 {
    13
}

#[test]
fn row04_pack_never_replaces_its_input_and_needs_force() {
    let tmp = tempfile::tempdir().unwrap();
    let x = tmp.path().join("x");
    copy_dir(&common::demo_model(), &x);
    let weights = x.join("model.safetensors");
    let before = std::fs::read(&weights).unwrap();
    let o = run(&["pack", s(&x), s(&weights), "-q"]);
    fails(&o, 1, &["inside the input directory"]);
    let o = run(&["pack", s(&x), s(&x.join("new.dpk")), "-q"]);
    fails(&o, 1, &["inside the input directory"]);
    assert_eq!(std::fs::read(&weights).unwrap(), before, "weights intact");
    assert!(!x.join("new.dpk").exists());
    // An existing output needs --force.
    let out = tmp.path().join("x.dpk");
    std::fs::write(&out, b"keep me").unwrap();
    fails(
        &run(&["pack", s(&x), s(&out), "-q"]),
        1,
        &["exists", "--force"],
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    ok(&run(&["pack", s(&x), s(&out), "-q", "--force"]));
    assert_ne!(std::fs::read(&out).unwrap(), b"keep me");
}

#[test]
fn row05_outputs_never_overwrite_inputs_and_need_force() {
    let tmp = tempfile::tempdir().unwrap();
    let c = tmp.path().join("c.txt");
    std::fs::copy(common::data("docs.valid.txt"), &c).unwrap();
    let before = std::fs::read(&c).unwrap();
    // search --out = its own --calib file (even with --force).
    for force in [false, true] {
        let mut args = vec!["--calib", s(&c), "--target-bits", "5"];
        if force {
            args.push("--force");
        }
        fails(&search(db(), &c, &args), 1, &["also an input", "c.txt"]);
    }
    assert_eq!(std::fs::read(&c).unwrap(), before);
    // search --out over an existing file needs --force.
    let existing = tmp.path().join("r.json");
    std::fs::write(&existing, b"{}").unwrap();
    fails(&search5(db(), &existing), 1, &["exists", "--force"]);
    assert_eq!(std::fs::read(&existing).unwrap(), b"{}");
    // convert --out <model>/model.safetensors --force.
    let m = tmp.path().join("m");
    copy_dir(&common::demo_model(), &m);
    let w = std::fs::read(m.join("model.safetensors")).unwrap();
    let o = run(&[
        "convert",
        "--model",
        s(&m),
        "--out",
        s(&m.join("model.safetensors")),
        "--force",
    ]);
    fails(&o, 1, &["model.safetensors"]);
    assert_eq!(std::fs::read(m.join("model.safetensors")).unwrap(), w);
    // export --out <model dir> --force.
    let cfg = tmp.path().join("cfg.json");
    config(&cfg);
    let o = common::cli::on_db("export", s(&m), db(), &m, &["--config", s(&cfg), "--force"]);
    fails(&o, 1, &["also an input"]);
    assert_eq!(std::fs::read(m.join("model.safetensors")).unwrap(), w);
    assert!(m.join("tokenizer.json").exists());
    // unpack into a non-empty directory needs --force.
    let dpk = tmp.path().join("m.dpk");
    ok(&run(&["pack", s(&m), s(&dpk), "-q"]));
    let dest = tmp.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("config.json"), b"mine").unwrap();
    fails(
        &run(&["unpack", s(&dpk), s(&dest), "-q"]),
        1,
        &["not empty", "--force"],
    );
    assert_eq!(std::fs::read(dest.join("config.json")).unwrap(), b"mine");
    ok(&run(&["unpack", s(&dpk), s(&dest), "-q", "--force"]));
    assert_eq!(
        std::fs::read(dest.join("model.safetensors")).unwrap(),
        w,
        "unpacked with --force"
    );
}

#[test]
fn row07_out_of_range_rope_theta_or_epsilon_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for (key, value, needle) in [
        ("rope_theta", -1.0, "rope_theta"),
        ("rope_theta", 0.0, "rope_theta"),
        ("rms_norm_eps", -1e-5, "rms_norm_eps"),
    ] {
        let m = tmp.path().join(format!("{key}{value}"));
        copy_dir(&common::demo_model(), &m);
        edit_json(&m.join("config.json"), |cfg| {
            cfg[key] = serde_json::json!(value);
            if let Some(rp) = cfg.get_mut("rope_parameters")
                && key == "rope_theta"
            {
                rp["rope_theta"] = serde_json::json!(value);
            }
        });
        fails(&eval_one_window(&m), 1, &["config.json", needle]);
        let o = run(&["convert", "--model", s(&m), "--out", s(&m.join("x.gguf"))]);
        fails(&o, 1, &["config.json", needle]);
        assert!(!m.join("x.gguf").exists());
    }
    // A NaN epsilon inside a GGUF file.
    let g = tmp.path().join("m.gguf");
    common::cli::convert(DEMO, &g, "F16");
    let mut bytes = std::fs::read(&g).unwrap();
    let key = b"attention.layer_norm_rms_epsilon";
    let at = bytes
        .windows(key.len())
        .position(|w| w == key)
        .expect("epsilon key")
        + key.len();
    assert_eq!(&bytes[at..at + 4], &6u32.to_le_bytes(), "an f32 value");
    bytes[at + 4..at + 8].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&g, bytes).unwrap();
    fails(&eval_one_window(&g), 1, &["m.gguf", "epsilon"]);
}

#[test]
fn row08_llama_perplexity_that_scores_nothing_is_refused() {
    let args = eval_args(
        DEMO,
        &[
            "--windows",
            "1",
            "--seq-len",
            "2",
            "--protocol",
            "llama-perplexity",
        ],
    );
    fails(&run(&args), 2, &["--seq-len 2", "scores no token"]);
}

#[test]
fn row09_an_empty_choice_is_refused_instead_of_always_winning() {
    let o = eval_task("{\"context\":\"The sky is\",\"choices\":[\"\",\" green\"],\"label\":0}\n");
    fails(&o, 1, &["t.jsonl", "line 1", "choice 0 is empty"]);
}

#[test]
fn row10_a_layer_listed_twice_in_a_configuration_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("c.json");
    config(&cfg);
    edit_json(&cfg, |v| {
        let layers = v["layers"].as_array_mut().unwrap();
        let mut dup = layers[0].clone();
        dup["level"] = serde_json::json!(if dup["level"] == "Q6_K" {
            "Q4_K"
        } else {
            "Q6_K"
        });
        layers.push(dup);
    });
    let out = tmp.path().join("out");
    fails(
        &export(db(), &cfg, &out, &[]),
        1,
        &["c.json", "listed twice"],
    );
    assert!(!out.exists());
}

#[test]
fn row11_manifest_numbers_are_checked_against_the_entries() {
    let tmp = tempfile::tempdir().unwrap();
    for (field, value) in [
        ("storage_bits", serde_json::json!(8)),
        ("bits_per_weight", serde_json::json!(0.01)),
        ("rows", serde_json::json!(1)),
    ] {
        let d = tmp.path().join(field);
        copy_dir(db(), &d);
        edit_json(&d.join("manifest.json"), |m| m["entries"][1][field] = value);
        let o = search5(&d, &tmp.path().join(format!("{field}.json")));
        fails(&o, 1, &["manifest.json", "entries[1]"]);
    }
}

#[test]
fn row12_compress_validates_before_building_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("X");
    let base = |extra: &[&str]| {
        let args = [
            "compress",
            "--calib-tokens",
            "512",
            "--seq-len",
            "64",
            "--bits",
            "2,4",
            "--out",
            s(&out),
            "-q",
        ];
        run2(&args, extra)
    };
    for (extra, code, needle) in [
        (vec!["--target-bits", "NaN"], 2, "--target-bits NaN"),
        (vec!["--target-bits", "0"], 2, "--target-bits 0"),
        (vec!["--target-size", "1000000"], 2, "--format gguf"),
        (vec!["--target-size", "0"], 2, "--target-size"),
        (
            vec!["--target-bits", "9"],
            1,
            "outside what the levels reach",
        ),
        (
            vec!["--target-bits", "1"],
            1,
            "outside what the levels reach",
        ),
    ] {
        let t = std::time::Instant::now();
        fails(&base(&extra), code, &[needle]);
        assert!(!out.exists(), "{extra:?} left {}", out.display());
        assert!(t.elapsed().as_secs() < 30, "{extra:?} built something");
    }
    // A too-short evaluation text fails before the database.
    let short = tmp.path().join("short.txt");
    std::fs::write(&short, "A few words only.").unwrap();
    let o = base(&[
        "--model",
        "assets/demo-model",
        "--calib",
        "assets/data/docs.valid.txt",
        "--eval",
        s(&short),
    ]);
    fails(&o, 1, &["short.txt", "fewer than one evaluation window"]);
    assert!(!out.exists());
}

#[test]
fn row13_unwritable_recipe_leaves_no_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("c.json");
    config(&cfg);
    let out = tmp.path().join("m.gguf");
    let recipe = tmp.path().join("no-such-dir/recipe.txt");
    let o = export(
        db(),
        &cfg,
        &out,
        &["--format", "gguf", "--recipe", s(&recipe)],
    );
    fails(&o, 1, &["recipe.txt"]);
    assert!(!out.exists(), "no .gguf without its recipe");
    assert_eq!(names(tmp.path()), vec!["c.json".to_string()]);
}

#[test]
fn row14_threads_are_bounded() {
    let o = run2(&["--threads", "5000"], &eval_args(DEMO, &[]));
    fails(&o, 2, &["--threads 5000", "per available core"]);
}

#[test]
fn row15_a_dead_runs_temporaries_are_cleaned_by_the_next_run() {
    let tmp = tempfile::tempdir().unwrap();
    let x = tmp.path().join("x");
    copy_dir(&common::demo_model(), &x);
    let outdir = tmp.path().join("o");
    std::fs::create_dir(&outdir).unwrap();
    // A process that has ended: its pid names the temporaries it left.
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let live_pid = std::process::id(); // this test: alive
    let dead_file = format!(".dynapress-tmp-{dead_pid}-abc.dpk");
    let dead_dir = format!(".dynapress-tmp-{dead_pid}-xyz");
    let live_file = format!(".dynapress-tmp-{live_pid}-abc");
    std::fs::write(outdir.join(&dead_file), vec![0u8; 1000]).unwrap();
    std::fs::create_dir(outdir.join(&dead_dir)).unwrap();
    std::fs::write(outdir.join(&dead_dir).join("model.safetensors"), b"x").unwrap();
    std::fs::write(outdir.join(&live_file), b"x").unwrap();
    // Unattributed (older naming): removed only when untouched for an hour.
    let old = outdir.join(".dynapress-tmp-old");
    let fresh = outdir.join(".dynapress-tmp-fresh");
    std::fs::write(&old, b"x").unwrap();
    std::fs::write(&fresh, b"x").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(7200))
        .unwrap();
    ok(&run(&["pack", s(&x), s(&outdir.join("x.dpk")), "-q"]));
    let mut want = vec![
        ".dynapress-tmp-fresh".to_string(),
        live_file.clone(),
        "x.dpk".to_string(),
    ];
    want.sort();
    assert_eq!(names(&outdir), want);
}

#[test]
fn row16_messages_say_what_is_wrong() {
    // --windows 0
    let args = eval_args(DEMO, &["--windows", "0"]);
    fails(&run(&args), 2, &["--windows must be at least 1"]);
    // a directory, a FIFO, /dev/zero as --data
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    for (data, needle) in [
        (tmp.path().to_path_buf(), "is a directory"),
        (fifo.clone(), "not a regular file"),
        (PathBuf::from("/dev/zero"), "not a regular file"),
    ] {
        let o = run(&["eval", "--model", "assets/demo-model", "--data", s(&data)]);
        fails(&o, 1, &[s(&data), needle]);
    }
    // config.json pointing at /dev/zero
    let m = tmp.path().join("m");
    copy_dir(&common::demo_model(), &m);
    std::fs::remove_file(m.join("config.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", m.join("config.json")).unwrap();
    let o = eval(&m);
    fails(&o, 1, &["config.json", "not a regular file"]);
    // search: NaN target, --calib-tokens 0, more survivors than offspring
    let never = tmp.path().join("never-written.json");
    let refused = |extra: &[&str]| {
        let calib = ["--calib", "assets/data/docs.valid.txt"];
        search(
            Path::new("no-such-db"),
            &never,
            &[&calib[..], extra].concat(),
        )
    };
    fails(
        &refused(&["--target-bits", "NaN"]),
        2,
        &["--target-bits NaN"],
    );
    fails(
        &refused(&["--target-bits", "3", "--calib-tokens", "0"]),
        2,
        &["--calib-tokens"],
    );
    fails(
        &refused(&[
            "--target-bits",
            "3",
            "--offspring",
            "4",
            "--stages",
            "512:8,2048:1",
        ]),
        2,
        &["8 survivors of 4 candidates"],
    );
    // a configuration of a future version
    let cfg = tmp.path().join("c.json");
    config(&cfg);
    edit_json(&cfg, |v| v["version"] = serde_json::json!(99));
    let o = export(db(), &cfg, &tmp.path().join("e"), &[]);
    fails(&o, 1, &["c.json", "version 99"]);
    // packed and unpacked files get the umask's mode, not 0600
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let sh = |cmd: String| {
            let o = Command::new("sh")
                .arg("-c")
                .arg(format!("umask 027; exec {cmd}"))
                .current_dir(common::root())
                .output()
                .unwrap();
            ok(&o);
        };
        let dpk = tmp.path().join("m.dpk");
        let bin = common::bin();
        sh(format!(
            "{} pack assets/demo-model {} -q",
            bin.display(),
            dpk.display()
        ));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dpk), 0o640, "pack");
        let un = tmp.path().join("un");
        sh(format!(
            "{} unpack {} {} -q",
            bin.display(),
            dpk.display(),
            un.display()
        ));
        assert_eq!(mode(&un.join("config.json")), 0o640, "unpack");
    }
}

/// Inputs the fuzzer (examples/fuzz.rs) found crashing the readers, kept in
/// fuzz/regressions/: each is a clean error now.
#[test]
fn fuzz_findings_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    // tokenizer.json files that made the tokenizers crate panic: a malformed
    // decoder (when loading), a template naming an undefined special token
    // (when encoding).
    for name in [
        "tokenizer-decoder-unwrap.json",
        "tokenizer-template-special-token.json",
    ] {
        let m = tmp.path().join(name);
        copy_dir(&common::demo_model(), &m);
        std::fs::copy(
            common::root().join("fuzz/regressions").join(name),
            m.join("tokenizer.json"),
        )
        .unwrap();
        fails(&eval(&m), 1, &["tokenizer.json", "malformed"]);
    }
    // A huge layer count was accepted and sized allocations (abort, out of memory).
    let m = tmp.path().join("layers");
    copy_dir(&common::demo_model(), &m);
    edit_json(&m.join("config.json"), |cfg| {
        cfg["num_hidden_layers"] = serde_json::json!(10_000_000_000u64)
    });
    let o = eval(&m);
    fails(&o, 1, &["config.json", "num_hidden_layers"]);
}

/// `kill -9` at several moments of `pack` and `export`: the output is absent
/// or complete, never partial, and the next run leaves no temporaries.
#[test]
fn row15_kill_9_leaves_no_partial_output_and_the_rerun_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("c.json");
    config(&cfg);
    for delay_ms in [5u64, 40, 150] {
        let dir = tmp.path().join(format!("d{delay_ms}"));
        std::fs::create_dir(&dir).unwrap();
        let dpk = dir.join("m.dpk");
        let out = dir.join("exported");
        let commands: [Vec<String>; 2] = [
            vec![
                "pack".into(),
                "assets/demo-model".into(),
                s(&dpk).into(),
                "-q".into(),
            ],
            vec![
                "export".into(),
                "--model".into(),
                "assets/demo-model".into(),
                "--db".into(),
                s(db()).into(),
                "--config".into(),
                s(&cfg).into(),
                "--out".into(),
                s(&out).into(),
            ],
        ];
        for args in &commands {
            let mut child = Command::new(common::bin())
                .args(args)
                .current_dir(common::root())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(delay_ms));
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
            // Absent or complete.
            if dpk.exists() {
                dynapress_pack::PackedReader::open(&dpk).expect("a complete pack");
            }
            if out.exists() {
                assert!(out.join("dynapress.json").exists(), "a complete export");
            }
            // The rerun (with --force in case the killed run finished) cleans up.
            let mut again: Vec<&str> = args.iter().map(String::as_str).collect();
            again.push("--force");
            ok(&run(&again));
        }
        let left: Vec<String> = names(&dir)
            .into_iter()
            .filter(|n| n.starts_with(".dynapress-tmp-"))
            .collect();
        assert!(left.is_empty(), "after {delay_ms} ms: {left:?}");
    }
}

/// Found by the fuzzer: a layer whose entries all have levels the manifest
/// does not list, its real levels marked unavailable, made the search index
/// an empty list (panic). The replay of fuzz/regressions/manifest-* in
/// .ci/run checks `SearchSpace::from_manifest` on the raw input.
#[test]
fn fuzz_finding_a_layer_without_levels_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("db");
    copy_dir(db(), &d);
    let mut layer = String::new();
    edit_json(&d.join("manifest.json"), |m| {
        layer = m["entries"][0]["layer"].as_str().unwrap().to_string();
        let mut levels = Vec::new();
        for e in m["entries"].as_array_mut().unwrap() {
            if e["layer"] == layer.as_str() {
                levels.push(e["level"].clone());
                e["level"] = serde_json::json!("bogus");
            }
        }
        let un = m["unavailable"].as_array_mut().unwrap();
        for l in levels {
            un.push(serde_json::json!({"layer": layer, "level": l, "reason": "test"}));
        }
    });
    let o = search5(&d, &tmp.path().join("c.json"));
    fails(&o, 1, &["manifest.json", &layer]);
}
