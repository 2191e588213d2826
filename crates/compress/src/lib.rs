//! Per-layer weight compressors for dynapress: a pure numeric library.
//! Quantization (RTN, GPTQ) and unstructured or N:M sparsity (SparseGPT).
//!
//! A linear layer `y = W x` with `W ∈ ℝ^{rows×cols}` (`rows` = output
//! features, `cols` = input features, row-major `&[f32]`) is quantized against
//! the calibration Hessian of its input,
//!
//! ```text
//! H = Σ_t x_t x_tᵀ        (cols × cols, summed over all calibration tokens t)
//! ```
//!
//! which makes the output error of a perturbation `ΔW` a quadratic form:
//! `Σ_t ‖ΔW x_t‖² = tr(ΔW H ΔWᵀ)`. Layers that read the same input (q/k/v,
//! gate/up) share one [`Hessian`].
//!
//! * [`Hessian`] accumulates `H += XᵀX` batch by batch (f32 GEMM on chunks of
//!   tokens, partial sums added into an f64 accumulator; see [`hessian`]).
//!   It stores the raw sum, not the `2/n`-scaled matrix of the GPTQ reference:
//!   every result here is invariant to scaling `H` (damping is relative to
//!   `mean(diag H)`, the output error is a ratio), so the normalisation does not
//!   matter.
//! * [`rtn()`] quantizes each group to its nearest grid point ([`grid`] defines
//!   the grids, with an optional MSE clipping search).
//! * [`gptq()`] runs GPTQ (Frantar et al., 2022). [`GptqFactor`] prepares the
//!   Hessian once (dead inputs, damping with automatic retry, act-order
//!   permutation, upper Cholesky factor of `H⁻¹`) and quantizes the same layer
//!   at several bit widths.
//! * Both return a [`QuantizedLinear`]: integer codes, f16 scales, zero points
//!   and an optional permutation, with [`QuantizedLinear::dequantize`], the exact
//!   [`QuantizedLinear::storage_bits`], and named-buffer (de)serialisation
//!   ([`quantized`] has the layout and the bits accounting).
//! * [`relative_output_error`] is `tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`.
//! * [`sparsegpt()`] runs SparseGPT (Frantar & Alistarh, 2023) on the same
//!   [`GptqFactor`]: per-block OBS mask selection with an exact number of
//!   zeros per row ([`SparsityPattern`]: unstructured or N:M such as 2:4),
//!   OBS update of the remaining weights, optionally quantizing the kept
//!   weights on a [`QuantScheme`] grid in the same sweep ("sparsity × bit
//!   width"). [`magnitude_prune`] is the baseline with the same output.
//! * Both return a [`SparseLinear`]: a mask (bitmap, or N:M rank codes) and
//!   the kept weights as f16 or grid codes, with
//!   [`SparseLinear::dequantize`], the exact [`SparseLinear::storage_bits`]
//!   and named buffers ([`sparse`] has the layout and the bits accounting).
//! * [`owl_sparsities`] spreads a sparsity target over layers by their
//!   [`outlier_ratio`] (OWL, Yin et al., 2023), keeping the parameter-weighted
//!   mean exact; [`allocate_zeros`] turns the fractions into zeros per row.
//!
//! ```
//! use dynapress_compress::{gptq, rtn, relative_output_error, GptqParams, Hessian, QuantScheme, RtnParams};
//!
//! let (rows, cols) = (8, 64);
//! // Correlated inputs: x_t[j] = sin(t·(j+1)·0.37) + 0.5·sin(t·0.11).
//! let x: Vec<f32> = (0..256 * cols)
//!     .map(|i| {
//!         let (t, j) = ((i / cols) as f32, (i % cols) as f32);
//!         (t * (j + 1.0) * 0.37).sin() + 0.5 * (t * 0.11).sin()
//!     })
//!     .collect();
//! let mut h = Hessian::new(cols);
//! h.add_batch(&x).unwrap();
//! let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919 % 101) as f32 - 50.0) / 50.0).collect();
//!
//! let scheme = QuantScheme::new(3, 32);
//! let q = gptq(&w, &h, &GptqParams { scheme, ..Default::default() }).unwrap();
//! let r = rtn(&w, cols, &RtnParams { scheme, clip: None }).unwrap();
//! let e_gptq = relative_output_error(&w, &q.dequantize(), &h);
//! let e_rtn = relative_output_error(&w, &r.dequantize(), &h);
//! assert!(e_gptq < e_rtn);
//! assert_eq!(q.storage_bits(), (rows * cols * 3 + rows * 2 * (16 + 3)) as u64);
//!
//! // 50 % unstructured sparsity, kept weights on the same 3-bit grid.
//! use dynapress_compress::{magnitude_prune, sparsegpt, SparseGptParams, SparseParams, SparsityPattern};
//! let sparse = SparseParams {
//!     pattern: SparsityPattern::fraction(0.5, cols).unwrap(),
//!     quant: Some(scheme),
//!     ..SparseParams::default()
//! };
//! let s = sparsegpt(&w, &h, &SparseGptParams { sparse, ..Default::default() }).unwrap();
//! let m = magnitude_prune(&w, cols, &sparse).unwrap();
//! assert_eq!((s.zeros(), m.zeros()), (rows * cols / 2, rows * cols / 2));
//! // Bitmap mask + 3-bit codes of the kept half + f16 scale and 3-bit zero per row and group.
//! assert_eq!(s.storage_bits(), (rows * cols + rows * cols / 2 * 3 + rows * 2 * (16 + 3)) as u64);
//! ```
#![deny(missing_docs)]

pub mod ggml_gptq;
pub mod gptq;
pub mod grid;
pub mod hessian;
mod isa;
pub mod method;
pub mod metrics;
pub mod owl;
pub mod pack;
pub mod quantized;
pub mod rtn;
pub mod served;
pub mod sparse;
pub mod sparsegpt;

pub use ggml_gptq::{GgmlGptqError, GgmlQuantized, gptq_ggml, imatrix_from_hessian};
pub use gptq::{FactorParams, GptqFactor, GptqParams, GptqQuantParams, gptq};
pub use grid::{ClipSearch, GroupGrid, QuantScheme};
pub use hessian::{Accumulation, Hessian};
pub use method::{
    DEFAULT_SPARSITIES, GgmlBlocks, KQUANT_GGML_TYPES, LevelSparsity, LevelSpec, Method,
    MethodError, MethodSpec, SparseLevel, Variant, compress_layer,
};
pub use metrics::{quadratic_trace, relative_output_error};
pub use owl::{OwlError, allocate_zeros, outlier_ratio, owl_sparsities};
pub use quantized::{BufferDtype, NamedBuffer, Provenance, QuantMeta, QuantizedLinear};
pub use rtn::{RtnParams, rtn};
pub use sparse::{
    SparseLinear, SparseMeta, SparseProvenance, SparseValues, SparsityPattern, zeros_for_fraction,
};
pub use sparsegpt::{
    SparseGptParams, SparseParams, magnitude_prune, sparsegpt, sparsegpt_with_factor,
};

/// Errors of the grid quantizers (shared by RTN and GPTQ).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantError {
    /// The bit width is outside 2..=8.
    #[error("unsupported bit width {bits}: codes must be 2 to 8 bits")]
    UnsupportedBits {
        /// The requested width.
        bits: u8,
    },
    /// A weight is NaN or infinite.
    #[error(
        "weight at row {row}, column {col} is not finite ({value}); the checkpoint tensor is corrupt or was not converted correctly"
    )]
    NonFiniteWeight {
        /// Row (output feature).
        row: usize,
        /// Column (input feature).
        col: usize,
        /// The value found.
        value: f32,
    },
    /// A group's scale does not fit in f16.
    #[error(
        "scale {scale} of row {row}, group {group} overflows f16 (max 65504): weights this large cannot be stored with f16 scales"
    )]
    ScaleOverflow {
        /// Row (output feature).
        row: usize,
        /// Group index within the row (in storage order).
        group: usize,
        /// The f32 scale that overflowed.
        scale: f32,
    },
}

/// Errors of [`Hessian`] accumulation and loading.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HessianError {
    /// An activation is NaN or infinite.
    #[error(
        "calibration activation at token {token}, feature {feature} is not finite ({value}); the forward pass overflowed"
    )]
    NonFiniteInput {
        /// Token (row of the batch).
        token: usize,
        /// Feature (column).
        feature: usize,
        /// The value found.
        value: f32,
    },
    /// A flat buffer has the wrong length.
    #[error("Hessian buffer has {got} values, expected {expected} (= {n}²)")]
    BadLength {
        /// Dimension.
        n: usize,
        /// Expected `n²`.
        expected: usize,
        /// Found.
        got: usize,
    },
    /// An entry is NaN or infinite.
    #[error("Hessian entry ({row}, {col}) is not finite")]
    NonFinite {
        /// Row.
        row: usize,
        /// Column.
        col: usize,
    },
    /// The matrix is not symmetric.
    #[error("Hessian is not symmetric at ({row}, {col}): {a} vs {b}")]
    NotSymmetric {
        /// Row.
        row: usize,
        /// Column.
        col: usize,
        /// `H[row, col]`.
        a: f64,
        /// `H[col, row]`.
        b: f64,
    },
    /// A diagonal entry is negative (impossible for `Σ x xᵀ`).
    #[error("Hessian diagonal entry {index} is negative ({value}): not a sum of outer products")]
    NegativeDiagonal {
        /// Index.
        index: usize,
        /// Value.
        value: f64,
    },
}

/// Errors of [`gptq()`] and [`GptqFactor`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GptqError {
    /// A grid error (bit width, non-finite weight, f16 overflow).
    #[error(transparent)]
    Quant(#[from] QuantError),
    /// The Hessian is invalid (non-finite, asymmetric, negative diagonal).
    #[error(transparent)]
    Hessian(#[from] HessianError),
    /// The Cholesky factorisation failed at every damping tried.
    #[error(
        "Hessian is not positive definite even with damping {damp_tried} × mean(diag H) (pivot at input column {column}); \
         raise FactorParams::damp or max_retries, or check the calibration activations"
    )]
    NotPositiveDefinite {
        /// The largest relative damping tried.
        damp_tried: f64,
        /// Input column (original order) where the last attempt failed.
        column: usize,
    },
    /// The error feedback produced a non-finite value (an extremely
    /// ill-conditioned Hessian).
    #[error(
        "GPTQ diverged at row {row}, input column {col}: the inverse Hessian is too ill-conditioned; raise FactorParams::damp"
    )]
    Diverged {
        /// Row.
        row: usize,
        /// Input column (original order).
        col: usize,
    },
}

/// Errors of [`QuantizedLinear::from_parts`] and [`QuantizedLinear::from_buffers`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FormatError {
    /// Invalid scheme in the metadata.
    #[error("invalid quantization scheme: {reason}")]
    BadScheme {
        /// What is wrong.
        reason: String,
    },
    /// A required buffer is absent.
    #[error("buffer `{name}` is missing")]
    MissingBuffer {
        /// Buffer name.
        name: &'static str,
    },
    /// A buffer appears twice.
    #[error("buffer `{name}` appears more than once")]
    DuplicateBuffer {
        /// Buffer name.
        name: &'static str,
    },
    /// An unknown buffer, or `zeros` for a symmetric scheme.
    #[error("unexpected buffer `{name}` for this scheme")]
    UnexpectedBuffer {
        /// Buffer name.
        name: String,
    },
    /// Wrong element type.
    #[error("buffer `{name}` has dtype {got:?}")]
    BadDtype {
        /// Buffer name.
        name: &'static str,
        /// Found.
        got: BufferDtype,
    },
    /// A buffer's shape does not match its byte length.
    #[error("buffer `{name}` has shape {shape:?} but {bytes} bytes")]
    ShapeMismatch {
        /// Buffer name.
        name: String,
        /// Declared shape.
        shape: Vec<usize>,
        /// Byte length.
        bytes: usize,
    },
    /// A buffer has the wrong size for the layer (or non-zero padding bits).
    #[error(
        "buffer `{name}` is corrupt: expected {expected} elements/bytes, got {got} (or non-zero padding bits)"
    )]
    BufferSize {
        /// Buffer name.
        name: &'static str,
        /// Expected length.
        expected: usize,
        /// Found.
        got: usize,
    },
    /// A code or zero point exceeds `2^bits − 1`.
    #[error("a code or zero point exceeds the {bits}-bit range")]
    CodeOutOfRange {
        /// Bit width.
        bits: u8,
    },
    /// A scale is NaN or infinite.
    #[error("scale {index} is not finite")]
    NonFiniteScale {
        /// Index into the scales.
        index: usize,
    },
    /// `perm` is not a permutation of `0..cols`.
    #[error("`perm` is not a permutation of the input columns")]
    InvalidPermutation,
    /// A stored value of a sparse layer is NaN or infinite.
    #[error("value {index} of the sparse layer is not finite")]
    NonFiniteValue {
        /// Index into the kept values.
        index: usize,
    },
}

/// Errors of the sparse compressors ([`sparsegpt()`], [`magnitude_prune`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SparseError {
    /// A sparsity fraction outside `[0, 1)`.
    #[error("sparsity {sparsity} is outside [0, 1): a level must keep at least one weight per row")]
    BadSparsity {
        /// The fraction given.
        sparsity: f64,
    },
    /// An unstructured pattern that prunes whole rows.
    #[error("{zeros_per_row} zeros per row would prune every one of the {cols} weights of a row")]
    TooManyZeros {
        /// Zeros requested per row.
        zeros_per_row: usize,
        /// Row length.
        cols: usize,
    },
    /// An N:M pattern that does not fit the layer.
    #[error(
        "{zeros}:{group} sparsity is invalid for {cols} input columns: need 1 ≤ zeros < group ≤ 8 and cols a multiple of group"
    )]
    BadNM {
        /// Zeros per group.
        zeros: usize,
        /// Group length.
        group: usize,
        /// Input columns.
        cols: usize,
    },
    /// N:M with a block size or quantization group that is not a multiple of
    /// the N:M group (an N:M group would straddle a block).
    #[error(
        "block size {block_size} and quantization group {quant_group} must be multiples of the N:M group {group}"
    )]
    NmAlignment {
        /// N:M group length.
        group: usize,
        /// Lazy-update block size.
        block_size: usize,
        /// Quantization group length.
        quant_group: usize,
    },
    /// SparseGPT needs the input columns in their original order.
    #[error(
        "SparseGPT needs a Hessian factor prepared without act-order (its blocks and N:M groups are runs of input columns)"
    )]
    ActOrder,
    /// A factor of another width.
    #[error("the Hessian factor has dimension {factor} but the layer has {cols} input columns")]
    DimMismatch {
        /// Factor dimension.
        factor: usize,
        /// Layer columns.
        cols: usize,
    },
    /// A kept weight does not fit in f16.
    #[error(
        "weight at row {row}, column {col} is {value} after the update and overflows f16 (max 65504); quantize it or raise the damping"
    )]
    ValueOverflow {
        /// Row.
        row: usize,
        /// Column.
        col: usize,
        /// The f32 value.
        value: f32,
    },
    /// Grid errors, Hessian preparation errors, divergence (from GPTQ's machinery).
    #[error(transparent)]
    Gptq(#[from] GptqError),
    /// Grid errors.
    #[error(transparent)]
    Quant(#[from] QuantError),
}
