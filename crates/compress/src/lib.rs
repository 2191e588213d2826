//! Per-layer weight compressors for dynapress: a pure numeric library.
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
//! ```
#![deny(missing_docs)]

pub mod ggml_gptq;
pub mod gptq;
pub mod grid;
pub mod hessian;
mod isa;
pub mod metrics;
pub mod pack;
pub mod quantized;
pub mod rtn;
pub mod served;

pub use ggml_gptq::{GgmlGptqError, GgmlQuantized, gptq_ggml, imatrix_from_hessian};
pub use gptq::{FactorParams, GptqFactor, GptqParams, GptqQuantParams, gptq};
pub use grid::{ClipSearch, GroupGrid, QuantScheme};
pub use hessian::{Accumulation, Hessian};
pub use metrics::{quadratic_trace, relative_output_error};
pub use quantized::{BufferDtype, NamedBuffer, Provenance, QuantMeta, QuantizedLinear};
pub use rtn::{RtnParams, rtn};

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
}
