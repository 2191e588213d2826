//! Output-error metrics.
//!
//! For a layer `y = W x` and calibration inputs with `H = Σ_t x_t x_tᵀ`, the
//! summed squared output error of `Ŵ` is
//! `Σ_t ‖(W − Ŵ) x_t‖² = tr(ΔW H ΔWᵀ) = Σ_rows δᵀ H δ`. Each quadratic form
//! is evaluated in f64 as `Σ_i H_ii δ_i² + 2 Σ_i δ_i (Σ_{j>i} H_ij δ_j)`, the
//! inner sums by a GEMM with the strictly upper triangle of `H` (half the
//! flops of a full product), rows in parallel chunks.

use faer::linalg::matmul::triangular::{BlockStructure, matmul};
use faer::{Accum, Mat, Par};
use rayon::prelude::*;

use crate::Hessian;

const CHUNK_ROWS: usize = 64;

/// `Σ_rows mᵀ H m = tr(M H Mᵀ)` for `m` row-major `[rows, h.dim()]`.
///
/// # Panics
/// If `m.len()` is not a multiple of `h.dim()` (shape contract).
#[track_caller]
pub fn quadratic_trace(m: &[f32], h: &Hessian) -> f64 {
    let n = h.dim();
    assert!(
        m.len().is_multiple_of(n),
        "matrix length {} is not a multiple of {n}",
        m.len()
    );
    quad_rows(n, m.len() / n, |r, c| m[r * n + c] as f64, h)
}

/// `tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)` with `ΔW = W − Ŵ` (both row-major
/// `[rows, h.dim()]`). Returns 0 when `Ŵ = W` on every live input and `+∞`
/// when `tr(W H Wᵀ) = 0` but the error is not.
///
/// To evaluate many variants of one layer, compute the denominator once with
/// [`quadratic_trace`] and the numerator with [`quadratic_trace`] of the
/// difference.
///
/// # Panics
/// If the lengths differ or are not a multiple of `h.dim()` (shape contract).
#[track_caller]
pub fn relative_output_error(w: &[f32], w_hat: &[f32], h: &Hessian) -> f64 {
    assert_eq!(w.len(), w_hat.len(), "W and Ŵ must have the same shape");
    let n = h.dim();
    assert!(
        w.len().is_multiple_of(n),
        "matrix length {} is not a multiple of {n}",
        w.len()
    );
    let rows = w.len() / n;
    let num = quad_rows(
        n,
        rows,
        |r, c| w[r * n + c] as f64 - w_hat[r * n + c] as f64,
        h,
    );
    let den = quadratic_trace(w, h);
    if num == 0.0 {
        0.0
    } else if den == 0.0 {
        f64::INFINITY
    } else {
        num / den
    }
}

fn quad_rows(n: usize, rows: usize, val: impl Fn(usize, usize) -> f64 + Sync, h: &Hessian) -> f64 {
    // An owned faer matrix (aligned columns): the SIMD kernels' summation
    // order depends on pointer alignment, and a Vec's alignment changes from
    // run to run, which made the last bits of the result irreproducible.
    // The Hessian keeps that copy (`Hessian::aligned`).
    let hm = h.aligned();
    let chunks = rows.div_ceil(CHUNK_ROWS);
    (0..chunks)
        .into_par_iter()
        .map(|ci| {
            let r0 = ci * CHUNK_ROWS;
            let rc = CHUNK_ROWS.min(rows - r0);
            let d = Mat::<f64>::from_fn(rc, n, |i, j| val(r0 + i, j));
            let mut e = Mat::<f64>::zeros(rc, n);
            matmul(
                e.as_mut(),
                BlockStructure::Rectangular,
                Accum::Replace,
                d.as_ref(),
                BlockStructure::Rectangular,
                hm,
                BlockStructure::StrictTriangularUpper,
                1.0,
                Par::Seq,
            );
            let mut s = 0.0;
            for j in 0..n {
                let hjj = hm[(j, j)];
                for i in 0..rc {
                    let dij = d[(i, j)];
                    s += dij * (hjj * dij + 2.0 * e[(i, j)]);
                }
            }
            s
        })
        // Collect, then add in chunk order: rayon's own `sum` groups the
        // partial sums by how work was stolen, so the last bits of the result
        // would change from run to run (the database must be reproducible).
        .collect::<Vec<f64>>()
        .into_iter()
        .sum()
}
