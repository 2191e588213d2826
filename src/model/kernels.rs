//! CPU kernels for the fused forward pass: RMSNorm, RoPE, softmax, SwiGLU and
//! GEMM with fused residual/bias, on plain `f32` slices.
//!
//! Why not candle's ops here: on 2 cores the forward pass is GEMM-bound, and
//! every separate elementwise op, temporary tensor and second thread pool
//! costs time that GEMM cannot get back. These kernels keep one pass per step,
//! reuse scratch buffers across blocks, and let GEMM add the residual in place.
//! The candle-ops path in `decoder.rs` computes the same function and serves
//! other devices and the tests as the oracle.
//!
//! Elementwise loops are written so LLVM vectorises them, and compiled three
//! times (AVX-512, AVX2+FMA, baseline) with the best chosen at run time.

use std::sync::OnceLock;

use candle_core::{CpuStorage, Storage, StorageRef, Tensor};
use rayon::prelude::*;

/// A read view of a contiguous f32 CPU tensor.
pub(crate) struct F32View<'a> {
    guard: StorageRef<'a>,
    start: usize,
    end: usize,
}

impl<'a> F32View<'a> {
    /// `None` if the tensor is not a contiguous f32 CPU tensor.
    pub fn new(t: &'a Tensor) -> Option<Self> {
        let (guard, layout) = t.storage_and_layout();
        let (start, end) = layout.contiguous_offsets()?;
        if !matches!(&*guard, Storage::Cpu(CpuStorage::F32(_))) {
            return None;
        }
        Some(F32View { guard, start, end })
    }

    pub fn as_slice(&self) -> &[f32] {
        match &*self.guard {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.start..self.end],
            _ => unreachable!("checked in new"),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Baseline,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("fma")
            {
                return Level::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Level::Avx2;
            }
        }
        Level::Baseline
    })
}

/// Defines `fn name(args)` whose body is compiled for each SIMD level and
/// dispatched at run time. The body and everything it calls must be
/// `#[inline(always)]` so it is compiled with the caller's target features.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn imp($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) { imp($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) { imp($($arg),*) }
                match level() {
                    // SAFETY: the CPU supports the features (checked in `level`).
                    Level::Avx512 => return unsafe { avx512($($arg),*) },
                    Level::Avx2 => return unsafe { avx2($($arg),*) },
                    Level::Baseline => {}
                }
            }
            imp($($arg),*)
        }
    };
}

/// `exp(x)` for `x ≤ 88` (larger inputs are clamped; results below
/// `exp(−87.3) ≈ 1.2e−38` are not produced), within 2 ulp; branch-free so it
/// vectorises. Cody–Waite range reduction and a degree-6 polynomial.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2²³: adding it rounds to an integer held in the low mantissa bits.
    const SHIFT: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.0);
    let t = x.mul_add(LOG2E, SHIFT);
    let n = t - SHIFT;
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let mut p: f32 = 1.987_569_1e-4;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 0.166_666_65);
    p = p.mul_add(r, 0.5);
    let p = (p * r).mul_add(r, r) + 1.0;
    // 2ⁿ from the integer in t's mantissa (n ∈ [−126, 127] after the clamp).
    let scale = f32::from_bits(t.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23);
    p * scale
}

/// Σ x² with 16 independent partial sums (vectorises; the order differs from
/// a sequential sum by rounding only).
#[inline(always)]
fn sum_sq(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..16 {
            acc[i] = c[i].mul_add(c[i], acc[i]);
        }
    }
    let mut s: f32 = acc.iter().sum();
    for &v in rest {
        s += v * v;
    }
    s
}

#[inline(always)]
fn max_of(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = x.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..16 {
            acc[i] = acc[i].max(c[i]);
        }
    }
    let mut m = acc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for &v in rest {
        m = m.max(v);
    }
    m
}

/// Maximum, its first index, and `Σ exp(x − max)` of a row.
#[derive(Debug, Clone, Copy, Default)]
pub struct RowSum {
    pub max: f32,
    pub argmax: u32,
    pub sum_exp: f64,
}

multiversion! {
    /// [`RowSum`] of `row`: exponentials in f32 (2 ulp), accumulated in f64.
    pub fn row_sum_exp(row: &[f32], out: &mut RowSum) {
        let max = max_of(row);
        let argmax = row.iter().position(|&x| x == max).unwrap_or(0);
        let mut acc = [0f64; 8];
        let chunks = row.chunks_exact(8);
        let rest = chunks.remainder();
        for c in chunks {
            for i in 0..8 {
                acc[i] += exp(c[i] - max) as f64;
            }
        }
        let mut s: f64 = acc.iter().sum();
        for &x in rest {
            s += exp(x - max) as f64;
        }
        *out = RowSum { max, argmax: argmax as u32, sum_exp: s };
    }
}

multiversion! {
    /// `Σ_v exp(b_v − lse_b) · ((b_v − lse_b) − (m_v − lse_m))`: KL(p_b ‖ p_m)
    /// from two rows of logits and their log-sum-exps.
    pub fn row_kl_sum(b: &[f32], lse_b: f64, m: &[f32], lse_m: f64, out: &mut f64) {
        let (lb0, lm0) = (lse_b as f32, lse_m as f32);
        // Residuals of the f32 rounding of the log-sum-exps, added back in f64.
        let (rb, rm) = (lse_b - lb0 as f64, lse_m - lm0 as f64);
        let mut acc = [0f64; 8];
        let mut pacc = [0f64; 8];
        let cb = b.chunks_exact(8);
        let cm = m.chunks_exact(8);
        let (restb, restm) = (cb.remainder(), cm.remainder());
        for (x, y) in cb.zip(cm) {
            for i in 0..8 {
                let lb = x[i] - lb0;
                let p = exp(lb) as f64;
                acc[i] += p * ((lb - (y[i] - lm0)) as f64);
                pacc[i] += p;
            }
        }
        let mut s: f64 = acc.iter().sum();
        let mut ps: f64 = pacc.iter().sum();
        for (&x, &y) in restb.iter().zip(restm) {
            let lb = x - lb0;
            let p = exp(lb) as f64;
            s += p * ((lb - (y - lm0)) as f64);
            ps += p;
        }
        // Σ p (−rb + rm) for the residuals dropped above.
        *out = s + ps * (rm - rb);
    }
}

multiversion! {
    /// `out = x / sqrt(mean(x²) + eps) ⊙ w`, row by row.
    fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
        let d = w.len();
        for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let r = 1.0 / (sum_sq(xr) / d as f32 + eps).sqrt();
            for ((o, &xv), &wv) in or.iter_mut().zip(xr).zip(w) {
                *o = wv * (xv * r);
            }
        }
    }
}

/// RMSNorm over rows of width `w.len()`, in parallel.
pub(crate) fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    let rows_per_task = (16384 / d).max(1);
    x.par_chunks(d * rows_per_task)
        .zip(out.par_chunks_mut(d * rows_per_task))
        .for_each(|(x, o)| rms_norm_rows(x, w, eps, o));
}

multiversion! {
    /// `out[r, j] = silu(gu[r, j]) · gu[r, f + j]` for rows of `2f`.
    fn swiglu_rows(gu: &[f32], f: usize, out: &mut [f32]) {
        for (g, o) in gu.chunks_exact(2 * f).zip(out.chunks_exact_mut(f)) {
            let (gate, up) = g.split_at(f);
            for ((o, &a), &u) in o.iter_mut().zip(gate).zip(up) {
                *o = a / (1.0 + exp(-a)) * u;
            }
        }
    }
}

/// SwiGLU over rows, in parallel.
pub(crate) fn swiglu(gu: &[f32], f: usize, out: &mut [f32]) {
    let rows_per_task = (8192 / f).max(1);
    gu.par_chunks(2 * f * rows_per_task)
        .zip(out.par_chunks_mut(f * rows_per_task))
        .for_each(|(g, o)| swiglu_rows(g, f, o));
}

multiversion! {
    /// In-place softmax of `row[lo..hi]`; entries outside become 0.
    fn softmax_range(row: &mut [f32], lo: usize, hi: usize) {
        let max = max_of(&row[lo..hi]);
        let mut acc = [0f32; 16];
        {
            let vis = &mut row[lo..hi];
            let mut chunks = vis.chunks_exact_mut(16);
            for c in &mut chunks {
                for i in 0..16 {
                    c[i] = exp(c[i] - max);
                    acc[i] += c[i];
                }
            }
            for v in chunks.into_remainder() {
                *v = exp(*v - max);
                acc[0] += *v;
            }
        }
        let inv = 1.0 / acc.iter().sum::<f32>();
        for v in &mut row[lo..hi] {
            *v *= inv;
        }
        row[..lo].fill(0.0);
        row[hi..].fill(0.0);
    }
}

multiversion! {
    /// Rotates one head vector: `(x1, x2) → (x1·c − x2·s, x2·c + x1·s)`.
    fn rope_head(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
        let h = cos.len();
        let (x1, x2) = x.split_at(h);
        let (o1, o2) = out.split_at_mut(h);
        for i in 0..h {
            o1[i] = x1[i] * cos[i] - x2[i] * sin[i];
            o2[i] = x2[i] * cos[i] + x1[i] * sin[i];
        }
    }
}

/// Geometry of the fused q/k/v rows.
#[derive(Clone, Copy)]
pub(crate) struct Heads {
    pub hq: usize,
    pub hkv: usize,
    pub d: usize,
}

/// From fused `qkv [b·t, (hq+2hkv)·d]` rows, writes RoPE-rotated queries
/// `[b·t, hq·d]` and keys `[b·t, hkv·d]` (after per-head RMSNorm when
/// `qk_norm` is given). `cos`/`sin` are `[t, d/2]` for positions `0..t`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rope_split(
    qkv: &[f32],
    t: usize,
    heads: Heads,
    cos: &[f32],
    sin: &[f32],
    qk_norm: Option<(&[f32], &[f32], f32)>,
    q_out: &mut [f32],
    k_out: &mut [f32],
) {
    let Heads { hq, hkv, d } = heads;
    let width = (hq + 2 * hkv) * d;
    let half = d / 2;
    q_out
        .par_chunks_mut(hq * d)
        .zip(k_out.par_chunks_mut(hkv * d))
        .zip(qkv.par_chunks(width))
        .enumerate()
        .for_each_init(
            || vec![0f32; d],
            |tmp, (row, ((qo, ko), src))| {
                let pos = row % t;
                let (c, s) = (
                    &cos[pos * half..(pos + 1) * half],
                    &sin[pos * half..(pos + 1) * half],
                );
                for h in 0..hq + hkv {
                    let x = &src[h * d..(h + 1) * d];
                    let dst = if h < hq {
                        &mut qo[h * d..(h + 1) * d]
                    } else {
                        &mut ko[(h - hq) * d..(h - hq + 1) * d]
                    };
                    match qk_norm {
                        Some((qn, kn, eps)) => {
                            rms_norm_rows(x, if h < hq { qn } else { kn }, eps, tmp);
                            rope_head(tmp, c, s, dst);
                        }
                        None => rope_head(x, c, s, dst),
                    }
                }
            },
        );
}

/// Parallelism for a GEMM of `m × n × k`: one thread for small products.
fn gemm_par(m: usize, n: usize, k: usize) -> gemm::Parallelism {
    let threads = rayon::current_num_threads();
    if threads <= 1 || m * n * k < 1 << 20 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(threads)
    }
}

/// `out[n_rows, m] = (accumulate ? out : 0) + x[n_rows, k] · w[m, k]ᵀ`.
pub(crate) fn matmul_wt(x: &[f32], k: usize, w: &[f32], out: &mut [f32], accumulate: bool) {
    let n_rows = x.len() / k;
    let m = w.len() / k;
    assert!(x.len() == n_rows * k && w.len() == m * k && out.len() == n_rows * m);
    if n_rows == 0 || m == 0 {
        return;
    }
    // SAFETY: the sizes are checked above; x is [n_rows, k] row-major, w is
    // [m, k] row-major read as its transpose [k, m], out is [n_rows, m].
    unsafe {
        gemm::gemm(
            n_rows,
            m,
            k,
            out.as_mut_ptr(),
            1,
            m as isize,
            accumulate,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm_par(n_rows, m, k),
        );
    }
}

/// Writes `bias` into every row of `out` (a GEMM with `accumulate` then adds the product).
pub(crate) fn fill_rows(out: &mut [f32], bias: &[f32]) {
    out.par_chunks_mut(bias.len())
        .for_each(|r| r.copy_from_slice(bias));
}

/// Attention on strided `[b, t, heads, d]` buffers.
pub(crate) struct AttnBuffers<'a> {
    pub q: &'a [f32],
    /// Elements between consecutive tokens of q (`hq·d` when contiguous).
    pub q_rs: usize,
    pub k: &'a [f32],
    pub k_rs: usize,
    pub v: &'a [f32],
    pub v_rs: usize,
}

/// Queries per block in the attention kernel.
const QUERY_BLOCK: usize = 64;

/// A pointer shared by rayon tasks that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);

impl SendPtr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: only used for disjoint writes, see `causal_attention`.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Causal GQA attention: `out [b, tq, hq·d]` from queries at positions
/// `q_offset..q_offset+tq` over keys `0..tk`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn causal_attention(
    buf: &AttnBuffers<'_>,
    b: usize,
    tq: usize,
    tk: usize,
    heads: Heads,
    q_offset: usize,
    window: Option<usize>,
    scale: f32,
    out: &mut [f32],
) {
    let Heads { hq, hkv, d } = heads;
    assert!(hkv > 0 && hq % hkv == 0 && q_offset + tq <= tk);
    assert!(out.len() == b * tq * hq * d);
    assert!(buf.q.len() >= b * tq * buf.q_rs && buf.q_rs >= hq * d);
    assert!(buf.k.len() >= (b * tk - 1) * buf.k_rs + hkv * d);
    assert!(buf.v.len() >= (b * tk - 1) * buf.v_rs + hkv * d);
    let rep = hq / hkv;
    let out_ptr = SendPtr(out.as_mut_ptr());
    let n_blocks = tq.div_ceil(QUERY_BLOCK);
    (0..b * hq * n_blocks).into_par_iter().for_each_init(
        || vec![0f32; QUERY_BLOCK * tk],
        |scratch, unit| {
            let bi = unit / (hq * n_blocks);
            let h = (unit / n_blocks) % hq;
            let qb = unit % n_blocks;
            let g = h / rep;
            let r0 = qb * QUERY_BLOCK;
            let r1 = (r0 + QUERY_BLOCK).min(tq);
            let rows = r1 - r0;
            let first_pos = q_offset + r0;
            let k_lo = window.map_or(0, |w| (first_pos + 1).saturating_sub(w));
            let k_hi = q_offset + r1;
            let nk = k_hi - k_lo;
            let s = &mut scratch[..rows * nk];
            let q_base = (bi * tq + r0) * buf.q_rs + h * d;
            let k_base = (bi * tk + k_lo) * buf.k_rs + g * d;
            let v_base = (bi * tk + k_lo) * buf.v_rs + g * d;
            let o_base = ((bi * tq + r0) * hq + h) * d;
            // SAFETY: indices stay inside the buffers (asserted above: rows
            // ≤ tq − r0, keys ≤ tk − k_lo, d columns per head). Each unit
            // writes only rows r0..r1 of head h of batch bi in `out`: disjoint.
            unsafe {
                gemm::gemm(
                    rows,
                    nk,
                    d,
                    s.as_mut_ptr(),
                    1,
                    nk as isize,
                    false,
                    buf.q.as_ptr().add(q_base),
                    1,
                    buf.q_rs as isize,
                    buf.k.as_ptr().add(k_base),
                    buf.k_rs as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            for r in 0..rows {
                let pos = q_offset + r0 + r;
                let lo = window.map_or(0, |w| (pos + 1).saturating_sub(w) - k_lo);
                let hi = pos + 1 - k_lo;
                softmax_range(&mut s[r * nk..(r + 1) * nk], lo, hi);
            }
            unsafe {
                gemm::gemm(
                    rows,
                    d,
                    nk,
                    out_ptr.get().add(o_base),
                    1,
                    (hq * d) as isize,
                    false,
                    s.as_ptr(),
                    1,
                    nk as isize,
                    buf.v.as_ptr().add(v_base),
                    1,
                    buf.v_rs as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_within_2_ulp_of_libm() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let a = exp(x) as f64;
            let b = (x as f64).exp();
            worst = worst.max(((a - b) / b).abs());
            x += 0.0137;
        }
        assert!(worst < 2.5 * f32::EPSILON as f64, "relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn softmax_range_sums_to_one_and_masks() {
        let mut row = vec![0.5f32, 3.0, -1.0, 2.0, 7.0, 1.0];
        softmax_range(&mut row, 1, 4);
        assert_eq!(row[0], 0.0);
        assert_eq!(row[4], 0.0);
        assert_eq!(row[5], 0.0);
        let s: f32 = row.iter().sum();
        assert!((s - 1.0).abs() < 1e-6);
        let e = [3f64.exp(), (-1f64).exp(), 2f64.exp()];
        let z: f64 = e.iter().sum();
        for i in 0..3 {
            assert!((row[i + 1] as f64 - e[i] / z).abs() < 1e-6);
        }
    }
}
