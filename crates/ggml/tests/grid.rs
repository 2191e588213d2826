//! The GPTQ-facing grid API: choosing a block's parameters, rounding each
//! weight and assembling the bytes reproduces `quantize` (which tests/oracle.rs
//! checks against ggml); decoded values agree with `dequantize`; values moved
//! off the original weights (as GPTQ moves them) still round to valid levels
//! whose decoded values are what the assembled block decodes to.

mod common;

use common::*;
use dynapress_ggml::{BlockGrid, Error, GgmlType, block_grids, dequantize, quantize};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Rebuilds `rows` block by block through `block_grids` and checks bytes and values.
fn rebuild(ty: GgmlType, rows: &[f32], n: usize, imatrix: Option<&[f32]>, label: &str) -> usize {
    let reference = quantize(ty, rows, n, imatrix).unwrap();
    let decoded = dequantize(ty, &reference, rows.len()).unwrap();
    let (bs, ts) = (ty.block_size(), ty.type_size());
    let nrows = rows.len() / n;
    let mut fixed = 0;
    for b in 0..n / bs {
        let grids = block_grids(ty, rows, n, b, imatrix).unwrap();
        assert_eq!(grids.len(), nrows);
        for (r, g) in grids.iter().enumerate() {
            let x = &rows[r * n + b * bs..r * n + (b + 1) * bs];
            let mut codes = vec![0u8; bs];
            for j in 0..bs {
                let (c, v) = g.round(j, x[j]);
                codes[j] = c;
                let want = decoded[r * n + b * bs + j];
                assert_eq!(
                    v.to_bits(),
                    want.to_bits(),
                    "{label}: row {r} block {b} pos {j}: grid value {v:e}, decoded {want:e}"
                );
                fixed += g.is_fixed(j) as usize;
            }
            let off = r * (n / bs * ts) + b * ts;
            assert_eq!(
                g.to_bytes(&codes),
                &reference[off..off + ts],
                "{label}: row {r} block {b}"
            );
        }
    }
    fixed
}

fn grid_reproduces_quantize(ty: GgmlType) {
    // A slice of the fixture: the first 64 rows of an MLP down projection (768
    // per row) and of an attention projection (256 per row).
    let fx = fixture();
    let down = fx.iter().find(|t| t.n_per_row == 768).unwrap();
    let q = fx
        .iter()
        .find(|t| t.name.ends_with("q_proj.weight"))
        .unwrap();
    for t in [down, q] {
        let rows = &t.data[..64 * t.n_per_row];
        let im = imatrix(t.n_per_row, 5);
        rebuild(ty, rows, t.n_per_row, None, &format!("{ty} {}", t.name));
        rebuild(
            ty,
            rows,
            t.n_per_row,
            Some(&im),
            &format!("{ty} {} + imatrix", t.name),
        );
    }
    // Synthetic edge cases (those ggml can encode).
    let n = 512;
    let ims = synthetic_imatrices(n);
    let mut fixed = 0;
    for (case, row) in synthetic_rows(n, 42) {
        for imx in [None, Some(&ims[0].1[..]), Some(&ims[1].1[..])] {
            if quantize(ty, &row, n, imx).is_ok() {
                fixed += rebuild(ty, &row, n, imx, &format!("{ty} `{case}`"));
            }
        }
    }
    // The edge cases must reach the branch where a sub-block's decoded scale is
    // zero and ggml keeps the scale search's levels. (IQ4_XS has no such
    // branch: a zero block scale re-rounds every weight to the table entry
    // nearest 0.)
    if ty.block_size() == 256 && ty != GgmlType::IQ4XS {
        assert!(
            fixed > 0,
            "{ty}: no synthetic case exercised a zero sub-block scale"
        );
    }
}

/// Values away from the original weights (GPTQ's error feedback moves them,
/// even far outside the block's range) round to valid codes; the assembled block
/// decodes to exactly the values `round` reported; and rounding is monotone.
fn perturbed_rounding(ty: GgmlType) {
    let fx = fixture();
    let t = fx
        .iter()
        .find(|t| t.name.ends_with("gate_proj.weight"))
        .unwrap();
    let n = t.n_per_row;
    let rows = &t.data[..16 * n];
    let im = imatrix(n, 11);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let bs = ty.block_size();
    for imx in [None, Some(&im[..])] {
        for b in 0..n / bs {
            for (r, g) in block_grids(ty, rows, n, b, imx).unwrap().iter().enumerate() {
                let x = &rows[r * n + b * bs..r * n + (b + 1) * bs];
                let spread = x.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
                let moved: Vec<f32> = x
                    .iter()
                    .map(|v| v + 1.5 * spread * normal(&mut rng))
                    .collect();
                let rounded: Vec<(u8, f32)> = moved
                    .iter()
                    .enumerate()
                    .map(|(j, &v)| g.round(j, v))
                    .collect();
                assert!(rounded.iter().all(|&(c, _)| (c as u16) < g.levels()));
                let codes: Vec<u8> = rounded.iter().map(|r| r.0).collect();
                let back = dequantize(ty, &g.to_bytes(&codes), bs).unwrap();
                for j in 0..bs {
                    assert_eq!(
                        back[j].to_bits(),
                        rounded[j].1.to_bits(),
                        "{ty} row {r} block {b} pos {j}"
                    );
                }
                // Monotone: a larger value never decodes smaller.
                for (j, &xj) in x.iter().enumerate() {
                    let mut prev = f32::NEG_INFINITY;
                    for k in -40..=40 {
                        let v = xj + spread * k as f32 / 10.0;
                        let (_, q) = g.round(j, v);
                        assert!(
                            q >= prev,
                            "{ty} row {r} block {b} pos {j}: {v} -> {q} after {prev}"
                        );
                        prev = q;
                    }
                }
            }
        }
    }
}

macro_rules! grid_tests {
    ($($a:ident, $b:ident => $ty:expr;)*) => {$(
        #[test]
        fn $a() { grid_reproduces_quantize($ty) }
        #[test]
        fn $b() { perturbed_rounding($ty) }
    )*};
}

grid_tests! {
    grid_q8_0, perturbed_q8_0 => GgmlType::Q8_0;
    grid_q4_0, perturbed_q4_0 => GgmlType::Q4_0;
    grid_q4_1, perturbed_q4_1 => GgmlType::Q4_1;
    grid_q5_0, perturbed_q5_0 => GgmlType::Q5_0;
    grid_q5_1, perturbed_q5_1 => GgmlType::Q5_1;
    grid_q2_k, perturbed_q2_k => GgmlType::Q2K;
    grid_q3_k, perturbed_q3_k => GgmlType::Q3K;
    grid_q4_k, perturbed_q4_k => GgmlType::Q4K;
    grid_q5_k, perturbed_q5_k => GgmlType::Q5K;
    grid_q6_k, perturbed_q6_k => GgmlType::Q6K;
    grid_iq4_nl, perturbed_iq4_nl => GgmlType::IQ4NL;
    grid_iq4_xs, perturbed_iq4_xs => GgmlType::IQ4XS;
}

#[test]
fn single_block_grid_matches_batched() {
    let row: Vec<f32> = fixture()[0].data[..256].to_vec();
    let im = imatrix(256, 9);
    for ty in QUANT_TYPES {
        for imx in [None, Some(&im[..])] {
            let one = BlockGrid::new(ty, &row, 0, imx).unwrap();
            let batch = block_grids(ty, &row, 256, 0, imx).unwrap();
            let codes: Vec<u8> = (0..ty.block_size()).map(|j| one.code(j, row[j])).collect();
            assert_eq!(one.to_bytes(&codes), batch[0].to_bytes(&codes));
        }
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let row = vec![0.1f32; 300];
    // Not a multiple of the block size: the error names llama-quantize's fallback.
    match quantize(GgmlType::Q4K, &row, 300, None) {
        Err(Error::RowLength { fallback, .. }) => assert_eq!(fallback, GgmlType::F16),
        other => panic!("{other:?}"),
    }
    match quantize(GgmlType::Q6K, &row[..288], 288, None) {
        Err(Error::RowLength { fallback, .. }) => assert_eq!(fallback, GgmlType::Q8_0),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        quantize(GgmlType::Q8_0, &row, 0, None),
        Err(Error::NotWholeRows { .. })
    ));
    assert!(matches!(
        quantize(GgmlType::Q8_0, &row[..100], 32, None),
        Err(Error::NotWholeRows { .. })
    ));
    assert!(matches!(
        quantize(GgmlType::Q8_0, &row[..64], 32, Some(&[1.0; 31])),
        Err(Error::ImatrixLength { .. })
    ));
    let mut bad_im = vec![1.0f32; 32];
    bad_im[3] = f32::INFINITY;
    assert!(matches!(
        quantize(GgmlType::Q4_0, &row[..64], 32, Some(&bad_im)),
        Err(Error::ImatrixNotFinite { index: 3, .. })
    ));
    assert!(matches!(
        dequantize(GgmlType::Q4K, &[0u8; 143], 256),
        Err(Error::ByteLength { .. })
    ));
    assert!(matches!(
        dequantize(GgmlType::Q4K, &[0u8; 144], 255),
        Err(Error::Partial { .. })
    ));
    assert!(matches!(
        BlockGrid::new(GgmlType::F16, &row[..32], 0, None),
        Err(Error::NotQuantized { .. })
    ));
    assert!(matches!(
        BlockGrid::new(GgmlType::Q8_0, &row[..64], 2, None),
        Err(Error::BlockIndex { .. })
    ));
    assert!(matches!(
        block_grids(GgmlType::Q4K, &row[..256], 256, 1, None),
        Err(Error::BlockIndex { .. })
    ));
    // A scale that overflows f16 is refused, as llama-quantize refuses it.
    assert!(matches!(
        quantize(GgmlType::Q4_0, &[1e6f32; 32], 32, None),
        Err(Error::ScaleOverflow {
            row: 0,
            block: 0,
            ..
        })
    ));
    // Empty input is fine.
    assert_eq!(
        quantize(GgmlType::Q4K, &[], 256, None).unwrap(),
        Vec::<u8>::new()
    );
}

#[test]
fn validate_row_data_flags_what_llama_cpp_refuses() {
    use dynapress_ggml::validate_row_data;
    let row: Vec<f32> = (0..256).map(|i| i as f32 * 0.01 - 1.0).collect();
    for ty in QUANT_TYPES {
        let bytes = quantize(ty, &row, 256, None).unwrap();
        assert!(validate_row_data(ty, &bytes).is_ok(), "{ty}");
        assert!(matches!(
            validate_row_data(ty, &bytes[1..]),
            Err(Error::ByteLength { .. })
        ));
    }
    // An infinite f16 scale in the second Q4_0 block.
    let mut q = quantize(GgmlType::Q4_0, &row, 256, None).unwrap();
    q[18..20].copy_from_slice(&0x7c00u16.to_le_bytes());
    assert!(matches!(
        validate_row_data(GgmlType::Q4_0, &q),
        Err(Error::InvalidData {
            block: 1,
            in_scale: true,
            ..
        })
    ));
    // A NaN dmin in Q4_K.
    let mut k = quantize(GgmlType::Q4K, &row, 256, None).unwrap();
    k[2..4].copy_from_slice(&0x7e00u16.to_le_bytes());
    assert!(validate_row_data(GgmlType::Q4K, &k).is_err());
    // F16/BF16/F32 values.
    let f16 = quantize(GgmlType::F16, &[1.0, 70000.0], 2, None).unwrap();
    assert!(matches!(
        validate_row_data(GgmlType::F16, &f16),
        Err(Error::InvalidData {
            block: 1,
            in_scale: false,
            ..
        })
    ));
    let bf16 = quantize(GgmlType::BF16, &[f32::NAN, 1.0], 2, None).unwrap();
    assert!(matches!(
        validate_row_data(GgmlType::BF16, &bf16),
        Err(Error::InvalidData { block: 0, .. })
    ));
    let f32b = quantize(GgmlType::F32, &[1.0, 2.0, f32::NEG_INFINITY], 3, None).unwrap();
    assert!(matches!(
        validate_row_data(GgmlType::F32, &f32b),
        Err(Error::InvalidData { block: 2, .. })
    ));
    assert!(
        validate_row_data(
            GgmlType::BF16,
            &quantize(GgmlType::BF16, &row, 256, None).unwrap()
        )
        .is_ok()
    );
}
