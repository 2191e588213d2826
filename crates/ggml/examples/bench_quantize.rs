//! Times `quantize` / `dequantize` / `block_grids` on the demo model's weights
//! (every linear layer and both embeddings: 8.39 M values), best of `REPS` runs.
//!
//! cargo run --release -p dynapress-ggml --example bench_quantize [TYPE...]
//! (RAYON_NUM_THREADS sets the thread count; default: all cores)

use std::path::Path;
use std::time::Instant;

use dynapress_ggml::{GgmlType, block_grids, dequantize, quantize};

const REPS: usize = 5;

fn best_of<T>(mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::INFINITY;
    let mut out = None;
    for _ in 0..REPS {
        let t = Instant::now();
        let r = f();
        best = best.min(t.elapsed().as_secs_f64());
        out = Some(r);
    }
    (best, out.unwrap())
}

fn main() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/demo-model/model.safetensors");
    let bytes = std::fs::read(&path).expect("read the demo model");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("parse safetensors");
    // (n_per_row, rows) groups.
    let mut groups: Vec<(usize, Vec<f32>)> = Vec::new();
    for (_, t) in st.tensors() {
        if t.shape().len() != 2 {
            continue;
        }
        let n = t.shape()[1];
        let data: Vec<f32> = t
            .data()
            .chunks_exact(2)
            .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
            .collect();
        match groups.iter_mut().find(|g| g.0 == n) {
            Some(g) => g.1.extend_from_slice(&data),
            None => groups.push((n, data)),
        }
    }
    let total: usize = groups.iter().map(|g| g.1.len()).sum();
    // A positive importance vector per row length (its values do not change the cost).
    let imatrices: Vec<Vec<f32>> = groups
        .iter()
        .map(|(n, _)| (0..*n).map(|i| 0.5 + (i % 17) as f32 * 0.1).collect())
        .collect();
    println!(
        "{total} weights, {} threads, best of {REPS}\n",
        rayon::current_num_threads()
    );
    println!(
        "| type | quantize (s) | quantize + imatrix (s) | dequantize (s) | Mweights/s (no imatrix) |"
    );
    println!(
        "|------|-------------:|-----------------------:|---------------:|------------------------:|"
    );
    let types = [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::F16,
        GgmlType::BF16,
    ];
    // Optional arguments: type names to run (default: all).
    let only: Vec<GgmlType> = std::env::args()
        .skip(1)
        .filter_map(|a| GgmlType::from_name(&a))
        .collect();
    for ty in types {
        if !only.is_empty() && !only.contains(&ty) {
            continue;
        }
        let (tq, encoded) = best_of(|| {
            groups
                .iter()
                .map(|(n, d)| quantize(ty, d, *n, None).unwrap())
                .collect::<Vec<_>>()
        });
        let (ti, _) = best_of(|| {
            groups
                .iter()
                .zip(&imatrices)
                .map(|((n, d), im)| quantize(ty, d, *n, Some(im)).unwrap())
                .collect::<Vec<_>>()
        });
        let (td, _) = best_of(|| {
            groups
                .iter()
                .zip(&encoded)
                .map(|((_, d), e)| dequantize(ty, e, d.len()).unwrap())
                .collect::<Vec<_>>()
        });
        println!(
            "| {ty} | {tq:.3} | {ti:.3} | {td:.3} | {:.1} |",
            total as f64 / tq / 1e6
        );
    }
    // GPTQ's view: the scale choice of every block of every row (Q4_K).
    let (tg, _) = best_of(|| {
        let mut count = 0usize;
        for (n, d) in &groups {
            for b in 0..n / 256 {
                count += block_grids(GgmlType::Q4K, d, *n, b, None).unwrap().len();
            }
        }
        count
    });
    println!("\nblock_grids for every Q4_K super-block: {tg:.3} s");
}
