//! Bit-exact round trips: the fixture, synthetic tensors with special
//! floats, a sharded model, and the in-memory API.

mod common;

use std::path::Path;

use common::*;
use dynapress_pack::{
    FileKind, InputFile, PackOptions, PackedReader, UnpackOptions, pack_dir, pack_files, unpack,
};
use rand_chacha::rand_core::Rng;

fn opts(threads: usize, chunk_size: usize) -> PackOptions {
    PackOptions {
        threads,
        chunk_size,
        progress: None,
        overwrite: false,
    }
}

/// Packs `dir`, unpacks it, compares sha256 of every file, and checks
/// `read_file` too. Returns the container size.
fn round_trip_dir(dir: &Path, o: &PackOptions) -> u64 {
    let tmp = tempfile::tempdir().unwrap();
    let dpk = tmp.path().join("m.dpk");
    let report = pack_dir(dir, &dpk, o).unwrap();
    assert_eq!(report.output_bytes, std::fs::metadata(&dpk).unwrap().len());
    // Only the container is left next to it: no temporary files.
    assert_eq!(list(tmp.path()), vec!["m.dpk".to_string()]);
    let out = tmp.path().join("out");
    let ur = unpack(
        &dpk,
        &out,
        &UnpackOptions {
            threads: o.threads,
            progress: None,
            overwrite: false,
        },
    )
    .unwrap();
    assert_same_tree(dir, &out);
    assert_eq!(ur.files, list(dir).len());
    let reader = PackedReader::open(&dpk).unwrap();
    let names: Vec<String> = reader.files().into_iter().map(|f| f.name).collect();
    assert_eq!(names, list(dir));
    for name in &names {
        assert_eq!(
            reader.read_file(name).unwrap(),
            std::fs::read(dir.join(name)).unwrap(),
            "{name}"
        );
    }
    report.output_bytes
}

#[test]
fn fixture_round_trips_bit_exact() {
    round_trip_dir(&fixture_dir(), &PackOptions::default());
}

#[test]
fn fixture_weights_meet_the_ratio_target() {
    // Issue target: <= 66.0 % of model.safetensors (16.8 MB bf16), below
    // the file-wide order-0 plane entropy of 66.15 %.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::copy(
        fixture_dir().join("model.safetensors"),
        src.join("model.safetensors"),
    )
    .unwrap();
    let size = round_trip_dir(&src, &PackOptions::default());
    let orig = std::fs::metadata(src.join("model.safetensors"))
        .unwrap()
        .len();
    let ratio = size as f64 / orig as f64;
    assert!(ratio <= 0.660, "ratio {ratio:.4}");
    let dpk = tmp.path().join("k.dpk");
    pack_dir(&src, &dpk, &PackOptions::default()).unwrap();
    assert_eq!(
        PackedReader::open(&dpk).unwrap().files()[0].kind,
        FileKind::Safetensors
    );
}

/// Tensors exercising every special float, odd lengths, constants and
/// zeros, plus integer tensors, for each float format.
fn synthetic_tensors(seed: u64) -> Vec<Tensor> {
    let mut r = rng(seed);
    let mut t = vec![];
    let mut add = |name: &str, dtype: &str, data: Vec<u8>, width: usize| {
        t.push((
            name.to_string(),
            dtype.to_string(),
            vec![data.len() / width],
            data,
        ));
    };
    for (dtype, specials) in [
        ("BF16", special_bits16_bf16()),
        ("F16", special_bits16_f16()),
    ] {
        let lower = dtype.to_lowercase();
        // Special values alone, then sprinkled through realistic weights.
        add(
            &format!("{lower}.special"),
            dtype,
            bf16_bytes(specials.clone()),
            2,
        );
        let mixed: Vec<u16> = (0..20_001)
            .map(|i| {
                if i % 97 == 0 {
                    specials[(i / 97) % specials.len()]
                } else {
                    let x = normalish(&mut r, 0.05);
                    if dtype == "BF16" {
                        (x.to_bits() >> 16) as u16
                    } else {
                        f32_to_f16_bits(x)
                    }
                }
            })
            .collect();
        add(&format!("{lower}.mixed_odd"), dtype, bf16_bytes(mixed), 2);
        add(&format!("{lower}.zeros"), dtype, vec![0; 2 * 4096], 2);
        add(
            &format!("{lower}.neg_zeros"),
            dtype,
            bf16_bytes(vec![0x8000; 3001]),
            2,
        );
        add(
            &format!("{lower}.constant"),
            dtype,
            bf16_bytes(vec![0x3c00; 70_000]),
            2,
        );
        add(&format!("{lower}.one"), dtype, bf16_bytes([0x7fc0]), 2);
        add(
            &format!("{lower}.three"),
            dtype,
            bf16_bytes([0x0001, 0xff80, 0x1234]),
            2,
        );
        let subnormals: Vec<u16> = (0..5000).map(|_| (r.next_u32() as u16) & 0x807f).collect();
        add(
            &format!("{lower}.subnormals"),
            dtype,
            bf16_bytes(subnormals),
            2,
        );
        let random: Vec<u16> = (0..33_333).map(|_| r.next_u32() as u16).collect();
        add(
            &format!("{lower}.random_bits"),
            dtype,
            bf16_bytes(random),
            2,
        );
    }
    let specials = special_bits32();
    add(
        "f32.special",
        "F32",
        specials.iter().flat_map(|v| v.to_le_bytes()).collect(),
        4,
    );
    let mixed: Vec<u8> = (0..10_007u32)
        .flat_map(|i| {
            let v = if i % 89 == 0 {
                specials[(i as usize / 89) % specials.len()]
            } else {
                normalish(&mut r, 0.02).to_bits()
            };
            v.to_le_bytes()
        })
        .collect();
    add("f32.mixed_odd", "F32", mixed, 4);
    add("f32.zeros", "F32", vec![0; 4 * 1000], 4);
    add("f32.constant", "F32", f32_bytes(vec![1.5f32; 4099]), 4);
    add("f32.one", "F32", f32_bytes([f32::NAN]), 4);
    add(
        "f32.random_bits",
        "F32",
        (0..4 * 7777).map(|_| r.next_u32() as u8).collect(),
        4,
    );
    // Integer tensors pass through.
    add(
        "i32.codes",
        "I32",
        (0..4 * 999).map(|_| r.next_u32() as u8).collect(),
        4,
    );
    add(
        "u8.codes",
        "U8",
        (0..12_345).map(|_| (r.next_u32() % 16) as u8).collect(),
        1,
    );
    add(
        "i64.ids",
        "I64",
        (0..8 * 100).map(|_| r.next_u32() as u8).collect(),
        8,
    );
    t
}

/// f32 -> f16 bits by truncation (enough for test data).
fn f32_to_f16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
    let man = (b >> 13) & 0x3ff;
    if exp <= 0 {
        sign
    } else if exp >= 31 {
        sign | 0x7c00
    } else {
        sign | ((exp as u16) << 10) | man as u16
    }
}

#[test]
fn synthetic_special_floats_round_trip_bit_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("synthetic");
    std::fs::create_dir_all(dir.join("nested/deeper")).unwrap();
    let tensors = synthetic_tensors(1);
    // One file per group, plus all in one file with an empty tensor and
    // padding after the header.
    std::fs::write(dir.join("all.safetensors"), safetensors(&tensors, 7)).unwrap();
    let mut with_empty = tensors[..3].to_vec();
    with_empty.push(("empty".into(), "BF16".into(), vec![0], vec![]));
    std::fs::write(
        dir.join("nested/with_empty.safetensors"),
        safetensors(&with_empty, 0),
    )
    .unwrap();
    std::fs::write(dir.join("nested/deeper/empty.bin"), b"").unwrap();
    std::fs::write(
        dir.join("config.json"),
        br#"{"architectures": ["LlamaForCausalLM"]}"#,
    )
    .unwrap();
    let random: Vec<u8> = {
        let mut r = rng(2);
        (0..10_000).map(|_| r.next_u32() as u8).collect()
    };
    std::fs::write(dir.join("random.bin"), &random).unwrap();
    // Small chunks so tensors span several chunks, on 1 and 2 threads.
    for o in [opts(1, 4096), opts(2, 64 << 10), PackOptions::default()] {
        round_trip_dir(&dir, &o);
    }
}

#[test]
fn sharded_model_round_trips_bit_exact() {
    // Split the fixture's tensors into three shards with an index file, as
    // Hugging Face does for large checkpoints.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sharded");
    std::fs::create_dir(&dir).unwrap();
    let src = fixture_dir();
    for f in list(&src) {
        if f != "model.safetensors" {
            std::fs::copy(src.join(&f), dir.join(&f)).unwrap();
        }
    }
    let tensors = read_safetensors(&std::fs::read(src.join("model.safetensors")).unwrap());
    let n = tensors.len();
    let mut weight_map = serde_json::Map::new();
    for (i, part) in tensors.chunks(n.div_ceil(3)).enumerate() {
        let name = format!("model-{:05}-of-00003.safetensors", i + 1);
        for t in part {
            weight_map.insert(t.0.clone(), serde_json::Value::String(name.clone()));
        }
        std::fs::write(dir.join(&name), safetensors(part, 8 - i)).unwrap();
    }
    let index = serde_json::json!({"metadata": {"total_size": 16785920}, "weight_map": weight_map});
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_vec_pretty(&index).unwrap(),
    )
    .unwrap();
    assert_eq!(
        list(&dir)
            .iter()
            .filter(|f| f.ends_with(".safetensors"))
            .count(),
        3
    );
    round_trip_dir(&dir, &opts(2, 256 << 10));
}

#[test]
fn packing_is_deterministic_across_thread_counts() {
    let tensors = synthetic_tensors(3);
    let file = safetensors(&tensors, 0);
    let inputs = [InputFile {
        name: "a.safetensors",
        data: &file,
    }];
    let mut outs = vec![];
    for threads in [1, 2] {
        let mut buf = std::io::Cursor::new(Vec::new());
        pack_files(&inputs, &mut buf, "mem".as_ref(), &opts(threads, 8192)).unwrap();
        outs.push(buf.into_inner());
    }
    assert!(outs[0] == outs[1]);
    let reader = PackedReader::from_bytes(outs.pop().unwrap(), "mem").unwrap();
    assert_eq!(reader.read_file("a.safetensors").unwrap(), file);
}

#[test]
fn realistic_bf16_weights_compress_and_special_tensors_do_not_expand_much() {
    // Gaussian-like bf16 weights compress to well under 75 %; random bits
    // are stored (container overhead only).
    let mut r = rng(4);
    let w: Vec<u16> = (0..1 << 20)
        .map(|_| (normalish(&mut r, 0.04).to_bits() >> 16) as u16)
        .collect();
    let random: Vec<u8> = (0..1 << 21).map(|_| r.next_u32() as u8).collect();
    for (data, lo, hi) in [(bf16_bytes(w), 0.60, 0.75), (random, 1.0, 1.002)] {
        let file = safetensors(
            &[("w".into(), "BF16".into(), vec![data.len() / 2], data)],
            0,
        );
        let mut buf = std::io::Cursor::new(Vec::new());
        let rep = pack_files(
            &[InputFile {
                name: "w.safetensors",
                data: &file,
            }],
            &mut buf,
            "mem".as_ref(),
            &PackOptions::default(),
        )
        .unwrap();
        let ratio = rep.ratio();
        assert!(ratio > lo && ratio < hi, "ratio {ratio}");
        let reader = PackedReader::from_bytes(buf.into_inner(), "mem").unwrap();
        assert_eq!(reader.read_file("w.safetensors").unwrap(), file);
    }
}

#[test]
fn progress_reaches_total() {
    use std::sync::{Arc, Mutex};
    let seen = Arc::new(Mutex::new(vec![]));
    let s2 = seen.clone();
    let o = PackOptions {
        progress: Some(Arc::new(move |p| s2.lock().unwrap().push(p))),
        ..PackOptions::default()
    };
    let data = vec![7u8; 3 << 20];
    let mut buf = std::io::Cursor::new(Vec::new());
    pack_files(
        &[InputFile {
            name: "x",
            data: &data,
        }],
        &mut buf,
        "mem".as_ref(),
        &o,
    )
    .unwrap();
    let seen = seen.lock().unwrap();
    let last = seen.last().unwrap();
    assert_eq!(last.done, last.total);
    assert_eq!(last.total, data.len() as u64);
}

#[test]
fn safetensors_header_is_the_original_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let dpk = tmp.path().join("m.dpk");
    pack_dir(&fixture_dir(), &dpk, &PackOptions::default()).unwrap();
    let reader = PackedReader::open(&dpk).unwrap();
    let orig = std::fs::read(fixture_dir().join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(orig[..8].try_into().unwrap()) as usize;
    assert_eq!(
        reader.safetensors_header("model.safetensors").unwrap(),
        &orig[..8 + n]
    );
    assert!(reader.safetensors_header("config.json").is_err());
}

/// A container written by the format-1 packer (kept in
/// `tests/fixtures/v1/`, with the files it was made from in `orig/`) still
/// reads byte for byte now that the writer knows format 2.
#[test]
fn format_1_containers_still_read() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1");
    let dpk = dir.join("v1.dpk");
    let bytes = std::fs::read(&dpk).unwrap();
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 1);
    let r = PackedReader::open(&dpk).unwrap();
    let files = r.files();
    let mut names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["blob.bin", "config.json", "model.safetensors"]);
    for f in &files {
        let want = std::fs::read(dir.join("orig").join(&f.name)).unwrap();
        assert_eq!(r.read_file(&f.name).unwrap(), want, "{}", f.name);
    }
    let st = files
        .iter()
        .find(|f| f.name == "model.safetensors")
        .unwrap();
    assert_eq!(st.kind, FileKind::Safetensors);
}
