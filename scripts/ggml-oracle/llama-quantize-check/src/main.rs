//! End-to-end check against llama-quantize: writes the demo model as a BF16
//! GGUF (llama.cpp names, Q/K rows permuted, as the export does) and an imatrix
//! GGUF, runs `llama-quantize --pure TYPE [--imatrix]` for the ten block types
//! and the i-quants IQ4_NL, IQ4_XS, IQ3_S, IQ3_XXS, IQ2_S, IQ2_XS, IQ2_XXS,
//! and compares every quantized tensor with `dynapress_ggml::quantize` of the
//! same weights and the imatrix vector llama-quantize derives (Σx² / count, f32).
//! Exits non-zero on any difference. Without an imatrix llama-quantize refuses
//! IQ3_XXS, IQ2_S, IQ2_XS, IQ2_XXS (`tensor_requires_imatrix`); of those we
//! (like ggml) refuse IQ2_XS and IQ2_XXS only. Optional argument: a
//! comma-separated list of types to check.
//!
//! llama.cpp's tools: `$DYNAPRESS_LLAMA_CPP_BIN`, else the default directory of
//! scripts/build-llama-cpp.sh.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use dynapress_ggml::{Error, GgmlType, quantize};
use dynapress_gguf::model::{self, gguf_tensor_name};
use dynapress_gguf::{
    GgufFile, GgufWriter, Imatrix, ImatrixEntry, LlamaHparams, TensorSpec, TokenizerMetadata,
    model_metadata,
};

fn main() {
    let bin: PathBuf = std::env::var_os("DYNAPRESS_LLAMA_CPP_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("DYNAPRESS_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                        .join(".cache/dynapress")
                });
            cache.join("llama.cpp-0.3.36/bin")
        });
    assert!(
        bin.join("llama-quantize").is_file(),
        "no llama-quantize in {} (run scripts/build-llama-cpp.sh)",
        bin.display()
    );
    let dir = &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../assets/demo-model");
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let hp = LlamaHparams::from_hf_config(&config).unwrap();
    let tok = TokenizerMetadata::from_hf_dir(dir, Some(hp.vocab_size as usize)).unwrap();
    let md = model_metadata(
        "dynapress demo",
        &hp,
        &tok,
        model::file_type_for(GgmlType::BF16),
    );
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut items = Vec::new();
    for (hf_name, view) in st.tensors() {
        let Some(name) = gguf_tensor_name(&hf_name).unwrap() else {
            continue;
        };
        let shape = view.shape().to_vec();
        let mut raw = view.data().to_vec();
        if let Some(n_head) = hp.qk_permute_heads(&name) {
            raw = model::permute_qk_rows(&raw, shape[0], n_head).unwrap();
        }
        let (ty, data) = if shape.len() == 1 {
            let f: Vec<f32> = raw
                .chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                .collect();
            (
                GgmlType::F32,
                f.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        } else {
            (GgmlType::BF16, raw)
        };
        items.push((TensorSpec::from_shape(name, ty, &shape), data));
    }
    items.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let src_path = work.join("demo-bf16.gguf");
    let mut w = GgufWriter::create(
        &src_path,
        &md,
        items.iter().map(|(s, _)| s.clone()).collect(),
    )
    .unwrap();
    for (s, d) in &items {
        w.write_tensor(&s.name, d).unwrap();
    }
    w.finish().unwrap();

    // An imatrix for every 2-D weight except the token embedding (as llama-imatrix
    // would collect): Σx² over 512 pseudo-random tokens with spread column scales.
    let mut entries = BTreeMap::new();
    let mut s: u64 = 99;
    let mut rnd = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    for (spec, _) in &items {
        if spec.dims.len() != 2 || spec.name == "token_embd.weight" {
            continue;
        }
        let n_in = spec.dims[0] as usize;
        let sums: Vec<f32> = (0..n_in)
            .map(|_| {
                let sc = (4.0 * (rnd() - 0.5)).exp();
                (512.0 * sc * sc * (0.5 + rnd())) as f32
            })
            .collect();
        entries.insert(spec.name.clone(), ImatrixEntry::new(sums, 512.0));
    }
    let im = Imatrix {
        entries,
        datasets: vec!["synthetic".into()],
        chunk_count: 1,
        chunk_size: 512,
    };
    let im_path = work.join("imatrix.gguf");
    im.write_gguf(&im_path).unwrap();

    let src = GgufFile::open(&src_path).unwrap();
    let mut failures = 0;
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
        GgmlType::IQ4NL,
        GgmlType::IQ4XS,
        GgmlType::IQ3S,
        GgmlType::IQ3XXS,
        GgmlType::IQ2S,
        GgmlType::IQ2XS,
        GgmlType::IQ2XXS,
    ];
    let only: Option<Vec<GgmlType>> = std::env::args()
        .nth(1)
        .map(|a| a.split(',').filter_map(GgmlType::from_name).collect());
    for ty in types {
        if only.as_ref().is_some_and(|o| !o.contains(&ty)) {
            continue;
        }
        for with_im in [false, true] {
            let out = work.join(format!("out-{}-{}.gguf", ty.name(), with_im));
            let mut cmd = Command::new(bin.join("llama-quantize"));
            cmd.arg("--pure");
            if with_im {
                cmd.arg("--imatrix").arg(&im_path);
            }
            if with_im && ty.requires_imatrix() {
                // The imatrix has no entry for token_embd, and ggml cannot
                // encode IQ2_XS/IQ2_XXS without one (llama-quantize would abort).
                cmd.args(["--token-embedding-type", "q8_0"]);
            }
            // llama-quantize's file type whose default tensor type is `ty`:
            // the IQ2_S ftype means IQ2_XS tensors, IQ2_M means IQ2_S.
            let ftype = if ty == GgmlType::IQ2S {
                "IQ2_M"
            } else {
                ty.name()
            };
            cmd.arg(&src_path).arg(&out).arg(ftype).arg("2");
            let o = cmd.output().unwrap();
            if !with_im && ty.llama_quantize_requires_imatrix() {
                let x = src.tensor_f32("blk.0.ffn_up.weight").unwrap();
                let ours = quantize(ty, &x, 256, None);
                let ok = !o.status.success()
                    && (ours == Err(Error::ImatrixRequired { ty })) == ty.requires_imatrix();
                println!(
                    "{ty} imatrix=false: refused by llama-quantize: {}; by us: {}",
                    !o.status.success(),
                    ours.is_err()
                );
                failures += usize::from(!ok);
                continue;
            }
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let q = GgufFile::open(&out).unwrap();
            let (mut same, mut total, mut other_types) = (0, 0, Vec::new());
            for info in q.tensors() {
                if info.ggml_type != ty {
                    if info.shape().len() == 2 {
                        other_types.push(format!("{}:{}", info.name, info.ggml_type));
                    }
                    continue;
                }
                total += 1;
                let x = src.tensor_f32(&info.name).unwrap();
                let ne0 = info.dims[0] as usize;
                let imv = if with_im {
                    im.entries.get(&info.name).map(|e| e.mean_squares())
                } else {
                    None
                };
                let ours = quantize(ty, &x, ne0, imv.as_deref()).unwrap();
                if ours == q.tensor_bytes(&info.name).unwrap() {
                    same += 1;
                } else {
                    println!("  MISMATCH {} {}", info.name, ty);
                    failures += 1;
                }
            }
            println!(
                "{} imatrix={}: {}/{} quantized tensors identical; not {}: {:?}",
                ty, with_im, same, total, ty, other_types
            );
        }
    }
    if failures > 0 {
        eprintln!("{failures} tensors differ");
        std::process::exit(1);
    }
    println!("all identical");
}
