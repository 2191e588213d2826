//! Multiple-choice knapsack: one level per layer, minimising the sum of the
//! manifest's per-layer errors subject to the bit budget.
//!
//! Solved exactly by dynamic programming over the budget in units of the
//! greatest common divisor of all level costs (for GPTQ g128 levels that unit
//! is hundreds of bits, so the table stays small). If the budget would still
//! need more than [`MAX_UNITS`] units, costs are rounded *up* to a coarser unit:
//! the result then remains feasible and is optimal for the rounded costs.
//!
//! Head tensors of a space ([`SearchSpace::head`]) stay at their default
//! levels: the manifest's per-layer output errors and an embedding's weight
//! error are not on one scale, so only the KL fitness (EvoPress) moves them.

use crate::database::{Choice, SearchSpace};
use crate::error::Result;

/// Largest DP table width.
pub const MAX_UNITS: u64 = 1 << 20;

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The error-minimising choice within `target` bits per weight.
pub fn knapsack(space: &SearchSpace, target: f64) -> Result<Choice> {
    space.check_target(target)?;
    let budget = space.budget_bits(target);
    solve(space, budget)
}

/// The error-minimising choice within `budget` storage bits (head tensors at
/// their defaults).
pub fn solve(space: &SearchSpace, budget: u64) -> Result<Choice> {
    let head = space.head_defaults();
    let Some(budget) = budget.checked_sub(space.head_storage_bits(&head)) else {
        return Err(crate::error::Error::budget(
            "no configuration fits the budget",
        ));
    };
    let mut choice = solve_linear(space, budget)?;
    choice.extend(head);
    Ok(choice)
}

/// The knapsack over the linear layers alone (no head entries in the result).
pub(crate) fn solve_linear(space: &SearchSpace, budget: u64) -> Result<Choice> {
    let mut unit = space
        .layers
        .iter()
        .flat_map(|l| l.levels.iter().map(|o| o.storage_bits))
        .fold(0, gcd)
        .max(1);
    if budget / unit > MAX_UNITS {
        unit = budget.div_ceil(MAX_UNITS);
    }
    let width = (budget / unit) as usize + 1;
    let n = space.layers.len();
    let cost = |i: usize, k: usize| space.layers[i].levels[k].storage_bits.div_ceil(unit) as usize;

    // best[b] = least error of layers 0..i within b units; pick[i][b] = level of layer i.
    let mut best = vec![0f64; width];
    let mut next = vec![f64::INFINITY; width];
    let mut pick = vec![u8::MAX; n * width];
    for i in 0..n {
        next.fill(f64::INFINITY);
        for k in 0..space.layers[i].levels.len() {
            let c = cost(i, k);
            let e = space.layers[i].levels[k].rel_error;
            for b in c..width {
                let v = best[b - c] + e;
                if v < next[b] {
                    next[b] = v;
                    pick[i * width + b] = k as u8;
                }
            }
        }
        std::mem::swap(&mut best, &mut next);
    }
    // Backtrack from the best reachable budget.
    let mut b = (0..width)
        .min_by(|&x, &y| best[x].total_cmp(&best[y]).then(x.cmp(&y)))
        .expect("non-empty");
    if !best[b].is_finite() {
        return Err(crate::error::Error::budget(
            "no configuration fits the budget",
        ));
    }
    let mut choice = vec![0usize; n];
    for i in (0..n).rev() {
        let k = pick[i * width + b] as usize;
        choice[i] = k;
        b -= cost(i, k);
    }
    Ok(choice)
}

#[cfg(test)]
mod tests {
    use super::super::tests::toy_space;
    use super::*;

    /// Exhaustive search over a small space.
    fn brute(space: &SearchSpace, budget: u64) -> f64 {
        let n = space.layers.len();
        let m = space.levels.len(); // the toy space has every level everywhere
        let mut best = f64::INFINITY;
        let mut c = vec![0usize; n];
        loop {
            if space.storage_bits(&c) <= budget {
                best = best.min(space.error_sum(&c));
            }
            let mut i = 0;
            while i < n {
                c[i] += 1;
                if c[i] < m {
                    break;
                }
                c[i] = 0;
                i += 1;
            }
            if i == n {
                break;
            }
        }
        best
    }

    #[test]
    fn matches_exhaustive_search() {
        let s = toy_space(7);
        for target in [2.2, 2.6, 3.0, 3.3, 4.5, 6.0] {
            let c = knapsack(&s, target).unwrap();
            let budget = s.budget_bits(target);
            assert!(s.storage_bits(&c) <= budget);
            let opt = brute(&s, budget);
            assert!(
                (s.error_sum(&c) - opt).abs() <= 1e-12 * opt,
                "target {target}: {} vs {opt}",
                s.error_sum(&c)
            );
        }
    }

    #[test]
    fn coarse_units_stay_feasible() {
        let s = toy_space(20);
        let budget = s.budget_bits(3.1);
        // Force rounding by pretending the table may only have a few units.
        let c = solve(&s, budget).unwrap();
        assert!(s.storage_bits(&c) <= budget);
        assert!(s.error_sum(&c) <= s.error_sum(&super::super::uniform(&s, 3.1).unwrap()));
    }

    #[test]
    fn head_tensors_keep_their_defaults_and_are_paid_first() {
        let s = super::super::tests::toy_space_with_head(7, 4096);
        let plain = toy_space(7);
        let target = 4.0;
        let c = knapsack(&s, target).unwrap();
        assert_eq!(&c[7..], &[1, 1]);
        assert!(s.storage_bits(&c) <= s.budget_bits(target));
        // The linear part is the knapsack of what the head leaves.
        let left = s.budget_bits(target) - 2 * 5 * 4096;
        assert_eq!(&c[..7], &solve(&plain, left).unwrap()[..]);
    }
}
