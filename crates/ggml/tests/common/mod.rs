//! Shared helpers for the parity tests: the ggml oracle, the fixture's weights,
//! importance vectors and synthetic edge cases.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use dynapress_ggml::GgmlType;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The ten block types of the issue.
pub const QUANT_TYPES: [GgmlType; 11] = [
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::IQ4NL,
];

/// The i-quants (256-value super-blocks; IQ2_XXS and IQ2_XS need an imatrix).
pub const IQ_TYPES: [GgmlType; 6] = [
    GgmlType::IQ4XS,
    GgmlType::IQ3XXS,
    GgmlType::IQ3S,
    GgmlType::IQ2XXS,
    GgmlType::IQ2XS,
    GgmlType::IQ2S,
];

/// Where the oracle lives: `$DYNAPRESS_GGML_ORACLE`, else the build script's
/// default path under `${DYNAPRESS_CACHE:-$HOME/.cache/dynapress}`.
pub fn oracle_path() -> PathBuf {
    if let Some(p) = std::env::var_os("DYNAPRESS_GGML_ORACLE") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("DYNAPRESS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/dynapress")
        });
    cache.join("ggml-oracle-0.3.36/bin/ggml-oracle")
}

/// The oracle, or `None` with a loud message (a panic when
/// `DYNAPRESS_REQUIRE_ORACLE=1`, as CI sets it).
pub fn oracle(test: &str) -> Option<Oracle> {
    let path = oracle_path();
    if path.is_file() {
        return Some(Oracle {
            path,
            dir: tempfile::tempdir().expect("temp dir"),
        });
    }
    let msg = format!(
        "ggml-oracle not found at {} — test `{test}` SKIPPED its parity checks. \
         Build it with scripts/ggml-oracle/build.sh (or set DYNAPRESS_GGML_ORACLE).",
        path.display()
    );
    if std::env::var("DYNAPRESS_REQUIRE_ORACLE").as_deref() == Ok("1") {
        panic!("{msg}");
    }
    eprintln!(
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n!!! {msg}\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
    );
    None
}

/// A handle on the oracle binary with a scratch directory.
pub struct Oracle {
    path: PathBuf,
    dir: tempfile::TempDir,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bytes_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

impl Oracle {
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new(&self.path)
            .args(args)
            .output()
            .expect("run ggml-oracle");
        assert!(
            out.status.success(),
            "ggml-oracle {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// ggml_quantize_chunk over all rows; returns the bytes and
    /// ggml_validate_row_data's verdict.
    pub fn quantize(
        &self,
        ty: GgmlType,
        src: &[f32],
        n_per_row: usize,
        imatrix: Option<&[f32]>,
    ) -> (Vec<u8>, bool) {
        self.try_quantize(ty, src, n_per_row, imatrix)
            .unwrap_or_else(|| panic!("ggml requires an importance vector for {ty}"))
    }

    /// Like [`Oracle::quantize`], `None` where ggml refuses the type without
    /// an importance vector (ggml_quantize_requires_imatrix).
    pub fn try_quantize(
        &self,
        ty: GgmlType,
        src: &[f32],
        n_per_row: usize,
        imatrix: Option<&[f32]>,
    ) -> Option<(Vec<u8>, bool)> {
        let inp = self.file("in.f32");
        let out = self.file("out.bin");
        std::fs::write(&inp, f32_bytes(src)).unwrap();
        let n = n_per_row.to_string();
        let mut args = vec!["quantize", ty.name(), &n, path_str(&inp), path_str(&out)];
        let im = self.file("imatrix.f32");
        if let Some(q) = imatrix {
            std::fs::write(&im, f32_bytes(q)).unwrap();
            args.push(path_str(&im));
        }
        let stdout = self.run(&args);
        let valid = match stdout.trim() {
            "valid 1" => true,
            "valid 0" => false,
            "requires_imatrix" => return None,
            other => panic!("unexpected oracle output {other:?}"),
        };
        Some((std::fs::read(&out).unwrap(), valid))
    }

    /// The oracle's `types` table (one `id name block_size type_size` per line).
    pub fn types(&self) -> String {
        self.run(&["types"])
    }

    /// ggml's to_float for whole blocks.
    pub fn dequantize(&self, ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
        let inp = self.file("in.bin");
        let out = self.file("out.f32");
        std::fs::write(&inp, bytes).unwrap();
        self.run(&["dequantize", ty.name(), path_str(&inp), path_str(&out)]);
        bytes_f32(&std::fs::read(&out).unwrap())
    }

    /// FNV-1a over ggml's f16/bf16 encodings of every `stride`-th f32 bit pattern.
    pub fn convhash(&self, kind: &str, stride: u64) -> u64 {
        let s = self.run(&["convhash", kind, &stride.to_string()]);
        u64::from_str_radix(s.trim(), 16).expect("hex hash")
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// FNV-1a as the oracle's `convhash` computes it.
pub fn convhash(conv: impl Fn(f32) -> u16, stride: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut u: u64 = 0;
    while u < (1u64 << 32) {
        let v = conv(f32::from_bits(u as u32));
        h = (h ^ (v & 0xff) as u64).wrapping_mul(0x0100_0000_01b3);
        h = (h ^ (v >> 8) as u64).wrapping_mul(0x0100_0000_01b3);
        u += stride;
    }
    h
}

/// One weight matrix of the fixture, as f32 (widened from bf16).
pub struct Tensor {
    pub name: String,
    pub n_per_row: usize,
    pub data: Vec<f32>,
}

/// Every 2-D weight of the demo model (all linear layers and the embeddings).
pub fn fixture() -> &'static [Tensor] {
    static FIXTURE: OnceLock<Vec<Tensor>> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/demo-model/model.safetensors");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("parse safetensors");
        let mut out = Vec::new();
        let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
        names.sort();
        for name in names {
            let t = st.tensor(&name).unwrap();
            assert_eq!(t.dtype(), safetensors::Dtype::BF16, "{name}");
            if t.shape().len() != 2 {
                continue;
            }
            let data = t
                .data()
                .chunks_exact(2)
                .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
                .collect();
            out.push(Tensor {
                name,
                n_per_row: t.shape()[1],
                data,
            });
        }
        out
    })
}

/// The fixture's weights grouped by row length: (n_per_row, all rows concatenated, tensor names).
pub fn fixture_by_row_len() -> Vec<(usize, Vec<f32>, Vec<String>)> {
    let mut groups: Vec<(usize, Vec<f32>, Vec<String>)> = Vec::new();
    for t in fixture() {
        match groups.iter_mut().find(|g| g.0 == t.n_per_row) {
            Some(g) => {
                g.1.extend_from_slice(&t.data);
                g.2.push(t.name.clone());
            }
            None => groups.push((t.n_per_row, t.data.clone(), vec![t.name.clone()])),
        }
    }
    groups
}

/// Standard normal via Box-Muller.
pub fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(1e-300);
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// A realistic importance vector: the per-column mean of x² over 64 random
/// activations whose column scales are log-normal (σ = 1) with 1% of columns
/// 20× larger, as LLM activations have.
pub fn imatrix(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let scales: Vec<f32> = (0..n)
        .map(|_| {
            let s = normal(&mut rng).exp();
            if rng.random::<f32>() < 0.01 {
                s * 20.0
            } else {
                s
            }
        })
        .collect();
    let mut acc = vec![0.0f64; n];
    for _ in 0..64 {
        for (a, &s) in acc.iter_mut().zip(&scales) {
            let x = (s * normal(&mut rng)) as f64;
            *a += x * x;
        }
    }
    acc.iter().map(|a| (a / 64.0) as f32).collect()
}

/// Named synthetic rows of length `n` (a multiple of 256): the edge cases the
/// encoders branch on.
pub fn synthetic_rows(n: usize, seed: u64) -> Vec<(&'static str, Vec<f32>)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut gauss = |scale: f32| -> Vec<f32> { (0..n).map(|_| normal(&mut rng) * scale).collect() };
    let base = gauss(0.02);
    let mut cases: Vec<(&'static str, Vec<f32>)> = vec![
        ("all zero", vec![0.0; n]),
        ("negative zero", vec![-0.0; n]),
        ("constant positive", vec![0.5; n]),
        ("constant negative", vec![-0.25; n]),
        ("constant tiny", vec![3e-7; n]),
        ("gaussian", base.clone()),
        ("huge 1e4", gauss(1e4)),
        ("huge 1e6", gauss(1e6)),
        ("tiny 1e-6", gauss(1e-6)),
        ("tiny 1e-9", gauss(1e-9)),
        ("tiny 1e-20", gauss(1e-20)),
        ("subnormal f32", gauss(1e-39)),
    ];
    let mut outlier = base.clone();
    outlier[37] = 3.0;
    outlier[n - 5] = -4.5;
    cases.push(("one outlier per half", outlier));
    cases.push((
        "negative only",
        base.iter().map(|v| -v.abs() - 0.001).collect(),
    ));
    cases.push((
        "positive only",
        base.iter().map(|v| v.abs() + 0.001).collect(),
    ));
    // Sub-blocks of very different magnitude: small sub-block scales round to
    // 0 against the super-block scale, where ggml keeps the search's levels.
    cases.push((
        "mixed sub-block magnitudes",
        base.iter()
            .enumerate()
            .map(|(i, v)| {
                if (i / 16) % 5 == 0 {
                    v * 50.0
                } else {
                    v * 1e-3
                }
            })
            .collect(),
    ));
    cases.push((
        "sparse",
        base.iter()
            .enumerate()
            .map(|(i, v)| if i % 29 == 0 { v * 10.0 } else { 0.0 })
            .collect(),
    ));
    // Multiples of 1/8: rounding ties everywhere.
    cases.push((
        "grid values (ties)",
        (0..n)
            .map(|i| ((i * 7919) % 33) as f32 / 8.0 - 2.0)
            .collect(),
    ));
    cases.push((
        "alternating sign",
        (0..n)
            .map(|i| if i % 2 == 0 { 0.75 } else { -0.75 })
            .collect(),
    ));
    cases.push((
        "bf16-rounded",
        base.iter()
            .map(|v| f32::from_bits(v.to_bits() & 0xffff_0000))
            .collect(),
    ));
    cases.push(("ramp", (0..n).map(|i| i as f32 / n as f32 - 0.3).collect()));
    cases
}

/// Importance vectors for the synthetic rows: a realistic one, and one with
/// dead (zero) columns and a huge dynamic range.
pub fn synthetic_imatrices(n: usize) -> Vec<(&'static str, Vec<f32>)> {
    let real = imatrix(n, 7);
    let mut dead = imatrix(n, 8);
    for (i, v) in dead.iter_mut().enumerate() {
        if i % 3 == 0 {
            *v = 0.0;
        } else if i % 7 == 0 {
            *v *= 1e6;
        }
    }
    vec![("realistic", real), ("dead columns", dead)]
}

/// Index of the first differing byte, with context.
pub fn first_diff(ty: GgmlType, n_per_row: usize, ours: &[u8], theirs: &[u8]) -> Option<String> {
    if ours.len() != theirs.len() {
        return Some(format!("length {} vs {}", ours.len(), theirs.len()));
    }
    let i = ours.iter().zip(theirs).position(|(a, b)| a != b)?;
    let ts = ty.type_size();
    let row_bytes = n_per_row / ty.block_size() * ts;
    let block = i / ts;
    let count = ours
        .chunks(ts)
        .zip(theirs.chunks(ts))
        .filter(|(a, b)| a != b)
        .count();
    Some(format!(
        "{count} blocks differ; first at byte {i}: row {}, block {} of the row, byte {} of the block; ours {:02x?} theirs {:02x?}",
        i / row_bytes,
        (i % row_bytes) / ts,
        i % ts,
        &ours[block * ts..block * ts + ts],
        &theirs[block * ts..block * ts + ts]
    ))
}
