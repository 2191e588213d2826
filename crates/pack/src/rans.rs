//! Interleaved range asymmetric numeral systems (rANS) over small alphabets.
//!
//! # The coder
//!
//! A static model gives every symbol `s` a frequency `f_s >= 1` (symbols
//! absent from the data get 0) with `sum f_s = M = 2^L`, `L <=`
//! [`MAX_SCALE_BITS`], and a cumulative start `c_s = sum_{t < s} f_t`. The
//! coder state is one `u32` `x` kept in `[2^16, 2^32)`. Encoding `s` maps
//!
//! ```text
//! x' = floor(x / f_s) * M + (x mod f_s) + c_s
//! ```
//!
//! which grows `x` by a factor of about `M / f_s`, i.e. by `-log2(f_s / M)`
//! bits, the ideal code length under the quantized model. Decoding inverts
//! it: the slot `x mod M` lies in `[c_s, c_s + f_s)`, which identifies `s`
//! through a table of `M` entries, and `x = f_s * floor(x' / M) + slot - c_s`.
//! Before encoding, the encoder shifts out a 16-bit word if `x` is too large
//! for the result to stay below `2^32` (`x >= 2^(32-L) * f_s`); the decoder
//! reads a word back whenever `x` drops below `2^16`. With 16-bit words one
//! read always suffices, so the decoder's renormalisation is branch-free.
//! The encoder divides by `f_s` with a multiply by a precomputed reciprocal.
//!
//! rANS is last-in first-out: the encoder walks the symbols backwards and
//! each word stream is reversed at the end, so the decoder reads forwards.
//!
//! # Interleaving: lanes and streams
//!
//! One state is a serial dependency chain (table load, multiply, compare,
//! word load). A [`Layout`] runs `S * W` independent states ("lanes"):
//! symbol `i` belongs to lane `i mod (S W)`, and lane `j` belongs to stream
//! `j / W`. The `W` lanes of a stream share one word stream in which each
//! lane reads, right after decoding its symbol, the next word if it needs
//! one, so one AVX-512 vector of `W = 16` lanes renormalises with one load
//! and one expand. Separate streams remove the dependency of one vector's
//! read position on the previous vector's, so `S` vectors decode in
//! parallel.
//!
//! # Stream layout
//!
//! ```text
//! u8  log2(W)            (0..=4)
//! u8  S                  (1..=8)
//! u32 length of stream s, for s in 0..S-1 (the last one takes the rest)
//! the S streams
//! ```
//!
//! Each stream is `4 W` bytes of final encoder states (lane by lane, low
//! word first), then 16-bit little-endian words; its byte length is even.
//! When fully decoded, every state must be back at its initial value `2^16`
//! with no words left over: a cheap integrity check on top of the checksums.
//!
//! # Frequency tables
//!
//! [`FreqTable::from_counts`] quantizes a histogram to `2^L` so that the cost
//! `sum_s count_s * (L - log2 f_s)` is close to minimal: proportional rounding
//! (every present symbol at least 1), then a greedy fix-up of the total that
//! each time moves the unit with the smallest cost increase. Tables serialise
//! compactly: the scale in 4 bits, the first present symbol, then one
//! Elias-gamma token per symbol, `gamma(f + 1)` for a frequency `f >= 1` or
//! `gamma(1)` followed by `gamma(run)` for a run of absent symbols; the
//! reader stops when the frequencies reach `2^L`.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::bits::{BitReader, BitWriter, BitsExhausted, gamma_len};

/// The largest supported probability scale `L` (tables have `2^L` slots).
pub const MAX_SCALE_BITS: u32 = 15;
/// The largest supported alphabet.
pub const MAX_ALPHABET: u32 = 1 << 16;
/// The largest number of lanes per stream.
pub const MAX_LANES_PER_STREAM: usize = 16;
/// The largest number of streams.
pub const MAX_STREAMS: usize = 8;
const MAX_TOTAL_LANES: usize = MAX_LANES_PER_STREAM * MAX_STREAMS;

/// Lower bound of the normalised state interval `[2^16, 2^32)`.
const STATE_LOW: u32 = 1 << 16;

/// What is wrong with a serialised frequency table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// The table's bit stream ended early or held a malformed code.
    #[error("frequency table is truncated or malformed")]
    Truncated,
    /// The scale is outside `1..=MAX_SCALE_BITS`.
    #[error("frequency table scale 2^{0} is outside 2^1..=2^{MAX_SCALE_BITS}")]
    BadScale(u32),
    /// A symbol index lies outside the alphabet.
    #[error("frequency table names symbol {symbol}, outside the alphabet of {alphabet}")]
    SymbolOutOfRange {
        /// The offending symbol.
        symbol: u64,
        /// The alphabet size the table was read for.
        alphabet: u32,
    },
    /// Frequencies overshoot `2^L`.
    #[error("frequency table sums past 2^{0}")]
    BadTotal(u32),
}

impl From<BitsExhausted> for TableError {
    fn from(_: BitsExhausted) -> Self {
        TableError::Truncated
    }
}

/// What is wrong with a coded stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The stream header is truncated, names an unsupported layout, or its
    /// stream lengths do not fit.
    #[error("rANS stream header is malformed ({0})")]
    BadHeader(&'static str),
    /// The decoder needed a word past the end of a stream.
    #[error("rANS stream ended early")]
    Underrun,
    /// Words were left over, or a state did not return to its start value.
    #[error("rANS stream did not end in its initial state (corrupt data)")]
    BadFinalState,
    /// A symbol to encode has frequency zero in the table.
    #[error("symbol {0} has no frequency in the table")]
    AbsentSymbol(usize),
}

/// How many interleaved states a stream uses (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Independent word streams, `1..=MAX_STREAMS`.
    pub streams: usize,
    /// Lanes per stream: a power of two up to [`MAX_LANES_PER_STREAM`].
    pub lanes: usize,
}

impl Layout {
    /// The layout the packer uses for `n` symbols: one lane for tiny inputs,
    /// whose flushed states (4 bytes per lane) would dominate, up to four
    /// streams of 16 lanes (64 states) for chunks of 128 Ki symbols or more.
    pub fn for_len(n: usize) -> Self {
        let (streams, lanes) = match n {
            0..=1023 => (1, 1),
            1024..=4095 => (1, 4),
            4096..=32767 => (1, 8),
            32768..=131071 => (2, 16),
            _ => (4, 16),
        };
        Self { streams, lanes }
    }

    /// Total number of states.
    pub fn total(self) -> usize {
        self.streams * self.lanes
    }

    fn check(self) -> Result<Self, StreamError> {
        if self.lanes.is_power_of_two()
            && self.lanes <= MAX_LANES_PER_STREAM
            && (1..=MAX_STREAMS).contains(&self.streams)
        {
            Ok(self)
        } else {
            Err(StreamError::BadHeader("unsupported layout"))
        }
    }

    /// Bytes of a stream of this layout that codes nothing: header and
    /// flushed states.
    pub fn min_bytes(self) -> usize {
        2 + 4 * (self.streams - 1) + 4 * self.total()
    }
}

/// Quantized frequencies of an alphabet `0..alphabet`, summing to `2^L`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FreqTable {
    scale_bits: u32,
    freqs: Vec<u32>,
}

impl FreqTable {
    /// Quantizes a histogram (`counts.len()` is the alphabet size) to a
    /// table with `2^scale_bits` slots.
    ///
    /// Returns `None` when no symbol occurs or more distinct symbols occur
    /// than there are slots.
    ///
    /// # Panics
    /// If `scale_bits` is outside `1..=MAX_SCALE_BITS` or the alphabet is
    /// larger than [`MAX_ALPHABET`].
    #[track_caller]
    pub fn from_counts(counts: &[u64], scale_bits: u32) -> Option<Self> {
        assert!((1..=MAX_SCALE_BITS).contains(&scale_bits));
        assert!(counts.len() <= MAX_ALPHABET as usize);
        let total: u128 = counts.iter().map(|&c| u128::from(c)).sum();
        let present = counts.iter().filter(|&&c| c > 0).count();
        let m = 1u64 << scale_bits;
        if total == 0 || present as u64 > m {
            return None;
        }
        let mut freqs: Vec<u32> = counts
            .iter()
            .map(|&c| {
                if c == 0 {
                    0
                } else {
                    let f = (u128::from(c) * u128::from(m) + total / 2) / total;
                    f.max(1) as u32
                }
            })
            .collect();
        let sum: u64 = freqs.iter().map(|&f| u64::from(f)).sum();
        // Greedy fix-up: move single units where they cost least.
        if sum < m {
            let mut heap: BinaryHeap<Cand> = counts
                .iter()
                .enumerate()
                .filter(|&(_, &c)| c > 0)
                .map(|(s, &c)| Cand::new(s, c as f64 * (1.0 + 1.0 / f64::from(freqs[s])).log2()))
                .collect();
            for _ in 0..(m - sum) {
                let top = heap.pop().expect("a present symbol");
                let s = top.symbol;
                freqs[s] += 1;
                let c = counts[s] as f64;
                heap.push(Cand::new(s, c * (1.0 + 1.0 / f64::from(freqs[s])).log2()));
            }
        } else if sum > m {
            // Candidates ordered by smallest loss: store the negated loss.
            let loss = |c: u64, f: u32| -> f64 {
                if f <= 1 {
                    f64::NEG_INFINITY
                } else {
                    -(c as f64) * (f64::from(f) / f64::from(f - 1)).log2()
                }
            };
            let mut heap: BinaryHeap<Cand> = counts
                .iter()
                .enumerate()
                .filter(|&(_, &c)| c > 0)
                .map(|(s, &c)| Cand::new(s, loss(c, freqs[s])))
                .collect();
            for _ in 0..(sum - m) {
                let top = heap.pop().expect("a present symbol");
                let s = top.symbol;
                debug_assert!(freqs[s] > 1, "present <= m guarantees a reducible symbol");
                freqs[s] -= 1;
                heap.push(Cand::new(s, loss(counts[s], freqs[s])));
            }
        }
        debug_assert_eq!(freqs.iter().map(|&f| u64::from(f)).sum::<u64>(), m);
        Some(Self { scale_bits, freqs })
    }

    /// The scale `L`: frequencies sum to `2^L`.
    pub fn scale_bits(&self) -> u32 {
        self.scale_bits
    }

    /// The alphabet size.
    pub fn alphabet(&self) -> u32 {
        self.freqs.len() as u32
    }

    /// Frequency of each symbol.
    pub fn freqs(&self) -> &[u32] {
        &self.freqs
    }

    /// Ideal coded size, in bits, of data with histogram `counts` under this
    /// table (`sum count_s * (L - log2 f_s)`); infinite if a counted symbol
    /// has frequency zero.
    pub fn cost_bits(&self, counts: &[u64]) -> f64 {
        let l = f64::from(self.scale_bits);
        counts
            .iter()
            .zip(&self.freqs)
            .filter(|&(&c, _)| c > 0)
            .map(|(&c, &f)| {
                if f == 0 {
                    f64::INFINITY
                } else {
                    c as f64 * (l - f64::from(f).log2())
                }
            })
            .sum()
    }

    /// Size of the table's serialized form (see the module docs) in bits.
    pub fn serialized_bits(&self) -> u64 {
        let mut bits = 4u64;
        let first = self.freqs.iter().position(|&f| f > 0).unwrap_or(0);
        bits += u64::from(gamma_len(first as u32 + 1));
        self.tokens(first, |v| bits += u64::from(gamma_len(v)));
        bits
    }

    /// Appends the table to a bit stream (see the module docs).
    pub(crate) fn write(&self, w: &mut BitWriter) {
        w.put(u64::from(self.scale_bits), 4);
        let first = self.freqs.iter().position(|&f| f > 0).unwrap_or(0);
        w.put_gamma(first as u32 + 1);
        self.tokens(first, |v| w.put_gamma(v));
    }

    /// The gamma-coded tokens after the first present symbol.
    fn tokens(&self, first: usize, mut emit: impl FnMut(u32)) {
        let last = self.freqs.iter().rposition(|&f| f > 0).unwrap_or(0);
        let mut s = first;
        while s <= last {
            let f = self.freqs[s];
            if f > 0 {
                emit(f + 1);
                s += 1;
            } else {
                let run = self.freqs[s..].iter().take_while(|&&f| f == 0).count();
                emit(1);
                emit(run as u32);
                s += run;
            }
        }
    }

    /// Reads a table written by [`FreqTable::write`] for an alphabet of
    /// `alphabet` symbols, validating it completely.
    pub(crate) fn read(r: &mut BitReader<'_>, alphabet: u32) -> Result<Self, TableError> {
        let scale_bits = r.get(4)? as u32;
        if !(1..=MAX_SCALE_BITS).contains(&scale_bits) {
            return Err(TableError::BadScale(scale_bits));
        }
        if alphabet > MAX_ALPHABET {
            return Err(TableError::SymbolOutOfRange {
                symbol: u64::from(alphabet),
                alphabet: MAX_ALPHABET,
            });
        }
        let m = 1u64 << scale_bits;
        let mut freqs = vec![0u32; alphabet as usize];
        let mut s = u64::from(r.get_gamma()?) - 1;
        let mut sum = 0u64;
        while sum < m {
            let t = r.get_gamma()?;
            if t == 1 {
                s += u64::from(r.get_gamma()?);
                continue;
            }
            if s >= u64::from(alphabet) {
                return Err(TableError::SymbolOutOfRange {
                    symbol: s,
                    alphabet,
                });
            }
            let f = u64::from(t - 1);
            sum += f;
            if sum > m {
                return Err(TableError::BadTotal(scale_bits));
            }
            freqs[s as usize] = f as u32;
            s += 1;
        }
        Ok(Self { scale_bits, freqs })
    }
}

/// A heap entry: larger `key` pops first; ties go to the smaller symbol so
/// quantization is deterministic.
struct Cand {
    key: f64,
    symbol: usize,
}

impl Cand {
    fn new(symbol: usize, key: f64) -> Self {
        Self { key, symbol }
    }
}

impl PartialEq for Cand {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Cand {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key
            .total_cmp(&other.key)
            .then_with(|| other.symbol.cmp(&self.symbol))
    }
}

/// Per-symbol encoder constants (16 bytes): division by `f` via a multiply.
#[derive(Clone, Copy, Default)]
struct EncSym {
    /// `ceil(2^(32 + shift) / f)` with `shift = ceil(log2 f)`: then
    /// `floor(x / f) = (x * rcp) >> (32 + shift)` for every 32-bit `x`
    /// (Granlund and Montgomery, 1994).
    rcp: u64,
    /// Frequency; 0 marks a symbol absent from the table.
    freq: u16,
    start: u16,
    shift: u8,
}

/// Encodes symbol sequences under one [`FreqTable`].
pub struct Encoder {
    scale_bits: u32,
    syms: Vec<EncSym>,
    /// Per symbol `start << 48 | freq << 32 | (rcp - 2^32)` for the AVX-512
    /// encoder (`rcp` lies in `[2^32, 2^33)`).
    wide: Vec<u64>,
}

impl Encoder {
    /// Precomputes the per-symbol constants of `table`.
    pub fn new(table: &FreqTable) -> Self {
        let l = table.scale_bits;
        let mut start = 0u32;
        let syms = table
            .freqs
            .iter()
            .map(|&f| {
                let e = if f == 0 {
                    EncSym::default()
                } else {
                    // ceil(log2 f); 0 for f = 1.
                    let shift = 32 - (f - 1).leading_zeros();
                    let rcp = ((1u128 << (32 + shift)).div_ceil(u128::from(f))) as u64;
                    EncSym {
                        rcp,
                        freq: f as u16,
                        start: start as u16,
                        shift: shift as u8,
                    }
                };
                start += f;
                e
            })
            .collect::<Vec<EncSym>>();
        let wide = syms
            .iter()
            .map(|e| u64::from(e.start) << 48 | u64::from(e.freq) << 32 | u64::from(e.rcp as u32))
            .collect();
        Self {
            scale_bits: l,
            syms,
            wide,
        }
    }

    /// Encodes `symbols` with the given layout and returns the stream (see
    /// the module docs for its layout).
    ///
    /// # Panics
    /// If the layout is unsupported (a programming error).
    #[track_caller]
    pub fn encode<S: Copy + Into<usize>>(
        &self,
        symbols: &[S],
        layout: Layout,
    ) -> Result<Vec<u8>, StreamError> {
        let mut out = Vec::new();
        self.encode_impl(symbols, layout, &mut out, |_, _, _, _| 0)?;
        Ok(out)
    }

    /// [`Encoder::encode`] for 16-bit symbols, with an AVX-512 kernel for
    /// layouts of 16 lanes per stream.
    ///
    /// # Panics
    /// If the layout is unsupported (a programming error).
    #[track_caller]
    pub fn encode_u16(&self, symbols: &[u16], layout: Layout) -> Result<Vec<u8>, StreamError> {
        let mut out = Vec::new();
        self.encode_u16_into(symbols, layout, &mut out)?;
        Ok(out)
    }

    /// [`Encoder::encode_u16`] appending to `out`.
    #[track_caller]
    pub(crate) fn encode_u16_into(
        &self,
        symbols: &[u16],
        layout: Layout,
        out: &mut Vec<u8>,
    ) -> Result<(), StreamError> {
        self.encode_impl(symbols, layout, out, |full, x, bufs, at| {
            #[cfg(target_arch = "x86_64")]
            if layout.lanes == 16 && crate::simd::avx512_encode() {
                // SAFETY: the CPU supports the kernel's features.
                return unsafe {
                    match layout.streams {
                        1 => self.encode_groups_avx512::<1>(full, x, bufs, at),
                        2 => self.encode_groups_avx512::<2>(full, x, bufs, at),
                        4 => self.encode_groups_avx512::<4>(full, x, bufs, at),
                        8 => self.encode_groups_avx512::<8>(full, x, bufs, at),
                        _ => 0,
                    }
                };
            }
            let _ = (full, x, bufs, at);
            0
        })
    }

    /// The encoder; `groups` may code whole groups from the end of the
    /// slice it is given and returns how many symbols it coded (a multiple
    /// of the group size), or `usize::MAX` if it met an absent symbol.
    #[track_caller]
    fn encode_impl<S: Copy + Into<usize>>(
        &self,
        symbols: &[S],
        layout: Layout,
        out: &mut Vec<u8>,
        groups: impl FnOnce(
            &[S],
            &mut [u32; MAX_TOTAL_LANES],
            &mut [Vec<u16>],
            &mut [usize; MAX_STREAMS],
        ) -> usize,
    ) -> Result<(), StreamError> {
        ENC_BUFS.with_borrow_mut(|bufs| self.encode_with(symbols, layout, out, groups, bufs))
    }

    #[track_caller]
    fn encode_with<S: Copy + Into<usize>>(
        &self,
        symbols: &[S],
        layout: Layout,
        out: &mut Vec<u8>,
        groups: impl FnOnce(
            &[S],
            &mut [u32; MAX_TOTAL_LANES],
            &mut [Vec<u16>],
            &mut [usize; MAX_STREAMS],
        ) -> usize,
        bufs: &mut Vec<Vec<u16>>,
    ) -> Result<(), StreamError> {
        let layout = layout.check().expect("supported layout");
        let l = self.scale_bits;
        let total = layout.total();
        let w = layout.lanes;
        let n = symbols.len();
        let mut x = [STATE_LOW; MAX_TOTAL_LANES];
        // Each symbol emits at most one word, so a stream needs at most one
        // word per symbol of its lanes plus its flushed states (and 16 words
        // of slack for the vector stores): the writes below never
        // reallocate, and a word is written unconditionally and kept only
        // when needed (no unpredictable branch).
        let cap = n.div_ceil(total) * w + 2 * w + 17;
        // Word buffers are reused across calls on a thread (only growth is
        // zero-filled).
        if bufs.len() < layout.streams {
            bufs.resize_with(layout.streams, Vec::new);
        }
        for b in bufs.iter_mut() {
            if b.len() < cap {
                b.resize(cap, 0);
            }
        }
        let bufs = &mut bufs[..layout.streams];
        let mut at = [0usize; MAX_STREAMS];
        let syms = &self.syms[..];
        let mut absent = false;
        let put = |x: &mut [u32; MAX_TOTAL_LANES],
                   lane: usize,
                   sym: usize,
                   buf: &mut [u16],
                   k: &mut usize| {
            let e = syms.get(sym).copied().unwrap_or_default();
            let v = x[lane];
            // Renormalise if encoding would leave 32 bits: v >= 2^(32-L) f.
            let need = u64::from(v) >= u64::from(e.freq) << (32 - l);
            buf[*k] = v as u16;
            *k += usize::from(need);
            let v = if need { v >> 16 } else { v };
            // v * rcp < 2^65: the constant shift by 32 leaves < 2^33.
            let q = ((((u128::from(v) * u128::from(e.rcp)) >> 32) as u64) >> e.shift) as u32;
            // Wrapping only matters for absent symbols, which are errors.
            x[lane] = (q << l)
                .wrapping_add(v.wrapping_sub(q.wrapping_mul(u32::from(e.freq))))
                .wrapping_add(u32::from(e.start));
            e.freq == 0
        };
        // rANS runs backwards: first the partial last group, then whole
        // groups from the end, each lane in reverse order.
        let full = n / total * total;
        for i in (full..n).rev() {
            let lane = i - full;
            let s = lane / w;
            absent |= put(&mut x, lane, symbols[i].into(), &mut bufs[s], &mut at[s]);
        }
        let done = groups(&symbols[..full], &mut x, bufs, &mut at);
        if done == usize::MAX {
            absent = true;
        }
        let rest = if absent { 0 } else { full - done };
        for group in symbols[..rest].chunks_exact(total).rev() {
            for s in (0..layout.streams).rev() {
                let buf = &mut bufs[s][..];
                let mut k = at[s];
                for j in (0..w).rev() {
                    absent |= put(&mut x, s * w + j, group[s * w + j].into(), buf, &mut k);
                }
                at[s] = k;
            }
        }
        if absent {
            let bad = symbols
                .iter()
                .map(|&s| s.into())
                .find(|&s| syms.get(s).is_none_or(|e| e.freq == 0))
                .expect("an absent symbol was seen");
            return Err(StreamError::AbsentSymbol(bad));
        }
        // Flush the states, last lane first, so that after reversal each
        // stream starts with lane 0's state, low word first.
        for (s, buf) in bufs.iter_mut().enumerate() {
            for &v in x[s * w..(s + 1) * w].iter().rev() {
                buf[at[s]] = (v >> 16) as u16;
                buf[at[s] + 1] = v as u16;
                at[s] += 2;
            }
        }
        let words: usize = at[..layout.streams].iter().sum();
        let head = 2 + 4 * (layout.streams - 1);
        let start = out.len();
        out.reserve(head + 2 * words);
        out.push(w.trailing_zeros() as u8);
        out.push(layout.streams as u8);
        for &len in &at[..layout.streams - 1] {
            out.extend_from_slice(&((2 * len) as u32).to_le_bytes());
        }
        // Each stream's words, reversed, as little-endian bytes.
        let spare = &mut out.spare_capacity_mut()[..2 * words];
        let mut o = 0;
        for (buf, &len) in bufs.iter().zip(&at) {
            for (dst, &v) in spare[o..o + 2 * len]
                .chunks_exact_mut(2)
                .zip(buf[..len].iter().rev())
            {
                let b = v.to_le_bytes();
                dst[0].write(b[0]);
                dst[1].write(b[1]);
            }
            o += 2 * len;
        }
        // SAFETY: the loop above initialised all 2 * words spare bytes.
        unsafe { out.set_len(start + head + 2 * words) };
        Ok(())
    }
}

thread_local! {
    /// Word buffers of the encoder, reused across calls on a thread.
    static ENC_BUFS: std::cell::RefCell<Vec<Vec<u16>>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(target_arch = "x86_64")]
impl Encoder {
    /// AVX-512 encoder for whole groups of `16 * streams` symbols, walking
    /// backwards from the end of `symbols`, one vector per stream. Per
    /// vector: two 64-bit gathers fetch each lane's reciprocal, frequency
    /// and start; lanes that must renormalise emit their low words, which
    /// are reversed (the scalar encoder emits lane 15 first) and packed with
    /// one compress; `floor(v / f)` is `(((v - h) >> 1) + h) >> (s - 1)`
    /// with `h` the high half of `v * (rcp - 2^32)` and `s = ceil(log2 f)`
    /// (`v` itself for `f = 1`). Returns the symbols coded, or `usize::MAX`
    /// if a symbol is absent from the table.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi2,avx512cd,popcnt")]
    unsafe fn encode_groups_avx512<const S: usize>(
        &self,
        symbols: &[u16],
        x: &mut [u32; MAX_TOTAL_LANES],
        bufs: &mut [Vec<u16>],
        at: &mut [usize; MAX_STREAMS],
    ) -> usize {
        use std::arch::x86_64::*;
        const V: usize = 16;
        let l = self.scale_bits;
        let streams = S;
        let group = V * streams;
        // Symbols index the table directly: a vector holding an out-of-range
        // symbol stops the kernel, and the scalar encoder reports it.
        let table_len = _mm512_set1_epi32(self.wide.len() as i32);
        let wide = self.wide.as_ptr().cast::<i64>();
        let k = Avx512Consts::new(l);
        let m = _mm512_set1_epi32(1 << l);
        let one = _mm512_set1_epi32(1);
        let thirty_two = _mm512_set1_epi32(32);
        let renorm_shift = _mm_cvtsi32_si128(32 - l as i32);
        let rev16: [i16; 16] = std::array::from_fn(|i| 15 - i as i16);
        // SAFETY: the array holds 16 i16.
        let rev16 = unsafe { _mm256_loadu_si256(rev16.as_ptr().cast()) };
        let mut xv = [_mm512_setzero_si512(); S];
        for (s, v) in xv.iter_mut().enumerate() {
            // SAFETY: x holds MAX_STREAMS * 16 states.
            *v = unsafe { _mm512_loadu_si512(x.as_ptr().add(s * V).cast()) };
        }
        let mut bad: u16 = 0;
        let mut done = 0;
        'groups: for g in symbols.chunks_exact(group).rev() {
            // SAFETY: g holds 16 * streams symbols.
            let syms: [__m512i; S] = std::array::from_fn(|s| unsafe {
                _mm512_cvtepu16_epi32(_mm256_loadu_si256(g.as_ptr().add(s * V).cast()))
            });
            for sym in &syms {
                if _mm512_cmpge_epu32_mask(*sym, table_len) != 0 {
                    break 'groups;
                }
            }
            for s in (0..streams).rev() {
                let sym = syms[s];
                // SAFETY: all symbols are < the table length (checked above).
                let (g0, g1) = unsafe {
                    (
                        _mm512_i32gather_epi64::<8>(_mm512_castsi512_si256(sym), wide),
                        _mm512_i32gather_epi64::<8>(_mm512_extracti64x4_epi64::<1>(sym), wide),
                    )
                };
                let r = _mm512_permutex2var_epi32(g0, k.even, g1);
                let fs = _mm512_permutex2var_epi32(g0, k.odd, g1);
                let f = _mm512_and_si512(fs, k.low16);
                let start = _mm512_srli_epi32::<16>(fs);
                bad |= _mm512_cmpeq_epi32_mask(f, _mm512_setzero_si512());
                let v = xv[s];
                let need = _mm512_cmpge_epu32_mask(_mm512_srl_epi32(v, renorm_shift), f);
                // Emit the low words of the lanes that renormalise, lane 15
                // first.
                let words = _mm256_permutexvar_epi16(rev16, _mm512_cvtepi32_epi16(v));
                let packed = _mm256_maskz_compress_epi16(need.reverse_bits(), words);
                let buf = &mut bufs[s];
                assert!(at[s] + V <= buf.len());
                // SAFETY: 16 words fit at at[s] (asserted).
                unsafe { _mm256_storeu_si256(buf.as_mut_ptr().add(at[s]).cast(), packed) };
                at[s] += need.count_ones() as usize;
                let v = _mm512_mask_srli_epi32::<16>(v, need, v);
                // q = floor(v / f).
                let h_even = _mm512_srli_epi64::<32>(_mm512_mul_epu32(v, r));
                let h_odd =
                    _mm512_mul_epu32(_mm512_srli_epi64::<32>(v), _mm512_srli_epi64::<32>(r));
                let h = _mm512_mask_blend_epi32(0xAAAA, h_even, h_odd);
                let sh = _mm512_sub_epi32(thirty_two, _mm512_lzcnt_epi32(_mm512_sub_epi32(f, one)));
                let t = _mm512_add_epi32(_mm512_srli_epi32::<1>(_mm512_sub_epi32(v, h)), h);
                let q = _mm512_srlv_epi32(t, _mm512_sub_epi32(sh, one));
                let q = _mm512_mask_blend_epi32(_mm512_cmpeq_epi32_mask(f, one), q, v);
                // x' = v + start + q * (M - f)
                let cmpl = _mm512_sub_epi32(m, f);
                xv[s] = _mm512_add_epi32(_mm512_add_epi32(v, start), _mm512_mullo_epi32(q, cmpl));
            }
            done += group;
        }
        for (s, v) in xv.iter().enumerate() {
            // SAFETY: x holds MAX_STREAMS * 16 states.
            unsafe { _mm512_storeu_si512(x.as_mut_ptr().add(s * V).cast(), *v) };
        }
        if bad != 0 { usize::MAX } else { done }
    }
}

/// A symbol value the decoder can write: `u8`, `u16` or `u32`.
pub trait SymbolValue: Copy + Default + Send + Sync + 'static + private::Sealed {
    /// The value as a `u32` (zero-extended).
    fn to_u32(self) -> u32;
    /// The low bits of `v` (the inverse of [`SymbolValue::to_u32`]).
    fn from_u32(v: u32) -> Self;
}
impl SymbolValue for u8 {
    fn to_u32(self) -> u32 {
        u32::from(self)
    }
    fn from_u32(v: u32) -> Self {
        v as u8
    }
}
impl SymbolValue for u16 {
    fn to_u32(self) -> u32 {
        u32::from(self)
    }
    fn from_u32(v: u32) -> Self {
        v as u16
    }
}
impl SymbolValue for u32 {
    fn to_u32(self) -> u32 {
        self
    }
    fn from_u32(v: u32) -> Self {
        v
    }
}
mod private {
    pub trait Sealed {}
    impl Sealed for u8 {}
    impl Sealed for u16 {}
    impl Sealed for u32 {}
}

/// Decoding table: for each of the `2^L` slots, one `u64`
/// `value << 32 | freq << 16 | (slot - start)` with the symbol's output
/// value, its frequency and the slot's offset within the symbol's range (one
/// 64-bit gather per lane in the AVX-512 decoder).
pub struct DecodeTable<T> {
    pub(crate) scale_bits: u32,
    pub(crate) wide: Box<[u64]>,
    value: std::marker::PhantomData<T>,
}

impl<T: SymbolValue> DecodeTable<T> {
    /// Builds the table; `value(s)` is what decoding symbol `s` writes.
    pub fn new(table: &FreqTable, mut value: impl FnMut(usize) -> T) -> Self {
        let m = 1usize << table.scale_bits;
        let mut wide = Vec::with_capacity(m);
        for (s, &f) in table.freqs.iter().enumerate() {
            if f == 0 {
                continue;
            }
            let v = u64::from(value(s).to_u32()) << 32 | u64::from(f) << 16;
            wide.extend((0..u64::from(f)).map(|k| v | k));
        }
        debug_assert_eq!(wide.len(), m);
        Self {
            scale_bits: table.scale_bits,
            wide: wide.into_boxed_slice(),
            value: std::marker::PhantomData,
        }
    }
}

/// Incremental decoder of one coded sequence: call [`Decoder::decode`] for
/// consecutive blocks of symbols, then [`Decoder::finish`].
pub struct Decoder<'a, T> {
    pub(crate) data: &'a [u8],
    pub(crate) table: &'a DecodeTable<T>,
    pub(crate) layout: Layout,
    /// Read position and end of each stream within `data`.
    pub(crate) pos: [usize; MAX_STREAMS],
    pub(crate) end: [usize; MAX_STREAMS],
    /// Lane of the next symbol.
    pub(crate) next: usize,
    pub(crate) x: [u32; MAX_TOTAL_LANES],
}

/// Constants of the AVX-512 decoding step.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct Avx512Consts {
    pub(crate) slot_mask: std::arch::x86_64::__m512i,
    pub(crate) low16: std::arch::x86_64::__m512i,
    pub(crate) state_low: std::arch::x86_64::__m512i,
    pub(crate) scale: std::arch::x86_64::__m128i,
    pub(crate) even: std::arch::x86_64::__m512i,
    pub(crate) odd: std::arch::x86_64::__m512i,
}

#[cfg(target_arch = "x86_64")]
impl Avx512Consts {
    #[target_feature(enable = "avx512f")]
    pub(crate) fn new(scale_bits: u32) -> Self {
        use std::arch::x86_64::*;
        let even: [i32; 16] = std::array::from_fn(|i| {
            if i < 8 {
                2 * i as i32
            } else {
                16 + 2 * (i as i32 - 8)
            }
        });
        let odd: [i32; 16] = std::array::from_fn(|i| even[i] + 1);
        // SAFETY: the arrays hold 16 i32 each.
        let (even, odd) = unsafe {
            (
                _mm512_loadu_si512(even.as_ptr().cast()),
                _mm512_loadu_si512(odd.as_ptr().cast()),
            )
        };
        Self {
            slot_mask: _mm512_set1_epi32(((1u32 << scale_bits) - 1) as i32),
            low16: _mm512_set1_epi32(0xffff),
            state_low: _mm512_set1_epi32(STATE_LOW as i32),
            scale: _mm_cvtsi32_si128(scale_bits as i32),
            even,
            odd,
        }
    }
}

/// One AVX-512 decoding step of the 16 lanes of one stream: look up the
/// slots with two 64-bit gathers (frequency, offset and value per slot),
/// update the states, and renormalise the lanes that need a word with one
/// load and one expand (the words are consumed in lane order). Evaluates to
/// the 16 symbol values as `u32` lanes.
///
/// Expects `$x: __m512i` (states, updated), `$k: Avx512Consts`, `$wide:
/// *const i64` (table of `2^L` entries), `$data: &[u8]` and `$pos: usize`
/// (advanced) with `$pos + 32 <= $data.len()`. A macro rather than a
/// function so that it inlines into each `target_feature` kernel.
#[cfg(target_arch = "x86_64")]
macro_rules! avx512_step {
    ($x:expr, $k:expr, $wide:expr, $data:expr, $pos:expr) => {{
        let x = $x;
        let slot = _mm512_and_si512(x, $k.slot_mask);
        // SAFETY (gathers): slots are < 2^L, the table length. (load): the
        // caller guarantees 32 readable bytes at $pos.
        let (g0, g1, w) = unsafe {
            (
                _mm512_i32gather_epi64::<8>(_mm512_castsi512_si256(slot), $wide),
                _mm512_i32gather_epi64::<8>(_mm512_extracti64x4_epi64::<1>(slot), $wide),
                _mm256_loadu_si256($data.as_ptr().add($pos).cast()),
            )
        };
        let e = _mm512_permutex2var_epi32(g0, $k.even, g1);
        let val = _mm512_permutex2var_epi32(g0, $k.odd, g1);
        let freq = _mm512_srli_epi32::<16>(e);
        let bias = _mm512_and_si512(e, $k.low16);
        let x = _mm512_add_epi32(
            _mm512_mullo_epi32(freq, _mm512_srl_epi32(x, $k.scale)),
            bias,
        );
        let need = _mm512_cmplt_epu32_mask(x, $k.state_low);
        let w = _mm512_maskz_expand_epi32(need, _mm512_cvtepu16_epi32(w));
        $x = _mm512_mask_or_epi32(x, need, _mm512_slli_epi32::<16>(x), w);
        $pos += 2 * need.count_ones() as usize;
        val
    }};
}
#[cfg(target_arch = "x86_64")]
pub(crate) use avx512_step;

impl<'a, T: SymbolValue> Decoder<'a, T> {
    /// Parses the stream header and reads the initial states.
    pub fn new(data: &'a [u8], table: &'a DecodeTable<T>) -> Result<Self, StreamError> {
        let hdr = |what| StreamError::BadHeader(what);
        let (&lw, &ns) = match data {
            [a, b, ..] => (a, b),
            _ => return Err(hdr("shorter than its header")),
        };
        if lw > 4 {
            return Err(hdr("unsupported layout"));
        }
        let layout = Layout {
            streams: usize::from(ns),
            lanes: 1 << lw,
        }
        .check()?;
        let mut pos = [0usize; MAX_STREAMS];
        let mut end = [0usize; MAX_STREAMS];
        let mut at = 2 + 4 * (layout.streams - 1);
        if data.len() < at {
            return Err(hdr("shorter than its header"));
        }
        for s in 0..layout.streams {
            let len = if s + 1 < layout.streams {
                u32::from_le_bytes(data[2 + 4 * s..6 + 4 * s].try_into().expect("4 bytes")) as usize
            } else {
                data.len() - at
            };
            if len > data.len() - at {
                return Err(hdr("stream lengths exceed the data"));
            }
            if len % 2 != 0 || len < 4 * layout.lanes {
                return Err(hdr("a stream is too short for its states"));
            }
            pos[s] = at;
            end[s] = at + len;
            at += len;
        }
        let mut x = [0u32; MAX_TOTAL_LANES];
        for s in 0..layout.streams {
            for j in 0..layout.lanes {
                let p = pos[s] + 4 * j;
                x[s * layout.lanes + j] = word(data, p) | (word(data, p + 2) << 16);
            }
            pos[s] += 4 * layout.lanes;
        }
        Ok(Self {
            data,
            table,
            layout,
            pos,
            end,
            next: 0,
            x,
        })
    }

    /// The stream's layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Decodes the next `out.len()` symbols.
    pub fn decode(&mut self, out: &mut [T]) -> Result<(), StreamError> {
        let total = self.layout.total();
        let mut out = out;
        // Realign to lane 0 with checked steps.
        while self.next != 0 && !out.is_empty() {
            out[0] = self.step_checked(self.next)?;
            self.next = (self.next + 1) % total;
            out = &mut out[1..];
        }
        let done = match self.layout.lanes {
            1 => self.bulk::<1>(out),
            2 => self.bulk::<2>(out),
            4 => self.bulk::<4>(out),
            8 => self.bulk::<8>(out),
            _ => self.bulk16(out),
        };
        for (j, o) in out[done..].iter_mut().enumerate() {
            *o = self.step_checked(j % total)?;
        }
        // Either realignment reached lane 0 or it used up `out`.
        self.next = (self.next + out.len()) % total;
        Ok(())
    }

    /// Checks that every stream was consumed exactly and every state is
    /// back at its initial value.
    pub fn finish(self) -> Result<(), StreamError> {
        let n = self.layout.streams;
        if self.pos[..n] != self.end[..n]
            || self.x[..self.layout.total()]
                .iter()
                .any(|&v| v != STATE_LOW)
        {
            return Err(StreamError::BadFinalState);
        }
        Ok(())
    }

    /// One bounds-checked step of lane `j`.
    #[inline(always)]
    fn step_checked(&mut self, j: usize) -> Result<T, StreamError> {
        let t = self.table;
        let l = t.scale_bits;
        let s = j / self.layout.lanes;
        let x = self.x[j];
        let slot = (x & ((1 << l) - 1)) as usize;
        let e = t.wide[slot];
        let mut v = ((e >> 16) as u32 & 0xffff) * (x >> l) + (e as u32 & 0xffff);
        if v < STATE_LOW {
            if self.pos[s] + 2 > self.end[s] {
                return Err(StreamError::Underrun);
            }
            v = (v << 16) | word(self.data, self.pos[s]);
            self.pos[s] += 2;
        }
        self.x[j] = v;
        Ok(T::from_u32((e >> 32) as u32))
    }

    /// Whether every stream holds at least `bytes` more bytes.
    #[inline(always)]
    fn all_have(&self, bytes: usize) -> bool {
        (0..self.layout.streams).all(|s| self.pos[s] + bytes <= self.end[s])
    }

    /// 16 lanes per stream: AVX-512 when the CPU has it.
    fn bulk16(&mut self, out: &mut [T]) -> usize {
        #[cfg(target_arch = "x86_64")]
        if crate::simd::avx512() {
            // SAFETY: the CPU supports AVX-512F and POPCNT.
            return unsafe { self.bulk_avx512(out) };
        }
        self.bulk::<16>(out)
    }

    /// Decodes whole groups of `S * W` symbols while every stream surely
    /// holds the words they may need; returns how many symbols it decoded.
    fn bulk<const W: usize>(&mut self, out: &mut [T]) -> usize {
        let l = self.table.scale_bits;
        let mask = (1u32 << l) - 1;
        let wide = &self.table.wide[..];
        assert!(wide.len() == 1 << l);
        let data = self.data;
        let streams = self.layout.streams;
        let mut done = 0;
        for group in out.chunks_exact_mut(W * streams) {
            if !self.all_have(2 * W) {
                break;
            }
            for s in 0..streams {
                let mut pos = self.pos[s];
                let x: &mut [u32; W] = (&mut self.x[s * W..(s + 1) * W])
                    .try_into()
                    .expect("W lanes");
                let g: &mut [T; W] = (&mut group[s * W..(s + 1) * W])
                    .try_into()
                    .expect("W symbols");
                for j in 0..W {
                    let v = x[j];
                    let slot = (v & mask) as usize;
                    // SAFETY: slot <= mask < 2^l == wide.len().
                    let e = unsafe { *wide.get_unchecked(slot) };
                    g[j] = T::from_u32((e >> 32) as u32);
                    let v = ((e >> 16) as u32 & 0xffff) * (v >> l) + (e as u32 & 0xffff);
                    // SAFETY: pos + 2 <= pos0 + 2 W <= end[s] <= data.len(),
                    // as pos advances by at most 2 per lane in this group.
                    let w = u32::from(u16::from_le(unsafe {
                        std::ptr::read_unaligned(data.as_ptr().add(pos).cast::<u16>())
                    }));
                    let need = v < STATE_LOW;
                    x[j] = if need { (v << 16) | w } else { v };
                    pos += 2 * usize::from(need);
                }
                self.pos[s] = pos;
            }
            done += W * streams;
        }
        done
    }

    /// AVX-512 version of [`Self::bulk`] for 16 lanes per stream: one
    /// vector per stream (see [`avx512_step`]).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,popcnt")]
    unsafe fn bulk_avx512(&mut self, out: &mut [T]) -> usize {
        use std::arch::x86_64::*;
        const V: usize = 16;
        let l = self.table.scale_bits;
        assert!(self.table.wide.len() == 1 << l);
        let wide = self.table.wide.as_ptr().cast::<i64>();
        let k = Avx512Consts::new(l);
        let data = self.data;
        let streams = self.layout.streams;
        let mut xv = [_mm512_setzero_si512(); MAX_STREAMS];
        for (s, v) in xv.iter_mut().take(streams).enumerate() {
            // SAFETY: self.x holds MAX_STREAMS * 16 states.
            *v = unsafe { _mm512_loadu_si512(self.x.as_ptr().add(s * V).cast()) };
        }
        let mut pos = self.pos;
        let mut done = 0;
        for group in out.chunks_exact_mut(V * streams) {
            // Each vector reads at most 16 words (32 bytes) with one load.
            if !(0..streams).all(|s| pos[s] + 2 * V <= self.end[s]) {
                break;
            }
            for (s, xs) in xv.iter_mut().take(streams).enumerate() {
                let val = avx512_step!(*xs, k, wide, data, pos[s]);
                let dst = group[s * V..(s + 1) * V].as_mut_ptr();
                // SAFETY: dst points to 16 values of T, which is u8, u16 or
                // u32 (sealed), so its size identifies the type.
                unsafe {
                    match std::mem::size_of::<T>() {
                        1 => _mm_storeu_si128(dst.cast(), _mm512_cvtepi32_epi8(val)),
                        2 => _mm256_storeu_si256(dst.cast(), _mm512_cvtepi32_epi16(val)),
                        _ => _mm512_storeu_si512(dst.cast(), val),
                    }
                }
            }
            done += V * streams;
        }
        for (s, v) in xv.iter().take(streams).enumerate() {
            // SAFETY: self.x holds MAX_STREAMS * 16 states.
            unsafe { _mm512_storeu_si512(self.x.as_mut_ptr().add(s * V).cast(), *v) };
        }
        self.pos = pos;
        done
    }
}

#[inline(always)]
fn word(data: &[u8], pos: usize) -> u32 {
    u32::from(u16::from_le_bytes([data[pos], data[pos + 1]]))
}

/// Decodes `out.len()` symbols from a whole coded sequence, writing each
/// symbol's table value.
///
/// Never panics on malformed input: a bad header, a short stream, left-over
/// words or a final state other than the start value are errors.
pub fn decode<T: SymbolValue>(
    data: &[u8],
    table: &DecodeTable<T>,
    out: &mut [T],
) -> Result<(), StreamError> {
    let mut d = Decoder::new(data, table)?;
    d.decode(out)?;
    d.finish()
}

/// Compresses a symbol sequence into a self-describing blob: element count,
/// alphabet, frequency table and rANS stream. Meant for streams that are not
/// float tensors (quantized codes, bytes); an empty input gives a blob that
/// decodes to nothing.
///
/// # Panics
/// If a symbol is `>= alphabet` or `alphabet > MAX_ALPHABET`.
#[track_caller]
pub fn compress_symbols(symbols: &[u16], alphabet: u32) -> Vec<u8> {
    assert!(alphabet <= MAX_ALPHABET);
    let counts = histogram(symbols, alphabet as usize);
    let mut out = Vec::new();
    out.extend_from_slice(&(symbols.len() as u64).to_le_bytes());
    out.extend_from_slice(&alphabet.to_le_bytes());
    if symbols.is_empty() {
        return out;
    }
    let table =
        FreqTable::from_counts(&counts, scale_for(&counts)).expect("non-empty and <= 2^15 symbols");
    let mut w = BitWriter::default();
    table.write(&mut w);
    let tbytes = w.finish();
    let stream = Encoder::new(&table)
        .encode(symbols, Layout::for_len(symbols.len()))
        .expect("table built from these symbols");
    out.extend_from_slice(&(tbytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&tbytes);
    out.extend_from_slice(&stream);
    out
}

/// Error from [`decompress_symbols`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    /// The blob's framing is inconsistent.
    #[error("symbol blob is truncated or malformed")]
    Malformed,
    /// The blob holds more symbols than the caller allows.
    #[error("symbol blob holds {0} symbols, more than the allowed maximum")]
    TooLong(u64),
    /// The frequency table is invalid.
    #[error(transparent)]
    Table(#[from] TableError),
    /// The rANS stream is invalid.
    #[error(transparent)]
    Stream(#[from] StreamError),
}

/// Inverse of [`compress_symbols`]; refuses blobs that claim more than
/// `max_len` symbols before allocating.
pub fn decompress_symbols(blob: &[u8], max_len: usize) -> Result<Vec<u16>, BlobError> {
    let field = |r: std::ops::Range<usize>| blob.get(r).ok_or(BlobError::Malformed);
    let n = u64::from_le_bytes(field(0..8)?.try_into().expect("8 bytes"));
    let alphabet = u32::from_le_bytes(field(8..12)?.try_into().expect("4 bytes"));
    if n > max_len as u64 {
        return Err(BlobError::TooLong(n));
    }
    if alphabet > MAX_ALPHABET {
        return Err(BlobError::Malformed);
    }
    if n == 0 {
        return if blob.len() == 12 {
            Ok(Vec::new())
        } else {
            Err(BlobError::Malformed)
        };
    }
    let tlen = u32::from_le_bytes(field(12..16)?.try_into().expect("4 bytes")) as usize;
    let tbytes = field(16..16usize.saturating_add(tlen))?;
    let table = FreqTable::read(&mut BitReader::new(tbytes), alphabet)?;
    let stream = &blob[16 + tlen..];
    let dec = DecodeTable::new(&table, |s| s as u16);
    let mut out = vec![0u16; n as usize];
    decode(stream, &dec, &mut out)?;
    Ok(out)
}

/// Scale for a histogram: 12 bits (4096-slot tables stay in L1 cache), more
/// only if more distinct symbols occur.
pub fn scale_for(counts: &[u64]) -> u32 {
    let present = counts.iter().filter(|&&c| c > 0).count().max(1);
    let need = usize::BITS - (present - 1).leading_zeros();
    need.clamp(12, MAX_SCALE_BITS)
}

/// Histogram of `symbols` over an alphabet of `alphabet` symbols.
///
/// # Panics
/// If a symbol is `>= alphabet`.
#[track_caller]
pub fn histogram<S: Copy + Into<usize>>(symbols: &[S], alphabet: usize) -> Vec<u64> {
    let mut h = vec![0u64; alphabet];
    for &s in symbols {
        h[s.into()] += 1;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha8Rng;
    use rand_chacha::rand_core::{Rng, SeedableRng};

    fn skewed(rng: &mut ChaCha8Rng, n: usize, alphabet: u32) -> Vec<u16> {
        // Geometric-ish: symbol k with probability ~ 2^-k/2.
        (0..n)
            .map(|_| {
                let r = rng.next_u32();
                ((r.trailing_zeros() * 2 + (r >> 31)) % alphabet) as u16
            })
            .collect()
    }

    #[test]
    fn reciprocal_division_is_exact() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for f in (1u32..=1 << 15)
            .step_by(7)
            .chain([1, 2, 3, 4095, 4096, 32767, 32768])
        {
            let table = {
                let mut counts = vec![0u64; 2];
                counts[0] = u64::from(f);
                counts[1] = u64::from((1u32 << 15) - f).max(1);
                FreqTable::from_counts(&counts, 15).unwrap()
            };
            let enc = Encoder::new(&table);
            for e in enc.syms.iter().filter(|e| e.freq != 0) {
                let f = u32::from(e.freq);
                for x in [0u32, 1, f - 1, f, u32::MAX, u32::MAX - 1, rng.next_u32()] {
                    let q =
                        ((((u128::from(x) * u128::from(e.rcp)) >> 32) as u64) >> e.shift) as u32;
                    assert_eq!(q, x / f, "x={x} f={f}");
                }
            }
        }
    }

    fn layouts() -> Vec<Layout> {
        let mut v = vec![];
        for streams in [1, 2, 3, 4, 8] {
            for lanes in [1, 2, 4, 8, 16] {
                v.push(Layout { streams, lanes });
            }
        }
        v
    }

    #[test]
    fn round_trip_all_layouts_and_lengths() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for layout in layouts() {
            for n in [1usize, 2, 3, 31, 32, 33, 100, 1000, 4097] {
                let syms = skewed(&mut rng, n, 40);
                let counts = histogram(&syms, 40);
                for scale in [8, 12, 15] {
                    let t = FreqTable::from_counts(&counts, scale).unwrap();
                    let stream = Encoder::new(&t).encode(&syms, layout).unwrap();
                    assert!(stream.len() >= layout.min_bytes());
                    let d = DecodeTable::new(&t, |s| s as u16);
                    let mut out = vec![0u16; n];
                    decode(&stream, &d, &mut out).unwrap();
                    assert_eq!(out, syms, "{layout:?} n={n} scale={scale}");
                    // Also in odd-sized blocks, which cross lane groups.
                    let mut out = vec![0u16; n];
                    let mut dec = Decoder::new(&stream, &d).unwrap();
                    for block in out.chunks_mut(37) {
                        dec.decode(block).unwrap();
                    }
                    dec.finish().unwrap();
                    assert_eq!(out, syms, "{layout:?} n={n} blocks");
                }
            }
        }
    }

    #[test]
    fn scalar_kernels_round_trip_all_layouts() {
        let mut rng = ChaCha8Rng::seed_from_u64(77);
        crate::simd::scalar_only(|| {
            for layout in layouts() {
                let syms = skewed(&mut rng, 3001, 40);
                let t = FreqTable::from_counts(&histogram(&syms, 40), 12).unwrap();
                let stream = Encoder::new(&t).encode(&syms, layout).unwrap();
                let mut out = vec![0u16; syms.len()];
                decode(&stream, &DecodeTable::new(&t, |s| s as u16), &mut out).unwrap();
                assert_eq!(out, syms, "{layout:?}");
            }
        });
    }

    #[test]
    fn vector_encoder_matches_scalar_encoder() {
        // encode_u16 (AVX-512 where available) must emit exactly the bytes
        // of the scalar encoder, including frequencies 1 and powers of two.
        let mut rng = ChaCha8Rng::seed_from_u64(78);
        for streams in [1, 2, 4, 8] {
            for n in [0usize, 15, 16 * streams, 16 * streams * 7 + 5, 50_000] {
                let mut syms = skewed(&mut rng, n, 300);
                if n > 3 {
                    syms[n / 2] = 299; // rare symbols: frequency 1
                    syms[1] = 298;
                }
                let counts = histogram(&syms, 300);
                if n == 0 {
                    continue;
                }
                for scale in [9, 12, 15] {
                    let t = FreqTable::from_counts(&counts, scale).unwrap();
                    let enc = Encoder::new(&t);
                    let layout = Layout { streams, lanes: 16 };
                    let a = enc.encode(&syms, layout).unwrap();
                    let b = enc.encode_u16(&syms, layout).unwrap();
                    assert!(a == b, "streams={streams} n={n} scale={scale}");
                    let mut out = vec![0u16; n];
                    decode(&b, &DecodeTable::new(&t, |s| s as u16), &mut out).unwrap();
                    assert_eq!(out, syms);
                }
            }
        }
        // Symbols absent from the table are errors on both paths.
        let t = FreqTable::from_counts(&[5, 0, 5], 12).unwrap();
        let syms = [0u16, 2, 1, 0].repeat(40);
        let layout = Layout {
            streams: 2,
            lanes: 16,
        };
        let enc = Encoder::new(&t);
        assert!(matches!(
            enc.encode(&syms, layout),
            Err(StreamError::AbsentSymbol(1))
        ));
        assert!(matches!(
            enc.encode_u16(&syms, layout),
            Err(StreamError::AbsentSymbol(1))
        ));
        let syms = [0u16, 2, 7, 0].repeat(40);
        assert!(matches!(
            enc.encode_u16(&syms, layout),
            Err(StreamError::AbsentSymbol(7))
        ));
    }

    #[test]
    fn value_types_round_trip() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let syms = skewed(&mut rng, 20_000, 200);
        let t = FreqTable::from_counts(&histogram(&syms, 200), 12).unwrap();
        let stream = Encoder::new(&t)
            .encode(&syms, Layout::for_len(syms.len()))
            .unwrap();
        let mut o8 = vec![0u8; syms.len()];
        decode(&stream, &DecodeTable::new(&t, |s| s as u8), &mut o8).unwrap();
        let mut o32 = vec![0u32; syms.len()];
        decode(
            &stream,
            &DecodeTable::new(&t, |s| (s as u32) << 20 | 7),
            &mut o32,
        )
        .unwrap();
        for ((&s, &a), &b) in syms.iter().zip(&o8).zip(&o32) {
            assert_eq!(u16::from(a), s);
            assert_eq!(b, u32::from(s) << 20 | 7);
        }
    }

    #[test]
    fn single_symbol_costs_nothing() {
        let syms = vec![5u16; 10_000];
        let t = FreqTable::from_counts(&histogram(&syms, 8), 12).unwrap();
        let layout = Layout {
            streams: 1,
            lanes: 4,
        };
        let stream = Encoder::new(&t).encode(&syms, layout).unwrap();
        assert_eq!(
            stream.len(),
            layout.min_bytes(),
            "only the header and flushed states"
        );
        let mut out = vec![0u16; syms.len()];
        decode(&stream, &DecodeTable::new(&t, |s| s as u16), &mut out).unwrap();
        assert_eq!(out, syms);
    }

    #[test]
    fn coded_size_tracks_entropy() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let n = 200_000;
        let syms = skewed(&mut rng, n, 24);
        let counts = histogram(&syms, 24);
        let h: f64 = counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / n as f64;
                -(c as f64) * p.log2()
            })
            .sum();
        let t = FreqTable::from_counts(&counts, 12).unwrap();
        let stream = Encoder::new(&t)
            .encode(
                &syms,
                Layout {
                    streams: 4,
                    lanes: 16,
                },
            )
            .unwrap();
        let bits = stream.len() as f64 * 8.0;
        // Within 0.5 % of the empirical entropy plus the 128-byte flush.
        assert!(bits < h * 1.005 + 8.0 * 300.0, "bits={bits} h={h}");
        assert!(
            bits > h * 0.999,
            "cannot beat the entropy: bits={bits} h={h}"
        );
        assert!((t.cost_bits(&counts) - bits).abs() < 0.002 * h + 8.0 * 300.0);
    }

    #[test]
    fn quantizer_total_and_presence() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for _ in 0..200 {
            let alphabet = 1 + (rng.next_u32() % 300) as usize;
            let counts: Vec<u64> = (0..alphabet)
                .map(|_| match rng.next_u32() % 4 {
                    0 => 0,
                    1 => 1,
                    2 => u64::from(rng.next_u32() % 50),
                    _ => u64::from(rng.next_u32()),
                })
                .collect();
            for scale in [9u32, 12] {
                match FreqTable::from_counts(&counts, scale) {
                    None => {
                        let present = counts.iter().filter(|&&c| c > 0).count();
                        assert!(present == 0 || present > 1 << scale);
                    }
                    Some(t) => {
                        assert_eq!(
                            t.freqs.iter().map(|&f| u64::from(f)).sum::<u64>(),
                            1 << scale
                        );
                        for (c, f) in counts.iter().zip(&t.freqs) {
                            assert_eq!(*c > 0, *f > 0);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn table_serialisation_round_trips() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for _ in 0..100 {
            let alphabet = 1 + (rng.next_u32() % 5000);
            let counts: Vec<u64> = (0..alphabet)
                .map(|_| {
                    if rng.next_u32() % 3 == 0 {
                        u64::from(rng.next_u32() % 1000)
                    } else {
                        0
                    }
                })
                .collect();
            let Some(t) = FreqTable::from_counts(&counts, 12) else {
                continue;
            };
            let mut w = BitWriter::default();
            t.write(&mut w);
            w.put(0b101, 3);
            let bytes = w.finish();
            let mut r = BitReader::new(&bytes);
            let back = FreqTable::read(&mut r, alphabet).unwrap();
            assert_eq!(back, t);
            assert_eq!(r.get(3).unwrap(), 0b101);
            assert!(t.serialized_bits() + 3 <= bytes.len() as u64 * 8);
            assert!(t.serialized_bits() + 3 + 8 > bytes.len() as u64 * 8);
        }
    }

    #[test]
    fn table_reader_rejects_garbage() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for _ in 0..2000 {
            let len = (rng.next_u32() % 64) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| rng.next_u32() as u8).collect();
            // Must not panic; when it succeeds the table must be consistent.
            if let Ok(t) = FreqTable::read(&mut BitReader::new(&bytes), 300) {
                assert_eq!(
                    t.freqs.iter().map(|&f| u64::from(f)).sum::<u64>(),
                    1 << t.scale_bits
                );
            }
        }
    }

    #[test]
    fn decoder_rejects_corruption_without_panicking() {
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        for layout in [
            Layout {
                streams: 1,
                lanes: 8,
            },
            Layout {
                streams: 4,
                lanes: 16,
            },
        ] {
            let syms = skewed(&mut rng, 5000, 30);
            let t = FreqTable::from_counts(&histogram(&syms, 30), 12).unwrap();
            let stream = Encoder::new(&t).encode(&syms, layout).unwrap();
            let d = DecodeTable::new(&t, |s| s as u16);
            let mut out = vec![0u16; syms.len()];
            // Truncation, extension, bit flips, bad headers.
            assert!(decode(&stream[..stream.len() - 2], &d, &mut out).is_err());
            assert!(decode(&stream[..10], &d, &mut out).is_err());
            assert!(decode(&stream[..1], &d, &mut out).is_err());
            let mut longer = stream.clone();
            longer.extend_from_slice(&[0, 0]);
            assert!(decode(&longer, &d, &mut out).is_err());
            let mut caught = 0;
            for k in 0..200 {
                let mut bad = stream.clone();
                let i = (rng.next_u32() as usize) % bad.len();
                bad[i] ^= 1 << (k % 8);
                if decode(&bad, &d, &mut out).is_err() || out != syms {
                    caught += 1;
                }
            }
            assert_eq!(caught, 200);
            let mut bad = stream.clone();
            bad[0] = 5;
            assert!(matches!(
                decode(&bad, &d, &mut out),
                Err(StreamError::BadHeader(_))
            ));
            let mut bad = stream.clone();
            bad[1] = 0;
            assert!(matches!(
                decode(&bad, &d, &mut out),
                Err(StreamError::BadHeader(_))
            ));
            if layout.streams > 1 {
                let mut bad = stream.clone();
                bad[2..6].copy_from_slice(&u32::MAX.to_le_bytes());
                assert!(matches!(
                    decode(&bad, &d, &mut out),
                    Err(StreamError::BadHeader(_))
                ));
            }
        }
    }

    #[test]
    fn symbol_blob_round_trip_and_limits() {
        let mut rng = ChaCha8Rng::seed_from_u64(17);
        for n in [0usize, 1, 5, 5000, 100_000] {
            let syms = skewed(&mut rng, n, 16);
            let blob = compress_symbols(&syms, 16);
            assert_eq!(decompress_symbols(&blob, n).unwrap(), syms);
            if n > 0 {
                assert!(matches!(
                    decompress_symbols(&blob, n - 1),
                    Err(BlobError::TooLong(_))
                ));
                assert!(decompress_symbols(&blob[..blob.len() - 1], n).is_err());
            }
        }
    }
}
