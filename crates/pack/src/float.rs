//! Float tensors as two planes: an entropy-coded "head" plane and a raw
//! "tail" plane.
//!
//! A float of `B` bits has a sign bit, `E` exponent bits and `M` mantissa
//! bits (bf16: 1/8/7, f16: 1/5/10, f32: 1/8/23). For a per-tensor choice of
//! `k` (`0 <= k <= min(M, 12 - E)`), each element `w` splits into
//!
//! ```text
//! head = (w >> (M - k)) mod 2^(E + k)            exponent and top k mantissa bits
//! tail = sign << (M - k) | (w mod 2^(M - k))     R = 1 + M - k bits
//! ```
//!
//! so that `w = sign << (B - 1) | head << (M - k) | (w mod 2^(M - k))`. With
//! `k = 0` this is the classic exponent / sign+mantissa byte split of ZipNN and
//! DFloat11 (the "bit rotation" that moves the sign next to the mantissa).
//! Larger `k` moves the top mantissa bits into the coded symbol, where the
//! exponent conditions them: in the tails of a bell-shaped weight
//! distribution the density falls within a binade, so the leading mantissa
//! bits are skewed, and a joint (exponent, leading bits) table captures that
//! at the cost of a larger table. The packer picks the `k` that minimises the
//! exact coded size (data + table + flush), or stores the tensor raw.
//!
//! Heads are rANS-coded ([`crate::rans`]) with one table per tensor; tails
//! are bit-packed LSB-first, element `i` at bit `i * R`.
//!
//! Chunk payload: `u32` rANS stream length `S` (little-endian), the `S`-byte
//! stream, then the `ceil(n R / 8)`-byte tail plane.

use crate::bits::read_bits;
use crate::checksum::Xxh3Stream;
use crate::rans::{self, DecodeTable, Encoder, FreqTable, StreamError};

/// A floating-point element layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FloatFormat {
    /// bfloat16: 1 sign, 8 exponent, 7 mantissa bits.
    Bf16,
    /// IEEE binary16: 1 sign, 5 exponent, 10 mantissa bits.
    F16,
    /// IEEE binary32: 1 sign, 8 exponent, 23 mantissa bits.
    F32,
}

/// Largest head symbol width: 12 bits keeps decode tables in L1 cache.
pub(crate) const MAX_HEAD_BITS: u32 = 12;

impl FloatFormat {
    /// Bits per element.
    pub fn bits(self) -> u32 {
        match self {
            Self::Bf16 | Self::F16 => 16,
            Self::F32 => 32,
        }
    }
    /// Bytes per element.
    pub fn bytes(self) -> usize {
        self.bits() as usize / 8
    }
    /// Exponent bits.
    pub fn exp_bits(self) -> u32 {
        match self {
            Self::Bf16 | Self::F32 => 8,
            Self::F16 => 5,
        }
    }
    /// Mantissa bits.
    pub fn man_bits(self) -> u32 {
        match self {
            Self::Bf16 => 7,
            Self::F16 => 10,
            Self::F32 => 23,
        }
    }
    /// Largest number of mantissa bits that may join the coded head.
    pub fn max_k(self) -> u32 {
        self.man_bits().min(MAX_HEAD_BITS - self.exp_bits())
    }
    /// Format code in the container.
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Bf16 => 0,
            Self::F16 => 1,
            Self::F32 => 2,
        }
    }
    pub(crate) fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(Self::Bf16),
            1 => Some(Self::F16),
            2 => Some(Self::F32),
            _ => None,
        }
    }
    /// Safetensors dtype name.
    pub fn from_safetensors_dtype(dtype: &str) -> Option<Self> {
        match dtype {
            "BF16" => Some(Self::Bf16),
            "F16" => Some(Self::F16),
            "F32" => Some(Self::F32),
            _ => None,
        }
    }
}

/// Head/tail split parameters for one tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Split {
    pub(crate) format: FloatFormat,
    pub(crate) k: u32,
}

impl Split {
    pub(crate) fn head_bits(self) -> u32 {
        self.format.exp_bits() + self.k
    }
    pub(crate) fn tail_bits(self) -> u32 {
        1 + self.format.man_bits() - self.k
    }
    fn low_bits(self) -> u32 {
        self.format.man_bits() - self.k
    }
    /// Bytes of the tail plane for `n` elements.
    pub(crate) fn tail_bytes(self, n: usize) -> usize {
        (n * self.tail_bits() as usize).div_ceil(8)
    }
    /// Value written by the decode table for head `h`: the head in place.
    fn head_value(self, h: usize) -> u32 {
        (h as u32) << self.low_bits()
    }
}

/// The elements of `bytes` (little-endian, `W` = 2 or 4 bytes each).
#[inline(always)]
fn elements<const W: usize>(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes.chunks_exact(W).map(|c| {
        if W == 2 {
            u32::from(u16::from_le_bytes([c[0], c[1]]))
        } else {
            u32::from_le_bytes([c[0], c[1], c[2], c[3]])
        }
    })
}

/// Histogram of heads at `k = format.max_k()`; coarser `k` are marginals.
pub(crate) fn head_histogram(format: FloatFormat, bytes: &[u8]) -> Vec<u64> {
    fn hist<const W: usize>(bytes: &[u8], lb: u32, hb: u32) -> Vec<u64> {
        // Eight interleaved histograms: trained weights repeat a few heads,
        // and consecutive increments of one counter would serialise.
        const SIZE: usize = 1 << MAX_HEAD_BITS;
        assert!(hb as usize <= MAX_HEAD_BITS as usize && bytes.len() / W < u32::MAX as usize);
        let mut h = vec![[0u32; SIZE]; 8];
        let mask = (1u32 << hb) - 1;
        let mut it = bytes.chunks_exact(8 * W);
        for c in &mut it {
            for (hj, w) in h.iter_mut().zip(elements::<W>(c)) {
                hj[((w >> lb) & mask) as usize & (SIZE - 1)] += 1;
            }
        }
        for w in elements::<W>(it.remainder()) {
            h[0][((w >> lb) & mask) as usize & (SIZE - 1)] += 1;
        }
        (0..1usize << hb)
            .map(|s| h.iter().map(|hj| u64::from(hj[s])).sum())
            .collect()
    }
    let split = Split {
        format,
        k: format.max_k(),
    };
    match format.bytes() {
        2 => hist::<2>(bytes, split.low_bits(), split.head_bits()),
        _ => hist::<4>(bytes, split.low_bits(), split.head_bits()),
    }
}

/// A chosen coding for one tensor.
pub(crate) struct FloatModel {
    pub(crate) split: Split,
    pub(crate) table: FreqTable,
}

/// Chooses `k` and the head table minimising the coded size of a tensor of
/// `n` elements, split into `chunks` chunks with `lanes` states each; `None`
/// when storing it raw is at least as small.
pub(crate) fn choose_model(
    format: FloatFormat,
    hist_max_k: &[u64],
    n: u64,
    chunk_lens: &[usize],
) -> Option<FloatModel> {
    if n == 0 {
        return None;
    }
    let kmax = format.max_k();
    let flush_bits: u64 = chunk_lens
        .iter()
        .map(|&c| 8 * (4 + rans::Layout::for_len(c).min_bytes()) as u64)
        .sum();
    let raw_bits = n * u64::from(format.bits());
    // Exact coded size of one candidate.
    let cost = |split: Split, counts: &[u64], scale: u32| {
        let table = FreqTable::from_counts(counts, scale)?;
        let bits = table.cost_bits(counts)
            + table.serialized_bits() as f64
            + (n * u64::from(split.tail_bits()) + flush_bits) as f64;
        Some((bits, FloatModel { split, table }))
    };
    let better = |a: Option<(f64, FloatModel)>, b: Option<(f64, FloatModel)>| match (a, b) {
        (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
        (a, b) => a.or(b),
    };
    // Rank every k by its ideal size (entropy, tails, about 8 bits of table
    // per present symbol), then price the three best exactly at the default
    // scale, and try coarser scales for the winner (smaller tables pay off
    // for small tensors).
    // The histogram is sparse (trained weights use a few dozen exponents):
    // work on its nonzero bins.
    let present: Vec<(usize, u64)> = hist_max_k
        .iter()
        .enumerate()
        .filter(|&(_, &c)| c > 0)
        .map(|(j, &c)| (j, c))
        .collect();
    let mut ranked: Vec<(f64, Split, Vec<u64>)> = (0..=kmax)
        .map(|k| {
            let shift = kmax - k;
            let split = Split { format, k };
            let mut counts = vec![0u64; 1 << split.head_bits()];
            for &(j, c) in &present {
                counts[j >> shift] += c;
            }
            let total = n as f64;
            let mut ideal = 0.0;
            let mut last = usize::MAX;
            for &(j, _) in &present {
                let s = j >> shift;
                if s != last {
                    let c = counts[s] as f64;
                    ideal += c * (total / c).log2() + 8.0;
                    last = s;
                }
            }
            (
                ideal + (n * u64::from(split.tail_bits())) as f64,
                split,
                counts,
            )
        })
        .collect();
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut best = None;
    let mut best_counts = Vec::new();
    for (_, split, counts) in ranked.into_iter().take(3) {
        let cand = cost(split, &counts, rans::scale_for(&counts));
        if cand
            .as_ref()
            .is_some_and(|c| best.as_ref().is_none_or(|b: &(f64, FloatModel)| c.0 < b.0))
        {
            best_counts = counts;
        }
        best = better(best, cand);
    }
    if let Some((_, m)) = &best {
        let (split, scale) = (m.split, m.table.scale_bits());
        for s in scale.saturating_sub(2).max(1)..scale {
            best = better(best, cost(split, &best_counts, s));
        }
    }
    best.filter(|(bits, _)| *bits < raw_bits as f64)
        .map(|(_, m)| m)
}

/// Encodes one chunk of `bytes` (whole elements) into a payload.
pub(crate) fn encode_chunk(
    split: Split,
    enc: &Encoder,
    bytes: &[u8],
) -> Result<Vec<u8>, StreamError> {
    match split.format.bytes() {
        2 => encode_chunk_w::<2>(split, enc, bytes),
        _ => encode_chunk_w::<4>(split, enc, bytes),
    }
}

fn encode_chunk_w<const W: usize>(
    split: Split,
    enc: &Encoder,
    bytes: &[u8],
) -> Result<Vec<u8>, StreamError> {
    let n = bytes.len() / W;
    let tail_len = split.tail_bytes(n);
    // Room for the stream (at most ~2 bytes per head) and the tails.
    let mut out = Vec::with_capacity(4 + 2 * n + 2048 + tail_len + 16);
    out.extend_from_slice(&[0; 4]);
    HEADS.with_borrow_mut(|heads| {
        if heads.len() < n {
            heads.resize(n, 0);
        }
        let heads = &mut heads[..n];
        extract_heads::<W>(split, bytes, heads);
        enc.encode_u16_into(heads, rans::Layout::for_len(n), &mut out)
    })?;
    let slen = out.len() - 4;
    out[..4].copy_from_slice(&(slen as u32).to_le_bytes());
    pack_tails::<W>(split, bytes, &mut out);
    debug_assert_eq!(out.len(), 4 + slen + tail_len);
    Ok(out)
}

thread_local! {
    /// Reused head buffer of the encoder.
    static HEADS: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `heads[i] = (w_i >> lb) mod 2^(E + k)`.
fn extract_heads<const W: usize>(split: Split, bytes: &[u8], heads: &mut [u16]) {
    let lb = split.low_bits();
    let hmask = (1u32 << split.head_bits()) - 1;
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if W == 2 && crate::simd::avx512_vbmi() {
        // SAFETY: the CPU supports AVX-512BW.
        done = unsafe { extract_heads16_avx512(bytes, lb, hmask as u16, heads) };
    }
    for (h, w) in heads[done..]
        .iter_mut()
        .zip(elements::<W>(&bytes[done * W..]))
    {
        *h = ((w >> lb) & hmask) as u16;
    }
}

/// 32 heads per step; returns the number written.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn extract_heads16_avx512(bytes: &[u8], lb: u32, hmask: u16, heads: &mut [u16]) -> usize {
    use std::arch::x86_64::*;
    let n = (bytes.len() / 2).min(heads.len()) / 32 * 32;
    let count = _mm_cvtsi32_si128(lb as i32);
    let mask = _mm512_set1_epi16(hmask as i16);
    for i in (0..n).step_by(32) {
        // SAFETY: i + 32 <= n elements of both buffers.
        unsafe {
            let v = _mm512_loadu_si512(bytes.as_ptr().add(2 * i).cast());
            let h = _mm512_and_si512(_mm512_srl_epi16(v, count), mask);
            _mm512_storeu_si512(heads.as_mut_ptr().add(i).cast(), h);
        }
    }
    n
}

/// Appends the tail plane of `bytes`: per element `sign << lb | low`, `R`
/// bits, LSB-first.
fn pack_tails<const W: usize>(split: Split, bytes: &[u8], out: &mut Vec<u8>) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::bmi2() {
        // SAFETY: the CPU supports BMI2.
        return unsafe { pack_tails_pext::<W>(split, bytes, out) };
    }
    let lb = split.low_bits();
    let lmask = (1u32 << lb) - 1;
    let sign_shift = split.format.bits() - 1;
    let tb = split.tail_bits();
    let mut acc = 0u64;
    let mut nbits = 0u32;
    for w in elements::<W>(bytes) {
        let t = ((w >> sign_shift) << lb) | (w & lmask);
        acc |= u64::from(t) << nbits;
        nbits += tb;
        if nbits >= 32 {
            out.extend_from_slice(&(acc as u32).to_le_bytes());
            acc >>= 32;
            nbits -= 32;
        }
    }
    out.extend_from_slice(&acc.to_le_bytes()[..nbits.div_ceil(8) as usize]);
}

/// [`pack_tails`] with one bit extract per 8 bytes: `pext` with the sign
/// and low-mantissa bits of every element set in the mask gathers the tails
/// of 4 (16-bit) or 2 (32-bit) elements in order, each already in the
/// `sign << lb | low` layout.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "bmi2")]
unsafe fn pack_tails_pext<const W: usize>(split: Split, bytes: &[u8], out: &mut Vec<u8>) {
    use std::arch::x86_64::_pext_u64;
    let lb = split.low_bits();
    let tb = split.tail_bits();
    let per_word = 8 / W as u32;
    let one_mask = (1u64 << (8 * W as u32 - 1)) | ((1u64 << lb) - 1);
    let mask = (0..per_word).fold(0u64, |m, i| m | one_mask << (8 * W as u32 * i));
    let mut rest = bytes;
    if W == 2 && tb <= 8 {
        // Eight elements (two words) give exactly tb bytes: no carry between
        // groups, one possibly overlapping 8-byte store per group.
        let groups = bytes.len() / 16;
        let start = out.len();
        out.resize(start + groups * tb as usize + 8, 0);
        let dst = &mut out[start..];
        for (g, c) in bytes.chunks_exact(16).enumerate() {
            let lo = _pext_u64(
                u64::from_le_bytes(c[..8].try_into().expect("8 bytes")),
                mask,
            );
            let hi = _pext_u64(
                u64::from_le_bytes(c[8..].try_into().expect("8 bytes")),
                mask,
            );
            let at = g * tb as usize;
            dst[at..at + 8].copy_from_slice(&(lo | hi << (4 * tb)).to_le_bytes());
        }
        out.truncate(start + groups * tb as usize);
        rest = &bytes[groups * 16..];
    }
    let step = per_word * tb;
    let mut acc = 0u128;
    let mut nbits = 0u32;
    let mut words = rest.chunks_exact(8);
    for c in &mut words {
        let bits = _pext_u64(u64::from_le_bytes(c.try_into().expect("8 bytes")), mask);
        acc |= u128::from(bits) << nbits;
        nbits += step;
        if nbits >= 64 {
            out.extend_from_slice(&(acc as u64).to_le_bytes());
            acc >>= 64;
            nbits -= 64;
        }
    }
    // The last 1-3 elements.
    let lmask = (1u32 << lb) - 1;
    let sign_shift = split.format.bits() - 1;
    for w in elements::<W>(words.remainder()) {
        let t = ((w >> sign_shift) << lb) | (w & lmask);
        acc |= u128::from(t) << nbits;
        nbits += tb;
    }
    let rest = acc.to_le_bytes();
    out.extend_from_slice(&rest[..nbits.div_ceil(8) as usize]);
}

/// Decode tables for one tensor.
pub(crate) enum FloatDecoder {
    /// 16-bit formats: the head value fits a `u16`.
    Half(DecodeTable<u16>),
    /// f32.
    Single(DecodeTable<u32>),
}

impl FloatDecoder {
    pub(crate) fn new(split: Split, table: &FreqTable) -> Self {
        if split.format.bits() == 16 {
            Self::Half(DecodeTable::new(table, |h| split.head_value(h) as u16))
        } else {
            Self::Single(DecodeTable::new(table, |h| split.head_value(h)))
        }
    }
}

/// Why a float chunk payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ChunkError {
    #[error("payload of {len} bytes is inconsistent with {n} elements (stream {stream} bytes)")]
    Framing { len: usize, n: usize, stream: usize },
    #[error(transparent)]
    Stream(#[from] StreamError),
}

thread_local! {
    static SCRATCH16: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
    static SCRATCH32: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Elements decoded per block: heads go to an L1-sized scratch buffer, then
/// merge with their tails. A multiple of 32 lanes and of 8 (so that each
/// block's tail starts on a byte boundary).
const BLOCK: usize = 4096;

/// Decodes a chunk payload into `out` (whole elements).
pub(crate) fn decode_chunk(
    split: Split,
    dec: &FloatDecoder,
    payload: &[u8],
    out: &mut [u8],
    hash: &mut Xxh3Stream,
) -> Result<(), ChunkError> {
    let width = split.format.bytes();
    let n = out.len() / width;
    let framing = |stream| ChunkError::Framing {
        len: payload.len(),
        n,
        stream,
    };
    let slen =
        u32::from_le_bytes(payload.get(..4).ok_or(framing(0))?.try_into().expect("4")) as usize;
    let tail_len = split.tail_bytes(n);
    if 4usize
        .checked_add(slen)
        .and_then(|v| v.checked_add(tail_len))
        != Some(payload.len())
    {
        return Err(framing(slen));
    }
    let stream = &payload[4..4 + slen];
    let tail = &payload[4 + slen..];
    let tb = split.tail_bits() as usize;
    match dec {
        FloatDecoder::Half(t) => SCRATCH16.with_borrow_mut(|heads| {
            let mut d = rans::Decoder::new(stream, t)?;
            // Whole groups with the fused kernel, the rest block by block.
            let done = fused_blocks(&mut d, split, tail, out, hash);
            heads.resize(BLOCK, 0);
            for (b, o) in out[done * 2..].chunks_mut(BLOCK * 2).enumerate() {
                let h = &mut heads[..o.len() / 2];
                d.decode(h)?;
                merge16(split, h, &tail[(done + b * BLOCK) * tb / 8..], o);
            }
            Ok(d.finish()?)
        }),
        FloatDecoder::Single(t) => SCRATCH32.with_borrow_mut(|heads| {
            let mut d = rans::Decoder::new(stream, t)?;
            let done = fused_blocks(&mut d, split, tail, out, hash);
            heads.resize(BLOCK, 0);
            for (b, o) in out[done * 4..].chunks_mut(BLOCK * 4).enumerate() {
                let h = &mut heads[..o.len() / 4];
                d.decode(h)?;
                merge32(split, h, &tail[(done + b * BLOCK) * tb / 8..], o);
            }
            Ok(d.finish()?)
        }),
    }
}

/// Runs the fused kernel over `out` in L1-sized pieces, hashing each piece
/// right after it is written; returns the elements written (a multiple of
/// 16), stopping early where the kernel does (no AVX-512, or the end of a
/// stream is near).
fn fused_blocks<T: rans::SymbolValue>(
    d: &mut rans::Decoder<'_, T>,
    split: Split,
    tail: &[u8],
    out: &mut [u8],
    hash: &mut Xxh3Stream,
) -> usize {
    // 8 Ki elements: 16 or 32 KiB of output, a multiple of every group.
    const PIECE: usize = 8192;
    let width = split.format.bytes();
    let n = out.len() / width;
    let tb = split.tail_bits() as usize;
    let mut done = 0;
    while done < n {
        let end = (done + PIECE).min(n);
        let got = fused(
            d,
            split,
            &tail[done * tb / 8..],
            &mut out[done * width..end * width],
        );
        done += got;
        hash.update(out, done * width);
        if done < end {
            break;
        }
    }
    done
}

/// Decodes and merges as many whole groups of elements as the fused
/// AVX-512 kernel can (none without AVX-512 or with fewer than 16 lanes per
/// stream); returns the number of elements written. Element counts it
/// returns are multiples of 16, so the remaining tails start on a byte.
fn fused<T: rans::SymbolValue>(
    d: &mut rans::Decoder<'_, T>,
    split: Split,
    tail: &[u8],
    out: &mut [u8],
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if d.layout.lanes == 16 && d.next == 0 && crate::simd::avx512_vbmi() {
        // SAFETY: the CPU supports the kernel's features.
        return unsafe {
            match d.layout.streams {
                1 => fused_avx512::<T, 1>(d, split, tail, out),
                2 => fused_avx512::<T, 2>(d, split, tail, out),
                4 => fused_avx512::<T, 4>(d, split, tail, out),
                8 => fused_avx512::<T, 8>(d, split, tail, out),
                _ => 0,
            }
        };
    }
    let _ = (d, split, tail, out);
    0
}

/// The fused kernel: per stream and group, one rANS step gives 16 heads
/// (already shifted into place by the decode table); a byte permutation and
/// per-lane shifts extract the 16 matching tails (as in
/// [`merge_avx512_w32`]); the merged elements are stored directly, without
/// a scratch buffer.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,popcnt")]
unsafe fn fused_avx512<T: rans::SymbolValue, const S: usize>(
    d: &mut rans::Decoder<'_, T>,
    split: Split,
    tail: &[u8],
    out: &mut [u8],
) -> usize {
    use crate::rans::{Avx512Consts, avx512_step};
    use std::arch::x86_64::*;
    const V: usize = 16;
    let width = split.format.bytes();
    let n = out.len() / width;
    let streams = S;
    debug_assert_eq!(d.layout.streams, S);
    let l = d.table.scale_bits;
    assert!(d.table.wide.len() == 1 << l && streams <= 8);
    let wide = d.table.wide.as_ptr().cast::<i64>();
    let k = Avx512Consts::new(l);
    let data = d.data;
    // Tail extraction constants: lane i's tail starts at bit i * tb.
    let tb = split.tail_bits() as usize;
    let lb = split.low_bits();
    let mut idx = [0u8; 64];
    let mut sh = [0u32; 16];
    for i in 0..16 {
        let bit = i * tb;
        for b in 0..4 {
            idx[4 * i + b] = (bit / 8 + b) as u8;
        }
        sh[i] = (bit % 8) as u32;
    }
    // SAFETY: the arrays hold exactly 64 bytes.
    let (idx, sh) = unsafe {
        (
            _mm512_loadu_si512(idx.as_ptr().cast()),
            _mm512_loadu_si512(sh.as_ptr().cast()),
        )
    };
    // The tail's sign bit (bit lb) moves to the top bit of the element; bits
    // of t above the tail are masked away by the two ternary ORs.
    let bits = split.format.bits();
    let sign_up = _mm_cvtsi32_si128((bits - 1 - lb) as i32);
    let sign_bit = _mm512_set1_epi32((1u32 << (bits - 1)) as i32);
    let lmask = _mm512_set1_epi32(((1u32 << lb) - 1) as i32);
    let group_tail = 2 * tb; // bytes of 16 tails

    let mut xv = [_mm512_setzero_si512(); S];
    for (s, v) in xv.iter_mut().enumerate() {
        // SAFETY: d.x holds 8 * 16 states.
        *v = unsafe { _mm512_loadu_si512(d.x.as_ptr().add(s * V).cast()) };
    }
    // Merges 16 heads with their tails and stores them at element e.
    let merge = |heads: __m512i, e: usize, out: &mut [u8]| {
        let start = e / V * group_tail;
        // SAFETY: the loads touch only tail[start..start + 64] or, near the
        // end, the masked bytes inside the tail; out holds n >= e + 16
        // elements of `width` bytes.
        unsafe {
            let src = tail.as_ptr().add(start);
            let bytes = if start + 64 <= tail.len() {
                _mm512_loadu_si512(src.cast())
            } else {
                let avail = tail.len() - start;
                _mm512_maskz_loadu_epi8((1u64 << avail) - 1, src.cast())
            };
            let t = _mm512_srlv_epi32(_mm512_permutexvar_epi8(idx, bytes), sh);
            // heads | (t << (bits-1-lb) & sign_bit) | (t & lmask)
            let v =
                _mm512_ternarylogic_epi32::<0xF8>(heads, _mm512_sll_epi32(t, sign_up), sign_bit);
            let v = _mm512_ternarylogic_epi32::<0xF8>(v, t, lmask);
            if width == 2 {
                _mm256_storeu_si256(out.as_mut_ptr().add(2 * e).cast(), _mm512_cvtepi32_epi16(v));
            } else {
                _mm512_storeu_si512(out.as_mut_ptr().add(4 * e).cast(), v);
            }
        }
    };
    // Software pipelining: the heads of group g are merged while group g+1
    // decodes, so the merge does not wait in the scheduler for the gathers.
    let mut pos = d.pos;
    let mut e0 = 0;
    let mut prev = [_mm512_setzero_si512(); S];
    let mut have_prev = false;
    while e0 + V * streams <= n && (0..streams).all(|s| pos[s] + 2 * V <= d.end[s]) {
        let mut cur = [_mm512_setzero_si512(); S];
        for (s, xs) in xv.iter_mut().enumerate() {
            cur[s] = avx512_step!(*xs, k, wide, data, pos[s]);
        }
        if have_prev {
            for (s, &h) in prev.iter().enumerate() {
                merge(h, e0 - V * streams + s * V, out);
            }
        }
        prev = cur;
        have_prev = true;
        e0 += V * streams;
    }
    if have_prev {
        for (s, &h) in prev.iter().enumerate() {
            merge(h, e0 - V * streams + s * V, out);
        }
    }
    for (s, v) in xv.iter().enumerate() {
        // SAFETY: d.x holds 8 * 16 states.
        unsafe { _mm512_storeu_si512(d.x.as_mut_ptr().add(s * V).cast(), *v) };
    }
    d.pos = pos;
    e0
}

/// Writes `head | sign << 15 | low` for 16-bit formats; `tail` starts at the
/// block's first element and holds at least its tails.
fn merge16(split: Split, heads: &[u16], tail: &[u8], out: &mut [u8]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx512_vbmi() {
        // SAFETY: the CPU supports the required features.
        done = unsafe {
            if split.tail_bits() <= 9 {
                merge16_avx512_w16(split, heads, tail, out)
            } else {
                merge_avx512_w32(split, Heads::Half(heads), tail, out)
            }
        };
    }
    let tb = split.tail_bits() as usize;
    let lb = split.low_bits();
    let lmask = (1u16 << lb) - 1;
    for (i, (o, &h)) in out.chunks_exact_mut(2).zip(heads).enumerate().skip(done) {
        let t = read_bits(tail, i * tb, tb as u32) as u16;
        let w = h | ((t >> lb) << 15) | (t & lmask);
        o.copy_from_slice(&w.to_le_bytes());
    }
}

/// Writes `head | sign << 31 | low` for f32.
fn merge32(split: Split, heads: &[u32], tail: &[u8], out: &mut [u8]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx512_vbmi() {
        // SAFETY: the CPU supports the required features.
        done = unsafe { merge_avx512_w32(split, Heads::Single(heads), tail, out) };
    }
    let tb = split.tail_bits();
    let lb = split.low_bits();
    let lmask = (1u32 << lb) - 1;
    for (i, (o, &h)) in out.chunks_exact_mut(4).zip(heads).enumerate().skip(done) {
        let t = read_bits(tail, i * tb as usize, tb) as u32;
        let w = h | ((t >> lb) << 31) | (t & lmask);
        o.copy_from_slice(&w.to_le_bytes());
    }
}

/// Heads of either width, for the 32-bit-lane merge.
#[cfg(target_arch = "x86_64")]
enum Heads<'a> {
    Half(&'a [u16]),
    Single(&'a [u32]),
}

/// 32 elements per step, one 16-bit lane each: a byte permutation puts the
/// two bytes holding element `i`'s tail (at bit `i R`) into lane `i`, a
/// per-lane shift aligns it, and the sign moves to bit 15. Needs `R <= 9`.
/// Returns the number of elements merged (whole groups of 32).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn merge16_avx512_w16(split: Split, heads: &[u16], tail: &[u8], out: &mut [u8]) -> usize {
    use std::arch::x86_64::*;
    let tb = split.tail_bits() as usize;
    debug_assert!(tb <= 9);
    let lb = split.low_bits();
    let mut idx = [0u8; 64];
    let mut sh = [0u16; 32];
    for i in 0..32 {
        let bit = i * tb;
        idx[2 * i] = (bit / 8) as u8;
        idx[2 * i + 1] = (bit / 8 + 1) as u8;
        sh[i] = (bit % 8) as u16;
    }
    // SAFETY (all loads below): the arrays hold exactly 64 bytes.
    let idx = unsafe { _mm512_loadu_si512(idx.as_ptr().cast()) };
    let sh = unsafe { _mm512_loadu_si512(sh.as_ptr().cast()) };
    let tmask = _mm512_set1_epi16(((1u32 << tb) - 1) as i16);
    let lmask = _mm512_set1_epi16(((1u32 << lb) - 1) as i16);
    let lbv = _mm_cvtsi32_si128(lb as i32);
    let groups = heads.len().min(out.len() / 2) / 32;
    let group_bytes = 4 * tb; // 32 tails of tb bits
    for g in 0..groups {
        let start = g * group_bytes;
        let avail = tail.len().saturating_sub(start).min(64);
        if avail < group_bytes {
            return g * 32;
        }
        let m: u64 = if avail == 64 {
            u64::MAX
        } else {
            (1u64 << avail) - 1
        };
        // SAFETY: the mask covers only bytes start..start + avail, in bounds;
        // heads and out hold 32 elements at g * 32 (g < groups).
        unsafe {
            let bytes = _mm512_maskz_loadu_epi8(m, tail.as_ptr().add(start).cast());
            let w = _mm512_permutexvar_epi8(idx, bytes);
            let t = _mm512_and_si512(_mm512_srlv_epi16(w, sh), tmask);
            let sign = _mm512_slli_epi16::<15>(_mm512_srl_epi16(t, lbv));
            let h = _mm512_loadu_si512(heads.as_ptr().add(g * 32).cast());
            let v = _mm512_or_si512(h, _mm512_or_si512(sign, _mm512_and_si512(t, lmask)));
            _mm512_storeu_si512(out.as_mut_ptr().add(g * 64).cast(), v);
        }
    }
    groups * 32
}

/// 16 elements per step, one 32-bit lane each (any tail width up to 25
/// bits): f32, and f16 with wide tails.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn merge_avx512_w32(split: Split, heads: Heads<'_>, tail: &[u8], out: &mut [u8]) -> usize {
    use std::arch::x86_64::*;
    let tb = split.tail_bits() as usize;
    let lb = split.low_bits();
    let sign_shift = split.format.bits() - 1;
    let mut idx = [0u8; 64];
    let mut sh = [0u32; 16];
    for i in 0..16 {
        let bit = i * tb;
        for b in 0..4 {
            idx[4 * i + b] = (bit / 8 + b) as u8;
        }
        sh[i] = (bit % 8) as u32;
    }
    // SAFETY (both loads): the arrays hold exactly 64 bytes.
    let idx = unsafe { _mm512_loadu_si512(idx.as_ptr().cast()) };
    let sh = unsafe { _mm512_loadu_si512(sh.as_ptr().cast()) };
    let tmask = _mm512_set1_epi32(((1u64 << tb) - 1) as i32);
    let lmask = _mm512_set1_epi32(((1u32 << lb) - 1) as i32);
    let lbv = _mm_cvtsi32_si128(lb as i32);
    let ssv = _mm_cvtsi32_si128(sign_shift as i32);
    let n = match heads {
        Heads::Half(h) => h.len().min(out.len() / 2),
        Heads::Single(h) => h.len().min(out.len() / 4),
    };
    let groups = n / 16;
    let group_bytes = 2 * tb; // 16 tails of tb bits
    for g in 0..groups {
        let start = g * group_bytes;
        let avail = tail.len().saturating_sub(start).min(64);
        if avail < group_bytes {
            return g * 16;
        }
        let m: u64 = if avail == 64 {
            u64::MAX
        } else {
            (1u64 << avail) - 1
        };
        // SAFETY: masked load within bounds; heads/out hold 16 elements at g * 16.
        unsafe {
            let bytes = _mm512_maskz_loadu_epi8(m, tail.as_ptr().add(start).cast());
            let w = _mm512_permutexvar_epi8(idx, bytes);
            let t = _mm512_and_si512(_mm512_srlv_epi32(w, sh), tmask);
            let sign = _mm512_sll_epi32(_mm512_srl_epi32(t, lbv), ssv);
            let low = _mm512_or_si512(sign, _mm512_and_si512(t, lmask));
            match heads {
                Heads::Half(h) => {
                    let hv =
                        _mm512_cvtepu16_epi32(_mm256_loadu_si256(h.as_ptr().add(g * 16).cast()));
                    let v = _mm512_cvtepi32_epi16(_mm512_or_si512(hv, low));
                    _mm256_storeu_si256(out.as_mut_ptr().add(g * 32).cast(), v);
                }
                Heads::Single(h) => {
                    let hv = _mm512_loadu_si512(h.as_ptr().add(g * 16).cast());
                    _mm512_storeu_si512(
                        out.as_mut_ptr().add(g * 64).cast(),
                        _mm512_or_si512(hv, low),
                    );
                }
            }
        }
    }
    groups * 16
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha8Rng;
    use rand_chacha::rand_core::{Rng, SeedableRng};

    fn round_trip(format: FloatFormat, bytes: &[u8]) {
        let n = bytes.len() / format.bytes();
        let hist = head_histogram(format, bytes);
        for k in 0..=format.max_k() {
            let split = Split { format, k };
            let shift = format.max_k() - k;
            let mut counts = vec![0u64; 1 << split.head_bits()];
            for (j, &c) in hist.iter().enumerate() {
                counts[j >> shift] += c;
            }
            let table = FreqTable::from_counts(&counts, rans::scale_for(&counts)).unwrap();
            let payload = encode_chunk(split, &Encoder::new(&table), bytes).unwrap();
            assert!(payload.len() >= 4 + split.tail_bytes(n));
            let mut out = vec![0u8; bytes.len()];
            let mut h = Xxh3Stream::new();
            decode_chunk(
                split,
                &FloatDecoder::new(split, &table),
                &payload,
                &mut out,
                &mut h,
            )
            .unwrap();
            assert_eq!(h.finish(&out), crate::checksum::xxh3_64(bytes));
            assert!(out == bytes, "{format:?} k={k} n={n}");
        }
    }

    #[test]
    fn random_bit_patterns_round_trip_every_k() {
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        for format in [FloatFormat::Bf16, FloatFormat::F16, FloatFormat::F32] {
            for n in [1usize, 2, 3, 7, 8, 9, 31, 33, 1000, 5003] {
                let bytes: Vec<u8> = (0..n * format.bytes())
                    .map(|_| rng.next_u32() as u8)
                    .collect();
                round_trip(format, &bytes);
            }
        }
    }

    /// Bit patterns of bell-shaped weights with a sprinkling of random
    /// patterns (NaN, Inf, subnormals among them).
    fn weights(rng: &mut ChaCha8Rng, format: FloatFormat, n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| {
                let u: f32 = (0..4)
                    .map(|_| rng.next_u32() as f32 / u32::MAX as f32 - 0.5)
                    .sum::<f32>()
                    * 0.03;
                let r = rng.next_u32();
                let bits = u.to_bits();
                let v: u32 = match format {
                    FloatFormat::Bf16 => bits >> 16,
                    // Rescaled so the f16 exponent field is in range.
                    FloatFormat::F16 => {
                        ((bits >> 16) & 0x8000)
                            | ((((bits >> 23) & 0xff).saturating_sub(112).min(30)) << 10)
                            | ((bits >> 13) & 0x3ff)
                    }
                    FloatFormat::F32 => bits,
                };
                let v = if i % 101 == 0 { r } else { v };
                let v = v.to_le_bytes();
                v[..format.bytes()].to_vec()
            })
            .collect()
    }

    #[test]
    fn long_chunks_round_trip_every_k() {
        // Long enough for 2 and 4 streams of 16 lanes: the fused AVX-512
        // kernel where the CPU has it, plus a scalar remainder.
        let mut rng = ChaCha8Rng::seed_from_u64(23);
        for format in [FloatFormat::Bf16, FloatFormat::F16, FloatFormat::F32] {
            for n in [40_000usize, 140_003] {
                let bytes = weights(&mut rng, format, n);
                round_trip(format, &bytes);
            }
        }
    }

    #[test]
    fn scalar_kernels_round_trip_long_chunks() {
        // The portable paths (no AVX-512) on the same data.
        let mut rng = ChaCha8Rng::seed_from_u64(25);
        crate::simd::scalar_only(|| {
            for format in [FloatFormat::Bf16, FloatFormat::F16, FloatFormat::F32] {
                for n in [40_000usize, 140_003] {
                    round_trip(format, &weights(&mut rng, format, n));
                }
            }
        });
    }

    #[test]
    fn garbage_payloads_never_panic() {
        let mut rng = ChaCha8Rng::seed_from_u64(24);
        for format in [FloatFormat::Bf16, FloatFormat::F32] {
            let n = 40_000;
            let bytes = weights(&mut rng, format, n);
            let hist = head_histogram(format, &bytes);
            let m = choose_model(format, &hist, n as u64, &[n * format.bytes()]).unwrap();
            let payload = encode_chunk(m.split, &Encoder::new(&m.table), &bytes).unwrap();
            let dec = FloatDecoder::new(m.split, &m.table);
            let mut out = vec![0u8; bytes.len()];
            for k in 0..100 {
                let mut bad = payload.clone();
                let i = rng.next_u32() as usize % bad.len();
                bad[i] ^= 1 << (k % 8);
                if k % 10 == 0 {
                    bad.truncate(i);
                }
                let ok =
                    decode_chunk(m.split, &dec, &bad, &mut out, &mut Xxh3Stream::new()).is_ok();
                // A flip in the tail plane decodes (to different bytes); a
                // flip in the rANS stream almost always fails.
                assert!(!ok || out != bytes, "flip {k} at {i} had no effect");
            }
        }
    }

    #[test]
    fn model_prefers_raw_for_uniform_bits_and_codes_gaussian_heads() {
        let mut rng = ChaCha8Rng::seed_from_u64(22);
        let n = 100_000;
        let uniform: Vec<u8> = (0..2 * n).map(|_| rng.next_u32() as u8).collect();
        let h = head_histogram(FloatFormat::Bf16, &uniform);
        assert!(choose_model(FloatFormat::Bf16, &h, n as u64, &[2 * n]).is_none());
        // Small-magnitude bf16 values: exponents concentrate.
        let gauss: Vec<u8> = (0..n)
            .flat_map(|_| {
                let u = (rng.next_u32() as f32 / u32::MAX as f32 - 0.5) * 0.02;
                ((u.to_bits() >> 16) as u16).to_le_bytes()
            })
            .collect();
        let h = head_histogram(FloatFormat::Bf16, &gauss);
        let m = choose_model(FloatFormat::Bf16, &h, n as u64, &[2 * n]).unwrap();
        round_trip(FloatFormat::Bf16, &gauss);
        assert!(m.split.k <= 4);
    }
}
