//! Choosing a level for every layer under a global budget.
//!
//! The budget is the average storage bits per weight over the searched layers,
//! with each level's exact bits from the database manifest (codes, scales,
//! zeros, permutation): a configuration is feasible when
//! `Σ_i storage_bits_i(level_i) ≤ ⌊B · Σ_i params_i⌋`.
//!
//! Three allocators: [`uniform`] (every layer at the highest level that fits),
//! [`knapsack`] (minimise the sum of the manifest's per-layer errors: the
//! "error monotonicity" assumption), and [`evopress`] (evolutionary search on
//! the whole model's KL divergence to the original).

pub mod evopress;
pub mod fitness;
pub mod knapsack;
mod run;

pub use run::{SearchOptions, SearchOutcome, run_search};

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::database::{Manifest, ModelIdentity};
use crate::error::{Error, Result};
use crate::model::LinearId;

/// One level of one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelOption {
    pub level: String,
    /// Index of the level in [`SearchSpace::levels`].
    pub global: usize,
    pub bits: u8,
    pub storage_bits: u64,
    pub rel_error: f64,
}

/// A searched layer and the levels it can take (smallest first).
#[derive(Debug, Clone)]
pub struct SpaceLayer {
    pub id: LinearId,
    pub params: u64,
    pub levels: Vec<LevelOption>,
}

/// A level per layer: indices into each layer's own [`SpaceLayer::levels`].
pub type Choice = Vec<usize>;

/// The layers, their levels and costs.
#[derive(Debug, Clone)]
pub struct SearchSpace {
    pub layers: Vec<SpaceLayer>,
    /// Every level name of the database, smallest first. A layer may lack
    /// some (a ggml type whose block does not divide its rows).
    pub levels: Vec<String>,
    pub total_params: u64,
}

impl SearchSpace {
    /// Every layer of a complete database with the levels it has.
    pub fn from_manifest(m: &Manifest) -> Result<Self> {
        let mut ids: Vec<LinearId> = m.entries.iter().map(|e| e.id()).collect();
        ids.sort();
        ids.dedup();
        let levels: Vec<String> = m.levels.clone();
        let mut layers = Vec::with_capacity(ids.len());
        for id in ids {
            let mut opts = Vec::with_capacity(levels.len());
            let mut params = 0;
            for (g, name) in levels.iter().enumerate() {
                match m.entry(id, name) {
                    Some(e) => {
                        params = (e.rows * e.cols) as u64;
                        opts.push(LevelOption {
                            level: name.clone(),
                            global: g,
                            bits: e.bits,
                            storage_bits: e.storage_bits,
                            rel_error: e.rel_error,
                        });
                    }
                    None => {
                        let known = m
                            .unavailable
                            .iter()
                            .any(|u| u.layer == id.weight_name() && u.level == *name);
                        if !known {
                            return Err(Error::Invalid(format!(
                                "the database has no {name} entry for {}",
                                id.weight_name()
                            )));
                        }
                    }
                }
            }
            if opts.is_empty() {
                return Err(Error::Invalid(format!(
                    "the database has no level at all for {} (every level is listed as unavailable); rebuild it with levels the layer can take",
                    id.weight_name()
                )));
            }
            opts.sort_by(|a, b| {
                a.storage_bits
                    .cmp(&b.storage_bits)
                    .then(a.global.cmp(&b.global))
            });
            layers.push(SpaceLayer {
                id,
                params,
                levels: opts,
            });
        }
        if layers.is_empty() {
            return Err(Error::Invalid("the database has no entries".into()));
        }
        let total_params = layers.iter().map(|l| l.params).sum();
        Ok(SearchSpace {
            layers,
            levels,
            total_params,
        })
    }

    /// Total storage bits of a choice.
    pub fn storage_bits(&self, c: &[usize]) -> u64 {
        self.layers
            .iter()
            .zip(c)
            .map(|(l, &k)| l.levels[k].storage_bits)
            .sum()
    }

    /// Average bits per weight of a choice.
    pub fn bits_per_weight(&self, c: &[usize]) -> f64 {
        self.storage_bits(c) as f64 / self.total_params as f64
    }

    /// The budget in bits for a target average.
    pub fn budget_bits(&self, target: f64) -> u64 {
        (target * self.total_params as f64).floor() as u64
    }

    /// The highest level index of layer `i`.
    pub fn top(&self, i: usize) -> usize {
        self.layers[i].levels.len() - 1
    }

    /// Every layer at global level `g`, or, for a layer without it, the
    /// largest level it has below (its smallest if none).
    pub fn all_at(&self, g: usize) -> Choice {
        self.layers
            .iter()
            .map(|l| l.levels.iter().rposition(|o| o.global <= g).unwrap_or(0))
            .collect()
    }

    /// Every layer at its smallest level.
    pub fn lowest(&self) -> Choice {
        vec![0; self.layers.len()]
    }

    /// Every layer at its largest level.
    pub fn highest(&self) -> Choice {
        (0..self.layers.len()).map(|i| self.top(i)).collect()
    }

    /// Checks that a target lies between the lowest and highest levels.
    pub fn check_target(&self, target: f64) -> Result<()> {
        let lo = self.bits_per_weight(&self.lowest());
        let hi = self.bits_per_weight(&self.highest());
        if !(target.is_finite() && target > 0.0) {
            return Err(Error::Invalid(format!(
                "target {target} is not a positive number of bits per weight"
            )));
        }
        if target < lo {
            return Err(Error::Invalid(format!(
                "target {target} bits per weight is below the lowest level: every layer at {} takes {lo:.4}",
                self.levels[0]
            )));
        }
        if target > hi {
            return Err(Error::Invalid(format!(
                "target {target} bits per weight is above the highest level: every layer at {} takes {hi:.4}; nothing to search",
                self.levels[self.levels.len() - 1]
            )));
        }
        Ok(())
    }

    /// Sum of the manifest's per-layer relative errors.
    pub fn error_sum(&self, c: &[usize]) -> f64 {
        self.layers
            .iter()
            .zip(c)
            .map(|(l, &k)| l.levels[k].rel_error)
            .sum()
    }

    /// The level name each layer gets under `c`.
    pub fn level_names(&self, c: &[usize]) -> std::collections::HashMap<LinearId, String> {
        self.layers
            .iter()
            .zip(c)
            .map(|(l, &k)| (l.id, l.levels[k].level.clone()))
            .collect()
    }
}

/// The highest level at which every layer fits the budget.
pub fn uniform(space: &SearchSpace, target: f64) -> Result<Choice> {
    space.check_target(target)?;
    let budget = space.budget_bits(target);
    let g = (0..space.levels.len())
        .rev()
        .find(|&g| space.storage_bits(&space.all_at(g)) <= budget)
        .unwrap_or(0);
    Ok(space.all_at(g))
}

/// Which allocator produced a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algo {
    Evopress,
    Knapsack,
    Uniform,
}

impl std::str::FromStr for Algo {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "evopress" => Ok(Algo::Evopress),
            "knapsack" => Ok(Algo::Knapsack),
            "uniform" => Ok(Algo::Uniform),
            o => Err(format!(
                "unknown algorithm `{o}`; choose evopress, knapsack or uniform"
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
    pub target_bits: f64,
    pub seed: Option<u64>,
    /// Achieved average storage bits per weight over the searched layers.
    pub bits_per_weight: f64,
    pub storage_bits: u64,
    pub params: u64,
    /// The fitness (mean KL to the base on calibration tokens) of the result, for EvoPress.
    pub fitness: Option<f64>,
    pub layers: Vec<LayerChoice>,
}

impl ConfigFile {
    /// Describes a choice.
    pub fn new(
        space: &SearchSpace,
        manifest: &Manifest,
        c: &[usize],
        algo: Algo,
        target: f64,
        seed: Option<u64>,
        fitness: Option<f64>,
    ) -> Self {
        ConfigFile {
            format: "dynapress-config".into(),
            version: 1,
            model: manifest.model.clone(),
            levels: space.levels.clone(),
            algo,
            target_bits: target,
            seed,
            bits_per_weight: space.bits_per_weight(c),
            storage_bits: space.storage_bits(c),
            params: space.total_params,
            fitness,
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

    /// The level of each layer, validated against a search space.
    pub fn choice(&self, space: &SearchSpace, path: &Path) -> Result<Choice> {
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small synthetic space: `n` layers of `params` weights, levels with
    /// bits 2,3,4,8 costing `bits·params + 64` and errors `w_i · 4^-bits`.
    pub fn toy_space(n: usize) -> SearchSpace {
        let bits = [2u8, 3, 4, 8];
        let layers = (0..n)
            .map(|i| {
                let params = 1024 * (1 + (i % 3) as u64);
                SpaceLayer {
                    id: LinearId {
                        block: i / 7,
                        kind: crate::model::LinearKind::ALL[i % 7],
                    },
                    params,
                    levels: bits
                        .iter()
                        .enumerate()
                        .map(|(g, &b)| LevelOption {
                            level: format!("b{b}"),
                            global: g,
                            bits: b,
                            storage_bits: b as u64 * params + 64,
                            rel_error: (1.0 + (i * 37 % 11) as f64) * 4f64.powi(-(b as i32)),
                        })
                        .collect(),
                }
            })
            .collect::<Vec<_>>();
        let total_params = layers.iter().map(|l| l.params).sum();
        SearchSpace {
            layers,
            levels: bits.iter().map(|b| format!("b{b}")).collect(),
            total_params,
        }
    }

    #[test]
    fn uniform_takes_the_highest_fitting_level() {
        let s = toy_space(10);
        let c = uniform(&s, 3.5).unwrap();
        assert!(c.iter().all(|&k| k == 1), "{c:?}");
        assert!(s.bits_per_weight(&c) <= 3.5);
        assert!(uniform(&s, 1.0).is_err());
        assert!(uniform(&s, 9.0).is_err());
    }
}
