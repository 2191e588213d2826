//! Bit packing of small unsigned integers.
//!
//! Codes (and asymmetric zero points) are stored as one little-endian bit
//! stream: value `i` occupies bits `[i·b, (i+1)·b)` of the stream, where bit
//! `k` of the stream is bit `k % 8` of byte `k / 8` (LSB first). A 3-, 5-, 6- or
//! 7-bit value may therefore straddle a byte boundary. The stream is padded with
//! zero bits to a whole byte, so `n` values take exactly `⌈n·b / 8⌉` bytes.

/// Number of bytes that `count` values of `bits` bits occupy once packed.
#[inline]
pub fn packed_len(count: usize, bits: u8) -> usize {
    (count * bits as usize).div_ceil(8)
}

/// Packs `values` (each `< 2^bits`) into a bit stream of [`packed_len`] bytes.
///
/// # Panics
/// If `bits` is not in `1..=8` or a value does not fit in `bits` bits
/// (a contract between our own functions: codes come from the quantizer).
#[track_caller]
pub fn pack_bits(values: &[u8], bits: u8) -> Vec<u8> {
    assert!((1..=8).contains(&bits), "bits must be in 1..=8, got {bits}");
    let max = ((1u16 << bits) - 1) as u8;
    assert!(
        values.iter().all(|&v| v <= max),
        "a value does not fit in {bits} bits"
    );
    let mut out = vec![0u8; packed_len(values.len(), bits)];
    match bits {
        8 => out.copy_from_slice(values),
        1 | 2 | 4 => {
            // Byte-aligned groups: 8/bits values per byte, no straddling.
            let per = 8 / bits as usize;
            for (byte, chunk) in out.iter_mut().zip(values.chunks(per)) {
                let mut b = 0u8;
                for (k, &v) in chunk.iter().enumerate() {
                    b |= v << (k * bits as usize);
                }
                *byte = b;
            }
        }
        _ => {
            // General case through a 64-bit accumulator.
            let mut acc: u64 = 0;
            let mut nacc: u32 = 0;
            let mut pos = 0;
            for &v in values {
                acc |= (v as u64) << nacc;
                nacc += bits as u32;
                while nacc >= 8 {
                    out[pos] = acc as u8;
                    pos += 1;
                    acc >>= 8;
                    nacc -= 8;
                }
            }
            if nacc > 0 {
                out[pos] = acc as u8;
            }
        }
    }
    out
}

/// Unpacks `count` values of `bits` bits from `bytes`.
///
/// Returns `None` when `bytes.len() != packed_len(count, bits)` or when the
/// padding bits after the last value are not zero (a corrupt buffer).
///
/// # Panics
/// If `bits` is not in `1..=8`.
#[track_caller]
pub fn unpack_bits(bytes: &[u8], bits: u8, count: usize) -> Option<Vec<u8>> {
    assert!((1..=8).contains(&bits), "bits must be in 1..=8, got {bits}");
    if bytes.len() != packed_len(count, bits) {
        return None;
    }
    let used_bits = count * bits as usize;
    if !used_bits.is_multiple_of(8) {
        let last = bytes[bytes.len() - 1];
        if last >> (used_bits % 8) != 0 {
            return None;
        }
    }
    let mask = ((1u16 << bits) - 1) as u8;
    let mut out = Vec::with_capacity(count);
    match bits {
        8 => out.extend_from_slice(bytes),
        1 | 2 | 4 => {
            let per = 8 / bits as usize;
            'outer: for &b in bytes {
                for k in 0..per {
                    if out.len() == count {
                        break 'outer;
                    }
                    out.push((b >> (k * bits as usize)) & mask);
                }
            }
        }
        _ => {
            let mut acc: u64 = 0;
            let mut nacc: u32 = 0;
            let mut it = bytes.iter();
            while out.len() < count {
                while nacc < bits as u32 {
                    // Length was checked above, so the stream cannot run dry.
                    let b = *it.next()?;
                    acc |= (b as u64) << nacc;
                    nacc += 8;
                }
                out.push((acc as u8) & mask);
                acc >>= bits;
                nacc -= bits as u32;
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit-by-bit reference packer (the definition in the module docs).
    fn pack_reference(values: &[u8], bits: u8) -> Vec<u8> {
        let mut out = vec![0u8; packed_len(values.len(), bits)];
        for (i, &v) in values.iter().enumerate() {
            for j in 0..bits as usize {
                if (v >> j) & 1 == 1 {
                    let k = i * bits as usize + j;
                    out[k / 8] |= 1 << (k % 8);
                }
            }
        }
        out
    }

    #[test]
    fn round_trip_all_widths_and_lengths() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for bits in 1..=8u8 {
            for count in [0usize, 1, 2, 3, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000] {
                let values: Vec<u8> = (0..count)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        (state as u8) & (((1u16 << bits) - 1) as u8)
                    })
                    .collect();
                let packed = pack_bits(&values, bits);
                assert_eq!(packed.len(), packed_len(count, bits));
                assert_eq!(
                    packed,
                    pack_reference(&values, bits),
                    "bits {bits} n {count}"
                );
                assert_eq!(unpack_bits(&packed, bits, count).unwrap(), values);
            }
        }
    }

    #[test]
    fn straddling_three_bit_layout() {
        // 3-bit values 0b101, 0b011, 0b110. Stream bits 0..9 (each value LSB
        // first): 1 0 1 | 1 1 0 | 0 1 1, so byte 0 holds bits 0..8 read from
        // bit 7 down to bit 0 as 1001_1101 and byte 1 holds the last bit.
        let packed = pack_bits(&[0b101, 0b011, 0b110], 3);
        assert_eq!(packed, vec![0b1001_1101, 0b0000_0001]);
    }

    #[test]
    fn corrupt_buffers_are_rejected() {
        let packed = pack_bits(&[1, 2, 3, 4, 5], 3);
        assert!(unpack_bits(&packed[..1], 3, 5).is_none());
        let mut longer = packed.clone();
        longer.push(0);
        assert!(unpack_bits(&longer, 3, 5).is_none());
        let mut dirty = packed.clone();
        *dirty.last_mut().unwrap() |= 0x80; // a padding bit set
        assert!(unpack_bits(&dirty, 3, 5).is_none());
    }
}
