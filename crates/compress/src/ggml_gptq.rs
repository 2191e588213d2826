//! GPTQ inside ggml's block grids: the database method `gptq-kquant`.
//!
//! [`gptq_ggml`] quantizes a layer to a ggml type (Q2_K … Q6_K, Q8_0, the
//! 32-value Q4_0/Q4_1/Q5_0/Q5_1/IQ4_NL, IQ4_XS, and the lattice i-quants
//! IQ2_XXS/IQ2_XS/IQ2_S/IQ3_XXS/IQ3_S) with GPTQ's error feedback, and returns
//! the exact ggml block bytes ([`GgmlQuantized`]): what llama.cpp loads, with
//! the type's real bits per weight.
//!
//! The lattice i-quants have no per-weight level: they are swept one
//! 256-column super-block per lazy block, with ggml's scales for the block's
//! current weights ([`LatticeGrid`]) and each group of 8 or 4 columns rounded
//! to the codebook point of least exact group loss among the candidates near
//! it, its columns' errors then fed forward one by one (docs/gptq.md,
//! "Inside the lattice i-quants"). The rest of this documentation describes
//! the per-weight grids.
//!
//! # Algorithm
//!
//! With `U` the upper Cholesky factor of the damped `H⁻¹` (`H⁻¹ = UᵀU`, from a
//! [`GptqFactor`] prepared without act-order), every row `w` is swept over the
//! input columns in their original order, one ggml block (`B` = 256 values for
//! the k-quants, 32 for the others) at a time:
//!
//! ```text
//! for each block [b₀, b₀ + B):
//!     grid  = BlockGrid::new(current w[b₀ .. b₀+B])   (ggml's own scale choice,
//!                                                      imatrix-weighted if given)
//!     for j in b₀ .. b₀+B:
//!         (c_j, q_j) = grid.round(j − b₀, w_j)         (ggml's level rule; q_j is
//!                                                      the decoded f32 value)
//!         e_j  = (w_j − q_j) / U_jj
//!         w_k -= e_j · U_jk        for k > j
//!     bytes = grid.assemble(c)                        (the exact ggml block)
//! ```
//!
//! The super-block scales and mins are chosen exactly as ggml's encoder would
//! choose them for the block's *current* (error-compensated) weights, so the
//! feedback of the earlier columns is taken into account by the scale search
//! too; the levels follow ggml's own rounding rule for that block; and `q_j`
//! is bit-identical to what `dequantize` of the written block returns, so the
//! error fed forward is the error llama.cpp will see. With a diagonal `H`
//! (`U` diagonal) there is nothing to feed back and the output is byte for
//! byte [`dynapress_ggml::quantize`] with the same importance vector (tested
//! for every type).
//!
//! *Lazy batch updates*: the updates inside a lazy block of `L` columns are
//! applied immediately (row by row, `w[k+1 .. i₂] -= e_j U[j, k+1 .. i₂]`); the
//! rest of the row is updated once per lazy block by one GEMM,
//! `W[:, i₂:] -= E · U[i₁:i₂, i₂:]`. `L` is a whole number of ggml blocks, so
//! every block is complete when its grid is chosen: `L = 256` for the k-quants,
//! 128 for Q8_0, IQ4_NL and for Q4_0…Q5_1 without imatrix. Q4_0…Q5_1 *with* an
//! imatrix choose a block's parameters from the mean square of the whole row
//! as well; there `L = 32`, so that at each block start every column of the
//! row is up to date (earlier columns hold the value they were rounded from,
//! later ones all feedback so far), i.e. the row unbatched GPTQ would hold.
//!
//! *No act-order*: ggml's blocks are runs of consecutive input columns, so
//! the columns must be processed in their original order. A factor prepared
//! with `act_order` is refused ([`GgmlGptqError::ActOrder`]).
//!
//! *Dead inputs* (`H_jj = 0`, handled by [`GptqFactor`]): their row and
//! column of `U` are zero off the diagonal, so they receive no feedback and
//! give none. Unlike [`GptqFactor::quantize`], their weights are kept rather
//! than zeroed (0 is generally not a level of a k-quant grid, and zeroing
//! would change the block's scale choice); they are rounded on their block's
//! grid like any other column.
//!
//! *Parallelism*: rows are independent. They are cut into chunks of a fixed
//! 128 rows processed in parallel (rayon); each chunk runs its own sequential
//! GEMMs, so the bytes do not depend on the thread count (tested).

use crate::isa::Isa;
use dynapress_ggml::{BlockGrid, Error as GgmlError, GgmlType, LatticeGrid, validate_row_data};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::{GptqFactor, Hessian};

/// Rows per parallel work item (fixed: the results must not depend on the
/// thread count).
const CHUNK_ROWS: usize = 128;
/// Rows rounded together, column by column (their `U` row stays in L1).
const SUB_ROWS: usize = 8;
/// Smallest lazy block for the types whose grids depend on the block only.
const MIN_LAZY: usize = 128;

/// Errors of [`gptq_ggml`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GgmlGptqError {
    /// The factor was prepared with act-order.
    #[error(
        "GPTQ in ggml grids needs the input columns in their original order (ggml blocks are consecutive columns), \
         but the GptqFactor was prepared with act_order; prepare it with FactorParams {{ act_order: false, .. }}"
    )]
    ActOrder,
    /// The weights are not whole rows of the factor's dimension.
    #[error(
        "weight matrix has {len} values, not a whole number of rows of {cols} (the Hessian's dimension)"
    )]
    Shape {
        /// Values given.
        len: usize,
        /// The factor's dimension (input features).
        cols: usize,
    },
    /// A ggml-level error: type without grid, row length not a multiple of the
    /// block (names llama-quantize's fallback type), bad importance vector,
    /// non-finite weight, f16 scale overflow (with row and block).
    #[error(transparent)]
    Ggml(#[from] GgmlError),
    /// The error feedback produced a non-finite value.
    #[error(
        "GPTQ in {ty} grids diverged at row {row}, input column {col}: the inverse Hessian is too ill-conditioned; \
         raise FactorParams::damp"
    )]
    Diverged {
        /// The target type.
        ty: GgmlType,
        /// Row (output feature).
        row: usize,
        /// Input column.
        col: usize,
    },
}

/// A linear layer stored as a ggml tensor: `rows` rows of `cols` values, each
/// row `ty.row_bytes(cols)` bytes of ggml blocks, rows in order — the tensor
/// data of a GGUF file for a weight of `ne = [cols, rows]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgmlQuantized {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    bytes: Vec<u8>,
}

impl GgmlQuantized {
    /// Wraps ggml tensor data (for example read back from a database), checking
    /// that `cols` is a whole number of blocks, that `bytes` is exactly
    /// `rows × ty.row_bytes(cols)` long and that it passes
    /// [`validate_row_data`] (no NaN/∞ scales).
    pub fn from_bytes(
        ty: GgmlType,
        rows: usize,
        cols: usize,
        bytes: Vec<u8>,
    ) -> Result<Self, GgmlError> {
        let row_bytes = ty.row_bytes(cols).ok_or(GgmlError::RowLength {
            ty,
            n_per_row: cols,
            block: ty.block_size(),
            fallback: ty.fallback_for_row(cols),
        })?;
        let expected = rows.saturating_mul(row_bytes);
        if bytes.len() != expected {
            return Err(GgmlError::ByteLength {
                ty,
                n: rows.saturating_mul(cols),
                expected,
                got: bytes.len(),
            });
        }
        validate_row_data(ty, &bytes)?;
        Ok(Self {
            ty,
            rows,
            cols,
            bytes,
        })
    }

    /// The ggml type.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// Rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (input features; the GGUF `ne[0]`).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The ggml tensor data: `rows × ty.row_bytes(cols)` bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The ggml tensor data, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Decoded weights, row-major `[rows, cols]`, bit-identical to ggml's
    /// `dequantize_row_*`.
    pub fn dequantize(&self) -> Vec<f32> {
        dynapress_ggml::dequantize(self.ty, &self.bytes, self.rows * self.cols)
            .expect("GgmlQuantized holds whole blocks of the right length")
    }

    /// Exact storage size in bits: `8 × bytes().len()`.
    pub fn storage_bits(&self) -> u64 {
        8 * self.bytes.len() as u64
    }

    /// `storage_bits / (rows · cols)` (= the type's bits per weight; NaN for an
    /// empty tensor).
    pub fn bits_per_weight(&self) -> f64 {
        self.storage_bits() as f64 / (self.rows * self.cols) as f64
    }
}

/// The importance vector llama-quantize derives from an imatrix, from a
/// [`Hessian`]: `diag(H) / tokens` (the per-column mean of `x²`), as f32. A
/// Hessian that saw no tokens gives all ones, llama-quantize's value for a
/// matrix the imatrix never reached.
pub fn imatrix_from_hessian(h: &Hessian) -> Vec<f32> {
    let t = h.tokens();
    if t == 0 {
        return vec![1.0; h.dim()];
    }
    h.diag().iter().map(|&d| (d / t as f64) as f32).collect()
}

/// GPTQ with ggml's grids (see the module docs): quantizes `w` (row-major
/// `[rows, factor.dim()]`) to `ty`, choosing every block's scales from the
/// current weights with `imatrix` (one importance per input column, as for
/// [`dynapress_ggml::quantize`]) and feeding each column's rounding error
/// forward through `factor`'s `U`.
///
/// Errors: [`GgmlGptqError::ActOrder`] for an act-order factor;
/// [`GgmlGptqError::Shape`] when `w` is not whole rows; ggml's errors for a
/// type without grid (F16…), a row length that is not a multiple of the
/// block (naming llama-quantize's fallback type), a bad importance vector, a
/// non-finite weight (with row and column) and an f16 scale overflow (with
/// row and block); [`GgmlGptqError::Diverged`] if the feedback overflows.
pub fn gptq_ggml(
    factor: &GptqFactor,
    w: &[f32],
    ty: GgmlType,
    imatrix: Option<&[f32]>,
) -> Result<GgmlQuantized, GgmlGptqError> {
    if factor.order().is_some() {
        return Err(GgmlGptqError::ActOrder);
    }
    let n = factor.dim();
    if n == 0 || !w.len().is_multiple_of(n) {
        return Err(GgmlGptqError::Shape {
            len: w.len(),
            cols: n,
        });
    }
    check_args(ty, n, imatrix)?;
    if let Some(k) = w.iter().position(|v| !v.is_finite()) {
        return Err(GgmlError::NonFinite {
            ty,
            row: k / n,
            col: k % n,
            value: w[k],
        }
        .into());
    }
    let rows = w.len() / n;
    let bs = ty.block_size();
    let row_bytes = n / bs * ty.type_size();
    let whole_row = ty.uses_row_stat() && imatrix.is_some();
    let lazy = if ty.is_lattice() || whole_row {
        bs
    } else {
        bs.max(MIN_LAZY)
    };
    let sweep = Sweep {
        ty,
        n,
        u: factor.upper_factor(),
        imatrix,
        whole_row,
        lazy,
    };
    let isa = Isa::detect();
    let mut bytes = vec![0u8; rows * row_bytes];
    // Every chunk reports its own first error; the lowest chunk's wins, so the
    // error reported does not depend on scheduling either.
    let failures: Vec<Option<GgmlGptqError>> = bytes
        .par_chunks_mut(CHUNK_ROWS * row_bytes)
        .enumerate()
        .map(|(ci, out)| {
            let r0 = ci * CHUNK_ROWS;
            let rr = out.len() / row_bytes;
            let mut wt = w[r0 * n..(r0 + rr) * n].to_vec();
            sweep.run(isa, r0, &mut wt, out).err()
        })
        .collect();
    if let Some(e) = failures.into_iter().flatten().next() {
        return Err(e);
    }
    Ok(GgmlQuantized {
        ty,
        rows,
        cols: n,
        bytes,
    })
}

/// The argument checks of ggml's encoders, done once up front.
fn check_args(ty: GgmlType, n: usize, imatrix: Option<&[f32]>) -> Result<(), GgmlError> {
    if !ty.is_quantized() {
        return Err(GgmlError::NotQuantized { ty });
    }
    if !n.is_multiple_of(ty.block_size()) {
        return Err(GgmlError::RowLength {
            ty,
            n_per_row: n,
            block: ty.block_size(),
            fallback: ty.fallback_for_row(n),
        });
    }
    if let Some(q) = imatrix {
        if q.len() != n {
            return Err(GgmlError::ImatrixLength {
                ty,
                got: q.len(),
                n_per_row: n,
            });
        }
        if let Some((index, &value)) = q.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(GgmlError::ImatrixNotFinite { index, value });
        }
    }
    Ok(())
}

struct Sweep<'a> {
    ty: GgmlType,
    n: usize,
    /// `U`, row-major `n × n`.
    u: &'a [f32],
    imatrix: Option<&'a [f32]>,
    /// Grids read the whole row (legacy types with imatrix).
    whole_row: bool,
    /// Columns per lazy-update block (a multiple of the ggml block).
    lazy: usize,
}

impl Sweep<'_> {
    /// Sweeps a chunk of rows starting at row `r0`: `wt` is its row-major
    /// working copy (`rr × n`), `out` its `rr` rows of ggml bytes.
    fn run(
        &self,
        isa: Isa,
        r0: usize,
        wt: &mut [f32],
        out: &mut [u8],
    ) -> Result<(), GgmlGptqError> {
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the features were detected at runtime.
            Isa::Avx512 => unsafe { self.run_avx512(r0, wt, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the features were detected at runtime.
            Isa::Avx2 => unsafe { self.run_avx2(r0, wt, out) },
            Isa::Generic => self.run_impl(r0, wt, out),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma,sse4.1")]
    unsafe fn run_avx512(
        &self,
        r0: usize,
        wt: &mut [f32],
        out: &mut [u8],
    ) -> Result<(), GgmlGptqError> {
        self.run_impl(r0, wt, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,sse4.1")]
    unsafe fn run_avx2(
        &self,
        r0: usize,
        wt: &mut [f32],
        out: &mut [u8],
    ) -> Result<(), GgmlGptqError> {
        self.run_impl(r0, wt, out)
    }

    #[inline(always)]
    fn run_impl(&self, r0: usize, wt: &mut [f32], out: &mut [u8]) -> Result<(), GgmlGptqError> {
        if self.ty.is_lattice() {
            return self.run_lattice(r0, wt, out);
        }
        let (ty, n, u, lazy) = (self.ty, self.n, self.u, self.lazy);
        let (bs, ts) = (ty.block_size(), ty.type_size());
        let row_bytes = n / bs * ts;
        let rr = wt.len() / n;
        // Errors of the current lazy block, row-major (r, k − i₁) at r·lazy + k − i₁.
        let mut err = vec![0f32; rr * lazy];
        let mut grids: Vec<BlockGrid> = Vec::with_capacity(SUB_ROWS);
        let mut codes = vec![0u8; SUB_ROWS * bs];
        let mut i1 = 0;
        while i1 < n {
            let i2 = (i1 + lazy).min(n);
            for s0 in (0..rr).step_by(SUB_ROWS) {
                let sr = SUB_ROWS.min(rr - s0);
                for b0 in (i1..i2).step_by(bs) {
                    let blk = b0 / bs;
                    // Every row's grid from its current weights: the block's
                    // columns have received all feedback of earlier columns.
                    grids.clear();
                    for r in s0..s0 + sr {
                        grids.push(self.grid(r0, r, &wt[r * n..(r + 1) * n], blk)?);
                    }
                    for k in b0..b0 + bs {
                        let urow = &u[k * n..k * n + i2];
                        let d = urow[k];
                        let utail = &urow[k + 1..];
                        for (t, grid) in grids.iter().enumerate() {
                            let r = s0 + t;
                            let row = &mut wt[r * n + k..r * n + i2];
                            let x = row[0];
                            let (c, q) = grid.round(k - b0, x);
                            codes[t * bs + k - b0] = c;
                            let e = (x - q) / d;
                            err[r * lazy + k - i1] = e;
                            for (wv, &uv) in row[1..].iter_mut().zip(utail) {
                                *wv -= e * uv;
                            }
                        }
                    }
                    for (t, grid) in grids.iter().enumerate() {
                        let r = s0 + t;
                        let o = &mut out[r * row_bytes + blk * ts..r * row_bytes + (blk + 1) * ts];
                        grid.assemble(&codes[t * bs..(t + 1) * bs], o);
                        check_block(ty, o, r0 + r, blk)?;
                    }
                }
            }
            self.check_and_update(r0, wt, &err, i1, i2)?;
            i1 = i2;
        }
        Ok(())
    }

    /// After a lazy block `[i₁, i₂)`: fails on a non-finite error, then
    /// applies the block's feedback to the later columns.
    #[inline(always)]
    fn check_and_update(
        &self,
        r0: usize,
        wt: &mut [f32],
        err: &[f32],
        i1: usize,
        i2: usize,
    ) -> Result<(), GgmlGptqError> {
        let (n, u, lazy) = (self.n, self.u, self.lazy);
        let rr = wt.len() / n;
        let cnt = i2 - i1;
        for r in 0..rr {
            let e = &err[r * lazy..r * lazy + cnt];
            if let Some(p) = e.iter().position(|v| !v.is_finite()) {
                return Err(GgmlGptqError::Diverged {
                    ty: self.ty,
                    row: r0 + r,
                    col: i1 + p,
                });
            }
        }
        if i2 < n {
            // Lazy batch update: W[:, i₂:] -= E · U[i₁:i₂, i₂:], written
            // transposed over the same memory (W[:, i₂:]ᵀ is a column-major
            // view with column stride n): faer 0.24.4's f32 matmul corrupts
            // memory when the destination is a row-major view with a row
            // stride larger than its width.
            let rest = n - i2;
            let dst = MatMut::from_column_major_slice_with_stride_mut(&mut wt[i2..], rest, rr, n);
            let lhs = MatRef::from_column_major_slice_with_stride(&u[i1 * n + i2..], rest, cnt, n);
            let rhs = MatRef::from_column_major_slice_with_stride(err, cnt, rr, lazy);
            matmul(dst, Accum::Add, lhs, rhs, -1.0f32, Par::Seq);
        }
        Ok(())
    }

    /// The sweep for the lattice i-quants (see the module docs): one
    /// super-block per lazy block; in each, ggml's scales from the current
    /// weights, then group by group the codebook point that minimises the
    /// group's GPTQ loss, its error fed forward column by column.
    #[inline(always)]
    fn run_lattice(&self, r0: usize, wt: &mut [f32], out: &mut [u8]) -> Result<(), GgmlGptqError> {
        let (ty, n, u, lazy) = (self.ty, self.n, self.u, self.lazy);
        debug_assert_eq!(lazy, 256);
        let ts = ty.type_size();
        let row_bytes = n / 256 * ts;
        let rr = wt.len() / n;
        let mut err = vec![0f32; rr * lazy];
        // 1 / U_jj²: the diagonal of the conditional Hessian GPTQ rounds against.
        let h: Vec<f32> = (0..n)
            .map(|j| {
                let d = u[j * n + j];
                1.0 / (d * d)
            })
            .collect();
        let mut points = [0u16; 64];
        let mut signs = [0u8; 32];
        let mut cands: Vec<u16> = Vec::with_capacity(64);
        for i1 in (0..n).step_by(256) {
            let i2 = i1 + 256;
            let blk = i1 / 256;
            for r in 0..rr {
                let row = &mut wt[r * n..(r + 1) * n];
                let q = self.imatrix.map(|q| &q[i1..i2]);
                let grid = LatticeGrid::new(ty, &row[i1..i2], q).map_err(|e| match e {
                    GgmlError::NonFinite { col, .. } => GgmlGptqError::Diverged {
                        ty,
                        row: r0 + r,
                        col: i1 + col,
                    },
                    GgmlError::EncoderAbort { .. } => GgmlError::EncoderAbort {
                        ty,
                        row: r0 + r,
                        block: blk,
                    }
                    .into(),
                    other => other.into(),
                })?;
                let dim = grid.group_len();
                for (s, sign) in signs.iter_mut().enumerate() {
                    let j0 = i1 + 8 * s;
                    *sign = choose_signs(&row[j0..j0 + 8], &h[j0..j0 + 8], grid.parity_signs());
                    for g0 in (j0..j0 + 8).step_by(dim) {
                        let best = best_point(
                            &grid,
                            g0 - i1,
                            &row[g0..g0 + dim],
                            *sign >> (g0 - j0),
                            u,
                            n,
                            g0,
                            &mut cands,
                        );
                        points[(g0 - i1) / dim] = best as u16;
                        for k in g0..g0 + dim {
                            let x = row[k];
                            let neg = *sign & (1 << (k - j0)) != 0;
                            let qv = grid.value(k - i1, best, neg);
                            let e = (x - qv) / u[k * n + k];
                            err[r * lazy + k - i1] = e;
                            for (wv, &uv) in
                                row[k + 1..i2].iter_mut().zip(&u[k * n + k + 1..k * n + i2])
                            {
                                *wv -= e * uv;
                            }
                        }
                    }
                }
                let o = &mut out[r * row_bytes + blk * ts..r * row_bytes + (blk + 1) * ts];
                grid.assemble(&points[..256 / dim], &signs, o);
                check_block(ty, o, r0 + r, blk)?;
            }
            self.check_and_update(r0, wt, &err, i1, i2)?;
        }
        Ok(())
    }

    /// ggml's grid for block `blk` of the chunk's row `r` (`row`: its current
    /// weights).
    fn grid(
        &self,
        r0: usize,
        r: usize,
        row: &[f32],
        blk: usize,
    ) -> Result<BlockGrid, GgmlGptqError> {
        let (ty, bs) = (self.ty, self.ty.block_size());
        let b0 = blk * bs;
        let (grid, offset) = if self.whole_row {
            (BlockGrid::new(ty, row, blk, self.imatrix), 0)
        } else {
            let q = self.imatrix.map(|q| &q[b0..b0 + bs]);
            (BlockGrid::new(ty, &row[b0..b0 + bs], 0, q), b0)
        };
        // The original weights were checked, so a non-finite value here came
        // from the feedback.
        grid.map_err(|e| match e {
            GgmlError::NonFinite { col, .. } => GgmlGptqError::Diverged {
                ty,
                row: r0 + r,
                col: offset + col,
            },
            other => other.into(),
        })
    }
}

/// An assembled block that llama.cpp would refuse (its f16 scale
/// overflowed) is ggml's `ScaleOverflow` at `row`, `block`.
fn check_block(ty: GgmlType, o: &[u8], row: usize, block: usize) -> Result<(), GgmlGptqError> {
    validate_row_data(ty, o).map_err(|_| GgmlError::ScaleOverflow { ty, row, block }.into())
}

/// The sign byte of 8 weights: bit `i` set where `x_i < 0`. With parity signs
/// (7 stored bits, an even number of negatives) an odd count is made even by
/// flipping the weight of least `h_i x_i²`, as ggml's encoders do with their
/// element weights.
fn choose_signs(x: &[f32], h: &[f32], parity: bool) -> u8 {
    let mut s = 0u8;
    for (i, &v) in x.iter().enumerate() {
        if v < 0.0 {
            s |= 1 << i;
        }
    }
    if parity && s.count_ones() % 2 == 1 {
        let mut imin = 0;
        let mut min = f32::INFINITY;
        for i in 0..8 {
            let a = h[i] * x[i] * x[i];
            if a < min {
                min = a;
                imin = i;
            }
        }
        s ^= 1 << imin;
    }
    s
}

/// The codebook point for the group at super-block offset `j` (weights `x`,
/// sign bits `signs` from bit 0; the group's columns start at `g0` of `U`):
/// among the candidates [`LatticeGrid::near_points`] gives for the signed
/// magnitudes (the point of the nearest levels, or ggml's neighbour list when
/// those are off the codebook), the one of least exact group GPTQ loss
/// `Σ e_i²`, `e_i = (x_i' − q_i) / U_ii` with `x'` updated by the group's
/// earlier errors (first on ties).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn best_point(
    grid: &LatticeGrid,
    j: usize,
    x: &[f32],
    signs: u8,
    u: &[f32],
    n: usize,
    g0: usize,
    cands: &mut Vec<u16>,
) -> usize {
    let dim = x.len();
    let mut t = [0f32; 8];
    for i in 0..dim {
        t[i] = if signs & (1 << i) != 0 { -x[i] } else { x[i] };
    }
    cands.clear();
    grid.near_points(j, &t[..dim], cands);
    let mut best = (f32::INFINITY, cands[0] as usize);
    for &k in cands.iter() {
        let k = k as usize;
        let mut xs = [0f32; 8];
        xs[..dim].copy_from_slice(x);
        let mut loss = 0f32;
        for a in 0..dim {
            let neg = signs & (1 << a) != 0;
            let q = grid.value(j + a, k, neg);
            let e = (xs[a] - q) / u[(g0 + a) * n + g0 + a];
            loss += e * e;
            for b in a + 1..dim {
                xs[b] -= e * u[(g0 + a) * n + g0 + b];
            }
        }
        if loss < best.0 {
            best = (loss, k);
        }
    }
    best.1
}
