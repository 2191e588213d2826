//! gguf-py (the GGUF library from PyPI, `pip install gguf`) as the referee:
//! it must read our files — every metadata value and tensor shape — and its
//! dequantization of every tensor type must equal ours bit for bit. Runs when a
//! Python with gguf-py is found (`DYNAPRESS_GGUF_PYTHON`), else skips.

mod common;

use std::process::Command;

use dynapress_gguf::reader::decode_float;
use dynapress_gguf::{Array, GgmlType, Metadata, TensorSpec, Value, write_gguf};
use rand::{RngExt, SeedableRng};
use serde_json::Value as Json;

const SCRIPT: &str = r#"
import json, sys
import numpy as np
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize

path, out = sys.argv[1], sys.argv[2]
r = GGUFReader(path)
fields = {}
for name, f in r.fields.items():
    if name.startswith("GGUF."):
        continue
    main = f.types[0]
    if main == GGUFValueType.ARRAY:
        # gguf-py flattens nested arrays; report the flat leaves.
        leaf = f.types[-1]
        if leaf == GGUFValueType.STRING:
            val = f.contents()
        else:
            val = [f.parts[i].tolist()[0] for i in f.data]
        fields[name] = {"type": "array", "leaf": leaf.name, "value": val}
    else:
        val = f.contents()
        if isinstance(val, float) and not np.isfinite(val):
            val = repr(val)
        fields[name] = {"type": main.name, "value": val}
tensors = []
for i, t in enumerate(r.tensors):
    deq = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
    fname = f"{out}/t{i}.f32"
    deq.tofile(fname)
    tensors.append({"name": t.name, "shape": [int(x) for x in t.shape], "type": t.tensor_type.name,
                    "n_elements": int(t.n_elements), "n_bytes": int(t.n_bytes), "file": fname})
json.dump({"alignment": int(r.alignment), "fields": fields, "tensors": tensors}, open(f"{out}/dump.json", "w"))
"#;

fn run_gguf_py(path: &std::path::Path, out: &std::path::Path) -> Option<Json> {
    let py = common::gguf_python()?;
    let script = out.join("dump.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let o = Command::new(py)
        .arg(&script)
        .arg(path)
        .arg(out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "gguf-py failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    Some(serde_json::from_str(&std::fs::read_to_string(out.join("dump.json")).unwrap()).unwrap())
}

fn read_f32(path: &str) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn gguf_py_reads_metadata_and_dequantizes_like_us() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("interop.gguf");

    let mut md = Metadata::new();
    md.set("general.architecture", "llama");
    md.set("general.alignment", 64u32);
    md.set("t.u8", 7u8);
    md.set("t.i8", -7i8);
    md.set("t.u16", 60000u16);
    md.set("t.i16", -30000i16);
    md.set("t.u32", 4_000_000_000u32);
    md.set("t.i32", -2_000_000_000i32);
    md.set("t.f32", 1e-5f32);
    md.set("t.bool", true);
    md.set("t.str", "naïve ✓ 🚀");
    md.set("t.u64", u64::MAX);
    md.set("t.i64", i64::MIN);
    md.set("t.f64", std::f64::consts::E);
    md.set(
        "a.str",
        vec!["Ġthe".to_string(), String::new(), "<|endoftext|>".into()],
    );
    md.set("a.i32", vec![1i32, -2, 3]);
    md.set("a.f32", vec![0.1f32, -3.5]);
    md.set("a.bool", vec![true, false]);
    md.set(
        "a.nested",
        vec![Array::I32(vec![1, 2]), Array::I32(vec![3])],
    );

    // Tensors: floats and every quantized type, from seeded random weights
    // quantized by dynapress-ggml.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut items: Vec<(TensorSpec, Vec<u8>)> = Vec::new();
    for ty in GgmlType::ALL {
        let (rows, cols) = (3usize, 512usize);
        let w: Vec<f32> = (0..rows * cols)
            .map(|_| (rng.random::<f32>() - 0.5) * 0.2)
            .collect();
        // ggml refuses some i-quants without an importance vector.
        let ones = vec![1.0f32; cols];
        let imatrix = ty.requires_imatrix().then_some(ones.as_slice());
        let data = dynapress_ggml::quantize(ty, &w, cols, imatrix).unwrap();
        items.push((
            TensorSpec::from_shape(format!("w.{}", ty.name()), ty, &[rows, cols]),
            data,
        ));
    }
    write_gguf(
        &path,
        &md,
        items.iter().map(|(s, d)| (s.clone(), d.as_slice())),
    )
    .unwrap();

    let Some(dump) = run_gguf_py(&path, dir.path()) else {
        return;
    };
    assert_eq!(dump["alignment"], 64);
    let fields = dump["fields"].as_object().unwrap();
    assert_eq!(fields.len(), md.len());
    for (k, v) in md.iter() {
        let f = &fields[k];
        let got = &f["value"];
        let ok = match v {
            Value::U8(x) => got.as_u64() == Some((*x).into()),
            Value::I8(x) => got.as_i64() == Some((*x).into()),
            Value::U16(x) => got.as_u64() == Some((*x).into()),
            Value::I16(x) => got.as_i64() == Some((*x).into()),
            Value::U32(x) => got.as_u64() == Some((*x).into()),
            Value::I32(x) => got.as_i64() == Some((*x).into()),
            Value::U64(x) => got.as_u64() == Some(*x),
            Value::I64(x) => got.as_i64() == Some(*x),
            Value::F32(x) => got.as_f64() == Some(f64::from(*x)),
            Value::F64(x) => got.as_f64() == Some(*x),
            Value::Bool(x) => got.as_bool() == Some(*x),
            Value::String(s) => got.as_str() == Some(s.as_str()),
            Value::Array(Array::String(v)) => {
                got.as_array()
                    .unwrap()
                    .iter()
                    .map(|j| j.as_str().unwrap())
                    .collect::<Vec<_>>()
                    == *v
            }
            Value::Array(Array::I32(v)) => {
                got.as_array()
                    .unwrap()
                    .iter()
                    .map(|j| j.as_i64().unwrap())
                    .collect::<Vec<_>>()
                    == v.iter().map(|&x| i64::from(x)).collect::<Vec<_>>()
            }
            Value::Array(Array::F32(v)) => {
                got.as_array()
                    .unwrap()
                    .iter()
                    .map(|j| j.as_f64().unwrap())
                    .collect::<Vec<_>>()
                    == v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>()
            }
            Value::Array(Array::Bool(v)) => {
                got.as_array()
                    .unwrap()
                    .iter()
                    .map(|j| j.as_bool().unwrap())
                    .collect::<Vec<_>>()
                    == *v
            }
            // Nested: gguf-py flattens to the leaves.
            Value::Array(Array::Array(_)) => {
                got.as_array()
                    .unwrap()
                    .iter()
                    .map(|j| j.as_i64().unwrap())
                    .collect::<Vec<_>>()
                    == [1, 2, 3]
            }
            other => panic!("untested value {other:?}"),
        };
        assert!(ok, "{k}: ours {v:?}, gguf-py {f}");
    }

    let tensors = dump["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), items.len());
    for ((spec, data), t) in items.iter().zip(tensors) {
        assert_eq!(t["name"], spec.name.as_str());
        assert_eq!(t["type"], spec.ggml_type.name());
        let shape: Vec<u64> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(shape, spec.dims, "gguf-py reports ggml-order dims");
        assert_eq!(t["n_bytes"].as_u64().unwrap(), data.len() as u64);
        let n = t["n_elements"].as_u64().unwrap() as usize;
        let theirs = read_f32(t["file"].as_str().unwrap());
        let ours = match decode_float(data, spec.ggml_type) {
            Some(v) => v,
            None => dynapress_ggml::dequantize(spec.ggml_type, data, n).unwrap(),
        };
        assert_eq!(ours.len(), theirs.len(), "{}", spec.name);
        let mismatches = ours
            .iter()
            .zip(&theirs)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            mismatches, 0,
            "{}: {mismatches} of {n} values differ from gguf-py",
            spec.name
        );
    }
}

#[test]
fn gguf_py_reads_the_demo_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("demo-bf16.gguf");
    common::write_fixture_gguf(&path, GgmlType::BF16);
    let Some(dump) = run_gguf_py(&path, dir.path()) else {
        return;
    };
    let fields = dump["fields"].as_object().unwrap();
    assert_eq!(fields["general.architecture"]["value"], "llama");
    assert_eq!(fields["llama.block_count"]["value"], 8);
    assert_eq!(fields["llama.attention.head_count_kv"]["value"], 2);
    assert_eq!(fields["tokenizer.ggml.pre"]["value"], "gpt-2");
    assert_eq!(
        fields["tokenizer.ggml.tokens"]["value"]
            .as_array()
            .unwrap()
            .len(),
        4096
    );
    // Tensor values: gguf-py's BF16 decoding equals the checkpoint's bf16
    // weights after our Q permutation.
    let t = dump["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "blk.3.attn_q.weight")
        .unwrap();
    assert_eq!(t["shape"], serde_json::json!([256, 256]));
    let theirs = read_f32(t["file"].as_str().unwrap());
    let st_bytes = std::fs::read(common::fixture_dir().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
    let hf = st.tensor("model.layers.3.self_attn.q_proj.weight").unwrap();
    let permuted = dynapress_gguf::model::permute_qk_rows(hf.data(), 256, 4).unwrap();
    assert_eq!(theirs, common::bf16_bytes_to_f32(&permuted));
}
