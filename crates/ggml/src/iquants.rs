//! The i-quants IQ4_XS, IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS and IQ2_S: 256-weight
//! super-blocks, bit-exact with ggml's `quantize_iq*` / `dequantize_row_iq*`.
//!
//! **IQ4_XS** (ggml's `quantize_row_iq4_nl_impl` with a super-block of 256 and
//! blocks of 32, `ntry = 7`) is IQ4_NL with 6-bit block scales: each 32-weight
//! block gets the IQ4_NL scale search, the block scales are quantized against
//! `d = -max_scale / 32` to `-32..=31`, and every weight is re-rounded to the
//! nearest `kvalues_iq4nl` entry against its decoded block scale. Per weight
//! this is a table lookup, so IQ4_XS has a [`BlockGrid`] like IQ4_NL.
//!
//! The **lattice i-quants** round groups of 8 (IQ2_*) or 4 (IQ3_*) magnitudes
//! jointly to a point of a codebook (`crate::iq_grids`), and store the signs
//! separately. ggml's encoders (`quantize_row_iq2_xxs_impl`,
//! `quantize_row_iq2_xs_impl`, `quantize_row_iq2_s_impl`,
//! `quantize_row_iq3_xxs_impl`, `quantize_row_iq3_s_impl`) share one shape:
//!
//! 1. Per sub-block (32 weights; 16 for IQ2_XS/IQ2_S) the element weights are
//!    `q_i · sqrt(σ² + x_i²)` with an importance vector (σ²: the super-block's
//!    mean square, twice it for IQ2_S/IQ3_*), else `x_i²` (IQ3_*) or
//!    `σ²/4 + x_i²` (IQ2_S). IQ2_XXS and IQ2_XS have no unweighted encoder.
//! 2. Signs are split off. IQ2_XXS, IQ2_XS and IQ3_XXS store 7 sign bits per
//!    8 weights (the 8th makes the number of negatives even, ggml's
//!    `ksigns_iq2xs`): with an odd count, the element of least `w·x²` has its
//!    sign flipped back (its magnitude becomes negative).
//! 3. Scale search: for each trial inverse scale `id` every magnitude gets the
//!    level `clamp(nearest_int((id·x − 1) / 2), 0, kmax − 1)` (the point
//!    coordinate is `2l + 1`); a group whose levels are not a codebook point is
//!    replaced by its best neighbour (weighted squared error at scale `1/id`,
//!    searched among the points nearest to it — lists ggml builds in
//!    `iq2xs_init_impl` / `iq3xs_init_impl` and [`Lattice`] builds here); the
//!    trial with the largest `(Σ w x q)² / Σ w q²` wins.
//! 4. Groups that were off the codebook are re-rounded at the winning scale,
//!    which is then refit by least squares.
//! 5. The sub-block scales are stored as 4-bit `l` with scale `d·(2l+1)`
//!    (times a per-type constant in the decoder), `d = max_scale / 31`
//!    (times a "fudge factor" for IQ2_S, IQ3_XXS, IQ3_S).
//!
//! Every float operation is done in ggml's order, in f32.

// Index loops mirror ggml's reference loops, which keeps the order of the f32
// operations (and so bit-exactness) easy to audit.
#![allow(clippy::needless_range_loop)]

use std::sync::OnceLock;

use rayon::prelude::*;

use crate::float::{c_max, f16_round, f32_to_f16_bits, nearest_int};
use crate::grid::{BlockGrid, Dq, Group, Rule, read_f16, write_f16};
use crate::iq_grids::{IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID};
use crate::legacy::{KVALUES_IQ4NL, best_index_iq4nl};
use crate::search::{GROUP_MAX_EPS, scale_search};
use crate::types::GgmlType;

// ---------------------------------------------------------------- IQ4_XS
// Layout: d | scales_h (u16: 2 high bits per block) | scales_l[4] (nibbles) | qs[128]

/// The IQ4_NL scale search of one 32-weight block (the per-block part of
/// ggml's `quantize_row_iq4_nl_impl` with `ntry = 7`): `None` when the block's
/// largest magnitude is below `GROUP_MAX_EPS`.
pub(crate) fn iq4_block_scale(x: &[f32], weight: &[f32]) -> Option<f32> {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        return None;
    }
    let kv = |l: u8| KVALUES_IQ4NL[l as usize] as f32;
    let fit = |id: f32| {
        let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
        for j in 0..x.len() {
            let q = kv(best_index_iq4nl(id * x[j]));
            let w = weight[j];
            sumqx += w * q * x[j];
            sumq2 += w * q * q;
        }
        (sumqx, sumq2)
    };
    let mut d = -max / KVALUES_IQ4NL[0] as f32;
    let (sumqx, sumq2) = fit(1.0 / d);
    d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for itry in -7i32..=7 {
        let id = (itry + KVALUES_IQ4NL[0] as i32) as f32 / max;
        let (sumqx, sumq2) = fit(id);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    Some(d)
}

/// IQ4_XS parameters of one super-block (`qw`: its slice of the importance vector).
pub(crate) fn choose_iq4xs(x: &[f32], qw: Option<&[f32]>) -> BlockGrid {
    debug_assert_eq!(x.len(), 256);
    let mut sigma2 = 0.0f32;
    for &v in x {
        sigma2 += v * v;
    }
    sigma2 *= 2.0 / 256.0;
    let mut scales = [0.0f32; 8];
    let (mut max_scale, mut amax_scale) = (0.0f32, 0.0f32);
    for ib in 0..8 {
        let xb = &x[32 * ib..32 * ib + 32];
        let mut weight = [0.0f32; 32];
        for j in 0..32 {
            weight[j] = match qw {
                Some(q) => q[32 * ib + j] * (sigma2 + xb[j] * xb[j]).sqrt(),
                None => xb[j] * xb[j],
            };
        }
        let Some(d) = iq4_block_scale(xb, &weight) else {
            scales[ib] = 0.0;
            continue;
        };
        scales[ib] = d;
        let abs_d = d.abs();
        if abs_d > amax_scale {
            amax_scale = abs_d;
            max_scale = d;
        }
    }
    let mut g = BlockGrid::empty(GgmlType::IQ4XS, 5, 0, 15, 0);
    let d = -max_scale / 32.0;
    let dbits = f32_to_f16_bits(d);
    write_f16(&mut g.template, 0, dbits);
    let d_dec = f16_round(d);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut scales_h = 0u16;
    for ib in 0..8 {
        let l = nearest_int(id * scales[ib]).clamp(-32, 31);
        let dl = d * l as f32;
        let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        let ls = (l + 32) as u8;
        g.template[4 + ib / 2] |= (ls & 0xf) << (4 * (ib % 2));
        scales_h |= ((ls >> 4) as u16) << (2 * ib);
        g.groups[ib] = Group {
            rule: Rule::Table { mul: idl },
            dq: Dq::Table {
                d: d_dec * (ls as i32 - 32) as f32,
            },
        };
    }
    g.template[2..4].copy_from_slice(&scales_h.to_le_bytes());
    g
}

/// ggml's `dequantize_row_iq4_xs` for one block.
fn decode_iq4xs(y: &[u8], out: &mut [f32]) {
    let d = read_f16(y, 0);
    let scales_h = u16::from_le_bytes([y[2], y[3]]);
    for ib in 0..8 {
        let ls = ((y[4 + ib / 2] >> (4 * (ib % 2))) & 0xf) as i32
            | ((((scales_h >> (2 * ib)) & 3) as i32) << 4);
        let dl = d * (ls - 32) as f32;
        let qs = &y[8 + 16 * ib..8 + 16 * ib + 16];
        for j in 0..16 {
            out[32 * ib + j] = dl * KVALUES_IQ4NL[(qs[j] & 0xf) as usize] as f32;
            out[32 * ib + j + 16] = dl * KVALUES_IQ4NL[(qs[j] >> 4) as usize] as f32;
        }
    }
}

// ---------------------------------------------------------------- codebooks

/// ggml's `ksigns_iq2xs[i]`: the 7 sign bits `i` plus bit 7 set when `i` has
/// an odd number of ones, so that every group has an even number of negatives.
#[inline]
pub(crate) const fn ksign(i: u8) -> u8 {
    (i & 127) | (((i & 127).count_ones() as u8 & 1) << 7)
}

/// A codebook in the coordinates ggml's encoders search in, with the lookup
/// structures of `iq2xs_init_impl` / `iq3xs_init_impl`.
pub(crate) struct Lattice {
    /// Weights per point: 8 (IQ2) or 4 (IQ3).
    pub(crate) dim: usize,
    /// Bits per level in a point's index `u = Σ l_i << (bits·i)`.
    bits: u32,
    /// Point `k` as odd coordinates `2l + 1` (first `dim` entries).
    points: Vec<[i8; 8]>,
    /// For each index `u`: the point's number (≥ 0), or `-(offset + 1)` of its
    /// neighbour list in `neighbours` (`[count, point, point, ...]`).
    map: Vec<i32>,
    neighbours: Vec<u16>,
    /// The decoder's value of each level (`levels[l]` as f32).
    pub(crate) level_values: Vec<f32>,
}

impl Lattice {
    /// Builds the lattice from a decoder table. `levels` lists the table's byte
    /// values in increasing order (level `l` is `levels[l]`), `map_size` and
    /// `nwant` are ggml's `kmap_size` and `nwant`: a point off the codebook
    /// gets every codebook point at one of the `nwant` smallest squared
    /// distances, sorted by (distance, number).
    fn build(
        table: &[u64],
        dim: usize,
        bits: u32,
        levels: &[u8],
        map_size: usize,
        nwant: usize,
    ) -> Lattice {
        let points: Vec<[i8; 8]> = table
            .iter()
            .map(|&e| {
                let mut p = [0i8; 8];
                for i in 0..dim {
                    let b = (e >> (8 * i)) as u8;
                    let l = levels
                        .iter()
                        .position(|&v| v == b)
                        .expect("codebook byte is one of the listed levels");
                    p[i] = 2 * l as i8 + 1;
                }
                p
            })
            .collect();
        let mut map = vec![-1i32; map_size];
        for (k, p) in points.iter().enumerate() {
            let mut u = 0usize;
            for i in 0..dim {
                u |= (((p[i] - 1) / 2) as usize) << (bits as usize * i);
            }
            map[u] = k as i32;
        }
        let mask = (1usize << bits) - 1;
        let lists: Vec<Option<Vec<u16>>> = (0..map_size)
            .into_par_iter()
            .map(|u| {
                if map[u] >= 0 {
                    return None;
                }
                let mut pos = [0i32; 8];
                for k in 0..dim {
                    pos[k] = 2 * ((u >> (bits as usize * k)) & mask) as i32 + 1;
                }
                let d2: Vec<i32> = points
                    .iter()
                    .map(|p| {
                        let mut s = 0;
                        for k in 0..dim {
                            let t = p[k] as i32 - pos[k];
                            s += t * t;
                        }
                        s
                    })
                    .collect();
                // The nwant smallest distinct distances, ascending.
                let mut best: Vec<i32> = Vec::with_capacity(nwant + 1);
                for &d in &d2 {
                    if best.contains(&d) {
                        continue;
                    }
                    if best.len() < nwant || d < *best.last().expect("nwant >= 1") {
                        let at = best.partition_point(|&b| b < d);
                        best.insert(at, d);
                        best.truncate(nwant);
                    }
                }
                let limit = *best.last().expect("a non-empty codebook");
                let mut sel: Vec<(i32, u16)> = d2
                    .iter()
                    .enumerate()
                    .filter(|&(_, &d)| d <= limit)
                    .map(|(j, &d)| (d, j as u16))
                    .collect();
                sel.sort_unstable();
                Some(sel.into_iter().map(|(_, j)| j).collect())
            })
            .collect();
        let mut neighbours = Vec::new();
        for (u, list) in lists.into_iter().enumerate() {
            if let Some(list) = list {
                map[u] = -(neighbours.len() as i32 + 1);
                neighbours.push(list.len() as u16);
                neighbours.extend(list);
            }
        }
        Lattice {
            dim,
            bits,
            points,
            map,
            neighbours,
            level_values: levels.iter().map(|&v| v as f32).collect(),
        }
    }

    /// ggml's `iq*_find_best_neighbour`: the listed neighbour of index `u`
    /// with the least `Σ w (scale·q − x)²` (first on ties); `None` where ggml
    /// asserts (every error NaN or ≥ f32::MAX).
    fn best_neighbour(&self, u: usize, x: &[f32], w: &[f32], scale: f32) -> Option<usize> {
        let off = (-self.map[u] - 1) as usize;
        let n = self.neighbours[off] as usize;
        let mut best_d2 = f32::MAX;
        let mut index = None;
        for &j in &self.neighbours[off + 1..off + 1 + n] {
            let pg = &self.points[j as usize];
            let mut d2 = 0.0f32;
            for i in 0..self.dim {
                let q = pg[i] as f32;
                let diff = scale * q - x[i];
                d2 += w[i] * diff * diff;
            }
            if d2 < best_d2 {
                best_d2 = d2;
                index = Some(j as usize);
            }
        }
        index
    }

    /// The codebook points to consider for levels `l`: the point itself
    /// when they are one, else ggml's neighbour list of their index.
    pub(crate) fn candidates(&self, l: &[i8]) -> Candidates<'_> {
        let u = self.index(l);
        let m = self.map[u];
        if m >= 0 {
            Candidates::Point(m as u16)
        } else {
            let off = (-m - 1) as usize;
            let n = self.neighbours[off] as usize;
            Candidates::List(&self.neighbours[off + 1..off + 1 + n])
        }
    }

    /// The index `u` of levels `l` (one per weight of a group).
    #[inline]
    fn index(&self, l: &[i8]) -> usize {
        let mut u = 0usize;
        for i in 0..self.dim {
            u |= (l[i] as usize) << (self.bits as usize * i);
        }
        u
    }

    /// Writes point `k`'s levels into `l`.
    #[inline]
    fn levels_of(&self, k: usize, l: &mut [i8]) {
        for i in 0..self.dim {
            l[i] = (self.points[k][i] - 1) / 2;
        }
    }
}

/// See [`Lattice::candidates`].
pub(crate) enum Candidates<'a> {
    /// The levels are this codebook point.
    Point(u16),
    /// Off the codebook: the points nearest to them.
    List(&'a [u16]),
}

pub(crate) fn lattice(ty: GgmlType) -> &'static Lattice {
    const IQ2_LEVELS: [u8; 3] = [0x08, 0x19, 0x2b];
    const IQ3XXS_LEVELS: [u8; 8] = [4, 12, 20, 28, 36, 44, 52, 62];
    const IQ3S_LEVELS: [u8; 8] = [1, 3, 5, 7, 9, 11, 13, 15];
    static L: [OnceLock<Lattice>; 5] = [const { OnceLock::new() }; 5];
    fn widen(t: &[u32]) -> Vec<u64> {
        t.iter().map(|&v| v as u64).collect()
    }
    let (slot, build): (usize, fn() -> Lattice) = match ty {
        GgmlType::IQ2XXS => (0, || {
            Lattice::build(&IQ2XXS_GRID, 8, 2, &IQ2_LEVELS, 43692, 2)
        }),
        GgmlType::IQ2XS => (1, || {
            Lattice::build(&IQ2XS_GRID, 8, 2, &IQ2_LEVELS, 43692, 2)
        }),
        GgmlType::IQ2S => (2, || {
            Lattice::build(&IQ2S_GRID, 8, 2, &IQ2_LEVELS, 43692, 1)
        }),
        GgmlType::IQ3XXS => (3, || {
            Lattice::build(&widen(&IQ3XXS_GRID), 4, 3, &IQ3XXS_LEVELS, 4096, 2)
        }),
        GgmlType::IQ3S => (4, || {
            Lattice::build(&widen(&IQ3S_GRID), 4, 3, &IQ3S_LEVELS, 4096, 3)
        }),
        _ => unreachable!("{ty} is not a lattice i-quant"),
    };
    // Built outside the lock: the build runs on rayon's pool, and a worker
    // that waited in `get_or_init` for another thread's build would hold a
    // thread that build needs (two tests quantizing at once deadlocked).
    // Two threads may both build; the first one stored is kept.
    if let Some(l) = L[slot].get() {
        return l;
    }
    let _ = L[slot].set(build());
    L[slot].get().expect("set above")
}

// ---------------------------------------------------------------- lattice encoders

/// How a type's encoder differs from the common shape (see the module docs).
pub(crate) struct Params {
    /// Weights per sub-block (one scale each).
    pub(crate) sub: usize,
    /// Levels per coordinate (`kMaxQ`).
    kmax: i32,
    /// Trials `is = -steps..=steps` at inverse scale `(2·kmax − 1 + is·step) / max`.
    steps: i32,
    step: f32,
    /// IQ2_XXS: start from `make_qp_quants` and search around `scale · kmax`.
    qp_start: bool,
    /// Sub-blocks whose largest magnitude is below this are zero (IQ3_S: exactly 0).
    eps: f32,
    /// 7 stored sign bits per 8 weights (even number of negatives).
    pub(crate) parity_signs: bool,
    /// Step 4 re-rounds every group (IQ3_S) instead of the off-codebook ones.
    redo_all: bool,
    /// IQ2_XXS re-rounds every group whenever the scale is positive.
    redo_always: bool,
    /// Initial "on the codebook" flags of the groups.
    init_on_grid: bool,
    /// σ² multiplier: mean square × this.
    sigma_mul: f32,
    /// The super-block scale's fudge factor (ggml multiplies `d` by it before f16).
    fudge: Option<f32>,
}

pub(crate) fn params(ty: GgmlType) -> Params {
    let base = Params {
        sub: 32,
        kmax: 3,
        steps: 9,
        step: 0.1,
        qp_start: false,
        eps: GROUP_MAX_EPS,
        parity_signs: true,
        redo_all: false,
        redo_always: false,
        init_on_grid: true,
        sigma_mul: 2.0,
        fudge: None,
    };
    match ty {
        GgmlType::IQ2XXS => Params {
            steps: 6,
            qp_start: true,
            redo_all: true,
            redo_always: true,
            sigma_mul: 1.0,
            ..base
        },
        GgmlType::IQ2XS => Params {
            sub: 16,
            sigma_mul: 1.0,
            ..base
        },
        GgmlType::IQ2S => Params {
            sub: 16,
            eps: 1e-8,
            parity_signs: false,
            fudge: Some(0.9875),
            ..base
        },
        GgmlType::IQ3XXS => Params {
            kmax: 8,
            steps: 15,
            step: 0.2,
            eps: 1e-8,
            fudge: Some(1.0125),
            ..base
        },
        GgmlType::IQ3S => Params {
            kmax: 8,
            steps: 9,
            step: 0.2,
            eps: 0.0,
            parity_signs: false,
            redo_all: true,
            init_on_grid: false,
            fudge: Some(1.033),
            ..base
        },
        _ => unreachable!("{ty} is not a lattice i-quant"),
    }
}

/// The result of one sub-block: its scale, codebook points and sign bytes
/// (one per 8 weights; 7 bits with parity signs).
#[derive(Clone, Copy)]
pub(crate) struct Sub {
    pub(crate) scale: f32,
    pub(crate) points: [u16; 8],
    pub(crate) signs: [u8; 4],
}

/// Encoder failure: ggml would abort the process.
pub(crate) struct Abort;

/// Searches one sub-block; `Ok(None)` where ggml leaves it empty (scale 0, no codes).
fn search_sub(p: &Params, lat: &Lattice, xb: &[f32], weight: &[f32]) -> Result<Option<Sub>, Abort> {
    let n = p.sub;
    let dim = lat.dim;
    let ngroups = n / dim;
    let mut waux = [0.0f32; 32];
    for i in 0..n {
        waux[i] = weight[i].sqrt();
    }
    let mut xval = [0.0f32; 32];
    let mut signs = [0u8; 4];
    for k in 0..n / 8 {
        let mut nflip = 0;
        let mut s = 0u8;
        for i in 0..8 {
            let v = xb[8 * k + i];
            if v >= 0.0 {
                xval[8 * k + i] = v;
            } else {
                xval[8 * k + i] = -v;
                nflip += 1;
                s |= 1 << i;
            }
        }
        if p.parity_signs {
            if nflip % 2 == 1 {
                let mut imin = 0;
                let mut min = weight[8 * k] * xb[8 * k] * xb[8 * k];
                for i in 1..8 {
                    let ax = weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i];
                    if ax < min {
                        min = ax;
                        imin = i;
                    }
                }
                xval[8 * k + imin] = -xval[8 * k + imin];
                s ^= 1 << imin;
            }
            s &= 127;
        }
        signs[k] = s;
    }
    let mut max = xval[0];
    for i in 1..n {
        max = c_max(max, xval[i]);
    }
    let empty = if p.eps == 0.0 {
        max == 0.0
    } else {
        max < p.eps
    };
    if empty {
        return Ok(None);
    }
    let kmax = p.kmax;
    let top = (2 * kmax - 1) as f32;
    let mut l = [0i8; 32];
    let mut laux = [0i8; 32];
    let mut on_grid = [p.init_on_grid; 8];
    let mut on_grid_aux = [true; 8];
    let (mut scale, denom) = if p.qp_start {
        let mut lq = [0u8; 32];
        let s = scale_search(&xval[..n], kmax + 1, &weight[..n], &mut lq);
        let eff_max = s * kmax as f32;
        if eff_max <= 0.0 {
            return Ok(None);
        }
        (s, eff_max)
    } else {
        (max / top, max)
    };
    let fit = |lv: &[i8]| {
        let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
        for i in 0..n {
            let w = weight[i];
            let q = (2 * lv[i] as i32 + 1) as f32;
            sumqx += w * xval[i] * q;
            sumq2 += w * q * q;
        }
        (sumqx, sumq2)
    };
    let mut best = 0.0f32;
    for is in -p.steps..=p.steps {
        let id = (top + is as f32 * p.step) / denom;
        let this_scale = 1.0 / id;
        for k in 0..ngroups {
            let g = dim * k;
            for i in 0..dim {
                let li = nearest_int(0.5 * (id * xval[g + i] - 1.0));
                laux[g + i] = li.clamp(0, kmax - 1) as i8;
            }
            let u = lat.index(&laux[g..g + dim]);
            on_grid_aux[k] = true;
            if lat.map[u] < 0 {
                on_grid_aux[k] = false;
                let j = lat
                    .best_neighbour(u, &xval[g..g + dim], &waux[g..g + dim], this_scale)
                    .ok_or(Abort)?;
                lat.levels_of(j, &mut laux[g..g + dim]);
            }
        }
        let (sumqx, sumq2) = fit(&laux);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            l[..n].copy_from_slice(&laux[..n]);
            on_grid[..ngroups].copy_from_slice(&on_grid_aux[..ngroups]);
        }
    }
    let redo = if p.redo_always {
        scale > 0.0
    } else {
        on_grid[..ngroups].iter().any(|&g| !g) && scale > 0.0
    };
    if redo {
        let id = 1.0 / scale;
        for k in 0..ngroups {
            if !p.redo_all && on_grid[k] {
                continue;
            }
            let g = dim * k;
            for i in 0..dim {
                let li = nearest_int(0.5 * (id * xval[g + i] - 1.0));
                l[g + i] = li.clamp(0, kmax - 1) as i8;
            }
            let u = lat.index(&l[g..g + dim]);
            if lat.map[u] < 0 {
                let j = lat
                    .best_neighbour(u, &xval[g..g + dim], &waux[g..g + dim], scale)
                    .ok_or(Abort)?;
                lat.levels_of(j, &mut l[g..g + dim]);
            }
        }
        let (sumqx, sumq2) = fit(&l);
        if sumq2 > 0.0 {
            scale = sumqx / sumq2;
        }
    }
    if scale < 0.0 {
        // ggml: "should never happen": make the scale positive, flip the signs.
        scale = -scale;
        for s in signs.iter_mut().take(n / 8) {
            *s = if p.parity_signs { !*s & 127 } else { !*s };
        }
    }
    let mut points = [0u16; 8];
    for k in 0..ngroups {
        let u = lat.index(&l[dim * k..dim * k + dim]);
        let m = lat.map[u];
        if m < 0 {
            return Err(Abort); // ggml: "Oops: found point not on grid"
        }
        points[k] = m as u16;
    }
    Ok(Some(Sub {
        scale,
        points,
        signs,
    }))
}

/// ggml's choices for one super-block of a lattice i-quant: every sub-block's
/// points and signs (found at its own, unquantized scale), the 4-bit stored
/// sub-block scales and the f16 super-block scale.
pub(crate) struct Choice {
    pub(crate) subs: [Option<Sub>; 16],
    pub(crate) ls: [u8; 16],
    /// The stored f16 `d` (0 when the super-block is all zero).
    pub(crate) d_bits: u16,
    /// Some sub-block has a scale (ggml's `max_scale != 0`).
    pub(crate) nonzero: bool,
}

/// Encodes one super-block of a lattice i-quant into `out` (`ty.type_size()` bytes).
pub(crate) fn encode_lattice(
    ty: GgmlType,
    x: &[f32],
    qw: Option<&[f32]>,
    out: &mut [u8],
) -> Result<(), Abort> {
    let c = choose_lattice(ty, x, qw)?;
    pack_lattice(ty, &c, out);
    Ok(())
}

/// ggml's scale search and point choice for one super-block (256 weights).
pub(crate) fn choose_lattice(ty: GgmlType, x: &[f32], qw: Option<&[f32]>) -> Result<Choice, Abort> {
    debug_assert_eq!(x.len(), 256);
    let p = params(ty);
    let lat = lattice(ty);
    let mut sumx2 = 0.0f32;
    for &v in x {
        sumx2 += v * v;
    }
    let sigma2 = if p.sigma_mul == 1.0 {
        sumx2 / 256.0
    } else {
        p.sigma_mul * sumx2 / 256.0
    };
    let nsub = 256 / p.sub;
    let mut subs: [Option<Sub>; 16] = [None; 16];
    let mut scales = [0.0f32; 16];
    let mut max_scale = 0.0f32;
    for ib in 0..nsub {
        let xb = &x[p.sub * ib..p.sub * (ib + 1)];
        let mut weight = [0.0f32; 32];
        for i in 0..p.sub {
            weight[i] = match qw {
                Some(q) => q[p.sub * ib + i] * (sigma2 + xb[i] * xb[i]).sqrt(),
                None if ty == GgmlType::IQ2S => 0.25 * sigma2 + xb[i] * xb[i],
                None => xb[i] * xb[i],
            };
        }
        subs[ib] = search_sub(&p, lat, xb, &weight)?;
        if let Some(s) = subs[ib] {
            scales[ib] = s.scale;
            max_scale = c_max(max_scale, s.scale);
        }
    }
    // The 4-bit sub-block scales against d = max_scale / 31.
    let mut ls = [0u8; 16];
    let mut d_bits = 0u16;
    if max_scale != 0.0 {
        let d = max_scale / 31.0;
        let stored = match p.fudge {
            Some(f) => d * f,
            None => d,
        };
        d_bits = f32_to_f16_bits(stored);
        let id = 1.0 / d;
        for ib in 0..nsub {
            ls[ib] = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 15) as u8;
        }
    }
    Ok(Choice {
        subs,
        ls,
        d_bits,
        nonzero: max_scale != 0.0,
    })
}

/// Packs a [`Choice`] into ggml's block layout (`ty.type_size()` bytes).
pub(crate) fn pack_lattice(ty: GgmlType, c: &Choice, out: &mut [u8]) {
    let (subs, ls) = (&c.subs, &c.ls);
    out.fill(0);
    let nonzero = c.nonzero;
    if nonzero {
        write_f16(out, 0, c.d_bits);
    }
    match ty {
        GgmlType::IQ2XXS => {
            // qs: per 32 weights two u32: 4 point bytes; 4 × 7 sign bits | scale << 28.
            if nonzero {
                for ib in 0..8 {
                    let mut a = 0u32;
                    let mut b = (ls[ib] as u32) << 28;
                    if let Some(s) = subs[ib] {
                        for k in 0..4 {
                            a |= (s.points[k] as u32) << (8 * k);
                            b |= (s.signs[k] as u32) << (7 * k);
                        }
                    }
                    out[2 + 8 * ib..6 + 8 * ib].copy_from_slice(&a.to_le_bytes());
                    out[6 + 8 * ib..10 + 8 * ib].copy_from_slice(&b.to_le_bytes());
                }
            }
        }
        GgmlType::IQ2XS => {
            // qs: u16 per 8 weights: 9-bit point | 7 sign bits << 9; scales[8] nibbles.
            if nonzero {
                for ib in 0..16 {
                    if let Some(s) = subs[ib] {
                        for k in 0..2 {
                            let v = s.points[k] | ((s.signs[k] as u16) << 9);
                            let o = 2 + 2 * (2 * ib + k);
                            out[o..o + 2].copy_from_slice(&v.to_le_bytes());
                        }
                    }
                    out[66 + ib / 2] |= ls[ib] << (4 * (ib % 2));
                }
            }
        }
        GgmlType::IQ2S => {
            // qs[32] low point bytes | signs[32] | qh[8] (2 high bits each) | scales[8].
            for ib in 0..16 {
                if let Some(s) = subs[ib] {
                    for k in 0..2 {
                        let i8 = 2 * ib + k;
                        out[2 + i8] = s.points[k] as u8;
                        out[66 + i8 / 4] |= ((s.points[k] >> 8) as u8) << (2 * (i8 % 4));
                        out[34 + i8] = s.signs[k];
                    }
                }
                if nonzero {
                    out[74 + ib / 2] |= ls[ib] << (4 * (ib % 2));
                }
            }
        }
        GgmlType::IQ3XXS => {
            // qs[64] point bytes | per 32 weights u32: 4 × 7 sign bits | scale << 28.
            if nonzero {
                for ib in 0..8 {
                    let mut v = (ls[ib] as u32) << 28;
                    if let Some(s) = subs[ib] {
                        for k in 0..8 {
                            out[2 + 8 * ib + k] = s.points[k] as u8;
                        }
                        v |= s.signs[0] as u32
                            | (s.signs[1] as u32) << 7
                            | (s.signs[2] as u32) << 14
                            | (s.signs[3] as u32) << 21;
                    }
                    out[66 + 4 * ib..70 + 4 * ib].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
        GgmlType::IQ3S => {
            // qs[64] low point bytes | qh[8] (high bits) | signs[32] | scales[4].
            // ggml advances its qs/signs cursors only past non-empty sub-blocks,
            // so later sub-blocks move up into an empty one's place (reproduced).
            let (mut qs_at, mut signs_at) = (0usize, 0usize);
            for ib in 0..8 {
                let Some(s) = subs[ib] else { continue };
                for k in 0..8 {
                    out[2 + qs_at + k] = s.points[k] as u8;
                    let bit = 8 * ib + k;
                    out[66 + bit / 8] |= ((s.points[k] >> 8) as u8) << (bit % 8);
                }
                qs_at += 8;
                out[74 + signs_at..78 + signs_at].copy_from_slice(&s.signs);
                signs_at += 4;
            }
            if nonzero {
                for ib in (0..8).step_by(2) {
                    out[106 + ib / 2] = ls[ib] | (ls[ib + 1] << 4);
                }
            }
        }
        _ => unreachable!("{ty} is not a lattice i-quant"),
    }
}

// ---------------------------------------------------------------- decoders

#[inline]
fn signed(v: f32, signs: u8, j: usize) -> f32 {
    v * if signs & (1 << j) != 0 { -1.0 } else { 1.0 }
}

/// ggml's `dequantize_row_iq*` for one block of an i-quant.
pub(crate) fn decode_block(ty: GgmlType, y: &[u8], out: &mut [f32]) {
    let d = read_f16(y, 0);
    let u32_at = |o: usize| u32::from_le_bytes([y[o], y[o + 1], y[o + 2], y[o + 3]]);
    match ty {
        GgmlType::IQ4XS => decode_iq4xs(y, out),
        GgmlType::IQ2XXS => {
            for ib in 0..8 {
                let a = u32_at(2 + 8 * ib);
                let b = u32_at(6 + 8 * ib);
                let db = d * (0.5 + (b >> 28) as f32) * 0.25;
                for l in 0..4 {
                    let grid = IQ2XXS_GRID[((a >> (8 * l)) & 255) as usize];
                    let signs = ksign(((b >> (7 * l)) & 127) as u8);
                    for j in 0..8 {
                        let g = (grid >> (8 * j)) as u8;
                        out[32 * ib + 8 * l + j] = signed(db * g as f32, signs, j);
                    }
                }
            }
        }
        GgmlType::IQ2XS => {
            for ib in 0..8 {
                let sc = y[66 + ib];
                let db = [
                    d * (0.5 + (sc & 0xf) as f32) * 0.25,
                    d * (0.5 + (sc >> 4) as f32) * 0.25,
                ];
                for l in 0..4 {
                    let q = u16::from_le_bytes([y[2 + 8 * ib + 2 * l], y[3 + 8 * ib + 2 * l]]);
                    let grid = IQ2XS_GRID[(q & 511) as usize];
                    let signs = ksign((q >> 9) as u8);
                    for j in 0..8 {
                        let g = (grid >> (8 * j)) as u8;
                        out[32 * ib + 8 * l + j] = signed(db[l / 2] * g as f32, signs, j);
                    }
                }
            }
        }
        GgmlType::IQ2S => {
            for ib in 0..8 {
                let sc = y[74 + ib];
                let db = [
                    d * (0.5 + (sc & 0xf) as f32) * 0.25,
                    d * (0.5 + (sc >> 4) as f32) * 0.25,
                ];
                let qh = y[66 + ib] as usize;
                for l in 0..4 {
                    let idx = y[2 + 4 * ib + l] as usize | ((qh << (8 - 2 * l)) & 0x300);
                    let grid = IQ2S_GRID[idx];
                    let signs = y[34 + 4 * ib + l];
                    for j in 0..8 {
                        let g = (grid >> (8 * j)) as u8;
                        out[32 * ib + 8 * l + j] = signed(db[l / 2] * g as f32, signs, j);
                    }
                }
            }
        }
        GgmlType::IQ3XXS => {
            for ib in 0..8 {
                let aux = u32_at(66 + 4 * ib);
                let db = d * (0.5 + (aux >> 28) as f32) * 0.5;
                for l in 0..4 {
                    let signs = ksign(((aux >> (7 * l)) & 127) as u8);
                    let g1 = IQ3XXS_GRID[y[2 + 8 * ib + 2 * l] as usize];
                    let g2 = IQ3XXS_GRID[y[3 + 8 * ib + 2 * l] as usize];
                    for j in 0..4 {
                        let o = 32 * ib + 8 * l;
                        out[o + j] = signed(db * ((g1 >> (8 * j)) as u8) as f32, signs, j);
                        out[o + j + 4] = signed(db * ((g2 >> (8 * j)) as u8) as f32, signs, j + 4);
                    }
                }
            }
        }
        GgmlType::IQ3S => {
            for ib in 0..8 {
                let sc = y[106 + ib / 2];
                let nib = if ib % 2 == 0 { sc & 0xf } else { sc >> 4 };
                let db = d * (1 + 2 * nib as i32) as f32;
                let qh = y[66 + ib] as usize;
                for l in 0..4 {
                    let q1 = y[2 + 8 * ib + 2 * l] as usize | ((qh << (8 - 2 * l)) & 256);
                    let q2 = y[3 + 8 * ib + 2 * l] as usize | ((qh << (7 - 2 * l)) & 256);
                    let (g1, g2) = (IQ3S_GRID[q1], IQ3S_GRID[q2]);
                    let signs = y[74 + 4 * ib + l];
                    for j in 0..4 {
                        let o = 32 * ib + 8 * l;
                        out[o + j] = signed(db * ((g1 >> (8 * j)) as u8) as f32, signs, j);
                        out[o + j + 4] = signed(db * ((g2 >> (8 * j)) as u8) as f32, signs, j + 4);
                    }
                }
            }
        }
        _ => unreachable!("{ty} is not an i-quant"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_table_has_even_parity() {
        // Spot values of ggml's ksigns_iq2xs.
        assert_eq!(ksign(0), 0);
        assert_eq!(ksign(1), 129);
        assert_eq!(ksign(3), 3);
        assert_eq!(ksign(7), 135);
        assert_eq!(ksign(127), 255);
        for i in 0..128u8 {
            assert_eq!(ksign(i).count_ones() % 2, 0);
        }
    }

    #[test]
    fn lattices_index_every_point_and_list_neighbours() {
        for ty in [
            GgmlType::IQ2XXS,
            GgmlType::IQ2XS,
            GgmlType::IQ2S,
            GgmlType::IQ3XXS,
            GgmlType::IQ3S,
        ] {
            let lat = lattice(ty);
            let mut l = [0i8; 8];
            for k in 0..lat.points.len() {
                lat.levels_of(k, &mut l);
                assert_eq!(
                    lat.map[lat.index(&l[..lat.dim])],
                    k as i32,
                    "{ty} point {k}"
                );
            }
            // Every index is a point or has a non-empty neighbour list.
            for u in 0..lat.map.len() {
                let m = lat.map[u];
                if m < 0 {
                    let off = (-m - 1) as usize;
                    assert!(lat.neighbours[off] > 0, "{ty} index {u}");
                }
            }
            // The all-lowest point is on every codebook (ggml relies on it).
            assert!(lat.map[0] >= 0, "{ty}");
        }
    }
}
