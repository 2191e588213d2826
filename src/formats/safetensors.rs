//! A streaming safetensors writer: the header (names, dtypes, shapes,
//! offsets) is written first, then each tensor's bytes in order, so a model
//! never has to be held in memory whole. The file appears under its name only
//! when complete (temporary file + rename).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::Dtype;

use crate::error::{Error, Result};

/// A tensor to be written: name, dtype and shape.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// Bytes of data.
    pub fn nbytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.bitsize() / 8
    }
}

/// Writes one safetensors file tensor by tensor.
pub struct SafetensorsWriter {
    path: PathBuf,
    file: Option<std::io::BufWriter<tempfile::NamedTempFile>>,
    specs: Vec<TensorSpec>,
    next: usize,
}

impl SafetensorsWriter {
    /// Starts a file holding `specs` (written in this order) and `metadata`.
    pub fn create(
        path: &Path,
        specs: Vec<TensorSpec>,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Self> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut header = serde_json::Map::new();
        if !metadata.is_empty() {
            header.insert(
                "__metadata__".into(),
                serde_json::to_value(metadata).expect("strings serialise"),
            );
        }
        let mut offset = 0usize;
        for s in &specs {
            let n = s.nbytes();
            header.insert(
                s.name.clone(),
                serde_json::json!({
                    "dtype": dtype_name(s.dtype),
                    "shape": s.shape,
                    "data_offsets": [offset, offset + n],
                }),
            );
            offset += n;
        }
        let mut json = serde_json::to_vec(&header).expect("header serialises");
        // Pad the header with spaces so the data starts 8-byte aligned.
        while !json.len().is_multiple_of(8) {
            json.push(b' ');
        }
        let tmp = crate::fsutil::temp_file_in(dir).map_err(|e| Error::io(dir, e))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp);
        w.write_all(&(json.len() as u64).to_le_bytes())
            .and_then(|_| w.write_all(&json))
            .map_err(|e| Error::io(path, e))?;
        Ok(SafetensorsWriter {
            path: path.to_path_buf(),
            file: Some(w),
            specs,
            next: 0,
        })
    }

    /// Writes the next tensor's bytes (must follow the order given to `create`).
    pub fn write(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let spec = self.specs.get(self.next).ok_or_else(|| {
            Error::Invalid(format!(
                "{}: more tensors written than declared",
                self.path.display()
            ))
        })?;
        if spec.name != name || spec.nbytes() != data.len() {
            return Err(Error::Invalid(format!(
                "{}: expected tensor `{}` ({} bytes), got `{name}` ({} bytes)",
                self.path.display(),
                spec.name,
                spec.nbytes(),
                data.len()
            )));
        }
        let w = self.file.as_mut().expect("open until finish");
        w.write_all(data).map_err(|e| Error::io(&self.path, e))?;
        self.next += 1;
        Ok(())
    }

    /// Writes the next tensor from f32 values, converted to its dtype.
    pub fn write_f32(&mut self, name: &str, values: &[f32]) -> Result<()> {
        let dtype = self
            .specs
            .get(self.next)
            .map(|s| s.dtype)
            .unwrap_or(Dtype::F32);
        let bytes = encode_f32(values, dtype)?;
        self.write(name, &bytes)
    }

    /// Completes the file and moves it into place.
    pub fn finish(mut self) -> Result<()> {
        if self.next != self.specs.len() {
            return Err(Error::Invalid(format!(
                "{}: only {} of {} tensors written",
                self.path.display(),
                self.next,
                self.specs.len()
            )));
        }
        let w = self.file.take().expect("open until finish");
        let tmp = w
            .into_inner()
            .map_err(|e| Error::io(&self.path, e.into_error()))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| Error::io(&self.path, e))?;
        tmp.persist(&self.path)
            .map_err(|e| Error::io(&self.path, e.error))?;
        Ok(())
    }
}

/// The safetensors dtype string.
pub fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::BOOL => "BOOL",
        Dtype::U8 => "U8",
        Dtype::I8 => "I8",
        Dtype::I16 => "I16",
        Dtype::U16 => "U16",
        Dtype::F16 => "F16",
        Dtype::BF16 => "BF16",
        Dtype::I32 => "I32",
        Dtype::U32 => "U32",
        Dtype::F32 => "F32",
        Dtype::F64 => "F64",
        Dtype::I64 => "I64",
        Dtype::U64 => "U64",
        _ => "UNKNOWN",
    }
}

/// f32 values as little-endian bytes of `dtype` (F32, F16 or BF16, rounded to nearest even).
pub fn encode_f32(values: &[f32], dtype: Dtype) -> Result<Vec<u8>> {
    Ok(match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes())
            .collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())
            .collect(),
        other => {
            return Err(Error::Invalid(format!(
                "cannot write floating-point values as {other:?}"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_file_reads_back_with_the_safetensors_crate() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.safetensors");
        let specs = vec![
            TensorSpec {
                name: "b".into(),
                dtype: Dtype::BF16,
                shape: vec![3],
            },
            TensorSpec {
                name: "a".into(),
                dtype: Dtype::F32,
                shape: vec![2, 2],
            },
        ];
        let mut md = BTreeMap::new();
        md.insert("format".to_string(), "pt".to_string());
        let mut w = SafetensorsWriter::create(&p, specs, &md).unwrap();
        w.write_f32("b", &[1.0, -2.5, 3.0]).unwrap();
        w.write_f32("a", &[1.0, 2.0, 3.0, 4.0]).unwrap();
        w.finish().unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(
            st.tensor("a").unwrap().data(),
            &[1f32, 2.0, 3.0, 4.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<_>>()[..]
        );
        assert_eq!(st.tensor("b").unwrap().shape(), &[3]);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp files left"
        );
    }

    #[test]
    fn unfinished_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.safetensors");
        let specs = vec![TensorSpec {
            name: "a".into(),
            dtype: Dtype::F32,
            shape: vec![2],
        }];
        let mut w = SafetensorsWriter::create(&p, specs, &BTreeMap::new()).unwrap();
        assert!(w.write_f32("wrong", &[1.0, 2.0]).is_err());
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
