//! LSB-first bit packing: a writer, a bounds-checked reader, and Elias-gamma
//! codes for the small integers in frequency tables.
//!
//! Bit `i` of the stream is bit `i % 8` of byte `i / 8`. A value of `w` bits
//! written at bit position `p` occupies bits `p .. p + w`, its least
//! significant bit first. The raw sign/mantissa plane of a float chunk uses
//! the same layout, so element `i` of width `w` sits at bit `i * w`.

/// Appends bit fields of up to 57 bits each to a byte vector.
#[derive(Default)]
pub(crate) struct BitWriter {
    bytes: Vec<u8>,
    acc: u64,
    nbits: u32,
}

impl BitWriter {
    /// Writes the low `width` bits of `value` (`width <= 57`).
    #[inline]
    pub(crate) fn put(&mut self, value: u64, width: u32) {
        debug_assert!(width <= 57);
        debug_assert!(width == 64 || value >> width == 0);
        self.acc |= value << self.nbits;
        self.nbits += width;
        while self.nbits >= 8 {
            self.bytes.push(self.acc as u8);
            self.acc >>= 8;
            self.nbits -= 8;
        }
    }

    /// Writes `v >= 1` as an Elias-gamma code: `floor(log2 v)` zero bits, a
    /// one bit, then the bits of `v` below its leading one.
    pub(crate) fn put_gamma(&mut self, v: u32) {
        debug_assert!(v >= 1);
        let n = 31 - v.leading_zeros();
        self.put(1u64 << n, n + 1);
        self.put(u64::from(v) & ((1u64 << n) - 1), n);
    }

    /// Pads the last byte with zero bits and returns the bytes.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        if self.nbits > 0 {
            self.bytes.push(self.acc as u8);
        }
        self.bytes
    }
}

/// The stream ended before a field was complete, or a code was malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BitsExhausted;

/// Reads fields written by [`BitWriter`]; every read is bounds-checked.
pub(crate) struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    /// Reads `width <= 57` bits.
    pub(crate) fn get(&mut self, width: u32) -> Result<u64, BitsExhausted> {
        debug_assert!(width <= 57);
        if width == 0 {
            return Ok(0);
        }
        let end = self.pos.checked_add(width as usize).ok_or(BitsExhausted)?;
        if end > self.bytes.len() * 8 {
            return Err(BitsExhausted);
        }
        let v = read_bits(self.bytes, self.pos, width);
        self.pos = end;
        Ok(v)
    }

    /// Reads an Elias-gamma code written by [`BitWriter::put_gamma`].
    pub(crate) fn get_gamma(&mut self) -> Result<u32, BitsExhausted> {
        let mut n = 0u32;
        while self.get(1)? == 0 {
            n += 1;
            if n > 31 {
                return Err(BitsExhausted);
            }
        }
        let low = self.get(n)? as u32;
        Ok((1u32 << n) | low)
    }
}

/// Reads `width <= 57` bits at bit position `pos` of `bytes`; the caller
/// guarantees `pos + width <= 8 * bytes.len()`.
#[inline]
pub(crate) fn read_bits(bytes: &[u8], pos: usize, width: u32) -> u64 {
    let byte = pos / 8;
    let shift = (pos % 8) as u32;
    let mask = (1u64 << width) - 1;
    if let Some(word) = bytes.get(byte..byte + 8) {
        let w = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        (w >> shift) & mask
    } else {
        let mut buf = [0u8; 8];
        let tail = &bytes[byte..];
        buf[..tail.len()].copy_from_slice(tail);
        (u64::from_le_bytes(buf) >> shift) & mask
    }
}

/// Number of bits of the Elias-gamma code of `v >= 1`.
pub(crate) fn gamma_len(v: u32) -> u32 {
    2 * (31 - v.leading_zeros()) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_gamma_round_trip() {
        let mut w = BitWriter::default();
        let fields: Vec<(u64, u32)> = (0..500u64)
            .map(|i| {
                let width = (i * 7 % 58) as u32;
                let v = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) & ((1u64 << width) - 1);
                (v, width)
            })
            .collect();
        for &(v, width) in &fields {
            w.put(v, width);
            w.put_gamma((v as u32) | 1);
        }
        let bytes = w.finish();
        let mut r = BitReader::new(&bytes);
        for &(v, width) in &fields {
            assert_eq!(r.get(width).unwrap(), v);
            assert_eq!(r.get_gamma().unwrap(), (v as u32) | 1);
        }
        // Only padding (< 8 bits) remains.
        assert!(r.get(8).is_err());
    }

    #[test]
    fn gamma_length_matches_writer() {
        for v in [1u32, 2, 3, 4, 7, 8, 255, 256, 4096, u32::MAX] {
            let mut w = BitWriter::default();
            w.put_gamma(v);
            w.put(1, 1);
            let bytes = w.finish();
            let mut r = BitReader::new(&bytes);
            assert_eq!(r.get_gamma().unwrap(), v);
            assert_eq!(r.pos as u32, gamma_len(v));
        }
    }

    #[test]
    fn reader_rejects_overrun_and_runaway_gamma() {
        let mut r = BitReader::new(&[0u8; 5]);
        assert_eq!(r.get_gamma(), Err(BitsExhausted));
        let mut r = BitReader::new(&[0xff]);
        assert_eq!(r.get(9), Err(BitsExhausted));
    }
}
