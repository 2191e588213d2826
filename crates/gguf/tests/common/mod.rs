//! Shared test helpers: locating the optional reference tools (gguf-py,
//! llama.cpp) and writing the bundled demo model as GGUF.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use dynapress_gguf::model::{self, gguf_tensor_name};
use dynapress_gguf::{
    GgmlType, GgufWriter, LlamaHparams, TensorSpec, TokenizerMetadata, model_metadata,
};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn fixture_dir() -> PathBuf {
    repo_root().join("assets/demo-model")
}

/// With `DYNAPRESS_REQUIRE_INTEROP=1` a missing reference tool fails the test
/// instead of skipping it (for CI, where `.ci/run` provides the tools).
fn missing(what: &str) -> Option<PathBuf> {
    if std::env::var("DYNAPRESS_REQUIRE_INTEROP").is_ok_and(|v| v == "1") {
        panic!("DYNAPRESS_REQUIRE_INTEROP=1 but {what}");
    }
    eprintln!("skipped: {what}");
    None
}

/// The directory with llama.cpp's tools: `$DYNAPRESS_LLAMA_CPP_BIN`, else
/// what `scripts/build-llama-cpp.sh --print-dir` names, if it was built.
pub fn llama_cpp_bin() -> Option<PathBuf> {
    let dir = match std::env::var_os("DYNAPRESS_LLAMA_CPP_BIN") {
        Some(d) => PathBuf::from(d),
        None => {
            let out = Command::new("bash")
                .arg(repo_root().join("scripts/build-llama-cpp.sh"))
                .arg("--print-dir")
                .output()
                .ok()?;
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
    };
    let ok = [
        "llama-perplexity",
        "llama-tokenize",
        "llama-quantize",
        "llama-imatrix",
    ]
    .iter()
    .all(|t| dir.join(t).is_file());
    if ok {
        Some(dir)
    } else {
        missing(&format!(
            "llama.cpp tools not found in {} (run scripts/build-llama-cpp.sh or set DYNAPRESS_LLAMA_CPP_BIN)",
            dir.display()
        ))
    }
}

/// A Python interpreter with gguf-py (`pip install gguf numpy`):
/// `$DYNAPRESS_GGUF_PYTHON`, else the venv `.ci/run` makes
/// (`$DYNAPRESS_CACHE/venv-ci`, default `$HOME/.cache/dynapress/venv-ci`) if present.
pub fn gguf_python() -> Option<PathBuf> {
    let py = std::env::var_os("DYNAPRESS_GGUF_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("DYNAPRESS_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                        .join(".cache/dynapress")
                });
            cache.join("venv-ci/bin/python")
        });
    let ok = Command::new(&py)
        .args(["-c", "import gguf, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Some(py)
    } else {
        missing(&format!(
            "no Python with gguf-py at {} (set DYNAPRESS_GGUF_PYTHON)",
            py.display()
        ))
    }
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn bf16_bytes_to_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(2)
        .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
        .collect()
}

/// Writes the demo model (bf16 safetensors) as GGUF the way the lead's export
/// will: llama.cpp names, Q/K rows permuted for `llama`, 1-D tensors in F32,
/// 2-D tensors in `matrix_type` (F32 or BF16, converted exactly).
pub fn write_fixture_gguf(path: &Path, matrix_type: GgmlType) {
    let dir = fixture_dir();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let hp = LlamaHparams::from_hf_config(&config).unwrap();
    let tok = TokenizerMetadata::from_hf_dir(&dir, Some(hp.vocab_size as usize)).unwrap();
    let md = model_metadata(
        "dynapress demo",
        &hp,
        &tok,
        model::file_type_for(matrix_type),
    );

    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut items = Vec::new();
    for (hf_name, view) in st.tensors() {
        assert_eq!(view.dtype(), safetensors::Dtype::BF16, "{hf_name}");
        let Some(name) = gguf_tensor_name(&hf_name).unwrap() else {
            continue;
        };
        let shape = view.shape().to_vec();
        let mut raw = view.data().to_vec();
        if let Some(n_head) = hp.qk_permute_heads(&name) {
            raw = model::permute_qk_rows(&raw, shape[0], n_head).unwrap();
        }
        let (ty, data) = if shape.len() == 1 || matrix_type == GgmlType::F32 {
            (GgmlType::F32, f32_bytes(&bf16_bytes_to_f32(&raw)))
        } else {
            assert_eq!(matrix_type, GgmlType::BF16);
            (GgmlType::BF16, raw)
        };
        items.push((TensorSpec::from_shape(name, ty, &shape), data));
    }
    items.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let mut w =
        GgufWriter::create(path, &md, items.iter().map(|(s, _)| s.clone()).collect()).unwrap();
    for (s, d) in &items {
        w.write_tensor(&s.name, d).unwrap();
    }
    w.finish().unwrap();
}
