//! Hessian accumulation precision, merging, serialisation; output-error metric.

mod common;

use common::*;
use dynapress_compress::{Accumulation, Hessian, quadratic_trace, relative_output_error};

/// Largest `|ΔH_ij| / sqrt(H_ii H_jj)` against a reference.
fn max_normalised_err(h: &Hessian, reference: &[f64]) -> f64 {
    let n = h.dim();
    let mut m = 0f64;
    for i in 0..n {
        for j in 0..n {
            let scale = (reference[i * n + i] * reference[j * n + j]).sqrt();
            m = m.max((h.get(i, j) - reference[i * n + j]).abs() / scale);
        }
    }
    m
}

#[test]
fn accumulation_matches_f64_reference() {
    let n = 96;
    let mut r = rng(31);
    let x = correlated_inputs(&mut r, 3000, n);
    let reference = naive_xtx(&x, n);
    // Default: f32 chunks + f64 sum, several uneven batches.
    let mut h = Hessian::new(n);
    for batch in x.chunks(n * 700) {
        h.add_batch(batch).unwrap();
    }
    assert_eq!(h.tokens(), 3000);
    let e32 = max_normalised_err(&h, &reference);
    // f32 sums of ≤ 512 terms: well under 1e-5 of the diagonal scale, far above f64.
    assert!(e32 < 1e-5, "f32-chunked error {e32}");
    let mut h64 = Hessian::with_accumulation(n, Accumulation::F64);
    h64.add_batch(&x).unwrap();
    let e64 = max_normalised_err(&h64, &reference);
    assert!(e64 < 1e-13, "f64 error {e64}");
    // Symmetric exactly.
    for i in 0..n {
        for j in 0..n {
            assert_eq!(h.get(i, j), h.get(j, i));
        }
    }
}

#[test]
fn merge_and_flat_round_trip() {
    let n = 40;
    let mut r = rng(32);
    let a = normals(&mut r, 200 * n, 1.0);
    let b = normals(&mut r, 130 * n, 1.0);
    let mut ha = Hessian::with_accumulation(n, Accumulation::F64);
    ha.add_batch(&a).unwrap();
    let mut hb = Hessian::with_accumulation(n, Accumulation::F64);
    hb.add_batch(&b).unwrap();
    ha.merge(&hb);
    assert_eq!(ha.tokens(), 330);
    let mut all = a.clone();
    all.extend_from_slice(&b);
    let reference = naive_xtx(&all, n);
    assert!(max_normalised_err(&ha, &reference) < 1e-13);
    let diag_mean = (0..n).map(|i| reference[i * n + i]).sum::<f64>() / n as f64;
    assert!((ha.mean_diag() - diag_mean).abs() < 1e-9 * diag_mean);
    let back = Hessian::from_flat(n, ha.tokens(), ha.to_flat()).unwrap();
    assert_eq!(back, ha);
    assert!(Hessian::from_flat(n, 1, vec![0.0; n * n - 1]).is_err());
    let mut asym = ha.to_flat();
    asym[1] += 1.0;
    assert!(Hessian::from_flat(n, 1, asym).is_err());
}

#[test]
fn output_error_matches_naive() {
    let n = 70;
    let rows = 150; // more than one parallel chunk, not a multiple of it
    let mut r = rng(33);
    let x = correlated_inputs(&mut r, 500, n);
    let mut h = Hessian::new(n);
    h.add_batch(&x).unwrap();
    let w = normals(&mut r, rows * n, 1.0);
    let w_hat: Vec<f32> = w.iter().map(|v| (v * 8.0).round() / 8.0).collect();
    let d: Vec<f64> = w
        .iter()
        .zip(&w_hat)
        .map(|(a, b)| *a as f64 - *b as f64)
        .collect();
    let wd: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    let num = naive_quad(&d, h.as_slice(), n);
    let den = naive_quad(&wd, h.as_slice(), n);
    assert!((quadratic_trace(&w, &h) - den).abs() < 1e-10 * den);
    let rel = relative_output_error(&w, &w_hat, &h);
    assert!((rel - num / den).abs() < 1e-10 * rel);
    // It is the summed squared output error over the calibration tokens.
    let mut direct = 0f64;
    for t in 0..500 {
        for o in 0..rows {
            let y: f64 = (0..n).map(|j| d[o * n + j] * x[t * n + j] as f64).sum();
            direct += y * y;
        }
    }
    assert!((direct - num).abs() < 1e-5 * num);
    assert_eq!(relative_output_error(&w, &w, &h), 0.0);
}

#[test]
fn accumulation_does_not_depend_on_thread_count() {
    let n = 300; // panels of 128, 128 and 44 rows
    let x = correlated_inputs(&mut rng(34), 1500, n);
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| {
                let mut h = Hessian::new(n);
                h.add_batch(&x[..700 * n]).unwrap();
                h.add_batch(&x[700 * n..]).unwrap();
                h
            })
    };
    let one = run(1);
    assert_eq!(one.as_slice(), run(2).as_slice());
    assert_eq!(one.as_slice(), run(3).as_slice());
}
