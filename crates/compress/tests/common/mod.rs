//! Shared test helpers: seeded data and an independent, straightforward GPTQ.
#![allow(dead_code)]
// The reference algorithms are written with explicit indices, like the math.
#![allow(clippy::needless_range_loop)]

use half::f16;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Standard normal by Box–Muller.
pub fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

pub fn normals(rng: &mut ChaCha8Rng, len: usize, sd: f64) -> Vec<f32> {
    (0..len).map(|_| (normal(rng) * sd) as f32).collect()
}

/// Activations `[t, n]` with strong correlations and uneven channel scales,
/// like LLM layer inputs: `x = (z + F Bᵀ) ⊙ s` with a rank-8 shared part and
/// per-channel scales between 0.2 and 3.
pub fn correlated_inputs(rng: &mut ChaCha8Rng, t: usize, n: usize) -> Vec<f32> {
    let r = 8;
    let b: Vec<f64> = (0..n * r).map(|_| normal(rng)).collect();
    let s: Vec<f64> = (0..n)
        .map(|_| 0.2 * 15f64.powf(rng.random::<f64>()))
        .collect();
    let mut x = vec![0f32; t * n];
    for ti in 0..t {
        let f: Vec<f64> = (0..r).map(|_| normal(rng)).collect();
        for j in 0..n {
            let shared: f64 = (0..r).map(|k| f[k] * b[j * r + k]).sum();
            x[ti * n + j] = ((normal(rng) + shared) * s[j]) as f32;
        }
    }
    x
}

/// Naive f64 `XᵀX`.
pub fn naive_xtx(x: &[f32], n: usize) -> Vec<f64> {
    let t = x.len() / n;
    let mut h = vec![0f64; n * n];
    for ti in 0..t {
        let row = &x[ti * n..(ti + 1) * n];
        for i in 0..n {
            let xi = row[i] as f64;
            for j in 0..n {
                h[i * n + j] += xi * row[j] as f64;
            }
        }
    }
    h
}

/// Naive `Σ_rows δᵀ H δ` in f64.
pub fn naive_quad(d: &[f64], h: &[f64], n: usize) -> f64 {
    let mut s = 0.0;
    for row in d.chunks(n) {
        for i in 0..n {
            for j in 0..n {
                s += row[i] * h[i * n + j] * row[j];
            }
        }
    }
    s
}

/// Lower Cholesky of a symmetric positive definite matrix (row-major), naive.
pub fn naive_cholesky(a: &[f64], n: usize) -> Vec<f64> {
    let mut l = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                assert!(s > 0.0, "reference Cholesky failed");
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    l
}

/// Inverse of an SPD matrix through its Cholesky factor (column by column solves).
pub fn naive_spd_inverse(a: &[f64], n: usize) -> Vec<f64> {
    let l = naive_cholesky(a, n);
    let mut inv = vec![0f64; n * n];
    for c in 0..n {
        // Solve L y = e_c, then Lᵀ x = y.
        let mut y = vec![0f64; n];
        for i in 0..n {
            let mut s = if i == c { 1.0 } else { 0.0 };
            for k in 0..i {
                s -= l[i * n + k] * y[k];
            }
            y[i] = s / l[i * n + i];
        }
        let mut x = vec![0f64; n];
        for i in (0..n).rev() {
            let mut s = y[i];
            for k in i + 1..n {
                s -= l[k * n + i] * x[k];
            }
            x[i] = s / l[i * n + i];
        }
        for i in 0..n {
            inv[i * n + c] = x[i];
        }
    }
    inv
}

/// The grid of the spec (crate docs of `grid`), written independently.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RefGrid {
    pub scale: f16,
    pub zero: u8,
}

pub fn ref_fit(x: &[f32], bits: u8, sym: bool) -> RefGrid {
    let maxq = ((1u32 << bits) - 1) as f32;
    let to_f16 = |s: f32| {
        let h = f16::from_f32(s);
        if h.to_f32() == 0.0 {
            if s < 0.0 {
                -f16::from_bits(1)
            } else {
                f16::from_bits(1)
            }
        } else {
            h
        }
    };
    if sym {
        let half = 1u8 << (bits - 1);
        let lo = x.iter().fold(0f32, |a, &b| a.min(b));
        let hi = x.iter().fold(0f32, |a, &b| a.max(b));
        let m = if -lo > hi { lo } else { hi };
        if m == 0.0 {
            return RefGrid {
                scale: f16::ONE,
                zero: half,
            };
        }
        RefGrid {
            scale: to_f16(-m / half as f32),
            zero: half,
        }
    } else {
        let lo = x.iter().fold(0f32, |a, &b| a.min(b));
        let hi = x.iter().fold(0f32, |a, &b| a.max(b));
        let (lo, hi) = if lo == 0.0 && hi == 0.0 {
            (-1.0, 1.0)
        } else {
            (lo, hi)
        };
        let scale = to_f16((hi - lo) / maxq);
        let zero = (-lo / scale.to_f32()).round_ties_even().clamp(0.0, maxq) as u8;
        RefGrid { scale, zero }
    }
}

/// Code for `x` and how far `x/s` is from a rounding boundary (0 = a tie).
pub fn ref_code(x: f64, g: RefGrid, bits: u8) -> (u8, f64) {
    let maxq = ((1u32 << bits) - 1) as f64;
    let s = g.scale.to_f32() as f64;
    let t = x / s;
    let tie = ((t - t.floor()) - 0.5).abs();
    let q = (t.round_ties_even() + g.zero as f64).clamp(0.0, maxq);
    (q as u8, tie)
}

pub fn ref_deq(q: u8, g: RefGrid) -> f64 {
    // The stored definition, in f32.
    (g.scale.to_f32() * (q as f32 - g.zero as f32)) as f64
}

pub struct RefResult {
    /// Codes in processing order, `[rows, n]`.
    pub codes: Vec<u8>,
    /// Distance to a rounding tie of each code decision, processing order.
    pub tie: Vec<f64>,
    /// Grid used for each processing position of each row.
    pub grid_at: Vec<RefGrid>,
    /// Processing order (position → input column).
    pub order: Vec<usize>,
    /// Dequantized weights in input order.
    pub w_hat: Vec<f32>,
}

/// Straightforward GPTQ: f64, unblocked, one column at a time, updating every
/// later column immediately; `U` from Cholesky → inverse → Cholesky as in the
/// reference implementation.
#[allow(clippy::too_many_arguments)]
pub fn reference_gptq(
    w: &[f32],
    n: usize,
    h: &[f64],
    bits: u8,
    group: usize,
    sym: bool,
    act_order: bool,
    static_groups: bool,
    damp: f64,
) -> RefResult {
    let rows = w.len() / n;
    let diag: Vec<f64> = (0..n).map(|i| h[i * n + i]).collect();
    let dead: Vec<bool> = diag.iter().map(|&d| d == 0.0).collect();
    let live = dead.iter().filter(|d| !**d).count();
    let fill = if live == 0 {
        1.0
    } else {
        diag.iter().sum::<f64>() / live as f64
    };
    let mut order: Vec<usize> = (0..n).collect();
    if act_order {
        order.sort_by(|&a, &b| diag[b].partial_cmp(&diag[a]).unwrap().then(a.cmp(&b)));
    }
    let mut hp = vec![0f64; n * n];
    for a in 0..n {
        for b in 0..n {
            let (oa, ob) = (order[a], order[b]);
            hp[a * n + b] = if dead[oa] || dead[ob] {
                if oa == ob { fill } else { 0.0 }
            } else {
                h[oa * n + ob]
            };
        }
    }
    let mean = (0..n).map(|k| hp[k * n + k]).sum::<f64>() / n as f64;
    for k in 0..n {
        hp[k * n + k] += damp * mean;
    }
    let hinv = naive_spd_inverse(&hp, n);
    let l = naive_cholesky(&hinv, n); // Hinv = L Lᵀ = Uᵀ U, U = Lᵀ
    let u = |i: usize, j: usize| l[j * n + i];

    let gl = if group == 0 || group >= n { n } else { group };
    let ng = n.div_ceil(gl);
    let dynamic = !static_groups && ng > 1;
    let mut codes = vec![0u8; rows * n];
    let mut tie = vec![0f64; rows * n];
    let mut grid_at = vec![
        RefGrid {
            scale: f16::ONE,
            zero: 0
        };
        rows * n
    ];
    let mut w_hat = vec![0f32; rows * n];
    for r in 0..rows {
        let orig: Vec<f32> = (0..n)
            .map(|c| if dead[c] { 0.0 } else { w[r * n + c] })
            .collect();
        let static_grids: Vec<RefGrid> = orig.chunks(gl).map(|xs| ref_fit(xs, bits, sym)).collect();
        let mut x: Vec<f64> = (0..n).map(|k| orig[order[k]] as f64).collect();
        let mut cur = static_grids[0];
        for k in 0..n {
            let g = if dynamic {
                if k % gl == 0 {
                    let xs: Vec<f32> = x[k..(k + gl).min(n)].iter().map(|&v| v as f32).collect();
                    cur = ref_fit(&xs, bits, sym);
                }
                cur
            } else {
                static_grids[order[k] / gl]
            };
            // Our sweep runs in f32: quantize the value as f32 like it does.
            let (q, t) = ref_code(x[k] as f32 as f64, g, bits);
            codes[r * n + k] = q;
            tie[r * n + k] = t;
            grid_at[r * n + k] = g;
            let deq = ref_deq(q, g);
            w_hat[r * n + order[k]] = deq as f32;
            let e = (x[k] - deq) / u(k, k);
            for j in k + 1..n {
                x[j] -= e * u(k, j);
            }
        }
    }
    RefResult {
        codes,
        tie,
        grid_at,
        order,
        w_hat,
    }
}

/// A layer `rows × n` with N(0, 0.05²) weights and the Hessian of `tokens`
/// correlated inputs, the `dead` input columns always zero.
pub struct Layer {
    pub w: Vec<f32>,
    pub h: dynapress_compress::Hessian,
    pub n: usize,
}

/// See [`Layer`].
pub fn layer(seed: u64, rows: usize, n: usize, tokens: usize, dead: &[usize]) -> Layer {
    let mut r = rng(seed);
    let mut x = correlated_inputs(&mut r, tokens, n);
    for t in 0..tokens {
        for &d in dead {
            x[t * n + d] = 0.0;
        }
    }
    let mut h = dynapress_compress::Hessian::new(n);
    h.add_batch(&x).unwrap();
    let w = normals(&mut r, rows * n, 0.05);
    Layer { w, h, n }
}
