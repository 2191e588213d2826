//! OWL (outlier-weighted layerwise sparsity, Yin et al. 2023) as an
//! allocator over a sparsegpt database: the baseline EvoPress's sparsity
//! results are compared with.
//!
//! Each layer's outlier ratio (the fraction of its Wanda scores
//! `|W_ij|·‖x_j‖` above `M = 5` times the layer's mean, from the database's
//! calibration statistics) sets its sparsity within `target ± λ` (λ = 0.08,
//! narrowed near 0 and 1), lower for layers with more outliers
//! ([`dynapress_compress::owl_sparsities`]). Each layer then takes the
//! database level nearest its OWL sparsity, and while the configuration
//! stores more than the budget, the layer furthest below its OWL sparsity
//! moves one level sparser.
//!
//! An N:M level (2:4) counts as its fraction N/M. At an equal fraction OWL
//! takes the unstructured level (OWL allocates unstructured sparsity; a
//! database of 2:4 alone gives every layer 2:4, i.e. uniform).

use dynapress_compress::{outlier_ratio, owl_sparsities};

use crate::database::{Choice, Database, SearchSpace};
use crate::error::{Error, Result};
use crate::model::ModelFiles;

/// OWL's outlier threshold (the paper's M).
pub const OWL_M: f64 = 5.0;
/// OWL's largest deviation from the target sparsity (the paper's λ).
pub const OWL_LAMBDA: f64 = 0.08;

/// The OWL configuration at average sparsity `target` whose storage fits
/// `target_bits` per weight. Needs a database whose levels are all sparse
/// with f16 values.
pub fn owl(
    files: &ModelFiles,
    db: &Database,
    space: &SearchSpace,
    target: f64,
    target_bits: f64,
) -> Result<Choice> {
    let err = |msg: String| Error::option("--algo", msg);
    if !space.head.is_empty() {
        return Err(err(
            "OWL allocates sparsity levels; it has no GGUF head types".into(),
        ));
    }
    // Each layer's levels as sparsity fractions (f16 sparse levels only; an
    // N:M level counts as N/M) and whether each is N:M.
    let by_name: std::collections::HashMap<String, (f64, bool)> = db
        .manifest
        .method
        .levels()?
        .into_iter()
        .filter_map(|l| {
            l.sparse
                .filter(|s| s.quant.is_none())
                .map(|s| (l.name, (s.fraction(), s.sparsity.is_nm())))
        })
        .collect();
    let fraction = |name: &str| by_name.get(name).map(|&(f, _)| f);
    let nm = |name: &str| by_name.get(name).is_some_and(|&(_, nm)| nm);
    let fractions: Vec<Vec<f64>> = space
        .layers
        .iter()
        .map(|l| {
            l.levels
                .iter()
                .map(|o| fraction(&o.level))
                .collect::<Option<Vec<f64>>>()
        })
        .collect::<Option<_>>()
        .ok_or_else(|| {
            err("OWL needs a sparsegpt database with f16 values (--method sparsegpt without --sparse-bits)".into())
        })?;
    let path = db.imatrix_path();
    let stats = dynapress_gguf::Imatrix::read_gguf(&path)
        .map_err(|e| Error::data(&path, format!("{e}; rebuild the database")))?;
    let mut ratios = Vec::with_capacity(space.layers.len());
    for l in &space.layers {
        let name = l.id.weight_name();
        let gguf = dynapress_gguf::model::gguf_tensor_name(&name)
            .ok()
            .flatten()
            .ok_or_else(|| err(format!("{name} has no GGUF name")))?;
        let entry = stats.entries.get(&gguf).ok_or_else(|| {
            Error::data(
                &path,
                format!("no statistics for {gguf}; rebuild the database"),
            )
        })?;
        let h: Vec<f64> = entry.mean_squares().iter().map(|&v| f64::from(v)).collect();
        let (rows, cols) = l.id.shape(&files.config);
        if h.len() != cols {
            return Err(Error::data(
                &path,
                format!("{gguf}: {} statistics for {cols} columns", h.len()),
            ));
        }
        let w = files.weights.load_f32(&name, &[rows, cols])?;
        ratios.push(outlier_ratio(&w, &h, OWL_M));
    }
    let params: Vec<u64> = space.layers.iter().map(|l| l.params).collect();
    let lambda = OWL_LAMBDA.min(target).min(0.99 - target).max(0.0);
    let want =
        owl_sparsities(&ratios, &params, target, lambda).map_err(|e| err(format!("OWL: {e}")))?;
    // Nearest level (ties: the sparser one; at one fraction, an unstructured
    // level before N:M, as OWL prunes unstructured).
    let mut choice: Choice = fractions
        .iter()
        .zip(&want)
        .zip(&space.layers)
        .map(|((fs, &s), l)| {
            let is_nm = |k: usize| nm(&l.levels[k].level);
            (0..fs.len())
                .min_by(|&a, &b| {
                    (fs[a] - s)
                        .abs()
                        .total_cmp(&(fs[b] - s).abs())
                        .then(fs[b].total_cmp(&fs[a]))
                        .then(is_nm(a).cmp(&is_nm(b)))
                })
                .expect("every layer has a level")
        })
        .collect();
    let budget = space.budget_bits(target_bits);
    while space.storage_bits(&choice) > budget {
        // The layer furthest below its OWL sparsity that can go sparser
        // without storing more (an N:M level's mask is smaller than a
        // bitmap: 2:4 stores less than 51 %).
        let next = |i: usize| {
            let fs = &fractions[i];
            let level = |k: usize| &space.layers[i].levels[k];
            let bits = |k: usize| level(k).storage_bits;
            (0..fs.len())
                .filter(|&k| fs[k] > fs[choice[i]] && bits(k) <= bits(choice[i]))
                .min_by(|&a, &b| {
                    fs[a]
                        .total_cmp(&fs[b])
                        .then(nm(&level(a).level).cmp(&nm(&level(b).level)))
                })
        };
        let pick = (0..choice.len())
            .filter_map(|i| next(i).map(|k| (i, k)))
            .max_by(|&(i, _), &(j, _)| {
                let gap = |i: usize| want[i] - fractions[i][choice[i]];
                gap(i).total_cmp(&gap(j)).then(j.cmp(&i))
            });
        match pick {
            Some((i, k)) => choice[i] = k,
            None => {
                return Err(Error::budget(
                    "OWL: no configuration of the database's sparsities fits the budget",
                ));
            }
        }
    }
    Ok(choice)
}
