//! A searched configuration and its one home.
//!
//! [`ConfigFile`] is what a search writes (`config.json`): a level per layer,
//! the budget it was searched under, the seed and the fitness. Read back, it is
//! resolved once against a database — [`Database::resolve`] — into a
//! [`Selection`]: the database's [`SearchSpace`], the validated [`Choice`] and
//! the manifest entry of every layer. Export, evaluation and the report consume
//! the selection; nothing else re-validates a configuration.
//!
//! [`Budget`] is what the user asked for (bits per weight, or the byte size of
//! a GGUF file); [`Target`] is that budget resolved to the bits per weight the
//! searched layers may average, carried by the search and recorded in the
//! configuration.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::database::space::{Choice, LevelOption, SearchSpace, SpaceLayer};
use crate::database::{Database, Entry, Manifest, ModelIdentity};
use crate::error::{Error, Result};
use crate::model::{LinearId, Model};

/// A budget as the user gives it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// Average storage bits per weight over the searched layers.
    Bits(f64),
    /// The byte size of the exported GGUF file (what the searched layers may
    /// use is what is left after metadata, embeddings, output and norms).
    GgufBytes(u64),
    /// The average fraction of pruned weights of the searched layers (a
    /// sparsegpt database with f16 values): the storage of every layer at
    /// that sparsity, so the search trades sparsity between layers.
    Sparsity(f64),
}

/// A budget resolved to bits per weight of the searched layers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    /// What the user asked for.
    pub budget: Budget,
    /// The average storage bits per weight the searched layers may take.
    pub bits: f64,
}

impl Target {
    /// A bits-per-weight budget (nothing to resolve).
    pub fn bits(bits: f64) -> Self {
        Target {
            budget: Budget::Bits(bits),
            bits,
        }
    }

    /// The average sparsity the budget stands for: the one asked for, or,
    /// for a bits budget, the sparsity whose mask and f16 values take that
    /// many bits per weight (`1 + 16·(1 − s)`), clamped to [0, 0.99].
    pub fn sparsity(&self) -> f64 {
        match self.budget {
            Budget::Sparsity(s) => s,
            _ => (1.0 - (self.bits - 1.0) / 16.0).clamp(0.0, 0.99),
        }
    }

    /// The GGUF file size asked for, if the budget was one.
    pub fn file_bytes(&self) -> Option<u64> {
        match self.budget {
            Budget::GgufBytes(n) => Some(n),
            Budget::Bits(_) | Budget::Sparsity(_) => None,
        }
    }
}

/// Which allocator produced a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Algo {
    Evopress,
    Knapsack,
    Uniform,
    /// Outlier-weighted layerwise sparsity (sparsegpt databases).
    Owl,
}

impl std::str::FromStr for Algo {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "evopress" => Ok(Algo::Evopress),
            "knapsack" => Ok(Algo::Knapsack),
            "uniform" => Ok(Algo::Uniform),
            "owl" => Ok(Algo::Owl),
            o => Err(format!(
                "unknown algorithm `{o}`; choose evopress, knapsack, uniform or owl"
            )),
        }
    }
}

impl std::fmt::Display for Algo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Algo::Evopress => "evopress",
            Algo::Knapsack => "knapsack",
            Algo::Uniform => "uniform",
            Algo::Owl => "owl",
        })
    }
}

/// One layer's chosen level in a configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerChoice {
    pub layer: String,
    pub level: String,
    pub bits: u8,
    pub bits_per_weight: f64,
}

/// A search result: `CONFIG.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigFile {
    pub format: String,
    pub version: u32,
    pub model: ModelIdentity,
    /// The database's level names (lowest bits first).
    pub levels: Vec<String>,
    pub algo: Algo,
    /// The bits-per-weight budget of the searched layers.
    pub target_bits: f64,
    /// The GGUF file size in bytes the bits budget was derived from, if the
    /// budget was a file size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_size: Option<u64>,
    pub seed: Option<u64>,
    /// Achieved average storage bits per weight over the searched layers.
    pub bits_per_weight: f64,
    pub storage_bits: u64,
    pub params: u64,
    /// The fitness (mean KL to the base on calibration tokens) of the result, for EvoPress.
    pub fitness: Option<f64>,
    /// The ggml type of the GGUF's `token_embd` when the search chose it
    /// (a file-size budget with `--embed-type auto`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embed_type: Option<String>,
    /// The ggml type of the GGUF's `output` when the search chose it
    /// (untied checkpoints, `--output-type auto`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_type: Option<String>,
    pub layers: Vec<LayerChoice>,
}

impl ConfigFile {
    /// Describes a choice.
    pub fn new(
        space: &SearchSpace,
        manifest: &Manifest,
        c: &[usize],
        algo: Algo,
        target: Target,
        seed: Option<u64>,
        fitness: Option<f64>,
    ) -> Self {
        ConfigFile {
            format: "dynapress-config".into(),
            version: 1,
            model: manifest.model.clone(),
            levels: space.levels.clone(),
            algo,
            target_bits: target.bits,
            target_size: target.file_bytes(),
            seed,
            bits_per_weight: space.bits_per_weight(c),
            storage_bits: space.storage_bits(c),
            params: space.total_params,
            fitness,
            embed_type: None,
            output_type: None,
            layers: space
                .layers
                .iter()
                .zip(c)
                .map(|(l, &k)| LayerChoice {
                    layer: l.id.weight_name(),
                    level: l.levels[k].level.clone(),
                    bits: l.levels[k].bits,
                    bits_per_weight: l.levels[k].storage_bits as f64 / l.params as f64,
                })
                .collect(),
        }
    }

    /// Reads and checks a configuration file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = crate::fsutil::read_text_limited(path, 256 << 20)?;
        let c: ConfigFile = serde_json::from_str(&text)
            .map_err(|e| Error::data(path, format!("not a dynapress configuration: {e}")))?;
        if c.format != "dynapress-config" {
            return Err(Error::data(path, "not a dynapress configuration file"));
        }
        if c.version != 1 {
            return Err(Error::data(
                path,
                format!(
                    "configuration version {} is not the version this dynapress reads (1){}",
                    c.version,
                    if c.version > 1 {
                        "; upgrade dynapress"
                    } else {
                        ""
                    }
                ),
            ));
        }
        Ok(c)
    }

    /// Writes atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("serialises");
        crate::fsutil::write_atomic(path, text.as_bytes())
    }

    /// The budget the configuration was searched under.
    pub fn target(&self) -> Target {
        Target {
            budget: match self.target_size {
                Some(n) => Budget::GgufBytes(n),
                None => Budget::Bits(self.target_bits),
            },
            bits: self.target_bits,
        }
    }

    /// The level of each layer, validated against a search space.
    fn choice(&self, space: &SearchSpace, path: &Path) -> Result<Choice> {
        let mut c = vec![usize::MAX; space.layers.len()];
        for lc in &self.layers {
            let id = LinearId::parse(&lc.layer)
                .ok_or_else(|| Error::data(path, format!("unknown layer `{}`", lc.layer)))?;
            let i = space
                .layers
                .iter()
                .position(|l| l.id == id)
                .ok_or_else(|| {
                    Error::data(
                        path,
                        format!("unknown layer `{}`: not in the database", lc.layer),
                    )
                })?;
            let k = space.layers[i]
                .levels
                .iter()
                .position(|o| o.level == lc.level)
                .ok_or_else(|| {
                    Error::data(
                        path,
                        format!(
                            "layer `{}`: level `{}` is not in the database for this layer (it has {:?})",
                            lc.layer,
                            lc.level,
                            space.layers[i].levels.iter().map(|o| &o.level).collect::<Vec<_>>()
                        ),
                    )
                })?;
            if c[i] != usize::MAX {
                return Err(Error::data(
                    path,
                    format!(
                        "layer `{}` is listed twice; give every layer exactly one level",
                        lc.layer
                    ),
                ));
            }
            c[i] = k;
        }
        if let Some(i) = c.iter().position(|&k| k == usize::MAX) {
            return Err(Error::data(
                path,
                format!(
                    "no level given for layer `{}`",
                    space.layers[i].id.weight_name()
                ),
            ));
        }
        Ok(c)
    }
}

/// A configuration resolved against its database: built once, consumed by
/// export, evaluation and the report.
#[derive(Clone)]
pub struct Selection<'a> {
    /// The database the levels come from.
    pub db: &'a Database,
    /// The configuration as written (or as the search produced it).
    pub config: ConfigFile,
    /// The level index of every layer of `db.space`.
    pub choice: Choice,
    /// The configuration file it was read from (`None` when made in memory).
    pub source: Option<std::path::PathBuf>,
}

impl Database {
    /// Validates `config` against this database (every layer exactly once, at
    /// a level the database has for it). `path` names the configuration in
    /// errors.
    pub fn resolve(&self, config: &ConfigFile, path: &Path) -> Result<Selection<'_>> {
        if !config.model.same_model(&self.manifest.model) {
            return Err(Error::data(
                path,
                format!(
                    "this configuration was searched for another model ({}) than the database's ({})",
                    config.model.dir, self.manifest.model.dir
                ),
            ));
        }
        let choice = config.choice(&self.space, path)?;
        Ok(Selection {
            db: self,
            config: config.clone(),
            choice,
            source: Some(path.to_path_buf()),
        })
    }

    /// A selection of a choice made here (a search result, a comparison
    /// row): no file to validate against.
    pub fn select(&self, choice: Choice, algo: Algo, target: Target) -> Selection<'_> {
        let config = ConfigFile::new(
            &self.space,
            &self.manifest,
            &choice,
            algo,
            target,
            None,
            None,
        );
        Selection {
            db: self,
            config,
            choice,
            source: None,
        }
    }
}

impl Selection<'_> {
    /// The database's search space.
    pub fn space(&self) -> &SearchSpace {
        &self.db.space
    }

    /// Every searched layer with its chosen level and manifest entry.
    pub fn layers(&self) -> impl Iterator<Item = (&SpaceLayer, &LevelOption, &Entry)> + '_ {
        self.db
            .space
            .layers
            .iter()
            .zip(&self.choice)
            .map(|(l, &k)| {
                let o = &l.levels[k];
                let e = self
                    .db
                    .manifest
                    .entry(l.id, &o.level)
                    .expect("the space is built from the manifest's entries");
                (l, o, e)
            })
    }

    /// The chosen level name of every layer.
    pub fn level_names(&self) -> HashMap<LinearId, String> {
        self.db.space.level_names(&self.choice)
    }

    /// Gives every searched layer of `model` its chosen level (dequantized).
    pub fn apply(&self, model: &mut Model) -> Result<()> {
        let levels = self.level_names();
        self.db.apply(model, |id| levels.get(&id).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(target_size: Option<u64>) -> ConfigFile {
        ConfigFile {
            format: "dynapress-config".into(),
            version: 1,
            model: ModelIdentity {
                dir: "m".into(),
                architecture: "llama".into(),
                num_layers: 1,
                config_sha256: "c".into(),
                weights_sha256: "w".into(),
            },
            levels: vec!["a".into()],
            algo: Algo::Evopress,
            target_bits: 4.25,
            target_size,
            seed: Some(0),
            bits_per_weight: 4.2,
            storage_bits: 42,
            params: 10,
            fitness: None,
            embed_type: None,
            output_type: None,
            layers: vec![],
        }
    }

    #[test]
    fn the_config_records_the_budget_it_was_searched_under() {
        // A bits budget writes no `target_size` (configs stay as before) …
        let bits = serde_json::to_value(config(None)).unwrap();
        assert!(bits.get("target_size").is_none());
        let back: ConfigFile = serde_json::from_value(bits).unwrap();
        assert_eq!(back.target(), Target::bits(4.25));
        // … a file-size budget records the size next to the bits it left.
        let size = serde_json::to_value(config(Some(6_500_000))).unwrap();
        assert_eq!(size["target_size"], 6_500_000);
        let back: ConfigFile = serde_json::from_value(size).unwrap();
        assert_eq!(
            back.target(),
            Target {
                budget: Budget::GgufBytes(6_500_000),
                bits: 4.25
            }
        );
        assert_eq!(back.target().file_bytes(), Some(6_500_000));
    }
}
