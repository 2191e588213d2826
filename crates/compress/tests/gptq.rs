//! GPTQ behaviour: parity with a straightforward implementation, error versus
//! RTN, grids, dead inputs, damping recovery, bad input.

mod common;

use common::*;
use dynapress_compress::{
    FactorParams, GptqError, GptqFactor, GptqParams, GptqQuantParams, Hessian, HessianError,
    Provenance, QuantError, QuantScheme, RtnParams, gptq, relative_output_error, rtn,
};

struct Case {
    bits: u8,
    group: usize,
    sym: bool,
    act_order: bool,
    static_groups: bool,
    block_size: usize,
}

/// Compares our codes with the reference, position by position in processing
/// order. A row may diverge only at a rounding near-tie (the f32 sweep and the
/// f64 reference then legitimately pick different codes).
fn check_against_reference(l: &Layer, c: &Case) {
    let scheme = QuantScheme {
        bits: c.bits,
        group_size: c.group,
        sym: c.sym,
    };
    let params = GptqParams {
        scheme,
        act_order: c.act_order,
        static_groups: c.static_groups,
        block_size: c.block_size,
        ..Default::default()
    };
    let q = gptq(&l.w, &l.h, &params).unwrap();
    let n = l.n;
    let rows = l.w.len() / n;
    let rf = reference_gptq(
        &l.w,
        n,
        l.h.as_slice(),
        c.bits,
        c.group,
        c.sym,
        c.act_order,
        c.static_groups,
        0.01,
    );
    let gl = scheme.group_len(n);
    let perm = q.perm().map(|p| p.to_vec());
    if let Some(p) = &perm {
        let expect: Vec<u32> = rf.order.iter().map(|&c| c as u32).collect();
        assert_eq!(p, &expect, "stored permutation must be the act-order");
    }
    let w_hat = q.dequantize();
    let mut diverged = 0;
    for r in 0..rows {
        let mut row_ok = true;
        for k in 0..n {
            let (code, grid) = match &perm {
                Some(_) => (q.codes()[r * n + k], q.grid(r, k / gl)),
                None => (q.codes()[r * n + rf.order[k]], q.grid(r, rf.order[k] / gl)),
            };
            let rg = rf.grid_at[r * n + k];
            if grid.scale != rg.scale || grid.zero != rg.zero {
                let ulps = (grid.scale.to_bits() as i32 - rg.scale.to_bits() as i32).abs();
                assert!(
                    ulps <= 1 && (grid.zero as i32 - rg.zero as i32).abs() <= 1,
                    "row {r} pos {k}: grid {grid:?} vs reference {rg:?}"
                );
                row_ok = false;
                break;
            }
            if code != rf.codes[r * n + k] {
                assert!(
                    rf.tie[r * n + k] < 1e-3,
                    "row {r} pos {k}: code {code} vs reference {} away from a tie ({})",
                    rf.codes[r * n + k],
                    rf.tie[r * n + k]
                );
                row_ok = false;
                break;
            }
        }
        if row_ok {
            assert_eq!(
                &w_hat[r * n..(r + 1) * n],
                &rf.w_hat[r * n..(r + 1) * n],
                "row {r} dequantized"
            );
        } else {
            diverged += 1;
        }
    }
    eprintln!(
        "bits {} g {} sym {} act {} static {} bs {}: {diverged}/{rows} rows diverged at ties",
        c.bits, c.group, c.sym, c.act_order, c.static_groups, c.block_size
    );
    assert!(
        diverged * 10 <= rows,
        "{diverged} of {rows} rows diverged at near-ties: too many to be ties"
    );
}

#[test]
fn blocked_parallel_matches_straightforward_reference() {
    let l = layer(1, 32, 320, 1024, &[]);
    let cases = [
        Case {
            bits: 4,
            group: 128,
            sym: false,
            act_order: false,
            static_groups: false,
            block_size: 128,
        },
        Case {
            bits: 3,
            group: 48,
            sym: true,
            act_order: false,
            static_groups: false,
            block_size: 128,
        },
        Case {
            bits: 2,
            group: 0,
            sym: false,
            act_order: true,
            static_groups: false,
            block_size: 128,
        },
        Case {
            bits: 4,
            group: 64,
            sym: false,
            act_order: true,
            static_groups: false,
            block_size: 128,
        },
        Case {
            bits: 3,
            group: 64,
            sym: true,
            act_order: true,
            static_groups: true,
            block_size: 128,
        },
        Case {
            bits: 8,
            group: 32,
            sym: false,
            act_order: false,
            static_groups: false,
            block_size: 128,
        },
        Case {
            bits: 6,
            group: 128,
            sym: false,
            act_order: false,
            static_groups: false,
            block_size: 32,
        },
        Case {
            bits: 5,
            group: 200,
            sym: false,
            act_order: false,
            static_groups: false,
            block_size: 128,
        },
    ];
    for c in &cases {
        check_against_reference(&l, c);
    }
    // Dead inputs with act-order and dynamic groups (permutation stored).
    let l = layer(2, 24, 256, 768, &[3, 100, 255]);
    check_against_reference(
        &l,
        &Case {
            bits: 5,
            group: 96,
            sym: false,
            act_order: true,
            static_groups: false,
            block_size: 128,
        },
    );
}

#[test]
fn gptq_beats_rtn_on_correlated_layers() {
    let l = layer(3, 96, 256, 2048, &[]);
    for bits in [2u8, 3, 4] {
        for sym in [false, true] {
            for group in [0usize, 64] {
                let scheme = QuantScheme {
                    bits,
                    group_size: group,
                    sym,
                };
                let e_rtn = relative_output_error(
                    &l.w,
                    &rtn(&l.w, l.n, &RtnParams { scheme, clip: None })
                        .unwrap()
                        .dequantize(),
                    &l.h,
                );
                for (act_order, static_groups) in [(false, false), (true, false), (true, true)] {
                    let p = GptqParams {
                        scheme,
                        act_order,
                        static_groups,
                        ..Default::default()
                    };
                    let e = relative_output_error(
                        &l.w,
                        &gptq(&l.w, &l.h, &p).unwrap().dequantize(),
                        &l.h,
                    );
                    assert!(
                        e < 0.8 * e_rtn,
                        "bits {bits} sym {sym} g {group} act {act_order} static {static_groups}: gptq {e} vs rtn {e_rtn}"
                    );
                }
            }
        }
    }
}

#[test]
fn gptq_with_clipping_beats_rtn_with_clipping() {
    let l = layer(4, 64, 256, 2048, &[]);
    let clip = Some(Default::default());
    for bits in [2u8, 3, 4] {
        let scheme = QuantScheme::new(bits, 64);
        let e_rtn = relative_output_error(
            &l.w,
            &rtn(&l.w, l.n, &RtnParams { scheme, clip })
                .unwrap()
                .dequantize(),
            &l.h,
        );
        let p = GptqParams {
            scheme,
            clip,
            ..Default::default()
        };
        let e = relative_output_error(&l.w, &gptq(&l.w, &l.h, &p).unwrap().dequantize(), &l.h);
        assert!(e < e_rtn, "bits {bits}: gptq {e} vs rtn {e_rtn}");
    }
}

#[test]
fn codes_dequantize_onto_the_grid() {
    let l = layer(5, 16, 192, 512, &[7]);
    for (bits, sym, act_order) in [
        (2u8, false, false),
        (3, true, true),
        (5, false, true),
        (8, true, false),
    ] {
        let scheme = QuantScheme {
            bits,
            group_size: 64,
            sym,
        };
        let q = gptq(
            &l.w,
            &l.h,
            &GptqParams {
                scheme,
                act_order,
                ..Default::default()
            },
        )
        .unwrap();
        let maxq = scheme.maxq();
        let w_hat = q.dequantize();
        let n = l.n;
        for r in 0..q.rows() {
            for j in 0..n {
                let code = q.codes()[r * n + j];
                assert!(code <= maxq);
                let col = q.perm().map_or(j, |p| p[j] as usize);
                let g = q.grid(r, j / 64);
                assert!(g.zero <= maxq);
                // The stored value is scale · (code − zero) in f32 …
                let v = g.scale.to_f32() * (code as f32 - g.zero as f32);
                assert_eq!(w_hat[r * n + col], v);
                // … and it is a fixed point of the grid's quantizer.
                assert_eq!(g.quantize(v, maxq), code);
            }
        }
    }
}

#[test]
fn static_groups_use_the_rtn_grid() {
    // With static groups the grids come from the original weights: the very
    // grids RTN uses, so GPTQ and RTN are compared on the same grid.
    let l = layer(6, 32, 256, 1024, &[]);
    for sym in [false, true] {
        let scheme = QuantScheme {
            bits: 3,
            group_size: 64,
            sym,
        };
        let r = rtn(&l.w, l.n, &RtnParams { scheme, clip: None }).unwrap();
        let g = gptq(
            &l.w,
            &l.h,
            &GptqParams {
                scheme,
                act_order: true,
                static_groups: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(g.perm().is_none(), "static groups need no permutation");
        assert_eq!(g.scales(), r.scales());
        assert_eq!(g.zeros(), r.zeros());
        assert_eq!(g.storage_bits(), r.storage_bits());
        assert!(
            relative_output_error(&l.w, &g.dequantize(), &l.h)
                < relative_output_error(&l.w, &r.dequantize(), &l.h)
        );
    }
}

#[test]
fn dead_columns_are_zeroed_and_harmless() {
    let dead = [0usize, 17, 18, 130];
    let l = layer(7, 24, 160, 512, &dead);
    let f = GptqFactor::new(
        &l.h,
        &FactorParams {
            act_order: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(f.dead_columns(), dead.to_vec());
    // Dead columns have the smallest diagonal: processed last.
    let order = f.order().unwrap();
    for &d in &dead {
        assert!(order[160 - dead.len()..].contains(&(d as u32)));
    }
    let q = f
        .quantize(
            &l.w,
            &GptqQuantParams {
                scheme: QuantScheme::new(3, 32),
                ..Default::default()
            },
        )
        .unwrap();
    let w_hat = q.dequantize();
    for r in 0..24 {
        for &d in &dead {
            assert_eq!(w_hat[r * 160 + d], 0.0);
        }
    }
    let e = relative_output_error(&l.w, &w_hat, &l.h);
    let e_rtn = relative_output_error(
        &l.w,
        &rtn(
            &l.w,
            160,
            &RtnParams {
                scheme: QuantScheme::new(3, 32),
                clip: None,
            },
        )
        .unwrap()
        .dequantize(),
        &l.h,
    );
    assert!(e.is_finite() && e < e_rtn);
}

/// `Q diag(λ) Qᵀ` with a random orthogonal `Q` (Gram–Schmidt).
fn spectral(n: usize, lambdas: &[f64], seed: u64) -> Vec<f64> {
    let mut r = rng(seed);
    let mut q: Vec<Vec<f64>> = Vec::new();
    while q.len() < n {
        let mut v: Vec<f64> = (0..n).map(|_| normal(&mut r)).collect();
        for b in &q {
            let d: f64 = v.iter().zip(b).map(|(a, b)| a * b).sum();
            for (x, y) in v.iter_mut().zip(b) {
                *x -= d * y;
            }
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        q.push(v.into_iter().map(|x| x / norm).collect());
    }
    let mut h = vec![0f64; n * n];
    for (k, b) in q.iter().enumerate() {
        for i in 0..n {
            for j in 0..n {
                h[i * n + j] += lambdas[k] * b[i] * b[j];
            }
        }
    }
    for i in 0..n {
        for j in 0..i {
            h[j * n + i] = h[i * n + j];
        }
    }
    h
}

#[test]
fn indefinite_hessian_recovers_with_larger_damping() {
    let n = 64;
    // mean(diag H) = trace / n ≈ 1; the eigenvalue −0.05 survives λ = 0.01
    // but not λ = 0.1: exactly one retry.
    let mut lambdas = vec![1.0; n];
    lambdas[n - 1] = -0.05;
    let h = Hessian::from_flat(n, 100, spectral(n, &lambdas, 8)).unwrap();
    let f = GptqFactor::new(&h, &FactorParams::default()).unwrap();
    assert_eq!(f.damp_retries(), 1);
    assert!((f.damp() - 0.1).abs() < 1e-12);
    let w = normals(&mut rng(9), 8 * n, 0.05);
    let q = f.quantize(&w, &GptqQuantParams::default()).unwrap();
    match q.provenance() {
        Provenance::Gptq {
            damp, damp_retries, ..
        } => {
            assert!((damp - 0.1).abs() < 1e-12);
            assert_eq!(damp_retries, 1);
        }
        p => panic!("unexpected provenance {p:?}"),
    }
    // No retries allowed: a clear error naming the damping tried.
    let err = GptqFactor::new(
        &h,
        &FactorParams {
            max_retries: 0,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, GptqError::NotPositiveDefinite { damp_tried, .. } if damp_tried == 0.01),
        "{err:?}"
    );
    // Hopelessly indefinite (unit diagonal, off-diagonal 10⁶: eigenvalue
    // ≈ −10⁶ ≫ the largest damping tried, 100 · mean(diag H) = 100): every
    // retry fails and the error comes after the last one.
    let mut flat = vec![0f64; n * n];
    for i in 0..n {
        flat[i * n + i] = 1.0;
    }
    flat[n + 2] = 1e6;
    flat[2 * n + 1] = 1e6;
    let h = Hessian::from_flat(n, 100, flat).unwrap();
    let err = GptqFactor::new(&h, &FactorParams::default()).unwrap_err();
    assert!(
        matches!(err, GptqError::NotPositiveDefinite { damp_tried, column } if (damp_tried - 100.0).abs() < 1e-9 && (column == 1 || column == 2)),
        "{err:?}"
    );
    assert!(err.to_string().contains("damp"));
}

#[test]
fn rank_deficient_hessian_works_with_default_damping() {
    // Fewer tokens than inputs: H is singular but PSD; damping makes it definite.
    let l = layer(10, 16, 128, 40, &[]);
    let f = GptqFactor::new(&l.h, &FactorParams::default()).unwrap();
    assert_eq!(f.damp_retries(), 0);
    let q = f
        .quantize(
            &l.w,
            &GptqQuantParams {
                scheme: QuantScheme::new(4, 32),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(relative_output_error(&l.w, &q.dequantize(), &l.h).is_finite());
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let l = layer(11, 8, 64, 256, &[]);
    let mut w = l.w.clone();
    w[3 * 64 + 5] = f32::NAN;
    let err = gptq(&w, &l.h, &GptqParams::default()).unwrap_err();
    assert!(matches!(
        err,
        GptqError::Quant(QuantError::NonFiniteWeight { row: 3, col: 5, .. })
    ));
    w[3 * 64 + 5] = f32::INFINITY;
    assert!(matches!(
        rtn(&w, 64, &RtnParams::default()).unwrap_err(),
        QuantError::NonFiniteWeight { row: 3, col: 5, .. }
    ));
    // Unsupported widths.
    for bits in [0u8, 1, 9] {
        let p = GptqParams {
            scheme: QuantScheme::new(bits, 0),
            ..Default::default()
        };
        assert!(matches!(
            gptq(&l.w, &l.h, &p).unwrap_err(),
            GptqError::Quant(QuantError::UnsupportedBits { .. })
        ));
    }
    // f16 scale overflow.
    let mut big = l.w.clone();
    big[0] = 3.0e6;
    assert!(matches!(
        gptq(&big, &l.h, &GptqParams::default()).unwrap_err(),
        GptqError::Quant(QuantError::ScaleOverflow { row: 0, .. })
    ));
    // NaN activations never reach H.
    let mut h = Hessian::new(4);
    assert!(matches!(
        h.add_batch(&[1.0, 2.0, f32::NAN, 0.0]).unwrap_err(),
        HessianError::NonFiniteInput {
            token: 0,
            feature: 2,
            ..
        }
    ));
    assert_eq!(h.tokens(), 0);
    // A corrupt flat Hessian.
    let mut flat = l.h.to_flat();
    flat[5] = f64::NAN;
    assert!(Hessian::from_flat(64, 1, flat).is_err());
}

#[test]
fn one_factor_serves_every_bit_width() {
    let l = layer(12, 16, 128, 512, &[]);
    let f = GptqFactor::new(&l.h, &FactorParams::default()).unwrap();
    let mut last = f64::INFINITY;
    for bits in [2u8, 3, 4, 5, 6, 8] {
        let p = GptqQuantParams {
            scheme: QuantScheme::new(bits, 32),
            ..Default::default()
        };
        let q = f.quantize(&l.w, &p).unwrap();
        let direct = gptq(
            &l.w,
            &l.h,
            &GptqParams {
                scheme: p.scheme,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(q, direct, "prepared and one-shot GPTQ must agree");
        let e = relative_output_error(&l.w, &q.dequantize(), &l.h);
        assert!(
            e < last,
            "error must fall with bits: {bits} bits gives {e}, previous {last}"
        );
        last = e;
    }
}

#[test]
fn results_do_not_depend_on_thread_count() {
    let l = layer(13, 300, 256, 1024, &[]);
    let p = GptqParams {
        scheme: QuantScheme::new(3, 64),
        act_order: true,
        ..Default::default()
    };
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| gptq(&l.w, &l.h, &p).unwrap())
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
}
