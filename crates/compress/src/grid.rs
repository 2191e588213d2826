//! The quantization grid: schemes, per-group fitting and the scalar quantizer.
//!
//! A row of `cols` weights is cut into groups of `g` consecutive input columns
//! (the last group may be shorter; `g = 0` means one group per row). Each group
//! has its own grid:
//!
//! * **asymmetric** (`sym = false`): a scale `s` (stored as f16) and an integer
//!   zero point `z ∈ [0, 2^b − 1]` (stored with `b` bits). Fitting follows
//!   min-max: `lo = min(0, min x)`, `hi = max(0, max x)`, `s = (hi − lo)/(2^b − 1)`,
//!   `z = round(−lo / s)`.
//! * **symmetric** (`sym = true`): only a scale is stored; the zero point is the
//!   fixed `2^(b−1)`. Let `m` be the element of largest magnitude, *with its
//!   sign* (the maximum if `|min| = max`); `s = −m / 2^(b−1)`, so `m` itself is exactly the code `0` and the
//!   other side reaches `(2^(b−1) − 1)·|s|` (the ggml `Q4_0` convention; the
//!   scale may be negative).
//!
//! Codes are `q = clamp(round_half_even(x / s) + z, 0, 2^b − 1)` and the
//! dequantized value is, by definition, `ŵ = f32(s_f16) · (q − z)` evaluated in
//! f32. The scale is rounded to f16 *before* the zero point and the codes are
//! computed, and every consumer (RTN, GPTQ's error feedback, [`dequantize`])
//! uses that stored f16 value, so the codes dequantize exactly to what is
//! stored. f16 handling: a scale that overflows f16 (`|s| > 65504`, weights of
//! magnitude ≳ 10⁶) is an error; a scale that underflows to zero is replaced by
//! the smallest f16 subnormal `2^−24` with the same sign; an all-zero group gets
//! the grid of the range `[−1, 1]` (asymmetric) or scale 1 (symmetric), which
//! represents 0 exactly.
//!
//! Optional clipping search (as the `mse` option of the GPTQ reference): try
//! the shrunk ranges `p·[lo, hi]` (or `p·m`) for `p = 1 − i/grid`,
//! `i = 0 … ⌊max_shrink·grid⌋ − 1`, and keep the grid with the smallest
//! `Σ |ŵ − x|^norm` (`norm = 2`: MSE-optimal clipping).
//!
//! [`dequantize`]: crate::QuantizedLinear::dequantize

use half::f16;
use serde::{Deserialize, Serialize};

use crate::QuantError;

/// Bit width and grouping of a quantized linear layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct QuantScheme {
    /// Bits per code, 2 to 8.
    pub bits: u8,
    /// Group size along the input dimension; 0 (or ≥ `cols`) = one group per row.
    pub group_size: usize,
    /// Symmetric grid (scale only) instead of asymmetric (scale + zero point).
    pub sym: bool,
}

impl Default for QuantScheme {
    /// 4 bits, groups of 128, asymmetric.
    fn default() -> Self {
        Self {
            bits: 4,
            group_size: 128,
            sym: false,
        }
    }
}

impl QuantScheme {
    /// A scheme with `bits`, group size `group_size` (0 = whole row), asymmetric.
    pub fn new(bits: u8, group_size: usize) -> Self {
        Self {
            bits,
            group_size,
            sym: false,
        }
    }

    /// Checks the bit width (2 to 8).
    pub fn validate(&self) -> Result<(), QuantError> {
        if (2..=8).contains(&self.bits) {
            Ok(())
        } else {
            Err(QuantError::UnsupportedBits { bits: self.bits })
        }
    }

    /// Largest code, `2^bits − 1`.
    #[inline]
    pub fn maxq(&self) -> u8 {
        ((1u16 << self.bits) - 1) as u8
    }

    /// Effective group length for rows of `cols` weights.
    #[inline]
    pub fn group_len(&self, cols: usize) -> usize {
        if self.group_size == 0 || self.group_size >= cols {
            cols.max(1)
        } else {
            self.group_size
        }
    }

    /// Number of groups per row of `cols` weights (the last one may be short).
    #[inline]
    pub fn groups_per_row(&self, cols: usize) -> usize {
        cols.div_ceil(self.group_len(cols))
    }

    /// Bits stored per zero point: `bits` if asymmetric, 0 if symmetric.
    #[inline]
    pub fn zero_bits(&self) -> u32 {
        if self.sym { 0 } else { self.bits as u32 }
    }

    /// The fixed zero point of the symmetric grid, `2^(bits−1)`.
    #[inline]
    pub fn sym_zero(&self) -> u8 {
        1u8 << (self.bits - 1)
    }

    /// Nominal bits per weight for rows of `cols` weights without a permutation:
    /// `bits + (16 + zero_bits) · groups_per_row / cols`
    /// (e.g. 4-bit, g128, asymmetric: `4 + 20/128`).
    pub fn nominal_bits_per_weight(&self, cols: usize) -> f64 {
        self.bits as f64
            + (16 + self.zero_bits()) as f64 * self.groups_per_row(cols) as f64 / cols as f64
    }
}

/// MSE-optimal clipping search over shrunk ranges (the GPTQ reference's `mse`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClipSearch {
    /// Shrink step is `1/grid`.
    pub grid: u32,
    /// Largest shrink tried, as a fraction (0.8: down to `p = 0.21`).
    pub max_shrink: f32,
    /// Exponent of the error norm (2 = squared error).
    pub norm: f32,
}

impl Default for ClipSearch {
    /// `grid = 100`, `max_shrink = 0.8`, `norm = 2` (squared error).
    fn default() -> Self {
        Self {
            grid: 100,
            max_shrink: 0.8,
            norm: 2.0,
        }
    }
}

/// The grid of one group: an f16 scale and an integer zero point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupGrid {
    /// Scale as stored.
    pub scale: f16,
    /// Zero point (for symmetric schemes the fixed `2^(bits−1)`).
    pub zero: u8,
}

impl GroupGrid {
    /// Dequantizes one code: `f32(scale) · (q − zero)`.
    #[inline]
    pub fn dequantize(&self, q: u8) -> f32 {
        self.scale.to_f32() * (q as f32 - self.zero as f32)
    }

    /// Quantizes one value onto this grid with the largest code `maxq`.
    #[inline]
    pub fn quantize(&self, x: f32, maxq: u8) -> u8 {
        Grid32::new(*self, maxq).code(x) as u8
    }
}

/// The grid in f32 form for the inner loops.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Grid32 {
    pub s: f32,
    pub z: f32,
    pub maxq: f32,
}

impl Grid32 {
    #[inline]
    pub fn new(g: GroupGrid, maxq: u8) -> Self {
        Self {
            s: g.scale.to_f32(),
            z: g.zero as f32,
            maxq: maxq as f32,
        }
    }

    /// The code as an f32 integer in `[0, maxq]`.
    #[inline]
    pub fn code(&self, x: f32) -> f32 {
        ((x / self.s).round_ties_even() + self.z).clamp(0.0, self.maxq)
    }

    /// Dequantized value of a code given as f32.
    #[inline]
    pub fn deq(&self, q: f32) -> f32 {
        self.s * (q - self.z)
    }
}

const F16_MIN_SUBNORMAL: f16 = f16::from_bits(1);

/// Rounds a scale to f16; `Err(scale)` on overflow. Underflow keeps the sign
/// and becomes the smallest subnormal so that division stays finite.
#[inline]
fn scale_to_f16(s: f32) -> Result<f16, f32> {
    let h = f16::from_f32(s);
    if !h.is_finite() {
        return Err(s);
    }
    if h.to_f32() == 0.0 {
        return Ok(if s < 0.0 {
            -F16_MIN_SUBNORMAL
        } else {
            F16_MIN_SUBNORMAL
        });
    }
    Ok(h)
}

/// Grid for the shrink factor `p` given the group's range `[lo, hi]`
/// (`lo ≤ 0 ≤ hi`).
#[inline]
fn grid_for(lo: f32, hi: f32, p: f32, scheme: &QuantScheme) -> Result<GroupGrid, f32> {
    let maxq = scheme.maxq();
    if scheme.sym {
        let zero = scheme.sym_zero();
        // The element of largest magnitude is the minimum or the maximum;
        // on a tie the maximum.
        let m = if -lo > hi { lo } else { hi };
        if m == 0.0 {
            return Ok(GroupGrid {
                scale: f16::ONE,
                zero,
            });
        }
        let d = -(m * p) / zero as f32;
        Ok(GroupGrid {
            scale: scale_to_f16(d)?,
            zero,
        })
    } else {
        let (lo, hi) = if lo == 0.0 && hi == 0.0 {
            (-1.0, 1.0)
        } else {
            (lo * p, hi * p)
        };
        let scale = scale_to_f16((hi - lo) / maxq as f32)?;
        let zero = (-lo / scale.to_f32())
            .round_ties_even()
            .clamp(0.0, maxq as f32) as u8;
        Ok(GroupGrid { scale, zero })
    }
}

/// `(min(0, min x), max(0, max x))`.
#[inline]
pub(crate) fn range(x: &[f32]) -> (f32, f32) {
    x.iter()
        .fold((0.0f32, 0.0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// The min-max grid (no clipping search) of a group with range `[lo, hi]`,
/// `lo = min(0, min x)`, `hi = max(0, max x)`. `Err(scale)` on f16 overflow.
#[inline]
pub(crate) fn grid_from_range(lo: f32, hi: f32, scheme: &QuantScheme) -> Result<GroupGrid, f32> {
    grid_for(lo, hi, 1.0, scheme)
}

/// Fits the grid of one group of (finite) weights.
///
/// Returns `Err(scale)` when the scale overflows f16.
pub fn fit_group(
    x: &[f32],
    scheme: &QuantScheme,
    clip: Option<&ClipSearch>,
) -> Result<GroupGrid, f32> {
    let (lo, hi) = range(x);
    let full = grid_for(lo, hi, 1.0, scheme)?;
    let Some(clip) = clip else {
        return Ok(full);
    };
    let maxq = scheme.maxq();
    let err_of = |g: GroupGrid| -> f32 {
        let g32 = Grid32::new(g, maxq);
        if clip.norm == 2.0 {
            x.iter()
                .map(|&v| {
                    let e = g32.deq(g32.code(v)) - v;
                    e * e
                })
                .sum()
        } else {
            x.iter()
                .map(|&v| (g32.deq(g32.code(v)) - v).abs().powf(clip.norm))
                .sum()
        }
    };
    let mut best = full;
    let mut best_err = err_of(full);
    let steps = ((clip.max_shrink * clip.grid as f32) as u32).max(1);
    for i in 1..steps {
        let p = 1.0 - i as f32 / clip.grid as f32;
        // A shrunk range only makes the scale smaller: cannot overflow.
        let g = grid_for(lo, hi, p, scheme)?;
        let e = err_of(g);
        if e < best_err {
            best_err = e;
            best = g;
        }
    }
    Ok(best)
}

/// Checks that every weight is finite; `w` is row-major with `cols` columns.
pub(crate) fn check_finite(w: &[f32], cols: usize) -> Result<(), QuantError> {
    match w.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(QuantError::NonFiniteWeight {
            row: i / cols,
            col: i % cols,
            value: w[i],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asym_grid_covers_range_and_zero() {
        let scheme = QuantScheme::new(4, 0);
        let x = [-0.7f32, 0.1, 0.3, 1.9, -0.2];
        let g = fit_group(&x, &scheme, None).unwrap();
        assert!(g.zero <= 15);
        // 0 is exactly representable: code == zero.
        assert_eq!(g.quantize(0.0, 15), g.zero);
        assert_eq!(g.dequantize(g.zero), 0.0);
        // Extremes land within half a step of their grid points.
        let s = g.scale.to_f32();
        for &v in &x {
            let q = g.quantize(v, 15);
            assert!((g.dequantize(q) - v).abs() <= 0.5 * s * 1.001 + 1e-6, "{v}");
        }
    }

    #[test]
    fn sym_grid_hits_signed_extreme_exactly() {
        for bits in 2..=8u8 {
            let scheme = QuantScheme {
                bits,
                group_size: 0,
                sym: true,
            };
            // Extreme is negative here; power-of-two value so f16 is exact.
            let x = [-2.0f32, 0.5, 1.0, -0.25];
            let g = fit_group(&x, &scheme, None).unwrap();
            assert_eq!(g.zero, 1 << (bits - 1));
            let q = g.quantize(-2.0, scheme.maxq());
            assert_eq!(q, 0);
            assert_eq!(g.dequantize(q), -2.0);
        }
    }

    #[test]
    fn f16_edge_cases() {
        let scheme = QuantScheme::new(4, 0);
        // Overflow.
        assert!(fit_group(&[0.0, 2.0e6], &scheme, None).is_err());
        // Underflow: tiny weights still give a finite, non-zero scale.
        let g = fit_group(&[1e-12, -1e-12], &scheme, None).unwrap();
        assert!(g.scale.to_f32() > 0.0);
        assert_eq!(g.dequantize(g.quantize(0.0, 15)), 0.0);
        // All-zero group dequantizes to exact zeros, both grids.
        for sym in [false, true] {
            let s = QuantScheme {
                bits: 3,
                group_size: 0,
                sym,
            };
            let g = fit_group(&[0.0; 8], &s, None).unwrap();
            assert_eq!(g.dequantize(g.quantize(0.0, s.maxq())), 0.0);
        }
    }

    #[test]
    fn clip_search_never_worse_than_minmax() {
        let mut state = 12345u64;
        let mut x = vec![0f32; 128];
        for v in x.iter_mut() {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *v = ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0;
        }
        x[7] = 6.0; // an outlier makes clipping worthwhile
        for sym in [false, true] {
            let scheme = QuantScheme {
                bits: 3,
                group_size: 0,
                sym,
            };
            let sse = |g: GroupGrid| -> f32 {
                x.iter()
                    .map(|&v| (g.dequantize(g.quantize(v, 7)) - v).powi(2))
                    .sum()
            };
            let plain = fit_group(&x, &scheme, None).unwrap();
            let clipped = fit_group(&x, &scheme, Some(&ClipSearch::default())).unwrap();
            assert!(sse(clipped) < 0.8 * sse(plain), "sym {sym}");
        }
    }
}
