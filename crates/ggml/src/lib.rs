//! ggml tensor types: block layouts and quantization codecs, bit-exact with ggml.
//!
//! [`quantize`] encodes rows of f32 weights as any of ggml's Q4_0, Q4_1, Q5_0,
//! Q5_1, Q8_0, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, the i-quants IQ4_XS,
//! IQ3_S, IQ3_XXS, IQ2_S, IQ2_XS, IQ2_XXS (and converts to F32/F16/BF16)
//! producing the same bytes as ggml's `ggml_quantize_chunk` — the function
//! llama-quantize calls — with or without an importance vector (imatrix).
//! [`dequantize`] decodes bit-identically to ggml's `dequantize_row_*`.
//! The reference is the ggml tree vendored in the llama-cpp-python 0.3.36 sdist;
//! the tests compare bytes with a C program built from it
//! (`scripts/ggml-oracle/`). `docs/ggml-quants.md` has the formats, the math
//! and the measurements.
//!
//! ## How the encoders work
//! Every encoder chooses a block's scale parameters from its weights, then
//! gives every weight a level ("code"). For the 32-value types the reference
//! encoders derive the scale from the block's extreme values; the k-quants
//! search per sub-block for the scale (and min) that minimises a weighted
//! squared error, quantize the sub-block scales against an f16 super-block
//! scale, and re-round every weight against its decoded sub-block scale. With
//! an importance vector `q` the weight of element `i` in those errors becomes
//! `q_i · sqrt(σ² + x_i²)` (σ²: a mean square of the row or super-block).
//!
//! The lattice i-quants (IQ3_*, IQ2_*: [`GgmlType::is_lattice`]) instead round
//! groups of 4 or 8 magnitudes jointly to a codebook point with a scale search
//! per sub-block; they are encoded whole (see `docs/ggml-quants.md`).
//! IQ2_XXS and IQ2_XS need an importance vector, as in ggml
//! ([`Error::ImatrixRequired`]).
//!
//! [`BlockGrid`] exposes the two steps separately — [`BlockGrid::new`] /
//! [`block_grids`] choose the parameters; [`BlockGrid::round`] maps any value
//! to `(code, decoded value)`; [`BlockGrid::assemble`] packs codes into the
//! block bytes — so that GPTQ can round inside ggml's grids with error feedback
//! and still emit exact ggml blocks.
//!
//! ```
//! use dynapress_ggml::{BlockGrid, GgmlType, dequantize, quantize};
//!
//! let row: Vec<f32> = (0..256).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01).collect();
//! let bytes = quantize(GgmlType::Q4K, &row, 256, None)?;
//! assert_eq!(bytes.len(), 144);
//!
//! // The same block, built step by step.
//! let grid = BlockGrid::new(GgmlType::Q4K, &row, 0, None)?;
//! let codes: Vec<u8> = row.iter().enumerate().map(|(j, &x)| grid.round(j, x).0).collect();
//! assert_eq!(grid.to_bytes(&codes), bytes);
//!
//! // Decoded values agree with the grid's.
//! let back = dequantize(GgmlType::Q4K, &bytes, 256)?;
//! assert_eq!(back[7].to_bits(), grid.round(7, row[7]).1.to_bits());
//! # Ok::<(), dynapress_ggml::Error>(())
//! ```
//!
//! ## Rows that are not a multiple of the block size
//! [`quantize`] refuses them with [`Error::RowLength`], which names the type
//! llama-quantize would write instead ([`GgmlType::fallback_for_row`]: Q2_K,
//! Q3_K → Q4_0; Q4_K → Q5_0; Q5_K → Q5_1; Q6_K → Q8_0; the i-quants → IQ4_NL;
//! then F16 when the row is not a multiple of 32 either). Choosing that type
//! is the caller's decision.

#![warn(missing_docs)]

mod codec;
mod error;
mod float;
mod grid;
mod iq_grids;
mod iquants;
mod kquants;
mod lattice_grid;
mod legacy;
mod search;
mod types;

pub use codec::{block_grids, dequantize, quantize, validate_row_data};
pub use error::{Error, Result};
pub use float::{bf16_bits_to_f32, f16_bits_to_f32, f32_to_bf16_bits, f32_to_f16_bits};
pub use grid::BlockGrid;
pub use lattice_grid::LatticeGrid;
pub use types::GgmlType;
