//! SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models
//! Can Be Accurately Pruned in One-Shot", arXiv 2301.00774) and the magnitude
//! pruning baseline.
//!
//! # Algorithm
//!
//! Rows of `W` are independent. With `U` the upper Cholesky factor of the
//! damped `H⁻¹` (`H⁻¹ = UᵀU`), prepared once by [`GptqFactor`] (dead inputs,
//! damping with retries, Cholesky without forming `H⁻¹`; the same preparation
//! GPTQ uses), every row `w` is swept over the input columns in order, in
//! blocks `[i₁, i₂)` of `block_size` (128) columns:
//!
//! ```text
//! at the block start (unstructured):
//!     for each row, prune the k_b columns j ∈ [i₁, i₂) of smallest
//!     w_j² / U_jj²                       (OBS saliency, current weights)
//! for j in i₁ .. i₂:
//!     N:M: at j ≡ 0 (mod m), prune the n smallest w_k² / U_kk², k ∈ [j, j+m)
//!     grid: at a group start, fit the group's grid (joint quantization)
//!     q_j = 0 if pruned, else grid(w_j) (quantized) or f16(w_j)
//!     e_j = (w_j − q_j) / U_jj
//!     w_k -= e_j · U_jk          for k ∈ (j, i₂)     (inside the block)
//! W[:, i₂:] -= E · U[i₁:i₂, i₂:]                    (lazy update, one GEMM)
//! ```
//!
//! `w_j² / U_jj²` is the OBS error of zeroing `w_j` alone given the columns
//! not yet processed (`U_jj² = [H_{F}⁻¹]_jj` with `F = {j, …}`), and the update
//! is the OBS reconstruction of the remaining weights, applied one column at a
//! time exactly as GPTQ's error feedback (a pruned weight is a weight
//! "quantized" to 0). Kept weights are rounded to what is stored (f16, or the
//! grid) and that rounding error is fed forward too, so the stored layer is
//! what was optimised.
//!
//! **Exact zero counts.** The reference implementation thresholds each block
//! over all its rows at once, so rows get different counts. Here every row
//! gets exactly `Z` zeros (the pattern's count, [`crate::sparse`]), spread
//! over the blocks in proportion to their width:
//! `k_b = ⌊Z·i₂/n⌋ − ⌊Z·i₁/n⌋` (these sum to `Z` exactly). Within a block the
//! choice is adaptive as in the paper (by current saliency, after the updates
//! of the earlier blocks). Ties are broken by the lower column index, so the
//! result is deterministic.
//!
//! **Joint quantization** (a level is "sparsity × bit width"): with
//! `quant = Some(scheme)` the kept weights are quantized on `scheme`'s grids as
//! in GPTQ, in dynamic groups of `g` input columns; a group's grid is fitted
//! (min-max, [`crate::grid`]) when its first column is reached, from the
//! current weights of the group with the weights already known to be pruned
//! set to 0 (the pruned weights do not widen the range). With
//! `g ≤ block_size` the whole group's mask is known then (unstructured); for
//! N:M only the groups of `m` reached so far are. Blocks are cut at group
//! starts exactly as in [`crate::gptq`], so every grid sees fully updated
//! weights.
//!
//! **Dead inputs** (`H_jj = 0`): their weights never affect the output, so
//! their saliency is 0 and they are pruned first; if kept they keep their
//! value (they receive and give no feedback).
//!
//! With `Z = 0` and f16-representable weights and no quantization, the output
//! equals the input (nothing to feed back).
//!
//! **Magnitude pruning** ([`magnitude_prune`]) prunes, with the same counts
//! and tie rule, the weights of smallest `|w|` in each row (or N:M group) and
//! rounds the kept weights (f16, or the grid fitted to the kept weights and
//! 0, i.e. round-to-nearest) with no update.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef};
use half::f16;
use rayon::prelude::*;

use crate::gptq::block_partition;
use crate::grid::{Grid32, GroupGrid, QuantScheme, check_finite, grid_from_range};
use crate::isa::Isa;
use crate::sparse::{SparseProvenance, SparseValues, SparsityPattern};
use crate::{FactorParams, GptqError, GptqFactor, Hessian, QuantError, SparseError, SparseLinear};

/// Parameters of one pruning sweep.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SparseParams {
    /// Which weights are pruned (exact counts).
    pub pattern: SparsityPattern,
    /// Quantize the kept weights on this grid (`None`: store them as f16).
    pub quant: Option<QuantScheme>,
    /// Columns per mask-selection and lazy-update block (128). Ignored by
    /// [`magnitude_prune`].
    pub block_size: usize,
}

impl SparseParams {
    /// `pattern` with f16 values and blocks of 128.
    pub fn new(pattern: SparsityPattern) -> Self {
        Self {
            pattern,
            quant: None,
            block_size: 128,
        }
    }
}

impl Default for SparseParams {
    /// No pruning, f16 values, blocks of 128.
    fn default() -> Self {
        Self::new(SparsityPattern::Unstructured { zeros_per_row: 0 })
    }
}

/// Parameters of [`sparsegpt()`]: the sweep and the Hessian preparation
/// (`factor.act_order` must be false).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SparseGptParams {
    /// The sweep.
    pub sparse: SparseParams,
    /// The Hessian preparation (damping 0.01 of `mean(diag H)`, retries).
    pub factor: FactorParams,
}

/// SparseGPT on one layer: [`GptqFactor::new`] then
/// [`sparsegpt_with_factor`]. `w` is row-major `[rows, h.dim()]`.
///
/// # Panics
/// If `w.len()` is not a multiple of `h.dim()` or `block_size == 0`.
#[track_caller]
pub fn sparsegpt(
    w: &[f32],
    h: &Hessian,
    params: &SparseGptParams,
) -> Result<SparseLinear, SparseError> {
    if params.factor.act_order {
        return Err(SparseError::ActOrder);
    }
    let f = GptqFactor::new(h, &params.factor)?;
    sparsegpt_with_factor(&f, w, &params.sparse)
}

/// Rows per parallel work item (fixed: results do not depend on the thread count).
const CHUNK_ROWS: usize = 64;

/// Per-chunk outputs, row-major `[rr, n]` / `[rr, ng]`.
struct ChunkOut<'a> {
    keep: &'a mut [bool],
    vals: &'a mut [f16],
    codes: &'a mut [u8],
    scales: &'a mut [f16],
    zeros: &'a mut [u8],
}

/// SparseGPT with a prepared factor (reuse one factor for every level of a
/// layer, and for the layers that share its Hessian).
///
/// # Panics
/// If `w.len()` is not a multiple of `f.dim()` or `block_size == 0` (shape
/// contracts).
#[track_caller]
pub fn sparsegpt_with_factor(
    f: &GptqFactor,
    w: &[f32],
    params: &SparseParams,
) -> Result<SparseLinear, SparseError> {
    let n = f.dim();
    assert!(
        w.len().is_multiple_of(n),
        "w.len() = {} is not a multiple of the Hessian dimension {n}",
        w.len()
    );
    assert!(params.block_size > 0, "block_size must be positive");
    if f.order().is_some() {
        return Err(SparseError::ActOrder);
    }
    let pattern = params.pattern;
    pattern.validate(n)?;
    if let Some(s) = params.quant {
        s.validate()?;
    }
    check_finite(w, n)?;
    let rows = w.len() / n;
    let bs = params.block_size;
    let (gl, ng) = match params.quant {
        Some(s) => (s.group_len(n), s.groups_per_row(n)),
        None => (n, 1),
    };
    if let SparsityPattern::NM { group, .. } = pattern
        && (!bs.is_multiple_of(group) || !gl.is_multiple_of(group))
    {
        return Err(SparseError::NmAlignment {
            group,
            block_size: bs,
            quant_group: gl,
        });
    }
    let dynamic = params.quant.is_some() && ng > 1;
    let blocks = block_partition(n, bs, dynamic.then_some(gl));
    let mut dead = vec![false; n];
    for c in f.dead_columns() {
        dead[c] = true;
    }
    let u = f.upper_factor();

    let ctx = Sweep {
        n,
        u,
        dead: &dead,
        blocks: &blocks,
        bs,
        params,
        gl,
        ng,
    };
    let isa = Isa::detect();
    let mut keep = vec![true; rows * n];
    let mut vals = vec![f16::ZERO; rows * n];
    let mut codes = vec![0u8; rows * n];
    let mut scales = vec![f16::ZERO; rows * ng];
    let mut zeros = vec![0u8; rows * ng];
    keep.par_chunks_mut(CHUNK_ROWS * n)
        .zip(vals.par_chunks_mut(CHUNK_ROWS * n))
        .zip(codes.par_chunks_mut(CHUNK_ROWS * n))
        .zip(scales.par_chunks_mut(CHUNK_ROWS * ng))
        .zip(zeros.par_chunks_mut(CHUNK_ROWS * ng))
        .enumerate()
        .try_for_each(|(ci, ((((keep, vals), codes), scales), zeros))| {
            let r0 = ci * CHUNK_ROWS;
            let rr = keep.len() / n;
            let mut wt = vec![0f32; rr * n];
            for r in 0..rr {
                for c in 0..n {
                    wt[c * rr + r] = w[(r0 + r) * n + c];
                }
            }
            let out = ChunkOut {
                keep,
                vals,
                codes,
                scales,
                zeros,
            };
            ctx.run(isa, &mut wt, rr, r0, out)
        })?;
    let values = compact(&keep, vals, codes, scales, zeros, params.quant);
    Ok(SparseLinear::new_unchecked(
        rows,
        n,
        pattern,
        keep,
        values,
        SparseProvenance::SparseGpt {
            damp: f.damp(),
            damp_retries: f.damp_retries(),
        },
    ))
}

/// Marks as pruned the `cnt` entries of smallest score (ties: lower index).
fn prune_smallest(scored: &mut [(f32, usize)], cnt: usize, mut mark: impl FnMut(usize)) {
    if cnt == 0 {
        return;
    }
    let cmp = |a: &(f32, usize), b: &(f32, usize)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
    if cnt < scored.len() {
        scored.select_nth_unstable_by(cnt - 1, cmp);
    }
    for &(_, j) in &scored[..cnt] {
        mark(j);
    }
}

/// Zeros of the unstructured pattern that fall in block `[i1, i2)`.
fn block_zeros(z: usize, n: usize, i1: usize, i2: usize) -> usize {
    let (z, n) = (z as u128, n as u128);
    (z * i2 as u128 / n - z * i1 as u128 / n) as usize
}

/// What every row chunk's sweep shares.
struct Sweep<'a> {
    n: usize,
    u: &'a [f32],
    dead: &'a [bool],
    blocks: &'a [(usize, usize)],
    bs: usize,
    params: &'a SparseParams,
    gl: usize,
    ng: usize,
}

impl Sweep<'_> {
    /// Runs the sweep on a chunk of `rr` rows starting at row `r0`; `wt` is
    /// the chunk's column-major working copy. Compiled for several
    /// instruction sets (the same IEEE operations in each, no FMA
    /// contraction, so the result does not depend on the path).
    fn run(
        &self,
        isa: Isa,
        wt: &mut [f32],
        rr: usize,
        r0: usize,
        out: ChunkOut<'_>,
    ) -> Result<(), SparseError> {
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the features were detected at runtime.
            Isa::Avx512 => unsafe { self.run_avx512(wt, rr, r0, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the features were detected at runtime.
            Isa::Avx2 => unsafe { self.run_avx2(wt, rr, r0, out) },
            Isa::Generic => self.run_impl(wt, rr, r0, out),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma,sse4.1")]
    unsafe fn run_avx512(
        &self,
        wt: &mut [f32],
        rr: usize,
        r0: usize,
        out: ChunkOut<'_>,
    ) -> Result<(), SparseError> {
        self.run_impl(wt, rr, r0, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,sse4.1")]
    unsafe fn run_avx2(
        &self,
        wt: &mut [f32],
        rr: usize,
        r0: usize,
        out: ChunkOut<'_>,
    ) -> Result<(), SparseError> {
        self.run_impl(wt, rr, r0, out)
    }

    #[inline(always)]
    fn run_impl(
        &self,
        wt: &mut [f32],
        rr: usize,
        r0: usize,
        out: ChunkOut<'_>,
    ) -> Result<(), SparseError> {
        let Sweep {
            n,
            u,
            dead,
            blocks,
            bs,
            params,
            gl,
            ng,
        } = *self;
        let ChunkOut {
            keep,
            vals,
            codes,
            scales,
            zeros,
        } = out;
        // Pruned flags, column-major like `wt`.
        let mut pruned = vec![false; rr * n];
        // Columns below `decided` have their mask fixed.
        let mut decided = 0usize;
        let mut errt = vec![0f32; bs * rr];
        let mut grids = vec![
            Grid32 {
                s: 1.0,
                z: 0.0,
                maxq: 1.0
            };
            rr
        ];
        let mut scored: Vec<(f32, usize)> = Vec::with_capacity(bs.max(8));
        let saliency = |x: f32, j: usize| -> f32 {
            if dead[j] {
                0.0
            } else {
                let d = u[j * n + j];
                x * x / (d * d)
            }
        };
        for &(i1, i2) in blocks {
            if let SparsityPattern::Unstructured { zeros_per_row } = params.pattern {
                let cnt = block_zeros(zeros_per_row, n, i1, i2);
                if cnt > 0 {
                    for r in 0..rr {
                        scored.clear();
                        scored.extend((i1..i2).map(|j| (saliency(wt[j * rr + r], j), j)));
                        prune_smallest(&mut scored, cnt, |j| pruned[j * rr + r] = true);
                    }
                }
                decided = i2;
            }
            for k in i1..i2 {
                if let SparsityPattern::NM {
                    zeros: nz,
                    group: m,
                } = params.pattern
                    && k % m == 0
                {
                    for r in 0..rr {
                        scored.clear();
                        scored.extend((k..k + m).map(|j| (saliency(wt[j * rr + r], j), j)));
                        prune_smallest(&mut scored, nz, |j| pruned[j * rr + r] = true);
                    }
                    decided = k + m;
                }
                if let Some(scheme) = params.quant
                    && k % gl == 0
                {
                    let g = k / gl;
                    let end = (k + gl).min(n);
                    for (r, grid32) in grids.iter_mut().enumerate() {
                        let (mut lo, mut hi) = (0f32, 0f32);
                        for j in k..end {
                            if j < decided && pruned[j * rr + r] {
                                continue;
                            }
                            let v = wt[j * rr + r];
                            lo = lo.min(v);
                            hi = hi.max(v);
                        }
                        let grid = grid_from_range(lo, hi, &scheme).map_err(|scale| {
                            QuantError::ScaleOverflow {
                                row: r0 + r,
                                group: g,
                                scale,
                            }
                        })?;
                        scales[r * ng + g] = grid.scale;
                        zeros[r * ng + g] = grid.zero;
                        *grid32 = Grid32::new(grid, scheme.maxq());
                    }
                }
                let d = u[k * n + k];
                let urow = &u[k * n..k * n + i2];
                let (head, tail) = wt.split_at_mut((k + 1) * rr);
                let x = &head[k * rr..(k + 1) * rr];
                let e = &mut errt[(k - i1) * rr..(k - i1 + 1) * rr];
                for r in 0..rr {
                    let xr = x[r];
                    let q = if pruned[k * rr + r] {
                        keep[r * n + k] = false;
                        0.0
                    } else if params.quant.is_some() {
                        let g = grids[r];
                        let c = g.code(xr);
                        codes[r * n + k] = c as u8;
                        g.deq(c)
                    } else {
                        let h = f16::from_f32(xr);
                        if !h.is_finite() {
                            return Err(SparseError::ValueOverflow {
                                row: r0 + r,
                                col: k,
                                value: xr,
                            });
                        }
                        vals[r * n + k] = h;
                        h.to_f32()
                    };
                    e[r] = (xr - q) / d;
                }
                // Rank-1 update of the rest of the block.
                for j in k + 1..i2 {
                    let c = urow[j];
                    if c == 0.0 {
                        continue;
                    }
                    let col = &mut tail[(j - k - 1) * rr..(j - k) * rr];
                    for (wv, &ev) in col.iter_mut().zip(e.iter()) {
                        *wv -= c * ev;
                    }
                }
            }
            let cnt = i2 - i1;
            if let Some(p) = errt[..cnt * rr].iter().position(|v| !v.is_finite()) {
                return Err(GptqError::Diverged {
                    row: r0 + p % rr,
                    col: i1 + p / rr,
                }
                .into());
            }
            if i2 < n {
                // Lazy batch update: W[:, i₂:] -= E · U[i₁:i₂, i₂:].
                let rest = n - i2;
                let dst = MatMut::from_column_major_slice_mut(&mut wt[i2 * rr..], rr, rest);
                let lhs = MatRef::from_column_major_slice(&errt[..cnt * rr], rr, cnt);
                let rhs = MatRef::from_row_major_slice_with_stride(&u[i1 * n + i2..], cnt, rest, n);
                matmul(dst, Accum::Add, lhs, rhs, -1.0f32, faer::Par::Seq);
            }
        }
        Ok(())
    }
}

/// Gathers the kept values (row-major) from the dense per-position outputs.
fn compact(
    keep: &[bool],
    vals: Vec<f16>,
    codes: Vec<u8>,
    scales: Vec<f16>,
    mut zeros: Vec<u8>,
    quant: Option<QuantScheme>,
) -> SparseValues {
    match quant {
        None => SparseValues::F16(
            vals.into_iter()
                .zip(keep)
                .filter_map(|(v, &k)| k.then_some(v))
                .collect(),
        ),
        Some(scheme) => {
            if scheme.sym {
                zeros = Vec::new();
            }
            SparseValues::Quantized {
                scheme,
                codes: codes
                    .into_iter()
                    .zip(keep)
                    .filter_map(|(c, &k)| k.then_some(c))
                    .collect(),
                scales,
                zeros,
            }
        }
    }
}

/// Magnitude pruning: in every row (or N:M group) the weights of smallest
/// `|w|` are pruned, with the same exact counts as [`sparsegpt()`]; the kept
/// weights are rounded to f16 or, with `quant`, to the grid fitted to each
/// group's kept weights (round-to-nearest, no error feedback).
///
/// # Panics
/// If `cols == 0` or `w.len()` is not a multiple of `cols` (shape contract).
#[track_caller]
pub fn magnitude_prune(
    w: &[f32],
    cols: usize,
    params: &SparseParams,
) -> Result<SparseLinear, SparseError> {
    assert!(
        cols > 0 && w.len().is_multiple_of(cols),
        "w.len() must be a multiple of cols"
    );
    let n = cols;
    let pattern = params.pattern;
    pattern.validate(n)?;
    if let Some(s) = params.quant {
        s.validate()?;
    }
    check_finite(w, n)?;
    let rows = w.len() / n;
    let (gl, ng) = match params.quant {
        Some(s) => (s.group_len(n), s.groups_per_row(n)),
        None => (n, 1),
    };
    let mut keep = vec![true; rows * n];
    let mut vals = vec![f16::ZERO; rows * n];
    let mut codes = vec![0u8; rows * n];
    let mut scales = vec![f16::ZERO; rows * ng];
    let mut zeros = vec![0u8; rows * ng];
    keep.par_chunks_mut(n)
        .zip(vals.par_chunks_mut(n))
        .zip(codes.par_chunks_mut(n))
        .zip(scales.par_chunks_mut(ng))
        .zip(zeros.par_chunks_mut(ng))
        .enumerate()
        .try_for_each(|(r, ((((keep, vals), codes), scales), zeros))| {
            let row = &w[r * n..(r + 1) * n];
            let mut scored: Vec<(f32, usize)> = Vec::new();
            match pattern {
                SparsityPattern::Unstructured { zeros_per_row } => {
                    scored.extend(row.iter().enumerate().map(|(j, &x)| (x.abs(), j)));
                    prune_smallest(&mut scored, zeros_per_row, |j| keep[j] = false);
                }
                SparsityPattern::NM {
                    zeros: nz,
                    group: m,
                } => {
                    for g0 in (0..n).step_by(m) {
                        scored.clear();
                        scored.extend((g0..g0 + m).map(|j| (row[j].abs(), j)));
                        prune_smallest(&mut scored, nz, |j| keep[j] = false);
                    }
                }
            }
            match params.quant {
                None => {
                    for j in 0..n {
                        if keep[j] {
                            let h = f16::from_f32(row[j]);
                            if !h.is_finite() {
                                return Err(SparseError::ValueOverflow {
                                    row: r,
                                    col: j,
                                    value: row[j],
                                });
                            }
                            vals[j] = h;
                        }
                    }
                }
                Some(scheme) => {
                    for g in 0..ng {
                        let (a, b) = (g * gl, ((g + 1) * gl).min(n));
                        let (mut lo, mut hi) = (0f32, 0f32);
                        for j in a..b {
                            if keep[j] {
                                lo = lo.min(row[j]);
                                hi = hi.max(row[j]);
                            }
                        }
                        let grid: GroupGrid =
                            grid_from_range(lo, hi, &scheme).map_err(|scale| {
                                QuantError::ScaleOverflow {
                                    row: r,
                                    group: g,
                                    scale,
                                }
                            })?;
                        scales[g] = grid.scale;
                        zeros[g] = grid.zero;
                        let g32 = Grid32::new(grid, scheme.maxq());
                        for j in a..b {
                            if keep[j] {
                                codes[j] = g32.code(row[j]) as u8;
                            }
                        }
                    }
                }
            }
            Ok(())
        })?;
    let values = compact(&keep, vals, codes, scales, zeros, params.quant);
    Ok(SparseLinear::new_unchecked(
        rows,
        n,
        pattern,
        keep,
        values,
        SparseProvenance::Magnitude,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_zeros_sum_to_the_row_count() {
        for (z, n, bs) in [
            (128, 256, 128),
            (77, 300, 128),
            (1, 1000, 64),
            (299, 300, 7),
        ] {
            let mut total = 0;
            let mut i1 = 0;
            while i1 < n {
                let i2 = (i1 + bs).min(n);
                let c = block_zeros(z, n, i1, i2);
                assert!(c <= i2 - i1);
                total += c;
                i1 = i2;
            }
            assert_eq!(total, z);
        }
    }
}
