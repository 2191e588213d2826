//! imatrix files: round trips in both formats, malformed legacy files, and
//! llama.cpp interop (read what `llama-imatrix` writes; `llama-quantize`
//! accepts what we write and quantizes identically with it).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use dynapress_gguf::{GgmlType, GgufFile, Imatrix, ImatrixEntry, ImatrixFormat};
use rand::{RngExt, SeedableRng};

fn sample() -> Imatrix {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut entries = BTreeMap::new();
    for (name, n_in, n_mat) in [
        ("blk.0.attn_q.weight", 256usize, 1usize),
        ("blk.0.ffn_down.weight", 768, 1),
        ("blk.1.ffn_up_exps.weight", 64, 4),
    ] {
        let sums: Vec<f32> = (0..n_in * n_mat)
            .map(|_| rng.random::<f32>() * 1000.0)
            .collect();
        let counts: Vec<f32> = (0..n_mat)
            .map(|m| {
                if m == 2 {
                    0.0
                } else {
                    2048.0 + m as f32 * 256.0
                }
            })
            .collect();
        entries.insert(name.to_string(), ImatrixEntry { sums, counts });
    }
    Imatrix {
        entries,
        datasets: vec!["calib-a.txt".into(), "docs.valid.txt".into()],
        chunk_count: 8,
        chunk_size: 256,
    }
}

#[test]
fn gguf_format_round_trips_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("im.gguf");
    let im = sample();
    im.write_gguf(&p).unwrap();
    let (back, fmt) = Imatrix::read(&p).unwrap();
    assert_eq!(fmt, ImatrixFormat::Gguf);
    assert_eq!(back, im);
    // The layout llama.cpp expects.
    let f = GgufFile::open(&p).unwrap();
    assert_eq!(f.metadata().get_str("general.type").unwrap(), "imatrix");
    let t = f.tensor("blk.1.ffn_up_exps.weight.in_sum2").unwrap();
    assert_eq!((t.dims.clone(), t.ggml_type), (vec![64, 4], GgmlType::F32));
    assert_eq!(
        f.tensor("blk.1.ffn_up_exps.weight.counts").unwrap().dims,
        vec![1, 4]
    );
}

#[test]
fn legacy_format_round_trips_the_means() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("im.dat");
    let im = sample();
    im.write_legacy(&p).unwrap();
    let (back, fmt) = Imatrix::read(&p).unwrap();
    assert_eq!(fmt, ImatrixFormat::Legacy);
    assert_eq!(back.chunk_count, 8);
    assert_eq!(back.datasets, vec!["docs.valid.txt".to_string()]);
    assert_eq!(back.entries.len(), im.entries.len());
    for (name, e) in &im.entries {
        let b = &back.entries[name];
        assert_eq!(b.counts, vec![8.0], "legacy stores ncall");
        let (m0, m1) = (e.mean_squares(), b.mean_squares());
        assert_eq!(m0.len(), m1.len());
        for (x, y) in m0.iter().zip(&m1) {
            // mean·ncall/ncall: two f32 roundings.
            assert!(
                (x - y).abs() <= 2.0 * f32::EPSILON * x.abs(),
                "{name}: {x} vs {y}"
            );
        }
        // A matrix with count 0 gets weight 1, as in llama-quantize.
        if name.contains("exps") {
            assert!(m0[128..192].iter().all(|&v| v == 1.0));
        }
    }
}

fn legacy(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn malformed_legacy_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.dat");
    let one = 1i32.to_le_bytes();
    let name = b"w";
    let good_entry = legacy(&[
        &one,
        name,
        &5i32.to_le_bytes(),
        &2i32.to_le_bytes(),
        &[0u8; 8],
    ]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![1, 2], "only 2 bytes"),
        (0i32.to_le_bytes().to_vec(), "entry count 0"),
        (
            legacy(&[&i32::MAX.to_le_bytes(), &good_entry]),
            "cannot fit",
        ),
        (
            legacy(&[&one, &(-5i32).to_le_bytes(), &[0u8; 16]]),
            "negative length",
        ),
        (
            legacy(&[&one, &1000i32.to_le_bytes(), &[0u8; 16]]),
            "runs past the end",
        ),
        (
            legacy(&[
                &one,
                &one,
                b"w",
                &5i32.to_le_bytes(),
                &i32::MAX.to_le_bytes(),
                &[0u8; 8],
            ]),
            "runs past the end",
        ),
        (
            legacy(&[&one, &one, b"w", &5i32.to_le_bytes(), &0i32.to_le_bytes()]),
            "0 values",
        ),
        (
            legacy(&[&one, &one, &[0xff], &5i32.to_le_bytes(), &one, &[0u8; 4]]),
            "not UTF-8",
        ),
        (
            legacy(&[&2i32.to_le_bytes(), &good_entry, &good_entry]),
            "duplicate entry",
        ),
        (
            legacy(&[&one, &good_entry[..good_entry.len() - 1]]),
            "runs past the end",
        ),
    ];
    for (bytes, msg) in cases {
        std::fs::write(&p, &bytes).unwrap();
        let e = Imatrix::read(&p).unwrap_err().to_string();
        assert!(
            e.contains(msg) && e.contains("bad.dat"),
            "{e} should mention {msg}"
        );
    }
    // A good one, with and without the trailer.
    std::fs::write(&p, legacy(&[&one, &good_entry])).unwrap();
    assert_eq!(
        Imatrix::read(&p).unwrap().0.entries["w"].sums,
        vec![0.0, 0.0]
    );
}

#[test]
fn gguf_imatrix_without_counts_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.gguf");
    let d = [0u8; 16];
    dynapress_gguf::write_gguf(
        &p,
        &dynapress_gguf::Metadata::new(),
        [(
            dynapress_gguf::TensorSpec::new("w.in_sum2", GgmlType::F32, &[4, 1]),
            &d[..],
        )],
    )
    .unwrap();
    let e = Imatrix::read(&p).unwrap_err().to_string();
    assert!(e.contains("w.in_sum2 has no w.counts"), "{e}");
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn llama.cpp tool");
    let all = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{all}");
    all
}

fn quantize(bin: &Path, model: &Path, imatrix: &Path, out: &Path) -> String {
    run(Command::new(bin.join("llama-quantize"))
        .arg("--imatrix")
        .arg(imatrix)
        .arg(model)
        .arg(out)
        .args(["Q4_K_M", "2"]))
}

#[test]
fn llama_cpp_reads_our_imatrix_and_we_read_theirs() {
    let Some(bin) = common::llama_cpp_bin() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("demo-f32.gguf");
    common::write_fixture_gguf(&model, GgmlType::F32);

    // llama.cpp computes an imatrix over 8 chunks of 256 tokens.
    let theirs = dir.path().join("theirs.gguf");
    run(Command::new(bin.join("llama-imatrix"))
        .arg("-m")
        .arg(&model)
        .arg("-f")
        .arg(common::repo_root().join("assets/data/docs.valid.txt"))
        .arg("-o")
        .arg(&theirs)
        .args(["-c", "256", "--chunks", "8", "-t", "2", "--no-ppl"]));
    let (im, fmt) = Imatrix::read(&theirs).unwrap();
    assert_eq!(fmt, ImatrixFormat::Gguf);
    assert_eq!((im.chunk_count, im.chunk_size), (8, 256));
    // 7 linear layers per block, 8 blocks (output.weight too in recent versions).
    let blocks: Vec<&String> = im
        .entries
        .keys()
        .filter(|k| k.starts_with("blk."))
        .collect();
    assert_eq!(
        blocks.len(),
        56,
        "{:?}",
        im.entries.keys().collect::<Vec<_>>()
    );
    for (name, e) in &im.entries {
        let n_in = if name.contains("ffn_down") { 768 } else { 256 };
        assert_eq!(e.n_in(), n_in, "{name}");
        assert_eq!(e.counts, vec![8.0 * 256.0], "{name}: tokens seen");
        assert!(e.sums.iter().all(|&s| s.is_finite() && s > 0.0), "{name}");
    }

    // Our GGUF rewrite quantizes bit-identically to their file.
    let ours_gguf = dir.path().join("ours.gguf");
    im.write_gguf(&ours_gguf).unwrap();
    let q_theirs = dir.path().join("q-theirs.gguf");
    let q_ours = dir.path().join("q-ours.gguf");
    quantize(&bin, &model, &theirs, &q_theirs);
    let log = quantize(&bin, &model, &ours_gguf, &q_ours);
    assert!(
        log.contains(&format!(
            "loaded {} importance matrix entries",
            im.entries.len()
        )),
        "{log}"
    );
    // Same tensors, bit for bit; the metadata differs only in the imatrix file name.
    let (a, b) = (
        GgufFile::open(&q_theirs).unwrap(),
        GgufFile::open(&q_ours).unwrap(),
    );
    assert_eq!(a.tensors(), b.tensors());
    for t in a.tensors() {
        assert!(a.data(t) == b.data(t), "{} differs", t.name);
    }
    for (k, v) in a.metadata().iter() {
        if k != "quantize.imatrix.file" {
            assert_eq!(Some(v), b.metadata().get(k), "{k}");
        }
    }

    // The legacy format loads too.
    let ours_dat = dir.path().join("ours.dat");
    im.write_legacy(&ours_dat).unwrap();
    let log = quantize(&bin, &model, &ours_dat, &dir.path().join("q-dat.gguf"));
    assert!(
        log.contains(&format!(
            "loaded {} importance matrix entries",
            im.entries.len()
        )),
        "{log}"
    );
    // And the quantized file is a valid GGUF to our reader, with k-quants inside.
    let q = GgufFile::open(&q_ours).unwrap();
    let ty = q.tensor("blk.0.attn_q.weight").unwrap().ggml_type;
    assert!(
        matches!(ty, GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K),
        "{ty:?}"
    );
}
