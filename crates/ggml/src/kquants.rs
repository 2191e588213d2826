//! Scale choice for the k-quants Q2_K, Q3_K, Q4_K, Q5_K and Q6_K.
//!
//! A super-block of 256 weights is split into sub-blocks (16 of 16 weights for
//! Q2_K, Q3_K, Q6_K; 8 of 32 for Q4_K, Q5_K). Each sub-block gets its own scale
//! (and min, for the affine types) from a scale search; the sub-block scales
//! and mins are then quantized against one f16 super-block scale `d` (and
//! `dmin`): 4 bits in Q2_K, 6 bits in Q3_K/Q4_K/Q5_K, 8 bits in Q6_K. Finally
//! every weight is re-rounded against its sub-block's *decoded* scale and min:
//! `l = nearest_int((x + dmin·m_j) / (d·sc_j))` (affine) or
//! `nearest_int(x / (d·sc_j))` (symmetric). Sub-blocks whose decoded scale is
//! zero keep the levels of their scale search.
//!
//! Without an importance vector (ggml's `quantize_row_q*_K_ref`):
//! * Q2_K: sub-block search on weights `|x|` minimising absolute error
//!   (`make_qkx2_quants`, nmax 3, 16 trials); scales and mins scaled by
//!   `15 / max` and rounded.
//! * Q3_K: coordinate-descent symmetric search (`make_q3_quants`), signed
//!   sub-block scales scaled by `-32 / s` (s: the sub-block scale of largest
//!   magnitude) and rounded to 6 bits.
//! * Q4_K / Q5_K: weights `sqrt(mean x²) + |x|` over the sub-block,
//!   `make_qkx2_quants` with nmax 15 (21 trials) / 31 (16 trials); scales and
//!   mins scaled by `63 / max`.
//! * Q6_K: weighted symmetric search (`make_qx_quants`, weights `x²`), scales
//!   scaled by `-128 / s` and rounded to 8 bits.
//!
//! With an importance vector `q` (ggml's `quantize_row_q*_K_impl`) the
//! element weights become `q_i · sqrt(σ² + x_i²)` with `σ²` twice the
//! super-block's mean square (Q2_K: once), sub-blocks use the 37-trial
//! `make_qkx3_quants` (Q2_K, Q4_K, Q5_K) or `make_qx_quants` (Q3_K), and the
//! sub-block scales and mins are quantized by a weighted search of their own
//! (`make_qp_quants`, weighted by each sub-block's total weight; Q3_K:
//! `make_qx_quants`). Q6_K only swaps `x²` for `q` in its sub-block search.

// Index loops mirror ggml's reference loops, which keeps the order of the f32
// operations (and so bit-exactness) easy to audit.
#![allow(clippy::needless_range_loop)]

use crate::float::{f16_bits_to_f32, f32_to_f16_bits, nearest_int};
use crate::grid::{BlockGrid, Dq, Group, Rule, scale_min_k4, scale_q3k, write_f16};
use crate::search::{
    AffineFit, AffineKind, AffineSearch, GROUP_MAX_EPS, SymFit, affine_search_lanes, scale_search,
    sym_descent, sym_search, sym_search_lanes,
};
use crate::types::GgmlType;

/// Chooses the parameters of one 256-weight super-block. `qw` is the
/// super-block's slice of the importance vector.
pub(crate) fn choose(ty: GgmlType, x: &[f32], qw: Option<&[f32]>) -> BlockGrid {
    debug_assert_eq!(x.len(), 256);
    match (ty, qw) {
        (GgmlType::Q2K, None) => q2k_ref(x),
        (GgmlType::Q2K, Some(q)) => q2k_weighted(x, q),
        (GgmlType::Q3K, None) => q3k_ref(x),
        (GgmlType::Q3K, Some(q)) => q3k_weighted(x, q),
        (GgmlType::Q4K, _) => q45k(GgmlType::Q4K, x, qw),
        (GgmlType::Q5K, _) => q45k(GgmlType::Q5K, x, qw),
        (GgmlType::Q6K, _) => q6k(x, qw),
        _ => unreachable!("{ty} is not a k-quant type"),
    }
}

/// The affine search on 16 sub-blocks of 16, as two 8-lane batches.
fn affine_16x16(x: &[f32], w: &[f32], p: AffineSearch, codes: &mut [u8; 256]) -> [AffineFit; 16] {
    let (c0, c1) = codes.split_at_mut(128);
    let a = affine_search_lanes::<8>(&x[..128], &w[..128], 16, p, c0);
    let b = affine_search_lanes::<8>(&x[128..], &w[128..], 16, p, c1);
    let mut out = [a[0]; 16];
    out[..8].copy_from_slice(&a);
    out[8..].copy_from_slice(&b);
    out
}

/// The symmetric search on 16 sub-blocks of 16, as two 8-lane batches.
fn sym_16x16(x: &[f32], nmax: i32, w: Option<&[f32]>, codes: &mut [u8; 256]) -> [SymFit; 16] {
    let (c0, c1) = codes.split_at_mut(128);
    let a = sym_search_lanes::<8>(&x[..128], 16, nmax, w.map(|w| &w[..128]), c0);
    let b = sym_search_lanes::<8>(&x[128..], 16, nmax, w.map(|w| &w[128..]), c1);
    let mut out = [a[0]; 16];
    out[..8].copy_from_slice(&a);
    out[8..].copy_from_slice(&b);
    out
}

/// Sum of squares of a slice, accumulated in order in f32 (as ggml does).
fn sum_sq(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v * v;
    }
    s
}

/// Sets each affine sub-block's rule from the packed scales: requantize
/// against `d·sc_j` and `dmin·m_j`, or keep the search's levels when `d·sc_j`
/// is zero. `subs` are (sc, m) per sub-block.
fn affine_groups(g: &mut BlockGrid, d: f32, dmin: f32, subs: &[(u8, u8)]) {
    for (j, &(sc, m)) in subs.iter().enumerate() {
        let dl = d * sc as f32;
        let ml = dmin * m as f32;
        g.groups[j] = Group {
            rule: if dl == 0.0 {
                Rule::Fixed
            } else {
                Rule::Div { div: dl, add: ml }
            },
            dq: Dq::SubMin { d: dl, m: ml },
        };
    }
}

/// Same for the symmetric types (`sc` already signed), levels offset by `off`.
fn sym_groups(g: &mut BlockGrid, d: f32, scales: &[i8], off: i32) {
    for (j, &sc) in scales.iter().enumerate() {
        let dl = d * sc as f32;
        g.groups[j] = Group {
            rule: if dl == 0.0 {
                Rule::Fixed
            } else {
                Rule::Div { div: dl, add: 0.0 }
            },
            dq: Dq::Sym { d: dl, off },
        };
    }
}

// ---------------------------------------------------------------- Q2_K
// Layout: scales[16] (scale | min << 4) | qs[64] | d | dmin

fn q2k_ref(x: &[f32]) -> BlockGrid {
    let mut g = BlockGrid::empty(GgmlType::Q2K, 4, 0, 3, 0);
    let mut scales = [0.0f32; 16];
    let mut mins = [0.0f32; 16];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    let p = AffineSearch {
        kind: AffineKind::Qkx2,
        nmax: 3,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: true,
    };
    let mut w = [0.0f32; 256];
    for (wi, &v) in w.iter_mut().zip(x) {
        *wi = v.abs();
    }
    let fits = affine_16x16(x, &w, p, &mut g.fixed);
    for (j, fit) in fits.iter().enumerate() {
        scales[j] = fit.scale;
        mins[j] = fit.neg_min;
        if fit.scale > max_scale {
            max_scale = fit.scale;
        }
        if fit.neg_min > max_min {
            max_min = fit.neg_min;
        }
    }
    let mut sb = [0u8; 16];
    let dbits = if max_scale > 0.0 {
        let iscale = 15.0 / max_scale;
        for j in 0..16 {
            sb[j] = nearest_int(iscale * scales[j]) as u8;
        }
        f32_to_f16_bits(max_scale / 15.0)
    } else {
        f32_to_f16_bits(0.0)
    };
    let mbits = if max_min > 0.0 {
        let iscale = 15.0 / max_min;
        for j in 0..16 {
            sb[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
        }
        f32_to_f16_bits(max_min / 15.0)
    } else {
        f32_to_f16_bits(0.0)
    };
    q2k_finish(g, sb, dbits, mbits)
}

fn q2k_weighted(x: &[f32], qw: &[f32]) -> BlockGrid {
    let mut g = BlockGrid::empty(GgmlType::Q2K, 4, 0, 3, 0);
    let sigma2 = sum_sq(x) / 256.0;
    let mut scales = [0.0f32; 16];
    let mut mins = [0.0f32; 16];
    let mut sw = [0.0f32; 16];
    let p = AffineSearch {
        kind: AffineKind::Qkx3,
        nmax: 3,
        rmin: -0.9,
        rdelta: 0.05,
        nstep: 36,
        use_mad: false,
    };
    let mut w = [0.0f32; 256];
    for j in 0..16 {
        for l in 0..16 {
            let v = x[16 * j + l];
            w[16 * j + l] = qw[16 * j + l] * (sigma2 + v * v).sqrt();
        }
        for &wl in &w[16 * j..16 * j + 16] {
            sw[j] += wl;
        }
    }
    let fits = affine_16x16(x, &w, p, &mut g.fixed);
    for (j, fit) in fits.iter().enumerate() {
        scales[j] = fit.scale;
        mins[j] = fit.neg_min;
    }
    let mut ls = [0u8; 16];
    let mut lm = [0u8; 16];
    let dm = scale_search(&scales, 15, &sw, &mut ls);
    let mm = scale_search(&mins, 15, &sw, &mut lm);
    let mut sb = [0u8; 16];
    for j in 0..16 {
        sb[j] = ls[j] | (lm[j] << 4);
    }
    q2k_finish(g, sb, f32_to_f16_bits(dm), f32_to_f16_bits(mm))
}

fn q2k_finish(mut g: BlockGrid, sb: [u8; 16], dbits: u16, mbits: u16) -> BlockGrid {
    g.template[..16].copy_from_slice(&sb);
    write_f16(&mut g.template, 80, dbits);
    write_f16(&mut g.template, 82, mbits);
    let mut subs = [(0u8, 0u8); 16];
    for j in 0..16 {
        subs[j] = (sb[j] & 0xf, sb[j] >> 4);
    }
    affine_groups(
        &mut g,
        f16_bits_to_f32(dbits),
        f16_bits_to_f32(mbits),
        &subs,
    );
    g
}

// ---------------------------------------------------------------- Q3_K
// Layout: hmask[32] | qs[64] | scales[12] (16 six-bit values) | d

/// Packs 16 six-bit values (already offset by 32) into Q3_K's 12 bytes: low
/// nibbles of values 0-7 and 8-15 share bytes 0-7; the top 2 bits go to bytes
/// 8-11, value j at bits 2·(j/4) of byte 8 + j%4.
fn pack_q3k_scales(vals: &[u8; 16]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for (j, &v) in vals.iter().enumerate() {
        if j < 8 {
            s[j] = v & 0xf;
        } else {
            s[j - 8] |= (v & 0xf) << 4;
        }
        s[8 + j % 4] |= (v >> 4) << (2 * (j / 4));
    }
    s
}

fn q3k_ref(x: &[f32]) -> BlockGrid {
    let mut g = BlockGrid::empty(GgmlType::Q3K, 4, -4, 3, 4);
    let mut scales = [0.0f32; 16];
    let mut amax = 0.0f32;
    let mut max_scale = 0.0f32;
    for j in 0..16 {
        scales[j] = sym_descent(
            &x[16 * j..16 * j + 16],
            4,
            &mut g.fixed[16 * j..16 * j + 16],
        );
        let a = scales[j].abs();
        if a > amax {
            amax = a;
            max_scale = scales[j];
        }
    }
    let mut packed = [0u8; 12];
    let dbits = if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        let mut vals = [0u8; 16];
        for j in 0..16 {
            let l = nearest_int(iscale * scales[j]) as i8;
            vals[j] = (l.clamp(-32, 31) + 32) as u8;
        }
        packed = pack_q3k_scales(&vals);
        f32_to_f16_bits(1.0 / iscale)
    } else {
        f32_to_f16_bits(0.0)
    };
    q3k_finish(g, packed, dbits)
}

fn q3k_weighted(x: &[f32], qw: &[f32]) -> BlockGrid {
    let mut g = BlockGrid::empty(GgmlType::Q3K, 4, -4, 3, 4);
    let sigma2 = 2.0 * sum_sq(x) / 256.0;
    let mut scales = [0.0f32; 16];
    let mut sw = [0.0f32; 16];
    let mut w = [0.0f32; 256];
    for j in 0..16 {
        for l in 0..16 {
            let v = x[16 * j + l];
            w[16 * j + l] = qw[16 * j + l] * (sigma2 + v * v).sqrt();
        }
        let mut sumw = 0.0f32;
        for &wl in &w[16 * j..16 * j + 16] {
            sumw += wl;
        }
        sw[j] = sumw;
    }
    for (j, fit) in sym_16x16(x, 4, Some(&w), &mut g.fixed).iter().enumerate() {
        scales[j] = fit.scale;
    }
    let mut ls = [0u8; 16];
    let d_block = sym_search(&scales, 32, Some(&sw), &mut ls).scale;
    q3k_finish(g, pack_q3k_scales(&ls), f32_to_f16_bits(d_block))
}

fn q3k_finish(mut g: BlockGrid, packed: [u8; 12], dbits: u16) -> BlockGrid {
    g.template[96..108].copy_from_slice(&packed);
    write_f16(&mut g.template, 108, dbits);
    let mut sc = [0i8; 16];
    for (j, s) in sc.iter_mut().enumerate() {
        *s = scale_q3k(j, &packed);
    }
    sym_groups(&mut g, f16_bits_to_f32(dbits), &sc, 4);
    g
}

// ---------------------------------------------------------------- Q4_K, Q5_K
// Layout: d | dmin | scales[12] (8 six-bit scales and mins) | [qh[32]] | qs[128]

/// Packs 8 (scale, min) pairs into 12 bytes, byte for byte as ggml does
/// (values above 63 would spill into neighbouring fields there too).
fn pack_k4_scales(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0xf) | ((lm[j] & 0xf) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
    s
}

fn q45k(ty: GgmlType, x: &[f32], qw: Option<&[f32]>) -> BlockGrid {
    let nmax = if ty == GgmlType::Q4K { 15 } else { 31 };
    let mut g = BlockGrid::empty(ty, 5, 0, nmax, 0);
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    let (ls, lm, dbits, mbits);
    match qw {
        None => {
            let p = if ty == GgmlType::Q4K {
                AffineSearch {
                    kind: AffineKind::Qkx2,
                    nmax,
                    rmin: -1.0,
                    rdelta: 0.1,
                    nstep: 20,
                    use_mad: false,
                }
            } else {
                AffineSearch {
                    kind: AffineKind::Qkx2,
                    nmax,
                    rmin: -0.5,
                    rdelta: 0.1,
                    nstep: 15,
                    use_mad: false,
                }
            };
            let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
            let mut w = [0.0f32; 256];
            for j in 0..8 {
                let xs = &x[32 * j..32 * j + 32];
                let av_x = (sum_sq(xs) / 32.0).sqrt();
                for (wi, &v) in w[32 * j..32 * j + 32].iter_mut().zip(xs) {
                    *wi = av_x + v.abs();
                }
            }
            let fits = affine_search_lanes::<8>(x, &w, 32, p, &mut g.fixed);
            for (j, fit) in fits.iter().enumerate() {
                scales[j] = fit.scale;
                mins[j] = fit.neg_min;
                if fit.scale > max_scale {
                    max_scale = fit.scale;
                }
                if fit.neg_min > max_min {
                    max_min = fit.neg_min;
                }
            }
            let inv_scale = if max_scale > 0.0 {
                63.0 / max_scale
            } else {
                0.0
            };
            let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
            let mut a = [0u8; 8];
            let mut b = [0u8; 8];
            for j in 0..8 {
                a[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
                b[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
            }
            ls = a;
            lm = b;
            dbits = f32_to_f16_bits(max_scale / 63.0);
            mbits = f32_to_f16_bits(max_min / 63.0);
        }
        Some(qw) => {
            let sigma2 = 2.0 * sum_sq(x) / 256.0;
            let p = AffineSearch {
                kind: AffineKind::Qkx3,
                nmax,
                rmin: -0.9,
                rdelta: 0.05,
                nstep: 36,
                use_mad: false,
            };
            let mut sw = [0.0f32; 8];
            let mut w = [0.0f32; 256];
            for j in 0..8 {
                for l in 0..32 {
                    let v = x[32 * j + l];
                    w[32 * j + l] = qw[32 * j + l] * (sigma2 + v * v).sqrt();
                }
                let mut sumw = 0.0f32;
                for &wl in &w[32 * j..32 * j + 32] {
                    sumw += wl;
                }
                sw[j] = sumw;
            }
            let fits = affine_search_lanes::<8>(x, &w, 32, p, &mut g.fixed);
            for (j, fit) in fits.iter().enumerate() {
                scales[j] = fit.scale;
                mins[j] = fit.neg_min;
            }
            let mut a = [0u8; 8];
            let mut b = [0u8; 8];
            let d_block = scale_search(&scales, 63, &sw, &mut a);
            let m_block = scale_search(&mins, 63, &sw, &mut b);
            if ty == GgmlType::Q5K {
                // Q5_K's weighted encoder caps the levels at 63; Q4_K's does not.
                for v in a.iter_mut().chain(b.iter_mut()) {
                    *v = (*v).min(63);
                }
            }
            ls = a;
            lm = b;
            dbits = f32_to_f16_bits(d_block);
            mbits = f32_to_f16_bits(m_block);
        }
    }
    let packed = pack_k4_scales(&ls, &lm);
    write_f16(&mut g.template, 0, dbits);
    write_f16(&mut g.template, 2, mbits);
    g.template[4..16].copy_from_slice(&packed);
    let mut subs = [(0u8, 0u8); 8];
    for (j, s) in subs.iter_mut().enumerate() {
        *s = scale_min_k4(j, &packed);
    }
    affine_groups(
        &mut g,
        f16_bits_to_f32(dbits),
        f16_bits_to_f32(mbits),
        &subs,
    );
    g
}

// ---------------------------------------------------------------- Q6_K
// Layout: ql[128] | qh[64] | scales[16] (int8) | d

fn q6k(x: &[f32], qw: Option<&[f32]>) -> BlockGrid {
    let mut g = BlockGrid::empty(GgmlType::Q6K, 4, -32, 31, 32);
    let mut scales = [0.0f32; 16];
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    let fits = sym_16x16(x, 32, qw, &mut g.fixed);
    for ib in 0..16 {
        let s = fits[ib].scale;
        scales[ib] = s;
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = s;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        // ggml zeroes the whole block: all levels 0, d = +0.
        g.fixed = [0; 256];
        sym_groups(&mut g, 0.0, &[0; 16], 32);
        return g;
    }
    let iscale = -128.0 / max_scale;
    let dbits = f32_to_f16_bits(1.0 / iscale);
    let mut sc = [0i8; 16];
    for ib in 0..16 {
        sc[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
    }
    for (b, &s) in g.template[192..208].iter_mut().zip(&sc) {
        *b = s as u8;
    }
    write_f16(&mut g.template, 208, dbits);
    sym_groups(&mut g, f16_bits_to_f32(dbits), &sc, 32);
    g
}
