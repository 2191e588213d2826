//! Writer → reader round trips: every metadata type (nested and empty arrays
//! included), tensors of every type with data and alignment, v2 headers, and
//! the writer's ordering, size and atomicity rules.

use dynapress_gguf::{
    Array, GgmlType, GgufError, GgufFile, GgufWriter, Metadata, TensorSpec, Value, write_gguf,
};
use rand::{RngExt, SeedableRng};

fn all_types_metadata() -> Metadata {
    let mut md = Metadata::new();
    md.set("general.architecture", "llama");
    md.set("t.u8", 200u8);
    md.set("t.i8", -100i8);
    md.set("t.u16", 65000u16);
    md.set("t.i16", -32000i16);
    md.set("t.u32", 4_000_000_000u32);
    md.set("t.i32", -2_000_000_000i32);
    md.set("t.f32", 1.5e-5f32);
    md.set("t.bool", true);
    md.set("t.string", "héllo, wörld ✓");
    md.set("t.empty_string", "");
    md.set("t.u64", u64::MAX - 1);
    md.set("t.i64", i64::MIN + 1);
    md.set("t.f64", std::f64::consts::PI);
    md.set("t.nan", f32::NAN);
    md.set("a.u8", vec![1u8, 2, 255]);
    md.set("a.i8", vec![-1i8, 0, 1]);
    md.set("a.u16", vec![1u16, 65535]);
    md.set("a.i16", vec![-1i16]);
    md.set("a.u32", vec![7u32; 5]);
    md.set("a.i32", vec![-1i32, 3, 5]);
    md.set("a.f32", vec![0.5f32, -0.25, f32::INFINITY]);
    md.set("a.bool", vec![true, false, true]);
    md.set(
        "a.string",
        vec!["a".to_string(), String::new(), "Ġthe".to_string()],
    );
    md.set("a.u64", vec![u64::MAX]);
    md.set("a.i64", vec![i64::MIN]);
    md.set("a.f64", vec![1e300f64, -0.0]);
    md.set("a.empty", Vec::<String>::new());
    md.set(
        "a.nested",
        vec![
            Array::U32(vec![1, 2]),
            Array::String(vec!["x".into()]),
            Array::Array(vec![Array::F32(vec![]), Array::I64(vec![-5])]),
        ],
    );
    md
}

fn tensor_data(spec: &TensorSpec, seed: u64) -> Vec<u8> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..spec.n_bytes().unwrap())
        .map(|_| rng.random::<u8>())
        .collect()
}

fn specs() -> Vec<TensorSpec> {
    vec![
        TensorSpec::from_shape("token_embd.weight", GgmlType::F32, &[3, 5]),
        TensorSpec::from_shape("blk.0.attn_norm.weight", GgmlType::F32, &[7]),
        TensorSpec::from_shape("f16", GgmlType::F16, &[2, 3, 5]),
        TensorSpec::from_shape("bf16", GgmlType::BF16, &[1, 1, 2, 9]),
        TensorSpec::from_shape("q4_0", GgmlType::Q4_0, &[3, 64]),
        TensorSpec::from_shape("q4_1", GgmlType::Q4_1, &[1, 32]),
        TensorSpec::from_shape("q5_0", GgmlType::Q5_0, &[2, 32]),
        TensorSpec::from_shape("q5_1", GgmlType::Q5_1, &[2, 96]),
        TensorSpec::from_shape("q8_0", GgmlType::Q8_0, &[4, 32]),
        TensorSpec::from_shape("q2_k", GgmlType::Q2K, &[2, 256]),
        TensorSpec::from_shape("q3_k", GgmlType::Q3K, &[1, 512]),
        TensorSpec::from_shape("q4_k", GgmlType::Q4K, &[3, 256]),
        TensorSpec::from_shape("q5_k", GgmlType::Q5K, &[1, 256]),
        TensorSpec::from_shape("q6_k", GgmlType::Q6K, &[2, 256]),
        TensorSpec::new("empty", GgmlType::F32, &[0, 4]),
    ]
}

fn write_and_read(
    md: &Metadata,
    specs: &[TensorSpec],
) -> (GgufFile, Vec<Vec<u8>>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let data: Vec<Vec<u8>> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| tensor_data(s, i as u64))
        .collect();
    write_gguf(
        &path,
        md,
        specs.iter().cloned().zip(data.iter().map(Vec::as_slice)),
    )
    .unwrap();
    (GgufFile::open(&path).unwrap(), data, dir)
}

fn same_value(a: &Value, b: &Value) -> bool {
    // NaN != NaN: compare floats by bits.
    match (a, b) {
        (Value::F32(x), Value::F32(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

#[test]
fn metadata_and_tensors_round_trip() {
    let md = all_types_metadata();
    let specs = specs();
    let (f, data, _dir) = write_and_read(&md, &specs);
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.metadata().len(), md.len());
    for ((k1, v1), (k2, v2)) in md.iter().zip(f.metadata().iter()) {
        assert_eq!(k1, k2);
        assert!(same_value(v1, v2), "{k1}: {v1:?} != {v2:?}");
    }
    assert_eq!(f.tensors().len(), specs.len());
    for ((spec, bytes), info) in specs.iter().zip(&data).zip(f.tensors()) {
        assert_eq!(info.name, spec.name);
        assert_eq!(info.dims, spec.dims);
        assert_eq!(info.ggml_type, spec.ggml_type);
        assert_eq!(info.offset % 32, 0);
        assert_eq!(
            f.tensor_bytes(&spec.name).unwrap(),
            &bytes[..],
            "{}",
            spec.name
        );
        assert_eq!((f.data_offset() + info.offset) % 32, 0);
    }
    // Row-major shape is the reverse of the ggml dims.
    assert_eq!(f.tensor("f16").unwrap().shape(), vec![2, 3, 5]);
    assert!(matches!(
        f.tensor_bytes("nope"),
        Err(GgufError::TensorNotFound { .. })
    ));
}

#[test]
fn float_tensors_decode() {
    let vals = [1.0f32, -2.5, 0.0, 65504.0, 1e-3, 3.0];
    let f32b: Vec<u8> = vals.iter().flat_map(|x| x.to_le_bytes()).collect();
    let f16b: Vec<u8> = vals
        .iter()
        .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
        .collect();
    let bf16b: Vec<u8> = vals
        .iter()
        .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.gguf");
    write_gguf(
        &path,
        &Metadata::new(),
        [
            (TensorSpec::from_shape("a", GgmlType::F32, &[6]), &f32b[..]),
            (TensorSpec::from_shape("b", GgmlType::F16, &[6]), &f16b[..]),
            (
                TensorSpec::from_shape("c", GgmlType::BF16, &[6]),
                &bf16b[..],
            ),
            (
                TensorSpec::from_shape("q", GgmlType::Q8_0, &[32]),
                &[0u8; 34][..],
            ),
        ],
    )
    .unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.tensor_f32("a").unwrap(), vals);
    let f16: Vec<f32> = vals
        .iter()
        .map(|x| half::f16::from_f32(*x).to_f32())
        .collect();
    assert_eq!(f.tensor_f32("b").unwrap(), f16);
    let bf16: Vec<f32> = vals
        .iter()
        .map(|x| half::bf16::from_f32(*x).to_f32())
        .collect();
    assert_eq!(f.tensor_f32("c").unwrap(), bf16);
    assert!(matches!(f.tensor_f32("q"), Err(GgufError::NotFloat { .. })));
}

#[test]
fn custom_alignment_is_honoured() {
    for align in [1u32, 8, 64, 4096] {
        let mut md = Metadata::new();
        md.set("general.alignment", align);
        let specs = vec![
            TensorSpec::from_shape("a", GgmlType::F32, &[3]),
            TensorSpec::from_shape("b", GgmlType::Q8_0, &[32]),
            TensorSpec::from_shape("c", GgmlType::F16, &[5]),
        ];
        let (f, data, _dir) = write_and_read(&md, &specs);
        assert_eq!(f.alignment(), align);
        assert_eq!(f.data_offset() % u64::from(align), 0);
        for (t, d) in f.tensors().iter().zip(&data) {
            assert_eq!(t.offset % u64::from(align), 0);
            assert_eq!(f.data(t), &d[..]);
        }
    }
    let mut md = Metadata::new();
    md.set("general.alignment", 48u32);
    let dir = tempfile::tempdir().unwrap();
    let e = GgufWriter::create(dir.path().join("x.gguf"), &md, vec![]).unwrap_err();
    assert!(e.to_string().contains("power-of-two"), "{e}");
    md.set("general.alignment", 64u64);
    assert!(GgufWriter::create(dir.path().join("x.gguf"), &md, vec![]).is_err());
}

#[test]
fn reads_version_2_headers() {
    let (f, data, dir) = write_and_read(&all_types_metadata(), &specs()[..3]);
    let path = f.path().to_path_buf();
    drop(f);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let v2 = GgufFile::from_bytes(bytes, dir.path().join("v2.gguf")).unwrap();
    assert_eq!(v2.version(), 2);
    assert_eq!(v2.tensor_bytes("f16").unwrap(), &data[2][..]);
}

#[test]
fn empty_file_has_no_tensors() {
    let (f, _, _dir) = write_and_read(&Metadata::new(), &[]);
    assert!(f.metadata().is_empty());
    assert!(f.tensors().is_empty());
}

#[test]
fn writer_enforces_order_and_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.gguf");
    let specs = vec![
        TensorSpec::from_shape("a", GgmlType::F32, &[2]),
        TensorSpec::from_shape("b", GgmlType::F32, &[3]),
    ];
    let mut w = GgufWriter::create(&path, &Metadata::new(), specs).unwrap();
    assert_eq!(w.next_tensor().unwrap().name, "a");
    let e = w.write_tensor("b", &[0; 12]).unwrap_err().to_string();
    assert!(e.contains("out of order") && e.contains("\"a\""), "{e}");
    let e = w.write_tensor("a", &[0; 7]).unwrap_err().to_string();
    assert!(e.contains("7 bytes given") && e.contains("needs 8"), "{e}");
    w.write_tensor("a", &[0; 8]).unwrap();
    // Finishing early is an error and leaves no file behind.
    let e = w.finish().unwrap_err().to_string();
    assert!(e.contains("\"b\"") && e.contains("never written"), "{e}");
    assert!(!path.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "temporary file left behind"
    );
}

#[test]
fn dropping_an_unfinished_writer_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.gguf");
    std::fs::write(&path, b"old contents").unwrap();
    {
        let mut w = GgufWriter::create(
            &path,
            &Metadata::new(),
            vec![TensorSpec::from_shape("a", GgmlType::F32, &[1])],
        )
        .unwrap();
        w.write_tensor("a", &[0; 4]).unwrap();
        // Dropped without finish.
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"old contents");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn writer_rejects_invalid_specs() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.gguf");
    let md = Metadata::new();
    let cases = [
        (
            vec![TensorSpec::from_shape("q", GgmlType::Q4K, &[2, 100])],
            "multiple of the Q4_K block size 256",
        ),
        (
            vec![
                TensorSpec::from_shape("a", GgmlType::F32, &[1]),
                TensorSpec::from_shape("a", GgmlType::F32, &[1]),
            ],
            "duplicate",
        ),
        (
            vec![TensorSpec::from_shape("x".repeat(64), GgmlType::F32, &[1])],
            "1..=63 bytes",
        ),
        (
            vec![TensorSpec::new("five", GgmlType::F32, &[1, 1, 1, 1, 1])],
            "5 dimensions",
        ),
        (
            vec![TensorSpec::new("big", GgmlType::F32, &[u64::MAX / 2, 4])],
            "overflows",
        ),
    ];
    for (specs, msg) in cases {
        let e = GgufWriter::create(&p, &md, specs).unwrap_err().to_string();
        assert!(e.contains(msg), "{e} should mention {msg}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn metadata_set_replaces_in_place() {
    let mut md = Metadata::new();
    md.set("a", 1u32);
    md.set("b", "x");
    md.set("a", 2u32);
    assert_eq!(md.iter().map(|(k, _)| k).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(md.get_u64("a").unwrap(), 2);
    assert!(
        md.get_str("a")
            .unwrap_err()
            .to_string()
            .contains("expected a string")
    );
    assert!(
        md.get_u64("zzz")
            .unwrap_err()
            .to_string()
            .contains("missing")
    );
    assert_eq!(md.remove("a"), Some(Value::U32(2)));
    assert_eq!(md.len(), 1);
}

#[cfg(unix)]
#[test]
fn output_files_get_the_mode_file_create_would_give() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("ref");
    std::fs::File::create(&reference).unwrap();
    let want = std::fs::metadata(&reference).unwrap().permissions().mode() & 0o777;
    let p = dir.path().join("m.gguf");
    write_gguf(&p, &Metadata::new(), []).unwrap();
    assert_eq!(
        std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        want
    );
    let im = dynapress_gguf::Imatrix {
        entries: [(
            "w".to_string(),
            dynapress_gguf::ImatrixEntry::new(vec![1.0; 4], 2.0),
        )]
        .into(),
        ..Default::default()
    };
    for (name, legacy) in [("im.gguf", false), ("im.dat", true)] {
        let p = dir.path().join(name);
        if legacy {
            im.write_legacy(&p).unwrap()
        } else {
            im.write_gguf(&p).unwrap()
        }
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            want,
            "{name}"
        );
    }
}
