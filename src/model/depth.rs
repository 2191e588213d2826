//! Depth pruning: which attention and MLP sublayers of the blocks are dropped.
//!
//! A dropped sublayer adds nothing to the residual stream: the block skips it
//! (its weights, biases and norm are not applied), which is what removing it
//! from the checkpoint would do. [`DepthConfig`] is the file `dynapress prune`
//! writes and `eval --config` / `export --config` read.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A block's two residual branches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sublayer {
    /// RMSNorm → self-attention → o_proj.
    Attn,
    /// RMSNorm → gate/up → SwiGLU → down_proj.
    Mlp,
}

impl Sublayer {
    /// Both, in forward order.
    pub const ALL: [Sublayer; 2] = [Sublayer::Attn, Sublayer::Mlp];

    /// `attn` or `mlp`.
    pub fn name(self) -> &'static str {
        match self {
            Sublayer::Attn => "attn",
            Sublayer::Mlp => "mlp",
        }
    }
}

/// One sublayer of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SublayerId {
    pub block: usize,
    pub sublayer: Sublayer,
}

impl std::fmt::Display for SublayerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.block, self.sublayer.name())
    }
}

/// The `format` value of a depth configuration file.
pub const DEPTH_FORMAT: &str = "dynapress-depth";

/// A depth-pruning configuration: the sublayers to drop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DepthConfig {
    /// Always [`DEPTH_FORMAT`].
    pub format: String,
    /// Blocks of the model the configuration was made for.
    pub num_layers: usize,
    /// How it was chosen: `evopress`, `shortgpt`, `kl-alone`, `last`.
    pub method: String,
    /// Whether only whole blocks were allowed.
    pub whole_blocks: bool,
    /// Dropped sublayers, sorted.
    pub dropped: Vec<SublayerId>,
    /// Mean KL(base ‖ pruned) per token on the calibration windows.
    #[serde(default)]
    pub calib_kl: Option<f64>,
    /// Parameters of the pruned model (embeddings and head included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<u64>,
}

impl DepthConfig {
    /// A configuration dropping `dropped` (sorted and de-duplicated here).
    pub fn new(
        num_layers: usize,
        method: &str,
        whole_blocks: bool,
        mut dropped: Vec<SublayerId>,
        calib_kl: Option<f64>,
    ) -> Self {
        dropped.sort();
        dropped.dedup();
        DepthConfig {
            format: DEPTH_FORMAT.into(),
            num_layers,
            method: method.into(),
            whole_blocks,
            dropped,
            calib_kl,
            params: None,
        }
    }

    /// Whether a JSON text is a depth configuration (has `"format": "dynapress-depth"`).
    pub fn is_depth_config(text: &str) -> bool {
        serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| {
                v.get("format")
                    .and_then(|f| f.as_str())
                    .map(|f| f == DEPTH_FORMAT)
            })
            .unwrap_or(false)
    }

    /// Reads and validates a configuration file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let c: DepthConfig = serde_json::from_str(&text)
            .map_err(|e| Error::config(path, format!("not a depth configuration: {e}")))?;
        if c.format != DEPTH_FORMAT {
            return Err(Error::config(
                path,
                format!("format is `{}`, expected `{DEPTH_FORMAT}`", c.format),
            ));
        }
        if let Some(bad) = c.dropped.iter().find(|s| s.block >= c.num_layers) {
            return Err(Error::config(
                path,
                format!("drops {bad} but the model has {} blocks", c.num_layers),
            ));
        }
        Ok(c)
    }

    /// Writes the configuration as pretty JSON (atomically).
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("serialises") + "\n";
        crate::fsutil::write_atomic(path, text.as_bytes())
    }

    /// Whether both sublayers of `block` are dropped.
    pub fn block_dropped(&self, block: usize) -> bool {
        Sublayer::ALL
            .iter()
            .all(|&s| self.dropped.contains(&SublayerId { block, sublayer: s }))
    }

    /// Blocks with exactly one sublayer dropped (formats without per-block
    /// sublayer counts cannot express them).
    pub fn partial_blocks(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .dropped
            .iter()
            .map(|s| s.block)
            .filter(|&b| !self.block_dropped(b))
            .collect();
        v.dedup();
        v
    }

    /// Makes `model` skip exactly the dropped sublayers (others are restored).
    pub fn apply(&self, model: &mut super::Model) -> Result<()> {
        if self.num_layers != model.blocks().len() {
            return Err(Error::Invalid(format!(
                "the depth configuration is for a model with {} blocks, this one has {}",
                self.num_layers,
                model.blocks().len()
            )));
        }
        for block in 0..self.num_layers {
            for s in Sublayer::ALL {
                let id = SublayerId { block, sublayer: s };
                model.set_dropped(block, s, self.dropped.contains(&id))?;
            }
        }
        Ok(())
    }
}
