//! Errors of the codecs.

use crate::types::GgmlType;

/// What can go wrong when encoding or decoding ggml tensors.
///
/// Fields: `ty` the type, `row`/`col`/`block` positions (0-based), `n_per_row`
/// the row length.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The row length is not a multiple of the type's block size.
    #[error(
        "{ty}: rows of {n_per_row} values are not a multiple of the {block}-value block; \
         llama-quantize stores such a tensor as {fallback} instead (see GgmlType::fallback_for_row)"
    )]
    RowLength {
        ty: GgmlType,
        n_per_row: usize,
        block: usize,
        fallback: GgmlType,
    },

    /// The input is not a whole number of rows.
    #[error("{ty}: {len} values are not a whole number of rows of {n_per_row}")]
    NotWholeRows {
        ty: GgmlType,
        len: usize,
        n_per_row: usize,
    },

    /// The importance vector does not have one entry per column.
    #[error("{ty}: the importance vector has {got} entries; it needs one per column ({n_per_row})")]
    ImatrixLength {
        ty: GgmlType,
        got: usize,
        n_per_row: usize,
    },

    /// The importance vector holds a NaN or infinity (llama-quantize refuses these too).
    #[error("importance vector entry {index} is {value}; it must be finite")]
    ImatrixNotFinite { index: usize, value: f32 },

    /// A weight is NaN or infinite; ggml's block encoders are undefined on those.
    #[error("{ty}: weight at row {row}, column {col} is {value}; block types need finite weights")]
    NonFinite {
        ty: GgmlType,
        row: usize,
        col: usize,
        value: f32,
    },

    /// A block's f16 scale overflowed (|weights| too large for the type); llama-quantize
    /// rejects such a tensor ("quantized data validation failed").
    #[error(
        "{ty}: row {row}, block {block}: the f16 scale overflows (weights too large for this type); \
         llama-quantize would reject this tensor"
    )]
    ScaleOverflow {
        ty: GgmlType,
        row: usize,
        block: usize,
    },

    /// Encoded data is not the size the element count requires.
    #[error("{ty}: {n} values need {expected} bytes, got {got}")]
    ByteLength {
        ty: GgmlType,
        n: usize,
        expected: usize,
        got: usize,
    },

    /// An element count that is not a multiple of the block size (for decoding).
    #[error("{ty}: {n} values are not a whole number of {block}-value blocks")]
    Partial {
        ty: GgmlType,
        n: usize,
        block: usize,
    },

    /// A block index past the end of the row.
    #[error("{ty}: block {block} is outside a row of {n_per_row} values")]
    BlockIndex {
        ty: GgmlType,
        block: usize,
        n_per_row: usize,
    },

    /// ggml refuses to encode this type without an importance vector
    /// (`ggml_quantize_requires_imatrix`; llama-quantize stops with an error too).
    #[error(
        "{ty}: ggml encodes this type only with an importance vector; \
         compute an imatrix (llama-imatrix or dynapress calibration) and pass it"
    )]
    ImatrixRequired { ty: GgmlType },

    /// ggml's encoder aborts the process on this block (it found no codebook
    /// point: the weights or the importance vector are too extreme for the type).
    #[error(
        "{ty}: row {row}, block {block}: ggml's encoder aborts on these weights \
         (no codebook point found; values or importance too extreme for this type)"
    )]
    EncoderAbort {
        ty: GgmlType,
        row: usize,
        block: usize,
    },

    /// The lattice i-quants round groups of weights jointly; they have no per-weight grid.
    #[error(
        "{ty} rounds groups of 4 or 8 weights jointly to codebook points; \
         it has no per-weight BlockGrid (use quantize)"
    )]
    NoBlockGrid { ty: GgmlType },

    /// A [`crate::LatticeGrid`] exists only for the lattice i-quants.
    #[error(
        "{ty} is not a lattice i-quant (IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S); it has no LatticeGrid"
    )]
    NotLattice { ty: GgmlType },

    /// A [`crate::LatticeGrid`] is built from exactly one 256-value super-block.
    #[error("{ty}: a super-block has 256 values, got {got}")]
    SuperBlockLength { ty: GgmlType, got: usize },

    /// Block grids exist only for the block-quantized types.
    #[error("{ty} is not a block-quantized type; it has no grid")]
    NotQuantized { ty: GgmlType },

    /// Encoded data that llama.cpp would refuse (ggml_validate_row_data).
    #[error("{ty}: block {block} holds a NaN or infinity{}", if *.in_scale { " in its scale" } else { "" })]
    InvalidData {
        ty: GgmlType,
        block: usize,
        in_scale: bool,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
