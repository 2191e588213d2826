//! Rotary position embeddings: inverse frequencies (plain, linear-scaled and
//! Llama 3 scaling, as transformers computes them) and cos/sin tables.

use candle_core::{Device, Tensor};

use super::config::{ModelConfig, RopeScaling};
use crate::error::Result;

/// Inverse frequencies of one head, one per pair of dimensions.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    /// RoPE for a configuration.
    pub fn new(cfg: &ModelConfig) -> Self {
        let d = cfg.head_dim;
        // inv_freq_i = 1 / theta^(2i/d), computed in f64 and rounded once.
        let base: Vec<f64> = (0..d / 2)
            .map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f64 / d as f64))
            .collect();
        let scaled: Vec<f64> = match cfg.rope_scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old_ctx,
            } => {
                // Wavelengths shorter than old_ctx/high_freq_factor keep their
                // frequency, longer than old_ctx/low_freq_factor are divided by
                // `factor`, and the band between is interpolated smoothly.
                let low_wavelen = old_ctx / low_freq_factor;
                let high_wavelen = old_ctx / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old_ctx / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        };
        Rope {
            inv_freq: scaled.into_iter().map(|f| f as f32).collect(),
        }
    }

    /// cos and sin tables `[len, head_dim/2]` for positions `start..start+len`.
    /// Angles are `position × inv_freq` in f32, as transformers computes them.
    pub fn tables(&self, start: usize, len: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let (cos, sin) = self.tables_vec(start, len);
        Ok((
            Tensor::from_vec(cos, (len, half), device)?,
            Tensor::from_vec(sin, (len, half), device)?,
        ))
    }

    /// The same tables as flat vectors.
    pub fn tables_vec(&self, start: usize, len: usize) -> (Vec<f32>, Vec<f32>) {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for p in start..start + len {
            for &f in &self.inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        (cos, sin)
    }

    /// The inverse frequencies.
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }
}
