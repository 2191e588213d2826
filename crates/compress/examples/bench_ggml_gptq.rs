//! Times GPTQ in ggml grids (`gptq_ggml`) against plain `dynapress_ggml::quantize`
//! on the demo model's largest linear layers and on a synthetic layer.
//!
//! ```text
//! cargo run --release -p dynapress-compress --example bench_ggml_gptq -- \
//!     [--demo] [--rows 4096] [--cols 4096] [--tokens 8192] \
//!     [--types Q4_K] [--threads 1,2] [--repeat 3]
//! ```
//!
//! `--demo`: `lm_head` (4096 × 256), `model.layers.3.mlp.{gate,down}_proj`
//! of `assets/demo-model`; otherwise one synthetic `rows × cols` layer with
//! W ~ N(0, 0.02²). Activations for H are correlated Gaussians (rank-8 shared
//! part, channel scales 0.2–3; seeded ChaCha8), the importance vector is
//! `diag(H)/T` for both methods. Times are the best of `--repeat` runs; the
//! factor (damping + Cholesky + inverse, shared by all types) is timed once.

use std::path::Path;
use std::time::Instant;

use dynapress_compress::{
    FactorParams, GptqFactor, Hessian, gptq_ggml, imatrix_from_hessian, relative_output_error,
};
use dynapress_ggml::{GgmlType, dequantize, quantize};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// `[t, n]` activations: `(z + F Bᵀ) ⊙ s`, rank-8 shared part, scales 0.2–3.
fn activations(rng: &mut ChaCha8Rng, t: usize, n: usize) -> Vec<f32> {
    let r = 8;
    let b: Vec<f64> = (0..n * r).map(|_| normal(rng)).collect();
    let s: Vec<f64> = (0..n)
        .map(|_| 0.2 * 15f64.powf(rng.random::<f64>()))
        .collect();
    let mut x = vec![0f32; t * n];
    for ti in 0..t {
        let f: Vec<f64> = (0..r).map(|_| normal(rng)).collect();
        for j in 0..n {
            let shared: f64 = (0..r).map(|k| f[k] * b[j * r + k]).sum();
            x[ti * n + j] = ((normal(rng) + shared) * s[j]) as f32;
        }
    }
    x
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .ok()
                .unwrap_or_else(|| panic!("bad value for {name}"))
        })
        .unwrap_or(default)
}

fn best<T>(repeat: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::INFINITY;
    let mut out = None;
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        let v = f();
        best = best.min(t.elapsed().as_secs_f64());
        out = Some(v);
    }
    (best, out.unwrap())
}

fn demo_layers() -> Vec<(String, usize, usize, Vec<f32>)> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/demo-model/model.safetensors");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("parse safetensors");
    [
        "lm_head.weight",
        "model.layers.3.mlp.gate_proj.weight",
        "model.layers.3.mlp.down_proj.weight",
    ]
    .iter()
    .map(|name| {
        let t = st.tensor(name).unwrap();
        let data = t
            .data()
            .chunks_exact(2)
            .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
            .collect();
        (name.to_string(), t.shape()[0], t.shape()[1], data)
    })
    .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let demo = args.iter().any(|a| a == "--demo");
    let rows: usize = arg(&args, "--rows", 4096);
    let cols: usize = arg(&args, "--cols", 4096);
    let tokens: usize = arg(&args, "--tokens", 8192);
    let repeat: usize = arg(&args, "--repeat", 3);
    let types: Vec<GgmlType> = arg(&args, "--types", "Q4_K".to_string())
        .split(',')
        .map(|t| GgmlType::from_name(t.trim()).expect("unknown ggml type"))
        .collect();
    let threads: Vec<usize> = arg(&args, "--threads", "1,2".to_string())
        .split(',')
        .map(|v| v.trim().parse().expect("bad thread count"))
        .collect();

    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    let layers = if demo {
        demo_layers()
    } else {
        let w = (0..rows * cols)
            .map(|_| (normal(&mut rng) * 0.02) as f32)
            .collect();
        vec![(format!("synthetic {rows}×{cols}"), rows, cols, w)]
    };

    println!(
        "| layer | shape | type | threads | factor (s) | gptq_ggml (s) | quantize (s) | error gptq / quantize |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|");
    for (name, r, c, w) in &layers {
        let x = activations(&mut rng, tokens, *c);
        let mut h = Hessian::new(*c);
        h.add_batch(&x).unwrap();
        drop(x);
        let imx = imatrix_from_hessian(&h);
        for &t in &threads {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap();
            pool.install(|| {
                let (t_factor, f) =
                    best(1, || GptqFactor::new(&h, &FactorParams::default()).unwrap());
                for &ty in &types {
                    let (t_gptq, g) = best(repeat, || gptq_ggml(&f, w, ty, Some(&imx)).unwrap());
                    let (t_plain, p) = best(repeat, || quantize(ty, w, *c, Some(&imx)).unwrap());
                    let e_g = relative_output_error(w, &g.dequantize(), &h);
                    let e_p = relative_output_error(w, &dequantize(ty, &p, w.len()).unwrap(), &h);
                    println!(
                        "| {name} | {r}×{c} | {ty} | {t} | {t_factor:.3} | {t_gptq:.3} | {t_plain:.3} | {:.3} |",
                        e_g / e_p
                    );
                }
            });
        }
    }
}
