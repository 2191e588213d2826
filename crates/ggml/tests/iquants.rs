//! Byte-for-byte parity of the i-quants (IQ4_XS, IQ3_XXS, IQ3_S, IQ2_XXS,
//! IQ2_XS, IQ2_S) with ggml (the llama-cpp-python 0.3.36 tree), through the
//! C oracle built by scripts/ggml-oracle/build.sh: the demo model's weights and
//! synthetic edge cases, with and without an importance vector (where ggml
//! refuses a type without one, we must refuse it too), decoding of arbitrary
//! bytes. Without the oracle these tests print a loud SKIPPED message and pass
//! (set DYNAPRESS_REQUIRE_ORACLE=1 to make that a failure).

mod common;

use common::*;
use dynapress_ggml::{BlockGrid, Error, GgmlType, dequantize, quantize, validate_row_data};

fn assert_same_f32(what: &str, ours: &[f32], theirs: &[f32]) {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths");
    if let Some(i) = ours
        .iter()
        .zip(theirs)
        .position(|(a, b)| a.to_bits() != b.to_bits())
    {
        panic!(
            "{what}: value {i} decodes to {:e} ({:#010x}), ggml gives {:e} ({:#010x})",
            ours[i],
            ours[i].to_bits(),
            theirs[i],
            theirs[i].to_bits()
        );
    }
}

/// One comparison: ggml's bytes (or its refusal) against ours, then decoding.
/// Returns whether ggml's output passed validation.
fn compare(
    o: &Oracle,
    ty: GgmlType,
    data: &[f32],
    n: usize,
    imx: Option<&[f32]>,
    label: &str,
) -> bool {
    let ours = quantize(ty, data, n, imx);
    let Some((theirs, valid)) = o.try_quantize(ty, data, n, imx) else {
        assert!(imx.is_none(), "{label}: ggml refused an imatrix");
        assert!(ty.requires_imatrix(), "{label}: ggml wants an imatrix");
        assert_eq!(ours, Err(Error::ImatrixRequired { ty }), "{label}");
        return true;
    };
    match ours {
        Ok(ours) => {
            assert!(
                valid,
                "{label}: ggml's output fails validation but we accepted it"
            );
            if let Some(d) = first_diff(ty, n, &ours, &theirs) {
                panic!("{label}: {d}");
            }
            let back = dequantize(ty, &ours, data.len()).unwrap();
            assert_same_f32(label, &back, &o.dequantize(ty, &theirs));
        }
        Err(Error::ScaleOverflow { .. }) => {
            assert!(
                !valid,
                "{label}: we reported a scale overflow, ggml's output is valid"
            );
        }
        Err(e) => panic!("{label}: {e}"),
    }
    valid
}

/// The fixture's weights (every linear layer and both embeddings).
fn fixture_parity(ty: GgmlType) {
    let Some(o) = oracle(&format!("fixture_{ty}")) else {
        return;
    };
    for (n, data, names) in fixture_by_row_len() {
        let im = imatrix(n, 1000 + n as u64);
        for imx in [None, Some(&im[..])] {
            let label = format!(
                "{ty}, {} rows of {n} ({} tensors), imatrix: {}",
                data.len() / n,
                names.len(),
                imx.is_some()
            );
            assert!(compare(&o, ty, &data, n, imx, &label), "{label}: invalid");
        }
    }
}

/// Synthetic edge cases with no, a realistic and a degenerate importance
/// vector. The i-quants encode every row on its own, so ggml gets all cases
/// in one call per setting (its codebook set-up takes seconds per process)
/// and we compare row by row; a row whose f16 scale overflows must be one
/// that fails ggml's validation, which `validate_row_data` reproduces
/// (tests/grid.rs).
fn synthetic_parity(ty: GgmlType) {
    let Some(o) = oracle(&format!("synthetic_{ty}")) else {
        return;
    };
    let n = 512;
    let ims = synthetic_imatrices(n);
    let cases = synthetic_rows(n, 42);
    let all: Vec<f32> = cases.iter().flat_map(|(_, r)| r.iter().copied()).collect();
    let row_bytes = n / 256 * ty.type_size();
    let mut invalid = 0;
    let mut settings: Vec<(&str, Option<&[f32]>)> = vec![("none", None)];
    settings.extend(ims.iter().map(|(name, v)| (*name, Some(&v[..]))));
    for (im_name, imx) in settings {
        let Some((theirs, _)) = o.try_quantize(ty, &all, n, imx) else {
            assert!(
                imx.is_none() && ty.requires_imatrix(),
                "{ty}: ggml wants an imatrix"
            );
            assert_eq!(
                quantize(ty, &all, n, None),
                Err(Error::ImatrixRequired { ty })
            );
            continue;
        };
        let decoded = o.dequantize(ty, &theirs);
        for (r, (case, row)) in cases.iter().enumerate() {
            let label = format!("{ty}, case `{case}`, imatrix {im_name}");
            let t = &theirs[r * row_bytes..(r + 1) * row_bytes];
            let valid = validate_row_data(ty, t).is_ok();
            match quantize(ty, row, n, imx) {
                Ok(ours) => {
                    assert!(
                        valid,
                        "{label}: ggml's output fails validation, ours passed"
                    );
                    if let Some(d) = first_diff(ty, n, &ours, t) {
                        panic!("{label}: {d}");
                    }
                    let back = dequantize(ty, &ours, n).unwrap();
                    assert_same_f32(&label, &back, &decoded[r * n..(r + 1) * n]);
                }
                Err(Error::ScaleOverflow { .. }) => {
                    assert!(
                        !valid,
                        "{label}: we reported a scale overflow, ggml's output is valid"
                    );
                    invalid += 1;
                }
                Err(e) => panic!("{label}: {e}"),
            }
        }
    }
    eprintln!("{ty}: {invalid} synthetic settings overflow the f16 scale (as in ggml)");
}

macro_rules! parity_tests {
    ($($fixture:ident, $synthetic:ident => $ty:expr;)*) => {$(
        #[test]
        fn $fixture() { fixture_parity($ty) }
        #[test]
        fn $synthetic() { synthetic_parity($ty) }
    )*};
}

parity_tests! {
    fixture_iq4_xs, synthetic_iq4_xs => GgmlType::IQ4XS;
    fixture_iq3_xxs, synthetic_iq3_xxs => GgmlType::IQ3XXS;
    fixture_iq3_s, synthetic_iq3_s => GgmlType::IQ3S;
    fixture_iq2_xxs, synthetic_iq2_xxs => GgmlType::IQ2XXS;
    fixture_iq2_xs, synthetic_iq2_xs => GgmlType::IQ2XS;
    fixture_iq2_s, synthetic_iq2_s => GgmlType::IQ2S;
}

/// Sub-blocks that are exactly zero among non-zero ones (ggml skips them; IQ3_S
/// then moves the following sub-blocks' codes up), and single-block rows.
#[test]
fn zero_sub_blocks_and_short_rows() {
    let Some(o) = oracle("zero_sub_blocks_and_short_rows") else {
        return;
    };
    let flat = &fixture()[0].data;
    let n = 1280;
    let mut rows = flat[..16 * n].to_vec();
    for (r, row) in rows.chunks_mut(n).enumerate() {
        // Zero a different set of 16- and 32-value sub-blocks in every row.
        for s in 0..n / 16 {
            if (s * 7 + r * 3) % 5 == 0 {
                row[16 * s..16 * s + 16].fill(0.0);
            }
        }
        if r % 4 == 0 {
            row[..256].fill(0.0); // a whole zero super-block
        }
    }
    let im = imatrix(n, 3);
    for ty in IQ_TYPES {
        for imx in [None, Some(&im[..])] {
            let label = format!(
                "{ty}, rows of {n} with zero sub-blocks, imatrix {}",
                imx.is_some()
            );
            compare(&o, ty, &rows, n, imx, &label);
            let label = format!("{ty}, rows of 256, imatrix {}", imx.is_some());
            compare(
                &o,
                ty,
                &flat[..64 * 256],
                256,
                imx.map(|q| &q[..256]),
                &label,
            );
        }
    }
}

/// Arbitrary bytes (NaN/inf/subnormal scales, every index and sign pattern)
/// decode as ggml decodes them.
#[test]
fn decoding_arbitrary_bytes_matches_ggml() {
    use rand::{RngExt, SeedableRng};
    let Some(o) = oracle("iq_decoding_arbitrary_bytes_matches_ggml") else {
        return;
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);
    for ty in IQ_TYPES {
        let nblocks = 2048;
        let bytes: Vec<u8> = (0..nblocks * ty.type_size())
            .map(|_| rng.random::<u8>())
            .collect();
        let ours = dequantize(ty, &bytes, nblocks * ty.block_size()).unwrap();
        assert_same_f32(ty.name(), &ours, &o.dequantize(ty, &bytes));
    }
}

/// The oracle's type table agrees with ours (ids, block sizes, bytes).
#[test]
fn type_table_matches_ggml() {
    let Some(o) = oracle("iq_type_table_matches_ggml") else {
        return;
    };
    let table = o.types();
    for ty in IQ_TYPES {
        let want = format!(
            "{} {} {} {}",
            ty.id(),
            ty.name(),
            ty.block_size(),
            ty.type_size()
        );
        assert!(
            table.lines().any(|l| l.eq_ignore_ascii_case(&want)),
            "{ty}: ggml's table has no line `{want}`"
        );
    }
}

/// Errors instead of panics, and the per-weight grid only where one exists.
#[test]
fn i_quant_errors() {
    let row = vec![0.1f32; 768];
    for ty in IQ_TYPES {
        match quantize(ty, &row[..96], 96, None) {
            Err(Error::RowLength { fallback, .. }) => assert_eq!(fallback, GgmlType::IQ4NL),
            other => panic!("{ty}: {other:?}"),
        }
        let im = vec![1.0f32; 256];
        let with = quantize(ty, &row[..256], 256, Some(&im)).unwrap();
        assert!(validate_row_data(ty, &with).is_ok());
        assert_eq!(
            quantize(ty, &row[..256], 256, None).is_err(),
            ty.requires_imatrix(),
            "{ty}"
        );
        let grid = BlockGrid::new(ty, &row[..256], 0, None);
        if ty == GgmlType::IQ4XS {
            assert!(grid.is_ok());
        } else {
            assert!(matches!(grid, Err(Error::NoBlockGrid { .. })), "{ty}");
        }
        let mut bad = row[..256].to_vec();
        bad[9] = f32::NAN;
        assert!(matches!(
            quantize(ty, &bad, 256, Some(&im)),
            Err(Error::NonFinite { col: 9, .. })
        ));
    }
    assert_eq!(
        quantize(GgmlType::IQ2XXS, &row[..256], 256, None),
        Err(Error::ImatrixRequired {
            ty: GgmlType::IQ2XXS
        })
    );
}
