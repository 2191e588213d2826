//! GPTQ in ggml's grids (`gptq_ggml`): byte parity with ggml's encoder when
//! there is nothing to feed back, parity with a straightforward f64
//! implementation, output error versus plain `quantize` on real layers of the
//! demo model, validity of every block, thread-count independence, dead
//! inputs, errors.

// The reference GPTQ is written with explicit indices, like the math.
#![allow(clippy::needless_range_loop)]

mod common;

use std::path::Path;
use std::sync::OnceLock;

use common::*;
use dynapress_compress::{
    FactorParams, GgmlGptqError, GgmlQuantized, GptqFactor, Hessian, gptq_ggml,
    imatrix_from_hessian, relative_output_error,
};
use dynapress_ggml::{BlockGrid, Error as GgmlError, GgmlType, quantize, validate_row_data};

const K_QUANTS: [GgmlType; 5] = [
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

const LATTICES: [GgmlType; 5] = [
    GgmlType::IQ2XXS,
    GgmlType::IQ2XS,
    GgmlType::IQ2S,
    GgmlType::IQ3XXS,
    GgmlType::IQ3S,
];
const ALL_GRIDS: [GgmlType; 11] = [
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::IQ4NL,
];

// ---------------------------------------------------------------------------
// Demo model and its layer-3 inputs

struct Weight {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

fn demo() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/demo-model/model.safetensors");
        std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    })
}

/// A tensor of the demo model, widened from bf16 (1-D tensors: one row).
fn weight(name: &str) -> Weight {
    let st = safetensors::SafeTensors::deserialize(demo()).expect("parse safetensors");
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), safetensors::Dtype::BF16, "{name}");
    let data: Vec<f32> = t
        .data()
        .chunks_exact(2)
        .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
        .collect();
    let (rows, cols) = match t.shape() {
        [n] => (1, *n),
        [r, c] => (*r, *c),
        s => panic!("{name}: shape {s:?}"),
    };
    Weight { rows, cols, data }
}

/// Inputs of block 3's attention (`[T, 256]`), MLP (`[T, 256]`) and down
/// projection (`[T, 768]`), built from the real weights on a synthetic token
/// stream: the residual stream is a decaying mix of the real embeddings of the
/// last three tokens (Zipf-distributed ids) plus correlated noise, then the
/// real RMSNorms, and `silu(gate x) ⊙ (up x)` with the real gate/up weights.
struct Inputs {
    attn: Vec<f32>,
    mlp: Vec<f32>,
    down: Vec<f32>,
}

fn inputs() -> &'static Inputs {
    static INPUTS: OnceLock<Inputs> = OnceLock::new();
    INPUTS.get_or_init(|| {
        let t_len = 2048;
        let emb = weight("model.embed_tokens.weight");
        let ln1 = weight("model.layers.3.input_layernorm.weight").data;
        let ln2 = weight("model.layers.3.post_attention_layernorm.weight").data;
        let gate = weight("model.layers.3.mlp.gate_proj.weight");
        let up = weight("model.layers.3.mlp.up_proj.weight");
        let (d, m) = (emb.cols, gate.rows);
        let mut r = rng(33);
        let vocab = emb.rows;
        let ids: Vec<usize> = (0..t_len)
            .map(|_| {
                let u: f64 = rand::RngExt::random(&mut r);
                ((vocab as f64).powf(u) as usize - 1).min(vocab - 1)
            })
            .collect();
        let emb_rms = (emb.data.iter().map(|v| (v * v) as f64).sum::<f64>() / emb.data.len() as f64)
            .sqrt() as f32;
        let noise = correlated_inputs(&mut r, t_len, d);
        let noise_rms =
            (noise.iter().map(|v| (v * v) as f64).sum::<f64>() / noise.len() as f64).sqrt() as f32;
        let (mut attn, mut mlp, mut down) = (
            vec![0f32; t_len * d],
            vec![0f32; t_len * d],
            vec![0f32; t_len * m],
        );
        let mut z = vec![0f32; d];
        for t in 0..t_len {
            for j in 0..d {
                let e = |back: usize, c: f32| {
                    if t >= back {
                        c * emb.data[ids[t - back] * d + j]
                    } else {
                        0.0
                    }
                };
                z[j] = e(0, 1.0)
                    + e(1, 0.5)
                    + e(2, 0.25)
                    + 0.5 * emb_rms / noise_rms * noise[t * d + j];
            }
            let ms = z.iter().map(|v| v * v).sum::<f32>() / d as f32;
            let inv = 1.0 / (ms + 1e-5).sqrt();
            for j in 0..d {
                attn[t * d + j] = z[j] * inv * ln1[j];
                mlp[t * d + j] = z[j] * inv * ln2[j];
            }
            let x = &mlp[t * d..(t + 1) * d];
            for i in 0..m {
                let g: f32 = (0..d).map(|j| gate.data[i * d + j] * x[j]).sum();
                let u: f32 = (0..d).map(|j| up.data[i * d + j] * x[j]).sum();
                down[t * m + i] = g / (1.0 + (-g).exp()) * u;
            }
        }
        Inputs { attn, mlp, down }
    })
}

fn hessian_of(x: &[f32], n: usize) -> Hessian {
    let mut h = Hessian::new(n);
    h.add_batch(x).unwrap();
    h
}

/// Real layers of block 3 with the Hessians of their (semi-synthetic) inputs.
fn real_layers() -> Vec<(&'static str, Weight, Hessian)> {
    let inp = inputs();
    vec![
        (
            "q_proj",
            weight("model.layers.3.self_attn.q_proj.weight"),
            hessian_of(&inp.attn, 256),
        ),
        (
            "gate_proj",
            weight("model.layers.3.mlp.gate_proj.weight"),
            hessian_of(&inp.mlp, 256),
        ),
        (
            "down_proj",
            weight("model.layers.3.mlp.down_proj.weight"),
            hessian_of(&inp.down, 768),
        ),
    ]
}

fn factor(h: &Hessian) -> GptqFactor {
    GptqFactor::new(h, &FactorParams::default()).unwrap()
}

// ---------------------------------------------------------------------------
// Tests

/// With a diagonal H, U is diagonal: no error reaches another column, so every
/// block's grid is chosen from the original weights and GPTQ must write
/// exactly what ggml's encoder writes, for every type, with and without an
/// importance vector.
#[test]
fn diagonal_hessian_reproduces_ggml_quantize_byte_for_byte() {
    let inp = inputs();
    let layers = [
        (
            weight("model.layers.3.self_attn.q_proj.weight"),
            hessian_of(&inp.attn, 256),
        ),
        (
            weight("model.layers.3.mlp.down_proj.weight"),
            hessian_of(&inp.down, 768),
        ),
    ];
    let mut r = rng(5);
    for (w, h_real) in &layers {
        let n = w.cols;
        let imx = imatrix_from_hessian(h_real);
        let identity: Vec<f64> = (0..n * n)
            .map(|k| if k / n == k % n { 1.0 } else { 0.0 })
            .collect();
        let diagonal: Vec<f64> = (0..n * n)
            .map(|k| {
                if k / n == k % n {
                    0.05 + 20.0 * rand::RngExt::random::<f64>(&mut r)
                } else {
                    0.0
                }
            })
            .collect();
        for hd in [identity, diagonal] {
            let f = factor(&Hessian::from_flat(n, 1, hd).unwrap());
            for ty in ALL_GRIDS {
                for im in [None, Some(&imx[..])] {
                    let want = quantize(ty, &w.data, n, im).unwrap();
                    let got = gptq_ggml(&f, &w.data, ty, im).unwrap();
                    assert_eq!((got.rows(), got.cols(), got.ty()), (w.rows, n, ty));
                    assert!(
                        got.bytes() == &want[..],
                        "{ty}, {} × {n}, imatrix {}: bytes differ from quantize",
                        w.rows,
                        im.is_some()
                    );
                }
            }
        }
    }
}

/// GPTQ's output error `tr(ΔW H ΔWᵀ)` in k-quant grids against plain
/// `quantize`, both with the importance vector `diag(H)/T`, on real layers.
#[test]
fn gptq_beats_plain_quantize_on_real_layers() {
    let mut worst: f64 = 0.0;
    for (name, w, h) in real_layers() {
        let n = w.cols;
        let f = factor(&h);
        let imx = imatrix_from_hessian(&h);
        for ty in K_QUANTS.into_iter().chain([GgmlType::Q8_0]) {
            let plain = quantize(ty, &w.data, n, Some(&imx)).unwrap();
            let plain = dynapress_ggml::dequantize(ty, &plain, w.data.len()).unwrap();
            let g = gptq_ggml(&f, &w.data, ty, Some(&imx)).unwrap();
            let e_plain = relative_output_error(&w.data, &plain, &h);
            let e_gptq = relative_output_error(&w.data, &g.dequantize(), &h);
            let ratio = e_gptq / e_plain;
            println!("{name:9} {ty:4}: plain {e_plain:.4e}  gptq {e_gptq:.4e}  ratio {ratio:.3}");
            if ty != GgmlType::Q8_0 {
                worst = worst.max(ratio);
            }
            // Even at 8.5 bits GPTQ must not lose.
            assert!(
                ratio < 1.0,
                "{name} {ty}: GPTQ {e_gptq:e} vs plain {e_plain:e}"
            );
        }
    }
    assert!(
        worst < 0.85,
        "GPTQ should cut the k-quant output error by more than 15% on every layer (worst ratio {worst:.3})"
    );
}

/// GPTQ inside the lattice i-quants' codebooks (ggml's scales from the
/// current weights, each group's point by its GPTQ loss, errors fed forward)
/// against ggml's encoder, both with the importance vector `diag(H)/T`, on
/// real layers of the demo model: `tr(ΔW H ΔWᵀ)` must drop on every layer and
/// type, and by more than a third at the worst.
#[test]
fn gptq_in_lattice_codebooks_beats_plain_quantize_on_real_layers() {
    let mut worst: f64 = 0.0;
    for (name, w, h) in real_layers() {
        let n = w.cols;
        let f = factor(&h);
        let imx = imatrix_from_hessian(&h);
        for ty in LATTICES {
            let plain = quantize(ty, &w.data, n, Some(&imx)).unwrap();
            let plain = dynapress_ggml::dequantize(ty, &plain, w.data.len()).unwrap();
            let g = gptq_ggml(&f, &w.data, ty, Some(&imx)).unwrap();
            assert_eq!(g.bytes().len(), w.rows * n / 256 * ty.type_size());
            let e_plain = relative_output_error(&w.data, &plain, &h);
            let e_gptq = relative_output_error(&w.data, &g.dequantize(), &h);
            let ratio = e_gptq / e_plain;
            println!("{name:9} {ty:7}: plain {e_plain:.4e}  gptq {e_gptq:.4e}  ratio {ratio:.3}");
            worst = worst.max(ratio);
        }
    }
    assert!(
        worst < 0.67,
        "GPTQ should cut the lattice i-quants' output error by more than a third on every layer (worst ratio {worst:.3})"
    );
}

/// `U` of the damped `H` (row-major, upper), the way the GPTQ reference
/// computes it: Cholesky → inverse → Cholesky, in f64.
fn reference_u(h: &Hessian, lambda: f64) -> Vec<f64> {
    let n = h.dim();
    let mut hd = h.as_slice().to_vec();
    assert!(
        (0..n).all(|i| hd[i * n + i] > 0.0),
        "reference: no dead inputs"
    );
    for i in 0..n {
        hd[i * n + i] += lambda;
    }
    let l = naive_cholesky(&naive_spd_inverse(&hd, n), n);
    (0..n * n).map(|k| l[(k % n) * n + k / n]).collect()
}

/// The GPTQ of the module docs written as plainly as possible: no lazy
/// blocks (every later column updated at once), `U` from Cholesky → inverse →
/// Cholesky of the damped H, working weights in f64 (or, with `single`,
/// rounded to f32 after every update). Grids from `BlockGrid::new` on the
/// current weights (as f32), whole rows for the legacy types with an
/// importance vector. Returns the ggml bytes.
fn reference(
    w: &[f32],
    n: usize,
    u: &[f64],
    ty: GgmlType,
    imatrix: Option<&[f32]>,
    single: bool,
) -> Vec<u8> {
    let u = |i: usize, j: usize| u[i * n + j];
    let bs = ty.block_size();
    let whole_row = bs == 32 && ty != GgmlType::Q8_0 && imatrix.is_some();
    let mut out = Vec::new();
    for row in w.chunks(n) {
        let mut x: Vec<f64> = row.iter().map(|&v| v as f64).collect();
        for b in 0..n / bs {
            let b0 = b * bs;
            let cur: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            let grid = if whole_row {
                BlockGrid::new(ty, &cur, b, imatrix).unwrap()
            } else {
                BlockGrid::new(ty, &cur[b0..b0 + bs], 0, imatrix.map(|q| &q[b0..b0 + bs])).unwrap()
            };
            let mut codes = vec![0u8; bs];
            for j in b0..b0 + bs {
                let (c, q) = grid.round(j - b0, x[j] as f32);
                codes[j - b0] = c;
                let e = (x[j] - q as f64) / u(j, j);
                for k in j + 1..n {
                    x[k] = if single {
                        (x[k] as f32 - e as f32 * u(j, k) as f32) as f64
                    } else {
                        x[k] - e * u(j, k)
                    };
                }
            }
            out.extend(grid.to_bytes(&codes));
        }
    }
    out
}

/// The blocked, parallel f32 sweep against the straightforward f64 one.
///
/// Working values rounded differently can make a row leave the reference's
/// path at a near-tie (a level decision, or a scale search choosing between
/// two nearly equal candidates), and it then differs from there on. How often
/// depends on the type: all k-quant rows of the 256-column layer agree, but
/// the importance-weighted searches of Q4_0/Q5_0 are chaotic on GPTQ-updated
/// weights (the straightforward algorithm in f32 and in f64 agree on about
/// 40% of the rows). So the test requires our rows to agree with the f64
/// reference (almost) as often as the f32 version of the same straightforward
/// algorithm does — divergence at the level of rounding noise, not of a
/// different algorithm — and the output error to equal the reference's
/// within 1%. Every block must pass ggml's validation.
#[test]
fn matches_straightforward_gptq() {
    let inp = inputs();
    let layers = [
        (
            weight("model.layers.3.self_attn.q_proj.weight"),
            hessian_of(&inp.attn, 256),
            &ALL_GRIDS[..],
        ),
        // 768 columns: three k-quant lazy blocks, so the batched updates are
        // exercised for the k-quants too.
        (
            weight("model.layers.3.mlp.down_proj.weight"),
            hessian_of(&inp.down, 768),
            &ALL_GRIDS[..6],
        ),
    ];
    for (w, h, types) in layers {
        let n = w.cols;
        let f = factor(&h);
        let imx = imatrix_from_hessian(&h);
        let u = reference_u(&h, f.damp_abs());
        let rows = w.rows;
        for &ty in types {
            for im in [Some(&imx[..]), None] {
                let got = gptq_ggml(&f, &w.data, ty, im).unwrap();
                validate_row_data(ty, got.bytes()).unwrap();
                let want = reference(&w.data, n, &u, ty, im, false);
                let single = reference(&w.data, n, &u, ty, im, true);
                let rb = ty.row_bytes(n).unwrap();
                let agree = |a: &[u8]| {
                    (0..rows)
                        .filter(|&r| a[r * rb..(r + 1) * rb] == want[r * rb..(r + 1) * rb])
                        .count()
                };
                let (ours, f32_ref) = (agree(got.bytes()), agree(&single));
                let want_w = dynapress_ggml::dequantize(ty, &want, w.data.len()).unwrap();
                let e_got = relative_output_error(&w.data, &got.dequantize(), &h);
                let e_want = relative_output_error(&w.data, &want_w, &h);
                println!(
                    "{n} cols, {ty:4}, imatrix {:5}: rows equal to the f64 reference: ours {ours}/{rows}, \
                     f32 reference {f32_ref}/{rows}; error {e_got:.5e} vs {e_want:.5e}",
                    im.is_some(),
                );
                assert!(
                    ours + rows / 20 >= f32_ref,
                    "{n} cols, {ty}: {ours}/{rows} rows match the straightforward GPTQ \
                     ({f32_ref} for its f32 version)"
                );
                if n == 256 && ty.block_size() == 256 {
                    assert_eq!(
                        ours, rows,
                        "{ty}: k-quants on 256 columns agree on every row"
                    );
                }
                assert!(
                    (e_got - e_want).abs() <= 0.01 * e_want,
                    "{ty}: output error {e_got:e} vs reference {e_want:e}"
                );
            }
        }
    }
}

/// Bytes are a pure function of the inputs: 1, 2 and 3 threads, and a row
/// count that leaves a partial chunk.
#[test]
fn independent_of_thread_count() {
    let mut r = rng(11);
    let (rows, n) = (300, 512);
    let x = correlated_inputs(&mut r, 2048, n);
    let h = hessian_of(&x, n);
    let w = normals(&mut r, rows * n, 0.05);
    let f = factor(&h);
    let imx = imatrix_from_hessian(&h);
    for ty in [
        GgmlType::Q4K,
        GgmlType::Q2K,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::IQ2XS,
        GgmlType::IQ3S,
    ] {
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| gptq_ggml(&f, &w, ty, Some(&imx)).unwrap())
        };
        let one = run(1);
        assert_eq!(one.bytes().len(), rows * ty.row_bytes(n).unwrap());
        assert_eq!(one, run(2), "{ty}: 1 vs 2 threads");
        assert_eq!(one, run(3), "{ty}: 1 vs 3 threads");
    }
}

/// A whole super-block of dead inputs gets no feedback and gives none, so its
/// bytes are ggml's; the live blocks still improve on plain quantize.
#[test]
fn dead_inputs_keep_ggml_blocks() {
    let inp = inputs();
    let w = weight("model.layers.3.mlp.down_proj.weight");
    let n = w.cols;
    let mut x = inp.down.clone();
    for t in 0..x.len() / n {
        x[t * n + 256..t * n + 512].fill(0.0);
    }
    let h = hessian_of(&x, n);
    let f = factor(&h);
    assert_eq!(f.dead_columns(), (256..512).collect::<Vec<_>>());
    // llama-quantize's imatrix is 0 on inputs that never fire; keep it positive
    // there so the dead block's scale search is not degenerate.
    let mut imx = imatrix_from_hessian(&h);
    imx[256..512].fill(1e-3);
    for ty in [GgmlType::Q4K, GgmlType::Q3K, GgmlType::Q6K] {
        let got = gptq_ggml(&f, &w.data, ty, Some(&imx)).unwrap();
        let plain = quantize(ty, &w.data, n, Some(&imx)).unwrap();
        let ts = ty.type_size();
        let rb = ty.row_bytes(n).unwrap();
        for r in 0..w.rows {
            assert_eq!(
                got.bytes()[r * rb + ts..r * rb + 2 * ts],
                plain[r * rb + ts..r * rb + 2 * ts],
                "{ty}: row {r}, dead block"
            );
        }
        let plain_w = dynapress_ggml::dequantize(ty, &plain, w.data.len()).unwrap();
        let e_plain = relative_output_error(&w.data, &plain_w, &h);
        let e_gptq = relative_output_error(&w.data, &got.dequantize(), &h);
        assert!(e_gptq < 0.9 * e_plain, "{ty}: {e_gptq:e} vs {e_plain:e}");
    }
}

#[test]
fn storage_is_the_ggml_tensor() {
    let (name, w, h) = real_layers().remove(2);
    let f = factor(&h);
    for ty in ALL_GRIDS {
        let g = gptq_ggml(&f, &w.data, ty, None).unwrap();
        assert_eq!(
            g.storage_bits(),
            8 * (w.rows * w.cols / ty.block_size() * ty.type_size()) as u64,
            "{name} {ty}"
        );
        assert_eq!(g.bits_per_weight(), ty.bits_per_weight());
        let back = GgmlQuantized::from_bytes(ty, g.rows(), g.cols(), g.bytes().to_vec()).unwrap();
        assert_eq!(back, g);
        assert_eq!(
            back.dequantize(),
            dynapress_ggml::dequantize(ty, g.bytes(), w.data.len()).unwrap()
        );
    }
    // Corrupt data is refused.
    let g = gptq_ggml(&f, &w.data, GgmlType::Q4K, None).unwrap();
    let mut short = g.bytes().to_vec();
    short.pop();
    assert!(matches!(
        GgmlQuantized::from_bytes(GgmlType::Q4K, g.rows(), g.cols(), short),
        Err(GgmlError::ByteLength { .. })
    ));
    let mut nan = g.bytes().to_vec();
    nan[144 * 3..144 * 3 + 2].copy_from_slice(&0x7e00u16.to_le_bytes()); // d of block 3 = NaN
    assert!(matches!(
        GgmlQuantized::from_bytes(GgmlType::Q4K, g.rows(), g.cols(), nan),
        Err(GgmlError::InvalidData { block: 3, .. })
    ));
    assert!(matches!(
        GgmlQuantized::from_bytes(GgmlType::Q4K, 1, 100, vec![]),
        Err(GgmlError::RowLength { .. })
    ));
}

#[test]
fn imatrix_is_the_mean_square_input() {
    let mut r = rng(3);
    let x = correlated_inputs(&mut r, 100, 32);
    let h = hessian_of(&x, 32);
    let imx = imatrix_from_hessian(&h);
    for j in 0..32 {
        let ms: f64 = (0..100)
            .map(|t| (x[t * 32 + j] as f64).powi(2))
            .sum::<f64>()
            / 100.0;
        assert!((imx[j] as f64 - ms).abs() <= 1e-5 * ms, "column {j}");
    }
    assert_eq!(imatrix_from_hessian(&Hessian::new(4)), vec![1.0; 4]);
}

#[test]
fn bad_inputs_are_errors() {
    let mut r = rng(9);
    let n = 256;
    let x = correlated_inputs(&mut r, 512, n);
    let h = hessian_of(&x, n);
    let f = factor(&h);
    let w = normals(&mut r, 4 * n, 0.05);

    let ao = GptqFactor::new(
        &h,
        &FactorParams {
            act_order: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        gptq_ggml(&ao, &w, GgmlType::Q4K, None),
        Err(GgmlGptqError::ActOrder)
    );
    assert_eq!(
        gptq_ggml(&f, &w[..n + 3], GgmlType::Q4K, None),
        Err(GgmlGptqError::Shape {
            len: n + 3,
            cols: n
        })
    );
    assert!(matches!(
        gptq_ggml(&f, &w, GgmlType::F16, None),
        Err(GgmlGptqError::Ggml(GgmlError::NotQuantized { .. }))
    ));
    let mut bad = w.clone();
    bad[2 * n + 17] = f32::NAN;
    assert!(matches!(
        gptq_ggml(&f, &bad, GgmlType::Q4K, None),
        Err(GgmlGptqError::Ggml(GgmlError::NonFinite {
            row: 2,
            col: 17,
            ..
        }))
    ));
    assert!(matches!(
        gptq_ggml(&f, &w, GgmlType::Q4K, Some(&[1.0; 10])),
        Err(GgmlGptqError::Ggml(GgmlError::ImatrixLength {
            got: 10,
            ..
        }))
    ));
    let mut imx = vec![1.0f32; n];
    imx[5] = f32::INFINITY;
    assert!(matches!(
        gptq_ggml(&f, &w, GgmlType::Q4K, Some(&imx)),
        Err(GgmlGptqError::Ggml(GgmlError::ImatrixNotFinite {
            index: 5,
            ..
        }))
    ));
    // 96 columns: not a whole super-block; the error names the fallback.
    let f96 = factor(&hessian_of(&correlated_inputs(&mut r, 256, 96), 96));
    let w96 = normals(&mut r, 2 * 96, 0.05);
    assert!(matches!(
        gptq_ggml(&f96, &w96, GgmlType::Q4K, None),
        Err(GgmlGptqError::Ggml(GgmlError::RowLength {
            fallback: GgmlType::Q5_0,
            ..
        }))
    ));
    assert!(gptq_ggml(&f96, &w96, GgmlType::Q5_0, None).is_ok());
    // Weights whose f16 scale overflows, as ggml refuses them.
    let huge: Vec<f32> = w.iter().map(|v| v * 1e9).collect();
    assert!(matches!(
        gptq_ggml(&f, &huge, GgmlType::Q4_0, None),
        Err(GgmlGptqError::Ggml(GgmlError::ScaleOverflow { row: 0, .. }))
    ));
    // No rows: an empty tensor.
    let empty = gptq_ggml(&f, &[], GgmlType::Q6K, None).unwrap();
    assert_eq!((empty.rows(), empty.storage_bits()), (0, 0));
}

/// A gptq-kquant database with i-quant levels: every i-quant gets GPTQ and a
/// `gptq-` level — IQ4_XS in its per-weight grid, the lattice i-quants
/// (IQ2_*, IQ3_*) group by group in their codebooks — beating ggml's encoder
/// on correlated inputs.
#[test]
fn gptq_kquant_levels_of_the_i_quants() {
    use dynapress_compress::{Method, MethodSpec, Variant, compress_layer};
    let spec = MethodSpec {
        method: Method::GptqKquant,
        types: ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_XS"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    let levels = spec.levels().unwrap();
    let names: Vec<&str> = levels.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "gptq-IQ2_XXS",
            "gptq-IQ2_XS",
            "gptq-IQ2_S",
            "gptq-IQ3_XXS",
            "gptq-IQ3_S",
            "gptq-IQ4_XS"
        ]
    );
    let l = layer(11, 32, 256, 1024, &[]);
    let f = factor(&l.h);
    let imatrix = imatrix_from_hessian(&l.h);
    let err = |bytes: &[u8], ty: GgmlType| {
        let deq = dynapress_ggml::dequantize(ty, bytes, l.w.len()).unwrap();
        relative_output_error(&l.w, &deq, &l.h)
    };
    for level in &levels {
        let ty = level.ggml.unwrap();
        let Variant::Ggml(g) =
            compress_layer(&l.w, &l.h, Some(&f), Some(&imatrix), &spec, level).unwrap()
        else {
            panic!("{ty}: not ggml blocks")
        };
        let plain = quantize(ty, &l.w, l.n, Some(&imatrix)).unwrap();
        let (e_gptq, e_plain) = (err(&g.bytes, ty), err(&plain, ty));
        assert!(
            e_gptq < 0.9 * e_plain,
            "{ty}: GPTQ {e_gptq} vs ggml {e_plain}"
        );
    }
}
