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
    /// Other layers that always take this layer's level ([`SearchSpace::tied`]:
    /// a runtime's fused q/k/v or gate/up); `params` and each level's storage
    /// and error are then the group's sums. Empty in a database's own space.
    pub members: Vec<LinearId>,
}

impl SpaceLayer {
    /// This layer and its tied members.
    pub fn ids(&self) -> impl Iterator<Item = LinearId> + '_ {
        std::iter::once(self.id).chain(self.members.iter().copied())
    }
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
                members: Vec::new(),
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

    /// This space with each of `groups` (layers of one block that a runtime
    /// fuses) merged into one entry: the group's first layer with the others
    /// as its members, costing the group's summed storage and error at each
    /// level. Groups need identical level lists; layers not in any group and
    /// the head tensors are unchanged. [`Self::untie`] maps a choice back.
    pub fn tied(&self, groups: &[Vec<LinearId>]) -> Result<SearchSpace> {
        if !self.head.is_empty() {
            return Err(Error::Invalid(
                "tying fused layers is not supported together with searched GGUF head types".into(),
            ));
        }
        let index = |id: &LinearId| self.layers.iter().position(|l| l.id == *id);
        let mut merged_into: Vec<Option<usize>> = vec![None; self.layers.len()];
        let mut layers: Vec<SpaceLayer> = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            if merged_into[i].is_some() {
                continue;
            }
            let group: Vec<usize> = groups
                .iter()
                .find(|g| g.first() == Some(&l.id))
                .map(|g| g.iter().filter_map(index).collect())
                .unwrap_or_else(|| vec![i]);
            let globals = |j: usize| -> Vec<usize> {
                self.layers[j].levels.iter().map(|o| o.global).collect()
            };
            if group.iter().any(|&j| globals(j) != globals(i)) {
                return Err(Error::layer(
                    l.id.weight_name(),
                    "the layers to tie with it do not have the same levels",
                ));
            }
            let mut t = l.clone();
            for &j in &group[1..] {
                let m = &self.layers[j];
                t.members.push(m.id);
                t.params += m.params;
                for (o, mo) in t.levels.iter_mut().zip(&m.levels) {
                    o.storage_bits += mo.storage_bits;
                    o.rel_error += mo.rel_error;
                }
            }
            for &j in &group {
                merged_into[j] = Some(layers.len());
            }
            layers.push(t);
        }
        Ok(SearchSpace {
            layers,
            levels: self.levels.clone(),
            total_params: self.total_params,
            head: Vec::new(),
        })
    }

    /// A choice of `tied` (made by [`Self::tied`] from this space) as a
    /// choice of this space: every member at its group's level.
    pub fn untie(&self, tied: &SearchSpace, c: &[usize]) -> Choice {
        let mut global = std::collections::HashMap::new();
        for (l, &k) in tied.layers.iter().zip(c) {
            for id in l.ids() {
                global.insert(id, l.levels[k].global);
            }
        }
        self.layers
            .iter()
            .map(|l| {
                let g = global[&l.id];
                l.levels.iter().position(|o| o.global == g).unwrap_or(0)
            })
            .collect()
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
            Some(l) => l
                .ids()
                .map(|id| id.weight_name())
                .collect::<Vec<_>>()
                .join("+"),
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
            .flat_map(|(l, &k)| l.ids().map(move |id| (id, l.levels[k].level.clone())))
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
                    members: Vec::new(),
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

    #[test]
    fn tying_merges_costs_and_untying_gives_every_member_the_level() {
        let s = toy_space(14);
        let groups = crate::search::fused_groups(&s);
        let t = s.tied(&groups).unwrap();
        // Per block: q+k+v, o, gate+up, down.
        assert_eq!(t.layers.len(), 2 * 4);
        assert_eq!(t.total_params, s.total_params);
        assert_eq!(t.layers[0].members.len(), 2);
        assert_eq!(
            t.name(0),
            "model.layers.0.self_attn.q_proj.weight+model.layers.0.self_attn.k_proj.weight+model.layers.0.self_attn.v_proj.weight"
        );
        for k in 0..4 {
            let c = t.all_at(k);
            let u = s.untie(&t, &c);
            assert_eq!(u, s.all_at(k));
            assert_eq!(t.storage_bits(&c), s.storage_bits(&u));
            assert!((t.error_sum(&c) - s.error_sum(&u)).abs() < 1e-12);
        }
        // A mixed tied choice: members follow their group.
        let mut c = t.all_at(0);
        c[2] = 3; // gate+up of block 0
        let u = s.untie(&t, &c);
        assert_eq!((u[4], u[5]), (3, 3));
        assert_eq!(u.iter().filter(|&&k| k == 3).count(), 2);
        assert_eq!(t.storage_bits(&c), s.storage_bits(&u));
    }
}
