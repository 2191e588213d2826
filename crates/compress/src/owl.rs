//! OWL: outlier-weighted layer-wise sparsity (Yin et al. 2023, "Outlier
//! Weighed Layerwise Sparsity (OWL)", arXiv 2310.05175) — pure functions from
//! per-layer statistics to per-layer sparsities.
//!
//! # Outlier ratio
//!
//! A weight's outlier score is Wanda's importance `A_ij = |W_ij| · ‖X_j‖`,
//! where `‖X_j‖² = Σ_t x_{t,j}² = H_jj` is the diagonal of the layer-input
//! Hessian. The layer's outlier ratio ([`outlier_ratio`]) is the fraction of
//! its weights with `A_ij > M · mean(A)` (the mean over the whole layer;
//! the paper uses `M` = 3 to 10, 5 most often). The reference code pools the
//! scores of all linear layers of a transformer block under one mean and
//! gives the block one sparsity; this function works per layer, as the
//! layer-wise search does (the block-level statistic would need the scores of
//! layers of different widths under one mean).
//!
//! # Sparsities
//!
//! Layers with more outliers are pruned less. With `D_l` the ratios, `S` the
//! target and `λ` the bound ([`owl_sparsities`]):
//!
//! ```text
//! t_l = (D_l − min D) / (max D − min D)            ∈ [0, 1]
//! c_l = t̄ − t_l,   t̄ = Σ p_l t_l / Σ p_l           (p_l: parameters of layer l)
//! s_l = S + λ · c_l / max_k |c_k|
//! ```
//!
//! so that `Σ p_l s_l / Σ p_l = S` exactly (in real arithmetic; to f64
//! rounding here), every `s_l ∈ [S − λ, S + λ]`, the layer furthest from the
//! mean sits exactly on the bound, and `s` is a decreasing affine function
//! of `D`. The reference code min-max scales `D` to `[0, 2λ]` and recentres
//! with an unweighted mean, which gives a spread of exactly `2λ` but can put
//! a layer up to `2λ` from `S` and misses the target when layers differ in
//! size; the rule above keeps the paper's stated range `[S − λ, S + λ]` and the
//! parameter-weighted mean (the spread is between `λ` and `2λ`, `2λ` when the
//! ratios are symmetric about their weighted mean). If all ratios are equal
//! the result is uniform.
//!
//! [`allocate_zeros`] turns fractions into the integer zeros per row that the
//! compressors take, with a total as close to the global target as the row
//! counts allow.

/// Errors of [`owl_sparsities`] and [`allocate_zeros`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OwlError {
    /// No layers.
    #[error("OWL needs at least one layer")]
    Empty,
    /// Slices of different lengths.
    #[error("{what}: {got} values for {layers} layers")]
    LengthMismatch {
        /// Which argument.
        what: &'static str,
        /// Layers.
        layers: usize,
        /// Values given.
        got: usize,
    },
    /// Target outside `[0, 1)`.
    #[error("target sparsity {target} is outside [0, 1)")]
    BadTarget {
        /// The target.
        target: f64,
    },
    /// `λ` negative, or `[S − λ, S + λ]` not inside `[0, 1)`.
    #[error(
        "OWL bound λ = {lambda} around target {target} leaves [0, 1); use 0 ≤ λ ≤ min(S, 1 − S)"
    )]
    BadLambda {
        /// The bound.
        lambda: f64,
        /// The target.
        target: f64,
    },
    /// A non-finite or negative ratio / sparsity, or a layer with no parameters.
    #[error("layer {index}: {what}")]
    BadLayer {
        /// Layer index.
        index: usize,
        /// What is wrong.
        what: &'static str,
    },
}

/// Fraction of the weights of `w` (row-major `[rows, h_diag.len()]`) whose
/// Wanda score `|W_ij| · √H_jj` exceeds `m ×` the layer's mean score
/// (sums in f64). 0 for an all-zero layer.
///
/// # Panics
/// If `w.len()` is not a multiple of `h_diag.len()` (shape contract).
#[track_caller]
pub fn outlier_ratio(w: &[f32], h_diag: &[f64], m: f64) -> f64 {
    let n = h_diag.len();
    assert!(
        n > 0 && w.len().is_multiple_of(n),
        "w.len() = {} is not a multiple of the Hessian dimension {n}",
        w.len()
    );
    let norms: Vec<f64> = h_diag.iter().map(|&d| d.max(0.0).sqrt()).collect();
    let score = |i: usize| (w[i] as f64).abs() * norms[i % n];
    let total: f64 = (0..w.len()).map(score).sum();
    let mean = total / w.len() as f64;
    if mean == 0.0 || w.is_empty() {
        return 0.0;
    }
    let thr = m * mean;
    let count = (0..w.len()).filter(|&i| score(i) > thr).count();
    count as f64 / w.len() as f64
}

/// OWL's per-layer sparsities (see the module docs): weighted mean `target`,
/// each within `[target − lambda, target + lambda]`, lower for layers with
/// more outliers. `params[l]` is layer `l`'s parameter count.
pub fn owl_sparsities(
    ratios: &[f64],
    params: &[u64],
    target: f64,
    lambda: f64,
) -> Result<Vec<f64>, OwlError> {
    let l = ratios.len();
    if l == 0 {
        return Err(OwlError::Empty);
    }
    if params.len() != l {
        return Err(OwlError::LengthMismatch {
            what: "parameter counts",
            layers: l,
            got: params.len(),
        });
    }
    if !(target.is_finite() && (0.0..1.0).contains(&target)) {
        return Err(OwlError::BadTarget { target });
    }
    if !(lambda.is_finite() && lambda >= 0.0 && target - lambda >= 0.0 && target + lambda < 1.0) {
        return Err(OwlError::BadLambda { lambda, target });
    }
    for (i, (&d, &p)) in ratios.iter().zip(params).enumerate() {
        if !(d.is_finite() && d >= 0.0) {
            return Err(OwlError::BadLayer {
                index: i,
                what: "outlier ratio is not a finite non-negative number",
            });
        }
        if p == 0 {
            return Err(OwlError::BadLayer {
                index: i,
                what: "layer has no parameters",
            });
        }
    }
    let (lo, hi) = ratios
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &d| {
            (a.min(d), b.max(d))
        });
    if hi == lo || lambda == 0.0 {
        return Ok(vec![target; l]);
    }
    let t: Vec<f64> = ratios.iter().map(|&d| (d - lo) / (hi - lo)).collect();
    let ptot: f64 = params.iter().map(|&p| p as f64).sum();
    let tbar: f64 = t
        .iter()
        .zip(params)
        .map(|(&ti, &p)| ti * p as f64)
        .sum::<f64>()
        / ptot;
    let c: Vec<f64> = t.iter().map(|&ti| tbar - ti).collect();
    let cmax = c.iter().fold(0f64, |a, &x| a.max(x.abs()));
    let mut s: Vec<f64> = c.iter().map(|&ci| target + lambda * ci / cmax).collect();
    // Remove the f64 residue of the weighted mean (a few ulps) and clamp back
    // into the bound that the correction might nudge across.
    let resid = s
        .iter()
        .zip(params)
        .map(|(&si, &p)| si * p as f64)
        .sum::<f64>()
        / ptot
        - target;
    for si in s.iter_mut() {
        *si = (*si - resid).clamp(target - lambda, target + lambda);
    }
    Ok(s)
}

/// Integer zeros per row for layers of shape `(rows, cols)` at fractions
/// `sparsities`, with total zeros as close to `T = ⌊target · Σ rows·cols + ½⌋`
/// as the row counts allow, never above it.
///
/// Rule: `Z_l = ⌊s_l · cols_l⌋`, then, in order of decreasing remainder
/// `s_l·cols_l − Z_l` (ties: lower index), a layer gets one more zero per row
/// while its `rows_l` still fits in the deficit (and it keeps at least one
/// weight per row); the passes repeat until no layer fits. The deficit left
/// is then below the smallest row count (0 whenever the counts happen to
/// fit); a layer ends at most a few zeros per row from `s_l · cols_l` (one,
/// unless later passes were needed).
pub fn allocate_zeros(
    shapes: &[(usize, usize)],
    sparsities: &[f64],
    target: f64,
) -> Result<Vec<usize>, OwlError> {
    if shapes.is_empty() {
        return Err(OwlError::Empty);
    }
    if sparsities.len() != shapes.len() {
        return Err(OwlError::LengthMismatch {
            what: "sparsities",
            layers: shapes.len(),
            got: sparsities.len(),
        });
    }
    if !(target.is_finite() && (0.0..1.0).contains(&target)) {
        return Err(OwlError::BadTarget { target });
    }
    let mut total = 0u128;
    for (i, (&(r, c), &s)) in shapes.iter().zip(sparsities).enumerate() {
        if r == 0 || c == 0 {
            return Err(OwlError::BadLayer {
                index: i,
                what: "layer has no parameters",
            });
        }
        if !(s.is_finite() && (0.0..1.0).contains(&s)) {
            return Err(OwlError::BadLayer {
                index: i,
                what: "sparsity is outside [0, 1)",
            });
        }
        total += (r * c) as u128;
    }
    let goal = (target * total as f64 + 0.5).floor() as u128;
    let mut z: Vec<usize> = shapes
        .iter()
        .zip(sparsities)
        .map(|(&(_, c), &s)| ((s * c as f64).floor() as usize).min(c - 1))
        .collect();
    let have: u128 = z
        .iter()
        .zip(shapes)
        .map(|(&zl, &(r, _))| (zl * r) as u128)
        .sum();
    let mut deficit = goal.saturating_sub(have);
    let mut order: Vec<usize> = (0..shapes.len()).collect();
    let rem = |i: usize| sparsities[i] * shapes[i].1 as f64 - z[i] as f64;
    let rems: Vec<f64> = (0..shapes.len()).map(rem).collect();
    order.sort_by(|&a, &b| rems[b].total_cmp(&rems[a]).then(a.cmp(&b)));
    // Passes until nothing fits: in the first, each layer gets at most one
    // more zero per row; later passes only run when small layers can still
    // close the gap.
    loop {
        let before = deficit;
        for &i in &order {
            let (r, c) = shapes[i];
            if (r as u128) <= deficit && z[i] + 1 < c {
                z[i] += 1;
                deficit -= r as u128;
            }
        }
        if deficit == before {
            break;
        }
    }
    Ok(z)
}
