//! The compressors of a layer database: which method, at which levels, and the
//! dispatch from a level to the compressor that makes its [`Variant`].
//!
//! A level is a grid bit width (GPTQ or RTN on [`QuantScheme`] grids), a
//! ggml type (ggml's own encoder, or GPTQ inside the type's block grid), or a
//! sparsity (SparseGPT; the kept weights as f16 or, jointly, on a grid). The
//! database stores one [`Variant`] per layer and level; [`compress_layer`] is
//! the one place that turns `(W, H, spec, level)` into it.

use dynapress_ggml::GgmlType;
use serde::{Deserialize, Serialize};

use crate::gptq::{GptqFactor, GptqQuantParams};
use crate::grid::{ClipSearch, QuantScheme};
use crate::hessian::Hessian;
use crate::quantized::QuantizedLinear;
use crate::rtn::{RtnParams, rtn};
use crate::sparse::{SparseLinear, SparsityPattern};
use crate::sparsegpt::{SparseParams, sparsegpt_with_factor};

/// Errors of the method description and the stored variants.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MethodError {
    /// A `--sparsities` entry is not a fraction in steps of 0.01 below 1.
    #[error("sparsity {0} is not a fraction between 0 and 0.99 in steps of 0.01")]
    Sparsity(f64),
    /// A `--sparsities` entry `N:M` is not an N:M pattern this crate stores.
    #[error(
        "`{zeros}:{group}` is not an N:M sparsity: N:M prunes N weights in every M consecutive input columns, with 1 ≤ N < M ≤ 8 (2:4 for 50 %)"
    )]
    NM {
        /// Pruned weights per group (N).
        zeros: usize,
        /// Group length (M).
        group: usize,
    },
    /// A `--types` entry is not a quantized ggml type.
    #[error(
        "unknown ggml type `{0}`; choose among Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q4_0, IQ4_NL, Q4_1, Q5_0, Q5_1, Q8_0, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ4_XS"
    )]
    UnknownGgmlType(String),
    /// Stored ggml blocks do not decode.
    #[error("{ty} blocks: {msg}")]
    Blocks {
        /// The block type.
        ty: GgmlType,
        /// What is wrong.
        msg: String,
    },
}

/// The compressor and its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodSpec {
    /// `gptq`, `rtn`, `kquant`, `gptq-kquant` or `sparsegpt`.
    pub method: Method,
    /// Grid methods (gptq, rtn): bit widths, one level each.
    pub bits: Vec<u8>,
    /// ggml methods (kquant, gptq-kquant): ggml types, one level each.
    #[serde(default)]
    pub types: Vec<String>,
    /// ggml methods: weight the encoder's scale search by the calibration
    /// importance (mean of x² per input channel, as llama-imatrix computes).
    #[serde(default)]
    pub imatrix: bool,
    /// Group size along the input dimension (0 = one group per row).
    pub group_size: usize,
    /// Symmetric grid (no zero point).
    pub sym: bool,
    /// GPTQ: columns in descending diag(H) order, with static groups.
    pub act_order: bool,
    /// GPTQ: relative dampening λ = damp · mean(diag H).
    pub damp: f64,
    /// MSE-optimal clipping search per group.
    pub clip: bool,
    /// sparsegpt: fractions of pruned weights per row (in steps of 0.01) or
    /// N:M patterns, one level each.
    #[serde(default)]
    pub sparsities: Vec<LevelSparsity>,
    /// sparsegpt: grid bit widths of the kept weights (joint sparsity ×
    /// quantization levels, with `group_size` and `sym`); empty: f16 values.
    #[serde(default)]
    pub sparse_bits: Vec<u8>,
}

impl Default for MethodSpec {
    fn default() -> Self {
        MethodSpec {
            method: Method::Gptq,
            bits: vec![2, 3, 4, 5, 6, 8],
            types: vec![],
            imatrix: true,
            group_size: 128,
            sym: false,
            act_order: false,
            damp: 0.01,
            clip: false,
            sparsities: vec![],
            sparse_bits: vec![],
        }
    }
}

/// The sparsities a sparsegpt database uses by default.
pub const DEFAULT_SPARSITIES: &str = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9";

/// The ggml types a ggml database uses by default: the i-quants and the
/// k-quants (with GPTQ inside every one of them, the i-quant levels lower
/// the KL of `compress --format gguf` at every file size measured from
/// llama.cpp's IQ2_M to Q4_K_M; docs/gguf-results.md).
pub const DEFAULT_GGML_TYPES: &str =
    "IQ2_XXS,IQ2_XS,IQ2_S,IQ3_XXS,IQ3_S,IQ4_XS,Q2_K,Q3_K,Q4_K,Q5_K,Q6_K,Q8_0";

/// The k-quant types of [`DEFAULT_GGML_TYPES`] (the default before the
/// i-quants had GPTQ: 2026-12-03).
pub const KQUANT_GGML_TYPES: &str = "Q2_K,Q3_K,Q4_K,Q5_K,Q6_K,Q8_0";

/// The 32-value types a ggml database adds as *fallback levels* for layers
/// whose rows a chosen type cannot hold (rows that are not a multiple of the
/// k-quants' 256): llama-quantize's fallback types (`tensor_type_fallback`:
/// Q2_K, Q3_K → Q4_0; Q4_K → Q5_0; Q5_K → Q5_1; Q6_K → Q8_0), IQ4_NL (its
/// fallback for the i-quants: a non-linear 4.5-bit grid) and Q4_1 between
/// them, each with its own database entry (GPTQ inside its grid for
/// gptq-kquant). Types already among `--types` are not repeated.
pub const FALLBACK_GGML_TYPES: [GgmlType; 6] = [
    GgmlType::Q4_0,
    GgmlType::IQ4NL,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
];

/// One level of a database.
#[derive(Debug, Clone, PartialEq)]
pub struct LevelSpec {
    /// The level's name in the database (`gptq-b3-g128`, `gptq-Q4_K`, …).
    pub name: String,
    /// Nominal bits per code (for ggml types: the integer part of its bits per weight).
    pub bits: u8,
    /// The ggml type, for ggml methods.
    pub ggml: Option<GgmlType>,
    /// A fallback level (see [`FALLBACK_GGML_TYPES`]): built only for layers
    /// whose rows one of the chosen types cannot hold.
    pub fallback: bool,
    /// A SparseGPT level.
    pub sparse: Option<SparseLevel>,
}

/// What a sparsity level prunes: a fraction of every row, or an N:M pattern
/// (one `--sparsities` entry: `0.5`, `2:4`).
///
/// In a manifest a fraction is a JSON number and an N:M pattern the string
/// `"N:M"`, so manifests written before N:M levels read unchanged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LevelSparsity {
    /// Pruned fraction of every row: `⌊s · cols + ½⌋` weights per row
    /// ([`SparsityPattern::fraction`]).
    Fraction(f64),
    /// `zeros` pruned weights in every aligned run of `group` input columns
    /// ([`SparsityPattern::NM`]; 2:4 is `zeros: 2, group: 4`).
    NM {
        /// Pruned weights per group (N).
        zeros: usize,
        /// Group length (M).
        group: usize,
    },
}

impl LevelSparsity {
    /// The pruned fraction: the fraction itself, or `N/M` (what a sparsity
    /// budget counts the level as).
    pub fn fraction(&self) -> f64 {
        match *self {
            LevelSparsity::Fraction(s) => s,
            LevelSparsity::NM { zeros, group } => zeros as f64 / group.max(1) as f64,
        }
    }

    /// Whether this is an N:M pattern.
    pub fn is_nm(&self) -> bool {
        matches!(self, LevelSparsity::NM { .. })
    }

    /// The mask pattern for rows of `cols` weights, checked against them.
    pub fn pattern(&self, cols: usize) -> Result<SparsityPattern, crate::SparseError> {
        let p = match *self {
            LevelSparsity::Fraction(s) => SparsityPattern::fraction(s, cols)?,
            LevelSparsity::NM { zeros, group } => SparsityPattern::NM { zeros, group },
        };
        p.validate(cols)?;
        Ok(p)
    }

    /// Checks the entry alone (no layer shape): a fraction in steps of 0.01
    /// from 0 to 0.99 (returned rounded to its step), or `1 ≤ N < M ≤ 8`.
    pub fn checked(self) -> Result<Self, MethodError> {
        match self {
            LevelSparsity::Fraction(s) => {
                let pct = (s * 100.0).round();
                if !(0.0..=99.0).contains(&pct) || (s * 100.0 - pct).abs() > 1e-6 {
                    return Err(MethodError::Sparsity(s));
                }
                Ok(LevelSparsity::Fraction(pct / 100.0))
            }
            LevelSparsity::NM { zeros, group } => {
                if zeros == 0 || zeros >= group || group > crate::sparse::MAX_NM_GROUP {
                    return Err(MethodError::NM { zeros, group });
                }
                Ok(self)
            }
        }
    }

    /// The part of the level's name after `sparsegpt-`: `s50` for 50 %,
    /// `2of4` for 2:4 (no `:`, as level names are file names).
    pub fn name(&self) -> String {
        match *self {
            LevelSparsity::Fraction(s) => format!("s{:02}", (s * 100.0).round()),
            LevelSparsity::NM { zeros, group } => format!("{zeros}of{group}"),
        }
    }
}

impl std::fmt::Display for LevelSparsity {
    /// As given on the command line: `0.5`, `2:4`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            LevelSparsity::Fraction(s) => write!(f, "{s}"),
            LevelSparsity::NM { zeros, group } => write!(f, "{zeros}:{group}"),
        }
    }
}

impl std::str::FromStr for LevelSparsity {
    type Err = String;
    /// `0.5` (a fraction) or `2:4` (N:M); the values are checked by
    /// [`LevelSparsity::checked`], not here.
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        match t.split_once(':') {
            Some((n, m)) => match (n.trim().parse::<usize>(), m.trim().parse::<usize>()) {
                (Ok(zeros), Ok(group)) => Ok(LevelSparsity::NM { zeros, group }),
                _ => Err(format!(
                    "`{t}` is neither a fraction nor N:M with whole numbers (e.g. 0.5 or 2:4)"
                )),
            },
            None => t
                .parse::<f64>()
                .map(LevelSparsity::Fraction)
                .map_err(|_| format!("`{t}` is neither a fraction nor N:M (e.g. 0.5 or 2:4)")),
        }
    }
}

impl Serialize for LevelSparsity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            LevelSparsity::Fraction(f) => s.serialize_f64(f),
            LevelSparsity::NM { .. } => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for LevelSparsity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(f) => Ok(LevelSparsity::Fraction(f)),
            Raw::Text(t) => match t.parse::<LevelSparsity>() {
                Ok(v @ LevelSparsity::NM { .. }) => Ok(v),
                _ => Err(serde::de::Error::custom(format!(
                    "sparsity `{t}` is not N:M (e.g. \"2:4\")"
                ))),
            },
        }
    }
}

impl From<f64> for LevelSparsity {
    fn from(s: f64) -> Self {
        LevelSparsity::Fraction(s)
    }
}

/// A sparsity level: which weights of each row are pruned (a fraction, or
/// N:M), and how the kept weights are stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SparseLevel {
    /// What is pruned.
    pub sparsity: LevelSparsity,
    /// Grid of the kept weights (`None`: f16).
    pub quant: Option<QuantScheme>,
}

impl SparseLevel {
    /// The pruned fraction ([`LevelSparsity::fraction`]: `N/M` for N:M).
    pub fn fraction(&self) -> f64 {
        self.sparsity.fraction()
    }

    /// Exact storage bits of a `rows × cols` layer at this level (what
    /// [`SparseLinear::storage_bits`] gives; `None` if the level does not fit
    /// rows of `cols` weights: `cols` is 0, or not a multiple of an N:M
    /// group).
    pub fn storage_bits(&self, rows: usize, cols: usize) -> Option<u64> {
        let pattern = self.sparsity.pattern(cols).ok()?;
        let kept = rows * (cols - pattern.zeros_per_row(cols));
        let mut bits = pattern.mask_bits(rows, cols);
        match self.quant {
            None => bits += 16 * kept as u64,
            Some(q) => {
                let groups = rows * q.groups_per_row(cols);
                let mut bytes = crate::pack::packed_len(kept, q.bits) + 2 * groups;
                if !q.sym {
                    bytes += crate::pack::packed_len(groups, q.bits);
                }
                bits += 8 * bytes as u64;
            }
        }
        Some(bits)
    }

    /// Bits per weight of one row of `cols` weights at this level
    /// ([`Self::storage_bits`] of a `1 × cols` layer over `cols`; for N:M,
    /// `cols` rounded down to a multiple of the group, at least one group).
    pub fn bits_per_weight(&self, cols: usize) -> f64 {
        let cols = match self.sparsity {
            LevelSparsity::Fraction(_) => cols.max(1),
            LevelSparsity::NM { group, .. } => {
                let m = group.max(1);
                (cols / m * m).max(m)
            }
        };
        self.storage_bits(1, cols).unwrap_or(0) as f64 / cols as f64
    }
}

impl MethodSpec {
    /// Whether levels are ggml types.
    pub fn is_ggml(&self) -> bool {
        self.method.is_ggml()
    }

    /// The levels, lowest bits per weight first.
    pub fn levels(&self) -> Result<Vec<LevelSpec>, MethodError> {
        let mut v = Vec::new();
        if self.method == Method::Sparsegpt {
            return self.sparse_levels();
        }
        if self.is_ggml() {
            for t in &self.types {
                let ty = GgmlType::from_name(t)
                    .filter(|t| t.is_quantized())
                    .ok_or_else(|| MethodError::UnknownGgmlType(t.clone()))?;
                v.push(self.ggml_level(ty, false));
            }
            sort_ggml_levels(&mut v);
        } else {
            let m = if self.method == Method::Gptq {
                "gptq"
            } else {
                "rtn"
            };
            for &b in &self.bits {
                v.push(LevelSpec {
                    name: format!("{m}-b{b}-g{}", self.group_size),
                    bits: b,
                    ggml: None,
                    fallback: false,
                    sparse: None,
                });
            }
            v.sort_by_key(|l| l.bits);
        }
        v.dedup_by(|a, b| a.name == b.name);
        Ok(v)
    }

    /// SparseGPT's levels: every sparsity (fraction or N:M), with f16 values
    /// or at every `sparse_bits` grid, ordered by their bits per weight at
    /// 4096 columns.
    fn sparse_levels(&self) -> Result<Vec<LevelSpec>, MethodError> {
        let bits: Vec<Option<u8>> = if self.sparse_bits.is_empty() {
            vec![None]
        } else {
            self.sparse_bits.iter().copied().map(Some).collect()
        };
        let mut v = Vec::new();
        for &s in &self.sparsities {
            let sparsity = s.checked()?;
            for &b in &bits {
                let quant = b.map(|bits| QuantScheme {
                    bits,
                    group_size: self.group_size,
                    sym: self.sym,
                });
                let level = SparseLevel { sparsity, quant };
                let name = match quant {
                    None => format!("sparsegpt-{}", sparsity.name()),
                    Some(q) => format!(
                        "sparsegpt-{}-b{}-g{}",
                        sparsity.name(),
                        q.bits,
                        q.group_size
                    ),
                };
                v.push(LevelSpec {
                    name,
                    bits: level.bits_per_weight(4096).round().clamp(1.0, 17.0) as u8,
                    ggml: None,
                    fallback: false,
                    sparse: Some(level),
                });
            }
        }
        v.sort_by(|a, b| {
            let key = |l: &LevelSpec| l.sparse.expect("sparse").bits_per_weight(4096);
            key(a).total_cmp(&key(b)).then(a.name.cmp(&b.name))
        });
        v.dedup_by(|a, b| a.name == b.name);
        Ok(v)
    }

    fn ggml_level(&self, ty: GgmlType, fallback: bool) -> LevelSpec {
        // GPTQ works inside every block type: a per-weight grid, or the
        // lattice i-quants' codebooks group by group.
        let prefix = if self.method == Method::GptqKquant && ty.is_quantized() {
            "gptq-"
        } else {
            ""
        };
        LevelSpec {
            name: format!("{prefix}{}", ty.name()),
            bits: ty.bits_per_weight().floor() as u8,
            ggml: Some(ty),
            fallback,
            sparse: None,
        }
    }

    /// The fallback levels of a ggml method ([`FALLBACK_GGML_TYPES`] not
    /// already among its types); empty for grid methods.
    pub fn fallback_levels(&self) -> Result<Vec<LevelSpec>, MethodError> {
        if !self.is_ggml() {
            return Ok(vec![]);
        }
        let main = self.levels()?;
        let mut v: Vec<LevelSpec> = FALLBACK_GGML_TYPES
            .into_iter()
            .filter(|&t| !main.iter().any(|l| l.ggml == Some(t)))
            .map(|t| self.ggml_level(t, true))
            .collect();
        sort_ggml_levels(&mut v);
        Ok(v)
    }

    /// Whether a layer with rows of `cols` weights needs the fallback levels:
    /// one of the chosen ggml types cannot hold its rows.
    pub fn needs_fallback(&self, cols: usize) -> Result<bool, MethodError> {
        Ok(self
            .levels()?
            .iter()
            .any(|l| l.ggml.is_some_and(|t| t.row_bytes(cols).is_none())))
    }

    /// The levels plus, when `with_fallback`, the fallback levels, lowest bits
    /// per weight first.
    pub fn all_levels(&self, with_fallback: bool) -> Result<Vec<LevelSpec>, MethodError> {
        let mut v = self.levels()?;
        if with_fallback && self.is_ggml() {
            v.extend(self.fallback_levels()?);
            sort_ggml_levels(&mut v);
        }
        Ok(v)
    }

    /// The level called `name` (main or fallback).
    pub fn level(&self, name: &str) -> Option<LevelSpec> {
        self.all_levels(true)
            .ok()?
            .into_iter()
            .find(|l| l.name == name)
    }
}

fn sort_ggml_levels(v: &mut [LevelSpec]) {
    v.sort_by(|a, b| {
        let (x, y) = (a.ggml.expect("ggml"), b.ggml.expect("ggml"));
        x.bits_per_weight()
            .total_cmp(&y.bits_per_weight())
            .then(a.name.cmp(&b.name))
    });
}

/// Which compressor built the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// GPTQ (Frantar et al. 2022) with error feedback from the Hessian.
    Gptq,
    /// Round to nearest on the same grid.
    Rtn,
    /// ggml's own encoders (llama-quantize's), optionally imatrix-weighted.
    Kquant,
    /// GPTQ error feedback inside ggml's block grids.
    GptqKquant,
    /// SparseGPT (Frantar & Alistarh 2023): levels of sparsity.
    Sparsegpt,
}

impl Method {
    /// Whether the method's levels are ggml types (kquant, gptq-kquant).
    pub fn is_ggml(self) -> bool {
        matches!(self, Method::Kquant | Method::GptqKquant)
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "gptq" => Ok(Method::Gptq),
            "rtn" => Ok(Method::Rtn),
            "kquant" => Ok(Method::Kquant),
            "gptq-kquant" => Ok(Method::GptqKquant),
            "sparsegpt" => Ok(Method::Sparsegpt),
            other => Err(format!(
                "unknown method `{other}`; choose gptq, rtn, kquant, gptq-kquant or sparsegpt"
            )),
        }
    }
}

/// A stored variant: a grid-quantized layer, ggml blocks, or a sparse layer.
#[derive(Debug, Clone)]
pub enum Variant {
    /// Codes, scales and zeros on a [`QuantScheme`] grid.
    Grid(QuantizedLinear),
    /// ggml blocks of one type.
    Ggml(GgmlBlocks),
    /// A mask and the kept weights (SparseGPT).
    Sparse(SparseLinear),
}

/// A layer encoded as ggml blocks (exactly the bytes a GGUF file stores).
#[derive(Debug, Clone, PartialEq)]
pub struct GgmlBlocks {
    /// The block type.
    pub ty: GgmlType,
    /// Rows (output features).
    pub rows: usize,
    /// Columns (input features).
    pub cols: usize,
    /// The blocks, row after row.
    pub bytes: Vec<u8>,
}

impl Variant {
    /// Rows (output features).
    pub fn rows(&self) -> usize {
        match self {
            Variant::Grid(q) => q.rows(),
            Variant::Ggml(g) => g.rows,
            Variant::Sparse(s) => s.rows(),
        }
    }

    /// Columns (input features).
    pub fn cols(&self) -> usize {
        match self {
            Variant::Grid(q) => q.cols(),
            Variant::Ggml(g) => g.cols,
            Variant::Sparse(s) => s.cols(),
        }
    }

    /// The weights as f32 `[rows, cols]`.
    pub fn dequantize(&self) -> Result<Vec<f32>, MethodError> {
        match self {
            Variant::Grid(q) => Ok(q.dequantize()),
            Variant::Sparse(s) => Ok(s.dequantize()),
            Variant::Ggml(g) => dynapress_ggml::dequantize(g.ty, &g.bytes, g.rows * g.cols)
                .map_err(|e| MethodError::Blocks {
                    ty: g.ty,
                    msg: e.to_string(),
                }),
        }
    }

    /// Exact stored bits.
    pub fn storage_bits(&self) -> u64 {
        match self {
            Variant::Grid(q) => q.storage_bits(),
            Variant::Ggml(g) => 8 * g.bytes.len() as u64,
            Variant::Sparse(s) => s.storage_bits(),
        }
    }

    /// The damping GPTQ finally used, if any.
    pub fn damp(&self) -> Option<f64> {
        match self {
            Variant::Grid(q) => q.damp(),
            Variant::Ggml(_) => None,
            Variant::Sparse(s) => match s.provenance() {
                crate::sparse::SparseProvenance::SparseGpt { damp, .. } => Some(damp),
                crate::sparse::SparseProvenance::Magnitude => None,
            },
        }
    }
}

/// Compresses one layer `w` (`rows × cols`, row-major) at `level`: ggml
/// levels with ggml's encoder (or GPTQ inside the type's grid when the method
/// is gptq-kquant and `factor` is given), grid levels with GPTQ (`factor`) or
/// RTN. `imatrix` weights the ggml encoders; errors are one-line messages.
pub fn compress_layer(
    w: &[f32],
    h: &Hessian,
    factor: Option<&GptqFactor>,
    imatrix: Option<&[f32]>,
    spec: &MethodSpec,
    level: &LevelSpec,
) -> std::result::Result<Variant, String> {
    let cols = h.dim();
    if let Some(sl) = level.sparse {
        let f = factor.ok_or("SparseGPT needs the layer's Hessian factor")?;
        let pattern = sl.sparsity.pattern(cols).map_err(|e| e.to_string())?;
        // Blocks of 128 columns, or the largest multiple of an N:M group
        // below (N:M groups must not straddle a block).
        let block_size = match pattern {
            SparsityPattern::NM { group, .. } => 128 / group * group,
            SparsityPattern::Unstructured { .. } => 128,
        };
        return sparsegpt_with_factor(
            f,
            w,
            &SparseParams {
                pattern,
                quant: sl.quant,
                block_size,
            },
        )
        .map(Variant::Sparse)
        .map_err(|e| e.to_string());
    }
    if let Some(ty) = level.ggml {
        let rows = w.len() / cols;
        let bytes = match (spec.method, factor) {
            (Method::GptqKquant, Some(f)) if ty.is_quantized() => {
                crate::ggml_gptq::gptq_ggml(f, w, ty, imatrix)
                    .map_err(|e| e.to_string())?
                    .into_bytes()
            }
            _ => dynapress_ggml::quantize(ty, w, cols, imatrix).map_err(|e| e.to_string())?,
        };
        return Ok(Variant::Ggml(GgmlBlocks {
            ty,
            rows,
            cols,
            bytes,
        }));
    }
    let scheme = QuantScheme {
        bits: level.bits,
        group_size: spec.group_size,
        sym: spec.sym,
    };
    let clip = spec.clip.then(ClipSearch::default);
    match factor {
        Some(f) => f
            .quantize(
                w,
                &GptqQuantParams {
                    scheme,
                    clip,
                    // With act-order, groups are fitted on the original column
                    // order so no permutation needs storing.
                    static_groups: spec.act_order,
                    ..Default::default()
                },
            )
            .map(Variant::Grid)
            .map_err(|e| e.to_string()),
        None => rtn(w, cols, &RtnParams { scheme, clip })
            .map(Variant::Grid)
            .map_err(|e| e.to_string()),
    }
}
