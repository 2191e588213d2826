//! XXH3-64 (seed 0, default secret) with an AVX-512 long-input path.
//!
//! The container's checksums are plain XXH3-64 values, as computed by
//! `xxhash_rust::xxh3::xxh3_64`; that crate picks its SIMD width at compile
//! time (SSE2 for the default x86-64 target). Checksumming every decoded
//! chunk is a fifth of the decoding time at SSE2 speed, so inputs longer
//! than 240 bytes take this runtime-dispatched AVX-512 path, which follows
//! the XXH3 definition (xxHash `doc/xxhash_spec.md`, "XXH3 long input"):
//!
//! - eight 64-bit accumulators start at fixed primes;
//! - each 64-byte stripe `d` with secret window `s` updates
//!   `acc[i ^ 1] += d[i]` and `acc[i] += lo32(d[i] ^ s[i]) * hi32(d[i] ^ s[i])`;
//! - stripes come in blocks of `(192 - 64) / 8 = 16`, the secret window
//!   advancing 8 bytes per stripe; after each block the accumulators are
//!   scrambled: `acc ^= acc >> 47; acc ^= s_last; acc *= PRIME32_1`;
//! - the last partial block, then the input's last 64 bytes (secret at
//!   `192 - 64 - 7`), are accumulated; the accumulators merge pairwise with
//!   the secret at offset 11 into a 128-bit multiply-fold, seeded with
//!   `len * PRIME64_1`, followed by an avalanche.
//!
//! The tests check equality with `xxhash_rust` on many lengths.

use xxhash_rust::const_xxh3::const_custom_default_secret;

/// The default secret (the custom secret of seed 0 is the default one).
const SECRET: [u8; 192] = const_custom_default_secret(0);
const STRIPE: usize = 64;
const BLOCK: usize = STRIPE * 16;

// Primes of the xxHash specification.
const PRIME32_1: u64 = 0x9E37_79B1;
const PRIME32_2: u64 = 0x85EB_CA77;
const PRIME32_3: u64 = 0xC2B2_AE3D;
const PRIME64_1: u64 = 0x9E37_79B1_85EB_CA87;
const PRIME64_2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const PRIME64_3: u64 = 0x1656_67B1_9E37_79F9;
const PRIME64_4: u64 = 0x85EB_CA77_C2B2_AE63;
const PRIME64_5: u64 = 0x27D4_EB2F_1656_67C5;

/// XXH3-64 of `bytes` with seed 0.
pub(crate) fn xxh3_64(bytes: &[u8]) -> u64 {
    Xxh3Stream::new().finish(bytes)
}

/// XXH3-64 of a buffer that is being filled front to back: [`update`]
/// hashes the 1 KiB blocks that are ready while they are still in cache,
/// [`finish`] the rest. The result equals [`xxh3_64`] of the whole buffer.
///
/// [`update`]: Xxh3Stream::update
/// [`finish`]: Xxh3Stream::finish
pub(crate) struct Xxh3Stream {
    acc: [u64; 8],
    /// Blocks hashed so far.
    blocks: usize,
}

impl Xxh3Stream {
    pub(crate) fn new() -> Self {
        Self {
            acc: [
                PRIME32_3, PRIME64_1, PRIME64_2, PRIME64_3, PRIME64_4, PRIME32_2, PRIME64_5,
                PRIME32_1,
            ],
            blocks: 0,
        }
    }

    /// Hashes the blocks of `data[..ready]` not hashed yet (`data` is the
    /// whole buffer, whose final length is already known).
    pub(crate) fn update(&mut self, data: &[u8], ready: usize) {
        #[cfg(target_arch = "x86_64")]
        if data.len() > 240 && crate::simd::avx512() {
            // The last block always goes through `finish` (XXH3 treats a
            // final full block like a partial one).
            let upto = (ready / BLOCK).min((data.len() - 1) / BLOCK);
            if upto > self.blocks {
                // SAFETY: the CPU supports AVX-512F; blocks lie inside data.
                unsafe { self.blocks_avx512(data, upto) };
            }
        }
        let _ = (data, ready);
    }

    /// The hash of the whole of `data`.
    pub(crate) fn finish(mut self, data: &[u8]) -> u64 {
        #[cfg(target_arch = "x86_64")]
        if data.len() > 240 && crate::simd::avx512() {
            // SAFETY: the CPU supports AVX-512F.
            return unsafe { self.finish_avx512(data) };
        }
        let _ = &mut self;
        xxhash_rust::xxh3::xxh3_64(data)
    }

    /// Accumulates blocks `self.blocks..upto` (16 stripes each, then a
    /// scramble).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn blocks_avx512(&mut self, data: &[u8], upto: usize) {
        use std::arch::x86_64::*;
        assert!(upto * BLOCK <= data.len());
        let secret = SECRET.as_ptr();
        // SAFETY (loads and stores): acc holds 64 bytes; secret windows end
        // at most at byte 192 of SECRET; blocks lie inside data (asserted).
        let mut acc = unsafe { _mm512_loadu_si512(self.acc.as_ptr().cast()) };
        let last_key = unsafe { _mm512_loadu_si512(secret.add(192 - STRIPE).cast()) };
        let p32 = _mm512_set1_epi64(PRIME32_1 as i64);
        for b in self.blocks..upto {
            for s in 0..16 {
                acc = unsafe {
                    accumulate(
                        acc,
                        data.as_ptr().add(b * BLOCK + s * STRIPE),
                        secret.add(8 * s),
                    )
                };
            }
            // Scramble: acc = (acc ^ acc >> 47 ^ key) * PRIME32_1 (mod 2^64).
            let a = _mm512_xor_si512(
                _mm512_xor_si512(acc, _mm512_srli_epi64::<47>(acc)),
                last_key,
            );
            let lo = _mm512_mul_epu32(a, p32);
            let hi = _mm512_mul_epu32(_mm512_srli_epi64::<32>(a), p32);
            acc = _mm512_add_epi64(lo, _mm512_slli_epi64::<32>(hi));
        }
        unsafe { _mm512_storeu_si512(self.acc.as_mut_ptr().cast(), acc) };
        self.blocks = upto;
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn finish_avx512(&mut self, data: &[u8]) -> u64 {
        use std::arch::x86_64::*;
        let len = data.len();
        debug_assert!(len > 240);
        let blocks = (len - 1) / BLOCK;
        // SAFETY: as in blocks_avx512.
        unsafe { self.blocks_avx512(data, blocks) };
        let secret = SECRET.as_ptr();
        let p = data.as_ptr();
        // SAFETY: the remaining stripes and the last 64 bytes lie inside
        // data; the secret windows inside SECRET; acc holds 64 bytes.
        unsafe {
            let mut acc = _mm512_loadu_si512(self.acc.as_ptr().cast());
            let stripes = ((len - 1) - BLOCK * blocks) / STRIPE;
            for s in 0..stripes {
                acc = accumulate(acc, p.add(blocks * BLOCK + s * STRIPE), secret.add(8 * s));
            }
            acc = accumulate(acc, p.add(len - STRIPE), secret.add(192 - STRIPE - 7));
            _mm512_storeu_si512(self.acc.as_mut_ptr().cast(), acc);
        }
        merge(&self.acc, len)
    }
}

/// One stripe: `acc[i ^ 1] += d[i]; acc[i] += lo32(d[i] ^ k[i]) * hi32(d[i] ^ k[i])`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn accumulate(
    acc: std::arch::x86_64::__m512i,
    stripe: *const u8,
    key: *const u8,
) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    // SAFETY: the caller passes 64 readable bytes at both pointers.
    let (d, k) = unsafe {
        (
            _mm512_loadu_si512(stripe.cast()),
            _mm512_loadu_si512(key.cast()),
        )
    };
    let dk = _mm512_xor_si512(d, k);
    let prod = _mm512_mul_epu32(dk, _mm512_srli_epi64::<32>(dk));
    let swapped = _mm512_shuffle_epi32::<0x4E>(d);
    _mm512_add_epi64(acc, _mm512_add_epi64(prod, swapped))
}

fn read64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn merge(acc: &[u64; 8], len: usize) -> u64 {
    let mut r = (len as u64).wrapping_mul(PRIME64_1);
    for i in 0..4 {
        let a = acc[2 * i] ^ read64(&SECRET, 11 + 16 * i);
        let b = acc[2 * i + 1] ^ read64(&SECRET, 11 + 16 * i + 8);
        let p = u128::from(a) * u128::from(b);
        r = r.wrapping_add((p as u64) ^ ((p >> 64) as u64));
    }
    r ^= r >> 37;
    r = r.wrapping_mul(0x1656_6791_9E37_79F9);
    r ^ (r >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha8Rng;
    use rand_chacha::rand_core::{Rng, SeedableRng};

    #[test]
    fn matches_xxhash_rust_at_every_length_class() {
        let mut rng = ChaCha8Rng::seed_from_u64(31);
        let data: Vec<u8> = (0..(1 << 20) + 100).map(|_| rng.next_u32() as u8).collect();
        let mut lens: Vec<usize> = (0..600).collect();
        lens.extend([
            1023,
            1024,
            1025,
            1087,
            1088,
            1089,
            2047,
            2048,
            2049,
            4096,
            65_537,
            1 << 20,
        ]);
        lens.extend((0..200).map(|_| rng.next_u32() as usize % data.len()));
        for len in lens {
            for off in [0, 3] {
                let b = &data[off..off + len];
                assert_eq!(
                    xxh3_64(b),
                    xxhash_rust::xxh3::xxh3_64(b),
                    "len {len} off {off}"
                );
            }
        }
    }
}
