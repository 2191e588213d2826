//! Scalar conversions and rounding primitives, each with ggml's exact semantics.
//!
//! * f32 → f16 is IEEE round-to-nearest-even with overflow to ±inf; every NaN
//!   becomes the quiet NaN `0x7E00` with the input's sign (ggml's
//!   `GGML_FP32_TO_FP16`, which llama-quantize runs for F16 output and for every
//!   block scale).
//! * f16 → f32 and bf16 → f32 are exact widenings; f16 NaNs keep their payload
//!   but come out quiet (ggml widens f16 with a float multiply, which sets the
//!   quiet bit), bf16 NaNs are kept bit for bit.
//! * f32 → bf16 rounds to nearest even on the top 16 bits; a NaN keeps its top
//!   16 bits with the quiet bit (0x40) forced on (`ggml_fp32_to_bf16_row_ref`).
//!   Subnormals are kept, not flushed.
//! * [`nearest_int`] is ggml's `nearest_int`: round half to even through the
//!   2^23 + 2^22 "magic number" (exact for |x| < 2^22, and reproduced bit for bit
//!   beyond that, where ggml's result is meaningless but deterministic).

/// Converts an f32 to the bits of an IEEE half, exactly as ggml does.
pub fn f32_to_f16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let abs = bits & 0x7fff_ffff;
    if abs > 0x7f80_0000 {
        // Any NaN: canonical quiet NaN, sign kept.
        return sign | 0x7e00;
    }
    if abs >= 0x477f_f000 {
        // >= 65520 (half-way between 65504 and 2^16) rounds to infinity; includes inf.
        return sign | 0x7c00;
    }
    if abs >= 0x3880_0000 {
        // Normal half (>= 2^-14): re-bias the exponent by 127 - 15 and round the
        // 13 dropped mantissa bits to nearest even. A carry moves into the
        // exponent field, which is the correct next binade.
        let v = abs - 0x3800_0000;
        let r = v + 0x0fff + ((v >> 13) & 1);
        return sign | (r >> 13) as u16;
    }
    if abs <= 0x3300_0000 {
        // <= 2^-25: half-way to the smallest subnormal or below rounds to (even) zero.
        return sign;
    }
    // Subnormal half: count units of 2^-24, round to nearest even.
    let exp = abs >> 23; // 102..=112
    let mant = (abs & 0x007f_ffff) | 0x0080_0000;
    let shift = 126 - exp; // 14..=24
    let q = mant >> shift;
    let rem = mant & ((1u32 << shift) - 1);
    let half = 1u32 << (shift - 1);
    let q = if rem > half || (rem == half && (q & 1) == 1) {
        q + 1
    } else {
        q
    };
    sign | q as u16
}

/// Widens the bits of an IEEE half to f32 exactly as ggml does (NaNs come out quiet).
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: normalise. value = m * 2^-24.
            let lead = 31 - m.leading_zeros(); // position of the top set bit, 0..=9
            let e = lead + 103; // biased f32 exponent of 2^(lead - 24)
            let frac = (m << (23 - lead)) & 0x007f_ffff;
            sign | (e << 23) | frac
        }
        (31, 0) => sign | 0x7f80_0000,
        // ggml widens with a float multiply, which quiets a signalling NaN.
        (31, m) => sign | 0x7fc0_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// Converts an f32 to the bits of a bfloat16, exactly as ggml does.
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 0x40) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// Widens the bits of a bfloat16 to f32 (exact).
pub fn bf16_bits_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// f16 round trip of a scale: what the decoder will see for `x`.
#[inline]
pub(crate) fn f16_round(x: f32) -> f32 {
    f16_bits_to_f32(f32_to_f16_bits(x))
}

/// ggml's `nearest_int`: adds 1.5 * 2^23 so that the integer lands in the low
/// mantissa bits (the FPU's round-half-even does the rounding), then reads it back.
#[inline]
pub(crate) fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    ((v.to_bits() & 0x007f_ffff) as i32) - 0x0040_0000
}

/// C's float → integer conversion as x86-64 executes it (`cvttss2si`):
/// truncation toward zero, and the "integer indefinite" 0x80000000 for NaN and
/// out-of-range inputs. ggml's legacy reference encoders then keep the low byte
/// (an 8-bit destination), so those special inputs become code 0.
#[inline]
pub(crate) fn c_trunc_low_byte_safe(x: f32) -> i32 {
    if x.is_nan() || !(-2_147_483_648.0..2_147_483_648.0).contains(&x) {
        0
    } else {
        x as i32
    }
}

/// C's `MAX(a, b)` macro for floats: `a > b ? a : b` (differs from `f32::max` on NaN).
#[inline]
pub(crate) fn c_max(a: f32, b: f32) -> f32 {
    if a > b { a } else { b }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_widening_round_trips_every_non_nan_half() {
        for h in 0..=u16::MAX {
            let f = f16_bits_to_f32(h);
            if f.is_nan() {
                assert_eq!(f32_to_f16_bits(f), (h & 0x8000) | 0x7e00);
            } else {
                assert_eq!(f32_to_f16_bits(f), h, "half {h:#06x} -> {f:e}");
            }
        }
    }

    #[test]
    fn f16_rounding_is_nearest_even() {
        // 1 + 2^-11 is half-way between 1 and 1 + 2^-10: ties to the even (1.0).
        assert_eq!(f32_to_f16_bits(1.0 + f32::EPSILON * 1024.0), 0x3c00);
        // 1 + 3 * 2^-11 is half-way between 1 + 2^-10 and 1 + 2^-9: ties up to even.
        assert_eq!(f32_to_f16_bits(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
        assert_eq!(f32_to_f16_bits(65504.0), 0x7bff);
        assert_eq!(f32_to_f16_bits(65519.99), 0x7bff);
        assert_eq!(f32_to_f16_bits(65520.0), 0x7c00);
        assert_eq!(f32_to_f16_bits(-f32::INFINITY), 0xfc00);
        // Smallest subnormal half is 2^-24; exactly half of it rounds to zero.
        assert_eq!(f32_to_f16_bits(2f32.powi(-24)), 0x0001);
        assert_eq!(f32_to_f16_bits(2f32.powi(-25)), 0x0000);
        assert_eq!(f32_to_f16_bits(2f32.powi(-25) * 1.0000001), 0x0001);
        assert_eq!(f32_to_f16_bits(3.0 * 2f32.powi(-25)), 0x0002);
    }

    #[test]
    fn bf16_rounding_and_nan() {
        assert_eq!(f32_to_bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is a tie between 1.0 and 1 + 2^-7: even is 1.0.
        assert_eq!(f32_to_bf16_bits(1.0 + 2f32.powi(-8)), 0x3f80);
        assert_eq!(f32_to_bf16_bits(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
        // A signalling NaN gets its quiet bit.
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x7f80_0001)), 0x7fc0);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0xff81_0000)), 0xffc1);
        assert_eq!(f32_to_bf16_bits(f32::MAX), 0x7f80);
        for h in 0..=u16::MAX {
            let f = bf16_bits_to_f32(h);
            if !f.is_nan() {
                assert_eq!(f32_to_bf16_bits(f), h);
            }
        }
    }

    #[test]
    fn nearest_int_is_round_half_even() {
        for (x, want) in [
            (0.5, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (3.49, 3),
            (-7.51, -8),
        ] {
            assert_eq!(nearest_int(x), want, "{x}");
        }
        assert_eq!(nearest_int(f32::NAN), 0);
    }
}
