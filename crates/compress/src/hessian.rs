//! Accumulation of the layer-input Hessian `H = Σ_t x_t x_tᵀ`.
//!
//! A batch `X ∈ ℝ^{T×n}` (row-major, one token per row) adds `XᵀX`. With the
//! default [`Accumulation::F32Chunked`], the batch is cut into chunks of at most
//! `chunk_tokens` tokens; each chunk's `X_cᵀX_c` is computed by an f32 GEMM
//! (lower triangle only, the matrix is symmetric) and added into the f64
//! accumulator. The f32 rounding error is therefore that of a sum of at most
//! `chunk_tokens` terms (relative ≈ `√chunk · 2⁻²⁴` typically), and the sum over
//! chunks is in f64; `docs/gptq.md` has the measured error against a pure-f64
//! reference. [`Accumulation::F64`] converts each chunk to f64 and uses an f64
//! GEMM (twice the cost).
//!
//! The raw sum is stored, with the token count; divide by
//! [`Hessian::tokens`] for the mean (the GPTQ reference keeps `2/T · Σ x xᵀ`,
//! which differs by a constant factor that no result here depends on).

use faer::linalg::matmul::triangular::{BlockStructure, matmul};
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::HessianError;

/// Precision of [`Hessian::add_batch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accumulation {
    /// f32 GEMM over chunks of at most `chunk_tokens` tokens, summed in f64.
    F32Chunked {
        /// Tokens per f32 partial sum.
        chunk_tokens: usize,
    },
    /// f64 GEMM (inputs widened to f64).
    F64,
}

impl Default for Accumulation {
    /// `F32Chunked { chunk_tokens: 512 }`.
    fn default() -> Self {
        Accumulation::F32Chunked { chunk_tokens: 512 }
    }
}

/// The symmetric `n × n` matrix `Σ x xᵀ` in f64, with its token count.
#[derive(Clone, Debug)]
pub struct Hessian {
    n: usize,
    sum: Vec<f64>,
    tokens: u64,
    accumulation: Accumulation,
}

impl PartialEq for Hessian {
    fn eq(&self, other: &Self) -> bool {
        self.n == other.n && self.tokens == other.tokens && self.sum == other.sum
    }
}

impl Hessian {
    /// An empty accumulator for inputs of width `n` with the default precision.
    pub fn new(n: usize) -> Self {
        Self::with_accumulation(n, Accumulation::default())
    }

    /// An empty accumulator with the given precision.
    ///
    /// # Panics
    /// If `n == 0` or a chunk size is 0.
    #[track_caller]
    pub fn with_accumulation(n: usize, accumulation: Accumulation) -> Self {
        assert!(n > 0, "Hessian dimension must be positive");
        if let Accumulation::F32Chunked { chunk_tokens } = accumulation {
            assert!(chunk_tokens > 0, "chunk_tokens must be positive");
        }
        Self {
            n,
            sum: vec![0.0; n * n],
            tokens: 0,
            accumulation,
        }
    }

    /// Input width `n`.
    pub fn dim(&self) -> usize {
        self.n
    }

    /// Tokens accumulated so far.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// The accumulation precision.
    pub fn accumulation(&self) -> Accumulation {
        self.accumulation
    }

    /// The full symmetric matrix, row-major `n × n`.
    pub fn as_slice(&self) -> &[f64] {
        &self.sum
    }

    /// Entry `(i, j)`.
    #[inline]
    pub fn get(&self, i: usize, j: usize) -> f64 {
        self.sum[i * self.n + j]
    }

    /// The diagonal.
    pub fn diag(&self) -> Vec<f64> {
        (0..self.n).map(|i| self.get(i, i)).collect()
    }

    /// `mean(diag H)` of the stored (raw-sum) matrix.
    pub fn mean_diag(&self) -> f64 {
        (0..self.n).map(|i| self.get(i, i)).sum::<f64>() / self.n as f64
    }

    /// Adds `XᵀX` for a batch `x` of `x.len() / n` tokens (row-major `[T, n]`).
    ///
    /// Non-finite activations are rejected before anything is added.
    ///
    /// # Panics
    /// If `x.len()` is not a multiple of `n` (shape contract).
    #[track_caller]
    pub fn add_batch(&mut self, x: &[f32]) -> Result<(), HessianError> {
        let n = self.n;
        assert!(
            x.len().is_multiple_of(n),
            "batch length {} is not a multiple of n = {n}",
            x.len()
        );
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(HessianError::NonFiniteInput {
                token: i / n,
                feature: i % n,
                value: x[i],
            });
        }
        let t = x.len() / n;
        if t == 0 {
            return Ok(());
        }
        // Chunks are multiplied in parallel (each product single-threaded)
        // and added into the f64 sum in chunk order, so the result does not
        // depend on thread scheduling: a database rebuilt after a crash must be
        // bit-identical to one built in one go.
        let threads = rayon::current_num_threads().max(1);
        match self.accumulation {
            Accumulation::F32Chunked { chunk_tokens } => {
                let chunks: Vec<&[f32]> = x.chunks(chunk_tokens.max(1) * n).collect();
                for group in chunks.chunks(threads) {
                    let parts: Vec<Vec<f32>> = group
                        .par_iter()
                        .map(|chunk| {
                            let mut part = vec![0f32; n * n];
                            let xc = MatRef::from_row_major_slice(chunk, chunk.len() / n, n);
                            syrk_lower(
                                MatMut::from_column_major_slice_mut(&mut part, n, n),
                                xc,
                                1.0,
                            );
                            part
                        })
                        .collect();
                    for part in &parts {
                        self.add_lower(part);
                    }
                }
            }
            Accumulation::F64 => {
                let chunks: Vec<&[f32]> = x.chunks(2048 * n).collect();
                for group in chunks.chunks(threads) {
                    let parts: Vec<Vec<f64>> = group
                        .par_iter()
                        .map(|chunk| {
                            let wide: Vec<f64> = chunk.iter().map(|&v| v as f64).collect();
                            let mut part = vec![0f64; n * n];
                            let xc = MatRef::from_row_major_slice(&wide[..], chunk.len() / n, n);
                            syrk_lower(
                                MatMut::from_column_major_slice_mut(&mut part, n, n),
                                xc,
                                1.0,
                            );
                            part
                        })
                        .collect();
                    for part in &parts {
                        self.add_lower(part);
                    }
                }
            }
        }
        self.mirror_upper();
        self.tokens += t as u64;
        Ok(())
    }

    /// Adds a partial sum whose lower triangle holds `XᵀX` (column-major)
    /// into the upper triangle of the row-major accumulator: since the matrix
    /// is symmetric, column `j` of the former is row `j` of the latter, so both
    /// are read contiguously. [`Hessian::mirror_upper`] then fills the lower half.
    fn add_lower<T: Copy + Into<f64>>(&mut self, part: &[T]) {
        let n = self.n;
        for j in 0..n {
            let src = &part[j * n + j..(j + 1) * n];
            let dst = &mut self.sum[j * n + j..(j + 1) * n];
            for (d, &v) in dst.iter_mut().zip(src) {
                *d += v.into();
            }
        }
    }

    /// Copies the upper triangle onto the lower one, in cache-sized tiles.
    fn mirror_upper(&mut self) {
        const T: usize = 64;
        let n = self.n;
        for ib in (0..n).step_by(T) {
            for jb in (0..=ib).step_by(T) {
                for i in ib..(ib + T).min(n) {
                    for j in jb..(jb + T).min(i) {
                        self.sum[i * n + j] = self.sum[j * n + i];
                    }
                }
            }
        }
    }

    /// Adds another accumulator (e.g. from another calibration shard).
    ///
    /// # Panics
    /// If the dimensions differ (shape contract).
    #[track_caller]
    pub fn merge(&mut self, other: &Hessian) {
        assert_eq!(
            self.n, other.n,
            "cannot merge Hessians of different dimensions"
        );
        for (a, b) in self.sum.iter_mut().zip(&other.sum) {
            *a += b;
        }
        self.tokens += other.tokens;
    }

    /// Multiplies the stored sum by `factor` (token count unchanged).
    pub fn scale(&mut self, factor: f64) {
        for v in &mut self.sum {
            *v *= factor;
        }
    }

    /// The flat row-major `n × n` matrix (for serialisation; store
    /// [`Hessian::tokens`] next to it).
    pub fn to_flat(&self) -> Vec<f64> {
        self.sum.clone()
    }

    /// Consumes the accumulator into its flat row-major matrix.
    pub fn into_flat(self) -> Vec<f64> {
        self.sum
    }

    /// Rebuilds an accumulator from [`Hessian::to_flat`] output.
    ///
    /// Validates the length, finiteness, non-negative diagonal and symmetry
    /// (up to `1e-12` relative, then mirrored exactly from the lower triangle).
    pub fn from_flat(n: usize, tokens: u64, mut data: Vec<f64>) -> Result<Self, HessianError> {
        if n == 0 || data.len() != n * n {
            return Err(HessianError::BadLength {
                n,
                expected: n * n,
                got: data.len(),
            });
        }
        if let Some(k) = data.iter().position(|v| !v.is_finite()) {
            return Err(HessianError::NonFinite {
                row: k / n,
                col: k % n,
            });
        }
        for i in 0..n {
            let d = data[i * n + i];
            if d < 0.0 {
                return Err(HessianError::NegativeDiagonal { index: i, value: d });
            }
            for j in 0..i {
                let (a, b) = (data[i * n + j], data[j * n + i]);
                if (a - b).abs() > 1e-12 * a.abs().max(b.abs()) {
                    return Err(HessianError::NotSymmetric {
                        row: i,
                        col: j,
                        a,
                        b,
                    });
                }
                data[j * n + i] = a;
            }
        }
        Ok(Self {
            n,
            sum: data,
            tokens,
            accumulation: Accumulation::default(),
        })
    }
}

/// `dst (lower triangle) = xᵀx` for `x` of shape `[t, n]`.
fn syrk_lower<T: faer::traits::ComplexField + Copy>(dst: MatMut<'_, T>, x: MatRef<'_, T>, one: T) {
    matmul(
        dst,
        BlockStructure::TriangularLower,
        Accum::Replace,
        x.transpose(),
        BlockStructure::Rectangular,
        x,
        BlockStructure::Rectangular,
        one,
        Par::Seq,
    );
}
