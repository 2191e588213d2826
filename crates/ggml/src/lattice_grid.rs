//! The scales of one lattice i-quant super-block, for callers that choose the
//! codebook points themselves.
//!
//! ggml's lattice encoders (IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S) pick each
//! sub-block's points at the sub-block's own, unquantized scale, then store
//! that scale as a 4-bit multiple of an f16 super-block scale — and keep the
//! points. [`LatticeGrid`] keeps the first half of that (ggml's scale choice
//! for the block's weights, as stored) and leaves the points to the caller:
//! every group of 8 (IQ2) or 4 (IQ3) weights decodes to
//! `± scale(j) · point(k)[i]`, where `scale(j)` is the decoded scale of the
//! sub-block holding weight `j` and `point(k)` the codebook entry's magnitudes.
//! GPTQ uses it to round group by group while it feeds each group's error
//! forward (`dynapress_compress::gptq_ggml`).
//!
//! Values are computed in the decoder's operation order, so
//! [`LatticeGrid::value`] is bit-identical to [`crate::dequantize`] of the
//! block [`LatticeGrid::assemble`] writes (tested for every type).

use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::float::f16_bits_to_f32;
use crate::iq_grids::{IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID};
use crate::iquants::{
    Abort, Candidates, Choice, Lattice, Sub, choose_lattice, ksign, lattice, pack_lattice, params,
};
use crate::types::GgmlType;

/// ggml's scale choice for one super-block (256 weights) of a lattice i-quant.
#[derive(Clone, Debug)]
pub struct LatticeGrid {
    ty: GgmlType,
    d_bits: u16,
    ls: [u8; 16],
    nonzero: bool,
    /// Decoded scale of each scale sub-block (`sub` weights each).
    scales: [f32; 16],
    sub: usize,
    dim: usize,
    parity: bool,
    points: &'static [[f32; 8]],
}

/// Magnitudes of every codebook point of `ty` (the decoder's grid bytes as f32).
fn magnitudes(ty: GgmlType) -> &'static [[f32; 8]] {
    static M: [OnceLock<Vec<[f32; 8]>>; 5] = [const { OnceLock::new() }; 5];
    let build = |table: &[u64], dim: usize| {
        table
            .iter()
            .map(|&e| {
                let mut p = [0f32; 8];
                for (i, v) in p.iter_mut().enumerate().take(dim) {
                    *v = ((e >> (8 * i)) as u8) as f32;
                }
                p
            })
            .collect::<Vec<_>>()
    };
    let widen = |t: &[u32]| t.iter().map(|&v| v as u64).collect::<Vec<u64>>();
    match ty {
        GgmlType::IQ2XXS => M[0].get_or_init(|| build(&IQ2XXS_GRID, 8)),
        GgmlType::IQ2XS => M[1].get_or_init(|| build(&IQ2XS_GRID, 8)),
        GgmlType::IQ2S => M[2].get_or_init(|| build(&IQ2S_GRID, 8)),
        GgmlType::IQ3XXS => M[3].get_or_init(|| build(&widen(&IQ3XXS_GRID), 4)),
        GgmlType::IQ3S => M[4].get_or_init(|| build(&widen(&IQ3S_GRID), 4)),
        _ => unreachable!("{ty} is not a lattice i-quant"),
    }
}

impl LatticeGrid {
    /// ggml's scales for the super-block `block` (256 weights) with the
    /// importance vector `imatrix` (256 entries; required for IQ2_XXS and
    /// IQ2_XS, as in ggml): the f16 super-block scale and 4-bit sub-block
    /// scales that [`crate::quantize`] would store for these weights.
    ///
    /// Errors: [`Error::NotLattice`], [`Error::SuperBlockLength`],
    /// [`Error::ImatrixRequired`], [`Error::ImatrixLength`],
    /// [`Error::ImatrixNotFinite`], [`Error::NonFinite`] (row 0) and
    /// [`Error::EncoderAbort`] (row 0, block 0) where ggml's encoder aborts.
    pub fn new(ty: GgmlType, block: &[f32], imatrix: Option<&[f32]>) -> Result<LatticeGrid> {
        if !ty.is_lattice() {
            return Err(Error::NotLattice { ty });
        }
        if block.len() != 256 {
            return Err(Error::SuperBlockLength {
                ty,
                got: block.len(),
            });
        }
        if ty.requires_imatrix() && imatrix.is_none() {
            return Err(Error::ImatrixRequired { ty });
        }
        if let Some(q) = imatrix {
            if q.len() != 256 {
                return Err(Error::ImatrixLength {
                    ty,
                    got: q.len(),
                    n_per_row: 256,
                });
            }
            if let Some((index, &value)) = q.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(Error::ImatrixNotFinite { index, value });
            }
        }
        if let Some(col) = block.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                ty,
                row: 0,
                col,
                value: block[col],
            });
        }
        let c = choose_lattice(ty, block, imatrix).map_err(|Abort| Error::EncoderAbort {
            ty,
            row: 0,
            block: 0,
        })?;
        let p = params(ty);
        let d = f16_bits_to_f32(if c.nonzero { c.d_bits } else { 0 });
        let mut scales = [0f32; 16];
        for (ib, s) in scales.iter_mut().enumerate().take(256 / p.sub) {
            let l = c.ls[ib];
            // The decoders' expressions (dequantize_row_iq*).
            *s = match ty {
                GgmlType::IQ2XXS | GgmlType::IQ2XS | GgmlType::IQ2S => d * (0.5 + l as f32) * 0.25,
                GgmlType::IQ3XXS => d * (0.5 + l as f32) * 0.5,
                GgmlType::IQ3S => d * (1 + 2 * l as i32) as f32,
                _ => unreachable!(),
            };
        }
        Ok(LatticeGrid {
            ty,
            d_bits: c.d_bits,
            ls: c.ls,
            nonzero: c.nonzero,
            scales,
            sub: p.sub,
            dim: if matches!(ty, GgmlType::IQ3XXS | GgmlType::IQ3S) {
                4
            } else {
                8
            },
            parity: p.parity_signs,
            points: magnitudes(ty),
        })
    }

    /// The type.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// Weights per codebook point: 8 (IQ2_*) or 4 (IQ3_*).
    pub fn group_len(&self) -> usize {
        self.dim
    }

    /// Number of codebook points (256, 512 or 1024).
    pub fn num_points(&self) -> usize {
        self.points.len()
    }

    /// Magnitudes of point `k` (its `group_len()` grid values, before scale
    /// and sign).
    pub fn point(&self, k: usize) -> &[f32] {
        &self.points[k][..self.dim]
    }

    /// Appends to `out` the points near the magnitudes `t` (one group,
    /// before scale) of weight `j`'s group: every coordinate is rounded to
    /// its nearest level at `scale(j)`; if those levels are a codebook point
    /// it is the only candidate, else ggml's neighbour list of them (the
    /// points at its few smallest lattice distances). Negative magnitudes
    /// round to the lowest level.
    pub fn near_points(&self, j: usize, t: &[f32], out: &mut Vec<u16>) {
        let s = self.scale(j);
        let lat: &Lattice = lattice(self.ty);
        let lv = &lat.level_values;
        let mut l = [0i8; 8];
        for (i, &x) in t.iter().enumerate().take(self.dim) {
            let mut best = (f32::INFINITY, 0usize);
            for (k, &v) in lv.iter().enumerate() {
                let d = (x - s * v).abs();
                if d < best.0 {
                    best = (d, k);
                }
            }
            l[i] = best.1 as i8;
        }
        match lat.candidates(&l[..self.dim]) {
            Candidates::Point(k) => out.push(k),
            Candidates::List(list) => out.extend_from_slice(list),
        }
    }

    /// True when only 7 sign bits are stored per 8 weights (IQ2_XXS, IQ2_XS,
    /// IQ3_XXS): the number of negative weights in each run of 8 is even.
    pub fn parity_signs(&self) -> bool {
        self.parity
    }

    /// The decoded scale of weight `j`'s sub-block (0 in an all-zero block).
    pub fn scale(&self, j: usize) -> f32 {
        if self.nonzero {
            self.scales[j / self.sub]
        } else {
            0.0
        }
    }

    /// The decoded value of weight `j` (`0..256`) when its group holds point
    /// `k` and `negative` is its sign bit: bit-identical to the decoder.
    #[inline]
    pub fn value(&self, j: usize, k: usize, negative: bool) -> f32 {
        let v = self.scale(j) * self.points[k][j % self.dim];
        if !self.nonzero {
            return v;
        }
        v * if negative { -1.0 } else { 1.0 }
    }

    /// Writes the block: `points` has one codebook index per group
    /// (`256 / group_len()`), `signs` one byte per 8 weights (32; bit `i` set
    /// = weight `8s + i` negative; with parity signs bit 7 is not stored and
    /// decodes as the parity of the other seven). In an all-zero super-block
    /// (scale 0) the block is all zero bytes, as ggml writes it.
    pub fn assemble(&self, points: &[u16], signs: &[u8], out: &mut [u8]) {
        assert_eq!(points.len(), 256 / self.dim, "one point per group");
        assert_eq!(signs.len(), 32, "one sign byte per 8 weights");
        assert_eq!(out.len(), self.ty.type_size(), "one block");
        let mut subs: [Option<Sub>; 16] = [None; 16];
        if self.nonzero {
            let gps = self.sub / self.dim;
            for (ib, s) in subs.iter_mut().enumerate().take(256 / self.sub) {
                let mut sub = Sub {
                    scale: self.scales[ib],
                    points: [0; 8],
                    signs: [0; 4],
                };
                sub.points[..gps].copy_from_slice(&points[ib * gps..(ib + 1) * gps]);
                for (k, b) in sub.signs.iter_mut().enumerate().take(self.sub / 8) {
                    let v = signs[ib * self.sub / 8 + k];
                    *b = if self.parity { v & 127 } else { v };
                }
                *s = Some(sub);
            }
        }
        let c = Choice {
            subs,
            ls: self.ls,
            d_bits: self.d_bits,
            nonzero: self.nonzero,
        };
        pack_lattice(self.ty, &c, out);
    }

    /// The sign pattern a stored sign byte decodes to (parity types: ggml's
    /// `ksigns_iq2xs` of the low 7 bits).
    pub fn decoded_signs(&self, stored: u8) -> u8 {
        if self.parity {
            ksign(stored & 127)
        } else {
            stored
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..256)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32 - 0.5) * 0.2
            })
            .collect()
    }

    #[test]
    fn values_equal_the_decoder_for_every_type() {
        for ty in [
            GgmlType::IQ2XXS,
            GgmlType::IQ2XS,
            GgmlType::IQ2S,
            GgmlType::IQ3XXS,
            GgmlType::IQ3S,
        ] {
            for seed in 0..4 {
                let x = block(seed);
                let q: Vec<f32> = (0..256).map(|i| 0.5 + (i % 7) as f32 * 0.1).collect();
                let g = LatticeGrid::new(ty, &x, Some(&q)).unwrap();
                let ng = 256 / g.group_len();
                let points: Vec<u16> = (0..ng)
                    .map(|k| ((k * 37 + seed as usize * 11) % g.num_points()) as u16)
                    .collect();
                let signs: Vec<u8> = (0..32).map(|k| (k * 29 + seed as usize) as u8).collect();
                let mut out = vec![0u8; ty.type_size()];
                g.assemble(&points, &signs, &mut out);
                let dq = crate::dequantize(ty, &out, 256).unwrap();
                for j in 0..256 {
                    let s = g.decoded_signs(signs[j / 8]);
                    let v = g.value(
                        j,
                        points[j / g.group_len()] as usize,
                        s & (1 << (j % 8)) != 0,
                    );
                    assert_eq!(v.to_bits(), dq[j].to_bits(), "{ty} seed {seed} weight {j}");
                }
            }
        }
    }

    #[test]
    fn scales_are_those_ggml_stores() {
        // Rounding each group to ggml's own points reproduces quantize() on
        // the scale bytes: the f16 d and the 4-bit sub-block scales agree.
        for ty in [GgmlType::IQ2XS, GgmlType::IQ3XXS, GgmlType::IQ3S] {
            let x = block(9);
            let q = vec![1.0f32; 256];
            let g = LatticeGrid::new(ty, &x, Some(&q)).unwrap();
            let ggml = crate::quantize(ty, &x, 256, Some(&q)).unwrap();
            let dq = crate::dequantize(ty, &ggml, 256).unwrap();
            // Every decoded magnitude is scale(j) × a grid value of the type.
            for (j, &v) in dq.iter().enumerate() {
                let s = g.scale(j);
                assert!(s > 0.0);
                let m = v.abs() / s;
                let on_grid = (0..g.num_points()).any(|k| g.point(k).contains(&m));
                assert!(on_grid, "{ty} weight {j}: {v} / {s}");
            }
        }
    }

    #[test]
    fn refuses_what_it_cannot_build() {
        let x = block(1);
        assert_eq!(
            LatticeGrid::new(GgmlType::Q4K, &x, None).unwrap_err(),
            Error::NotLattice { ty: GgmlType::Q4K }
        );
        assert_eq!(
            LatticeGrid::new(GgmlType::IQ3S, &x[..128], None).unwrap_err(),
            Error::SuperBlockLength {
                ty: GgmlType::IQ3S,
                got: 128
            }
        );
        assert_eq!(
            LatticeGrid::new(GgmlType::IQ2XXS, &x, None).unwrap_err(),
            Error::ImatrixRequired {
                ty: GgmlType::IQ2XXS
            }
        );
    }
}
