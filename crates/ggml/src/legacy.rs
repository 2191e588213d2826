//! Scale choice for the 32-weight types Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0.
//!
//! Without an importance vector these follow ggml's reference encoders
//! (`quantize_row_q*_ref`):
//! * Q8_0: `d = max|x| / 127`, level `round(x / d)` (half away from zero).
//! * Q4_0 / Q5_0: take the weight `m` of largest magnitude (its sign kept) and
//!   `d = m / -8` (`/ -16`), so `m` lands exactly on the most negative level;
//!   level `trunc(x / d + 8.5)` (`+ 16.5`), at most 15 (31).
//! * Q4_1 / Q5_1: `d = (max - min) / 15` (`/ 31`), `m = min`, level
//!   `trunc((x - min) / d + 0.5)`.
//!
//! In all of them the division is a multiplication by `1/d` computed in f32
//! before `d` is rounded to f16, as in ggml.
//!
//! With an importance vector `q` (llama-quantize's imatrix, one entry per column)
//! ggml's `quantize_row_q*_impl` weight each element by
//! `q_i · sqrt(σ² + x_i²)`, with `σ²` the mean square of the *whole row*, and
//! run a scale search: [`crate::search::sym_search`] for Q4_0/Q5_0 and the affine
//! [`crate::search::affine_search`] (ggml's `make_qkx3_quants`, 37 trials) for
//! Q4_1/Q5_1. Q8_0 ignores the importance vector.

// Index loops mirror ggml's reference loops, which keeps the order of the f32
// operations (and so bit-exactness) easy to audit.
#![allow(clippy::needless_range_loop)]

use crate::float::{f16_round, f32_to_f16_bits};
use crate::grid::{BlockGrid, Dq, Group, Rule, write_f16};
use crate::search::{
    AffineFit, AffineKind, AffineSearch, SymFit, affine_search, affine_search_lanes, sym_search,
    sym_search_lanes,
};
use crate::types::GgmlType;

/// Importance for one block: the block's slice of the importance vector and
/// the mean square of the row.
#[derive(Clone, Copy)]
pub(crate) struct LegacyImportance<'a> {
    pub qw: &'a [f32],
    pub sigma2: f32,
}

/// Mean square of a row as ggml's legacy `_impl` encoders compute it.
pub(crate) fn row_sigma2(row: &[f32]) -> f32 {
    let mut sum_x2 = 0.0f32;
    for &v in row {
        sum_x2 += v * v;
    }
    sum_x2 / row.len() as f32
}

/// Chooses the parameters of one 32-weight block.
pub(crate) fn choose(ty: GgmlType, x: &[f32], imp: Option<LegacyImportance<'_>>) -> BlockGrid {
    debug_assert_eq!(x.len(), 32);
    match (ty, imp) {
        (GgmlType::Q8_0, _) => q8_0(x),
        (GgmlType::IQ4NL, imp) => iq4_nl(x, imp.map(|i| i.qw)),
        (GgmlType::Q4_0, None) => sym_ref(ty, x, 8),
        (GgmlType::Q5_0, None) => sym_ref(ty, x, 16),
        (GgmlType::Q4_1, None) => affine_ref(ty, x, 15),
        (GgmlType::Q5_1, None) => affine_ref(ty, x, 31),
        (GgmlType::Q4_0, Some(imp)) => sym_weighted(ty, x, 8, imp),
        (GgmlType::Q5_0, Some(imp)) => sym_weighted(ty, x, 16, imp),
        (GgmlType::Q4_1, Some(imp)) => affine_weighted(ty, x, 15, imp),
        (GgmlType::Q5_1, Some(imp)) => affine_weighted(ty, x, 31, imp),
        _ => unreachable!("{ty} is not a 32-weight quant type"),
    }
}

/// IQ4_NL's non-linear levels (ggml's `kvalues_iq4nl`).
pub(crate) const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// The index of the table entry nearest to `x` (ggml's `best_index_int8`:
/// a bisection; a tie goes to the upper entry).
#[inline]
pub(crate) fn best_index_iq4nl(x: f32) -> u8 {
    let val = &KVALUES_IQ4NL;
    if x <= val[0] as f32 {
        return 0;
    }
    if x >= val[15] as f32 {
        return 15;
    }
    let (mut ml, mut mu) = (0usize, 15usize);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < val[mav] as f32 {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - (val[mu - 1] as f32) < (val[mu] as f32) - x {
        (mu - 1) as u8
    } else {
        mu as u8
    }
}

/// IQ4_NL (ggml's `quantize_row_iq4_nl_impl` with one block of 32 and
/// `ntry = 7`, as `quantize_iq4_nl` calls it, with or without importance):
/// start from `d = max / 127` (the sign of the largest-magnitude weight), fit
/// the least-squares scale to the table levels, try 15 further inverse
/// scales `(t − 127) / max`, keep the best; every weight's level is then the
/// table entry nearest to `x / d` (`d` in f32, stored as f16). The weights of
/// the fit are `x²`, or `q_i · sqrt(σ² + x_i²)` with `σ² = 2 Σx² / 32` of the
/// block (not of the row).
fn iq4_nl(x: &[f32], qw: Option<&[f32]>) -> BlockGrid {
    let mut sigma2 = 0.0f32;
    for &v in x {
        sigma2 += v * v;
    }
    sigma2 *= 2.0 / 32.0;
    let mut weight = [0.0f32; 32];
    for j in 0..32 {
        weight[j] = match qw {
            Some(q) => q[j] * (sigma2 + x[j] * x[j]).sqrt(),
            None => x[j] * x[j],
        };
    }
    let d = crate::iquants::iq4_block_scale(x, &weight).unwrap_or(0.0);
    let mul = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut g = BlockGrid::empty(GgmlType::IQ4NL, 5, 0, 15, 0);
    write_f16(&mut g.template, 0, f32_to_f16_bits(d));
    g.groups[0] = Group {
        rule: Rule::Table { mul },
        dq: Dq::Table { d: f16_round(d) },
    };
    g
}

fn q8_0(x: &[f32]) -> BlockGrid {
    let mut amax = 0.0f32;
    for &v in x {
        amax = crate::float::c_max(amax, v.abs());
    }
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let dbits = f32_to_f16_bits(d);
    let mut g = BlockGrid::empty(GgmlType::Q8_0, 5, -128, 127, 128);
    write_f16(&mut g.template, 0, dbits);
    g.groups[0] = Group {
        rule: Rule::Round { mul: id },
        dq: Dq::Sym {
            d: f16_round(d),
            off: 128,
        },
    };
    g
}

/// Q4_0 / Q5_0 reference: `nmax` is 8 or 16.
fn sym_ref(ty: GgmlType, x: &[f32], nmax: i32) -> BlockGrid {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -(nmax as f32);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut g = BlockGrid::empty(ty, 5, 0, 2 * nmax - 1, 0);
    write_f16(&mut g.template, 0, f32_to_f16_bits(d));
    g.groups[0] = Group {
        rule: Rule::Trunc {
            mul: id,
            sub: 0.0,
            add: nmax as f32 + 0.5,
        },
        dq: Dq::Sym {
            d: f16_round(d),
            off: nmax,
        },
    };
    g
}

/// Q4_1 / Q5_1 reference: `nmax` is 15 or 31.
fn affine_ref(ty: GgmlType, x: &[f32], nmax: i32) -> BlockGrid {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    let d = (max - min) / nmax as f32;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut g = BlockGrid::empty(ty, 5, 0, nmax, 0);
    write_f16(&mut g.template, 0, f32_to_f16_bits(d));
    write_f16(&mut g.template, 2, f32_to_f16_bits(min));
    g.groups[0] = Group {
        rule: Rule::Trunc {
            mul: id,
            sub: min,
            add: 0.5,
        },
        dq: Dq::AddMin {
            d: f16_round(d),
            m: f16_round(min),
        },
    };
    g
}

fn block_weights(x: &[f32], imp: LegacyImportance<'_>) -> [f32; 32] {
    let mut w = [0.0f32; 32];
    for j in 0..32 {
        w[j] = imp.qw[j] * (imp.sigma2 + x[j] * x[j]).sqrt();
    }
    w
}

/// Q4_0 / Q5_0 with importance: weighted symmetric search.
fn sym_weighted(ty: GgmlType, x: &[f32], nmax: i32, imp: LegacyImportance<'_>) -> BlockGrid {
    let w = block_weights(x, imp);
    let mut codes = [0u8; 32];
    let fit = sym_search(x, nmax, Some(&w), &mut codes);
    sym_weighted_grid(ty, nmax, fit, &codes)
}

fn sym_weighted_grid(ty: GgmlType, nmax: i32, fit: SymFit, codes: &[u8]) -> BlockGrid {
    let mut g = BlockGrid::empty(ty, 5, -nmax, nmax - 1, nmax);
    g.fixed[..32].copy_from_slice(codes);
    write_f16(&mut g.template, 0, f32_to_f16_bits(fit.scale));
    g.groups[0] = Group {
        rule: match fit.mul {
            Some(mul) => Rule::Mul { mul, sub: 0.0 },
            None => Rule::Fixed,
        },
        dq: Dq::Sym {
            d: f16_round(fit.scale),
            off: nmax,
        },
    };
    g
}

/// Q4_1 / Q5_1 with importance: weighted affine search.
fn affine_weighted(ty: GgmlType, x: &[f32], nmax: i32, imp: LegacyImportance<'_>) -> BlockGrid {
    let w = block_weights(x, imp);
    let mut codes = [0u8; 32];
    let fit = affine_search(x, &w, affine_params(nmax), &mut codes);
    affine_weighted_grid(ty, nmax, fit, &codes)
}

fn affine_params(nmax: i32) -> AffineSearch {
    AffineSearch {
        kind: AffineKind::Qkx3,
        nmax,
        rmin: -0.9,
        rdelta: 0.05,
        nstep: 36,
        use_mad: false,
    }
}

fn affine_weighted_grid(ty: GgmlType, nmax: i32, fit: AffineFit, codes: &[u8]) -> BlockGrid {
    let mut g = BlockGrid::empty(ty, 5, 0, nmax, 0);
    g.fixed[..32].copy_from_slice(codes);
    write_f16(&mut g.template, 0, f32_to_f16_bits(fit.scale));
    write_f16(&mut g.template, 2, f32_to_f16_bits(-fit.neg_min));
    g.groups[0] = Group {
        rule: match fit.rule {
            Some((mul, sub)) => Rule::Mul { mul, sub },
            None => Rule::Fixed,
        },
        dq: Dq::AddMin {
            d: f16_round(fit.scale),
            m: f16_round(-fit.neg_min),
        },
    };
    g
}

/// Eight consecutive blocks of a row with importance, searched together
/// (bit-identical to eight [`choose`] calls; Q4_0/Q4_1/Q5_0/Q5_1 only).
pub(crate) fn choose_weighted_x8(
    ty: GgmlType,
    x: &[f32],
    qw: &[f32],
    sigma2: f32,
) -> [BlockGrid; 8] {
    debug_assert!(x.len() == 256 && qw.len() == 256);
    let mut w = [0.0f32; 256];
    for b in 0..8 {
        let wb = block_weights(
            &x[32 * b..32 * b + 32],
            LegacyImportance {
                qw: &qw[32 * b..32 * b + 32],
                sigma2,
            },
        );
        w[32 * b..32 * b + 32].copy_from_slice(&wb);
    }
    let mut codes = [0u8; 256];
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 => {
            let nmax = if ty == GgmlType::Q4_0 { 8 } else { 16 };
            let fits = sym_search_lanes::<8>(x, 32, nmax, Some(&w), &mut codes);
            std::array::from_fn(|b| {
                sym_weighted_grid(ty, nmax, fits[b], &codes[32 * b..32 * b + 32])
            })
        }
        GgmlType::Q4_1 | GgmlType::Q5_1 => {
            let nmax = if ty == GgmlType::Q4_1 { 15 } else { 31 };
            let fits = affine_search_lanes::<8>(x, &w, 32, affine_params(nmax), &mut codes);
            std::array::from_fn(|b| {
                affine_weighted_grid(ty, nmax, fits[b], &codes[32 * b..32 * b + 32])
            })
        }
        _ => unreachable!("{ty} has no importance-weighted 32-value encoder"),
    }
}
