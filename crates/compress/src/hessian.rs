//! Accumulation of the layer-input Hessian `H = Σ_t x_t x_tᵀ`.
//!
//! A batch `X ∈ ℝ^{T×n}` (row-major, one token per row) adds `XᵀX`. With the
//! default [`Accumulation::F32Chunked`], the batch is cut into chunks of at most
//! `chunk_tokens` tokens; each chunk's `X_cᵀX_c` is computed by f32 GEMMs
//! (upper triangle only, in row panels, the matrix is symmetric) and added into
//! the f64 accumulator. The f32 rounding error is therefore that of a sum of at most
//! `chunk_tokens` terms (relative ≈ `√chunk · 2⁻²⁴` typically), and the sum over
//! chunks is in f64; `docs/gptq.md` has the measured error against a pure-f64
//! reference. [`Accumulation::F64`] converts each chunk to f64 and uses an f64
//! GEMM (reference mode, several times slower).
//!
//! The raw sum is stored, with the token count; divide by
//! [`Hessian::tokens`] for the mean (the GPTQ reference keeps `2/T · Σ x xᵀ`,
//! which differs by a constant factor that no result here depends on).

use faer::linalg::matmul::matmul;
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
    /// The same matrix as an owned faer matrix (aligned columns), made once
    /// by [`Hessian::aligned`] and dropped by every change of `sum`.
    aligned: std::sync::OnceLock<faer::Mat<f64>>,
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
            aligned: std::sync::OnceLock::new(),
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
        self.aligned = std::sync::OnceLock::new();
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
        // Each chunk's product is split into row panels of the upper triangle,
        // computed in parallel, each by one single-threaded GEMM, and every
        // entry receives the chunks' contributions in chunk order: the result
        // does not depend on the thread count or scheduling (a database rebuilt
        // after a crash must be bit-identical to one built in one go).
        match self.accumulation {
            Accumulation::F32Chunked { chunk_tokens } => {
                for chunk in x.chunks(chunk_tokens * n) {
                    let xc = MatRef::from_row_major_slice(chunk, chunk.len() / n, n);
                    add_xtx_upper(&mut self.sum, n, xc, 1.0f32);
                }
            }
            Accumulation::F64 => {
                let mut wide = Vec::new();
                for chunk in x.chunks(F64_CHUNK * n) {
                    wide.clear();
                    wide.extend(chunk.iter().map(|&v| v as f64));
                    let xc = MatRef::from_row_major_slice(&wide[..], chunk.len() / n, n);
                    add_xtx_upper(&mut self.sum, n, xc, 1.0f64);
                }
            }
        }
        self.mirror_upper();
        self.tokens += t as u64;
        Ok(())
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
        self.aligned = std::sync::OnceLock::new();
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
        self.aligned = std::sync::OnceLock::new();
        for v in &mut self.sum {
            *v *= factor;
        }
    }

    /// The matrix as an owned faer matrix, copied once and kept until the
    /// sum changes. The error metrics multiply by it for every variant of a
    /// layer: one copy per Hessian instead of two per variant, which at
    /// n = 4,864 (a 189 MB copy) left the allocator holding one unusable
    /// freed copy per variant (an aligned request does not fit the exact
    /// hole of the previous one), 1.1 GB per block at the 0.5 B shape.
    pub fn aligned(&self) -> MatRef<'_, f64> {
        let n = self.n;
        self.aligned
            .get_or_init(|| faer::Mat::<f64>::from_fn(n, n, |i, j| self.sum[i * n + j]))
            .as_ref()
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
            aligned: std::sync::OnceLock::new(),
        })
    }
}

/// Tokens per f64 chunk in [`Accumulation::F64`] mode.
const F64_CHUNK: usize = 2048;
/// Rows per panel of the upper triangle.
const PANEL: usize = 128;

/// Adds the upper triangle of `xᵀx` (`x` of shape `[t, n]`) into the row-major
/// `n × n` accumulator `sum`. Row panel `[j₀, j₁)` × columns `[j₀, n)` is one
/// rectangular GEMM `x[:, j₀:j₁]ᵀ · x[:, j₀:]` (about half the flops of the
/// full product overall); panels run in parallel and touch disjoint rows.
fn add_xtx_upper<T>(sum: &mut [f64], n: usize, x: MatRef<'_, T>, one: T)
where
    T: faer::traits::ComplexField + Copy + Into<f64> + Send + Sync,
{
    sum.par_chunks_mut(PANEL * n)
        .enumerate()
        .for_each(|(p, rows)| {
            let j0 = p * PANEL;
            let bw = rows.len() / n;
            let w = n - j0;
            // Row-major bw × w product.
            let mut tmp = vec![one; bw * w];
            matmul(
                MatMut::from_column_major_slice_mut(&mut tmp[..], w, bw).transpose_mut(),
                Accum::Replace,
                x.subcols(j0, bw).transpose(),
                x.subcols(j0, w),
                one,
                Par::Seq,
            );
            for (jj, row) in rows.chunks_mut(n).enumerate() {
                let src = &tmp[jj * w + jj..(jj + 1) * w];
                for (d, &v) in row[j0 + jj..].iter_mut().zip(src) {
                    *d += v.into();
                }
            }
        });
}
