//! Per-block encoder state: the scale choice of one block, the rule that maps a
//! weight to its level, and the packing of levels into ggml's block bytes.
//!
//! ggml's encoders all work in two steps: choose the block's scale parameters
//! (`d`, `dmin`, sub-block scales, …) from its weights, then give every weight a
//! level. [`BlockGrid`] is the result of the first step, so a caller can do the
//! second step itself — GPTQ does, rounding column by column while it feeds the
//! rounding error forward into the columns not yet rounded. For the original
//! weights, `BlockGrid::new` + [`BlockGrid::round`] on every position +
//! [`BlockGrid::assemble`] is exactly what [`crate::quantize`] writes (it is
//! implemented that way).
//!
//! ## Levels ("codes")
//! A code is the unsigned level ggml holds before packing:
//!
//! | type | codes | decoded value |
//! |------|-------|---------------|
//! | Q4_0 | 0..=15 | `(c - 8) · d` |
//! | Q5_0 | 0..=31 | `(c - 16) · d` |
//! | Q8_0 | 0..=255 | `(c - 128) · d` (ggml's int8 `q = c - 128`) |
//! | IQ4_NL | 0..=15 | `d · T[c]`, T = ggml's `kvalues_iq4nl` (−127 … 113) |
//! | IQ4_XS | 0..=15 | `(d · (sc_j - 32)) · T[c]` |
//! | Q4_1, Q5_1 | 0..=15, 0..=31 | `c · d + m` |
//! | Q2_K, Q4_K, Q5_K | 0..=3, 0..=15, 0..=31 | `(d · sc_j) · c - dmin · m_j` |
//! | Q3_K | 0..=7 | `(d · (sc_j - 32)) · (c - 4)` |
//! | Q6_K | 0..=63 | `(d · sc_j) · (c - 32)` |
//!
//! ## Rounding rules
//! The level of a weight is the encoder's own rule for that block, so that
//! rounding reproduces ggml; which rule depends on the type and on whether an
//! importance vector is used (see `docs/ggml-quants.md`). Values beyond the
//! grid (possible once GPTQ has moved a weight) saturate at the end levels.
//! In a sub-block whose effective scale is zero every level decodes to the
//! same value, and ggml stores the levels its scale search left there; the
//! grid keeps those levels and returns them whatever the value.

// Index loops mirror ggml's reference loops, which keeps the order of the f32
// operations (and so bit-exactness) easy to audit.
#![allow(clippy::needless_range_loop)]

use crate::float::{c_trunc_low_byte_safe, f16_bits_to_f32, nearest_int};
use crate::types::GgmlType;

/// The largest block of the supported types (Q6_K), in bytes.
pub(crate) const MAX_BLOCK_BYTES: usize = 210;

/// How one group of weights is mapped to levels.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Rule {
    /// Levels were fixed by the scale search (see `BlockGrid::fixed`).
    Fixed,
    /// `nearest_int((x + add) / div)`: k-quant requantization.
    Div { div: f32, add: f32 },
    /// `nearest_int(mul · (x - sub))`: the levels of a scale search.
    Mul { mul: f32, sub: f32 },
    /// `trunc((x - sub) · mul + add)`: ggml's legacy reference encoders.
    Trunc { mul: f32, sub: f32, add: f32 },
    /// `roundf(x · mul)` (half away from zero): Q8_0.
    Round { mul: f32 },
    /// The IQ4_NL table entry nearest to `x · mul` (ggml's `best_index_int8`).
    Table { mul: f32 },
}

/// How one group's levels decode to f32, in ggml's operation order.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Dq {
    /// `(c - off) · d`
    Sym { d: f32, off: i32 },
    /// `d · c - m`
    SubMin { d: f32, m: f32 },
    /// `c · d + m`
    AddMin { d: f32, m: f32 },
    /// `d · KVALUES_IQ4NL[c]`
    Table { d: f32 },
}

impl Dq {
    #[inline]
    pub(crate) fn value(self, code: u8) -> f32 {
        match self {
            Dq::Sym { d, off } => (code as i32 - off) as f32 * d,
            Dq::SubMin { d, m } => d * code as f32 - m,
            Dq::AddMin { d, m } => code as f32 * d + m,
            Dq::Table { d } => d * crate::legacy::KVALUES_IQ4NL[code as usize & 15] as f32,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Group {
    pub rule: Rule,
    pub dq: Dq,
}

impl Group {
    pub(crate) const EMPTY: Group = Group {
        rule: Rule::Fixed,
        dq: Dq::Sym { d: 0.0, off: 0 },
    };
}

/// One block's scale parameters and rounding rule, as ggml's encoder chose them.
///
/// Built by [`BlockGrid::new`] (one block of one row) or [`crate::block_grids`]
/// (one block of many rows). Blocks are 32 weights for Q4_0…Q8_0 and 256
/// (a super-block) for the k-quants.
#[derive(Clone, Debug)]
pub struct BlockGrid {
    pub(crate) ty: GgmlType,
    /// The block's bytes with every code field zero: scales, mins, `d`, `dmin`.
    pub(crate) template: [u8; MAX_BLOCK_BYTES],
    pub(crate) groups: [Group; 16],
    /// log2 of the group length (4: 16 weights, 5: 32 weights).
    pub(crate) group_shift: u8,
    /// Level range before `bias` (the encoder's clamp) and the offset to codes.
    pub(crate) lo: i32,
    pub(crate) hi: i32,
    pub(crate) bias: i32,
    /// Levels left by the scale search, used where a group's rule is `Fixed`.
    pub(crate) fixed: [u8; 256],
}

impl BlockGrid {
    pub(crate) fn empty(ty: GgmlType, group_shift: u8, lo: i32, hi: i32, bias: i32) -> BlockGrid {
        BlockGrid {
            ty,
            template: [0; MAX_BLOCK_BYTES],
            groups: [Group::EMPTY; 16],
            group_shift,
            lo,
            hi,
            bias,
            fixed: [0; 256],
        }
    }

    /// The block's type.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// Weights in the block (32 or 256).
    pub fn len(&self) -> usize {
        self.ty.block_size()
    }

    /// Always false: a block holds 32 or 256 weights.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Number of levels (codes are `0..levels()`).
    pub fn levels(&self) -> u16 {
        (self.hi - self.lo + 1) as u16
    }

    /// True when position `j` lies in a sub-block whose decoded scale is zero:
    /// every level there decodes to the same value, and [`BlockGrid::code`]
    /// returns the level ggml's scale search left (whatever `x`).
    ///
    /// Panics if `j >= self.len()` (a shape contract).
    pub fn is_fixed(&self, j: usize) -> bool {
        matches!(self.groups[j >> self.group_shift].rule, Rule::Fixed)
    }

    /// The level the encoder gives value `x` at position `j` of the block.
    ///
    /// Panics if `j >= self.len()` (a shape contract).
    #[inline]
    pub fn code(&self, j: usize, x: f32) -> u8 {
        assert!(
            j < self.len(),
            "position {j} outside a block of {}",
            self.len()
        );
        let g = &self.groups[j >> self.group_shift];
        let l = match g.rule {
            Rule::Fixed => return self.fixed[j],
            Rule::Div { div, add } => nearest_int((x + add) / div),
            Rule::Mul { mul, sub } => nearest_int(mul * (x - sub)),
            Rule::Trunc { mul, sub, add } => c_trunc_low_byte_safe((x - sub) * mul + add),
            Rule::Round { mul } => c_trunc_low_byte_safe((x * mul).round()),
            Rule::Table { mul } => crate::legacy::best_index_iq4nl(x * mul) as i32,
        };
        (l.clamp(self.lo, self.hi) + self.bias) as u8
    }

    /// Levels of a whole block of values (`x` and `out`: one per position), with
    /// the rule looked up once per sub-block.
    pub(crate) fn codes_into(&self, x: &[f32], out: &mut [u8]) {
        let gl = 1usize << self.group_shift;
        let (lo, hi, bias) = (self.lo, self.hi, self.bias);
        for (gi, (xs, os)) in x.chunks_exact(gl).zip(out.chunks_exact_mut(gl)).enumerate() {
            let fix = |l: i32| (l.clamp(lo, hi) + bias) as u8;
            match self.groups[gi].rule {
                Rule::Fixed => os.copy_from_slice(&self.fixed[gi * gl..(gi + 1) * gl]),
                Rule::Div { div, add } => {
                    for (o, &v) in os.iter_mut().zip(xs) {
                        *o = fix(nearest_int((v + add) / div));
                    }
                }
                Rule::Mul { mul, sub } => {
                    for (o, &v) in os.iter_mut().zip(xs) {
                        *o = fix(nearest_int(mul * (v - sub)));
                    }
                }
                Rule::Trunc { mul, sub, add } => {
                    for (o, &v) in os.iter_mut().zip(xs) {
                        *o = fix(c_trunc_low_byte_safe((v - sub) * mul + add));
                    }
                }
                Rule::Round { mul } => {
                    for (o, &v) in os.iter_mut().zip(xs) {
                        *o = fix(c_trunc_low_byte_safe((v * mul).round()));
                    }
                }
                Rule::Table { mul } => {
                    for (o, &v) in os.iter_mut().zip(xs) {
                        *o = fix(crate::legacy::best_index_iq4nl(v * mul) as i32);
                    }
                }
            }
        }
    }

    /// The decoded value of level `code` at position `j`, bit-identical to
    /// ggml's `dequantize_row_*` of the assembled block.
    ///
    /// Panics if `j >= self.len()` (a shape contract).
    #[inline]
    pub fn value(&self, j: usize, code: u8) -> f32 {
        self.groups[j >> self.group_shift].dq.value(code)
    }

    /// Rounds `x` at position `j` to the grid: `(code, decoded value)`.
    ///
    /// Panics if `j >= self.len()` (a shape contract).
    #[inline]
    pub fn round(&self, j: usize, x: f32) -> (u8, f32) {
        let c = self.code(j, x);
        (c, self.value(j, c))
    }

    /// Writes the block's ggml bytes for `codes` (one per position) into `out`
    /// (`ty().type_size()` bytes).
    ///
    /// Panics if the lengths are wrong or a code is `>= levels()` (shape contracts).
    pub fn assemble(&self, codes: &[u8], out: &mut [u8]) {
        let n = self.len();
        let size = self.ty.type_size();
        assert_eq!(
            codes.len(),
            n,
            "{}: need one code per weight of the block",
            self.ty
        );
        assert_eq!(out.len(), size, "{}: output must be one block", self.ty);
        let levels = self.levels();
        assert!(
            codes.iter().all(|&c| (c as u16) < levels),
            "{}: codes must be below {levels}",
            self.ty
        );
        out.copy_from_slice(&self.template[..size]);
        pack_codes(self.ty, codes, out);
    }

    /// Like [`BlockGrid::assemble`], returning a new vector.
    pub fn to_bytes(&self, codes: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; self.ty.type_size()];
        self.assemble(codes, &mut out);
        out
    }
}

/// ORs the codes into the code fields of a block whose code fields are zero.
pub(crate) fn pack_codes(ty: GgmlType, l: &[u8], y: &mut [u8]) {
    match ty {
        GgmlType::Q4_0 | GgmlType::IQ4NL => nibbles(&mut y[2..18], l),
        GgmlType::Q4_1 => nibbles(&mut y[4..20], l),
        GgmlType::Q5_0 => five_bit(&mut y[2..22], l),
        GgmlType::Q5_1 => five_bit(&mut y[4..24], l),
        GgmlType::Q8_0 => {
            for (b, &c) in y[2..34].iter_mut().zip(l) {
                *b = c.wrapping_sub(128);
            }
        }
        GgmlType::IQ4XS => {
            // d | scales_h | scales_l[4] | qs[128]: 16 bytes per 32 codes.
            for ib in 0..8 {
                nibbles(&mut y[8 + 16 * ib..24 + 16 * ib], &l[32 * ib..32 * ib + 32]);
            }
        }
        GgmlType::Q2K => two_bit(&mut y[16..80], l),
        GgmlType::Q3K => {
            // hmask[32] | qs[64] | scales[12] | d
            let (hmask, rest) = y.split_at_mut(32);
            for (j, &c) in l.iter().enumerate() {
                if c > 3 {
                    hmask[j % 32] |= 1 << (j / 32);
                }
            }
            let mut low = [0u8; 256];
            for (o, &c) in low.iter_mut().zip(l) {
                *o = c & 3;
            }
            two_bit(&mut rest[..64], &low);
        }
        GgmlType::Q4K => {
            // d | dmin | scales[12] | qs[128]
            let qs = &mut y[16..144];
            for c in 0..4 {
                for i in 0..32 {
                    qs[32 * c + i] |= l[64 * c + i] | (l[64 * c + 32 + i] << 4);
                }
            }
        }
        GgmlType::Q5K => {
            // d | dmin | scales[12] | qh[32] | qs[128]
            let (qh, qs) = y[16..176].split_at_mut(32);
            for c in 0..4 {
                for i in 0..32 {
                    let a = l[64 * c + i];
                    let b = l[64 * c + 32 + i];
                    qs[32 * c + i] |= (a & 0xf) | ((b & 0xf) << 4);
                    qh[i] |= ((a >> 4) << (2 * c)) | ((b >> 4) << (2 * c + 1));
                }
            }
        }
        GgmlType::Q6K => {
            // ql[128] | qh[64] | scales[16] | d
            let (ql, rest) = y.split_at_mut(128);
            let qh = &mut rest[..64];
            for h in 0..2 {
                let lh = &l[128 * h..128 * h + 128];
                for i in 0..32 {
                    let (a, b, c, d) = (lh[i], lh[i + 32], lh[i + 64], lh[i + 96]);
                    ql[64 * h + i] |= (a & 0xf) | ((c & 0xf) << 4);
                    ql[64 * h + i + 32] |= (b & 0xf) | ((d & 0xf) << 4);
                    qh[32 * h + i] |=
                        (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((d >> 4) << 6);
                }
            }
        }
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => unreachable!("float types have no grid"),
        GgmlType::IQ2XXS | GgmlType::IQ2XS | GgmlType::IQ2S | GgmlType::IQ3XXS | GgmlType::IQ3S => {
            unreachable!("lattice i-quants have no per-weight grid")
        }
    }
}

/// 32 four-bit codes: byte i holds code i (low nibble) and code i + 16 (high).
fn nibbles(qs: &mut [u8], l: &[u8]) {
    for i in 0..16 {
        qs[i] |= l[i] | (l[i + 16] << 4);
    }
}

/// 32 five-bit codes: `qh` (u32, little endian) holds bit 4 of code i at bit i,
/// then the low nibbles as in [`nibbles`].
fn five_bit(y: &mut [u8], l: &[u8]) {
    let mut qh = 0u32;
    for i in 0..16 {
        y[4 + i] |= (l[i] & 0xf) | ((l[i + 16] & 0xf) << 4);
        qh |= (((l[i] >> 4) & 1) as u32) << i;
        qh |= (((l[i + 16] >> 4) & 1) as u32) << (i + 16);
    }
    let prev = u32::from_le_bytes([y[0], y[1], y[2], y[3]]);
    y[..4].copy_from_slice(&(prev | qh).to_le_bytes());
}

/// 256 two-bit codes in 64 bytes: for each half h (128 codes), byte 32h + i
/// holds codes 128h + i, +32, +64, +96 in bits 0-1, 2-3, 4-5, 6-7.
fn two_bit(qs: &mut [u8], l: &[u8]) {
    for h in 0..2 {
        for i in 0..32 {
            let b = 128 * h + i;
            qs[32 * h + i] |= (l[b] & 3)
                | ((l[b + 32] & 3) << 2)
                | ((l[b + 64] & 3) << 4)
                | ((l[b + 96] & 3) << 6);
        }
    }
}

/// Reads an f16 at `off` as f32.
#[inline]
pub(crate) fn read_f16(y: &[u8], off: usize) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([y[off], y[off + 1]]))
}

/// Writes f16 bits at `off`.
#[inline]
pub(crate) fn write_f16(y: &mut [u8], off: usize, bits: u16) {
    y[off..off + 2].copy_from_slice(&bits.to_le_bytes());
}

/// The 6-bit scale and min of sub-block `j` from Q4_K/Q5_K's 12 packed bytes
/// (ggml's `get_scale_min_k4`): sub-blocks 0-3 use the low 6 bits of bytes
/// j and j + 4; 4-7 use a nibble of byte j + 4 plus the top 2 bits of bytes
/// j - 4 and j.
#[inline]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The 6-bit scale of sub-block `j` from Q3_K's 12 packed bytes, minus 32.
#[inline]
pub(crate) fn scale_q3k(j: usize, s: &[u8]) -> i8 {
    let low = if j < 8 { s[j] & 0xf } else { s[j - 8] >> 4 };
    let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    ((low | (high << 4)) as i8).wrapping_sub(32)
}
