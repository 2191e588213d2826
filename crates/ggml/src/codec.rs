//! Whole-tensor encode and decode, parallel across rows.

// Index loops mirror ggml's reference loops, which keeps the order of the f32
// operations (and so bit-exactness) easy to audit.
#![allow(clippy::needless_range_loop)]

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::float::{bf16_bits_to_f32, f16_bits_to_f32, f32_to_bf16_bits, f32_to_f16_bits};
use crate::grid::{BlockGrid, read_f16, scale_min_k4, scale_q3k};
use crate::legacy::{self, LegacyImportance, row_sigma2};
use crate::{iquants, kquants, types::GgmlType};

/// Checks a row length against the type's block size.
fn check_row_len(ty: GgmlType, n_per_row: usize) -> Result<()> {
    if !n_per_row.is_multiple_of(ty.block_size()) {
        return Err(Error::RowLength {
            ty,
            n_per_row,
            block: ty.block_size(),
            fallback: ty.fallback_for_row(n_per_row),
        });
    }
    Ok(())
}

fn check_imatrix(ty: GgmlType, imatrix: Option<&[f32]>, n_per_row: usize) -> Result<()> {
    if let Some(q) = imatrix {
        if q.len() != n_per_row {
            return Err(Error::ImatrixLength {
                ty,
                got: q.len(),
                n_per_row,
            });
        }
        if let Some((index, &value)) = q.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::ImatrixNotFinite { index, value });
        }
    }
    Ok(())
}

/// Encodes `src` (rows of `n_per_row` values, row-major) as ggml type `ty`,
/// byte for byte what ggml's `ggml_quantize_chunk` — the function llama-quantize
/// calls — writes for the same input and importance vector.
///
/// `imatrix`, when given, holds one non-negative importance per column (the
/// per-column mean of x² over calibration activations, as in llama.cpp's imatrix
/// files). ggml then uses the importance-weighted encoders for Q4_0, Q4_1,
/// Q5_0, Q5_1, all k-quants and the i-quants; Q8_0, F16, BF16 and F32 ignore
/// it. IQ2_XXS and IQ2_XS need one ([`Error::ImatrixRequired`] without), as in
/// ggml.
///
/// F32, F16 and BF16 are plain conversions (NaN and infinities pass through as
/// ggml converts them). Block types need finite weights, and fail with
/// [`Error::ScaleOverflow`] where a block's f16 scale overflows, which is where
/// llama-quantize refuses the tensor as well.
pub fn quantize(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
) -> Result<Vec<u8>> {
    if n_per_row == 0 || !src.len().is_multiple_of(n_per_row) {
        return Err(Error::NotWholeRows {
            ty,
            len: src.len(),
            n_per_row,
        });
    }
    check_row_len(ty, n_per_row)?;
    check_imatrix(ty, imatrix, n_per_row)?;
    if ty.requires_imatrix() && imatrix.is_none() {
        return Err(Error::ImatrixRequired { ty });
    }
    let row_bytes = n_per_row / ty.block_size() * ty.type_size();
    let mut out = vec![0u8; src.len() / n_per_row * row_bytes];
    match ty {
        GgmlType::F32 => {
            out.par_chunks_mut(4 * 4096)
                .zip(src.par_chunks(4096))
                .for_each(|(o, s)| {
                    for (b, v) in o.chunks_exact_mut(4).zip(s) {
                        b.copy_from_slice(&v.to_le_bytes());
                    }
                });
        }
        GgmlType::F16 | GgmlType::BF16 => {
            let conv = if ty == GgmlType::F16 {
                f32_to_f16_bits
            } else {
                f32_to_bf16_bits
            };
            out.par_chunks_mut(2 * 4096)
                .zip(src.par_chunks(4096))
                .for_each(|(o, s)| {
                    for (b, &v) in o.chunks_exact_mut(2).zip(s) {
                        b.copy_from_slice(&conv(v).to_le_bytes());
                    }
                });
        }
        _ => {
            let failed = out
                .par_chunks_mut(row_bytes)
                .zip(src.par_chunks(n_per_row))
                .enumerate()
                .map(|(r, (o, row))| {
                    if let Some(col) = row.iter().position(|v| !v.is_finite()) {
                        return Err(Error::NonFinite {
                            ty,
                            row: r,
                            col,
                            value: row[col],
                        });
                    }
                    encode_row(ty, r, row, imatrix, o)
                })
                .find_first(|res| res.is_err());
            if let Some(Err(e)) = failed {
                return Err(e);
            }
        }
    }
    Ok(out)
}

/// Chooses block `block`'s parameters from a row (shared by `quantize` and the grid API).
pub(crate) fn choose(
    ty: GgmlType,
    row: &[f32],
    block: usize,
    imatrix: Option<&[f32]>,
    sigma2: f32,
) -> BlockGrid {
    let bs = ty.block_size();
    let x = &row[block * bs..(block + 1) * bs];
    let qw = imatrix.map(|q| &q[block * bs..(block + 1) * bs]);
    match ty {
        GgmlType::IQ4XS => iquants::choose_iq4xs(x, qw),
        _ if bs == 32 => legacy::choose(ty, x, qw.map(|qw| LegacyImportance { qw, sigma2 })),
        _ => kquants::choose(ty, x, qw),
    }
}

/// Row-level statistic the legacy importance-weighted encoders need.
pub(crate) fn row_stat(ty: GgmlType, row: &[f32], imatrix: Option<&[f32]>) -> f32 {
    if ty.uses_row_stat() && imatrix.is_some() {
        row_sigma2(row)
    } else {
        0.0
    }
}

/// Encodes one row (row number `r`, for errors).
fn encode_row(
    ty: GgmlType,
    r: usize,
    row: &[f32],
    imatrix: Option<&[f32]>,
    out: &mut [u8],
) -> Result<()> {
    let bs = ty.block_size();
    let ts = ty.type_size();
    let overflow = |block| Error::ScaleOverflow { ty, row: r, block };
    let nblocks = row.len() / bs;
    if ty.is_lattice() {
        for (b, o) in out.chunks_exact_mut(ts).enumerate() {
            let qw = imatrix.map(|q| &q[b * bs..(b + 1) * bs]);
            iquants::encode_lattice(ty, &row[b * bs..(b + 1) * bs], qw, o).map_err(
                |iquants::Abort| Error::EncoderAbort {
                    ty,
                    row: r,
                    block: b,
                },
            )?;
            if !scales_valid(ty, o) {
                return Err(overflow(b));
            }
        }
        return Ok(());
    }
    let sigma2 = row_stat(ty, row, imatrix);
    let emit = |b: usize, g: &BlockGrid, o: &mut [u8]| {
        let mut codes = [0u8; 256];
        let x = &row[b * bs..(b + 1) * bs];
        g.codes_into(x, &mut codes[..bs]);
        g.assemble(&codes[..bs], o);
        if scales_valid(ty, o) {
            Ok(())
        } else {
            Err(overflow(b))
        }
    };
    let batched = ty.uses_row_stat() && imatrix.is_some();
    let mut b = 0;
    if let (true, Some(q)) = (batched, imatrix) {
        // The importance-weighted 32-value encoders run eight blocks at a time.
        while b + 8 <= nblocks {
            let grids = legacy::choose_weighted_x8(
                ty,
                &row[b * 32..b * 32 + 256],
                &q[b * 32..b * 32 + 256],
                sigma2,
            );
            for (k, g) in grids.iter().enumerate() {
                emit(b + k, g, &mut out[(b + k) * ts..(b + k + 1) * ts])?;
            }
            b += 8;
        }
    }
    while b < nblocks {
        let g = choose(ty, row, b, imatrix, sigma2);
        emit(b, &g, &mut out[b * ts..(b + 1) * ts])?;
        b += 1;
    }
    Ok(())
}

/// Offsets of the f16 scale fields that ggml_validate_row_data checks.
fn scale_offsets(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0
        | GgmlType::Q5_0
        | GgmlType::Q8_0
        | GgmlType::IQ4NL
        | GgmlType::IQ2XXS
        | GgmlType::IQ2XS
        | GgmlType::IQ2S
        | GgmlType::IQ3XXS
        | GgmlType::IQ3S
        | GgmlType::IQ4XS => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q2K => &[80, 82],
        GgmlType::Q3K => &[108],
        GgmlType::Q6K => &[208],
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => &[],
    }
}

fn f16_finite(y: &[u8], off: usize) -> bool {
    (u16::from_le_bytes([y[off], y[off + 1]]) & 0x7c00) != 0x7c00
}

fn scales_valid(ty: GgmlType, block: &[u8]) -> bool {
    scale_offsets(ty).iter().all(|&off| f16_finite(block, off))
}

/// The check llama.cpp applies to encoded data before writing it
/// (`ggml_validate_row_data`): no NaN or infinity in F32/F16/BF16 values or in
/// any block's f16 scale fields. `data` must be whole blocks.
pub fn validate_row_data(ty: GgmlType, data: &[u8]) -> Result<()> {
    let ts = ty.type_size();
    if !data.len().is_multiple_of(ts) {
        return Err(Error::ByteLength {
            ty,
            n: data.len() / ts * ty.block_size(),
            expected: data.len() / ts * ts,
            got: data.len(),
        });
    }
    let bad = match ty {
        GgmlType::F32 => data.chunks_exact(4).position(|b| {
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000) == 0x7f80_0000
        }),
        GgmlType::F16 => data.chunks_exact(2).position(|b| !f16_finite(b, 0)),
        GgmlType::BF16 => data
            .chunks_exact(2)
            .position(|b| (u16::from_le_bytes([b[0], b[1]]) & 0x7fff) >= 0x7f80),
        _ => data.chunks_exact(ts).position(|b| !scales_valid(ty, b)),
    };
    match bad {
        Some(block) => Err(Error::InvalidData {
            ty,
            block,
            in_scale: ty.is_quantized(),
        }),
        None => Ok(()),
    }
}

/// Decodes `n` values of type `ty` from `data`, bit-identical to ggml's
/// `dequantize_row_*` (and its f16/bf16 widenings). `n` must be a whole number
/// of blocks and `data` exactly their size.
pub fn dequantize(ty: GgmlType, data: &[u8], n: usize) -> Result<Vec<f32>> {
    let bs = ty.block_size();
    if !n.is_multiple_of(bs) {
        return Err(Error::Partial { ty, n, block: bs });
    }
    let expected = n / bs * ty.type_size();
    if data.len() != expected {
        return Err(Error::ByteLength {
            ty,
            n,
            expected,
            got: data.len(),
        });
    }
    let mut out = vec![0.0f32; n];
    // 4096 values per task: whole blocks for every type.
    out.par_chunks_mut(4096)
        .zip(data.par_chunks(4096 / bs * ty.type_size()))
        .for_each(|(o, d)| {
            for (ob, db) in o.chunks_exact_mut(bs).zip(d.chunks_exact(ty.type_size())) {
                decode_block(ty, db, ob);
            }
        });
    Ok(out)
}

/// Decodes one block (`y`: its bytes, `out`: its values).
pub(crate) fn decode_block(ty: GgmlType, y: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::F32 => out[0] = f32::from_le_bytes([y[0], y[1], y[2], y[3]]),
        GgmlType::F16 => out[0] = f16_bits_to_f32(u16::from_le_bytes([y[0], y[1]])),
        GgmlType::BF16 => out[0] = bf16_bits_to_f32(u16::from_le_bytes([y[0], y[1]])),
        GgmlType::Q4_0 => {
            let d = read_f16(y, 0);
            for j in 0..16 {
                out[j] = ((y[2 + j] & 0xf) as i32 - 8) as f32 * d;
                out[j + 16] = ((y[2 + j] >> 4) as i32 - 8) as f32 * d;
            }
        }
        GgmlType::Q4_1 => {
            let (d, m) = (read_f16(y, 0), read_f16(y, 2));
            for j in 0..16 {
                out[j] = (y[4 + j] & 0xf) as f32 * d + m;
                out[j + 16] = (y[4 + j] >> 4) as f32 * d + m;
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let (d, m, qh_off) = if ty == GgmlType::Q5_0 {
                (read_f16(y, 0), 0.0, 2)
            } else {
                (read_f16(y, 0), read_f16(y, 2), 4)
            };
            let qh = u32::from_le_bytes([y[qh_off], y[qh_off + 1], y[qh_off + 2], y[qh_off + 3]]);
            let qs = &y[qh_off + 4..qh_off + 20];
            for j in 0..16 {
                let h0 = (((qh >> j) << 4) & 0x10) as u8;
                let h1 = ((qh >> (j + 12)) & 0x10) as u8;
                let l0 = (qs[j] & 0xf) | h0;
                let l1 = (qs[j] >> 4) | h1;
                if ty == GgmlType::Q5_0 {
                    out[j] = (l0 as i32 - 16) as f32 * d;
                    out[j + 16] = (l1 as i32 - 16) as f32 * d;
                } else {
                    out[j] = l0 as f32 * d + m;
                    out[j + 16] = l1 as f32 * d + m;
                }
            }
        }
        GgmlType::Q8_0 => {
            let d = read_f16(y, 0);
            for j in 0..32 {
                out[j] = (y[2 + j] as i8) as f32 * d;
            }
        }
        GgmlType::IQ4NL => {
            let d = read_f16(y, 0);
            for j in 0..16 {
                out[j] = d * legacy::KVALUES_IQ4NL[(y[2 + j] & 0xf) as usize] as f32;
                out[j + 16] = d * legacy::KVALUES_IQ4NL[(y[2 + j] >> 4) as usize] as f32;
            }
        }
        GgmlType::Q2K => {
            let (d, min) = (read_f16(y, 80), read_f16(y, 82));
            let qs = &y[16..80];
            for p in 0..256 {
                let sc = y[p / 16];
                let dl = d * (sc & 0xf) as f32;
                let ml = min * (sc >> 4) as f32;
                let q = (qs[32 * (p / 128) + p % 32] >> (2 * ((p % 128) / 32))) & 3;
                out[p] = dl * q as f32 - ml;
            }
        }
        GgmlType::Q3K => {
            let d_all = read_f16(y, 108);
            let (hmask, qs, scales) = (&y[0..32], &y[32..96], &y[96..108]);
            for p in 0..256 {
                let dl = d_all * scale_q3k(p / 16, scales) as f32;
                let q = (qs[32 * (p / 128) + p % 32] >> (2 * ((p % 128) / 32))) & 3;
                let high = (hmask[p % 32] >> (p / 32)) & 1;
                let v = q as i32 - if high == 1 { 0 } else { 4 };
                out[p] = dl * v as f32;
            }
        }
        GgmlType::Q4K | GgmlType::Q5K => {
            let (d, min) = (read_f16(y, 0), read_f16(y, 2));
            let scales = &y[4..16];
            let (qh, qs) = if ty == GgmlType::Q4K {
                (&y[0..0], &y[16..144])
            } else {
                (&y[16..48], &y[48..176])
            };
            for p in 0..256 {
                let (sc, m) = scale_min_k4(p / 32, scales);
                let d1 = d * sc as f32;
                let m1 = min * m as f32;
                let byte = qs[32 * (p / 64) + p % 32];
                let mut q = if (p % 64) < 32 { byte & 0xf } else { byte >> 4 };
                if ty == GgmlType::Q5K && (qh[p % 32] >> (p / 32)) & 1 == 1 {
                    q += 16;
                }
                out[p] = d1 * q as f32 - m1;
            }
        }
        GgmlType::IQ2XXS
        | GgmlType::IQ2XS
        | GgmlType::IQ2S
        | GgmlType::IQ3XXS
        | GgmlType::IQ3S
        | GgmlType::IQ4XS => iquants::decode_block(ty, y, out),
        GgmlType::Q6K => {
            let d = read_f16(y, 208);
            let (ql, qh, sc) = (&y[0..128], &y[128..192], &y[192..208]);
            for p in 0..256 {
                let (h, r) = (p / 128, p % 128);
                let (k, i) = (r / 32, r % 32);
                let lbyte = ql[64 * h + i + if k % 2 == 1 { 32 } else { 0 }];
                let low = if k < 2 { lbyte & 0xf } else { lbyte >> 4 };
                let high = (qh[32 * h + i] >> (2 * k)) & 3;
                let q = (low | (high << 4)) as i32 - 32;
                out[p] = d * (sc[p / 16] as i8) as f32 * q as f32;
            }
        }
    }
}

fn check_grid_args(
    ty: GgmlType,
    n_per_row: usize,
    block: usize,
    imatrix: Option<&[f32]>,
) -> Result<()> {
    if !ty.is_quantized() {
        return Err(Error::NotQuantized { ty });
    }
    if !ty.has_block_grid() {
        return Err(Error::NoBlockGrid { ty });
    }
    check_row_len(ty, n_per_row)?;
    if block >= n_per_row / ty.block_size() {
        return Err(Error::BlockIndex {
            ty,
            block,
            n_per_row,
        });
    }
    check_imatrix(ty, imatrix, n_per_row)
}

/// The slice of `row` the parameters of `block` depend on: the block, or the
/// whole row for the legacy importance-weighted encoders (row mean square).
fn grid_inputs(ty: GgmlType, row: &[f32], block: usize, imatrix: Option<&[f32]>) -> (usize, usize) {
    let bs = ty.block_size();
    if ty.uses_row_stat() && imatrix.is_some() {
        (0, row.len())
    } else {
        (block * bs, (block + 1) * bs)
    }
}

impl BlockGrid {
    /// Chooses the parameters of block `block` (32 or 256 values, see
    /// [`GgmlType::block_size`]) of `row`, exactly as [`quantize`] does.
    ///
    /// `imatrix` is the per-column importance vector for the whole row (or
    /// `None`). Parameters depend on the block's values only, except for
    /// Q4_0/Q4_1/Q5_0/Q5_1 with an importance vector, where ggml also uses the
    /// mean square of the whole row.
    pub fn new(
        ty: GgmlType,
        row: &[f32],
        block: usize,
        imatrix: Option<&[f32]>,
    ) -> Result<BlockGrid> {
        check_grid_args(ty, row.len(), block, imatrix)?;
        let (a, b) = grid_inputs(ty, row, block, imatrix);
        if let Some(i) = row[a..b].iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                ty,
                row: 0,
                col: a + i,
                value: row[a + i],
            });
        }
        let sigma2 = row_stat(ty, row, imatrix);
        Ok(choose(ty, row, block, imatrix, sigma2))
    }
}

/// [`BlockGrid::new`] for block `block` of every row of `weights` (row-major,
/// `n_per_row` values per row), in parallel. This is what GPTQ needs at the
/// start of each block of columns: the scale choice of every row from the
/// current (error-updated) weights of that block.
pub fn block_grids(
    ty: GgmlType,
    weights: &[f32],
    n_per_row: usize,
    block: usize,
    imatrix: Option<&[f32]>,
) -> Result<Vec<BlockGrid>> {
    if n_per_row == 0 || !weights.len().is_multiple_of(n_per_row) {
        return Err(Error::NotWholeRows {
            ty,
            len: weights.len(),
            n_per_row,
        });
    }
    check_grid_args(ty, n_per_row, block, imatrix)?;
    weights
        .par_chunks(n_per_row)
        .enumerate()
        .map(|(r, row)| {
            let (a, b) = grid_inputs(ty, row, block, imatrix);
            if let Some(i) = row[a..b].iter().position(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    ty,
                    row: r,
                    col: a + i,
                    value: row[a + i],
                });
            }
            Ok(choose(ty, row, block, imatrix, row_stat(ty, row, imatrix)))
        })
        .collect()
}
