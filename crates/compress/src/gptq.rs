//! GPTQ (Frantar, Ashkboos, Hoefler, Alistarh 2022, "GPTQ: Accurate
//! Post-Training Quantization for Generative Pre-trained Transformers").
//!
//! # Algorithm
//!
//! For each row `w` of `W` (rows are independent), GPTQ quantizes the input
//! columns one at a time in a fixed order and, after quantizing column `j`,
//! moves the weights of the not-yet-quantized columns to compensate its error
//! in the least-squares sense of `‖(w − ŵ) X‖²`. With `U` the upper Cholesky
//! factor of `H⁻¹` (`H⁻¹ = UᵀU`), the update for column `j` is
//!
//! ```text
//! q_j  = quant(w_j)                       (grid of the group of column j)
//! e_j  = (w_j − q_j) / U_jj
//! w_k -= e_j · U_jk           for every k > j
//! ```
//!
//! Preparation ([`GptqFactor::new`]), shared by every bit width:
//! 1. *Dead inputs*: a column with `H_jj = 0` never sees a non-zero input; its
//!    row and column of `H` are zeroed, its diagonal set to the mean of the
//!    live diagonal (the reference uses 1, which is not scale-invariant) and
//!    its weights quantized as 0 (exactly on every grid).
//! 2. *Act-order* (optional): columns are processed in descending `H_jj`.
//! 3. *Damping*: `H += λ I` with `λ = damp · mean(diag H)`; if the Cholesky
//!    factorisation fails, `damp` is multiplied by `damp_growth` and retried up
//!    to `max_retries` times; the damping finally used is recorded.
//! 4. `U` without forming `H⁻¹`: with `J` the reversal permutation, factor
//!    `J H J = L Lᵀ` (lower Cholesky, f64, faer); then `H = R Rᵀ` with the upper
//!    triangular `R = J L J`, so `H⁻¹ = R⁻ᵀ R⁻¹` and, by uniqueness of the
//!    Cholesky factor, `U = R⁻¹ = J L⁻¹ J`. This is one Cholesky and one
//!    triangular inverse (`2n³/3` flops) instead of the reference's
//!    Cholesky → inverse → Cholesky, and never forms `H⁻¹` explicitly. `U` is
//!    then rounded to f32 for the sweep.
//!
//! Sweep ([`GptqFactor::quantize`], f32): columns are processed in blocks of
//! `block_size` (128). Inside a block the updates are applied column by column
//! to the block only; the errors `E` of the block are kept and the rest of the
//! row is updated once per block by a GEMM, `W[:, i₂:] -= E · U[i₁:i₂, i₂:]`
//! ("lazy batch updates"). Rows are split into chunks processed in parallel
//! (rayon); each chunk runs its own GEMMs.
//!
//! Groups: with dynamic groups (default) a group's grid is fitted when its
//! first column is reached, from the current (error-compensated) weights of the
//! whole group. To make that exact with lazy updates, a block is cut short at
//! any group start that would otherwise straddle the block's end (with
//! `g = 128 = block_size` nothing is cut). With `static_groups`, every grid is
//! fitted before the sweep from the original weights, in input-column order
//! (the reference's `static_groups`); act-order then needs no stored
//! permutation. Act-order with dynamic groups forms groups in processing order
//! and stores the permutation.

use crate::isa::Isa;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{LltError, cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::matmul::matmul;
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::{Accum, Mat, MatMut, MatRef, Par};
use half::f16;
use rayon::prelude::*;

use crate::grid::{ClipSearch, QuantScheme, check_finite, fit_group, grid_from_range};
use crate::{GptqError, Hessian, HessianError, Provenance, QuantError, QuantizedLinear};

/// Parameters of the Hessian preparation ([`GptqFactor::new`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FactorParams {
    /// Relative damping: `λ = damp · mean(diag H)` (0.01).
    pub damp: f64,
    /// Factor applied to `damp` after a failed Cholesky (10).
    pub damp_growth: f64,
    /// How many times the damping may be increased (4: up to `100×` … `10⁴×`).
    pub max_retries: u32,
    /// Process columns in descending `diag H` order (false).
    pub act_order: bool,
}

impl Default for FactorParams {
    fn default() -> Self {
        Self {
            damp: 0.01,
            damp_growth: 10.0,
            max_retries: 4,
            act_order: false,
        }
    }
}

/// Parameters of one quantization sweep ([`GptqFactor::quantize`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GptqQuantParams {
    /// Bit width and grouping.
    pub scheme: QuantScheme,
    /// Optional MSE clipping search when a group's grid is fitted.
    pub clip: Option<ClipSearch>,
    /// Fit all group grids before the sweep from the original weights.
    pub static_groups: bool,
    /// Columns per lazy-update block (128).
    pub block_size: usize,
}

impl Default for GptqQuantParams {
    fn default() -> Self {
        Self {
            scheme: QuantScheme::default(),
            clip: None,
            static_groups: false,
            block_size: 128,
        }
    }
}

/// All parameters of [`gptq()`] (preparation + sweep).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GptqParams {
    /// Bit width and grouping.
    pub scheme: QuantScheme,
    /// Optional MSE clipping search.
    pub clip: Option<ClipSearch>,
    /// Relative damping (0.01).
    pub damp: f64,
    /// Damping growth after a failed Cholesky (10).
    pub damp_growth: f64,
    /// Maximum damping increases (4).
    pub max_retries: u32,
    /// Descending `diag H` column order (false).
    pub act_order: bool,
    /// Static groups (false).
    pub static_groups: bool,
    /// Lazy-update block size (128).
    pub block_size: usize,
}

impl Default for GptqParams {
    fn default() -> Self {
        let f = FactorParams::default();
        let q = GptqQuantParams::default();
        Self {
            scheme: q.scheme,
            clip: q.clip,
            damp: f.damp,
            damp_growth: f.damp_growth,
            max_retries: f.max_retries,
            act_order: f.act_order,
            static_groups: q.static_groups,
            block_size: q.block_size,
        }
    }
}

impl GptqParams {
    /// The preparation part.
    pub fn factor_params(&self) -> FactorParams {
        FactorParams {
            damp: self.damp,
            damp_growth: self.damp_growth,
            max_retries: self.max_retries,
            act_order: self.act_order,
        }
    }

    /// The sweep part.
    pub fn quant_params(&self) -> GptqQuantParams {
        GptqQuantParams {
            scheme: self.scheme,
            clip: self.clip,
            static_groups: self.static_groups,
            block_size: self.block_size,
        }
    }
}

/// GPTQ on one layer: [`GptqFactor::new`] then [`GptqFactor::quantize`].
///
/// `w` is row-major `[rows, cols]` with `cols = h.dim()`.
///
/// # Panics
/// If `w.len()` is not a multiple of `h.dim()` or `block_size == 0` (shape
/// contracts).
#[track_caller]
pub fn gptq(w: &[f32], h: &Hessian, params: &GptqParams) -> Result<QuantizedLinear, GptqError> {
    GptqFactor::new(h, &params.factor_params())?.quantize(w, &params.quant_params())
}

/// A Hessian prepared for GPTQ: dead columns, damping, column order and the
/// upper Cholesky factor of the damped `H⁻¹`. Reusable for any number of
/// sweeps (bit widths, grids) on layers that share the Hessian.
#[derive(Clone, Debug)]
pub struct GptqFactor {
    n: usize,
    dead: Vec<bool>,
    /// Processing position `k` handles input column `order[k]`.
    order: Option<Vec<u32>>,
    /// `U`, row-major `n × n` (upper triangle), in processing order.
    u: Vec<f32>,
    damp: f64,
    damp_abs: f64,
    retries: u32,
}

impl GptqFactor {
    /// Prepares `h` (see the module docs).
    ///
    /// Errors: a non-finite entry or negative diagonal in `h`; a Cholesky that
    /// fails at every damping tried ([`GptqError::NotPositiveDefinite`]).
    pub fn new(h: &Hessian, params: &FactorParams) -> Result<Self, GptqError> {
        let n = h.dim();
        let hs = h.as_slice();
        if let Some(k) = hs.iter().position(|v| !v.is_finite()) {
            return Err(HessianError::NonFinite {
                row: k / n,
                col: k % n,
            }
            .into());
        }
        let diag = h.diag();
        if let Some(i) = diag.iter().position(|&d| d < 0.0) {
            return Err(HessianError::NegativeDiagonal {
                index: i,
                value: diag[i],
            }
            .into());
        }
        let dead: Vec<bool> = diag.iter().map(|&d| d == 0.0).collect();
        let live = dead.iter().filter(|&&d| !d).count();
        let fill = if live == 0 {
            1.0
        } else {
            diag.iter().sum::<f64>() / live as f64
        };
        let order: Vec<usize> = if params.act_order {
            let mut o: Vec<usize> = (0..n).collect();
            o.sort_by(|&a, &b| diag[b].total_cmp(&diag[a]).then(a.cmp(&b)));
            o
        } else {
            (0..n).collect()
        };
        // J·H_p·J in column-major: entry (i, j) is H_p[n-1-i, n-1-j], where
        // H_p[a, b] = H[order[a], order[b]] with dead rows/columns replaced.
        let hp = |a: usize, b: usize| -> f64 {
            let (oa, ob) = (order[a], order[b]);
            if dead[oa] || dead[ob] {
                if oa == ob { fill } else { 0.0 }
            } else {
                hs[oa * n + ob]
            }
        };
        let mean_diag = (0..n).map(|k| hp(k, k)).sum::<f64>() / n as f64;
        let par = Par::rayon(0);
        let mut stack_buf =
            MemBuffer::new(cholesky_in_place_scratch::<f64>(n, par, Default::default()));
        let mut damp = params.damp;
        let mut retries = 0;
        let u = loop {
            let lambda = damp * mean_diag;
            // Column-major fill; H is symmetric, so reading hp(j', i') keeps
            // the reads of H contiguous while filling column j.
            let mut a = Mat::<f64>::from_fn(n, n, |i, j| {
                let v = hp(n - 1 - j, n - 1 - i);
                if i == j { v + lambda } else { v }
            });
            let failed_at = match cholesky_in_place(
                a.as_mut(),
                Default::default(),
                par,
                MemStack::new(&mut stack_buf),
                Default::default(),
            ) {
                Ok(_) => {
                    // M = L⁻¹ written through a reversed view of a row-major
                    // buffer: M[r, c] lands at U[n-1-r, n-1-c], so the buffer
                    // is U = J L⁻¹ J directly, row-major.
                    let mut ub = vec![0f64; n * n];
                    {
                        let view = MatMut::from_column_major_slice_mut(&mut ub[..], n, n)
                            .transpose_mut()
                            .reverse_rows_and_cols_mut();
                        invert_lower_triangular(view, a.as_ref(), par);
                    }
                    drop(a);
                    let mut u = vec![0f32; n * n];
                    u.par_chunks_mut(n)
                        .zip(ub.par_chunks(n))
                        .enumerate()
                        .for_each(|(i, (row, src))| {
                            for j in i..n {
                                row[j] = src[j] as f32;
                            }
                        });
                    drop(ub);
                    let bad = (0..n).find(|&i| {
                        let d = u[i * n + i];
                        !(d.is_finite()
                            && d > 0.0
                            && u[i * n + i..(i + 1) * n].iter().all(|v| v.is_finite()))
                    });
                    match bad {
                        None => break u,
                        Some(i) => n - 1 - i,
                    }
                }
                Err(LltError::NonPositivePivot { index }) => index,
            };
            // failed_at indexes the reversed processing order.
            if retries >= params.max_retries {
                return Err(GptqError::NotPositiveDefinite {
                    damp_tried: damp,
                    column: order[n - 1 - failed_at],
                });
            }
            damp *= params.damp_growth;
            retries += 1;
        };
        let order = params
            .act_order
            .then(|| order.iter().map(|&c| c as u32).collect());
        Ok(Self {
            n,
            dead,
            order,
            u,
            damp,
            damp_abs: damp * mean_diag,
            retries,
        })
    }

    /// Input width.
    pub fn dim(&self) -> usize {
        self.n
    }

    /// Relative damping finally used (`λ / mean(diag H)`).
    pub fn damp(&self) -> f64 {
        self.damp
    }

    /// Absolute damping `λ` added to the diagonal (in the units of the stored H).
    pub fn damp_abs(&self) -> f64 {
        self.damp_abs
    }

    /// How many times the damping had to be increased (0 = the requested one worked).
    pub fn damp_retries(&self) -> u32 {
        self.retries
    }

    /// Dead input columns (`H_jj = 0`).
    pub fn dead_columns(&self) -> Vec<usize> {
        (0..self.n).filter(|&j| self.dead[j]).collect()
    }

    /// Act-order processing order (position → input column), if enabled.
    pub fn order(&self) -> Option<&[u32]> {
        self.order.as_deref()
    }

    /// The upper Cholesky factor `U` of the damped `H⁻¹` (`H⁻¹ = UᵀU`), f32,
    /// row-major `dim × dim` in processing order (see [`GptqFactor::order`]);
    /// the strict lower triangle is zero. For sweeps written outside this
    /// module (GPTQ in ggml's grids).
    pub fn upper_factor(&self) -> &[f32] {
        &self.u
    }

    #[inline]
    fn col(&self, k: usize) -> usize {
        match &self.order {
            Some(o) => o[k] as usize,
            None => k,
        }
    }

    /// Quantizes `w` (row-major `[rows, dim]`) with one scheme.
    ///
    /// # Panics
    /// If `w.len()` is not a multiple of [`GptqFactor::dim`] or
    /// `block_size == 0` (shape contracts).
    #[track_caller]
    pub fn quantize(
        &self,
        w: &[f32],
        params: &GptqQuantParams,
    ) -> Result<QuantizedLinear, GptqError> {
        let n = self.n;
        assert!(
            w.len().is_multiple_of(n),
            "w.len() = {} is not a multiple of the Hessian dimension {n}",
            w.len()
        );
        assert!(params.block_size > 0, "block_size must be positive");
        let scheme = params.scheme;
        scheme.validate()?;
        check_finite(w, n)?;
        let rows = w.len() / n;
        let gl = scheme.group_len(n);
        let ng = scheme.groups_per_row(n);
        let maxq = scheme.maxq();
        let dynamic = !params.static_groups && ng > 1;
        let store_perm = self.order.is_some() && dynamic;

        let mut scales = vec![f16::ZERO; rows * ng];
        let mut zeros = vec![0u8; rows * ng];
        if !dynamic {
            // Static grids from the original (dead-zeroed) weights, input order.
            scales
                .par_chunks_mut(ng)
                .zip(zeros.par_chunks_mut(ng))
                .enumerate()
                .try_for_each(|(r, (sc, zc))| {
                    let row: Vec<f32> = (0..n)
                        .map(|c| if self.dead[c] { 0.0 } else { w[r * n + c] })
                        .collect();
                    for (g, xs) in row.chunks(gl).enumerate() {
                        let grid =
                            fit_group(xs, &scheme, params.clip.as_ref()).map_err(|scale| {
                                QuantError::ScaleOverflow {
                                    row: r,
                                    group: g,
                                    scale,
                                }
                            })?;
                        sc[g] = grid.scale;
                        zc[g] = grid.zero;
                    }
                    Ok::<(), GptqError>(())
                })?;
        }
        // Group of each processing position.
        let gidx: Vec<usize> = (0..n)
            .map(|k| if dynamic { k / gl } else { self.col(k) / gl })
            .collect();
        let blocks = block_partition(n, params.block_size, dynamic.then_some(gl));
        let sweep = Sweep {
            f: self,
            scheme,
            clip: params.clip,
            gl,
            ng,
            maxq,
            dynamic,
            gidx: &gidx,
            blocks: &blocks,
            block_size: params.block_size,
        };

        // Row chunks processed in parallel. Each chunk's working copy is
        // column-major in processing order (element (r, k) at k·rr + r, dead
        // inputs zeroed): a column of the chunk is contiguous, so the in-block
        // recursion vectorizes across rows and the lazy update is a GEMM on a
        // contiguous destination.
        let mut codes = vec![0u8; rows * n];
        // A fixed chunk size (not derived from the thread count) keeps every
        // GEMM shape, hence every rounding, independent of the parallelism.
        let chunk_rows = CHUNK_ROWS;
        let isa = Isa::detect();
        codes
            .par_chunks_mut(chunk_rows * n)
            .zip(scales.par_chunks_mut(chunk_rows * ng))
            .zip(zeros.par_chunks_mut(chunk_rows * ng))
            .enumerate()
            .try_for_each(|(ci, ((cc, sc), zc))| {
                let r0 = ci * chunk_rows;
                let rr = cc.len() / n;
                let mut wt = vec![0f32; rr * n];
                for kb in (0..n).step_by(64) {
                    for r in 0..rr {
                        let src = &w[(r0 + r) * n..(r0 + r + 1) * n];
                        for k in kb..(kb + 64).min(n) {
                            let c = self.col(k);
                            wt[k * rr + r] = if self.dead[c] { 0.0 } else { src[c] };
                        }
                    }
                }
                sweep.run(isa, r0, &mut wt, cc, sc, zc)
            })?;

        let perm = if store_perm {
            self.order.clone()
        } else {
            if let Some(o) = &self.order {
                // Back to input-column order (static groups / one group per row).
                codes.par_chunks_mut(n).for_each(|row| {
                    let tmp = row.to_vec();
                    for (k, &q) in tmp.iter().enumerate() {
                        row[o[k] as usize] = q;
                    }
                });
            }
            None
        };
        if scheme.sym {
            zeros = Vec::new();
        }
        Ok(QuantizedLinear::new_unchecked(
            rows,
            n,
            scheme,
            codes,
            scales,
            zeros,
            perm,
            Provenance::Gptq {
                damp: self.damp,
                damp_retries: self.retries,
                act_order: self.order.is_some(),
                static_groups: !dynamic,
                clip: params.clip.is_some(),
            },
        ))
    }
}

/// Blocks `[i₁, i₂)` of at most `bs` columns. With dynamic groups of length
/// `gl`, a block ends early at a group start inside it whose group would cross
/// the block's end, so that every group is fitted from fully updated weights.
pub(crate) fn block_partition(
    n: usize,
    bs: usize,
    dyn_group: Option<usize>,
) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i1 = 0;
    while i1 < n {
        let mut i2 = (i1 + bs).min(n);
        if let Some(gl) = dyn_group {
            let mut j = (i1 / gl + 1) * gl;
            while j < i2 {
                if (j + gl).min(n) > i2 {
                    i2 = j;
                    break;
                }
                j += gl;
            }
        }
        out.push((i1, i2));
        i1 = i2;
    }
    out
}

struct Sweep<'a> {
    f: &'a GptqFactor,
    scheme: QuantScheme,
    clip: Option<ClipSearch>,
    gl: usize,
    ng: usize,
    maxq: u8,
    dynamic: bool,
    gidx: &'a [usize],
    blocks: &'a [(usize, usize)],
    block_size: usize,
}

/// Rows per parallel work item.
const CHUNK_ROWS: usize = 128;
/// Rows per in-block sub-chunk: 128 columns × 64 rows × 4 bytes = 32 KiB stays in L1.
const SUB_ROWS: usize = 64;
/// Columns per sub-block inside a lazy-update block.
const SUB_COLS: usize = 16;

impl Sweep<'_> {
    /// Runs the sweep on a chunk of rows starting at row `r0`; `wt` is the
    /// chunk's column-major working copy (`rr` rows).
    fn run(
        &self,
        isa: Isa,
        r0: usize,
        wt: &mut [f32],
        cc: &mut [u8],
        sc: &mut [f16],
        zc: &mut [u8],
    ) -> Result<(), GptqError> {
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the features were detected at runtime.
            Isa::Avx512 => unsafe { self.run_avx512(r0, wt, cc, sc, zc) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the features were detected at runtime.
            Isa::Avx2 => unsafe { self.run_avx2(r0, wt, cc, sc, zc) },
            Isa::Generic => self.run_impl(r0, wt, cc, sc, zc),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma,sse4.1")]
    unsafe fn run_avx512(
        &self,
        r0: usize,
        wt: &mut [f32],
        cc: &mut [u8],
        sc: &mut [f16],
        zc: &mut [u8],
    ) -> Result<(), GptqError> {
        self.run_impl(r0, wt, cc, sc, zc)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,sse4.1")]
    unsafe fn run_avx2(
        &self,
        r0: usize,
        wt: &mut [f32],
        cc: &mut [u8],
        sc: &mut [f16],
        zc: &mut [u8],
    ) -> Result<(), GptqError> {
        self.run_impl(r0, wt, cc, sc, zc)
    }

    #[inline(always)]
    fn run_impl(
        &self,
        r0: usize,
        wt: &mut [f32],
        cc: &mut [u8],
        sc: &mut [f16],
        zc: &mut [u8],
    ) -> Result<(), GptqError> {
        let n = self.f.n;
        let u = &self.f.u[..];
        let (ng, gl, bs) = (self.ng, self.gl, self.block_size);
        let maxq = self.maxq as f32;
        let rr = wt.len() / n;
        // Errors of the current block, column-major (k − i₁, r) at (k − i₁)·rr + r.
        let mut errt = vec![0f32; bs * rr];
        // Grids transposed per group: (g, r) at g·rr + r.
        let mut gs = vec![1f32; ng * rr];
        let mut gz = vec![0f32; ng * rr];
        if !self.dynamic {
            for r in 0..rr {
                for g in 0..ng {
                    gs[g * rr + r] = sc[r * ng + g].to_f32();
                    gz[g * rr + r] = zc[r * ng + g] as f32;
                }
            }
        }
        let mut fitbuf = vec![0f32; gl];
        let mut qbuf = [0f32; SUB_ROWS];
        let (mut lobuf, mut hibuf) = ([0f32; SUB_ROWS], [0f32; SUB_ROWS]);
        for &(i1, i2) in self.blocks {
            let cnt = i2 - i1;
            for s0 in (0..rr).step_by(SUB_ROWS) {
                let sr = SUB_ROWS.min(rr - s0);
                let mut kb = i1;
                while kb < i2 {
                    // Sub-block [kb, ke): at most SUB_COLS columns, ending
                    // before the next group start so that a group is always
                    // fitted at a sub-block start, from fully updated weights.
                    let mut ke = (kb + SUB_COLS).min(i2);
                    if self.dynamic {
                        ke = ke.min((kb / gl + 1) * gl);
                    }
                    if self.dynamic && kb % gl == 0 {
                        let g = kb / gl;
                        let end = (kb + gl).min(n);
                        if self.clip.is_none() {
                            // Min-max grid: ranges of the sub-chunk's rows,
                            // vectorized across rows.
                            let (lo, hi) = (&mut lobuf[..sr], &mut hibuf[..sr]);
                            lo.fill(0.0);
                            hi.fill(0.0);
                            for j in kb..end {
                                let col = &wt[j * rr + s0..j * rr + s0 + sr];
                                for r in 0..sr {
                                    lo[r] = lo[r].min(col[r]);
                                    hi[r] = hi[r].max(col[r]);
                                }
                            }
                        }
                        for r in s0..s0 + sr {
                            let fitted = if self.clip.is_none() {
                                grid_from_range(lobuf[r - s0], hibuf[r - s0], &self.scheme)
                            } else {
                                for (t, j) in (kb..end).enumerate() {
                                    fitbuf[t] = wt[j * rr + r];
                                }
                                fit_group(&fitbuf[..end - kb], &self.scheme, self.clip.as_ref())
                            };
                            let grid = fitted.map_err(|scale| QuantError::ScaleOverflow {
                                row: r0 + r,
                                group: g,
                                scale,
                            })?;
                            sc[r * ng + g] = grid.scale;
                            zc[r * ng + g] = grid.zero;
                            gs[g * rr + r] = grid.scale.to_f32();
                            gz[g * rr + r] = grid.zero as f32;
                        }
                    }
                    for k in kb..ke {
                        let g = self.gidx[k];
                        let s = &gs[g * rr + s0..g * rr + s0 + sr];
                        let z = &gz[g * rr + s0..g * rr + s0 + sr];
                        let urow = &u[k * n..k * n + ke];
                        let d = urow[k];
                        let (head, tail) = wt.split_at_mut((k + 1) * rr);
                        let x = &head[k * rr + s0..k * rr + s0 + sr];
                        let e = &mut errt[(k - i1) * rr + s0..(k - i1) * rr + s0 + sr];
                        let q = &mut qbuf[..sr];
                        // Quantize column k of the sub-chunk (vectorized across rows).
                        for r in 0..sr {
                            let qr = ((x[r] / s[r]).round_ties_even() + z[r]).clamp(0.0, maxq);
                            q[r] = qr;
                            e[r] = (x[r] - s[r] * (qr - z[r])) / d;
                        }
                        for r in 0..sr {
                            cc[(s0 + r) * n + k] = q[r] as u8;
                        }
                        // Rank-1 update of the rest of the sub-block.
                        for j in k + 1..ke {
                            let c = urow[j];
                            let row = &mut tail[(j - k - 1) * rr + s0..(j - k - 1) * rr + s0 + sr];
                            for (wv, &ev) in row.iter_mut().zip(e.iter()) {
                                *wv -= c * ev;
                            }
                        }
                    }
                    // The sub-block's updates on the rest of the block, applied
                    // column by column in the same order as rank-1 updates would
                    // (identical rounding), with the row values kept in registers.
                    for j in ke..i2 {
                        let off = j * rr + s0;
                        if sr == SUB_ROWS {
                            let row: &mut [f32; SUB_ROWS] =
                                (&mut wt[off..off + SUB_ROWS]).try_into().unwrap();
                            let mut acc = *row;
                            for k in kb..ke {
                                let c = u[k * n + j];
                                let eo = (k - i1) * rr + s0;
                                let e: &[f32; SUB_ROWS] =
                                    (&errt[eo..eo + SUB_ROWS]).try_into().unwrap();
                                for r in 0..SUB_ROWS {
                                    acc[r] -= c * e[r];
                                }
                            }
                            *row = acc;
                        } else {
                            let row = &mut wt[off..off + sr];
                            for k in kb..ke {
                                let c = u[k * n + j];
                                let eo = (k - i1) * rr + s0;
                                for (wv, &ev) in row.iter_mut().zip(&errt[eo..eo + sr]) {
                                    *wv -= c * ev;
                                }
                            }
                        }
                    }
                    kb = ke;
                }
                for k in i1..i2 {
                    let e = &errt[(k - i1) * rr + s0..(k - i1) * rr + s0 + sr];
                    if let Some(p) = e.iter().position(|v| !v.is_finite()) {
                        return Err(GptqError::Diverged {
                            row: r0 + s0 + p,
                            col: self.f.col(k),
                        });
                    }
                }
            }
            if i2 < n {
                // Lazy batch update: W[:, i₂:] -= E · U[i₁:i₂, i₂:].
                let rest = n - i2;
                let dst = MatMut::from_column_major_slice_mut(&mut wt[i2 * rr..], rr, rest);
                let lhs = MatRef::from_column_major_slice(&errt[..cnt * rr], rr, cnt);
                let rhs = MatRef::from_row_major_slice_with_stride(&u[i1 * n + i2..], cnt, rest, n);
                matmul(dst, Accum::Add, lhs, rhs, -1.0f32, Par::Seq);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::block_partition;

    #[test]
    fn blocks_respect_group_starts() {
        assert_eq!(
            block_partition(256, 128, Some(128)),
            vec![(0, 128), (128, 256)]
        );
        assert_eq!(
            block_partition(256, 128, Some(32)),
            vec![(0, 128), (128, 256)]
        );
        assert_eq!(
            block_partition(400, 128, Some(200)),
            vec![(0, 128), (128, 200), (200, 328), (328, 400)]
        );
        assert_eq!(
            block_partition(300, 128, Some(96)),
            vec![(0, 96), (96, 192), (192, 300)]
        );
        assert_eq!(
            block_partition(300, 128, None),
            vec![(0, 128), (128, 256), (256, 300)]
        );
        for (n, bs, gl) in [(1000, 128, 77), (513, 64, 100), (50, 128, 7)] {
            let b = block_partition(n, bs, Some(gl));
            assert_eq!(b.first().unwrap().0, 0);
            assert_eq!(b.last().unwrap().1, n);
            for w in b.windows(2) {
                assert_eq!(w[0].1, w[1].0);
            }
            for &(i1, i2) in &b {
                assert!(i2 > i1 && i2 - i1 <= bs);
                // No group starting strictly inside a block crosses its end.
                for j in (i1 + 1)..i2 {
                    if j % gl == 0 {
                        assert!(
                            (j + gl).min(n) <= i2,
                            "n {n} bs {bs} gl {gl} block {i1}..{i2}"
                        );
                    }
                }
            }
        }
    }
}
