//! The ggml type table: ids as they appear in GGUF tensor infos, block sizes and
//! bytes per block (see ggml's `ggml.h` `enum ggml_type` and the `block_*` structs
//! in `ggml-common.h`).

/// A ggml tensor type that dynapress reads or writes.
#[allow(missing_docs)] // the variants are ggml's type names
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    IQ4NL,
    IQ2XXS,
    IQ2XS,
    IQ3XXS,
    IQ3S,
    IQ2S,
    IQ4XS,
    BF16,
}

impl GgmlType {
    /// Every type this crate knows, in id order.
    pub const ALL: [GgmlType; 20] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::IQ2XXS,
        GgmlType::IQ2XS,
        GgmlType::IQ3XXS,
        GgmlType::IQ4NL,
        GgmlType::IQ3S,
        GgmlType::IQ2S,
        GgmlType::IQ4XS,
        GgmlType::BF16,
    ];

    /// The numeric id stored in GGUF tensor infos.
    pub const fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::IQ2XXS => 16,
            GgmlType::IQ2XS => 17,
            GgmlType::IQ3XXS => 18,
            GgmlType::IQ4NL => 20,
            GgmlType::IQ3S => 21,
            GgmlType::IQ2S => 22,
            GgmlType::IQ4XS => 23,
            GgmlType::BF16 => 30,
        }
    }

    /// The type with GGUF id `id`, if dynapress supports it.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GgmlType::ALL.into_iter().find(|t| t.id() == id)
    }

    /// ggml's name for the type (`Q4_K`, `F16`, ...), as llama-quantize spells it.
    pub const fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q2K => "Q2_K",
            GgmlType::Q3K => "Q3_K",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
            GgmlType::IQ4NL => "IQ4_NL",
            GgmlType::IQ2XXS => "IQ2_XXS",
            GgmlType::IQ2XS => "IQ2_XS",
            GgmlType::IQ3XXS => "IQ3_XXS",
            GgmlType::IQ3S => "IQ3_S",
            GgmlType::IQ2S => "IQ2_S",
            GgmlType::IQ4XS => "IQ4_XS",
            GgmlType::BF16 => "BF16",
        }
    }

    /// Parses a type name, case-insensitively (`q4_k`, `Q4_K`).
    pub fn from_name(name: &str) -> Option<GgmlType> {
        GgmlType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// Number of weights in one block.
    pub const fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::IQ4NL => 32,
            GgmlType::Q2K
            | GgmlType::Q3K
            | GgmlType::Q4K
            | GgmlType::Q5K
            | GgmlType::Q6K
            | GgmlType::IQ2XXS
            | GgmlType::IQ2XS
            | GgmlType::IQ2S
            | GgmlType::IQ3XXS
            | GgmlType::IQ3S
            | GgmlType::IQ4XS => 256,
        }
    }

    /// Bytes of one block.
    pub const fn type_size(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 | GgmlType::IQ4NL => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q2K => 84,
            GgmlType::Q3K => 110,
            GgmlType::Q4K => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
            // d | qs: 8 × (4 grid bytes, 4 × 7 sign bits + 4-bit scale)
            GgmlType::IQ2XXS => 66,
            // d | qs: 32 × (9-bit grid index + 7 sign bits) | scales[8]
            GgmlType::IQ2XS => 74,
            // d | qs[32] | signs[32] | qh[8] | scales[8]
            GgmlType::IQ2S => 82,
            // d | qs[64] | 8 × (4 × 7 sign bits + 4-bit scale)
            GgmlType::IQ3XXS => 98,
            // d | qs[64] | qh[8] | signs[32] | scales[4]
            GgmlType::IQ3S => 110,
            // d | scales_h | scales_l[4] | qs[128]
            GgmlType::IQ4XS => 136,
        }
    }

    /// Storage bits per weight (exact: block bytes × 8 / block size).
    pub fn bits_per_weight(self) -> f64 {
        (self.type_size() * 8) as f64 / self.block_size() as f64
    }

    /// Bytes needed for `n` weights, or `None` if `n` is not a multiple of the block size.
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_size()) {
            return None;
        }
        (n / self.block_size()).checked_mul(self.type_size())
    }

    /// True for the block-quantized types (everything but F32, F16, BF16).
    pub const fn is_quantized(self) -> bool {
        !matches!(self, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
    }

    /// True for the types with a per-weight [`crate::BlockGrid`]: the
    /// block-quantized types except the lattice i-quants
    /// ([`GgmlType::is_lattice`]).
    pub const fn has_block_grid(self) -> bool {
        self.is_quantized() && !self.is_lattice()
    }

    /// True for the i-quants that round groups of 8 (IQ2_*) or 4 (IQ3_*)
    /// weights jointly to a point of a lattice codebook (ggml's `iq*_grid`
    /// tables) with packed sign bits. Their weights have no individual level,
    /// so they have no [`crate::BlockGrid`]; IQ4_NL and IQ4_XS (a 16-entry
    /// table per weight) do.
    pub const fn is_lattice(self) -> bool {
        matches!(
            self,
            GgmlType::IQ2XXS | GgmlType::IQ2XS | GgmlType::IQ2S | GgmlType::IQ3XXS | GgmlType::IQ3S
        )
    }

    /// True when ggml refuses to encode the type without an importance vector
    /// (`ggml_quantize_requires_imatrix`: IQ2_XXS, IQ2_XS; IQ1_S too, which
    /// this crate does not implement). [`crate::quantize`] then fails with
    /// [`crate::Error::ImatrixRequired`].
    pub const fn requires_imatrix(self) -> bool {
        matches!(self, GgmlType::IQ2XXS | GgmlType::IQ2XS)
    }

    /// True when llama-quantize refuses to write the type without an imatrix
    /// (llama.cpp `tensor_requires_imatrix` in `src/llama-quant.cpp`): IQ3_XXS,
    /// IQ2_XXS, IQ2_XS, IQ2_S (and IQ1_S/IQ1_M), except for `token_embd` and
    /// `output` tensors. A wider rule than ggml's
    /// ([`GgmlType::requires_imatrix`]): [`crate::quantize`] encodes IQ3_XXS
    /// and IQ2_S without an importance vector as ggml does, but a
    /// llama-quantize recipe can only reproduce that for those two tensors.
    pub const fn llama_quantize_requires_imatrix(self) -> bool {
        matches!(
            self,
            GgmlType::IQ3XXS | GgmlType::IQ2XXS | GgmlType::IQ2XS | GgmlType::IQ2S
        )
    }

    /// True for the 32-value types whose importance-weighted encoders also read
    /// the mean square of the whole row (ggml's `quantize_row_q{4,5}_{0,1}_impl`),
    /// so a block's parameters depend on the rest of the row when an imatrix
    /// is given. IQ4_NL's encoder uses the block's own mean square.
    pub const fn uses_row_stat(self) -> bool {
        matches!(
            self,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1
        )
    }

    /// The type llama-quantize actually writes when asked for `self` on a tensor
    /// whose rows hold `n_per_row` values (llama.cpp `tensor_type_fallback` in
    /// `src/llama-quant.cpp`, llama-cpp-python 0.3.36's tree).
    ///
    /// When `n_per_row` is a multiple of the block size this is `self`. Otherwise
    /// the 256-value k-quants fall back to a 32-value type — Q2_K and Q3_K → Q4_0,
    /// Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0 — and if the row is not a multiple
    /// of 32 either (or `self` already had 32-value blocks), to F16. The
    /// 256-value i-quants (IQ2_XXS … IQ4_XS) fall back to IQ4_NL.
    pub const fn fallback_for_row(self, n_per_row: usize) -> GgmlType {
        if n_per_row.is_multiple_of(self.block_size()) {
            return self;
        }
        let fallback = match self {
            GgmlType::IQ2XXS
            | GgmlType::IQ2XS
            | GgmlType::IQ2S
            | GgmlType::IQ3XXS
            | GgmlType::IQ3S
            | GgmlType::IQ4XS => GgmlType::IQ4NL,
            GgmlType::Q2K | GgmlType::Q3K => GgmlType::Q4_0,
            GgmlType::Q4K => GgmlType::Q5_0,
            GgmlType::Q5K => GgmlType::Q5_1,
            GgmlType::Q6K => GgmlType::Q8_0,
            other => other,
        };
        if n_per_row.is_multiple_of(fallback.block_size()) {
            fallback
        } else {
            GgmlType::F16
        }
    }
}

impl std::fmt::Display for GgmlType {
    /// ggml's name (`Q4_K`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names_round_trip() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
            assert_eq!(GgmlType::from_name(t.name()), Some(t));
        }
        assert_eq!(GgmlType::from_id(4), None);
    }

    #[test]
    fn fallback_follows_llama_quantize() {
        assert_eq!(GgmlType::Q4K.fallback_for_row(512), GgmlType::Q4K);
        assert_eq!(GgmlType::Q2K.fallback_for_row(96), GgmlType::Q4_0);
        assert_eq!(GgmlType::Q3K.fallback_for_row(96), GgmlType::Q4_0);
        assert_eq!(GgmlType::Q4K.fallback_for_row(96), GgmlType::Q5_0);
        assert_eq!(GgmlType::Q5K.fallback_for_row(96), GgmlType::Q5_1);
        assert_eq!(GgmlType::Q6K.fallback_for_row(96), GgmlType::Q8_0);
        assert_eq!(GgmlType::Q6K.fallback_for_row(100), GgmlType::F16);
        assert_eq!(GgmlType::Q8_0.fallback_for_row(100), GgmlType::F16);
        assert_eq!(GgmlType::BF16.fallback_for_row(7), GgmlType::BF16);
        assert_eq!(GgmlType::IQ2XXS.fallback_for_row(96), GgmlType::IQ4NL);
        assert_eq!(GgmlType::IQ4XS.fallback_for_row(96), GgmlType::IQ4NL);
        assert_eq!(GgmlType::IQ3S.fallback_for_row(100), GgmlType::F16);
    }

    #[test]
    fn i_quant_bits_match_ggml() {
        // ggml's own figures (comments in ggml-common.h / llama.cpp's ftype names).
        assert_eq!(GgmlType::IQ2XXS.bits_per_weight(), 2.0625);
        assert_eq!(GgmlType::IQ2XS.bits_per_weight(), 2.3125);
        assert_eq!(GgmlType::IQ2S.bits_per_weight(), 2.5625);
        assert_eq!(GgmlType::IQ3XXS.bits_per_weight(), 3.0625);
        assert_eq!(GgmlType::IQ3S.bits_per_weight(), 3.4375);
        assert_eq!(GgmlType::IQ4XS.bits_per_weight(), 4.25);
        assert_eq!(GgmlType::IQ4NL.bits_per_weight(), 4.5);
        for t in GgmlType::ALL {
            assert_eq!(
                t.is_lattice(),
                t.is_quantized() && !t.has_block_grid(),
                "{t}"
            );
        }
    }

    #[test]
    fn k_quant_bits_match_ggml() {
        assert_eq!(GgmlType::Q4K.bits_per_weight(), 4.5);
        assert_eq!(GgmlType::Q6K.bits_per_weight(), 6.5625);
        assert_eq!(GgmlType::Q2K.bits_per_weight(), 2.625);
        assert_eq!(GgmlType::Q3K.bits_per_weight(), 3.4375);
        assert_eq!(GgmlType::Q5K.bits_per_weight(), 5.5);
        assert_eq!(GgmlType::Q8_0.bits_per_weight(), 8.5);
    }
}
