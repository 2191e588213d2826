//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

/// The bundled demo model.
pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/demo-model")
}

pub fn sha256_file(p: &Path) -> [u8; 32] {
    Sha256::digest(std::fs::read(p).unwrap()).into()
}

/// All regular files under `dir` as sorted relative names.
pub fn list(dir: &Path) -> Vec<String> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(
                    p.strip_prefix(dir)
                        .unwrap()
                        .to_string_lossy()
                        .replace('\\', "/"),
                );
            }
        }
    }
    out.sort();
    out
}

/// Asserts that two directories hold the same files with equal sha256.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (la, lb) = (list(a), list(b));
    assert_eq!(la, lb, "file lists differ");
    for name in la {
        assert_eq!(
            sha256_file(&a.join(&name)),
            sha256_file(&b.join(&name)),
            "{name} differs"
        );
    }
}

/// A safetensors file from (name, dtype, shape, bytes), with `pad` spaces
/// after the JSON header (as writers do to align the data).
pub type Tensor = (String, String, Vec<usize>, Vec<u8>);

pub fn safetensors(tensors: &[Tensor], pad: usize) -> Vec<u8> {
    let mut header = String::from("{\"__metadata__\":{\"format\":\"pt\"}");
    let mut off = 0;
    for (name, dtype, shape, data) in tensors {
        let shape: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        header += &format!(
            ",\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{off},{}]}}",
            shape.join(","),
            off + data.len()
        );
        off += data.len();
    }
    header.push('}');
    header.extend(std::iter::repeat_n(' ', pad));
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    for (_, _, _, d) in tensors {
        out.extend_from_slice(d);
    }
    out
}

/// Parses a safetensors file into (name, dtype, shape, bytes), in offset order.
pub fn read_safetensors(bytes: &[u8]) -> Vec<(String, String, Vec<usize>, Vec<u8>)> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut out = vec![];
    for (name, v) in json {
        if name == "__metadata__" {
            continue;
        }
        let offs: Vec<usize> = v["data_offsets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        let shape = v["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        out.push((
            name,
            v["dtype"].as_str().unwrap().to_string(),
            shape,
            bytes[8 + n + offs[0]..8 + n + offs[1]].to_vec(),
        ));
    }
    out.sort_by_key(|t| t.3.as_ptr() as usize);
    out
}

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Roughly normal f32 (sum of 4 uniforms, scaled).
pub fn normalish(rng: &mut ChaCha8Rng, scale: f32) -> f32 {
    let s: f32 = (0..4)
        .map(|_| rng.next_u32() as f32 / u32::MAX as f32 - 0.5)
        .sum();
    s * scale
}

pub fn bf16_bytes(vals: impl IntoIterator<Item = u16>) -> Vec<u8> {
    vals.into_iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn f32_bytes(vals: impl IntoIterator<Item = f32>) -> Vec<u8> {
    vals.into_iter()
        .flat_map(|v| v.to_bits().to_le_bytes())
        .collect()
}

/// The edge values every float format must survive, as raw bit patterns.
pub fn special_bits16_bf16() -> Vec<u16> {
    vec![
        0x0000, 0x8000, // +-0
        0x7f80, 0xff80, // +-inf
        0x7fc0, 0xffc0, 0x7f81, 0xffff, 0x7fa5, // NaNs (quiet, signalling, payloads)
        0x0001, 0x8001, 0x007f, 0x807f, // subnormals
        0x0080, 0x7f7f, 0xff7f, // min normal, +-max
        0x3f80, 0xbf80,
    ]
}

pub fn special_bits16_f16() -> Vec<u16> {
    vec![
        0x0000, 0x8000, 0x7c00, 0xfc00, 0x7e00, 0xfe00, 0x7c01, 0xffff, 0x0001, 0x8001, 0x03ff,
        0x83ff, 0x0400, 0x7bff, 0xfbff, 0x3c00,
    ]
}

pub fn special_bits32() -> Vec<u32> {
    vec![
        0x0000_0000,
        0x8000_0000,
        0x7f80_0000,
        0xff80_0000,
        0x7fc0_0000,
        0xffc0_0000,
        0x7f80_0001,
        0xffff_ffff,
        0x7fa5_a5a5,
        0x0000_0001,
        0x8000_0001,
        0x007f_ffff,
        0x0080_0000,
        0x7f7f_ffff,
        0xff7f_ffff,
        0x3f80_0000,
    ]
}

/// Recomputes the index checksum and the header checksum of a container
/// after a test edited it (so validation beyond the checksums is reached).
pub fn rehash(c: &mut [u8]) {
    let io = u64::from_le_bytes(c[16..24].try_into().unwrap()) as usize;
    let il = u64::from_le_bytes(c[24..32].try_into().unwrap()) as usize;
    if io + il <= c.len() {
        let h = xxh3(&c[io..io + il]);
        c[32..40].copy_from_slice(&h.to_le_bytes());
    }
    let h = xxh3(&c[..56]);
    c[56..64].copy_from_slice(&h.to_le_bytes());
}

pub fn xxh3(b: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(b)
}

// ---------------------------------------------------------------------------
// dynapress-native quantized safetensors exports (format 2's quant segments).

use dynapress_compress::{GptqParams, Hessian, QuantScheme, QuantizedLinear, RtnParams, gptq, rtn};

/// A bf16 2-D tensor of the demo model as row-major f32, its first `rows`
/// rows only (all when `None`); returns the weights and the column count.
pub fn demo_weight(name: &str, rows: Option<usize>) -> (Vec<f32>, usize) {
    let bytes = std::fs::read(fixture_dir().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::BF16, "{name}");
    let cols = t.shape()[1];
    let rows = rows.unwrap_or(t.shape()[0]).min(t.shape()[0]);
    let w = t.data()[..2 * rows * cols]
        .chunks_exact(2)
        .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
        .collect();
    (w, cols)
}

/// A seeded calibration Hessian for `cols` inputs: correlated, roughly
/// normal activations (so GPTQ's error feedback has something to do).
pub fn random_hessian(cols: usize, tokens: usize, seed: u64) -> Hessian {
    let mut r = rng(seed);
    let mut x = vec![0f32; tokens * cols];
    for row in x.chunks_mut(cols) {
        let common = normalish(&mut r, 1.0);
        for v in row.iter_mut() {
            *v = normalish(&mut r, 1.0) + 0.3 * common;
        }
    }
    let mut h = Hessian::new(cols);
    h.add_batch(&x).unwrap();
    h
}

/// RTN of a demo-model layer (first `rows` rows).
pub fn rtn_layer(name: &str, rows: Option<usize>, scheme: QuantScheme) -> QuantizedLinear {
    let (w, cols) = demo_weight(name, rows);
    rtn(&w, cols, &RtnParams { scheme, clip: None }).unwrap()
}

/// GPTQ of a demo-model layer (first `rows` rows) against a seeded random
/// Hessian; with `act_order` the layer carries a permutation.
pub fn gptq_layer(
    name: &str,
    rows: Option<usize>,
    scheme: QuantScheme,
    act_order: bool,
) -> QuantizedLinear {
    let (w, cols) = demo_weight(name, rows);
    let h = random_hessian(cols, 4 * cols, 7);
    let p = GptqParams {
        scheme,
        act_order,
        ..GptqParams::default()
    };
    gptq(&w, &h, &p).unwrap()
}

/// The `dynapress.quant` metadata object for `layers`: per layer rows,
/// cols and the serde form of its scheme (plus a field readers must ignore).
pub fn quant_meta(layers: &[(String, QuantizedLinear)]) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (name, q) in layers {
        m.insert(
            name.clone(),
            serde_json::json!({
                "rows": q.rows(),
                "cols": q.cols(),
                "scheme": serde_json::to_value(q.scheme()).unwrap(),
                "provenance": format!("{:?}", q.provenance()),
            }),
        );
    }
    serde_json::Value::Object(m)
}

/// An ordinary tensor of an export: (name, dtype, shape, bytes).
pub type PlainTensor = (String, safetensors::Dtype, Vec<usize>, Vec<u8>);

/// A dynapress-native quantized safetensors file: each layer `NAME` as
/// `NAME.codes` (U8, bit-packed), `NAME.scales` (F16 `[rows, groups]`),
/// `NAME.zeros` (U8, asymmetric only) and `NAME.perm` (U16/U32, when
/// present), written by the `safetensors` crate with `meta` (normally
/// [`quant_meta`]) as the `dynapress.quant` metadata string.
pub fn quantized_safetensors(
    layers: &[(String, QuantizedLinear)],
    plain: &[PlainTensor],
    meta: Option<&serde_json::Value>,
) -> Vec<u8> {
    use dynapress_compress::quantized::BufferDtype;
    use safetensors::Dtype;
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = plain.to_vec();
    for (name, q) in layers {
        for b in q.to_buffers() {
            let dtype = match b.dtype {
                BufferDtype::U8 => Dtype::U8,
                BufferDtype::F16 => Dtype::F16,
                BufferDtype::U16 => Dtype::U16,
                BufferDtype::U32 => Dtype::U32,
            };
            owned.push((format!("{name}.{}", b.name), dtype, b.shape, b.data));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let mut info = std::collections::HashMap::new();
    info.insert("format".to_string(), "pt".to_string());
    if let Some(m) = meta {
        info.insert("dynapress.quant".to_string(), m.to_string());
    }
    safetensors::serialize(views, Some(info)).unwrap()
}

/// A bf16 tensor of the demo model, unchanged, as a plain export tensor.
pub fn demo_plain(name: &str) -> PlainTensor {
    let bytes = std::fs::read(fixture_dir().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    (
        name.to_string(),
        t.dtype(),
        t.shape().to_vec(),
        t.data().to_vec(),
    )
}
