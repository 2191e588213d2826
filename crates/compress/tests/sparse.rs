//! SparseGPT, magnitude pruning, the sparse format and OWL: parity with a
//! naive f64 OBS implementation, errors versus magnitude pruning, exact zero
//! counts, storage accounting, OWL's budget and bound.

mod common;

use common::*;
use dynapress_compress::{
    FactorParams, GptqFactor, OwlError, QuantScheme, RtnParams, SparseError, SparseGptParams,
    SparseLinear, SparseParams, SparseValues, SparsityPattern, allocate_zeros, magnitude_prune,
    outlier_ratio, owl_sparsities, relative_output_error, rtn, sparsegpt, sparsegpt_with_factor,
};
use half::f16;

/// Correlated inputs; weights rounded to f16 so that "kept as f16" is exact.
fn layer(seed: u64, rows: usize, n: usize, tokens: usize, dead: &[usize]) -> Layer {
    let mut l = common::layer(seed, rows, n, tokens, dead);
    for v in &mut l.w {
        *v = f16::from_f32(*v).to_f32();
    }
    l
}

fn unstructured(s: f64, n: usize) -> SparseParams {
    SparseParams::new(SparsityPattern::fraction(s, n).unwrap())
}

fn sgpt(l: &Layer, p: SparseParams) -> SparseLinear {
    sparsegpt(
        &l.w,
        &l.h,
        &SparseGptParams {
            sparse: p,
            ..Default::default()
        },
    )
    .unwrap()
}

fn err(l: &Layer, s: &SparseLinear) -> f64 {
    relative_output_error(&l.w, &s.dequantize(), &l.h)
}

/// Checks the mask: exact zeros per row (or per N:M group), pruned weights
/// exactly 0 in the dense output.
fn check_pattern(s: &SparseLinear) {
    let (rows, cols) = (s.rows(), s.cols());
    let dense = s.dequantize();
    for (i, (&k, &v)) in s.mask().iter().zip(&dense).enumerate() {
        if !k {
            assert_eq!(v, 0.0, "pruned weight {i} is {v}");
        }
    }
    match s.pattern() {
        SparsityPattern::Unstructured { zeros_per_row } => {
            for r in 0..rows {
                let z = s.mask()[r * cols..(r + 1) * cols]
                    .iter()
                    .filter(|&&k| !k)
                    .count();
                assert_eq!(z, zeros_per_row, "row {r}");
            }
            assert_eq!(s.zeros(), rows * zeros_per_row);
        }
        SparsityPattern::NM { zeros, group } => {
            for (g, chunk) in s.mask().chunks(group).enumerate() {
                let z = chunk.iter().filter(|&&k| !k).count();
                assert_eq!(z, zeros, "group {g}");
            }
            assert_eq!(s.zeros(), rows * cols / group * zeros);
        }
    }
}

#[test]
fn sparsegpt_beats_magnitude_on_correlated_layers() {
    let l = layer(3, 96, 256, 2048, &[]);
    // Measured ratios sparsegpt / magnitude (seed 3, 96 × 256, 2048 tokens):
    // 30 % 0.035, 50 % 0.044, 70 % 0.076, 2:4 0.071 (docs/sparsity.md). The
    // bounds are about twice these; without the OBS update the ratio is
    // close to 1.
    let mut cases = vec![];
    for (s, bound) in [(0.5, 0.1), (0.7, 0.15), (0.3, 0.08)] {
        cases.push((unstructured(s, l.n), bound, format!("{s}")));
    }
    cases.push((
        SparseParams::new(SparsityPattern::two_four()),
        0.15,
        "2:4".into(),
    ));
    for (p, bound, name) in cases {
        let e_s = err(&l, &sgpt(&l, p));
        let e_m = err(&l, &magnitude_prune(&l.w, l.n, &p).unwrap());
        eprintln!(
            "{name}: sparsegpt {e_s:.4e} magnitude {e_m:.4e} ratio {:.3}",
            e_s / e_m
        );
        assert!(
            e_s < bound * e_m,
            "{name}: sparsegpt {e_s} vs magnitude {e_m}"
        );
    }
}

#[test]
fn exact_zero_counts_and_valid_nm_groups() {
    // Widths that are not multiples of the block size, dead inputs, several
    // sparsities, both compressors.
    for (seed, rows, n, bs) in [(5u64, 70, 300, 128), (6, 33, 96, 32), (7, 130, 200, 64)] {
        let l = layer(seed, rows, n, 600, &[3, 17]);
        for s in [0.0, 0.1, 0.37, 0.5, 0.73, 0.9] {
            let mut p = unstructured(s, n);
            p.block_size = bs;
            let z = p.pattern.zeros_per_row(n);
            assert_eq!(z, (s * n as f64 + 0.5).floor() as usize);
            for q in [None, Some(QuantScheme::new(3, 32))] {
                p.quant = q;
                let a = sgpt(&l, p);
                check_pattern(&a);
                let b = magnitude_prune(&l.w, n, &p).unwrap();
                check_pattern(&b);
                assert_eq!(a.kept() + a.zeros(), rows * n);
            }
        }
        for (nz, m) in [(2, 4), (1, 4), (4, 8)] {
            let mut p = SparseParams::new(SparsityPattern::NM {
                zeros: nz,
                group: m,
            });
            if n % m != 0 {
                assert!(matches!(
                    magnitude_prune(&l.w, n, &p),
                    Err(SparseError::BadNM { .. })
                ));
                continue;
            }
            p.block_size = bs;
            for q in [None, Some(QuantScheme::new(4, 32))] {
                p.quant = q;
                check_pattern(&sgpt(&l, p));
                check_pattern(&magnitude_prune(&l.w, n, &p).unwrap());
            }
        }
    }
}

#[test]
fn zero_sparsity_without_quantization_is_the_identity() {
    for dead in [&[][..], &[0, 5, 63][..]] {
        let l = layer(11, 40, 192, 500, dead);
        let s = sgpt(&l, SparseParams::default());
        assert_eq!(s.zeros(), 0);
        assert_eq!(s.dequantize(), l.w);
        let m = magnitude_prune(&l.w, l.n, &SparseParams::default()).unwrap();
        assert_eq!(m.dequantize(), l.w);
    }
}

/// Naive SparseGPT in f64, one row at a time, no lazy batching, every later
/// weight updated immediately; the OBS quantities come from explicit inverses
/// of the trailing submatrices `H_F`, `F = {j, …, n−1}`, not from a Cholesky
/// factor of `H⁻¹`:
/// saliency `w_j² / [H_F⁻¹]_jj`, update `w_F −= e_j · H_F⁻¹[j, :] / H_F⁻¹[j, j]`.
/// `quant`: (bits, group) of an asymmetric grid, fitted on the group's current
/// weights with the known-pruned ones set to 0.
fn naive_sparsegpt(
    w: &[f32],
    n: usize,
    h: &[f64],
    pattern: SparsityPattern,
    bs: usize,
    quant: Option<(u8, usize)>,
) -> (Vec<bool>, Vec<f64>) {
    let rows = w.len() / n;
    let mean: f64 = (0..n).map(|i| h[i * n + i]).sum::<f64>() / n as f64;
    let mut hd = h.to_vec();
    for i in 0..n {
        hd[i * n + i] += 0.01 * mean;
    }
    // Inverses of the trailing submatrices.
    let inv: Vec<Vec<f64>> = (0..n)
        .map(|j| {
            let m = n - j;
            let mut sub = vec![0f64; m * m];
            for a in 0..m {
                for b in 0..m {
                    sub[a * m + b] = hd[(j + a) * n + j + b];
                }
            }
            naive_spd_inverse(&sub, m)
        })
        .collect();
    let hinv_jj = |j: usize| inv[j][0];
    let mut keep = vec![true; rows * n];
    let mut out = vec![0f64; rows * n];
    for r in 0..rows {
        let mut x: Vec<f64> = w[r * n..(r + 1) * n].iter().map(|&v| v as f64).collect();
        let mut pruned = vec![false; n];
        let mut decided = 0;
        let mut grid = None;
        let smallest = |x: &[f64], cols: std::ops::Range<usize>, cnt: usize| -> Vec<usize> {
            let mut s: Vec<(f64, usize)> = cols.map(|j| (x[j] * x[j] / hinv_jj(j), j)).collect();
            s.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            s[..cnt].iter().map(|p| p.1).collect()
        };
        let mut i1 = 0;
        while i1 < n {
            let i2 = (i1 + bs).min(n);
            if let SparsityPattern::Unstructured { zeros_per_row: z } = pattern {
                let cnt = z * i2 / n - z * i1 / n;
                for j in smallest(&x, i1..i2, cnt) {
                    pruned[j] = true;
                }
                decided = i2;
            }
            for j in i1..i2 {
                if let SparsityPattern::NM { zeros, group } = pattern
                    && j % group == 0
                {
                    for k in smallest(&x, j..j + group, zeros) {
                        pruned[k] = true;
                    }
                    decided = j + group;
                }
                if let Some((bits, g)) = quant
                    && j % g == 0
                {
                    let vals: Vec<f32> = (j..(j + g).min(n))
                        .map(|k| {
                            if k < decided && pruned[k] {
                                0.0
                            } else {
                                x[k] as f32
                            }
                        })
                        .collect();
                    grid = Some(ref_fit(&vals, bits, false));
                }
                let q = if pruned[j] {
                    keep[r * n + j] = false;
                    0.0
                } else if let Some((bits, _)) = quant {
                    let g = grid.unwrap();
                    ref_deq(ref_code(x[j], g, bits).0, g)
                } else {
                    f16::from_f64(x[j]).to_f64()
                };
                out[r * n + j] = q;
                let e = x[j] - q;
                let hi = &inv[j];
                for k in j + 1..n {
                    x[k] -= e * hi[k - j] / hi[0];
                }
            }
            i1 = i2;
        }
    }
    (keep, out)
}

#[test]
fn matches_naive_f64_obs() {
    let l = layer(21, 12, 64, 400, &[]);
    let n = l.n;
    type Case = (SparsityPattern, usize, Option<(u8, usize)>);
    let cases: Vec<Case> = vec![
        (SparsityPattern::fraction(0.5, n).unwrap(), 16, None),
        (SparsityPattern::fraction(0.3, n).unwrap(), 24, None),
        (SparsityPattern::fraction(0.6, n).unwrap(), 64, None),
        (SparsityPattern::two_four(), 16, None),
        (
            SparsityPattern::fraction(0.5, n).unwrap(),
            16,
            Some((4, 16)),
        ),
        (SparsityPattern::two_four(), 32, Some((3, 16))),
    ];
    for (pattern, bs, quant) in cases {
        let p = SparseParams {
            pattern,
            quant: quant.map(|(b, g)| QuantScheme::new(b, g)),
            block_size: bs,
        };
        let ours = sgpt(&l, p);
        let (keep, want) = naive_sparsegpt(&l.w, n, l.h.as_slice(), pattern, bs, quant);
        let got = ours.dequantize();
        let scale = l.w.iter().fold(0f32, |a, &v| a.max(v.abs())) as f64;
        // Rows may part ways only at a rounding near-tie (f16 or grid) or a
        // saliency near-tie; count rows that differ at all and require them rare.
        let mut bad_rows = 0;
        for r in 0..ours.rows() {
            let same_mask = ours.mask()[r * n..(r + 1) * n] == keep[r * n..(r + 1) * n];
            let close =
                (0..n).all(|c| (got[r * n + c] as f64 - want[r * n + c]).abs() <= 1e-3 * scale);
            if !(same_mask && close) {
                bad_rows += 1;
            }
        }
        eprintln!("{pattern:?} bs {bs} quant {quant:?}: {bad_rows} rows differ");
        assert!(
            bad_rows <= 1,
            "{pattern:?} bs {bs} {quant:?}: {bad_rows} rows differ"
        );
        // And the error is the naive one's to within a small factor.
        let want32: Vec<f32> = want.iter().map(|&v| v as f32).collect();
        let (e_ours, e_ref) = (err(&l, &ours), relative_output_error(&l.w, &want32, &l.h));
        assert!(
            (e_ours - e_ref).abs() <= 0.02 * e_ref,
            "{pattern:?}: {e_ours} vs {e_ref}"
        );
    }
}

#[test]
fn joint_sparse_3bit_beats_magnitude_then_rtn() {
    let l = layer(4, 96, 256, 2048, &[]);
    for (pattern, group) in [
        (SparsityPattern::fraction(0.5, l.n).unwrap(), 128),
        (SparsityPattern::fraction(0.5, l.n).unwrap(), 64),
        (SparsityPattern::two_four(), 128),
    ] {
        let scheme = QuantScheme::new(3, group);
        let p = SparseParams {
            pattern,
            quant: Some(scheme),
            block_size: 128,
        };
        let joint = sgpt(&l, p);
        let e_joint = err(&l, &joint);
        let e_mag = err(&l, &magnitude_prune(&l.w, l.n, &p).unwrap());
        // Magnitude pruning, then RTN of the whole pruned matrix (pruned
        // zeros included in the grids), as a two-step pipeline would do.
        let mut pruned = magnitude_prune(&l.w, l.n, &SparseParams::new(pattern))
            .unwrap()
            .dequantize();
        let r = rtn(&pruned, l.n, &RtnParams { scheme, clip: None }).unwrap();
        let mask = magnitude_prune(&l.w, l.n, &SparseParams::new(pattern)).unwrap();
        let deq = r.dequantize();
        for (i, v) in pruned.iter_mut().enumerate() {
            *v = if mask.mask()[i] { deq[i] } else { 0.0 };
        }
        let e_two = relative_output_error(&l.w, &pruned, &l.h);
        eprintln!(
            "{pattern:?} g{group}: joint {e_joint:.4e}, magnitude+grid {e_mag:.4e}, magnitude then rtn {e_two:.4e}"
        );
        // Measured: joint / magnitude-then-RTN = 0.107 (50 %, g128), 0.093
        // (50 %, g64), 0.081 (2:4, g128).
        assert!(
            e_joint < 0.2 * e_mag.min(e_two),
            "{e_joint} vs {e_mag}, {e_two}"
        );
        // Quantizing the kept weights costs something on top of pruning alone.
        assert!(e_joint > err(&l, &sgpt(&l, SparseParams::new(pattern))));
    }
}

#[test]
fn storage_bits_are_the_bytes_written_and_round_trip() {
    let l = layer(8, 40, 256, 400, &[]);
    let cases = [
        SparseParams::new(SparsityPattern::fraction(0.5, l.n).unwrap()),
        SparseParams::new(SparsityPattern::two_four()),
        SparseParams {
            pattern: SparsityPattern::fraction(0.7, l.n).unwrap(),
            quant: Some(QuantScheme::new(4, 128)),
            block_size: 128,
        },
        SparseParams {
            pattern: SparsityPattern::two_four(),
            quant: Some(QuantScheme {
                bits: 3,
                group_size: 64,
                sym: true,
            }),
            block_size: 128,
        },
    ];
    for p in cases {
        let s = sgpt(&l, p);
        let bufs = s.to_buffers();
        let bytes: usize = bufs.iter().map(|b| b.data.len()).sum();
        assert_eq!(s.storage_bits(), 8 * bytes as u64, "{p:?}");
        let back = SparseLinear::from_buffers(&s.meta(), &bufs).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.dequantize(), s.dequantize());
        // The formula of the format docs (every count here is a multiple of 8).
        let (rows, cols) = (40u64, 256u64);
        let kept = s.kept() as u64;
        let mask_bits = match p.pattern {
            SparsityPattern::Unstructured { .. } => rows * cols,
            SparsityPattern::NM { .. } => rows * cols / 4 * 3,
        };
        let value_bits = match p.quant {
            None => 16 * kept,
            Some(q) => {
                let g = rows * q.groups_per_row(256) as u64;
                kept * q.bits as u64 + g * (16 + q.zero_bits() as u64)
            }
        };
        assert_eq!(s.storage_bits(), mask_bits + value_bits, "{p:?}");
    }
    // 50 % unstructured, f16: 1 + 8 bits per weight.
    let s = sgpt(
        &l,
        SparseParams::new(SparsityPattern::fraction(0.5, 256).unwrap()),
    );
    assert_eq!(s.bits_per_weight(), 9.0);

    // Corrupt buffers are errors.
    let s = sgpt(
        &l,
        SparseParams::new(SparsityPattern::fraction(0.5, 256).unwrap()),
    );
    let mut bufs = s.to_buffers();
    bufs[0].data[0] ^= 1; // one more or one fewer zero in row 0
    assert!(SparseLinear::from_buffers(&s.meta(), &bufs).is_err());
    let mut bufs = s.to_buffers();
    let len = bufs[1].data.len();
    bufs[1].data.truncate(len - 2);
    bufs[1].shape[0] -= 1;
    assert!(SparseLinear::from_buffers(&s.meta(), &bufs).is_err());
    let s = sgpt(&l, SparseParams::new(SparsityPattern::two_four()));
    let mut bufs = s.to_buffers();
    bufs[0].data[0] = 0xff; // rank 7 ≥ C(4, 2) = 6
    assert!(SparseLinear::from_buffers(&s.meta(), &bufs).is_err());
    assert!(matches!(s.values(), SparseValues::F16(v) if v.len() == 40 * 128));
}

#[test]
fn bad_parameters_are_errors() {
    let l = layer(9, 8, 64, 200, &[]);
    assert!(matches!(
        SparsityPattern::fraction(1.0, 64),
        Err(SparseError::BadSparsity { .. })
    ));
    let full = SparseParams::new(SparsityPattern::Unstructured { zeros_per_row: 64 });
    assert!(matches!(
        magnitude_prune(&l.w, 64, &full),
        Err(SparseError::TooManyZeros { .. })
    ));
    let bad_nm = SparseParams::new(SparsityPattern::NM { zeros: 4, group: 4 });
    assert!(matches!(
        sparsegpt(
            &l.w,
            &l.h,
            &SparseGptParams {
                sparse: bad_nm,
                ..Default::default()
            }
        ),
        Err(SparseError::BadNM { .. })
    ));
    let mut misaligned = SparseParams::new(SparsityPattern::two_four());
    misaligned.block_size = 30;
    assert!(matches!(
        sparsegpt(
            &l.w,
            &l.h,
            &SparseGptParams {
                sparse: misaligned,
                ..Default::default()
            }
        ),
        Err(SparseError::NmAlignment { .. })
    ));
    let f = GptqFactor::new(
        &l.h,
        &FactorParams {
            act_order: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(matches!(
        sparsegpt_with_factor(&f, &l.w, &SparseParams::default()),
        Err(SparseError::ActOrder)
    ));
    let mut w = l.w.clone();
    w[5] = f32::NAN;
    assert!(sparsegpt(&w, &l.h, &SparseGptParams::default()).is_err());
    let mut w = l.w.clone();
    w[5] = 1e6;
    assert!(matches!(
        magnitude_prune(&w, 64, &SparseParams::default()),
        Err(SparseError::ValueOverflow { .. })
    ));
}

#[test]
fn owl_keeps_the_mean_and_the_bound() {
    let ratios = [0.012, 0.03, 0.002, 0.05, 0.02, 0.02, 0.001];
    let params = [65536u64, 196608, 65536, 196608, 16384, 65536, 196608];
    for (target, lambda) in [(0.5, 0.08), (0.7, 0.1), (0.3, 0.0), (0.6, 0.02)] {
        let s = owl_sparsities(&ratios, &params, target, lambda).unwrap();
        let ptot: f64 = params.iter().map(|&p| p as f64).sum();
        let mean: f64 = s
            .iter()
            .zip(&params)
            .map(|(&x, &p)| x * p as f64)
            .sum::<f64>()
            / ptot;
        assert!((mean - target).abs() < 1e-12, "{mean} vs {target}");
        let dev = s.iter().fold(0f64, |a, &x| a.max((x - target).abs()));
        assert!(dev <= lambda + 1e-12);
        // The bound is used (the furthest layer sits on it).
        assert!((dev - lambda).abs() < 1e-9, "{dev} vs {lambda}");
        // More outliers → less sparsity.
        for i in 0..ratios.len() {
            for j in 0..ratios.len() {
                if ratios[i] > ratios[j] {
                    assert!(s[i] <= s[j] + 1e-15 || lambda == 0.0);
                }
            }
        }
        // Integer allocation: total within one smallest row count of the goal.
        let shapes = [
            (256usize, 256usize),
            (768, 256),
            (256, 256),
            (256, 768),
            (64, 256),
            (256, 256),
            (768, 256),
        ];
        let z = allocate_zeros(&shapes, &s, target).unwrap();
        let total: usize = shapes.iter().map(|&(r, c)| r * c).sum();
        let goal = (target * total as f64 + 0.5).floor() as usize;
        let got: usize = z.iter().zip(&shapes).map(|(&zl, &(r, _))| zl * r).sum();
        assert!(got <= goal && goal - got < 64, "{got} vs {goal}");
        for (i, (&zl, &(_, c))) in z.iter().zip(&shapes).enumerate() {
            assert!((zl as f64 - s[i] * c as f64).abs() < 3.0, "layer {i}");
        }
    }
    // Uniform when nothing distinguishes the layers.
    assert_eq!(
        owl_sparsities(&[0.01; 3], &[1, 2, 3], 0.5, 0.1).unwrap(),
        vec![0.5; 3]
    );
    assert!(matches!(
        owl_sparsities(&ratios, &params, 0.95, 0.1),
        Err(OwlError::BadLambda { .. })
    ));
    assert!(matches!(
        owl_sparsities(&ratios, &params, 1.0, 0.0),
        Err(OwlError::BadTarget { .. })
    ));
    assert!(owl_sparsities(&ratios, &params[1..], 0.5, 0.1).is_err());
}

#[test]
fn outlier_ratio_counts_wanda_outliers() {
    // 4 × 4 layer, H diagonal = 1 except column 3 (norm 10).
    let mut w = vec![0.1f32; 16];
    w[0] = 5.0; // score 5
    w[7] = 0.3; // column 3: score 3
    let h = [1.0f64, 1.0, 1.0, 100.0];
    // Scores: 5, 0.1×10, 0.3×10 and 0.1×10 twice in column 3 … computed directly:
    let scores: Vec<f64> = (0..16)
        .map(|i| (w[i] as f64).abs() * h[i % 4].sqrt())
        .collect();
    let mean = scores.iter().sum::<f64>() / 16.0;
    for m in [1.0, 2.0, 5.0] {
        let want = scores.iter().filter(|&&s| s > m * mean).count() as f64 / 16.0;
        assert_eq!(outlier_ratio(&w, &h, m), want, "M = {m}");
    }
    assert!(outlier_ratio(&w, &h, 5.0) > 0.0);
    assert_eq!(outlier_ratio(&[0.0; 8], &[1.0, 1.0], 3.0), 0.0);
}

#[test]
fn results_do_not_depend_on_thread_count() {
    let l = layer(13, 300, 256, 1024, &[]);
    let p = SparseParams {
        pattern: SparsityPattern::fraction(0.6, 256).unwrap(),
        quant: Some(QuantScheme::new(3, 64)),
        block_size: 128,
    };
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| (sgpt(&l, p), magnitude_prune(&l.w, l.n, &p).unwrap()))
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
}

#[test]
fn sparse_database_levels_predict_storage_exactly() {
    // The search's budget checks use SparseLevel::storage_bits before any
    // layer is built: it must equal what compress_layer stores, for f16 and
    // joint levels, on row lengths that do not divide evenly (576, 200).
    use dynapress_compress::{LevelSparsity, Method, MethodSpec, Variant, compress_layer};
    for (rows, n) in [(24usize, 576usize), (16, 200)] {
        let l = layer(7, rows, n, 4 * n, &[]);
        let f = GptqFactor::new(&l.h, &FactorParams::default()).unwrap();
        let spec = MethodSpec {
            method: Method::Sparsegpt,
            sparsities: vec![
                0.1.into(),
                0.37.into(),
                0.5.into(),
                0.9.into(),
                LevelSparsity::NM { zeros: 2, group: 4 },
                LevelSparsity::NM { zeros: 3, group: 8 },
            ],
            sparse_bits: vec![],
            group_size: 64,
            ..Default::default()
        };
        for bits in [vec![], vec![3u8, 4]] {
            let spec = MethodSpec {
                sparse_bits: bits,
                ..spec.clone()
            };
            let levels = spec.levels().unwrap();
            assert_eq!(levels.len(), 6 * spec.sparse_bits.len().max(1));
            for level in &levels {
                let v = compress_layer(&l.w, &l.h, Some(&f), None, &spec, level).unwrap();
                let Variant::Sparse(sp) = &v else {
                    panic!("{}: not sparse", level.name)
                };
                let want = level.sparse.unwrap().storage_bits(rows, n).unwrap();
                assert_eq!(sp.storage_bits(), want, "{} at {rows}×{n}", level.name);
                let zeros_per_row = match level.sparse.unwrap().sparsity {
                    LevelSparsity::Fraction(s) => (s * n as f64 + 0.5).floor() as usize,
                    LevelSparsity::NM { zeros, group } => {
                        assert_eq!(sp.pattern(), SparsityPattern::NM { zeros, group });
                        zeros * n / group
                    }
                };
                assert_eq!(sp.zeros(), rows * zeros_per_row, "{}", level.name);
            }
        }
    }
}

#[test]
fn nm_sparsity_tokens_parse_name_and_serialise() {
    // `--sparsities` entries: fractions and N:M side by side; N:M level names
    // carry no `:` (they are file names); a manifest keeps fractions as
    // numbers (older manifests read unchanged) and N:M as "N:M".
    use dynapress_compress::{LevelSparsity, Method, MethodError, MethodSpec};
    let parse = |s: &str| s.parse::<LevelSparsity>();
    assert_eq!(parse("0.3"), Ok(LevelSparsity::Fraction(0.3)));
    assert_eq!(parse(" 2:4"), Ok(LevelSparsity::NM { zeros: 2, group: 4 }));
    for bad in ["2:", ":4", "2:4:8", "a", "2.5:4", "-1:4"] {
        assert!(parse(bad).is_err(), "{bad}");
    }
    let spec = |tokens: &str| MethodSpec {
        method: Method::Sparsegpt,
        sparsities: tokens.split(',').map(|t| parse(t).unwrap()).collect(),
        ..Default::default()
    };
    let names: Vec<String> = spec("0.3,0.4,2:4,0.6,0.5,1:4")
        .levels()
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .collect();
    // Lowest bits first: 2:4 (0.75 + 8 bits per weight) below 50 % (1 + 8).
    assert_eq!(
        names,
        [
            "sparsegpt-s60",
            "sparsegpt-2of4",
            "sparsegpt-s50",
            "sparsegpt-s40",
            "sparsegpt-s30",
            "sparsegpt-1of4"
        ]
    );
    let l = spec("2:4").levels().unwrap()[0].sparse.unwrap();
    assert_eq!(l.fraction(), 0.5);
    // 2:4 at 256 columns: 3 bits per group of 4, 16 bits per kept weight.
    assert_eq!(l.storage_bits(3, 256), Some(3 * (64 * 3 + 128 * 16)));
    assert_eq!(l.storage_bits(3, 258), None, "258 is not a multiple of 4");
    for (bad, err) in [
        ("4:4", MethodError::NM { zeros: 4, group: 4 }),
        ("0:4", MethodError::NM { zeros: 0, group: 4 }),
        ("2:9", MethodError::NM { zeros: 2, group: 9 }),
    ] {
        assert_eq!(spec(bad).levels().unwrap_err(), err, "{bad}");
    }
    let json = serde_json::to_string(&spec("0.5,2:4")).unwrap();
    assert!(json.contains(r#""sparsities":[0.5,"2:4"]"#), "{json}");
    assert_eq!(
        serde_json::from_str::<MethodSpec>(&json).unwrap(),
        spec("0.5,2:4")
    );
    let bad = json.replace("\"2:4\"", "\"half\"");
    assert!(serde_json::from_str::<MethodSpec>(&bad).is_err());
}
