//! The sparse layer: a mask and the kept weights (f16 values or grid codes),
//! exact storage accounting, dequantization and (de)serialisation to named
//! buffers.
//!
//! # Sparsity patterns and the zero-count rule
//!
//! * [`SparsityPattern::Unstructured`]`{ zeros_per_row: Z }`: every row has
//!   exactly `Z` pruned weights, so a layer has exactly `rows · Z`.
//!   [`SparsityPattern::fraction`] turns a fraction `s ∈ [0, 1)` into
//!   `Z = ⌊s · cols + ½⌋` (round half up, evaluated in f64; see
//!   [`zeros_for_fraction`]). A caller that needs an exact global budget
//!   (level switches that keep the total number of zeros fixed) passes `Z`
//!   directly.
//! * [`SparsityPattern::NM`]`{ zeros: n, group: m }`: in every run of `m`
//!   consecutive input columns starting at a multiple of `m`, exactly `n`
//!   weights are pruned (2:4 = `{ zeros: 2, group: 4 }`); `cols` must be a
//!   multiple of `m`. Each row then has exactly `n · cols / m` zeros.
//!
//! The count is that of the *mask*. With quantized values a kept weight may
//! still dequantize to 0 (its code equals the zero point); it is stored and
//! counted as kept.
//!
//! # Stored buffers and the bits accounting
//!
//! For `rows × cols` weights of which `K` are kept (`K = rows · (cols − Z)`):
//!
//! | buffer   | dtype | bytes | content |
//! |----------|-------|-------|---------|
//! | `mask`   | `U8`  | `⌈rows·cols/8⌉` (unstructured) | bitmap, 1 = kept, row-major, LSB first ([`crate::pack`]) |
//! | `mask`   | `U8`  | `⌈rows·(cols/m)·c/8⌉` (N:M) | per group of `m`, the rank of its set of pruned positions among the `C(m, n)` subsets in lexicographic order, at `c = ⌈log₂ C(m, n)⌉` bits (2:4: 3 bits per 4 weights) |
//! | `values` | `F16` | `2·K` | unquantized: the kept weights, row-major |
//! | `codes`  | `U8`  | `⌈K·b/8⌉` | quantized: the kept weights' `b`-bit codes, row-major, bit-packed |
//! | `scales` | `F16` | `2·rows·G` | quantized: one scale per row and group of `g` input columns |
//! | `zeros`  | `U8`  | `⌈rows·G·b/8⌉` | quantized, asymmetric only: zero points at `b` bits |
//!
//! [`SparseLinear::storage_bits`] is `8 ×` the sum of these byte counts (the
//! bytes [`SparseLinear::to_buffers`] writes; tested). Per weight, ignoring
//! the byte padding: unstructured f16 `1 + 16·(1 − s)`; unstructured with a
//! `b`-bit grid in groups of `g`: `1 + b·(1 − s) + (16 + b_zero)·G/cols`
//! (50 %, 4-bit, g128, asymmetric: `1 + 2 + 20/128 = 3.156`); 2:4 replaces the
//! `1` by `0.75`.
//!
//! Why a bitmap: at the sparsities of interest (30–70 %) the entropy of an
//! i.i.d. mask is 0.88–1 bit per weight, so a bitmap is within 12 % of any
//! mask code, is random-access per row and costs the same for every layer at
//! a given shape (the search's bit budget is then a function of the level
//! alone). Run-length or positions lists only win above ~90 % sparsity; an
//! entropy coder (the `pack` crate) can still squeeze the bitmap losslessly.
//! For N:M the rank code is exact: `log₂ 6 = 2.58` bits per 2:4 group are
//! needed and 3 are used (the 2-bit-per-kept-index layout of sparse tensor
//! cores would take 4).
//!
//! Groups of the quantized values are runs of `g` input columns, as in
//! [`crate::QuantizedLinear`]: the kept weights of row `r` in columns
//! `[k·g, (k+1)·g)` share the grid `(scales[r, k], zeros[r, k])`; a pruned
//! weight has no code.

use half::f16;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::grid::GroupGrid;
use crate::pack::{pack_bits, packed_len, unpack_bits};
use crate::{BufferDtype, FormatError, NamedBuffer, QuantScheme, SparseError};

/// Which weights of a layer are pruned (see the module docs for the rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SparsityPattern {
    /// Exactly `zeros_per_row` pruned weights in every row.
    Unstructured {
        /// Pruned weights per row.
        zeros_per_row: usize,
    },
    /// Exactly `zeros` pruned weights in every aligned run of `group` input
    /// columns (2:4 semi-structured sparsity is `zeros: 2, group: 4`).
    NM {
        /// Pruned weights per group (`1 ≤ zeros < group`).
        zeros: usize,
        /// Group length (`2 ≤ group ≤ 8`).
        group: usize,
    },
}

/// Largest N:M group length supported (the rank code fits in 8 bits).
pub const MAX_NM_GROUP: usize = 8;

/// Zeros per row for a sparsity fraction: `⌊s · cols + ½⌋` in f64.
///
/// Errors unless `0 ≤ s < 1` (a fully pruned layer is a depth decision, not a
/// sparsity level).
pub fn zeros_for_fraction(sparsity: f64, cols: usize) -> Result<usize, SparseError> {
    if !(sparsity.is_finite() && (0.0..1.0).contains(&sparsity)) {
        return Err(SparseError::BadSparsity { sparsity });
    }
    Ok(((sparsity * cols as f64 + 0.5).floor() as usize).min(cols))
}

impl SparsityPattern {
    /// Unstructured pattern with [`zeros_for_fraction`] zeros per row.
    pub fn fraction(sparsity: f64, cols: usize) -> Result<Self, SparseError> {
        Ok(SparsityPattern::Unstructured {
            zeros_per_row: zeros_for_fraction(sparsity, cols)?,
        })
    }

    /// 2:4 semi-structured sparsity (two of every four weights pruned).
    pub fn two_four() -> Self {
        SparsityPattern::NM { zeros: 2, group: 4 }
    }

    /// Checks the pattern against a layer of `cols` input columns.
    pub fn validate(&self, cols: usize) -> Result<(), SparseError> {
        match *self {
            SparsityPattern::Unstructured { zeros_per_row } => {
                if zeros_per_row >= cols {
                    return Err(SparseError::TooManyZeros {
                        zeros_per_row,
                        cols,
                    });
                }
            }
            SparsityPattern::NM { zeros, group } => {
                if !(2..=MAX_NM_GROUP).contains(&group) || zeros == 0 || zeros >= group {
                    return Err(SparseError::BadNM { zeros, group, cols });
                }
                if !cols.is_multiple_of(group) {
                    return Err(SparseError::BadNM { zeros, group, cols });
                }
            }
        }
        Ok(())
    }

    /// Pruned weights per row for rows of `cols` weights.
    pub fn zeros_per_row(&self, cols: usize) -> usize {
        match *self {
            SparsityPattern::Unstructured { zeros_per_row } => zeros_per_row,
            SparsityPattern::NM { zeros, group } => zeros * (cols / group),
        }
    }

    /// Bits of the stored mask for a `rows × cols` layer (padded to bytes).
    pub fn mask_bits(&self, rows: usize, cols: usize) -> u64 {
        8 * self.mask_bytes(rows, cols) as u64
    }

    fn mask_bytes(&self, rows: usize, cols: usize) -> usize {
        match *self {
            SparsityPattern::Unstructured { .. } => packed_len(rows * cols, 1),
            SparsityPattern::NM { zeros, group } => {
                packed_len(rows * (cols / group), rank_bits(group, zeros))
            }
        }
    }
}

/// `C(m, n)`.
fn binom(m: usize, n: usize) -> usize {
    (0..n).fold(1, |acc, i| acc * (m - i) / (i + 1))
}

/// Bits of the N:M rank code: `⌈log₂ C(m, n)⌉`, at least 1.
fn rank_bits(m: usize, n: usize) -> u8 {
    let c = binom(m, n);
    (usize::BITS - (c - 1).leading_zeros()).max(1) as u8
}

/// Rank of a pruned set (`pruned[i]` for the `m` positions, exactly `n` set)
/// among the `n`-subsets of `0..m` in lexicographic order of their sorted
/// positions.
fn nm_rank(pruned: &[bool], n: usize) -> usize {
    let m = pruned.len();
    let mut rank = 0;
    let mut left = n;
    for (i, &p) in pruned.iter().enumerate() {
        if left == 0 {
            break;
        }
        if p {
            left -= 1;
        } else {
            // Every subset that takes position i here comes first.
            rank += binom(m - i - 1, left - 1);
        }
    }
    rank
}

/// Inverse of [`nm_rank`]; `None` if `rank ≥ C(m, n)`.
fn nm_unrank(mut rank: usize, m: usize, n: usize, out: &mut [bool]) -> Option<()> {
    if rank >= binom(m, n) {
        return None;
    }
    let mut left = n;
    for (i, o) in out.iter_mut().enumerate().take(m) {
        if left == 0 {
            *o = false;
            continue;
        }
        let with = binom(m - i - 1, left - 1);
        if rank < with {
            *o = true;
            left -= 1;
        } else {
            *o = false;
            rank -= with;
        }
    }
    Some(())
}

/// The kept weights of a [`SparseLinear`].
#[derive(Clone, Debug, PartialEq)]
pub enum SparseValues {
    /// Kept weights as f16, row-major.
    F16(Vec<f16>),
    /// Kept weights as grid codes, row-major; grids per row and group of
    /// input columns as in [`crate::QuantizedLinear`].
    Quantized {
        /// Bit width and grouping.
        scheme: QuantScheme,
        /// One code per kept weight.
        codes: Vec<u8>,
        /// Scales `[rows, G]`.
        scales: Vec<f16>,
        /// Zero points `[rows, G]` (empty for a symmetric scheme).
        zeros: Vec<u8>,
    },
}

/// How a sparse layer was produced (recorded for the database).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum SparseProvenance {
    /// SparseGPT (mask by OBS saliency per block, OBS update of the rest).
    SparseGpt {
        /// Relative damping finally used.
        damp: f64,
        /// How many times the damping was increased.
        damp_retries: u32,
    },
    /// Magnitude pruning (smallest `|w|`), no update.
    Magnitude,
}

/// Everything about a stored sparse layer that is not in its buffers.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SparseMeta {
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// The pattern.
    pub pattern: SparsityPattern,
    /// Grid of the kept weights; `None` = f16 values.
    pub quant: Option<QuantScheme>,
    /// How it was produced.
    pub provenance: SparseProvenance,
}

/// A pruned (and optionally quantized) linear layer `[rows, cols]`.
///
/// Invariants (checked by [`SparseLinear::from_buffers`], true by
/// construction for the compressors of this crate): the mask matches the
/// pattern exactly (count per row, or per N:M group), one value or code per
/// kept weight, codes and zero points `≤ 2^b − 1`, finite scales and values.
#[derive(Clone, Debug, PartialEq)]
pub struct SparseLinear {
    rows: usize,
    cols: usize,
    pattern: SparsityPattern,
    /// `true` = kept, row-major `[rows, cols]`.
    mask: Vec<bool>,
    values: SparseValues,
    provenance: SparseProvenance,
}

impl SparseLinear {
    /// Constructor for our own compressors (invariants hold by construction).
    pub(crate) fn new_unchecked(
        rows: usize,
        cols: usize,
        pattern: SparsityPattern,
        mask: Vec<bool>,
        values: SparseValues,
        provenance: SparseProvenance,
    ) -> Self {
        debug_assert_eq!(mask.len(), rows * cols);
        Self {
            rows,
            cols,
            pattern,
            mask,
            values,
            provenance,
        }
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// The sparsity pattern.
    pub fn pattern(&self) -> SparsityPattern {
        self.pattern
    }
    /// The mask, `true` = kept, row-major `[rows, cols]`.
    pub fn mask(&self) -> &[bool] {
        &self.mask
    }
    /// The kept weights.
    pub fn values(&self) -> &SparseValues {
        &self.values
    }
    /// How the layer was produced.
    pub fn provenance(&self) -> SparseProvenance {
        self.provenance
    }
    /// The grid of the kept weights, if quantized.
    pub fn quant_scheme(&self) -> Option<QuantScheme> {
        match &self.values {
            SparseValues::F16(_) => None,
            SparseValues::Quantized { scheme, .. } => Some(*scheme),
        }
    }
    /// Pruned weights in the whole layer (`rows · zeros_per_row`).
    pub fn zeros(&self) -> usize {
        self.mask.iter().filter(|&&k| !k).count()
    }
    /// Kept weights.
    pub fn kept(&self) -> usize {
        self.rows * self.cols - self.zeros()
    }
    /// Fraction of pruned weights.
    pub fn sparsity(&self) -> f64 {
        self.zeros() as f64 / (self.rows * self.cols) as f64
    }

    /// Metadata that goes next to the buffers.
    pub fn meta(&self) -> SparseMeta {
        SparseMeta {
            rows: self.rows,
            cols: self.cols,
            pattern: self.pattern,
            quant: self.quant_scheme(),
            provenance: self.provenance,
        }
    }

    /// Dense weights `[rows, cols]`, row-major, pruned weights exactly 0.
    pub fn dequantize(&self) -> Vec<f32> {
        let cols = self.cols;
        // Index of the first kept value of each row.
        let mut starts = Vec::with_capacity(self.rows);
        let mut acc = 0;
        for r in 0..self.rows {
            starts.push(acc);
            acc += self.mask[r * cols..(r + 1) * cols]
                .iter()
                .filter(|&&k| k)
                .count();
        }
        let mut out = vec![0f32; self.rows * cols];
        out.par_chunks_mut(cols.max(1))
            .enumerate()
            .for_each(|(r, row)| {
                let mask = &self.mask[r * cols..(r + 1) * cols];
                let mut i = starts[r];
                match &self.values {
                    SparseValues::F16(v) => {
                        for (c, &keep) in mask.iter().enumerate() {
                            if keep {
                                row[c] = v[i].to_f32();
                                i += 1;
                            }
                        }
                    }
                    SparseValues::Quantized {
                        scheme,
                        codes,
                        scales,
                        zeros,
                    } => {
                        let gl = scheme.group_len(cols);
                        let ng = scheme.groups_per_row(cols);
                        for (c, &keep) in mask.iter().enumerate() {
                            if keep {
                                let g = r * ng + c / gl;
                                let grid = GroupGrid {
                                    scale: scales[g],
                                    zero: if scheme.sym {
                                        scheme.sym_zero()
                                    } else {
                                        zeros[g]
                                    },
                                };
                                row[c] = grid.dequantize(codes[i]);
                                i += 1;
                            }
                        }
                    }
                }
            });
        out
    }

    /// Exact storage in bits: `8 ×` the bytes of the buffers written by
    /// [`SparseLinear::to_buffers`] (the module docs have the formula).
    pub fn storage_bits(&self) -> u64 {
        let k = self.kept();
        let mut bytes = self.pattern.mask_bytes(self.rows, self.cols);
        match &self.values {
            SparseValues::F16(_) => bytes += 2 * k,
            SparseValues::Quantized { scheme, .. } => {
                let groups = self.rows * scheme.groups_per_row(self.cols);
                bytes += packed_len(k, scheme.bits) + 2 * groups;
                if !scheme.sym {
                    bytes += packed_len(groups, scheme.bits);
                }
            }
        }
        8 * bytes as u64
    }

    /// [`SparseLinear::storage_bits`] divided by the number of weights.
    pub fn bits_per_weight(&self) -> f64 {
        self.storage_bits() as f64 / (self.rows * self.cols) as f64
    }

    /// Serialises into the named buffers `mask` and either `values` or
    /// `codes`, `scales`, `zeros` (asymmetric only).
    pub fn to_buffers(&self) -> Vec<NamedBuffer> {
        let mask = match self.pattern {
            SparsityPattern::Unstructured { .. } => {
                let bits: Vec<u8> = self.mask.iter().map(|&k| k as u8).collect();
                pack_bits(&bits, 1)
            }
            SparsityPattern::NM { zeros, group } => {
                let mut pruned = vec![false; group];
                let ranks: Vec<u8> = self
                    .mask
                    .chunks(group)
                    .map(|g| {
                        for (p, &k) in pruned.iter_mut().zip(g) {
                            *p = !k;
                        }
                        nm_rank(&pruned, zeros) as u8
                    })
                    .collect();
                pack_bits(&ranks, rank_bits(group, zeros))
            }
        };
        let mut out = vec![u8_buffer("mask", mask)];
        match &self.values {
            SparseValues::F16(v) => out.push(NamedBuffer {
                name: "values".into(),
                dtype: BufferDtype::F16,
                shape: vec![v.len()],
                data: v.iter().flat_map(|s| s.to_le_bytes()).collect(),
            }),
            SparseValues::Quantized {
                scheme,
                codes,
                scales,
                zeros,
            } => {
                out.push(u8_buffer("codes", pack_bits(codes, scheme.bits)));
                out.push(NamedBuffer {
                    name: "scales".into(),
                    dtype: BufferDtype::F16,
                    shape: vec![self.rows, scheme.groups_per_row(self.cols)],
                    data: scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
                });
                if !scheme.sym {
                    out.push(u8_buffer("zeros", pack_bits(zeros, scheme.bits)));
                }
            }
        }
        out
    }

    /// Rebuilds a layer from [`SparseLinear::meta`] and the buffers of
    /// [`SparseLinear::to_buffers`], validating names, dtypes, sizes, the
    /// mask against the pattern, code ranges, padding bits and finiteness.
    pub fn from_buffers(meta: &SparseMeta, buffers: &[NamedBuffer]) -> Result<Self, FormatError> {
        let SparseMeta {
            rows,
            cols,
            pattern,
            quant,
            provenance,
        } = *meta;
        if cols == 0 {
            return Err(FormatError::BadScheme {
                reason: "a layer needs at least one column".into(),
            });
        }
        pattern.validate(cols).map_err(|e| FormatError::BadScheme {
            reason: e.to_string(),
        })?;
        if let Some(s) = quant
            && !(2..=8).contains(&s.bits)
        {
            return Err(FormatError::BadScheme {
                reason: format!("bits must be 2 to 8, got {}", s.bits),
            });
        }
        let allowed: &[&str] = match quant {
            None => &["mask", "values"],
            Some(s) if s.sym => &["mask", "codes", "scales"],
            Some(_) => &["mask", "codes", "scales", "zeros"],
        };
        for buf in buffers {
            if !allowed.contains(&buf.name.as_str()) {
                return Err(FormatError::UnexpectedBuffer {
                    name: buf.name.clone(),
                });
            }
            let elems: usize = buf.shape.iter().product();
            if elems * buf.dtype.size() != buf.data.len() {
                return Err(FormatError::ShapeMismatch {
                    name: buf.name.clone(),
                    shape: buf.shape.clone(),
                    bytes: buf.data.len(),
                });
            }
        }
        let find = |name: &'static str, dtype: BufferDtype| -> Result<&NamedBuffer, FormatError> {
            let mut it = buffers.iter().filter(|b| b.name == name);
            let first = it.next().ok_or(FormatError::MissingBuffer { name })?;
            if it.next().is_some() {
                return Err(FormatError::DuplicateBuffer { name });
            }
            if first.dtype != dtype {
                return Err(FormatError::BadDtype {
                    name,
                    got: first.dtype,
                });
            }
            Ok(first)
        };
        let size = |name: &'static str, expected: usize, got: usize| {
            if expected == got {
                Ok(())
            } else {
                Err(FormatError::BufferSize {
                    name,
                    expected,
                    got,
                })
            }
        };
        let corrupt = |name: &'static str, expected: usize, got: usize| FormatError::BufferSize {
            name,
            expected,
            got,
        };
        let mbuf = find("mask", BufferDtype::U8)?;
        let mlen = pattern.mask_bytes(rows, cols);
        size("mask", mlen, mbuf.data.len())?;
        let mask: Vec<bool> = match pattern {
            SparsityPattern::Unstructured { zeros_per_row } => {
                let bits = unpack_bits(&mbuf.data, 1, rows * cols)
                    .ok_or_else(|| corrupt("mask", mlen, mbuf.data.len()))?;
                let mask: Vec<bool> = bits.iter().map(|&b| b == 1).collect();
                for row in mask.chunks(cols) {
                    let z = row.iter().filter(|&&k| !k).count();
                    if z != zeros_per_row {
                        return Err(corrupt("mask", zeros_per_row, z));
                    }
                }
                mask
            }
            SparsityPattern::NM { zeros, group } => {
                let count = rows * (cols / group);
                let ranks = unpack_bits(&mbuf.data, rank_bits(group, zeros), count)
                    .ok_or_else(|| corrupt("mask", mlen, mbuf.data.len()))?;
                let mut mask = vec![false; rows * cols];
                let mut pruned = vec![false; group];
                for (g, &rank) in ranks.iter().enumerate() {
                    nm_unrank(rank as usize, group, zeros, &mut pruned)
                        .ok_or_else(|| corrupt("mask", binom(group, zeros), rank as usize))?;
                    for (i, &p) in pruned.iter().enumerate() {
                        mask[g * group + i] = !p;
                    }
                }
                mask
            }
        };
        let kept = mask.iter().filter(|&&k| k).count();
        let values = match quant {
            None => {
                let v = find("values", BufferDtype::F16)?;
                size("values", 2 * kept, v.data.len())?;
                let vals: Vec<f16> = v
                    .data
                    .chunks_exact(2)
                    .map(|b| f16::from_le_bytes([b[0], b[1]]))
                    .collect();
                if let Some(i) = vals.iter().position(|x| !x.is_finite()) {
                    return Err(FormatError::NonFiniteValue { index: i });
                }
                SparseValues::F16(vals)
            }
            Some(scheme) => {
                let b = scheme.bits;
                let groups = rows * scheme.groups_per_row(cols);
                let cbuf = find("codes", BufferDtype::U8)?;
                size("codes", packed_len(kept, b), cbuf.data.len())?;
                let codes = unpack_bits(&cbuf.data, b, kept)
                    .ok_or_else(|| corrupt("codes", packed_len(kept, b), cbuf.data.len()))?;
                let sbuf = find("scales", BufferDtype::F16)?;
                size("scales", 2 * groups, sbuf.data.len())?;
                let scales: Vec<f16> = sbuf
                    .data
                    .chunks_exact(2)
                    .map(|x| f16::from_le_bytes([x[0], x[1]]))
                    .collect();
                if let Some(i) = scales.iter().position(|s| !s.is_finite()) {
                    return Err(FormatError::NonFiniteScale { index: i });
                }
                let zeros = if scheme.sym {
                    Vec::new()
                } else {
                    let zbuf = find("zeros", BufferDtype::U8)?;
                    size("zeros", packed_len(groups, b), zbuf.data.len())?;
                    unpack_bits(&zbuf.data, b, groups)
                        .ok_or_else(|| corrupt("zeros", packed_len(groups, b), zbuf.data.len()))?
                };
                SparseValues::Quantized {
                    scheme,
                    codes,
                    scales,
                    zeros,
                }
            }
        };
        Ok(Self {
            rows,
            cols,
            pattern,
            mask,
            values,
            provenance,
        })
    }
}

fn u8_buffer(name: &str, data: Vec<u8>) -> NamedBuffer {
    NamedBuffer {
        name: name.into(),
        dtype: BufferDtype::U8,
        shape: vec![data.len()],
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nm_rank_is_a_bijection() {
        for m in 2..=MAX_NM_GROUP {
            for n in 1..m {
                let c = binom(m, n);
                assert!(c <= 1 << rank_bits(m, n));
                let mut seen = vec![false; c];
                for bits in 0u32..(1 << m) {
                    if bits.count_ones() as usize != n {
                        continue;
                    }
                    let set: Vec<bool> = (0..m).map(|i| bits >> i & 1 == 1).collect();
                    let r = nm_rank(&set, n);
                    assert!(r < c && !seen[r], "m {m} n {n}");
                    seen[r] = true;
                    let mut back = vec![false; m];
                    nm_unrank(r, m, n, &mut back).unwrap();
                    assert_eq!(back, set);
                }
                assert!(seen.iter().all(|&s| s));
                assert!(nm_unrank(c, m, n, &mut vec![false; m]).is_none());
            }
        }
        assert_eq!(rank_bits(4, 2), 3);
    }

    #[test]
    fn zero_count_rule() {
        assert_eq!(zeros_for_fraction(0.5, 256).unwrap(), 128);
        assert_eq!(zeros_for_fraction(0.3, 10).unwrap(), 3);
        // Half up: 0.5 · 5 = 2.5 → 3.
        assert_eq!(zeros_for_fraction(0.5, 5).unwrap(), 3);
        assert_eq!(zeros_for_fraction(0.0, 7).unwrap(), 0);
        assert!(zeros_for_fraction(1.0, 7).is_err());
        assert!(zeros_for_fraction(-0.1, 7).is_err());
        assert!(zeros_for_fraction(f64::NAN, 7).is_err());
    }
}
