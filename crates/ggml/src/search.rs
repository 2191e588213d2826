//! The scale searches that ggml's encoders run on one group of weights.
//!
//! Each function re-derives, in plain Rust, one of ggml's helpers in
//! `ggml-quants.c` (named in its doc comment) with the same f32 operations in
//! the same order, since bit-exactness depends on every rounding. All of them
//! fill `codes` with the levels they chose and report the rounding rule that
//! produced those levels, so callers can round other values the same way.
//!
//! Notation: `x` the group's weights, `w` per-weight importance, `L` levels.

// Index loops mirror ggml's reference loops, which keeps the order of the f32
// operations (and so bit-exactness) easy to audit.
#![allow(clippy::needless_range_loop)]

use crate::float::{c_max, nearest_int};

/// Weights below this magnitude count as an all-zero group (`GROUP_MAX_EPS`).
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// Result of a symmetric fit `x ≈ scale · l`, `l ∈ [-nmax, nmax-1]`, codes `l + nmax`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SymFit {
    /// Least-squares scale (what the encoder stores, before f16 rounding).
    pub scale: f32,
    /// Multiplier the chosen codes were rounded with: `l = nearest_int(mul · x)`;
    /// `None` when the group was all zero and every code is 0.
    pub mul: Option<f32>,
}

/// Symmetric search with weighted least squares (ggml's `make_qx_quants`,
/// `rmse_type = 1`). Start from `mul = -nmax / x_max` (x_max: the signed weight
/// of largest magnitude), round, fit `scale = Σ w x l / Σ w l²`; then try the 18
/// multipliers `-(nmax + 0.1 k) / x_max` (k = ±1..±9) and keep one whenever
/// it raises `(Σ w x l)² / Σ w l²`, i.e. lowers the weighted squared error of
/// the refitted scale. `w = weights[i]`, or `x²` when `weights` is `None`.
pub(crate) fn sym_search(
    x: &[f32],
    nmax: i32,
    weights: Option<&[f32]>,
    codes: &mut [u8],
) -> SymFit {
    let n = x.len();
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let a = v.abs();
        if a > amax {
            amax = a;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        codes[..n].fill(0);
        return SymFit {
            scale: 0.0,
            mul: None,
        };
    }
    let weight = |i: usize| match weights {
        Some(w) => w[i],
        None => x[i] * x[i],
    };
    let nmax_f = nmax as f32;
    let level = |mul: f32, v: f32| nearest_int(mul * v).clamp(-nmax, nmax - 1);

    let mut mul = -nmax_f / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for i in 0..n {
        let l = level(mul, x[i]);
        codes[i] = (l + nmax) as u8;
        let w = weight(i);
        let lf = l as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for k in -9..=9 {
        if k == 0 {
            continue;
        }
        let trial = -(nmax_f + 0.1 * k as f32) / max;
        let (mut slx, mut sl2) = (0.0f32, 0.0f32);
        for i in 0..n {
            let lf = level(trial, x[i]) as f32;
            let w = weight(i);
            slx += w * x[i] * lf;
            sl2 += w * lf * lf;
        }
        if sl2 > 0.0 && slx * slx > best * sl2 {
            for i in 0..n {
                codes[i] = (level(trial, x[i]) + nmax) as u8;
            }
            mul = trial;
            scale = slx / sl2;
            best = scale * slx;
        }
    }
    SymFit {
        scale,
        mul: Some(mul),
    }
}

/// Symmetric search refined by coordinate descent (ggml's `make_q3_quants`
/// with `do_rmse`, used by Q3_K without an importance vector). Round with
/// `-nmax / x_max`, then up to five sweeps: for each weight, move its level to
/// the one that is optimal given all others (weights `x²`), keeping the move only
/// if it raises `(Σ w x l)² / Σ w l²`. Returns the least-squares scale; the codes
/// (`l + nmax`) are not a per-weight rounding rule, so callers keep them as-is.
pub(crate) fn sym_descent(x: &[f32], nmax: i32, codes: &mut [u8]) -> f32 {
    let n = x.len();
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let a = v.abs();
        if a > amax {
            amax = a;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        codes[..n].fill(0);
        return 0.0;
    }
    let mul = -(nmax as f32) / max;
    let mut l = [0i32; 32];
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for i in 0..n {
        l[i] = nearest_int(mul * x[i]).clamp(-nmax, nmax - 1);
        let w = x[i] * x[i];
        let lf = l[i] as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    for _ in 0..5 {
        let mut changed = false;
        for i in 0..n {
            let w = x[i] * x[i];
            let li = l[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != l[i] {
                    let nl = new_l as f32;
                    slx += w * x[i] * nl;
                    sl2 += w * nl * nl;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    for i in 0..n {
        codes[i] = (l[i] + nmax) as u8;
    }
    if suml2 > 0.0 { sumlx / suml2 } else { 0.0 }
}

/// Result of an affine fit `x ≈ scale · l - min_neg`, `l ∈ [0, nmax]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AffineFit {
    /// Scale (before f16 rounding).
    pub scale: f32,
    /// The offset as ggml reports it: `-min` (so ≥ 0 when the fit's min ≤ 0).
    pub neg_min: f32,
    /// The rule the chosen codes were rounded with,
    /// `l = clamp(nearest_int(mul · (x - offset)), 0, nmax)`; `None` when every
    /// code is 0 (degenerate group).
    pub rule: Option<(f32, f32)>,
}

/// Which of ggml's two affine searches to mirror (they differ in one test).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AffineKind {
    /// `make_qkx2_quants`: degenerate when `max == min`.
    Qkx2,
    /// `make_qkx3_quants`: degenerate when `max <= min`.
    Qkx3,
}

/// Parameters of one affine search.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AffineSearch {
    pub kind: AffineKind,
    pub nmax: i32,
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
    /// Minimise Σ w |err| instead of Σ w err².
    pub use_mad: bool,
}

/// Affine search with a min (ggml's `make_qkx2_quants` / `make_qkx3_quants`).
///
/// With `min = min(0, min x)` and `max = max x`, round `(x - min) · nmax / (max - min)`
/// and score the reconstruction error. Then for `k = 0..=nstep` try the
/// multiplier `(rmin + rdelta·k + nmax) / (max - min)`, round, and solve the
/// weighted 2×2 least-squares problem for `(scale, min)`
/// (`D = Σw Σwl² - (Σwl)²`; when the fitted min would be positive, it is
/// pinned to 0 and the scale refitted). A trial replaces the current solution
/// when its error is smaller; later trials then round relative to the new min.
pub(crate) fn affine_search(x: &[f32], w: &[f32], p: AffineSearch, codes: &mut [u8]) -> AffineFit {
    let n = x.len();
    let nmax = p.nmax;
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = w[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    let degenerate = match p.kind {
        AffineKind::Qkx2 => max == min,
        AffineKind::Qkx3 => max <= min,
    };
    if degenerate {
        codes[..n].fill(0);
        return AffineFit {
            scale: 0.0,
            neg_min: -min,
            rule: None,
        };
    }
    let err = |d: f32| if p.use_mad { d.abs() } else { d * d };

    let mut mul = nmax as f32 / (max - min);
    let mut scale = 1.0 / mul;
    let mut rule = (mul, min);
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(mul * (x[i] - min)).clamp(0, nmax);
        codes[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += w[i] * err(diff);
    }
    if p.nstep < 1 {
        return AffineFit {
            scale,
            neg_min: -min,
            rule: Some(rule),
        };
    }
    let mut aux = [0u8; 32];
    for k in 0..=p.nstep {
        mul = (p.rmin + p.rdelta * k as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = nearest_int(mul * (x[i] - min)).clamp(0, nmax);
            aux[i] = l as u8;
            let lf = l as f32;
            sum_l += w[i] * lf;
            sum_l2 += w[i] * lf * lf;
            sum_xl += w[i] * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * aux[i] as f32 + this_min - x[i];
                cur_error += w[i] * err(diff);
            }
            if cur_error < best_error {
                codes[..n].copy_from_slice(&aux[..n]);
                best_error = cur_error;
                rule = (mul, min);
                scale = this_scale;
                min = this_min;
            }
        }
    }
    AffineFit {
        scale,
        neg_min: -min,
        rule: Some(rule),
    }
}

/// Quantizes a group's non-negative sub-block scales (or mins) to `0..=nmax`
/// against one super-block scale, with importance `w` (ggml's `make_qp_quants`).
///
/// Start from `nmax / max`, try `(nmax + 0.1 k) / max` for k = ±1..±4 by
/// weighted squared error, round, then up to five coordinate-descent sweeps
/// as in [`sym_descent`]. Levels are stored as bytes exactly as ggml's `uint8_t`
/// array holds them (a negative level would wrap; real scales are ≥ 0).
pub(crate) fn scale_search(x: &[f32], nmax: i32, w: &[f32], codes: &mut [u8]) -> f32 {
    let n = x.len();
    let mut max = 0.0f32;
    for &v in x {
        max = c_max(max, v);
    }
    if max < GROUP_MAX_EPS {
        codes[..n].fill(0);
        return 0.0;
    }
    let nmax_f = nmax as f32;
    let mut mul = nmax_f / max;
    for i in 0..n {
        codes[i] = nearest_int(mul * x[i]) as u8;
    }
    let scale = 1.0 / mul;
    let mut best_mse = 0.0f32;
    for i in 0..n {
        let diff = x[i] - scale * codes[i] as f32;
        best_mse += w[i] * diff * diff;
    }
    for k in -4..=4 {
        if k == 0 {
            continue;
        }
        let trial = (0.1 * k as f32 + nmax_f) / max;
        let trial_scale = 1.0 / trial;
        let mut mse = 0.0f32;
        for i in 0..n {
            let l = nearest_int(trial * x[i]).min(nmax);
            let diff = x[i] - trial_scale * l as f32;
            mse += w[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            mul = trial;
        }
    }
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for i in 0..n {
        let l = nearest_int(mul * x[i]).min(nmax);
        codes[i] = l as u8;
        let lf = l as f32;
        sumlx += w[i] * x[i] * lf;
        suml2 += w[i] * lf * lf;
    }
    for _ in 0..5 {
        let mut changed = false;
        for i in 0..n {
            let li = codes[i] as f32;
            let mut slx = sumlx - w[i] * x[i] * li;
            let mut sl2 = suml2 - w[i] * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != codes[i] as i32 {
                    let nl = new_l as f32;
                    slx += w[i] * x[i] * nl;
                    sl2 += w[i] * nl * nl;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        codes[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    if suml2 > 0.0 { sumlx / suml2 } else { 0.0 }
}

/// [`affine_search`] on `L` independent groups at once (`x`, `w`, `codes`:
/// `L` consecutive groups of `n` values), with the same f32 operations in the
/// same order per group. Interleaving the groups' serial sums lets the CPU
/// overlap them (and the compiler vectorize across groups); the results are
/// bit-identical to `L` calls of [`affine_search`] (tested).
pub(crate) fn affine_search_lanes<const L: usize>(
    x: &[f32],
    w: &[f32],
    n: usize,
    p: AffineSearch,
    codes: &mut [u8],
) -> [AffineFit; L] {
    debug_assert!(n <= 32 && x.len() == L * n && w.len() == L * n && codes.len() >= L * n);
    let nmax = p.nmax;
    let mut xt = [[0.0f32; L]; 32];
    let mut wt = [[0.0f32; L]; 32];
    for l in 0..L {
        for i in 0..n {
            xt[i][l] = x[l * n + i];
            wt[i][l] = w[l * n + i];
        }
    }
    let mut min = xt[0];
    let mut max = xt[0];
    let mut sum_w = wt[0];
    let mut sum_x = [0.0f32; L];
    for l in 0..L {
        sum_x[l] = sum_w[l] * xt[0][l];
    }
    for i in 1..n {
        for l in 0..L {
            let v = xt[i][l];
            if v < min[l] {
                min[l] = v;
            }
            if v > max[l] {
                max[l] = v;
            }
            sum_w[l] += wt[i][l];
            sum_x[l] += wt[i][l] * v;
        }
    }
    let mut degenerate = [false; L];
    for l in 0..L {
        if min[l] > 0.0 {
            min[l] = 0.0;
        }
        degenerate[l] = match p.kind {
            AffineKind::Qkx2 => max[l] == min[l],
            AffineKind::Qkx3 => max[l] <= min[l],
        };
    }
    let mad = p.use_mad;
    let nmax_f = nmax as f32;

    let mut range = [0.0f32; L];
    let mut mul = [0.0f32; L];
    let mut scale = [0.0f32; L];
    let mut rule = [(0.0f32, 0.0f32); L];
    for l in 0..L {
        range[l] = max[l] - min[l];
        mul[l] = nmax_f / range[l];
        scale[l] = 1.0 / mul[l];
        rule[l] = (mul[l], min[l]);
    }
    let mut lt = [[0u8; L]; 32];
    let mut best_error = [0.0f32; L];
    for i in 0..n {
        for l in 0..L {
            let q = nearest_int(mul[l] * (xt[i][l] - min[l])).clamp(0, nmax);
            lt[i][l] = q as u8;
            let diff = scale[l] * q as f32 + min[l] - xt[i][l];
            let e = if mad { diff.abs() } else { diff * diff };
            best_error[l] += wt[i][l] * e;
        }
    }
    if p.nstep >= 1 {
        let mut aux = [[0u8; L]; 32];
        for k in 0..=p.nstep {
            let top = p.rmin + p.rdelta * k as f32 + nmax_f;
            for l in 0..L {
                mul[l] = top / range[l];
            }
            let mut sum_l = [0.0f32; L];
            let mut sum_l2 = [0.0f32; L];
            let mut sum_xl = [0.0f32; L];
            for i in 0..n {
                for l in 0..L {
                    let q = nearest_int(mul[l] * (xt[i][l] - min[l])).clamp(0, nmax);
                    aux[i][l] = q as u8;
                    let qf = q as f32;
                    let wq = wt[i][l] * qf;
                    sum_l[l] += wq;
                    sum_l2[l] += wq * qf;
                    sum_xl[l] += wq * xt[i][l];
                }
            }
            let mut this_scale = [0.0f32; L];
            let mut this_min = [0.0f32; L];
            let mut ok = [false; L];
            for l in 0..L {
                let d = sum_w[l] * sum_l2[l] - sum_l[l] * sum_l[l];
                ok[l] = d > 0.0;
                this_scale[l] = (sum_w[l] * sum_xl[l] - sum_x[l] * sum_l[l]) / d;
                this_min[l] = (sum_l2[l] * sum_x[l] - sum_l[l] * sum_xl[l]) / d;
                if this_min[l] > 0.0 {
                    this_min[l] = 0.0;
                    this_scale[l] = sum_xl[l] / sum_l2[l];
                }
            }
            let mut cur_error = [0.0f32; L];
            for i in 0..n {
                for l in 0..L {
                    let diff = this_scale[l] * aux[i][l] as f32 + this_min[l] - xt[i][l];
                    let e = if mad { diff.abs() } else { diff * diff };
                    cur_error[l] += wt[i][l] * e;
                }
            }
            for l in 0..L {
                if ok[l] && !degenerate[l] && cur_error[l] < best_error[l] {
                    for i in 0..n {
                        lt[i][l] = aux[i][l];
                    }
                    best_error[l] = cur_error[l];
                    rule[l] = (mul[l], min[l]);
                    scale[l] = this_scale[l];
                    min[l] = this_min[l];
                    range[l] = max[l] - min[l];
                }
            }
        }
    }
    let mut out = [AffineFit {
        scale: 0.0,
        neg_min: 0.0,
        rule: None,
    }; L];
    for l in 0..L {
        if degenerate[l] {
            codes[l * n..(l + 1) * n].fill(0);
            out[l] = AffineFit {
                scale: 0.0,
                neg_min: -min[l],
                rule: None,
            };
        } else {
            for i in 0..n {
                codes[l * n + i] = lt[i][l];
            }
            out[l] = AffineFit {
                scale: scale[l],
                neg_min: -min[l],
                rule: Some(rule[l]),
            };
        }
    }
    out
}

/// [`sym_search`] on `L` independent groups at once (see
/// [`affine_search_lanes`]); bit-identical to `L` calls (tested).
pub(crate) fn sym_search_lanes<const L: usize>(
    x: &[f32],
    n: usize,
    nmax: i32,
    weights: Option<&[f32]>,
    codes: &mut [u8],
) -> [SymFit; L] {
    debug_assert!(n <= 32 && x.len() == L * n && codes.len() >= L * n);
    let mut xt = [[0.0f32; L]; 32];
    let mut wt = [[0.0f32; L]; 32];
    for l in 0..L {
        for i in 0..n {
            let v = x[l * n + i];
            xt[i][l] = v;
            wt[i][l] = match weights {
                Some(w) => w[l * n + i],
                None => v * v,
            };
        }
    }
    let mut max = [0.0f32; L];
    let mut amax = [0.0f32; L];
    for i in 0..n {
        for l in 0..L {
            let a = xt[i][l].abs();
            if a > amax[l] {
                amax[l] = a;
                max[l] = xt[i][l];
            }
        }
    }
    let nmax_f = nmax as f32;
    let mut mul = [0.0f32; L];
    for l in 0..L {
        mul[l] = -nmax_f / max[l];
    }
    let mut lt = [[0u8; L]; 32];
    let mut sumlx = [0.0f32; L];
    let mut suml2 = [0.0f32; L];
    for i in 0..n {
        for l in 0..L {
            let q = nearest_int(mul[l] * xt[i][l]).clamp(-nmax, nmax - 1);
            lt[i][l] = (q + nmax) as u8;
            let qf = q as f32;
            sumlx[l] += wt[i][l] * xt[i][l] * qf;
            suml2[l] += wt[i][l] * qf * qf;
        }
    }
    let mut scale = [0.0f32; L];
    let mut best = [0.0f32; L];
    for l in 0..L {
        scale[l] = if suml2[l] != 0.0 {
            sumlx[l] / suml2[l]
        } else {
            0.0
        };
        best[l] = scale[l] * sumlx[l];
    }
    for k in -9..=9 {
        if k == 0 {
            continue;
        }
        let top = nmax_f + 0.1 * k as f32;
        let mut trial = [0.0f32; L];
        for l in 0..L {
            trial[l] = -top / max[l];
        }
        let mut slx = [0.0f32; L];
        let mut sl2 = [0.0f32; L];
        let mut tq = [[0u8; L]; 32];
        for i in 0..n {
            for l in 0..L {
                let q = nearest_int(trial[l] * xt[i][l]).clamp(-nmax, nmax - 1);
                tq[i][l] = (q + nmax) as u8;
                let qf = q as f32;
                slx[l] += wt[i][l] * xt[i][l] * qf;
                sl2[l] += wt[i][l] * qf * qf;
            }
        }
        for l in 0..L {
            if sl2[l] > 0.0 && slx[l] * slx[l] > best[l] * sl2[l] {
                for i in 0..n {
                    lt[i][l] = tq[i][l];
                }
                mul[l] = trial[l];
                scale[l] = slx[l] / sl2[l];
                best[l] = scale[l] * slx[l];
            }
        }
    }
    let mut out = [SymFit {
        scale: 0.0,
        mul: None,
    }; L];
    for l in 0..L {
        if amax[l] < GROUP_MAX_EPS {
            codes[l * n..(l + 1) * n].fill(0);
        } else {
            for i in 0..n {
                codes[l * n + i] = lt[i][l];
            }
            out[l] = SymFit {
                scale: scale[l],
                mul: Some(mul[l]),
            };
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random values with assorted scales, zeros and ties.
    fn values(seed: u32, n: usize) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                let u = (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
                let group = i / 16;
                match (seed as usize + group) % 7 {
                    0 => 0.0,
                    1 => (u * 16.0).round() / 8.0,
                    2 => u.abs() + 0.1,
                    3 => -u.abs(),
                    4 => u * 1e-7,
                    5 => 0.3,
                    _ => u * 0.05,
                }
            })
            .collect()
    }

    #[test]
    fn lane_searches_equal_scalar_searches() {
        for seed in 0..200u32 {
            for (n, nmax, kind, rmin, rdelta, nstep, mad) in [
                (32usize, 15, AffineKind::Qkx2, -1.0f32, 0.1f32, 20, false),
                (32, 31, AffineKind::Qkx3, -0.9, 0.05, 36, false),
                (16, 3, AffineKind::Qkx2, -0.5, 0.1, 15, true),
                (16, 3, AffineKind::Qkx3, -0.9, 0.05, 36, false),
            ] {
                let x = values(seed, 8 * n);
                let w: Vec<f32> = x
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v.abs() + (i % 5) as f32 * 0.01 * (seed % 3) as f32)
                    .collect();
                let p = AffineSearch {
                    kind,
                    nmax,
                    rmin,
                    rdelta,
                    nstep,
                    use_mad: mad,
                };
                let mut lane_codes = vec![0u8; 8 * n];
                let fits = affine_search_lanes::<8>(&x, &w, n, p, &mut lane_codes);
                for l in 0..8 {
                    let mut c = vec![0u8; n];
                    let f =
                        affine_search(&x[l * n..(l + 1) * n], &w[l * n..(l + 1) * n], p, &mut c);
                    assert_eq!(c, &lane_codes[l * n..(l + 1) * n], "seed {seed} lane {l}");
                    assert_eq!(f.scale.to_bits(), fits[l].scale.to_bits());
                    assert_eq!(f.neg_min.to_bits(), fits[l].neg_min.to_bits());
                    assert_eq!(
                        f.rule.map(|(a, b)| (a.to_bits(), b.to_bits())),
                        fits[l].rule.map(|(a, b)| (a.to_bits(), b.to_bits()))
                    );
                }
            }
            for (n, nmax, weighted) in [
                (16usize, 32, false),
                (16, 32, true),
                (16, 4, true),
                (32, 8, true),
            ] {
                let x = values(seed + 7, 8 * n);
                let w: Vec<f32> = x
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (i % 9) as f32 * 0.3 + v * v)
                    .collect();
                let wopt = weighted.then_some(&w[..]);
                let mut lane_codes = vec![0u8; 8 * n];
                let fits = sym_search_lanes::<8>(&x, n, nmax, wopt, &mut lane_codes);
                for l in 0..8 {
                    let mut c = vec![0u8; n];
                    let f = sym_search(
                        &x[l * n..(l + 1) * n],
                        nmax,
                        wopt.map(|w| &w[l * n..(l + 1) * n]),
                        &mut c,
                    );
                    assert_eq!(c, &lane_codes[l * n..(l + 1) * n], "seed {seed} lane {l}");
                    assert_eq!(f.scale.to_bits(), fits[l].scale.to_bits());
                    assert_eq!(f.mul.map(f32::to_bits), fits[l].mul.map(f32::to_bits));
                }
            }
        }
    }
}
