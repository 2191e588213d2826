//! Choosing a level for every layer under a global budget.
//!
//! The budget is the average storage bits per weight over the searched layers,
//! with each level's exact bits from the database manifest (codes, scales,
//! zeros, permutation): a configuration is feasible when
//! `Σ_i storage_bits_i(level_i) ≤ ⌊B · Σ_i params_i⌋`.
//!
//! Four allocators: [`uniform`] (every layer at the highest level that fits),
//! [`knapsack`] (minimise the sum of the manifest's per-layer errors: the
//! "error monotonicity" assumption), [`evopress`] (evolutionary search on
//! the whole model's KL divergence to the original), and, for sparsity
//! levels, [`owl`] (sparsity by each layer's share of outlier weights).

pub mod depth;
pub mod evopress;
pub mod fitness;
pub mod knapsack;
pub mod owl;
mod run;

pub use depth::{DepthBudget, DepthOptions, DepthOutcome, run_depth};
pub use run::{HeadSearch, SearchOptions, SearchOutcome, fused_groups, run_search};

use crate::database::{Choice, SearchSpace};
use crate::error::Result;

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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    pub use crate::database::space::tests::{toy_space, toy_space_with_head};

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
