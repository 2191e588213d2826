//! The quantized layer: codes, f16 scales, packed zero points, optional
//! permutation; exact storage accounting and (de)serialisation to named buffers.
//!
//! # Stored buffers and the bits accounting
//!
//! For a layer of `rows × cols` weights with `b`-bit codes and `G` groups per
//! row (`G = ⌈cols / g⌉`):
//!
//! | buffer   | dtype      | shape          | bytes                     |
//! |----------|------------|----------------|---------------------------|
//! | `codes`  | `U8`       | `[⌈rows·cols·b/8⌉]` | codes bit-packed at `b` bits, row-major, one stream |
//! | `scales` | `F16`      | `[rows, G]`    | `2·rows·G`                |
//! | `zeros`  | `U8`       | `[⌈rows·G·b/8⌉]` | asymmetric only: zero points bit-packed at `b` bits |
//! | `perm`   | `U16`/`U32`| `[cols]`       | only when needed (act-order with dynamic groups): `2·cols` if `cols ≤ 65536`, else `4·cols` |
//!
//! [`QuantizedLinear::storage_bits`] is `8 ×` the sum of these byte counts, so
//! it equals the bytes actually stored (tested). When `rows·cols·b` and
//! `rows·G·b` are multiples of 8 (any real layer) this is exactly
//! `rows·cols·b + rows·G·(16 + b_zero) + perm_bits`, i.e. per weight
//! `b + (16 + b_zero)/g + perm_bits/(rows·cols)` (4-bit, g128, asymmetric:
//! `4 + 20/128 = 4.15625`). The small [`QuantMeta`] header (shape, scheme,
//! provenance) is not counted, like a tensor header in GGUF or safetensors.
//!
//! # Column order
//!
//! Without `perm`, codes are in input-column order and column `c` uses group
//! `c / g`. With `perm`, storage column `j` holds input column `perm[j]` and uses
//! group `j / g`: `ŵ[r, perm[j]] = s[r, j/g] · (q[r, j] − z[r, j/g])`.

use half::f16;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::grid::GroupGrid;
use crate::pack::{pack_bits, packed_len, unpack_bits};
use crate::{FormatError, QuantScheme};

/// How a quantized layer was produced (recorded for the database).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Provenance {
    /// Round-to-nearest.
    Rtn {
        /// Whether the MSE clipping search was used.
        clip: bool,
    },
    /// GPTQ.
    Gptq {
        /// Relative damping finally used: `λ = damp · mean(diag H)`.
        damp: f64,
        /// How many times the damping was increased after a failed Cholesky.
        damp_retries: u32,
        /// Columns processed in descending `diag H` order.
        act_order: bool,
        /// Group grids fitted on the original weights before any update.
        static_groups: bool,
        /// Whether the MSE clipping search was used.
        clip: bool,
    },
}

/// Everything about a stored layer that is not in its buffers.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantMeta {
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// Bit width and grouping.
    pub scheme: QuantScheme,
    /// How it was produced.
    pub provenance: Provenance,
}

/// Element type of a [`NamedBuffer`] (little-endian).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BufferDtype {
    /// Raw bytes (bit-packed codes or zero points).
    U8,
    /// IEEE half precision.
    F16,
    /// Unsigned 16-bit integers.
    U16,
    /// Unsigned 32-bit integers.
    U32,
}

impl BufferDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            BufferDtype::U8 => 1,
            BufferDtype::F16 | BufferDtype::U16 => 2,
            BufferDtype::U32 => 4,
        }
    }
}

/// One stored tensor: name, element type, shape and little-endian bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedBuffer {
    /// `codes`, `scales`, `zeros` or `perm`.
    pub name: String,
    /// Element type.
    pub dtype: BufferDtype,
    /// Shape in elements.
    pub shape: Vec<usize>,
    /// Little-endian bytes, `shape.product() · dtype.size()` of them.
    pub data: Vec<u8>,
}

/// A quantized linear layer `[rows = out_features, cols = in_features]`.
///
/// Invariants (checked by [`QuantizedLinear::from_parts`]): `codes.len() =
/// rows·cols`, codes and zeros `≤ 2^bits − 1`, `scales.len() = rows·G`,
/// finite scales, `zeros` of length `rows·G` (asymmetric) or empty (symmetric),
/// `perm` a permutation of `0..cols`.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedLinear {
    rows: usize,
    cols: usize,
    scheme: QuantScheme,
    codes: Vec<u8>,
    scales: Vec<f16>,
    zeros: Vec<u8>,
    perm: Option<Vec<u32>>,
    provenance: Provenance,
}

impl QuantizedLinear {
    /// Builds a layer from its parts, validating every invariant.
    #[allow(clippy::too_many_arguments)]
    pub fn from_parts(
        rows: usize,
        cols: usize,
        scheme: QuantScheme,
        codes: Vec<u8>,
        scales: Vec<f16>,
        zeros: Vec<u8>,
        perm: Option<Vec<u32>>,
        provenance: Provenance,
    ) -> Result<Self, FormatError> {
        if !(2..=8).contains(&scheme.bits) {
            return Err(FormatError::BadScheme {
                reason: format!("bits must be 2 to 8, got {}", scheme.bits),
            });
        }
        if cols == 0 {
            return Err(FormatError::BadScheme {
                reason: "a layer needs at least one column".into(),
            });
        }
        let groups = rows * scheme.groups_per_row(cols);
        let check = |name: &'static str, expected: usize, got: usize| {
            if expected == got {
                Ok(())
            } else {
                Err(FormatError::BufferSize {
                    name,
                    expected,
                    got,
                })
            }
        };
        check("codes", rows * cols, codes.len())?;
        check("scales", groups, scales.len())?;
        check("zeros", if scheme.sym { 0 } else { groups }, zeros.len())?;
        let maxq = scheme.maxq();
        if codes.iter().chain(zeros.iter()).any(|&q| q > maxq) {
            return Err(FormatError::CodeOutOfRange { bits: scheme.bits });
        }
        if let Some(i) = scales.iter().position(|s| !s.is_finite()) {
            return Err(FormatError::NonFiniteScale { index: i });
        }
        if let Some(p) = &perm {
            check("perm", cols, p.len())?;
            let mut seen = vec![false; cols];
            for &c in p {
                let c = c as usize;
                if c >= cols || seen[c] {
                    return Err(FormatError::InvalidPermutation);
                }
                seen[c] = true;
            }
        }
        Ok(Self {
            rows,
            cols,
            scheme,
            codes,
            scales,
            zeros,
            perm,
            provenance,
        })
    }

    /// Constructor for our own quantizers (invariants hold by construction).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new_unchecked(
        rows: usize,
        cols: usize,
        scheme: QuantScheme,
        codes: Vec<u8>,
        scales: Vec<f16>,
        zeros: Vec<u8>,
        perm: Option<Vec<u32>>,
        provenance: Provenance,
    ) -> Self {
        debug_assert_eq!(codes.len(), rows * cols);
        debug_assert_eq!(scales.len(), rows * scheme.groups_per_row(cols));
        Self {
            rows,
            cols,
            scheme,
            codes,
            scales,
            zeros,
            perm,
            provenance,
        }
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Bit width and grouping.
    pub fn scheme(&self) -> QuantScheme {
        self.scheme
    }
    /// How the layer was produced.
    pub fn provenance(&self) -> Provenance {
        self.provenance
    }
    /// Relative damping used by GPTQ, if GPTQ produced this layer.
    pub fn damp(&self) -> Option<f64> {
        match self.provenance {
            Provenance::Gptq { damp, .. } => Some(damp),
            Provenance::Rtn { .. } => None,
        }
    }
    /// Codes `[rows, cols]` in storage column order (see the module docs).
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }
    /// Scales `[rows, groups]`.
    pub fn scales(&self) -> &[f16] {
        &self.scales
    }
    /// Zero points `[rows, groups]`; empty for symmetric schemes.
    pub fn zeros(&self) -> &[u8] {
        &self.zeros
    }
    /// Storage column `j` holds input column `perm[j]`.
    pub fn perm(&self) -> Option<&[u32]> {
        self.perm.as_deref()
    }
    /// Groups per row.
    pub fn groups_per_row(&self) -> usize {
        self.scheme.groups_per_row(self.cols)
    }

    /// Grid of group `group` of row `row`.
    #[inline]
    pub fn grid(&self, row: usize, group: usize) -> GroupGrid {
        let k = row * self.groups_per_row() + group;
        GroupGrid {
            scale: self.scales[k],
            zero: if self.scheme.sym {
                self.scheme.sym_zero()
            } else {
                self.zeros[k]
            },
        }
    }

    /// Dequantized weights `[rows, cols]`, row-major, input-column order.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        let gl = self.scheme.group_len(self.cols);
        out.par_chunks_mut(self.cols)
            .enumerate()
            .for_each(|(r, row)| {
                let codes = &self.codes[r * self.cols..(r + 1) * self.cols];
                for (j, &q) in codes.iter().enumerate() {
                    let v = self.grid(r, j / gl).dequantize(q);
                    match &self.perm {
                        None => row[j] = v,
                        Some(p) => row[p[j] as usize] = v,
                    }
                }
            });
        out
    }

    /// Bytes of the permutation buffer element: 2 if `cols ≤ 65536`, else 4.
    fn perm_dtype(&self) -> BufferDtype {
        if self.cols <= 1 << 16 {
            BufferDtype::U16
        } else {
            BufferDtype::U32
        }
    }

    /// Exact storage in bits: `8 ×` the bytes of the buffers written by
    /// [`QuantizedLinear::to_buffers`] (see the module docs for the formula).
    pub fn storage_bits(&self) -> u64 {
        let b = self.scheme.bits;
        let groups = self.rows * self.groups_per_row();
        let mut bytes = packed_len(self.rows * self.cols, b) + 2 * groups;
        if !self.scheme.sym {
            bytes += packed_len(groups, b);
        }
        if self.perm.is_some() {
            bytes += self.cols * self.perm_dtype().size();
        }
        8 * bytes as u64
    }

    /// [`QuantizedLinear::storage_bits`] divided by the number of weights.
    pub fn bits_per_weight(&self) -> f64 {
        self.storage_bits() as f64 / (self.rows * self.cols) as f64
    }

    /// Metadata that goes next to the buffers.
    pub fn meta(&self) -> QuantMeta {
        QuantMeta {
            rows: self.rows,
            cols: self.cols,
            scheme: self.scheme,
            provenance: self.provenance,
        }
    }

    /// Serialises into the named buffers `codes`, `scales`, `zeros`
    /// (asymmetric only) and `perm` (only when present).
    pub fn to_buffers(&self) -> Vec<NamedBuffer> {
        let b = self.scheme.bits;
        let g = self.groups_per_row();
        let codes = pack_bits(&self.codes, b);
        let mut out = vec![
            NamedBuffer {
                name: "codes".into(),
                dtype: BufferDtype::U8,
                shape: vec![codes.len()],
                data: codes,
            },
            NamedBuffer {
                name: "scales".into(),
                dtype: BufferDtype::F16,
                shape: vec![self.rows, g],
                data: self.scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
            },
        ];
        if !self.scheme.sym {
            let zeros = pack_bits(&self.zeros, b);
            out.push(NamedBuffer {
                name: "zeros".into(),
                dtype: BufferDtype::U8,
                shape: vec![zeros.len()],
                data: zeros,
            });
        }
        if let Some(p) = &self.perm {
            let dtype = self.perm_dtype();
            let data = match dtype {
                BufferDtype::U16 => p.iter().flat_map(|&c| (c as u16).to_le_bytes()).collect(),
                _ => p.iter().flat_map(|&c| c.to_le_bytes()).collect(),
            };
            out.push(NamedBuffer {
                name: "perm".into(),
                dtype,
                shape: vec![self.cols],
                data,
            });
        }
        out
    }

    /// Rebuilds a layer from [`QuantizedLinear::meta`] and the buffers of
    /// [`QuantizedLinear::to_buffers`], validating names, dtypes, shapes,
    /// sizes, code ranges, padding bits and the permutation.
    pub fn from_buffers(meta: &QuantMeta, buffers: &[NamedBuffer]) -> Result<Self, FormatError> {
        let QuantMeta {
            rows,
            cols,
            scheme,
            provenance,
        } = *meta;
        if !(2..=8).contains(&scheme.bits) || cols == 0 {
            return Err(FormatError::BadScheme {
                reason: format!("bits {} cols {cols}", scheme.bits),
            });
        }
        let b = scheme.bits;
        let g = scheme.groups_per_row(cols);
        for buf in buffers {
            if !["codes", "scales", "zeros", "perm"].contains(&buf.name.as_str()) {
                return Err(FormatError::UnexpectedBuffer {
                    name: buf.name.clone(),
                });
            }
            let elems: usize = buf.shape.iter().product();
            if elems * buf.dtype.size() != buf.data.len() {
                return Err(FormatError::ShapeMismatch {
                    name: buf.name.clone(),
                    shape: buf.shape.clone(),
                    bytes: buf.data.len(),
                });
            }
        }
        let find =
            |name: &'static str, dtype: BufferDtype| -> Result<Option<&NamedBuffer>, FormatError> {
                let mut it = buffers.iter().filter(|b| b.name == name);
                let first = it.next();
                if it.next().is_some() {
                    return Err(FormatError::DuplicateBuffer { name });
                }
                match first {
                    Some(buf) if buf.dtype != dtype => Err(FormatError::BadDtype {
                        name,
                        got: buf.dtype,
                    }),
                    other => Ok(other),
                }
            };
        let codes_buf =
            find("codes", BufferDtype::U8)?.ok_or(FormatError::MissingBuffer { name: "codes" })?;
        let codes =
            unpack_bits(&codes_buf.data, b, rows * cols).ok_or(FormatError::BufferSize {
                name: "codes",
                expected: packed_len(rows * cols, b),
                got: codes_buf.data.len(),
            })?;
        let scales_buf = find("scales", BufferDtype::F16)?
            .ok_or(FormatError::MissingBuffer { name: "scales" })?;
        if scales_buf.data.len() != 2 * rows * g {
            return Err(FormatError::BufferSize {
                name: "scales",
                expected: 2 * rows * g,
                got: scales_buf.data.len(),
            });
        }
        let scales: Vec<f16> = scales_buf
            .data
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]))
            .collect();
        let zeros = match (find("zeros", BufferDtype::U8)?, scheme.sym) {
            (None, true) => Vec::new(),
            (Some(_), true) => {
                return Err(FormatError::UnexpectedBuffer {
                    name: "zeros".into(),
                });
            }
            (None, false) => return Err(FormatError::MissingBuffer { name: "zeros" }),
            (Some(z), false) => {
                unpack_bits(&z.data, b, rows * g).ok_or(FormatError::BufferSize {
                    name: "zeros",
                    expected: packed_len(rows * g, b),
                    got: z.data.len(),
                })?
            }
        };
        let perm_dtype = if cols <= 1 << 16 {
            BufferDtype::U16
        } else {
            BufferDtype::U32
        };
        let perm = match find("perm", perm_dtype)? {
            None => None,
            Some(p) => {
                if p.data.len() != cols * perm_dtype.size() {
                    return Err(FormatError::BufferSize {
                        name: "perm",
                        expected: cols * perm_dtype.size(),
                        got: p.data.len(),
                    });
                }
                Some(match perm_dtype {
                    BufferDtype::U16 => p
                        .data
                        .chunks_exact(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
                        .collect(),
                    _ => p
                        .data
                        .chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                })
            }
        };
        Self::from_parts(rows, cols, scheme, codes, scales, zeros, perm, provenance)
    }
}
