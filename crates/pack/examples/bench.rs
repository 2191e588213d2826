//! Benchmark driver for `scripts/bench_pack.sh`.
//!
//! ```text
//! bench measure FILE [--threads 1,2] [--reps 3] [--chunk BYTES]
//!     Packs FILE in memory and reads it back; prints one JSON line per
//!     thread count with the container size and the best-of-reps wall
//!     times of packing (pack_files into a Vec) and of unpacking
//!     (PackedReader::from_bytes + read_file, which allocates its output;
//!     and read_file_into a reused buffer). Verifies the round trip.
//! bench analyze FILE
//!     Entropy of a bf16 safetensors file's planes under the models the
//!     format considers (ideal code lengths, no table costs) next to the
//!     size dynapress actually writes.
//! bench synth FROM OUT [--scale 4] [--seed 1]
//!     Writes a larger bf16 safetensors file with the statistics of FROM:
//!     every 2-D tensor gets `scale` times the rows and columns, every 1-D
//!     tensor `scale` times the length, and each element is an independent
//!     draw from the source tensor's own values (its exact empirical
//!     distribution of 16-bit patterns).
//! ```

use std::io::Cursor;
use std::time::Instant;

use dynapress_pack::{InputFile, PackOptions, PackedReader, pack_files};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str, default: &str| -> String {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| default.to_string())
    };
    match args.first().map(String::as_str) {
        Some("measure") => {
            let file = args.get(1).expect("FILE");
            let threads: Vec<usize> = flag("--threads", "1,2")
                .split(',')
                .map(|t| t.parse().expect("thread count"))
                .collect();
            let reps: usize = flag("--reps", "3").parse().expect("reps");
            let chunk: usize = flag("--chunk", &(1 << 20).to_string())
                .parse()
                .expect("chunk");
            measure(file, &threads, reps, chunk);
        }
        Some("analyze") => analyze(args.get(1).expect("FILE")),
        Some("synth") => {
            let from = args.get(1).expect("FROM");
            let out = args.get(2).expect("OUT");
            let scale: usize = flag("--scale", "4").parse().expect("scale");
            let seed: u64 = flag("--seed", "1").parse().expect("seed");
            synth(from, out, scale, seed);
        }
        _ => {
            eprintln!(
                "usage: bench measure FILE [--threads 1,2] [--reps 3] [--chunk BYTES]\n       bench synth FROM OUT [--scale 4] [--seed 1]"
            );
            std::process::exit(2);
        }
    }
}

fn measure(file: &str, threads: &[usize], reps: usize, chunk: usize) {
    let data = std::fs::read(file).expect("read input");
    let name = std::path::Path::new(file)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let inputs = [InputFile {
        name: &name,
        data: &data,
    }];
    for &t in threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .unwrap();
        let opts = PackOptions {
            threads: 0, // the pool installed below
            chunk_size: chunk,
            progress: None,
            overwrite: true,
        };
        if std::env::var_os("BENCH_PROFILE_ENCODE").is_some() {
            // Profiling aid: only pack.
            let t0 = Instant::now();
            for _ in 0..reps {
                let mut w = Cursor::new(Vec::with_capacity(data.len()));
                pool.install(|| pack_files(&inputs, &mut w, "bench.dpk".as_ref(), &opts))
                    .expect("pack");
            }
            eprintln!(
                "encode-only: {:.3} ms per pack",
                t0.elapsed().as_secs_f64() * 1e3 / reps as f64
            );
            continue;
        }
        if std::env::var_os("BENCH_PROFILE_DECODE").is_some() {
            // Profiling aid: pack once, then only decode.
            let mut w = Cursor::new(Vec::new());
            pool.install(|| pack_files(&inputs, &mut w, "bench.dpk".as_ref(), &opts))
                .expect("pack");
            let r = PackedReader::from_bytes(w.into_inner(), "bench.dpk").expect("open");
            let mut buf = vec![0u8; data.len()];
            let t0 = Instant::now();
            for _ in 0..reps {
                pool.install(|| r.read_file_into(&name, &mut buf))
                    .expect("read");
            }
            eprintln!(
                "decode-only: {:.3} ms per read",
                t0.elapsed().as_secs_f64() * 1e3 / reps as f64
            );
            continue;
        }
        let (mut best_c, mut best_d, mut best_di) = (f64::MAX, f64::MAX, f64::MAX);
        let mut packed = Vec::new();
        let mut buf = vec![0u8; data.len()];
        for _ in 0..reps {
            let mut w = Cursor::new(Vec::with_capacity(data.len()));
            let t0 = Instant::now();
            pool.install(|| pack_files(&inputs, &mut w, "bench.dpk".as_ref(), &opts))
                .expect("pack");
            best_c = best_c.min(t0.elapsed().as_secs_f64());
            packed = w.into_inner();

            let copy = packed.clone();
            let t0 = Instant::now();
            let out = pool.install(|| {
                let r = PackedReader::from_bytes(copy, "bench.dpk").expect("open");
                r.read_file(&name).expect("read")
            });
            best_d = best_d.min(t0.elapsed().as_secs_f64());
            assert!(out == data, "round trip mismatch");
            drop(out);

            let copy = packed.clone();
            let t0 = Instant::now();
            pool.install(|| {
                let r = PackedReader::from_bytes(copy, "bench.dpk").expect("open");
                r.read_file_into(&name, &mut buf).expect("read")
            });
            best_di = best_di.min(t0.elapsed().as_secs_f64());
            assert!(buf == data, "round trip mismatch");
        }
        println!(
            "{{\"tool\":\"dynapress\",\"threads\":{t},\"bytes\":{},\"packed\":{},\"comp_s\":{best_c},\"decomp_s\":{best_d},\"decomp_into_s\":{best_di},\"roundtrip\":true}}",
            data.len(),
            packed.len()
        );
    }
}

fn synth(from: &str, out: &str, scale: usize, seed: u64) {
    let src = std::fs::read(from).expect("read source");
    let n = u64::from_le_bytes(src[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&src[8..8 + n]).expect("header");
    let base = 8 + n;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut tensors: Vec<(String, Vec<u64>, usize, usize)> = header
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            assert_eq!(v["dtype"], "BF16", "synth expects a bf16 source");
            let shape: Vec<u64> = v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            let o = v["data_offsets"].as_array().unwrap();
            (
                k.clone(),
                shape,
                o[0].as_u64().unwrap() as usize,
                o[1].as_u64().unwrap() as usize,
            )
        })
        .collect();
    tensors.sort_by_key(|t| t.2);
    let mut json = serde_json::Map::new();
    let mut body: Vec<u8> = Vec::new();
    for (name, shape, a, b) in &tensors {
        let vals: Vec<u16> = src[base + a..base + b]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        let new_shape: Vec<u64> = shape.iter().map(|d| d * scale as u64).collect();
        let count: u64 = new_shape.iter().product();
        let start = body.len();
        body.reserve(2 * count as usize);
        for _ in 0..count {
            let v = vals[(rng.next_u64() % vals.len() as u64) as usize];
            body.extend_from_slice(&v.to_le_bytes());
        }
        json.insert(
            name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": new_shape, "data_offsets": [start, body.len()]}),
        );
    }
    let mut hdr = serde_json::to_vec(&serde_json::Value::Object(json)).unwrap();
    while !(8 + hdr.len()).is_multiple_of(8) {
        hdr.push(b' ');
    }
    let mut file = (hdr.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&hdr);
    file.extend_from_slice(&body);
    let tmp = format!("{out}.tmp");
    std::fs::write(&tmp, &file).expect("write");
    std::fs::rename(&tmp, out).expect("rename");
    eprintln!(
        "wrote {out}: {} bytes, {} tensors",
        file.len(),
        tensors.len()
    );
}

/// Empirical entropy, in bits, of a histogram: `sum c log2(total / c)`.
fn entropy_bits(counts: &[u64]) -> f64 {
    let total: u64 = counts.iter().sum();
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| c as f64 * (total as f64 / c as f64).log2())
        .sum()
}

fn analyze(file: &str) {
    let data = std::fs::read(file).expect("read input");
    let n = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&data[8..8 + n]).expect("header");
    let base = 8 + n;
    let mut exp_all = vec![0u64; 256];
    let mut sm_all = vec![0u64; 256];
    let (mut planes_pt, mut order1_pt, mut whole16_pt) = (0.0, 0.0, 0.0);
    let mut joint_pt = [0.0f64; 5];
    let mut best_k_pt = 0.0;
    let mut weights = 0u64;
    for v in header.values().filter(|v| v.get("dtype").is_some()) {
        assert_eq!(v["dtype"], "BF16", "analyze expects bf16 tensors");
        let o = v["data_offsets"].as_array().unwrap();
        let (a, b) = (
            o[0].as_u64().unwrap() as usize,
            o[1].as_u64().unwrap() as usize,
        );
        let w: Vec<u16> = data[base + a..base + b]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        weights += w.len() as u64;
        let (mut e, mut sm, mut w16) = (vec![0u64; 256], vec![0u64; 256], vec![0u64; 65536]);
        let mut pair = vec![0u64; 65536];
        let mut prev = 0usize;
        let mut joint: Vec<Vec<u64>> = (0..5).map(|k| vec![0u64; 1 << (8 + k)]).collect();
        for &x in &w {
            let exp = ((x >> 7) & 0xff) as usize;
            e[exp] += 1;
            sm[((x >> 8) & 0x80 | x & 0x7f) as usize] += 1;
            w16[x as usize] += 1;
            pair[prev << 8 | exp] += 1;
            prev = exp;
            for (k, j) in joint.iter_mut().enumerate() {
                j[((x >> (7 - k)) & ((1 << (8 + k)) - 1)) as usize] += 1;
            }
        }
        for i in 0..256 {
            exp_all[i] += e[i];
            sm_all[i] += sm[i];
        }
        planes_pt += entropy_bits(&e) + entropy_bits(&sm);
        // H(exp | previous exp) = H(prev, exp) - H(prev).
        let prev_counts: Vec<u64> = (0..256)
            .map(|p| pair[p << 8..(p + 1) << 8].iter().sum())
            .collect();
        order1_pt += entropy_bits(&pair) - entropy_bits(&prev_counts) + entropy_bits(&sm);
        whole16_pt += entropy_bits(&w16);
        let costs: Vec<f64> = joint
            .iter()
            .enumerate()
            .map(|(k, j)| entropy_bits(j) + ((8 - k) * w.len()) as f64)
            .collect();
        for k in 0..5 {
            joint_pt[k] += costs[k];
        }
        best_k_pt += costs.iter().cloned().fold(f64::INFINITY, f64::min);
    }
    let size = data.len() as f64 * 8.0;
    let pct = |bits: f64| 100.0 * (bits + 8.0 * base as f64) / size;
    println!(
        "file {file}: {} bytes, {weights} bf16 weights, header {base} bytes (counted raw)",
        data.len()
    );
    println!("ideal sizes (% of file), no table or container costs:");
    println!(
        "  file-wide order-0 planes (exponent, sign+mantissa)   {:.2} %  (exponent {:.3} b, sign+mantissa {:.3} b per weight)",
        pct(entropy_bits(&exp_all) + entropy_bits(&sm_all)),
        entropy_bits(&exp_all) / weights as f64,
        entropy_bits(&sm_all) / weights as f64
    );
    println!(
        "  per-tensor order-0 planes                              {:.2} %",
        pct(planes_pt)
    );
    println!(
        "  per-tensor exponent | previous exponent, sm order-0    {:.2} %",
        pct(order1_pt)
    );
    println!(
        "  per-tensor whole 16-bit symbols                        {:.2} %",
        pct(whole16_pt)
    );
    for (k, c) in joint_pt.iter().enumerate() {
        println!(
            "  per-tensor head (exponent + {k} mantissa bits) + raw tail {:.2} %",
            pct(*c)
        );
    }
    println!(
        "  per-tensor head with the best k per tensor            {:.2} %",
        pct(best_k_pt)
    );
    let mut w = Cursor::new(Vec::new());
    let name = std::path::Path::new(file)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let rep = pack_files(
        &[InputFile {
            name: &name,
            data: &data,
        }],
        &mut w,
        "x".as_ref(),
        &PackOptions::default(),
    )
    .expect("pack");
    println!(
        "dynapress container: {} bytes = {:.2} %",
        rep.output_bytes,
        100.0 * rep.ratio()
    );
}
