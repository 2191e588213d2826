//! Sparsity as database levels (issue 10): a `sparsegpt` database stores
//! SparseGPT layers at several sparsities (f16 values, or jointly on a grid),
//! the search allocates them under a sparsity or bits budget, and the
//! exports write them dense (safetensors) or as mask + kept weights
//! (dynapress's own format, read back by `eval` and `pack` unchanged).

mod common;

use std::path::Path;

use common::cli::{DEMO, clean_error, database, export, fails, ok, run, search};
use common::{read_json, s};
use dynapress::database::{Manifest, Variant, load_entry_file};
use dynapress::model::ModelFiles;
use dynapress_compress::{
    Hessian, SparseParams, SparsityPattern, magnitude_prune, relative_output_error,
};

/// A SparseGPT database of the demo model at `sparsities` (+ `extra`).
fn sparse_db(dir: &Path, sparsities: &str, extra: &[&str]) {
    let args = [
        &[
            "--calib",
            "assets/data/docs.valid.txt",
            "--calib-tokens",
            "2048",
            "--seq-len",
            "128",
            "--method",
            "sparsegpt",
            "--sparsities",
            sparsities,
        ][..],
        extra,
    ]
    .concat();
    ok(&database(dir, &args));
}

/// Zeros in each row of a `[rows, cols]` matrix.
fn zeros_per_row(w: &[f32], cols: usize) -> Vec<usize> {
    w.chunks(cols)
        .map(|r| r.iter().filter(|&&x| x == 0.0).count())
        .collect()
}

/// KL per test file of `eval --base demo` with `args`.
fn kl(args: &[&str]) -> Vec<f64> {
    let v = common::cli::eval_json(
        &[
            &[
                "--base",
                DEMO,
                "--data",
                "assets/data/docs.test.txt",
                "--data",
                "assets/data/code.test.txt",
                "--windows",
                "8",
            ][..],
            args,
        ]
        .concat(),
    );
    ["docs.test.txt", "code.test.txt"]
        .iter()
        .map(|d| v["datasets"][d]["kl"].as_f64().unwrap())
        .collect()
}

#[test]
fn sparse_levels_have_exact_zeros_and_storage_and_order_by_error() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    sparse_db(&db, "0.3,0.5,0.7", &[]);
    let m = Manifest::read(&db).unwrap();
    assert_eq!(
        m.levels,
        ["sparsegpt-s70", "sparsegpt-s50", "sparsegpt-s30"],
        "lowest bits first"
    );
    assert!(m.complete);
    assert_eq!(m.entries.len(), 56 * 3);
    for e in &m.entries {
        let s: f64 = e.level["sparsegpt-s".len()..].parse::<f64>().unwrap() / 100.0;
        let v = load_entry_file(&db, e).unwrap();
        let w = v.dequantize().unwrap();
        let z = (s * e.cols as f64 + 0.5).floor() as usize;
        // Exactly ⌊s·cols + ½⌋ pruned weights per row (a kept f16 value is
        // never exactly 0 for these trained weights).
        assert!(
            zeros_per_row(&w, e.cols).iter().all(|&n| n == z),
            "{} {}",
            e.layer,
            e.level
        );
        // Storage: a 1-bit mask and an f16 per kept weight, exactly.
        let kept = (e.rows * (e.cols - z)) as u64;
        assert_eq!(
            e.storage_bits,
            8 * (e.rows * e.cols).div_ceil(8) as u64 + 16 * kept
        );
    }
    // More sparsity, more error, for every layer.
    for b in 0..8 {
        for k in ["q_proj", "down_proj"] {
            let errs: Vec<f64> = m
                .entries
                .iter()
                .filter(|e| e.block == b && e.layer.contains(k))
                .map(|e| e.rel_error)
                .collect();
            assert_eq!(errs.len(), 3);
            // Entries are sorted by storage: 70 %, 50 %, 30 %.
            assert!(errs[0] > errs[1] && errs[1] > errs[2], "{b} {k}: {errs:?}");
        }
    }
}

#[test]
fn a_sparsity_budget_is_met_and_both_exports_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    sparse_db(&db, "0.3,0.4,0.5,0.6,0.7", &[]);
    let cfg = tmp.path().join("cfg.json");
    ok(&search(
        &db,
        &cfg,
        &["--target-sparsity", "0.5", "--algo", "knapsack", "--quiet"],
    ));
    // The budget: the storage of every layer at 50 % (9 bits per weight on
    // the demo's rows of 256 and 768), never exceeded.
    let c = read_json(&cfg);
    let bpw = c["bits_per_weight"].as_f64().unwrap();
    assert!(bpw <= 9.0 + 1e-9 && bpw > 8.9, "{bpw}");
    let levels: std::collections::BTreeSet<&str> = c["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["level"].as_str().unwrap())
        .collect();
    assert!(levels.len() >= 2, "a mix: {levels:?}");

    // Dense safetensors: exact zeros where the levels put them.
    let dense = tmp.path().join("dense");
    ok(&export(&db, &cfg, &dense, &[]));
    let files = ModelFiles::open(&dense).unwrap();
    for l in c["layers"].as_array().unwrap() {
        let name = l["layer"].as_str().unwrap();
        let level = l["level"].as_str().unwrap();
        let sp: f64 = level["sparsegpt-s".len()..].parse::<f64>().unwrap() / 100.0;
        let shape = files.weights.shape(name).unwrap();
        let w = files.weights.load_f32(name, &shape).unwrap();
        let z = (sp * shape[1] as f64 + 0.5).floor() as usize;
        assert!(
            zeros_per_row(&w, shape[1]).iter().all(|&n| n == z),
            "{name}"
        );
    }
    // Native: mask + f16 values, smaller, the same model; a pack round trip
    // keeps it exactly.
    let native = tmp.path().join("native");
    ok(&export(&db, &cfg, &native, &["--format", "dynapress"]));
    let size = |d: &Path| {
        std::fs::metadata(d.join("model.safetensors"))
            .unwrap()
            .len()
    };
    assert!(
        size(&native) * 10 < size(&dense) * 8,
        "{} vs {}",
        size(&native),
        size(&dense)
    );
    let k_db = kl(&["--model", DEMO, "--db", s(&db), "--config", s(&cfg)]);
    let k_dense = kl(&["--model", s(&dense)]);
    let k_native = kl(&["--model", s(&native)]);
    assert!(k_db[0] > 0.0);
    assert_eq!(k_native, k_db);
    for (a, b) in k_dense.iter().zip(&k_db) {
        // The dense export holds the same f16-representable values in the
        // checkpoint's bf16 only where they fit; allow that rounding.
        assert!((a - b).abs() <= 0.05 * b, "dense {a} vs db {b}");
    }
    let packed = tmp.path().join("native.dpk");
    ok(&run(&["pack", s(&native), s(&packed), "-q"]));
    assert_eq!(kl(&["--model", s(&packed)]), k_db);

    // compressed-tensors does not store sparse layers: one clear error.
    let ct = tmp.path().join("ct");
    clean_error(
        &export(&db, &cfg, &ct, &["--format", "compressed-tensors"]),
        &["sparse layer", "--format safetensors"],
    );
    assert!(!ct.exists());
}

#[test]
fn joint_sparsity_and_quantization_levels() {
    // A level = sparsity × grid bit width; the kept weights are grid codes,
    // and the stored bits are those of the mask, the codes, the scales and
    // the zero points.
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    sparse_db(&db, "0.5", &["--sparse-bits", "4,8"]);
    let m = Manifest::read(&db).unwrap();
    assert_eq!(m.levels, ["sparsegpt-s50-b4-g128", "sparsegpt-s50-b8-g128"]);
    for e in m.entries.iter().filter(|e| e.level.ends_with("b4-g128")) {
        // 1 (mask) + 4 × 0.5 (codes) + (16 + 4) / 128 (scale and zero per group).
        let expect = 1.0 + 2.0 + 20.0 / 128.0;
        assert!(
            (e.bits_per_weight - expect).abs() < 1e-9,
            "{}",
            e.bits_per_weight
        );
        let w = load_entry_file(&db, e).unwrap().dequantize().unwrap();
        let z = e.cols / 2;
        assert!(
            zeros_per_row(&w, e.cols).iter().all(|&n| n >= z),
            "{}",
            e.layer
        );
    }
    let cfg = tmp.path().join("cfg.json");
    ok(&search(
        &db,
        &cfg,
        &["--target-bits", "4", "--algo", "knapsack", "--quiet"],
    ));
    // A sparsity budget needs f16 values.
    fails(
        &search(
            &db,
            &tmp.path().join("no.json"),
            &["--target-sparsity", "0.5", "--quiet"],
        ),
        1,
        &["--target-sparsity", "f16"],
    );
}

#[test]
fn bad_sparsity_arguments_are_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    for (sp, needle) in [
        ("--sparsities=1.0", "0.99"),
        ("--sparsities=0.505", "steps of 0.01"),
        ("--sparsities=-0.1", "0.99"),
        // N:M entries: N zeros in every M columns, 1 ≤ N < M ≤ 8, and M must
        // divide every layer's columns (the demo has 256 and 768).
        ("--sparsities=0.5,4:4", "`4:4` is not an N:M sparsity"),
        ("--sparsities=0:4", "`0:4` is not an N:M sparsity"),
        ("--sparsities=1:9", "`1:9` is not an N:M sparsity"),
        (
            "--sparsities=2:3",
            "rows of 256 weights, not a multiple of 3",
        ),
        ("--sparsities=2:x", "neither a fraction nor N:M"),
    ] {
        let o = database(
            &tmp.path().join("bad"),
            &[
                "--calib",
                "assets/data/docs.valid.txt",
                "--method",
                "sparsegpt",
                sp,
            ],
        );
        let err = common::cli::stderr(&o);
        assert_ne!(o.status.code(), Some(0), "{sp}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains(needle), "{sp}: {err}");
        assert!(err.contains("--sparsities"), "names the option: {err}");
        assert_eq!(
            err.lines().filter(|l| l.starts_with("error:")).count(),
            1,
            "{sp}: {err}"
        );
    }
    // A joint N:M level whose quantization groups would split N:M groups.
    let o = database(
        &tmp.path().join("bad"),
        &[
            "--calib",
            "assets/data/docs.valid.txt",
            "--method",
            "sparsegpt",
            "--sparsities=2:4",
            "--sparse-bits=4",
            "--group-size=66",
        ],
    );
    fails(&o, 1, &["--group-size 66", "not a multiple of 4"]);
    assert!(!tmp.path().join("bad").join("entries").exists());
    // --target-sparsity outside [0, 1) and on a quantization database.
    let o = run(&[
        "compress",
        "--model",
        DEMO,
        "--method",
        "sparsegpt",
        "--target-sparsity",
        "1.5",
        "--calib",
        "assets/data/docs.valid.txt",
        "--eval",
        "assets/data/docs.test.txt",
        "--out",
        s(&tmp.path().join("c")),
    ]);
    fails(&o, 2, &["--target-sparsity 1.5"]);
    let o = run(&[
        "compress",
        "--model",
        DEMO,
        "--target-sparsity",
        "0.5",
        "--calib",
        "assets/data/docs.valid.txt",
        "--eval",
        "assets/data/docs.test.txt",
        "--out",
        s(&tmp.path().join("c2")),
    ]);
    let err = common::cli::stderr(&o);
    assert_ne!(o.status.code(), Some(0));
    assert!(err.contains("--method sparsegpt"), "{err}");
    // A runtime that does not serve sparse layers.
    let o = run(&[
        "database",
        "--model",
        DEMO,
        "--calib",
        "assets/data/docs.valid.txt",
        "--method",
        "sparsegpt",
        "--runtime",
        "vllm",
        "--out",
        s(&tmp.path().join("d")),
    ]);
    fails(&o, 2, &["--runtime vllm"]);
}

#[test]
fn owl_moves_sparsity_by_outliers_within_the_budget() {
    // OWL's layer sparsities lie within 0.5 ± 0.08; on levels 0.02 apart the
    // configuration is a mix, every layer within that band, and the budget
    // (every layer at 50 %) is never exceeded.
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    sparse_db(
        &db,
        "0.4,0.42,0.44,0.46,0.48,0.5,0.52,0.54,0.56,0.58,0.6",
        &[],
    );
    let cfg = tmp.path().join("owl.json");
    ok(&search(
        &db,
        &cfg,
        &["--target-sparsity", "0.5", "--algo", "owl", "--quiet"],
    ));
    let c = read_json(&cfg);
    assert_eq!(c["algo"], "owl");
    assert!(c["bits_per_weight"].as_f64().unwrap() <= 9.0 + 1e-9);
    let sparsities: Vec<f64> = c["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l["level"].as_str().unwrap()["sparsegpt-s".len()..]
                .parse::<f64>()
                .unwrap()
                / 100.0
        })
        .collect();
    let (lo, hi) = sparsities
        .iter()
        .fold((1f64, 0f64), |(a, b), &s| (a.min(s), b.max(s)));
    assert!(lo >= 0.42 - 1e-9 && hi <= 0.58 + 1e-9, "{lo}..{hi}");
    assert!(hi - lo >= 0.04, "a mix: {lo}..{hi}");
    // Deterministic.
    let again = tmp.path().join("owl2.json");
    ok(&search(
        &db,
        &again,
        &["--target-sparsity", "0.5", "--algo", "owl", "--quiet"],
    ));
    assert_eq!(read_json(&again)["layers"], c["layers"]);
    // OWL on a quantization database is a clear error.
    let q = common::demo::small_kquant_db();
    fails(
        &search(
            q,
            &tmp.path().join("owl-q.json"),
            &["--target-bits", "5", "--algo", "owl", "--quiet"],
        ),
        1,
        &["OWL needs a sparsegpt database"],
    );
}

/// Whether every aligned group of 4 weights along each row of `w` (`cols`
/// per row) has exactly 2 zeros.
fn two_of_every_four(w: &[f32], cols: usize) -> bool {
    w.chunks(cols).all(|row| {
        row.chunks(4)
            .all(|g| g.iter().filter(|&&x| x == 0.0).count() == 2)
    })
}

#[test]
fn two_four_levels_prune_two_of_four_and_round_trip() {
    // `--sparsities 2:4`: SparseGPT with 2 zeros in every 4 input columns,
    // a 3-bit rank code per group and f16 kept weights; a 50 % sparsity
    // budget takes it (uniform), the native export stores exactly those
    // bits, and eval reads it back with the database's KL.
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    sparse_db(&db, "2:4", &["--keep-hessians"]);
    let m = Manifest::read(&db).unwrap();
    assert_eq!(m.levels, ["sparsegpt-2of4"]);
    assert_eq!(m.entries.len(), 56);
    let demo = ModelFiles::open(Path::new(DEMO)).unwrap();
    let nm = |rows: usize, cols: usize| {
        // Mask: 3 bits per group of 4, padded to bytes; half the weights kept.
        8 * (rows * cols / 4 * 3).div_ceil(8) as u64 + 16 * (rows * cols / 2) as u64
    };
    for e in &m.entries {
        let Variant::Sparse(sp) = load_entry_file(&db, e).unwrap() else {
            panic!("{}: not sparse", e.layer)
        };
        assert_eq!(sp.pattern(), SparsityPattern::two_four(), "{}", e.layer);
        let w = sp.dequantize();
        assert!(two_of_every_four(&w, e.cols), "{}", e.layer);
        assert_eq!(e.storage_bits, nm(e.rows, e.cols), "{}", e.layer);
        // SparseGPT's 2:4 beats magnitude 2:4 on this layer's own Hessian.
        let h = m
            .hessians
            .iter()
            .find(|h| h.block == e.block && h.site == e.kind.site())
            .unwrap();
        let raw = std::fs::read(db.join(&h.file)).unwrap();
        let t = safetensors::SafeTensors::deserialize(&raw).unwrap();
        let data: Vec<f64> = t
            .tensor("hessian")
            .unwrap()
            .data()
            .chunks(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let h = Hessian::from_flat(h.dim, h.tokens, data).unwrap();
        let orig = demo.weights.load_f32(&e.layer, &[e.rows, e.cols]).unwrap();
        let mag = magnitude_prune(
            &orig,
            e.cols,
            &SparseParams {
                pattern: SparsityPattern::two_four(),
                quant: None,
                block_size: 128,
            },
        )
        .unwrap();
        let mag_err = relative_output_error(&orig, &mag.dequantize(), &h);
        assert!(
            e.rel_error < mag_err,
            "{}: SparseGPT {} vs magnitude {mag_err}",
            e.layer,
            e.rel_error
        );
    }

    // --target-sparsity 0.5 on a database of 2:4 alone: the budget is 2:4's
    // storage (0.75 + 8 bits per weight), and uniform takes it everywhere.
    let cfg = tmp.path().join("cfg.json");
    ok(&search(
        &db,
        &cfg,
        &["--target-sparsity", "0.5", "--algo", "uniform", "--quiet"],
    ));
    let c = read_json(&cfg);
    assert_eq!(c["bits_per_weight"].as_f64().unwrap(), 8.75);
    assert!(
        c["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["level"] == "sparsegpt-2of4")
    );

    // EvoPress on a one-level database has nothing to mutate: it returns
    // its start, the same configuration (it used to fail with "no feasible
    // mutation", which made `compress --sparsities 2:4` fail).
    let evo_cfg = tmp.path().join("evo.json");
    ok(&search(
        &db,
        &evo_cfg,
        &[
            "--target-sparsity",
            "0.5",
            "--generations",
            "2",
            "--calib",
            "assets/data/docs.valid.txt",
            "--calib-tokens",
            "2048",
            "--seq-len",
            "128",
            "--stages",
            "256:2,512:1",
            "--quiet",
        ],
    ));
    assert_eq!(read_json(&evo_cfg)["layers"], c["layers"]);

    // Native export: per layer exactly the entry's bits (mask + values),
    // 2 of every 4 weights zero when read back, and the database's KL.
    let native = tmp.path().join("native");
    ok(&export(&db, &cfg, &native, &["--format", "dynapress"]));
    let bytes = std::fs::read(native.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let files = ModelFiles::open(&native).unwrap();
    for e in &m.entries {
        let stored: usize = st
            .tensors()
            .iter()
            .filter(|(n, _)| n.starts_with(&format!("{}.", e.layer)))
            .map(|(_, t)| t.data().len())
            .sum();
        assert_eq!(8 * stored as u64, e.storage_bits, "{}", e.layer);
        let w = files.weights.load_f32(&e.layer, &[e.rows, e.cols]).unwrap();
        assert!(two_of_every_four(&w, e.cols), "{}", e.layer);
    }
    let k_db = kl(&["--model", DEMO, "--db", s(&db), "--config", s(&cfg)]);
    assert!(k_db[0] > 0.0);
    assert_eq!(kl(&["--model", s(&native)]), k_db);
    // pack → unpack gives the same file, bit for bit.
    let packed = tmp.path().join("native.dpk");
    ok(&run(&["pack", s(&native), s(&packed), "-q"]));
    let back = tmp.path().join("back");
    ok(&run(&["unpack", s(&packed), s(&back), "-q"]));
    assert!(std::fs::read(back.join("model.safetensors")).unwrap() == bytes);
}

#[test]
fn two_four_mixes_with_unstructured_levels_in_every_search() {
    // 2:4 next to fractions: ordered by its bits (0.75 + 8, below 50 %'s
    // 9), counted as 0.5 by the sparsity budget; uniform prefers the
    // unstructured 50 % (more storage within the same budget), OWL takes
    // unstructured levels at an equal fraction, and knapsack and EvoPress
    // keep the budget with the mix.
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    sparse_db(&db, "0.4,2:4,0.5,0.6", &[]);
    let m = Manifest::read(&db).unwrap();
    assert_eq!(
        m.levels,
        [
            "sparsegpt-s60",
            "sparsegpt-2of4",
            "sparsegpt-s50",
            "sparsegpt-s40"
        ]
    );
    let levels = |cfg: &Path| -> std::collections::BTreeSet<String> {
        read_json(cfg)["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["level"].as_str().unwrap().to_string())
            .collect()
    };
    for (algo, extra) in [
        ("uniform", &[][..]),
        ("knapsack", &[][..]),
        ("owl", &[][..]),
        (
            "evopress",
            &[
                "--calib",
                "assets/data/docs.valid.txt",
                "--generations",
                "4",
                "--offspring",
                "6",
                "--stages",
                "512:2,2048:1",
                "--seed",
                "3",
            ][..],
        ),
    ] {
        let cfg = tmp.path().join(format!("{algo}.json"));
        ok(&search(
            &db,
            &cfg,
            &[
                &["--target-sparsity", "0.5", "--algo", algo, "--quiet"][..],
                extra,
            ]
            .concat(),
        ));
        let bpw = read_json(&cfg)["bits_per_weight"].as_f64().unwrap();
        assert!(bpw <= 9.0 + 1e-9, "{algo}: {bpw}");
        let l = levels(&cfg);
        match algo {
            "uniform" => assert_eq!(l, ["sparsegpt-s50".to_string()].into(), "{algo}"),
            "owl" => assert!(!l.contains("sparsegpt-2of4"), "{algo}: {l:?}"),
            _ => {}
        }
    }
}
