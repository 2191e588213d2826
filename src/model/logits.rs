//! Statistics of rows of logits (log-sum-exp, argmax, KL divergence between
//! two rows): what the search's fitness and the evaluation both compute.

/// Per-row statistics of a logits matrix.
#[derive(Debug, Clone, Copy)]
pub struct RowStats {
    /// log Σ exp(logits)
    pub lse: f64,
    pub argmax: u32,
}

/// log-sum-exp and argmax (first on ties) of one row of logits. Exponentials
/// are computed in f32 (within 2 ulp) and summed in f64.
pub fn row_stats(row: &[f32]) -> RowStats {
    let mut r = super::kernels::RowSum::default();
    super::kernels::row_sum_exp(row, &mut r);
    RowStats {
        lse: r.max as f64 + r.sum_exp.ln(),
        argmax: r.argmax,
    }
}

/// KL(p ‖ q) for two rows of logits with precomputed log-sum-exps.
pub fn row_kl(base: &[f32], base_lse: f64, model: &[f32], model_lse: f64) -> f64 {
    let mut s = 0.0;
    super::kernels::row_kl_sum(base, base_lse, model, model_lse, &mut s);
    s.max(0.0)
}
