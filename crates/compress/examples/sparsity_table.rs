//! SparseGPT versus magnitude pruning on the real layers of a Llama checkpoint,
//! with the Hessians a `dynapress database --keep-hessians` run stored.
//!
//! ```text
//! dynapress database --model MODEL_DIR --calib docs.valid.txt --calib code.valid.txt \
//!     --out DB_DIR --bits 4 --keep-hessians
//! cargo run --release -p dynapress-compress --example sparsity_table -- MODEL_DIR DB_DIR
//! ```
//!
//! Prints markdown tables (docs/sparsity.md): relative output error
//! `tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)` per sparsity for a few layers and the mean over
//! every linear layer; joint sparsity × bit width against GPTQ alone; OWL
//! layer sparsities from the real outlier ratios.

use std::path::Path;

use dynapress_compress::{
    GptqFactor, GptqParams, Hessian, QuantScheme, SparseLinear, SparseParams, SparsityPattern,
    gptq, magnitude_prune, outlier_ratio, owl_sparsities, quadratic_trace, sparsegpt_with_factor,
};
use half::bf16;
use safetensors::SafeTensors;

const LAYERS: [(&str, &str); 7] = [
    ("self_attn.q_proj", "attn_in"),
    ("self_attn.k_proj", "attn_in"),
    ("self_attn.v_proj", "attn_in"),
    ("self_attn.o_proj", "attn_out"),
    ("mlp.gate_proj", "mlp_in"),
    ("mlp.up_proj", "mlp_in"),
    ("mlp.down_proj", "mlp_act"),
];

struct Layer {
    name: String,
    w: Vec<f32>,
    h: Hessian,
    factor: GptqFactor,
    den: f64,
}

fn load_hessian(path: &Path) -> Hessian {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let (_, meta) = SafeTensors::read_metadata(&bytes).expect("safetensors header");
    let tokens: u64 = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("tokens"))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    let t = st.tensor("hessian").expect("tensor `hessian`");
    let n = t.shape()[0];
    let data: Vec<f64> = t
        .data()
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    Hessian::from_flat(n, tokens, data).expect("valid Hessian")
}

fn err(l: &Layer, s: &[f32]) -> f64 {
    let d: Vec<f32> = l.w.iter().zip(s).map(|(a, b)| a - b).collect();
    quadratic_trace(&d, &l.h) / l.den
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (model, db) = match args.as_slice() {
        [m, d] => (Path::new(m), Path::new(d)),
        _ => {
            eprintln!(
                "usage: sparsity_table MODEL_DIR DB_DIR (a database built with --keep-hessians)"
            );
            std::process::exit(2);
        }
    };
    let bytes = std::fs::read(model.join("model.safetensors")).expect("model.safetensors");
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut layers = Vec::new();
    for block in 0.. {
        let hp = db.join(format!("hessians/{block}.attn_in.safetensors"));
        if !hp.exists() {
            break;
        }
        for (lname, site) in LAYERS {
            let t = st
                .tensor(&format!("model.layers.{block}.{lname}.weight"))
                .expect("weight");
            let w: Vec<f32> = t
                .data()
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect();
            let h = load_hessian(&db.join(format!("hessians/{block}.{site}.safetensors")));
            let factor = GptqFactor::new(&h, &Default::default()).expect("factor");
            let den = quadratic_trace(&w, &h);
            layers.push(Layer {
                name: format!("{block}.{}", lname.split('.').nth(1).unwrap()),
                w,
                h,
                factor,
                den,
            });
        }
    }
    eprintln!("{} layers", layers.len());

    // `None` is 2:4.
    let patterns: Vec<(String, Option<f64>)> = [0.3, 0.4, 0.5, 0.6, 0.7]
        .iter()
        .map(|&s| (format!("{:.0} %", s * 100.0), Some(s)))
        .chain(std::iter::once(("2:4".to_string(), None)))
        .collect();
    let pat = |s: Option<f64>, n: usize| match s {
        Some(s) => SparsityPattern::fraction(s, n).unwrap(),
        None => SparsityPattern::two_four(),
    };
    let show = ["3.q", "3.o", "3.up", "3.down"];
    let shown: Vec<&Layer> = layers
        .iter()
        .filter(|l| show.iter().any(|s| l.name.starts_with(s)))
        .collect();
    println!(
        "| sparsity | {} | mean over all {} layers |",
        shown
            .iter()
            .map(|l| format!("{} SparseGPT / magnitude", l.name))
            .collect::<Vec<_>>()
            .join(" | "),
        layers.len()
    );
    println!("|---|{}---|", "---|".repeat(shown.len()));
    let run = |l: &Layer, p: &SparseParams| -> (f64, f64, SparseLinear) {
        let s = sparsegpt_with_factor(&l.factor, &l.w, p).unwrap();
        let m = magnitude_prune(&l.w, l.factor.dim(), p).unwrap();
        (err(l, &s.dequantize()), err(l, &m.dequantize()), s)
    };
    for (name, sp) in &patterns {
        let mut cells = Vec::new();
        for l in &shown {
            let (a, b, _) = run(l, &SparseParams::new(pat(*sp, l.factor.dim())));
            cells.push(format!("{a:.2e} / {b:.2e}"));
        }
        let (mut sa, mut sb) = (0.0, 0.0);
        for l in &layers {
            let (a, b, _) = run(l, &SparseParams::new(pat(*sp, l.factor.dim())));
            sa += a;
            sb += b;
        }
        let k = layers.len() as f64;
        println!(
            "| {name} | {} | {:.2e} / {:.2e} ({:.2}×) |",
            cells.join(" | "),
            sa / k,
            sb / k,
            sb / sa
        );
    }

    println!();
    println!("| level | bits/weight | SparseGPT (joint) | magnitude + grid |");
    println!("|---|---|---|---|");
    let total_w: usize = layers.iter().map(|l| l.w.len()).sum();
    for (name, pat, bits) in [
        ("50 % × f16", Some(0.5), None),
        ("50 % × 8-bit", Some(0.5), Some(8u8)),
        ("50 % × 4-bit", Some(0.5), Some(4)),
        ("50 % × 3-bit", Some(0.5), Some(3)),
        ("2:4 × 4-bit", None, Some(4)),
        ("70 % × 4-bit", Some(0.7), Some(4)),
    ] {
        let (mut sa, mut sb, mut bitsum) = (0.0, 0.0, 0u64);
        for l in &layers {
            let n = l.factor.dim();
            let p = SparseParams {
                pattern: match pat {
                    Some(s) => SparsityPattern::fraction(s, n).unwrap(),
                    None => SparsityPattern::two_four(),
                },
                quant: bits.map(|b| QuantScheme::new(b, 128)),
                block_size: 128,
            };
            let (a, b, s) = run(l, &p);
            sa += a;
            sb += b;
            bitsum += s.storage_bits();
        }
        let k = layers.len() as f64;
        println!(
            "| {name} | {:.3} | {:.2e} | {:.2e} |",
            bitsum as f64 / total_w as f64,
            sa / k,
            sb / k
        );
    }
    for bits in [2u8, 3, 4] {
        let (mut sa, mut bitsum) = (0.0, 0u64);
        for l in &layers {
            let q = gptq(
                &l.w,
                &l.h,
                &GptqParams {
                    scheme: QuantScheme::new(bits, 128),
                    ..Default::default()
                },
            )
            .unwrap();
            sa += err(l, &q.dequantize());
            bitsum += q.storage_bits();
        }
        println!(
            "| dense GPTQ {bits}-bit (reference) | {:.3} | {:.2e} | — |",
            bitsum as f64 / total_w as f64,
            sa / layers.len() as f64
        );
    }

    println!();
    println!("| damping (× mean diag H) | SparseGPT 50 % | SparseGPT 70 % |");
    println!("|---|---|---|");
    for damp in [0.001, 0.01, 0.1, 1.0] {
        let (mut a5, mut a7) = (0.0, 0.0);
        for l in &layers {
            let f = GptqFactor::new(
                &l.h,
                &dynapress_compress::FactorParams {
                    damp,
                    ..Default::default()
                },
            )
            .unwrap();
            let n = f.dim();
            for (s, acc) in [(0.5, &mut a5), (0.7, &mut a7)] {
                let p = SparseParams::new(SparsityPattern::fraction(s, n).unwrap());
                *acc += err(
                    l,
                    &sparsegpt_with_factor(&f, &l.w, &p).unwrap().dequantize(),
                );
            }
        }
        let k = layers.len() as f64;
        println!("| {damp} | {:.3e} | {:.3e} |", a5 / k, a7 / k);
    }

    println!();
    let ratios: Vec<f64> = layers
        .iter()
        .map(|l| outlier_ratio(&l.w, &l.h.diag(), 5.0))
        .collect();
    let params: Vec<u64> = layers.iter().map(|l| l.w.len() as u64).collect();
    let s = owl_sparsities(&ratios, &params, 0.5, 0.08).unwrap();
    println!("OWL (M = 5, target 50 %, λ = 0.08):");
    println!("| layer | outlier ratio | sparsity |");
    println!("|---|---|---|");
    for ((l, r), s) in layers.iter().zip(&ratios).zip(&s) {
        if l.name.starts_with("0.") || l.name.starts_with("7.") || l.name.contains("down") {
            println!("| {} | {:.4} | {:.3} |", l.name, r, s);
        }
    }
    let (mut uni, mut owl) = (0.0, 0.0);
    for (l, &sl) in layers.iter().zip(&s) {
        let n = l.factor.dim();
        let p = SparseParams::new(SparsityPattern::fraction(0.5, n).unwrap());
        uni += err(
            l,
            &sparsegpt_with_factor(&l.factor, &l.w, &p)
                .unwrap()
                .dequantize(),
        );
        let p = SparseParams::new(SparsityPattern::fraction(sl, n).unwrap());
        owl += err(
            l,
            &sparsegpt_with_factor(&l.factor, &l.w, &p)
                .unwrap()
                .dequantize(),
        );
    }
    let k = layers.len() as f64;
    println!(
        "\nmean relative output error at 50 %: uniform {:.3e}, OWL {:.3e}",
        uni / k,
        owl / k
    );
}
