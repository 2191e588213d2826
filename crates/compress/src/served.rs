//! Checkpoint formats that serving runtimes load: a [`QuantizedLinear`] as the
//! tensors of the compressed-tensors `pack-quantized` format (the format
//! llm-compressor writes; transformers and vLLM load it), and the
//! `quantization_config` that lets every module keep its own bit width.
//!
//! # The `pack-quantized` tensors of one linear layer `NAME`
//!
//! For `rows × cols` weights at `b` bits with `G` scale groups per row
//! (definition read from compressed-tensors 0.20, `compressors/pack_quantized`):
//!
//! | tensor                    | dtype | shape                  | content |
//! |---------------------------|-------|------------------------|---------|
//! | `NAME.weight_packed`      | I32   | `[rows, ⌈cols·b/32⌉]`  | each row's codes, densely packed |
//! | `NAME.weight_scale`       | F16   | `[rows, G]`            | our f16 scales, unchanged |
//! | `NAME.weight_zero_point`  | I32   | `[⌈rows·b/32⌉, G]`     | asymmetric only: each group column's zero points, densely packed along the rows |
//! | `NAME.weight_shape`       | I64   | `[2]`                  | `[rows, cols]` |
//!
//! *Dense packing* of a sequence `v_0, v_1, …` of `b`-bit values: value `i`
//! occupies bits `i·b … i·b + b − 1` of the sequence's bit stream, bit `k` of
//! the stream is bit `k mod 32` of 32-bit word `⌊k/32⌋`, a value may straddle
//! two words, and the last word is zero-padded. Words are stored as
//! little-endian `int32`.
//!
//! compressed-tensors stores signed codes `q_s ∈ [−2^(b−1), 2^(b−1) − 1]` and
//! packs `q_s + 2^(b−1)`, which is our unsigned code `q`; it dequantizes
//! `ŵ = (q_s − z_s) · s` with `z_s = z − 2^(b−1)`, i.e. `(q − z) · s`, our
//! definition. A symmetric grid has no stored zero point (`z_s = 0`, our fixed
//! zero `2^(b−1)`), and our symmetric scale may be negative, which the format's
//! arithmetic carries unchanged.
//!
//! # What the format cannot express
//!
//! * A stored column permutation (act-order with dynamic groups): the
//!   format's `g_idx` (`actorder: group`) was removed in compressed-tensors
//!   0.20, so such a layer is refused ([`ServedError::Permuted`]). Act-order
//!   with static groups (our `--act-order`) stores no permutation and is
//!   written as `actorder: weight`, which only records how it was quantized.
//! * Groups that do not divide the row (`cols mod g ≠ 0` with more than one
//!   group per row): the format requires `cols` to be a multiple of the group
//!   size ([`ServedError::GroupSize`]). One group per row is written as the
//!   `channel` strategy.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::quantized::{Provenance, QuantizedLinear};

/// Why a layer cannot be written in a served format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServedError {
    /// The layer stores a column permutation (act-order with dynamic groups).
    #[error(
        "the layer stores an act-order column permutation (dynamic groups), which dynapress does not write in a served format (compressed-tensors 0.20 removed g_idx; GPTQ's g_idx is not written yet); rebuild the database without it (`--act-order` with static groups is fine)"
    )]
    Permuted,
    /// `cols` is not a multiple of the group size.
    #[error(
        "{cols} input columns are not a multiple of the group size {group_size}, which compressed-tensors requires; rebuild the database with a --group-size that divides {cols} (or 0 for one group per row)"
    )]
    GroupSize {
        /// Input features.
        cols: usize,
        /// Group size of the layer's scheme.
        group_size: usize,
    },
    /// GPTQ checkpoints store 2, 3, 4 or 8 bits.
    #[error(
        "{bits}-bit codes: GPTQ checkpoints store 2, 3, 4 or 8 bits; rebuild the database with --bits from 2,3,4,8 (or --runtime gptqmodel)"
    )]
    GptqBits {
        /// Bits of the layer's scheme.
        bits: u8,
    },
    /// Asymmetric layers are written in the `gptq_v2` format only.
    #[error(
        "an asymmetric grid in the classic GPTQ format (zero points stored minus one, so a zero point of 0 is lost); write checkpoint_format gptq_v2"
    )]
    GptqV1Asymmetric,
    /// GPTQ packs codes along the input and zero points along the output
    /// dimension into whole 32-bit words.
    #[error(
        "a {rows} × {cols} layer at {bits} bits does not fill whole 32-bit words along both dimensions, which the GPTQ packing needs (rows and columns multiples of 32 always do)"
    )]
    GptqShape {
        /// Output features.
        rows: usize,
        /// Input features.
        cols: usize,
        /// Bits per code.
        bits: u8,
    },
}

/// Element type of a [`ServedTensor`] (little-endian).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServedDtype {
    /// 32-bit signed integers (packed codes and zero points).
    I32,
    /// 64-bit signed integers (`weight_shape`).
    I64,
    /// IEEE half precision (scales).
    F16,
}

/// One tensor of a served checkpoint: `NAME.suffix`.
#[derive(Clone, Debug, PartialEq)]
pub struct ServedTensor {
    /// `weight_packed`, `weight_scale`, `weight_zero_point`, `weight_shape`
    /// (compressed-tensors) or `qweight`, `qzeros`, `scales`, `g_idx` (GPTQ).
    pub suffix: &'static str,
    /// Element type.
    pub dtype: ServedDtype,
    /// Shape in elements.
    pub shape: Vec<usize>,
    /// Little-endian bytes.
    pub data: Vec<u8>,
}

/// Scale granularity of a compressed-tensors weight scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CtStrategy {
    /// One scale per row.
    Channel,
    /// One scale per `group_size` consecutive input columns.
    Group(usize),
}

/// The weight quantization of one compressed-tensors config group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CtScheme {
    /// Bits per code.
    pub bits: u8,
    /// Symmetric (no zero point).
    pub sym: bool,
    /// Scale granularity.
    pub strategy: CtStrategy,
    /// GPTQ processed the columns in act-order (static groups: recorded only).
    pub act_order: bool,
}

/// The `weights` entry of a compressed-tensors config group (`QuantizationArgs`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CtWeightsArgs {
    /// Bits per code.
    pub num_bits: u8,
    /// Always `int`.
    #[serde(rename = "type")]
    pub ty: &'static str,
    /// Symmetric grid.
    pub symmetric: bool,
    /// Group length, or `None` for the channel strategy.
    pub group_size: Option<usize>,
    /// `group` or `channel`.
    pub strategy: &'static str,
    /// Static quantization.
    pub dynamic: bool,
    /// `weight` when GPTQ ran in act-order, else `None`.
    pub actorder: Option<&'static str>,
    /// How the grids were fitted (informational).
    pub observer: &'static str,
}

impl CtScheme {
    /// The scheme of `q`, or why the format cannot store it.
    pub fn of(q: &QuantizedLinear) -> Result<Self, ServedError> {
        if q.perm().is_some() {
            return Err(ServedError::Permuted);
        }
        let s = q.scheme();
        let cols = q.cols();
        let strategy = if s.group_size != 0 && cols.is_multiple_of(s.group_size) {
            CtStrategy::Group(s.group_size)
        } else if q.groups_per_row() == 1 {
            CtStrategy::Channel
        } else {
            return Err(ServedError::GroupSize {
                cols,
                group_size: s.group_size,
            });
        };
        let act_order = matches!(
            q.provenance(),
            Provenance::Gptq {
                act_order: true,
                ..
            }
        );
        Ok(Self {
            bits: s.bits,
            sym: s.sym,
            strategy,
            act_order,
        })
    }

    /// The config group's `weights` arguments.
    pub fn weights_args(&self) -> CtWeightsArgs {
        let (group_size, strategy) = match self.strategy {
            CtStrategy::Channel => (None, "channel"),
            CtStrategy::Group(g) => (Some(g), "group"),
        };
        CtWeightsArgs {
            num_bits: self.bits,
            ty: "int",
            symmetric: self.sym,
            group_size,
            strategy,
            dynamic: false,
            actorder: self.act_order.then_some("weight"),
            observer: "minmax",
        }
    }
}

/// Packs `values` (each `< 2^bits`) densely into 32-bit words (see the module
/// docs); returns the `⌈len·bits/32⌉` words.
pub fn pack_dense_u32(values: &[u8], bits: u8) -> Vec<u32> {
    assert!((1..=8).contains(&bits), "bits {bits}");
    let b = bits as usize;
    let mut words = vec![0u32; (values.len() * b).div_ceil(32)];
    for (i, &v) in values.iter().enumerate() {
        debug_assert!(u32::from(v) >> b == 0, "value {v} exceeds {bits} bits");
        let bit = i * b;
        let (w, off) = (bit / 32, bit % 32);
        words[w] |= u32::from(v) << off;
        if off + b > 32 {
            words[w + 1] |= u32::from(v) >> (32 - off);
        }
    }
    words
}

/// Inverse of [`pack_dense_u32`]: the first `len` values.
pub fn unpack_dense_u32(words: &[u32], bits: u8, len: usize) -> Vec<u8> {
    assert!((1..=8).contains(&bits), "bits {bits}");
    let b = bits as usize;
    assert!(words.len() * 32 >= len * b, "too few words");
    let mask = (1u64 << b) - 1;
    (0..len)
        .map(|i| {
            let bit = i * b;
            let (w, off) = (bit / 32, bit % 32);
            let lo = u64::from(words[w]);
            let hi = words.get(w + 1).copied().map_or(0, u64::from);
            (((lo | hi << 32) >> off) & mask) as u8
        })
        .collect()
}

fn words_le(words: impl IntoIterator<Item = u32>) -> Vec<u8> {
    words.into_iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// The compressed-tensors `pack-quantized` tensors of `q` (see the module
/// docs for names, shapes and packing), with its scheme.
pub fn compressed_tensors_tensors(
    q: &QuantizedLinear,
) -> Result<(CtScheme, Vec<ServedTensor>), ServedError> {
    let scheme = CtScheme::of(q)?;
    let (rows, cols, bits) = (q.rows(), q.cols(), q.scheme().bits);
    let g = q.groups_per_row();
    let row_words = (cols * bits as usize).div_ceil(32);
    let mut packed = Vec::with_capacity(rows * row_words * 4);
    for row in q.codes().chunks_exact(cols) {
        packed.extend(words_le(pack_dense_u32(row, bits)));
    }
    let mut out = vec![
        ServedTensor {
            suffix: "weight_packed",
            dtype: ServedDtype::I32,
            shape: vec![rows, row_words],
            data: packed,
        },
        ServedTensor {
            suffix: "weight_scale",
            dtype: ServedDtype::F16,
            shape: vec![rows, g],
            data: q.scales().iter().flat_map(|s| s.to_le_bytes()).collect(),
        },
    ];
    if !q.scheme().sym {
        // Packed along the rows: column `j` of the [rows, G] zero points is one
        // dense stream, and its words form column `j` of the result.
        let col_words = (rows * bits as usize).div_ceil(32);
        let mut zp = vec![0u32; col_words * g];
        let zeros = q.zeros();
        for j in 0..g {
            let column: Vec<u8> = (0..rows).map(|r| zeros[r * g + j]).collect();
            for (w, word) in pack_dense_u32(&column, bits).into_iter().enumerate() {
                zp[w * g + j] = word;
            }
        }
        out.push(ServedTensor {
            suffix: "weight_zero_point",
            dtype: ServedDtype::I32,
            shape: vec![col_words, g],
            data: words_le(zp),
        });
    }
    out.push(ServedTensor {
        suffix: "weight_shape",
        dtype: ServedDtype::I64,
        shape: vec![2],
        data: [rows as i64, cols as i64]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
    });
    Ok((scheme, out))
}

/// One entry of `config_groups`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CtConfigGroup {
    /// Exact module names (`model.layers.0.self_attn.q_proj`).
    pub targets: Vec<String>,
    /// Weight quantization.
    pub weights: CtWeightsArgs,
    /// Weight-only: no activation quantization.
    pub input_activations: Option<()>,
    /// Weight-only.
    pub output_activations: Option<()>,
    /// `pack-quantized`.
    pub format: &'static str,
}

/// The `quantization_config` of a compressed-tensors checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CtQuantizationConfig {
    /// `compressed-tensors`.
    pub quant_method: &'static str,
    /// `pack-quantized`.
    pub format: &'static str,
    /// `compressed`: the weights on disk are packed.
    pub quantization_status: &'static str,
    /// `group_0`, `group_1`, … one per distinct scheme, in scheme order.
    pub config_groups: BTreeMap<String, CtConfigGroup>,
    /// Modules left in floating point (`lm_head`).
    pub ignore: Vec<String>,
    /// No KV-cache quantization.
    pub kv_cache_scheme: Option<()>,
}

/// The config that loads each module of `modules` (module name, scheme) at
/// its own scheme: one config group per distinct scheme, targeting the exact
/// module names.
pub fn compressed_tensors_config(
    modules: &[(String, CtScheme)],
    ignore: Vec<String>,
) -> CtQuantizationConfig {
    let mut by_scheme: BTreeMap<CtScheme, Vec<String>> = BTreeMap::new();
    for (name, s) in modules {
        by_scheme.entry(*s).or_default().push(name.clone());
    }
    let config_groups = by_scheme
        .into_iter()
        .enumerate()
        .map(|(i, (s, targets))| {
            (
                format!("group_{i}"),
                CtConfigGroup {
                    targets,
                    weights: s.weights_args(),
                    input_activations: None,
                    output_activations: None,
                    format: "pack-quantized",
                },
            )
        })
        .collect();
    CtQuantizationConfig {
        quant_method: "compressed-tensors",
        format: "pack-quantized",
        quantization_status: "compressed",
        config_groups,
        ignore,
        kv_cache_scheme: None,
    }
}

// ---------------------------------------------------------------- GPTQ

/// The quantization of one module of a GPTQ checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GptqScheme {
    /// Bits per code: 2, 3, 4 or 8.
    pub bits: u8,
    /// Group length along the input, or `None` for one group per row
    /// (GPTQ's `group_size: -1`).
    pub group_size: Option<usize>,
    /// Symmetric grid.
    pub sym: bool,
}

impl GptqScheme {
    /// The scheme of `q`, or why a GPTQ checkpoint cannot store it.
    pub fn of(q: &QuantizedLinear) -> Result<Self, ServedError> {
        if q.perm().is_some() {
            return Err(ServedError::Permuted);
        }
        let s = q.scheme();
        if ![2, 3, 4, 8].contains(&s.bits) {
            return Err(ServedError::GptqBits { bits: s.bits });
        }
        let b = s.bits as usize;
        if !(q.cols() * b).is_multiple_of(32) || !(q.rows() * b).is_multiple_of(32) {
            return Err(ServedError::GptqShape {
                rows: q.rows(),
                cols: q.cols(),
                bits: s.bits,
            });
        }
        Ok(Self {
            bits: s.bits,
            group_size: (q.groups_per_row() > 1).then_some(s.group_size),
            sym: s.sym,
        })
    }

    /// The `group_size` value of the config (−1: one group per row).
    pub fn group_size_value(&self) -> i64 {
        self.group_size.map_or(-1, |g| g as i64)
    }
}

/// Whether `q` needs GPTQModel's `gptq_v2` checkpoint format: the classic
/// format (`gptq`, "v1") stores every zero point minus one, which loses an
/// asymmetric zero point of 0, and GPTQModel refuses asymmetric v1
/// checkpoints not written by itself. Symmetric layers (zero point
/// `2^(b−1)`) are written as v1, which every GPTQ runtime reads.
pub fn gptq_needs_v2(q: &QuantizedLinear) -> bool {
    !q.scheme().sym
}

/// The GPTQ tensors of `q` (AutoGPTQ / GPTQModel layout), with its scheme:
///
/// | tensor       | dtype | shape                | content |
/// |--------------|-------|----------------------|---------|
/// | `NAME.qweight` | I32 | `[cols·b/32, rows]`  | column `r` = row `r`'s codes, densely packed along the input |
/// | `NAME.qzeros`  | I32 | `[G, rows·b/32]`     | row `g` = group `g`'s zero points of every output, densely packed (`z − 1` in the v1 format, `z` in v2) |
/// | `NAME.scales`  | F16 | `[G, rows]`          | our f16 scales, transposed |
/// | `NAME.g_idx`   | I32 | `[cols]`             | `j / group_size` (0 with one group per row) |
///
/// Dense packing is [`pack_dense_u32`]'s; for 3 bits it is exactly GPTQ's
/// 32-values-in-3-words layout. A symmetric grid's zero point is our fixed
/// `2^(b−1)`. GPTQ dequantizes `scales[g] · (q − z)`, our definition.
pub fn gptq_tensors(
    q: &QuantizedLinear,
    v2: bool,
) -> Result<(GptqScheme, Vec<ServedTensor>), ServedError> {
    let scheme = GptqScheme::of(q)?;
    if !v2 && gptq_needs_v2(q) {
        return Err(ServedError::GptqV1Asymmetric);
    }
    let (rows, cols, bits) = (q.rows(), q.cols(), q.scheme().bits);
    let b = bits as usize;
    let g = q.groups_per_row();
    let in_words = cols * b / 32;
    let mut qweight = vec![0u32; in_words * rows];
    for (r, row) in q.codes().chunks_exact(cols).enumerate() {
        for (w, word) in pack_dense_u32(row, bits).into_iter().enumerate() {
            qweight[w * rows + r] = word;
        }
    }
    let half = 1u8 << (bits - 1);
    let shift = u8::from(!v2);
    let mut qzeros = Vec::with_capacity(g * rows * b / 32);
    for j in 0..g {
        let z: Vec<u8> = (0..rows)
            .map(|r| {
                let z = if q.scheme().sym {
                    half
                } else {
                    q.zeros()[r * g + j]
                };
                z - shift
            })
            .collect();
        qzeros.extend(pack_dense_u32(&z, bits));
    }
    let scales = q.scales();
    let mut st = Vec::with_capacity(g * rows * 2);
    for j in 0..g {
        for r in 0..rows {
            st.extend(scales[r * g + j].to_le_bytes());
        }
    }
    let gs = scheme.group_size.unwrap_or(cols.max(1));
    let g_idx: Vec<u8> = (0..cols)
        .flat_map(|c| ((c / gs) as i32).to_le_bytes())
        .collect();
    Ok((
        scheme,
        vec![
            ServedTensor {
                suffix: "qweight",
                dtype: ServedDtype::I32,
                shape: vec![in_words, rows],
                data: words_le(qweight),
            },
            ServedTensor {
                suffix: "qzeros",
                dtype: ServedDtype::I32,
                shape: vec![g, rows * b / 32],
                data: words_le(qzeros),
            },
            ServedTensor {
                suffix: "scales",
                dtype: ServedDtype::F16,
                shape: vec![g, rows],
                data: st,
            },
            ServedTensor {
                suffix: "g_idx",
                dtype: ServedDtype::I32,
                shape: vec![cols],
                data: g_idx,
            },
        ],
    ))
}

/// A module's override in GPTQModel's `dynamic` config.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GptqOverride {
    /// Bits per code.
    pub bits: u8,
    /// Group length (−1: one group per row).
    pub group_size: i64,
    /// Symmetric grid.
    pub sym: bool,
}

/// The `quantization_config` of a GPTQ checkpoint (GPTQModel's
/// `QuantizeConfig`, which transformers' `GPTQConfig` reads too).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GptqQuantizationConfig {
    /// `gptq`.
    pub quant_method: &'static str,
    /// `gptq` (zero points stored minus one) or `gptq_v2`.
    pub checkpoint_format: &'static str,
    /// Default bits per code.
    pub bits: u8,
    /// Default group length (−1: one group per row).
    pub group_size: i64,
    /// Default symmetry.
    pub sym: bool,
    /// No stored act-order permutation.
    pub desc_act: bool,
    /// Groups are consecutive columns.
    pub static_groups: bool,
    /// Informational (GPTQ's sequential sublayer order).
    pub true_sequential: bool,
    /// The LM head is not quantized.
    pub lm_head: bool,
    /// One rule per module whose scheme is not the default: the regex of its
    /// exact name, prefixed `+:` (apply).
    pub dynamic: BTreeMap<String, GptqOverride>,
}

/// The config of a GPTQ checkpoint whose modules keep their own schemes: the
/// most common scheme is the default (ties: the first in scheme order), and
/// every module with another scheme gets a GPTQModel `dynamic` rule matching
/// exactly its name (`+:^model\.layers\.0\.mlp\.down_proj$`).
pub fn gptq_config(modules: &[(String, GptqScheme)], v2: bool) -> GptqQuantizationConfig {
    let mut count: BTreeMap<GptqScheme, usize> = BTreeMap::new();
    for (_, s) in modules {
        *count.entry(*s).or_default() += 1;
    }
    let base = count
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map(|(s, _)| *s)
        .unwrap_or(GptqScheme {
            bits: 4,
            group_size: Some(128),
            sym: true,
        });
    let dynamic = modules
        .iter()
        .filter(|(_, s)| *s != base)
        .map(|(name, s)| {
            (
                format!("+:^{}$", name.replace('.', "\\.")),
                GptqOverride {
                    bits: s.bits,
                    group_size: s.group_size_value(),
                    sym: s.sym,
                },
            )
        })
        .collect();
    GptqQuantizationConfig {
        quant_method: "gptq",
        checkpoint_format: if v2 { "gptq_v2" } else { "gptq" },
        bits: base.bits,
        group_size: base.group_size_value(),
        sym: base.sym,
        desc_act: false,
        static_groups: false,
        true_sequential: true,
        lm_head: false,
        dynamic,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GptqParams, Hessian, QuantScheme, gptq};
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Bit `k` of the stream, read one bit at a time (the oracle).
    fn stream_bit(words: &[u32], k: usize) -> u8 {
        ((words[k / 32] >> (k % 32)) & 1) as u8
    }

    #[test]
    fn dense_packing_puts_value_i_at_bits_i_times_b() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for bits in 1..=8u8 {
            for len in [1usize, 5, 31, 32, 33, 100, 257] {
                let v: Vec<u8> = (0..len)
                    .map(|_| rng.random_range(0..1u16 << bits) as u8)
                    .collect();
                let w = pack_dense_u32(&v, bits);
                assert_eq!(w.len(), (len * bits as usize).div_ceil(32));
                for (i, &x) in v.iter().enumerate() {
                    let mut got = 0u8;
                    for k in 0..bits as usize {
                        got |= stream_bit(&w, i * bits as usize + k) << k;
                    }
                    assert_eq!(got, x, "bits {bits} len {len} i {i}");
                }
                // Padding bits are zero.
                for k in len * bits as usize..w.len() * 32 {
                    assert_eq!(stream_bit(&w, k), 0);
                }
                assert_eq!(unpack_dense_u32(&w, bits, len), v);
            }
        }
    }

    #[test]
    fn three_bit_values_straddle_words() {
        // 11 values of 3 bits: the 11th (index 10) starts at bit 30 and spills
        // one bit into the second word.
        let v = [7u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
        let w = pack_dense_u32(&v, 3);
        assert_eq!(w, vec![0b111 | (1 << 30), 0b1]);
    }

    fn layer(rows: usize, cols: usize, scheme: QuantScheme, act_order: bool) -> QuantizedLinear {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let x: Vec<f32> = (0..64 * cols)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let mut h = Hessian::new(cols);
        h.add_batch(&x).unwrap();
        let w: Vec<f32> = (0..rows * cols)
            .map(|_| rng.random_range(-0.5..0.5))
            .collect();
        gptq(
            &w,
            &h,
            &GptqParams {
                scheme,
                act_order,
                static_groups: act_order,
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn i32s(t: &ServedTensor) -> Vec<u32> {
        t.data
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    /// Dequantizes the tensors as compressed-tensors defines them and compares
    /// with our own dequantization, bit for bit.
    fn check_roundtrip(q: &QuantizedLinear) {
        let (scheme, t) = compressed_tensors_tensors(q).unwrap();
        let (rows, cols, b) = (q.rows(), q.cols(), q.scheme().bits);
        let g = q.groups_per_row();
        let find = |s: &str| t.iter().find(|x| x.suffix == s).unwrap();
        let packed = find("weight_packed");
        assert_eq!(packed.shape, vec![rows, (cols * b as usize).div_ceil(32)]);
        let words = i32s(packed);
        let rw = packed.shape[1];
        let scale = find("weight_scale");
        assert_eq!(scale.shape, vec![rows, g]);
        let scales: Vec<f32> = scale
            .data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect();
        let zeros: Vec<u8> = if q.scheme().sym {
            assert!(t.iter().all(|x| x.suffix != "weight_zero_point"));
            vec![q.scheme().sym_zero(); rows * g]
        } else {
            let z = find("weight_zero_point");
            let cw = (rows * b as usize).div_ceil(32);
            assert_eq!(z.shape, vec![cw, g]);
            let zw = i32s(z);
            let mut out = vec![0u8; rows * g];
            for j in 0..g {
                let col: Vec<u32> = (0..cw).map(|w| zw[w * g + j]).collect();
                for (r, v) in unpack_dense_u32(&col, b, rows).into_iter().enumerate() {
                    out[r * g + j] = v;
                }
            }
            out
        };
        let gl = match scheme.strategy {
            CtStrategy::Channel => cols,
            CtStrategy::Group(gs) => gs,
        };
        let deq = q.dequantize();
        for r in 0..rows {
            let codes = unpack_dense_u32(&words[r * rw..(r + 1) * rw], b, cols);
            for c in 0..cols {
                let k = r * g + c / gl;
                let v = (codes[c] as f32 - zeros[k] as f32) * scales[k];
                assert_eq!(v.to_bits(), deq[r * cols + c].to_bits(), "r {r} c {c}");
            }
        }
        let shape = find("weight_shape");
        assert_eq!(shape.data.len(), 16);
        assert_eq!(
            i64::from_le_bytes(shape.data[..8].try_into().unwrap()),
            rows as i64
        );
        assert_eq!(
            i64::from_le_bytes(shape.data[8..].try_into().unwrap()),
            cols as i64
        );
    }

    #[test]
    fn tensors_dequantize_to_our_weights() {
        for bits in 2..=8u8 {
            for sym in [false, true] {
                let scheme = QuantScheme {
                    bits,
                    group_size: 32,
                    sym,
                };
                check_roundtrip(&layer(37, 96, scheme, false));
            }
        }
        // One group per row: the channel strategy.
        let q = layer(9, 40, QuantScheme::new(3, 0), false);
        assert_eq!(CtScheme::of(&q).unwrap().strategy, CtStrategy::Channel);
        check_roundtrip(&q);
        // Act-order with static groups stores no permutation.
        let q = layer(16, 64, QuantScheme::new(4, 16), true);
        assert!(q.perm().is_none());
        assert!(CtScheme::of(&q).unwrap().act_order);
        check_roundtrip(&q);
    }

    #[test]
    fn what_the_format_cannot_express_is_refused() {
        let q = layer(8, 72, QuantScheme::new(4, 32), false);
        assert_eq!(
            CtScheme::of(&q),
            Err(ServedError::GroupSize {
                cols: 72,
                group_size: 32
            })
        );
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let x: Vec<f32> = (0..64 * 64).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut h = Hessian::new(64);
        h.add_batch(&x).unwrap();
        let w: Vec<f32> = (0..8 * 64).map(|_| rng.random_range(-0.5..0.5)).collect();
        let q = gptq(
            &w,
            &h,
            &GptqParams {
                scheme: QuantScheme::new(4, 16),
                act_order: true,
                static_groups: false,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(q.perm().is_some());
        assert_eq!(CtScheme::of(&q), Err(ServedError::Permuted));
    }

    #[test]
    fn config_has_one_group_per_scheme() {
        let a = CtScheme {
            bits: 4,
            sym: false,
            strategy: CtStrategy::Group(128),
            act_order: false,
        };
        let b = CtScheme { bits: 8, ..a };
        let cfg = compressed_tensors_config(
            &[("x.q".into(), a), ("x.k".into(), b), ("x.v".into(), a)],
            vec!["lm_head".into()],
        );
        assert_eq!(cfg.config_groups.len(), 2);
        assert_eq!(cfg.config_groups["group_0"].targets, vec!["x.q", "x.v"]);
        assert_eq!(cfg.config_groups["group_1"].targets, vec!["x.k"]);
        assert_eq!(cfg.config_groups["group_1"].weights.num_bits, 8);
    }

    /// GPTQ's reference packing of one column of 3-bit codes: 32 values in
    /// three words, written out the way AutoGPTQ's `pack` loop does it.
    #[allow(clippy::needless_range_loop)]
    fn gptq_pack3(v: &[u8]) -> Vec<u32> {
        let mut out = Vec::new();
        for c in v.chunks_exact(32) {
            let c: Vec<u32> = c.iter().map(|&x| u32::from(x)).collect();
            let mut w = [0u32; 3];
            for j in 0..10 {
                w[0] |= c[j] << (3 * j);
            }
            w[0] |= c[10] << 30;
            w[1] |= (c[10] >> 2) & 1;
            for j in 0..10 {
                w[1] |= c[11 + j] << (3 * j + 1);
            }
            w[1] |= c[21] << 31;
            w[2] |= (c[21] >> 1) & 3;
            for j in 0..10 {
                w[2] |= c[22 + j] << (3 * j + 2);
            }
            out.extend(w);
        }
        out
    }

    #[test]
    fn gptq_tensors_decode_to_our_weights() {
        for (scheme, v2) in [
            (QuantScheme::new(3, 32), true),
            (
                QuantScheme {
                    sym: true,
                    ..QuantScheme::new(4, 64)
                },
                false,
            ),
            (
                QuantScheme {
                    sym: true,
                    ..QuantScheme::new(8, 0)
                },
                false,
            ),
            (QuantScheme::new(2, 64), true),
        ] {
            let (rows, cols) = (64, 128);
            let q = layer(rows, cols, scheme, false);
            assert_eq!(gptq_needs_v2(&q), v2);
            let (s, t) = gptq_tensors(&q, v2).unwrap();
            let b = scheme.bits as usize;
            let g = q.groups_per_row();
            assert_eq!(s.group_size, (g > 1).then_some(scheme.group_size));
            let names: Vec<&str> = t.iter().map(|t| t.suffix).collect();
            assert_eq!(names, ["qweight", "qzeros", "scales", "g_idx"]);
            assert_eq!(t[0].shape, [cols * b / 32, rows]);
            assert_eq!(t[1].shape, [g, rows * b / 32]);
            assert_eq!(t[2].shape, [g, rows]);
            assert_eq!(t[3].shape, [cols]);
            let (qw, qz, gi) = (i32s(&t[0]), i32s(&t[1]), i32s(&t[3]));
            // Decode the way GPTQ does: column r of qweight, row g of qzeros
            // (+1 in v1), scales[g_idx[j]] · (q − z).
            let deq = q.dequantize();
            for r in 0..rows {
                let col: Vec<u32> = (0..cols * b / 32).map(|w| qw[w * rows + r]).collect();
                let codes = unpack_dense_u32(&col, scheme.bits, cols);
                if b == 3 {
                    assert_eq!(col, gptq_pack3(&q.codes()[r * cols..(r + 1) * cols]));
                }
                for j in 0..cols {
                    let gj = gi[j] as usize;
                    let zrow = &qz[gj * rows * b / 32..(gj + 1) * rows * b / 32];
                    let z = unpack_dense_u32(zrow, scheme.bits, rows)[r] + u8::from(!v2);
                    let sc = f32::from(half::f16::from_le_bytes([
                        t[2].data[2 * (gj * rows + r)],
                        t[2].data[2 * (gj * rows + r) + 1],
                    ]));
                    let w = sc * (codes[j] as f32 - z as f32);
                    assert_eq!(w, deq[r * cols + j], "{scheme:?} row {r} col {j}");
                }
            }
        }
    }

    #[test]
    fn gptq_refuses_what_it_cannot_store() {
        let q5 = layer(64, 128, QuantScheme::new(5, 32), false);
        assert_eq!(GptqScheme::of(&q5), Err(ServedError::GptqBits { bits: 5 }));
        let q3 = layer(40, 128, QuantScheme::new(3, 32), false);
        assert!(matches!(
            GptqScheme::of(&q3),
            Err(ServedError::GptqShape { rows: 40, .. })
        ));
        let asym = layer(64, 128, QuantScheme::new(4, 32), false);
        assert_eq!(
            gptq_tensors(&asym, false).unwrap_err(),
            ServedError::GptqV1Asymmetric
        );
    }

    #[test]
    fn gptq_config_overrides_every_module_off_the_default() {
        let a = GptqScheme {
            bits: 4,
            group_size: Some(128),
            sym: true,
        };
        let b = GptqScheme { bits: 8, ..a };
        let cfg = gptq_config(
            &[
                ("model.layers.0.q".into(), a),
                ("model.layers.0.k".into(), b),
                ("model.layers.1.q".into(), a),
            ],
            false,
        );
        assert_eq!((cfg.bits, cfg.group_size, cfg.sym), (4, 128, true));
        assert_eq!(cfg.checkpoint_format, "gptq");
        assert_eq!(cfg.dynamic.len(), 1);
        let rule = &cfg.dynamic["+:^model\\.layers\\.0\\.k$"];
        assert_eq!((rule.bits, rule.group_size), (8, 128));
    }
}
