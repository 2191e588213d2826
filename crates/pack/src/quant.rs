//! Entropy coding of bit-packed quantized codes (GPTQ / RTN codes and zero
//! points), bit-exact.
//!
//! # Why
//!
//! A `b`-bit grid spans a group's whole range, but trained weights are
//! bell-shaped, so the outer levels are rare: the empirical entropy of the
//! codes is below `b`. On the demo model's GPTQ database (asymmetric,
//! groups of 128; see `docs/lossless.md`, "Quantized codes") the order-0
//! entropy per layer is 1.75 / 2.60 / 3.63 / 4.66 / 5.67 / 7.65 bits per
//! code at 2 / 3 / 4 / 5 / 6 / 8 bits. Where the grid is asymmetric, the
//! group's zero point `z` (the code that decodes to 0) says where the
//! distribution's peak sits, and the *centered* code `c - z` has lower
//! entropy still at 2-4 bits (1.47 / 2.53 / 3.59 bits).
//!
//! # The coder
//!
//! One static order-0 table per stream (a layer's codes), coded with the
//! crate's interleaved rANS ([`crate::rans`]), over one of two symbol
//! alphabets:
//!
//! ```text
//! Plain:     s = c                      alphabet 2^b
//! Centered:  s = c - z + (2^b - 1)      alphabet 2^(b+1) - 1
//! ```
//!
//! where `z` is the zero point of the code's group. [`encode_codes`] picks
//! whichever of raw, plain and centered is smallest (estimated exactly from
//! the quantized table's cost, the serialized table and the state flushes,
//! then checked against the raw size after encoding).
//!
//! # Layout of a coded stream
//!
//! The caller keeps the code count, bit width and zero points (a database
//! entry's metadata and `zeros` tensor), so the stream does not repeat them:
//!
//! ```text
//! u8 mode         0 raw, 1 plain, 2 centered
//! mode 0:         the packed bytes, verbatim
//! mode 1 and 2:   u32 table length T (little-endian), the T-byte frequency
//!                 table (rANS module format), the rANS stream (the rest;
//!                 layout rans::Layout::for_len(count))
//! ```
//!
//! # Packed codes
//!
//! Codes are packed as dynapress stores them (`dynapress_compress::pack`):
//! value `i` occupies bits `[i b, (i + 1) b)` of one LSB-first bit stream,
//! padded with zero bits to a whole byte. Input whose padding bits are not
//! zero is kept raw, so every input round-trips byte for byte.
//!
//! # Example
//!
//! ```
//! use dynapress_pack::quant::{Groups, decode_codes, encode_codes};
//! // 2-bit codes of 2 rows x 8 columns, groups of 4, packed LSB-first.
//! let codes: [u8; 16] = [1, 2, 1, 1, 2, 2, 1, 3, 1, 1, 0, 1, 2, 1, 1, 2];
//! let mut packed = [0u8; 4];
//! for (i, &c) in codes.iter().enumerate() {
//!     packed[i / 4] |= c << (2 * (i % 4));
//! }
//! let zeros = [1u8, 2, 1, 1];
//! let groups = Groups { zeros: &zeros, cols: 8, group_len: 4 };
//! let blob = encode_codes(&packed, 2, 16, Some(&groups))?;
//! assert_eq!(decode_codes(&blob, 2, 16, Some(&groups))?, packed);
//! # Ok::<(), dynapress_pack::quant::CodesError>(())
//! ```

use crate::bits::{BitReader, BitWriter};
use crate::checksum::Xxh3Stream;
use crate::rans::{
    self, DecodeTable, Decoder, Encoder, FreqTable, Layout, StreamError, TableError,
};

/// Mode byte: packed bytes stored verbatim.
const MODE_RAW: u8 = 0;
/// Mode byte: order-0 code of the codes.
const MODE_PLAIN: u8 = 1;
/// Mode byte: order-0 code of `c - z + maxq`.
const MODE_CENTERED: u8 = 2;

/// Symbols decoded per block before packing (a multiple of 8, so every
/// block packs into whole bytes).
const BLOCK: usize = 8192;

/// The zero points of a layer's groups: codes are row-major with `cols` per
/// row, each row cut into groups of `group_len` (the last one may be
/// shorter), and code `(r, j)` belongs to group
/// `r * ceil(cols / group_len) + j / group_len`. This is dynapress's layout
/// in storage column order (with an act-order permutation too).
#[derive(Clone, Copy, Debug)]
pub struct Groups<'a> {
    /// One unpacked zero point per group, `rows * ceil(cols / group_len)`
    /// values, each `< 2^bits`.
    pub zeros: &'a [u8],
    /// Codes per row.
    pub cols: usize,
    /// Codes per group along a row.
    pub group_len: usize,
}

/// What went wrong while coding or decoding codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodesError {
    /// The bit width is outside `1..=8`.
    #[error("code width must be 1..=8 bits, got {0}")]
    BadBits(u8),
    /// The packed input does not hold `count` codes of `bits` bits.
    #[error("packed codes are {got} bytes, but {count} codes of {bits} bits take {expected}")]
    BadLength {
        /// Bytes given.
        got: usize,
        /// Bytes `count` codes take.
        expected: usize,
        /// Number of codes.
        count: usize,
        /// Bits per code.
        bits: u8,
    },
    /// The zero points do not describe the codes' groups.
    #[error("zero points do not fit the codes: {0}")]
    BadGroups(String),
    /// The coded stream is truncated or inconsistent.
    #[error("coded codes are corrupt: {0}")]
    Corrupt(&'static str),
    /// The frequency table is invalid.
    #[error("coded codes are corrupt: {0}")]
    Table(#[from] TableError),
    /// The rANS stream is invalid.
    #[error("coded codes are corrupt: {0}")]
    Stream(#[from] StreamError),
}

/// Number of bytes `count` codes of `bits` bits take once packed.
pub fn packed_len(count: usize, bits: u8) -> usize {
    (count as u128 * u128::from(bits)).div_ceil(8) as usize
}

/// Entropy-codes `count` codes of `bits` bits, bit-packed in `packed`
/// (see the module docs), returning a stream for [`decode_codes`].
///
/// With `groups`, the centered alphabet `c - z` is considered too (and
/// usually wins for asymmetric grids at 2-4 bits); without, the codes are
/// coded as they are (symmetric grids, or zero points themselves). The
/// result is never more than one byte longer than `packed`.
///
/// Errors: a width outside `1..=8`, `packed` of the wrong length, or zero
/// points that do not fit (wrong count, a zero `>= 2^bits`, `count` not a
/// whole number of rows).
pub fn encode_codes(
    packed: &[u8],
    bits: u8,
    count: usize,
    groups: Option<&Groups<'_>>,
) -> Result<Vec<u8>, CodesError> {
    check_args(packed.len(), bits, count, groups)?;
    let raw = || {
        let mut out = Vec::with_capacity(1 + packed.len());
        out.push(MODE_RAW);
        out.extend_from_slice(packed);
        out
    };
    if count == 0 {
        return Ok(raw());
    }
    let Some(codes) = unpack(packed, bits, count) else {
        // Nonzero padding bits: not something the packer writes, but keep
        // the bytes exactly.
        return Ok(raw());
    };
    let maxq = (1usize << bits) - 1;
    let layout = Layout::for_len(count);
    let estimate = |counts: &[u64]| -> (FreqTable, f64) {
        let t = FreqTable::from_counts(counts, rans::scale_for(counts))
            .expect("non-empty, alphabet <= 511");
        let bytes = 5.0
            + (t.cost_bits(counts) + t.serialized_bits() as f64) / 8.0
            + layout.min_bytes() as f64;
        (t, bytes)
    };
    let (plain, centered) = histograms(&codes, 0, groups, maxq);
    let mut best = (MODE_PLAIN, estimate(&plain));
    if let Some(h) = centered {
        let est = estimate(&h);
        if est.1 < best.1.1 {
            best = (MODE_CENTERED, est);
        }
    }
    let (mode, (table, est)) = best;
    if est >= packed.len() as f64 + 1.0 {
        return Ok(raw());
    }
    let symbols = match groups {
        Some(g) if mode == MODE_CENTERED => center(&codes, 0, g, maxq),
        _ => codes.iter().map(|&c| u16::from(c)).collect(),
    };
    let mut w = BitWriter::default();
    table.write(&mut w);
    let tbytes = w.finish();
    let mut out = Vec::with_capacity(est as usize + 16);
    out.push(mode);
    out.extend_from_slice(&(tbytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&tbytes);
    let stream = Encoder::new(&table)
        .encode_u16(&symbols, layout)
        .expect("table built from these symbols");
    out.extend_from_slice(&stream);
    if out.len() > packed.len() {
        return Ok(raw());
    }
    Ok(out)
}

/// Decodes a stream written by [`encode_codes`] back to the exact packed
/// bytes, given the same `bits`, `count` and `groups`.
///
/// Never panics on malformed input; a damaged stream gives
/// [`CodesError::Corrupt`], [`CodesError::Table`] or [`CodesError::Stream`]
/// (the rANS stream checks its final states, which catches most damage, but
/// it carries no checksum: store one next to it if the data must be
/// verified).
pub fn decode_codes(
    blob: &[u8],
    bits: u8,
    count: usize,
    groups: Option<&Groups<'_>>,
) -> Result<Vec<u8>, CodesError> {
    check_args(packed_len(count, bits), bits, count, groups)?;
    let (&mode, rest) = blob.split_first().ok_or(CodesError::Corrupt("empty"))?;
    let out_len = packed_len(count, bits);
    match mode {
        MODE_RAW => {
            return if rest.len() == out_len {
                Ok(rest.to_vec())
            } else {
                Err(CodesError::Corrupt("raw codes of the wrong length"))
            };
        }
        MODE_PLAIN => {}
        MODE_CENTERED if groups.is_some() => {}
        MODE_CENTERED => return Err(CodesError::Corrupt("centered codes need zero points")),
        _ => return Err(CodesError::Corrupt("unknown mode")),
    }
    if count == 0 {
        return Err(CodesError::Corrupt("coded stream for zero codes"));
    }
    let tlen = rest
        .get(..4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
        .ok_or(CodesError::Corrupt("truncated header"))?;
    let tbytes = rest
        .get(4..4usize.saturating_add(tlen))
        .ok_or(CodesError::Corrupt("truncated table"))?;
    let stream = &rest[4 + tlen..];
    let maxq = (1usize << bits) - 1;
    let alphabet = if mode == MODE_PLAIN {
        maxq + 1
    } else {
        2 * maxq + 1
    };
    let table = FreqTable::read(&mut BitReader::new(tbytes), alphabet as u32)?;
    let dec = DecodeTable::new(&table, |s| s as u16);
    let mut decoder = Decoder::new(stream, &dec)?;
    // `count` comes from the caller; grow as decoded rather than trusting it.
    let mut out = Vec::with_capacity(out_len.min(1 << 20));
    let mut syms = vec![0u16; BLOCK.min(count)];
    let mut codes = vec![0u8; BLOCK.min(count)];
    let mut done = 0;
    while done < count {
        let n = BLOCK.min(count - done);
        decoder.decode(&mut syms[..n])?;
        if mode == MODE_PLAIN {
            for (c, &s) in codes.iter_mut().zip(&syms[..n]) {
                *c = s as u8;
            }
        } else {
            let g = groups.expect("checked above");
            uncenter(&syms[..n], done, g, maxq, &mut codes[..n])?;
        }
        pack_into(&codes[..n], bits, &mut out);
        done += n;
    }
    decoder.finish()?;
    debug_assert_eq!(out.len(), out_len);
    Ok(out)
}

fn check_args(
    packed_len_got: usize,
    bits: u8,
    count: usize,
    groups: Option<&Groups<'_>>,
) -> Result<(), CodesError> {
    if !(1..=8).contains(&bits) {
        return Err(CodesError::BadBits(bits));
    }
    let expected = packed_len(count, bits);
    if packed_len_got != expected {
        return Err(CodesError::BadLength {
            got: packed_len_got,
            expected,
            count,
            bits,
        });
    }
    if let Some(g) = groups {
        let bad = |m: String| Err(CodesError::BadGroups(m));
        if g.cols == 0 || g.group_len == 0 {
            return bad(format!(
                "cols ({}) and group length ({}) must be positive",
                g.cols, g.group_len
            ));
        }
        if !count.is_multiple_of(g.cols) {
            return bad(format!("{count} codes are not whole rows of {}", g.cols));
        }
        let per_row = g.cols.div_ceil(g.group_len);
        let want = (count / g.cols) as u128 * per_row as u128;
        if g.zeros.len() as u128 != want {
            return bad(format!(
                "{} zero points given, {} rows x {per_row} groups need {want}",
                g.zeros.len(),
                count / g.cols
            ));
        }
        if let Some(i) = g.zeros.iter().position(|&z| u32::from(z) >> bits != 0) {
            return bad(format!(
                "zero point {i} is {}, outside {bits}-bit codes",
                g.zeros[i]
            ));
        }
    }
    Ok(())
}

/// Walks codes `start .. start + n` in runs that share a group: calls
/// `f(range, zero)` with the range relative to `start`.
fn for_each_run(
    start: usize,
    n: usize,
    g: &Groups<'_>,
    mut f: impl FnMut(std::ops::Range<usize>, u8),
) {
    let per_row = g.cols.div_ceil(g.group_len);
    let (mut row, mut col) = (start / g.cols, start % g.cols);
    let mut i = 0;
    while i < n {
        let group = col / g.group_len;
        let run = ((group + 1) * g.group_len).min(g.cols) - col;
        let run = run.min(n - i);
        f(i..i + run, g.zeros[row * per_row + group]);
        i += run;
        col += run;
        if col == g.cols {
            col = 0;
            row += 1;
        }
    }
}

/// Histograms of the plain codes and, with `groups`, of the centered
/// symbols, in one pass; `codes` start at code index `start` of the
/// tensor. Four interleaved sub-histograms keep increments of the same bin
/// (frequent with 4-16 symbols) from waiting on each other.
fn histograms(
    codes: &[u8],
    start: usize,
    groups: Option<&Groups<'_>>,
    maxq: usize,
) -> (Vec<u64>, Option<Vec<u64>>) {
    let mut plain = [[0u32; 256]; 4];
    let mut cent = [[0u32; 512]; 4];
    // Counts are u32: flush before any bin could overflow.
    let mut flush_plain = vec![0u64; maxq + 1];
    let mut flush_cent = vec![0u64; 2 * maxq + 1];
    let mut flush = |plain: &mut [[u32; 256]; 4], cent: &mut [[u32; 512]; 4]| {
        for h in plain.iter_mut() {
            for (t, c) in flush_plain.iter_mut().zip(h.iter_mut()) {
                *t += u64::from(std::mem::take(c));
            }
        }
        for h in cent.iter_mut() {
            for (t, c) in flush_cent.iter_mut().zip(h.iter_mut()) {
                *t += u64::from(std::mem::take(c));
            }
        }
    };
    const SPAN: usize = 1 << 30;
    for (k, part) in codes.chunks(SPAN).enumerate() {
        match groups {
            None => {
                let mut quads = part.chunks_exact(4);
                for q in &mut quads {
                    for j in 0..4 {
                        plain[j][usize::from(q[j])] += 1;
                    }
                }
                for &c in quads.remainder() {
                    plain[0][usize::from(c)] += 1;
                }
            }
            Some(g) => for_each_run(start + k * SPAN, part.len(), g, |r, z| {
                let off = maxq - usize::from(z);
                let run = &part[r];
                let mut quads = run.chunks_exact(4);
                for q in &mut quads {
                    for j in 0..4 {
                        let c = usize::from(q[j]);
                        plain[j][c] += 1;
                        cent[j][c + off] += 1;
                    }
                }
                for &c in quads.remainder() {
                    plain[0][usize::from(c)] += 1;
                    cent[0][usize::from(c) + off] += 1;
                }
            }),
        }
        flush(&mut plain, &mut cent);
    }
    (flush_plain, groups.map(|_| flush_cent))
}

/// `c - z + maxq` for every code; `codes` start at code index `start`.
fn center(codes: &[u8], start: usize, g: &Groups<'_>, maxq: usize) -> Vec<u16> {
    let mut out = vec![0u16; codes.len()];
    for_each_run(start, codes.len(), g, |r, z| {
        let shift = maxq as u16 - u16::from(z);
        for (o, &c) in out[r.clone()].iter_mut().zip(&codes[r]) {
            *o = u16::from(c) + shift;
        }
    });
    out
}

/// Inverse of [`center`] for the block of symbols starting at code `start`;
/// a code outside `0..=maxq` means the stream is corrupt.
fn uncenter(
    syms: &[u16],
    start: usize,
    g: &Groups<'_>,
    maxq: usize,
    out: &mut [u8],
) -> Result<(), CodesError> {
    let mut bad = false;
    let maxq = maxq as u16;
    for_each_run(start, syms.len(), g, |r, z| {
        let z = u16::from(z);
        let mut over = 0u16;
        for (o, &s) in out[r.clone()].iter_mut().zip(&syms[r]) {
            // Valid symbols give 0..=maxq; anything else wraps above maxq.
            let c = s.wrapping_add(z).wrapping_sub(maxq);
            over |= u16::from(c > maxq);
            *o = c as u8;
        }
        bad |= over != 0;
    });
    if bad {
        Err(CodesError::Corrupt("a decoded code lies outside the grid"))
    } else {
        Ok(())
    }
}

/// Unpacks `count` codes; `None` if a padding bit is set. The caller has
/// checked the length.
fn unpack(packed: &[u8], bits: u8, count: usize) -> Option<Vec<u8>> {
    padding_is_clear(packed, bits, count).then(|| unpack_values(packed, bits, count))
}

/// Whether the bits after the `count` codes in the last byte of `packed`
/// are zero, i.e. whether [`pack_slice`] of the unpacked codes gives
/// `packed` back. `packed` holds exactly `packed_len(count, bits)` bytes.
pub(crate) fn padding_is_clear(packed: &[u8], bits: u8, count: usize) -> bool {
    let used = count * usize::from(bits);
    used.is_multiple_of(8) || packed[packed.len() - 1] >> (used % 8) == 0
}

/// Unpacks `count` codes of `bits` bits from `packed` (exactly
/// `packed_len(count, bits)` bytes), ignoring any padding bits.
pub(crate) fn unpack_values(packed: &[u8], bits: u8, count: usize) -> Vec<u8> {
    debug_assert_eq!(packed.len(), packed_len(count, bits));
    let mut out = vec![0u8; count];
    match bits {
        1 => unpack_fixed::<1>(packed, &mut out),
        2 => unpack_fixed::<2>(packed, &mut out),
        3 => unpack_fixed::<3>(packed, &mut out),
        4 => unpack_fixed::<4>(packed, &mut out),
        5 => unpack_fixed::<5>(packed, &mut out),
        6 => unpack_fixed::<6>(packed, &mut out),
        7 => unpack_fixed::<7>(packed, &mut out),
        _ => unpack_fixed::<8>(packed, &mut out),
    }
    out
}

/// [`unpack`] for a width known at compile time: `B` bytes hold eight codes.
fn unpack_fixed<const B: usize>(packed: &[u8], out: &mut [u8]) {
    let mask = (1u64 << B) - 1;
    let full = out.len() / 8;
    for (dst, chunk) in out.chunks_exact_mut(8).zip(packed.chunks_exact(B)) {
        let mut word = [0u8; 8];
        word[..B].copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        for (k, d) in dst.iter_mut().enumerate() {
            *d = ((w >> (k * B)) & mask) as u8;
        }
    }
    for (i, d) in out.iter_mut().enumerate().skip(full * 8) {
        *d = crate::bits::read_bits(packed, i * B, B as u32) as u8;
    }
}

/// Appends `codes` packed at `bits` bits; every call but the last must
/// pass a multiple of 8 codes so that the stream stays byte-aligned.
fn pack_into(codes: &[u8], bits: u8, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + packed_len(codes.len(), bits), 0);
    pack_slice(codes, bits, &mut out[start..]);
}

/// Packs `codes` (each `< 2^bits`) at `bits` bits into `out`, which holds
/// exactly `packed_len(codes.len(), bits)` bytes; padding bits are zero.
pub(crate) fn pack_slice(codes: &[u8], bits: u8, out: &mut [u8]) {
    debug_assert_eq!(out.len(), packed_len(codes.len(), bits));
    match bits {
        1 => pack_fixed::<1>(codes, out),
        2 => pack_fixed::<2>(codes, out),
        3 => pack_fixed::<3>(codes, out),
        4 => pack_fixed::<4>(codes, out),
        5 => pack_fixed::<5>(codes, out),
        6 => pack_fixed::<6>(codes, out),
        7 => pack_fixed::<7>(codes, out),
        _ => pack_fixed::<8>(codes, out),
    }
}

/// [`pack_slice`] for a width known at compile time: eight codes make `B`
/// whole bytes.
fn pack_fixed<const B: usize>(codes: &[u8], out: &mut [u8]) {
    let full = codes.len() / 8;
    for (dst, g) in out.chunks_exact_mut(B).zip(codes.chunks_exact(8)) {
        let mut w = 0u64;
        for (k, &c) in g.iter().enumerate() {
            w |= u64::from(c) << (k * B);
        }
        dst.copy_from_slice(&w.to_le_bytes()[..B]);
    }
    let rest = &codes[full * 8..];
    if !rest.is_empty() {
        let mut w = 0u64;
        for (k, &c) in rest.iter().enumerate() {
            w |= u64::from(c) << (k * B);
        }
        let tail = &mut out[full * B..];
        let n = tail.len();
        tail.copy_from_slice(&w.to_le_bytes()[..n]);
    }
}

// ---------------------------------------------------------------------------
// Chunked coding for the container (format 2).
//
// The container keeps one model per tensor in its index (width, mode and
// table) and codes each chunk of the packed bytes as an independent rANS
// stream of that chunk's symbols, so chunks decode in parallel. A chunk
// that is not the tensor's last starts and ends on a multiple of 8 codes
// (`bits` bytes), so code `i` of the chunk is code `first + i` of the
// tensor, and its group (for the centered alphabet) follows.

/// Histograms of `n` codes packed in `packed` that start at code index
/// `first` of their tensor: plain (alphabet `2^bits`) and, with `groups`,
/// centered (alphabet `2^(bits+1) - 1`).
pub(crate) fn chunk_histograms(
    packed: &[u8],
    bits: u8,
    first: usize,
    n: usize,
    groups: Option<&Groups<'_>>,
) -> (Vec<u64>, Option<Vec<u64>>) {
    let codes = unpack_values(packed, bits, n);
    histograms(&codes, first, groups, (1usize << bits) - 1)
}

/// Codes one chunk (`n` codes starting at code `first`) under `enc`, whose
/// table covers every symbol of the tensor: centered on the zero points of
/// `centered` if given, plain otherwise. `None` if the chunk's padding
/// bits are set (the caller stores such a chunk verbatim).
pub(crate) fn encode_chunk(
    enc: &Encoder,
    bits: u8,
    centered: Option<&Groups<'_>>,
    packed: &[u8],
    first: usize,
    n: usize,
) -> Option<Vec<u8>> {
    if !padding_is_clear(packed, bits, n) {
        return None;
    }
    let codes = unpack_values(packed, bits, n);
    let syms: Vec<u16> = match centered {
        Some(g) => center(&codes, first, g, (1usize << bits) - 1),
        None => codes.iter().map(|&c| u16::from(c)).collect(),
    };
    Some(
        enc.encode_u16(&syms, Layout::for_len(n))
            .expect("the table was built from this tensor's symbols"),
    )
}

/// Decodes chunks of one tensor's codes (see [`encode_chunk`]).
pub(crate) struct ChunkDecoder {
    bits: u8,
    centered: bool,
    table: DecodeTable<u16>,
}

impl ChunkDecoder {
    /// A decoder for `bits`-bit codes coded plain or centered under `table`
    /// (alphabet `2^bits` or `2^(bits+1) - 1`, checked by the index reader).
    pub(crate) fn new(bits: u8, centered: bool, table: &FreqTable) -> Self {
        Self {
            bits,
            centered,
            table: DecodeTable::new(table, |s| s as u16),
        }
    }

    /// Decodes the `n` codes starting at code `first` from `payload` into
    /// `out` (exactly `packed_len(n, bits)` bytes; `first` a multiple of 8),
    /// hashing the bytes into `stream` as blocks are written. Never panics
    /// on a malformed payload.
    pub(crate) fn decode(
        &self,
        payload: &[u8],
        first: usize,
        n: usize,
        groups: Option<&Groups<'_>>,
        out: &mut [u8],
        stream: &mut Xxh3Stream,
    ) -> Result<(), CodesError> {
        let bits = self.bits;
        debug_assert_eq!(out.len(), packed_len(n, bits));
        debug_assert!(first.is_multiple_of(8));
        let groups = match (self.centered, groups) {
            (true, None) => return Err(CodesError::Corrupt("centered codes need zero points")),
            (true, g) => g,
            (false, _) => None,
        };
        let maxq = (1usize << bits) - 1;
        let mut decoder = Decoder::new(payload, &self.table)?;
        let mut syms = vec![0u16; BLOCK.min(n)];
        let mut codes = vec![0u8; BLOCK.min(n)];
        let mut done = 0;
        while done < n {
            let m = BLOCK.min(n - done);
            decoder.decode(&mut syms[..m])?;
            match groups {
                None => {
                    // The table's alphabet is 2^bits: every symbol is a code.
                    for (c, &s) in codes.iter_mut().zip(&syms[..m]) {
                        *c = s as u8;
                    }
                }
                Some(g) => uncenter(&syms[..m], first + done, g, maxq, &mut codes[..m])?,
            }
            // `done` is a multiple of BLOCK, hence of 8: whole bytes.
            let at = done * usize::from(bits) / 8;
            let end = at + packed_len(m, bits);
            pack_slice(&codes[..m], bits, &mut out[at..end]);
            stream.update(out, end);
            done += m;
        }
        decoder.finish()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha8Rng;
    use rand_chacha::rand_core::{Rng, SeedableRng};

    /// Codes of a bell-shaped weight on an asymmetric min-max grid per group:
    /// the situation GPTQ/RTN produce.
    fn gaussian_codes(
        rng: &mut ChaCha8Rng,
        rows: usize,
        cols: usize,
        group_len: usize,
        bits: u8,
    ) -> (Vec<u8>, Vec<u8>) {
        let maxq = f64::from((1u16 << bits) - 1);
        let mut codes = Vec::with_capacity(rows * cols);
        let mut zeros = Vec::new();
        let mut normal = || {
            // Box-Muller from two uniforms in (0, 1].
            let u1 = (f64::from(rng.next_u32()) + 1.0) / 4294967296.0;
            let u2 = f64::from(rng.next_u32()) / 4294967296.0;
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        };
        for _ in 0..rows {
            let row: Vec<f64> = (0..cols).map(|_| normal()).collect();
            for g in row.chunks(group_len) {
                let lo = g.iter().copied().fold(0.0, f64::min);
                let hi = g.iter().copied().fold(0.0, f64::max);
                let s = (hi - lo) / maxq;
                let z = (-lo / s).round();
                zeros.push(z as u8);
                codes.extend(
                    g.iter()
                        .map(|&x| (x / s + z).round().clamp(0.0, maxq) as u8),
                );
            }
        }
        (codes, zeros)
    }

    fn pack_ref(codes: &[u8], bits: u8) -> Vec<u8> {
        let mut out = Vec::new();
        pack_into(codes, bits, &mut out);
        out
    }

    #[test]
    fn packing_matches_the_compress_crate() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for bits in 1..=8u8 {
            for n in [0usize, 1, 7, 8, 9, 63, 1000, 4099] {
                let codes: Vec<u8> = (0..n)
                    .map(|_| (rng.next_u32() & ((1 << bits) - 1)) as u8)
                    .collect();
                let ours = pack_ref(&codes, bits);
                assert_eq!(ours, dynapress_compress::pack::pack_bits(&codes, bits));
                assert_eq!(ours.len(), packed_len(n, bits));
                assert_eq!(unpack(&ours, bits, n).unwrap(), codes);
                assert_eq!(
                    dynapress_compress::pack::unpack_bits(&ours, bits, n).unwrap(),
                    codes
                );
            }
        }
    }

    #[test]
    fn round_trips_bit_exactly_in_every_mode() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for bits in 1..=8u8 {
            for (rows, cols, group_len) in [(1, 1, 1), (3, 40, 16), (17, 256, 128), (64, 300, 128)]
            {
                let (codes, zeros) = gaussian_codes(&mut rng, rows, cols, group_len, bits);
                let packed = pack_ref(&codes, bits);
                let n = codes.len();
                let g = Groups {
                    zeros: &zeros,
                    cols,
                    group_len,
                };
                for groups in [None, Some(&g)] {
                    let blob = encode_codes(&packed, bits, n, groups).unwrap();
                    assert!(blob.len() <= packed.len() + 1);
                    assert_eq!(decode_codes(&blob, bits, n, groups).unwrap(), packed);
                }
                // Uniform random codes do not compress: stored raw.
                let uniform: Vec<u8> = (0..n)
                    .map(|_| (rng.next_u32() & ((1 << bits) - 1)) as u8)
                    .collect();
                let packed = pack_ref(&uniform, bits);
                let blob = encode_codes(&packed, bits, n, Some(&g)).unwrap();
                if n >= 1000 {
                    assert_eq!(blob[0], MODE_RAW, "bits {bits} n {n}");
                }
                assert_eq!(decode_codes(&blob, bits, n, Some(&g)).unwrap(), packed);
            }
        }
    }

    #[test]
    fn centering_on_zero_points_beats_plain_codes_on_bell_shaped_weights() {
        // 2-bit min-max groups of 128 Gaussian values: the centered entropy is
        // far below the plain one (which mixes groups whose peak sits at
        // different codes), and the coder reaches it within a small overhead.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (rows, cols, gl, bits) = (512, 512, 128, 2u8);
        let (codes, zeros) = gaussian_codes(&mut rng, rows, cols, gl, bits);
        let packed = pack_ref(&codes, bits);
        let g = Groups {
            zeros: &zeros,
            cols,
            group_len: gl,
        };
        let n = codes.len();
        let plain = encode_codes(&packed, bits, n, None).unwrap();
        let centered = encode_codes(&packed, bits, n, Some(&g)).unwrap();
        assert_eq!(plain[0], MODE_PLAIN);
        assert_eq!(centered[0], MODE_CENTERED);
        let ent = |syms: &[u16], a: usize| {
            let h = rans::histogram(syms, a);
            h.iter()
                .filter(|&&c| c > 0)
                .map(|&c| c as f64 * (n as f64 / c as f64).log2())
                .sum::<f64>()
                / 8.0
        };
        let h_plain = ent(&codes.iter().map(|&c| u16::from(c)).collect::<Vec<_>>(), 4);
        let h_centered = ent(&center(&codes, 0, &g, 3), 7);
        assert!(h_centered < 0.95 * h_plain, "{h_centered} vs {h_plain}");
        // Within 0.5 % of the entropy plus table, header and 64 flushed states.
        for (blob, h) in [(&plain, h_plain), (&centered, h_centered)] {
            let len = blob.len() as f64;
            assert!(len >= h && len < 1.005 * h + 300.0, "{len} vs {h}");
        }
        assert_eq!(decode_codes(&centered, bits, n, Some(&g)).unwrap(), packed);
    }

    #[test]
    fn nonzero_padding_is_kept_verbatim() {
        let packed = [0b1110_0100u8, 0b1111_1001];
        // 5 codes of 3 bits use 15 bits; bit 15 is padding and set.
        let blob = encode_codes(&packed, 3, 5, None).unwrap();
        assert_eq!(blob[0], MODE_RAW);
        assert_eq!(decode_codes(&blob, 3, 5, None).unwrap(), packed);
    }

    #[test]
    fn bad_arguments_are_errors() {
        let packed = [0u8; 4];
        assert_eq!(
            encode_codes(&packed, 0, 4, None),
            Err(CodesError::BadBits(0))
        );
        assert_eq!(
            encode_codes(&packed, 9, 4, None),
            Err(CodesError::BadBits(9))
        );
        assert!(matches!(
            encode_codes(&packed, 4, 9, None),
            Err(CodesError::BadLength { expected: 5, .. })
        ));
        let g = |zeros: &'static [u8], cols, group_len| Groups {
            zeros,
            cols,
            group_len,
        };
        for (groups, what) in [
            (g(&[0, 0], 3, 2), "not whole rows"),
            (g(&[0], 4, 2), "zero points given"),
            (g(&[0, 4], 4, 2), "outside 2-bit"),
            (g(&[0, 0], 0, 2), "must be positive"),
            (g(&[0, 0], 4, 0), "must be positive"),
        ] {
            for r in [
                encode_codes(&[0u8; 1], 2, 4, Some(&groups)),
                decode_codes(&[0, 0], 2, 4, Some(&groups)),
            ] {
                match r {
                    Err(CodesError::BadGroups(m)) => assert!(m.contains(what), "{m}"),
                    other => panic!("{what}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn damaged_streams_are_errors_not_panics() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let (rows, cols, gl, bits) = (64, 256, 128, 3u8);
        let (codes, zeros) = gaussian_codes(&mut rng, rows, cols, gl, bits);
        let packed = pack_ref(&codes, bits);
        let g = Groups {
            zeros: &zeros,
            cols,
            group_len: gl,
        };
        let n = codes.len();
        let blob = encode_codes(&packed, bits, n, Some(&g)).unwrap();
        assert_ne!(blob[0], MODE_RAW);
        for cut in [0, 1, 3, 5, 20, blob.len() / 2, blob.len() - 1] {
            assert!(
                decode_codes(&blob[..cut], bits, n, Some(&g)).is_err(),
                "{cut}"
            );
        }
        let mut longer = blob.clone();
        longer.extend_from_slice(&[0, 0]);
        assert!(decode_codes(&longer, bits, n, Some(&g)).is_err());
        // Centered data without zero points, unknown modes.
        assert!(decode_codes(&blob, bits, n, None).is_err());
        let mut bad = blob.clone();
        bad[0] = 7;
        assert!(decode_codes(&bad, bits, n, Some(&g)).is_err());
        // Random flips: never a panic, and almost never wrong output without
        // an error (a flip in the table's padding bits changes nothing).
        let mut silent = 0;
        for k in 0..500 {
            let mut bad = blob.clone();
            let i = 1 + rng.next_u32() as usize % (bad.len() - 1);
            bad[i] ^= 1 << (k % 8);
            if let Ok(out) = decode_codes(&bad, bits, n, Some(&g)) {
                silent += usize::from(out != packed);
            }
        }
        assert!(silent <= 5, "{silent} of 500 flips decoded to wrong codes");
        // Random garbage after a valid mode byte.
        for _ in 0..2000 {
            let len = rng.next_u32() as usize % 64;
            let mut junk: Vec<u8> = (0..len).map(|_| rng.next_u32() as u8).collect();
            if let Some(m) = junk.first_mut() {
                *m %= 3;
            }
            let _ = decode_codes(&junk, bits, n, Some(&g));
        }
    }
}
