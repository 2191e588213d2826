//! Measures the error of the f32-chunked Hessian accumulation against the
//! f64 accumulation, and its effect on GPTQ.
//!
//! ```text
//! cargo run --release -p dynapress-compress --example hessian_precision -- \
//!     [--n 1024] [--tokens 65536] [--chunks 128,512,2048,8192,65536]
//! ```
//!
//! Activations imitate LLM layer inputs: a rank-8 shared component, per-channel
//! scales between 0.2 and 3, per-channel means, and 4 outlier channels ×30.

use std::time::Instant;

use dynapress_compress::{Accumulation, GptqParams, Hessian, QuantScheme, gptq, quadratic_trace};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = arg(&args, "--n", "1024").parse().unwrap();
    let tokens: usize = arg(&args, "--tokens", "65536").parse().unwrap();
    let chunks: Vec<usize> = arg(&args, "--chunks", "128,512,2048,8192,65536")
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let r = 8;
    let b: Vec<f64> = (0..n * r).map(|_| normal(&mut rng)).collect();
    let mut scale: Vec<f64> = (0..n)
        .map(|_| 0.2 * 15f64.powf(rng.random::<f64>()))
        .collect();
    for j in [3, n / 3, n / 2, n - 5] {
        scale[j] *= 30.0;
    }
    let mean: Vec<f64> = (0..n).map(|j| 0.5 * normal(&mut rng) * scale[j]).collect();
    let mut x = vec![0f32; tokens * n];
    for t in 0..tokens {
        let f: Vec<f64> = (0..r).map(|_| normal(&mut rng)).collect();
        for j in 0..n {
            let shared: f64 = (0..r).map(|k| f[k] * b[j * r + k]).sum();
            x[t * n + j] = ((normal(&mut rng) + shared) * scale[j] + mean[j]) as f32;
        }
    }
    let s = Instant::now();
    let mut h64 = Hessian::with_accumulation(n, Accumulation::F64);
    h64.add_batch(&x).unwrap();
    let t64 = s.elapsed().as_secs_f64();
    let r64 = h64.as_slice();
    let fro64 = r64.iter().map(|v| v * v).sum::<f64>().sqrt();
    println!("n {n}, tokens {tokens}: f64 accumulation {t64:.3} s");
    println!("| accumulation | time (s) | max abs(ΔH_ij)/sqrt(H_ii·H_jj) | ‖ΔH‖_F/‖H‖_F |");
    println!("|---|---:|---:|---:|");
    let w: Vec<f32> = (0..256 * n)
        .map(|_| (normal(&mut rng) * 0.05) as f32)
        .collect();
    let den = quadratic_trace(&w, &h64);
    let mut h512 = None;
    for &c in &chunks {
        let s = Instant::now();
        let mut h = Hessian::with_accumulation(n, Accumulation::F32Chunked { chunk_tokens: c });
        h.add_batch(&x).unwrap();
        let t = s.elapsed().as_secs_f64();
        let hs = h.as_slice();
        let mut maxn = 0f64;
        let mut fro = 0f64;
        for i in 0..n {
            for j in 0..n {
                let d = hs[i * n + j] - r64[i * n + j];
                fro += d * d;
                maxn = maxn.max(d.abs() / (r64[i * n + i] * r64[j * n + j]).sqrt());
            }
        }
        println!(
            "| f32 chunks of {c} tokens, f64 sum | {t:.3} | {maxn:.2e} | {:.2e} |",
            fro.sqrt() / fro64
        );
        if c == 512 {
            h512 = Some(h);
        }
    }
    if let Some(h32) = h512 {
        println!(
            "\nGPTQ (256 × {n} random W, g128, asymmetric) with H from f32 chunks of 512 vs H from f64:"
        );
        println!("| bits | codes identical | rel. error (f64 H) | rel. error (f32-chunked H) |");
        println!("|---:|---:|---:|---:|");
        for bits in [2u8, 3, 4, 8] {
            let p = GptqParams {
                scheme: QuantScheme::new(bits, 128),
                ..Default::default()
            };
            let q64 = gptq(&w, &h64, &p).unwrap();
            let q32 = gptq(&w, &h32, &p).unwrap();
            let same = q64
                .codes()
                .iter()
                .zip(q32.codes())
                .filter(|(a, b)| a == b)
                .count();
            let err = |q: &dynapress_compress::QuantizedLinear| {
                let d: Vec<f32> = w.iter().zip(q.dequantize()).map(|(a, b)| a - b).collect();
                quadratic_trace(&d, &h64) / den
            };
            println!(
                "| {bits} | {:.4}% | {:.6e} | {:.6e} |",
                100.0 * same as f64 / q64.codes().len() as f64,
                err(&q64),
                err(&q32)
            );
        }
    }
}
