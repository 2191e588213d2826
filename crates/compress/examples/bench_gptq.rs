//! Times GPTQ on one random layer: Hessian accumulation, the shared
//! preparation (damping + Cholesky + triangular inverse) and one sweep per bit
//! width, for each thread count.
//!
//! ```text
//! cargo run --release -p dynapress-compress --example bench_gptq -- \
//!     [--rows 4096] [--cols 4096] [--tokens 8192] [--group 128] \
//!     [--bits 2,3,4,5,6,8] [--threads 1,2] [--act-order] [--sym] [--repeat 1] [--no-eval]
//! ```
//!
//! W ~ N(0, 1) and X ~ N(0, 1) (seeded ChaCha8), H = XᵀX over `tokens` rows.

use std::time::Instant;

use dynapress_compress::{
    FactorParams, GptqFactor, GptqQuantParams, Hessian, QuantScheme, RtnParams, quadratic_trace,
    rtn,
};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn normals(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        out.push((r * t.cos()) as f32);
        if out.len() < len {
            out.push((r * t.sin()) as f32);
        }
    }
    out
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

fn list(args: &[String], name: &str, default: &str) -> Vec<usize> {
    let s: String = arg(args, name, default.to_string());
    s.split(',')
        .map(|v| v.trim().parse().expect("bad list"))
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rows: usize = arg(&args, "--rows", 4096);
    let cols: usize = arg(&args, "--cols", 4096);
    let tokens: usize = arg(&args, "--tokens", 8192);
    let group: usize = arg(&args, "--group", 128);
    let repeat: usize = arg(&args, "--repeat", 1);
    let bits = list(&args, "--bits", "2,3,4,5,6,8");
    let threads = list(&args, "--threads", "1,2");
    let act_order = args.iter().any(|a| a == "--act-order");
    let sym = args.iter().any(|a| a == "--sym");
    let eval = !args.iter().any(|a| a == "--no-eval");

    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    let x = normals(&mut rng, tokens * cols);
    let w = normals(&mut rng, rows * cols);
    println!(
        "GPTQ bench: W {rows}×{cols}, H from {tokens} tokens, group {group}, sym {sym}, act_order {act_order}, best of {repeat}"
    );
    for &t in &threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .unwrap();
        pool.install(|| {
            let best =
                |f: &mut dyn FnMut() -> f64| (0..repeat).map(|_| f()).fold(f64::INFINITY, f64::min);
            let mut h = Hessian::new(cols);
            let t_h = best(&mut || {
                h = Hessian::new(cols);
                let s = Instant::now();
                h.add_batch(&x).unwrap();
                s.elapsed().as_secs_f64()
            });
            let fp = FactorParams {
                act_order,
                ..Default::default()
            };
            let mut factor = None;
            let t_prep = best(&mut || {
                let s = Instant::now();
                factor = Some(GptqFactor::new(&h, &fp).unwrap());
                s.elapsed().as_secs_f64()
            });
            let factor = factor.unwrap();
            let den = if eval {
                quadratic_trace(&w, &h)
            } else {
                f64::NAN
            };
            println!(
                "\nthreads {t}: hessian {t_h:.3} s, prepare {t_prep:.3} s (damp {}, retries {})",
                factor.damp(),
                factor.damp_retries()
            );
            println!("| bits | GPTQ sweep (s) | bits/weight | GPTQ rel. error | RTN rel. error |");
            println!("|---:|---:|---:|---:|---:|");
            let mut total = t_prep;
            for &b in &bits {
                let scheme = QuantScheme {
                    bits: b as u8,
                    group_size: group,
                    sym,
                };
                let p = GptqQuantParams {
                    scheme,
                    ..Default::default()
                };
                let mut q = None;
                let t_q = best(&mut || {
                    let s = Instant::now();
                    q = Some(factor.quantize(&w, &p).unwrap());
                    s.elapsed().as_secs_f64()
                });
                total += t_q;
                let q = q.unwrap();
                let rel = |wh: &[f32]| {
                    let d: Vec<f32> = w.iter().zip(wh).map(|(a, b)| a - b).collect();
                    quadratic_trace(&d, &h) / den
                };
                let (e_gptq, e_rtn) = if eval {
                    (
                        rel(&q.dequantize()),
                        rel(&rtn(&w, cols, &RtnParams { scheme, clip: None })
                            .unwrap()
                            .dequantize()),
                    )
                } else {
                    (f64::NAN, f64::NAN)
                };
                println!(
                    "| {b} | {t_q:.3} | {:.4} | {e_gptq:.4e} | {e_rtn:.4e} |",
                    q.bits_per_weight()
                );
            }
            println!("threads {t}: prepare + all sweeps = {total:.3} s");
        });
    }
}
