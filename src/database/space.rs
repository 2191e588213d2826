//! The search space of a database: every searched layer, the levels it can
//! take (smallest first) and what each costs, read once from the manifest.
//!
//! A level is whatever the database stored for a layer (a bit width, a ggml
//! type, …); the space knows only its name, its exact storage bits and its
//! per-layer error. [`Choice`] picks one level per layer by index.
//!
//! A search may add the GGUF file's embedding and output tensors as
//! [`HeadLayer`]s ([`SearchSpace::with_head`]): a choice then holds one entry
//! per linear layer followed by one per head tensor, and the budget covers
//! them too. The database's own space has none.

use crate::database::Manifest;
use crate::error::{Error, Result};
use crate::model::LinearId;

/// One level of one layer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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

/// A level per layer: indices into each layer's own [`SpaceLayer::levels`]
/// (then, in a space with head tensors, into each [`HeadLayer::levels`]).
pub type Choice = Vec<usize>;

/// A GGUF tensor outside the transformer blocks whose type a search chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeadTensor {
    /// `token_embd.weight` (for tied checkpoints also the output).
    Embed,
    /// `output.weight` (untied checkpoints only).
    Output,
}

impl HeadTensor {
    /// The GGUF tensor name.
    pub fn gguf_name(self) -> &'static str {
        match self {
            HeadTensor::Embed => "token_embd.weight",
            HeadTensor::Output => "output.weight",
        }
    }
}

/// The embedding or output tensor as a searched layer: its levels are ggml
/// types (smallest first), each costing the tensor's bytes in the file.
#[derive(Debug, Clone)]
pub struct HeadLayer {
    pub tensor: HeadTensor,
    pub params: u64,
    pub levels: Vec<LevelOption>,
    /// The level a search starts from, and the one every allocator that
    /// cannot weigh it against the linear layers (uniform, knapsack) keeps.
    pub default: usize,
}

/// Storage bits of head tensors `head` at `levels` (one per tensor).
pub fn head_storage_bits(head: &[HeadLayer], levels: &[usize]) -> u64 {
    head.iter()
        .zip(levels)
        .map(|(h, &k)| h.levels[k].storage_bits)
        .sum()
}

/// The layers, their levels and costs.
#[derive(Debug, Clone)]
pub struct SearchSpace {
    pub layers: Vec<SpaceLayer>,
    /// Every level name of the database, smallest first. A layer may lack
    /// some (a ggml type whose block does not divide its rows).
    pub levels: Vec<String>,
    /// Parameters of every searched layer (head tensors included).
    pub total_params: u64,
    /// Head tensors searched with the linear layers (empty: only the linear
    /// layers are searched). Choice entry `layers.len() + j` is `head[j]`'s.
    pub head: Vec<HeadLayer>,
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
                            return Err(Error::layer(
                                id.weight_name(),
                                format!("the database has no {name} entry for this layer"),
                            ));
                        }
                    }
                }
            }
            if opts.is_empty() {
                return Err(Error::layer(
                    id.weight_name(),
                    "the database has no level at all for this layer (every level is listed as unavailable); rebuild it with levels the layer can take",
                ));
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
            head: Vec::new(),
        })
    }

    /// This space with `head` tensors searched after the linear layers.
    pub fn with_head(mut self, head: Vec<HeadLayer>) -> Self {
        self.total_params = self.layers.iter().map(|l| l.params).sum::<u64>()
            + head.iter().map(|h| h.params).sum::<u64>();
        self.head = head;
        self
    }

    /// Number of entries of a choice: linear layers, then head tensors.
    pub fn len(&self) -> usize {
        self.layers.len() + self.head.len()
    }

    /// Whether the space has no layer at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The levels entry `i` of a choice can take (smallest first).
    pub fn options(&self, i: usize) -> &[LevelOption] {
        match self.layers.get(i) {
            Some(l) => &l.levels,
            None => &self.head[i - self.layers.len()].levels,
        }
    }

    /// The name of entry `i`: the Hugging Face weight name of a linear
    /// layer, the GGUF name of a head tensor.
    pub fn name(&self, i: usize) -> String {
        match self.layers.get(i) {
            Some(l) => l.id.weight_name(),
            None => self.head[i - self.layers.len()]
                .tensor
                .gguf_name()
                .to_string(),
        }
    }

    /// The head tensor of entry `i`, if it is one.
    pub fn head_of(&self, i: usize) -> Option<&HeadLayer> {
        i.checked_sub(self.layers.len())
            .and_then(|j| self.head.get(j))
    }

    /// Total storage bits of a choice.
    pub fn storage_bits(&self, c: &[usize]) -> u64 {
        c.iter()
            .enumerate()
            .map(|(i, &k)| self.options(i)[k].storage_bits)
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

    /// The highest level index of entry `i`.
    pub fn top(&self, i: usize) -> usize {
        self.options(i).len() - 1
    }

    /// Every linear layer at global level `g`, or, for a layer without it,
    /// the largest level it has below (its smallest if none); head tensors at
    /// their default level.
    pub fn all_at(&self, g: usize) -> Choice {
        self.layers
            .iter()
            .map(|l| l.levels.iter().rposition(|o| o.global <= g).unwrap_or(0))
            .chain(self.head.iter().map(|h| h.default))
            .collect()
    }

    /// Every entry at its smallest level.
    pub fn lowest(&self) -> Choice {
        vec![0; self.len()]
    }

    /// Every entry at its largest level.
    pub fn highest(&self) -> Choice {
        (0..self.len()).map(|i| self.top(i)).collect()
    }

    /// The head tensors' default levels (the tail of a choice).
    pub fn head_defaults(&self) -> Vec<usize> {
        self.head.iter().map(|h| h.default).collect()
    }

    /// Storage bits of the head tensors at `levels` (the tail of a choice).
    pub fn head_storage_bits(&self, levels: &[usize]) -> u64 {
        head_storage_bits(&self.head, levels)
    }

    /// Checks that a target lies between the lowest and highest levels.
    pub fn check_target(&self, target: f64) -> Result<()> {
        let lo = self.bits_per_weight(&self.lowest());
        let hi = self.bits_per_weight(&self.highest());
        if !(target.is_finite() && target > 0.0) {
            return Err(Error::budget(format!(
                "target {target} is not a positive number of bits per weight"
            )));
        }
        if target < lo {
            return Err(Error::budget(format!(
                "target {target} bits per weight is below the lowest level: every layer at {} takes {lo:.4}",
                self.levels[0]
            )));
        }
        if target > hi {
            return Err(Error::budget(format!(
                "target {target} bits per weight is above the highest level: every layer at {} takes {hi:.4}; nothing to search",
                self.levels[self.levels.len() - 1]
            )));
        }
        Ok(())
    }

    /// Sum of the per-layer relative errors (the manifest's for linear layers).
    pub fn error_sum(&self, c: &[usize]) -> f64 {
        c.iter()
            .enumerate()
            .map(|(i, &k)| self.options(i)[k].rel_error)
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
            head: Vec::new(),
        }
    }

    /// [`toy_space`] with two head tensors of `params` weights at levels
    /// costing 3, 5 and 8 bits per weight, starting at 5.
    pub fn toy_space_with_head(n: usize, params: u64) -> SearchSpace {
        let head = [HeadTensor::Embed, HeadTensor::Output]
            .into_iter()
            .map(|tensor| HeadLayer {
                tensor,
                params,
                levels: [3u8, 5, 8]
                    .iter()
                    .enumerate()
                    .map(|(g, &b)| LevelOption {
                        level: format!("h{b}"),
                        global: g,
                        bits: b,
                        storage_bits: b as u64 * params,
                        rel_error: 0.0,
                    })
                    .collect(),
                default: 1,
            })
            .collect();
        toy_space(n).with_head(head)
    }

    #[test]
    fn head_tensors_count_in_the_budget_and_start_at_their_default() {
        let s = toy_space_with_head(7, 4096);
        assert_eq!(s.len(), 9);
        let plain = toy_space(7);
        assert_eq!(s.total_params, plain.total_params + 2 * 4096);
        let c = s.all_at(1);
        assert_eq!(&c[7..], &[1, 1]);
        assert_eq!(
            s.storage_bits(&c),
            plain.storage_bits(&plain.all_at(1)) + 2 * 5 * 4096
        );
        assert_eq!(s.name(8), "output.weight");
        assert_eq!(s.top(8), 2);
        assert!(s.head_of(3).is_none());
    }
}
