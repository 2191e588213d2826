//! For each ggml block type candle-core 0.11 implements: encode the demo
//! model's weights and synthetic edge cases with candle (`from_float`, and
//! `from_float_imatrix` where candle has it) and with dynapress-ggml (= ggml),
//! count identical blocks, and compare decoding bit for bit. Prints markdown.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use candle_core::quantized::GgmlType as CandleType;
use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K,
    BlockQ8_0,
};
use dynapress_ggml::GgmlType;

fn as_bytes<T>(blocks: &[T]) -> &[u8] {
    // SAFETY: candle's blocks are #[repr(C)] plain-old-data (u8/i8/f16 fields).
    unsafe {
        std::slice::from_raw_parts(blocks.as_ptr() as *const u8, std::mem::size_of_val(blocks))
    }
}

fn from_bytes<T: CandleType>(bytes: &[u8]) -> Vec<T> {
    let n = bytes.len() / std::mem::size_of::<T>();
    let mut v: Vec<T> = (0..n).map(|_| T::zeros()).collect();
    // SAFETY: as above; sizes checked by the caller.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr() as *mut u8, bytes.len())
    };
    v
}

/// Candle's encoding of `src`, or None if candle panics / lacks the variant.
fn candle_encode<T: CandleType>(
    src: &[f32],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
) -> Option<Vec<u8>> {
    let nb = src.len() / T::BLCK_SIZE;
    let mut ys: Vec<T> = (0..nb).map(|_| T::zeros()).collect();
    let ok = catch_unwind(AssertUnwindSafe(|| match imatrix {
        None => T::from_float(src, &mut ys),
        Some(q) => T::from_float_imatrix(src, &mut ys, q, n_per_row),
    }));
    ok.ok().map(|_| as_bytes(&ys).to_vec())
}

fn candle_decode<T: CandleType>(bytes: &[u8], n: usize) -> Vec<f32> {
    let blocks: Vec<T> = from_bytes(bytes);
    let mut out = vec![0.0f32; n];
    T::to_float(&blocks, &mut out);
    out
}

struct Outcome {
    same: usize,
    total: usize,
    note: Option<&'static str>,
}

fn compare<T: CandleType>(ty: GgmlType, src: &[f32], n: usize, imatrix: Option<&[f32]>) -> Outcome {
    assert_eq!(std::mem::size_of::<T>(), ty.type_size(), "{ty}: block size");
    let ours = match dynapress_ggml::quantize(ty, src, n, imatrix) {
        Ok(b) => b,
        Err(_) => {
            return Outcome {
                same: 0,
                total: 0,
                note: Some("ggml refuses (overflow)"),
            };
        }
    };
    let total = ours.len() / ty.type_size();
    match candle_encode::<T>(src, n, imatrix) {
        None => Outcome {
            same: 0,
            total,
            note: Some("candle panics / unimplemented"),
        },
        Some(theirs) => {
            let same = ours
                .chunks(ty.type_size())
                .zip(theirs.chunks(ty.type_size()))
                .filter(|(a, b)| a == b)
                .count();
            Outcome {
                same,
                total,
                note: None,
            }
        }
    }
}

fn decode_same<T: CandleType>(ty: GgmlType, src: &[f32], n: usize) -> bool {
    let bytes = dynapress_ggml::quantize(ty, src, n, None).unwrap();
    let ours = dynapress_ggml::dequantize(ty, &bytes, src.len()).unwrap();
    let theirs = candle_decode::<T>(&bytes, src.len());
    ours.iter()
        .zip(&theirs)
        .all(|(a, b)| a.to_bits() == b.to_bits())
}

fn load_fixture() -> Vec<(usize, Vec<f32>)> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../assets/demo-model/model.safetensors");
    let bytes = std::fs::read(&path).expect("read demo model");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut groups: Vec<(usize, Vec<f32>)> = Vec::new();
    let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    names.sort();
    for name in names {
        let t = st.tensor(&name).unwrap();
        if t.shape().len() != 2 {
            continue;
        }
        let n = t.shape()[1];
        let v: Vec<f32> = t
            .data()
            .chunks_exact(2)
            .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
            .collect();
        match groups.iter_mut().find(|g| g.0 == n) {
            Some(g) => g.1.extend_from_slice(&v),
            None => groups.push((n, v)),
        }
    }
    groups
}

/// Deterministic edge-case rows of 512 (a subset of the parity tests' cases).
fn synthetic() -> Vec<f32> {
    let n = 512;
    let mut s: u32 = 12345;
    let mut gauss = |scale: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                let mut acc = 0.0f32;
                for _ in 0..4 {
                    s ^= s << 13;
                    s ^= s >> 17;
                    s ^= s << 5;
                    acc += (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
                }
                acc * scale
            })
            .collect()
    };
    let base = gauss(0.04);
    let mut rows = vec![
        vec![0.0; n],
        vec![0.5; n],
        vec![-0.25; n],
        base.clone(),
        gauss(40.0),
        gauss(1e-6),
    ];
    let mut outlier = base.clone();
    outlier[37] = 3.0;
    rows.push(outlier);
    rows.push(base.iter().map(|v| -v.abs() - 0.001).collect());
    rows.push(
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
    );
    rows.push(
        (0..n)
            .map(|i| ((i * 7919) % 33) as f32 / 8.0 - 2.0)
            .collect(),
    );
    rows.concat()
}

fn imatrix(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| 0.05 + ((i * 2_654_435_761usize) % 1000) as f32 / 100.0)
        .collect()
}

fn cell(o: &Outcome) -> String {
    match o.note {
        Some(note) if o.total == 0 || o.note == Some("candle panics / unimplemented") => {
            note.to_string()
        }
        _ => format!(
            "{}/{} ({:.1}%)",
            o.same,
            o.total,
            100.0 * o.same as f64 / o.total.max(1) as f64
        ),
    }
}

macro_rules! row {
    ($ty:expr, $block:ty, $fixture:expr, $syn:expr) => {{
        let ty: GgmlType = $ty;
        let mut cells = Vec::new();
        for im in [false, true] {
            let mut same = 0;
            let mut total = 0;
            let mut note = None;
            for (n, data) in $fixture.iter() {
                let q = imatrix(*n);
                let o = compare::<$block>(ty, data, *n, im.then_some(&q[..]));
                same += o.same;
                total += o.total;
                note = note.or(o.note);
            }
            cells.push(cell(&Outcome { same, total, note }));
            let q = imatrix(512);
            cells.push(cell(&compare::<$block>(
                ty,
                $syn,
                512,
                im.then_some(&q[..]),
            )));
        }
        let dec = decode_same::<$block>(ty, &$fixture[0].1, $fixture[0].0);
        println!(
            "| {ty} | {} | {} | {} | {} | {} |",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            if dec { "yes" } else { "no" }
        );
    }};
}

fn main() {
    let fixture = load_fixture();
    let syn = synthetic();
    println!("Blocks identical to ggml's (candle-core 0.11 vs ggml_quantize_chunk):\n");
    println!(
        "| type | fixture, no imatrix | synthetic, no imatrix | fixture, imatrix | synthetic, imatrix | decode bit-identical |"
    );
    println!(
        "|------|--------------------:|----------------------:|-----------------:|-------------------:|:--------------------:|"
    );
    row!(GgmlType::Q8_0, BlockQ8_0, fixture, &syn);
    row!(GgmlType::Q4_0, BlockQ4_0, fixture, &syn);
    row!(GgmlType::Q4_1, BlockQ4_1, fixture, &syn);
    row!(GgmlType::Q5_0, BlockQ5_0, fixture, &syn);
    row!(GgmlType::Q5_1, BlockQ5_1, fixture, &syn);
    row!(GgmlType::Q2K, BlockQ2K, fixture, &syn);
    row!(GgmlType::Q3K, BlockQ3K, fixture, &syn);
    row!(GgmlType::Q4K, BlockQ4K, fixture, &syn);
    row!(GgmlType::Q5K, BlockQ5K, fixture, &syn);
    row!(GgmlType::Q6K, BlockQ6K, fixture, &syn);
}
