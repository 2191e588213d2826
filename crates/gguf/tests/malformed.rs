//! Hand-crafted malformed files: each must be refused with an error that says
//! what is wrong, without panicking and without allocating what a corrupt
//! length asks for. Plus a seeded mutation sweep over a valid file.

use dynapress_gguf::{
    GgmlType, GgufFile, Metadata, ParseError, TensorSpec, parse_header, write_gguf,
};
use rand::{RngExt, SeedableRng};

/// A byte-level GGUF builder that writes whatever it is told.
#[derive(Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw(b"GGUF".to_vec());
        r.u32(version).u64(n_tensors).u64(n_kv);
        r
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &[u8]) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s);
        self
    }
    fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.str(key.as_bytes()).u32(4).u32(v)
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name.as_bytes()).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    fn pad(&mut self, align: usize) -> &mut Self {
        while !self.0.len().is_multiple_of(align) {
            self.0.push(0);
        }
        self
    }
    fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.extend(std::iter::repeat_n(0u8, n));
        self
    }
    fn parse(&self) -> Result<dynapress_gguf::Header, ParseError> {
        parse_header(&self.0)
    }
}

fn err(r: &Raw) -> ParseError {
    r.parse().expect_err("malformed file was accepted")
}

/// One F32 tensor "w" of 4 values after one u32 key.
fn valid() -> Raw {
    let mut r = Raw::header(3, 1, 1);
    r.kv_u32("llama.block_count", 1)
        .tensor("w", &[4], 0, 0)
        .pad(32)
        .zeros(16);
    r
}

#[test]
fn the_baseline_is_valid() {
    let h = valid().parse().unwrap();
    assert_eq!(h.tensors[0].n_bytes, 16);
    assert_eq!(h.data_offset % 32, 0);
}

#[test]
fn truncated_anywhere_is_an_error() {
    let full = valid().0;
    for len in 0..full.len() {
        let e = parse_header(&full[..len]).expect_err("truncated file accepted");
        let msg = e.to_string();
        assert!(
            matches!(
                e,
                ParseError::Truncated { .. }
                    | ParseError::Malformed { .. }
                    | ParseError::TensorOutOfBounds { .. }
            ),
            "length {len}: {msg}"
        );
    }
    let e = parse_header(&full[..full.len() - 1]).unwrap_err();
    assert!(
        matches!(e, ParseError::TensorOutOfBounds { ref tensor, .. } if tensor == "w"),
        "{e}"
    );
}

#[test]
fn truncated_file_on_disk_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.gguf");
    let data = [0u8; 64];
    write_gguf(
        &path,
        &Metadata::new(),
        [(TensorSpec::from_shape("t", GgmlType::F32, &[16]), &data[..])],
    )
    .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let msg = GgufFile::open(&path).unwrap_err().to_string();
    assert!(
        msg.contains("cut.gguf") && msg.contains("\"t\"") && msg.contains("past the end"),
        "{msg}"
    );
    std::fs::write(&path, b"").unwrap();
    let msg = GgufFile::open(&path).unwrap_err().to_string();
    assert!(msg.contains("truncated: magic"), "{msg}");
}

#[test]
fn tensor_offset_past_the_end() {
    let mut r = Raw::header(3, 1, 0);
    r.tensor("w", &[4], 0, 1 << 40).pad(32).zeros(16);
    match err(&r) {
        ParseError::TensorOutOfBounds {
            tensor,
            offset,
            size,
            data_len,
        } => {
            assert_eq!(
                (tensor.as_str(), offset, size, data_len),
                ("w", 1 << 40, 16, 16)
            );
        }
        e => panic!("{e}"),
    }
    // offset + size overflows u64.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("w", &[4], 0, u64::MAX - 31).pad(32).zeros(16);
    assert!(matches!(err(&r), ParseError::TensorOutOfBounds { .. }));
}

#[test]
fn unknown_tensor_type_names_id_and_tensor() {
    let mut r = Raw::header(3, 1, 0);
    r.tensor("blk.0.ffn_up.weight", &[256], 19, 0)
        .pad(32)
        .zeros(1024);
    let e = err(&r);
    assert_eq!(
        e,
        ParseError::UnknownTensorType {
            tensor: "blk.0.ffn_up.weight".into(),
            type_id: 19
        }
    );
    let msg = e.to_string();
    assert!(
        msg.contains("blk.0.ffn_up.weight") && msg.contains("19"),
        "{msg}"
    );
}

#[test]
fn unknown_value_type() {
    let mut r = Raw::header(3, 0, 1);
    r.str(b"k").u32(13).u32(0);
    assert!(
        matches!(err(&r), ParseError::UnknownValueType { type_id: 13, ref key, .. } if key == "k")
    );
    // Inside an array.
    let mut r = Raw::header(3, 0, 1);
    r.str(b"k").u32(9).u32(99).u64(0);
    assert!(matches!(
        err(&r),
        ParseError::UnknownValueType { type_id: 99, .. }
    ));
}

#[test]
fn huge_array_length_is_refused_before_allocating() {
    for elem in [0u32, 6, 8, 9, 12] {
        let mut r = Raw::header(3, 0, 1);
        r.str(b"tokenizer.ggml.tokens")
            .u32(9)
            .u32(elem)
            .u64(u64::MAX / 2)
            .zeros(64);
        match err(&r) {
            ParseError::ArrayTooLong {
                key,
                len,
                remaining,
                ..
            } => {
                assert_eq!(
                    (key.as_str(), len, remaining),
                    ("tokenizer.ggml.tokens", u64::MAX / 2, 64)
                );
            }
            e => panic!("elem type {elem}: {e}"),
        }
    }
    // 1 << 40 strings need at least 8 TiB: refused though each u8 would be 1 byte.
    let mut r = Raw::header(3, 0, 1);
    r.str(b"k").u32(9).u32(8).u64(1 << 40).zeros(1000);
    assert!(matches!(err(&r), ParseError::ArrayTooLong { .. }));
}

#[test]
fn huge_counts_and_lengths_are_refused() {
    // n_kv and n_tensors far beyond the file size.
    let r = Raw::header(3, 0, u64::MAX);
    assert!(err(&r).to_string().contains("metadata key/value pairs"));
    let r = Raw::header(3, 1 << 60, 0);
    assert!(err(&r).to_string().contains("tensor infos"));
    // A string length beyond the file.
    let mut r = Raw::header(3, 0, 1);
    r.u64(u64::MAX).zeros(8);
    assert!(matches!(
        err(&r),
        ParseError::Truncated {
            needed: u64::MAX,
            ..
        }
    ));
}

#[test]
fn non_utf8_strings() {
    // In a key.
    let mut r = Raw::header(3, 0, 1);
    r.str(b"bad\xffkey").u32(4).u32(1);
    assert!(matches!(
        err(&r),
        ParseError::InvalidUtf8 { offset: 24, .. }
    ));
    // In a string value.
    let mut r = Raw::header(3, 0, 1);
    r.str(b"general.name").u32(8).str(b"\xc3\x28");
    let e = err(&r);
    assert!(
        matches!(e, ParseError::InvalidUtf8 { ref what, .. } if what.contains("general.name")),
        "{e}"
    );
    // In a string array element.
    let mut r = Raw::header(3, 0, 1);
    r.str(b"tokenizer.ggml.tokens")
        .u32(9)
        .u32(8)
        .u64(2)
        .str(b"ok")
        .str(b"\x80");
    assert!(err(&r).to_string().contains("element 1"));
    // In a tensor name.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("x", &[4], 0, 0).pad(32).zeros(16);
    let pos = r.0.iter().position(|&b| b == b'x').unwrap();
    r.0[pos] = 0xfe;
    assert!(err(&r).to_string().contains("name of tensor #0"));
}

#[test]
fn bad_magic_and_versions() {
    let mut r = valid();
    r.0[..4].copy_from_slice(b"GGML");
    assert!(matches!(err(&r), ParseError::BadMagic { found } if &found == b"GGML"));
    for (v, hint) in [
        (1u32, "v1"),
        (3u32.swap_bytes(), "big-endian"),
        (4, "versions 2 and 3"),
    ] {
        let mut r = valid();
        r.0[4..8].copy_from_slice(&v.to_le_bytes());
        let msg = err(&r).to_string();
        assert!(msg.contains(hint), "{msg}");
    }
}

#[test]
fn duplicates_and_inconsistent_tensors() {
    let mut r = Raw::header(3, 0, 2);
    r.kv_u32("a", 1).kv_u32("a", 2);
    assert_eq!(err(&r), ParseError::DuplicateKey { key: "a".into() });

    let mut r = Raw::header(3, 2, 0);
    r.tensor("w", &[4], 0, 0)
        .tensor("w", &[4], 0, 32)
        .pad(32)
        .zeros(64);
    assert_eq!(err(&r), ParseError::DuplicateTensor { name: "w".into() });

    let mut r = Raw::header(3, 2, 0);
    r.tensor("a", &[16], 0, 0)
        .tensor("b", &[4], 0, 32)
        .pad(32)
        .zeros(64);
    assert!(err(&r).to_string().contains("overlaps tensor \"a\""));

    let mut r = Raw::header(3, 1, 0);
    r.tensor("w", &[4], 0, 8).pad(32).zeros(64);
    assert!(
        err(&r)
            .to_string()
            .contains("not a multiple of the alignment 32")
    );

    let mut r = Raw::header(3, 1, 0);
    r.tensor("w", &[1, 1, 1, 1, 1], 0, 0).pad(32).zeros(64);
    assert!(err(&r).to_string().contains("5 dimensions"));

    let mut r = Raw::header(3, 1, 0);
    r.tensor("w", &[1 << 32, 1 << 32], 0, 0).pad(32).zeros(64);
    assert!(err(&r).to_string().contains("overflows"));

    let mut r = Raw::header(3, 1, 0);
    r.tensor("w", &[u64::MAX], 0, 0).pad(32).zeros(64);
    assert!(err(&r).to_string().contains("negative"));

    let mut r = Raw::header(3, 1, 0);
    r.tensor("q", &[100], 12, 0).pad(32).zeros(1024);
    assert!(
        err(&r)
            .to_string()
            .contains("not a multiple of the Q4_K block size 256")
    );

    let mut r = Raw::header(3, 0, 1);
    r.str(b"").u32(4).u32(0);
    assert!(err(&r).to_string().contains("empty"));
}

#[test]
fn bad_alignment_values() {
    for (ty, val) in [(4u32, 0u32), (4, 24), (5, 32)] {
        let mut r = Raw::header(3, 0, 1);
        r.str(b"general.alignment").u32(ty).u32(val);
        let msg = err(&r).to_string();
        assert!(
            msg.contains("general.alignment must be a power-of-two u32"),
            "{msg}"
        );
    }
}

#[test]
fn deep_nesting_is_refused() {
    let mut r = Raw::header(3, 0, 1);
    r.str(b"deep").u32(9);
    for _ in 0..10_000 {
        r.u32(9).u64(1);
    }
    r.u32(0).u64(0);
    assert!(matches!(err(&r), ParseError::NestingTooDeep { .. }));
}

/// Seeded mutation sweep: random byte edits, length-field edits and
/// truncations of a realistic file. Every outcome must be Ok or Err — a panic
/// fails the test — and an Ok header must describe data inside the buffer.
#[test]
fn mutations_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let mut md = Metadata::new();
    md.set("general.architecture", "llama");
    md.set(
        "tokenizer.ggml.tokens",
        vec!["a".to_string(), "bc".into(), "Ġd".into()],
    );
    md.set("x.f32s", vec![1.0f32, 2.0]);
    md.set("x.nested", vec![dynapress_gguf::Array::U8(vec![1, 2])]);
    let w = [0u8; 4 * 64];
    let q = [0u8; 144];
    write_gguf(
        &path,
        &md,
        [
            (
                TensorSpec::from_shape("blk.0.attn_q.weight", GgmlType::F32, &[4, 16]),
                &w[..],
            ),
            (
                TensorSpec::from_shape("blk.0.ffn_up.weight", GgmlType::Q4K, &[1, 256]),
                &q[..],
            ),
        ],
    )
    .unwrap();
    let base = std::fs::read(&path).unwrap();
    parse_header(&base).unwrap();

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x6767_7566);
    let (mut ok, mut bad) = (0, 0);
    for _ in 0..20_000 {
        let mut b = base.clone();
        match rng.random_range(0..4) {
            0 => {
                for _ in 0..rng.random_range(1..4) {
                    let i = rng.random_range(0..b.len());
                    b[i] = rng.random();
                }
            }
            1 => {
                // Overwrite an 8-byte window with an extreme value.
                let i = rng.random_range(0..b.len() - 8);
                let v: u64 =
                    [0, 1, u64::MAX, 1 << 32, 1 << 62, rng.random()][rng.random_range(0..6)];
                b[i..i + 8].copy_from_slice(&v.to_le_bytes());
            }
            2 => b.truncate(rng.random_range(0..b.len())),
            _ => {
                let i = rng.random_range(0..b.len());
                b.insert(i, rng.random());
            }
        }
        match parse_header(&b) {
            Ok(h) => {
                ok += 1;
                for t in &h.tensors {
                    assert!(h.data_offset + t.offset + t.n_bytes <= b.len() as u64);
                }
            }
            Err(_) => bad += 1,
        }
    }
    assert!(bad > 10_000, "only {bad} mutations rejected");
    eprintln!("mutations: {ok} still valid, {bad} rejected");
}
