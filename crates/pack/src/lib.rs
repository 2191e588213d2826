//! Lossless packing of model directories: dynapress's `.dpk` container.
//!
//! A `.dpk` file holds every file of a model directory (safetensors shards,
//! JSON configs, tokenizer files) and reproduces each one byte for byte.
//! Float tensors (bf16, f16, f32) are split into two planes per element:
//! an entropy-coded *head* (the exponent plus the top `k` mantissa bits,
//! `k` chosen per tensor) and a raw *tail* (sign and remaining mantissa
//! bits). Trained weights use few distinct exponents (about 2.6 bits of
//! information in bf16's 8 exponent bits), which is where the saving comes
//! from; see [`float`] for the split and [`rans`] for the coder. Other bytes
//! (safetensors headers, JSON, unknown files) get an order-0 byte code, and
//! integer tensors pass through.
//!
//! [`quant`] entropy-codes bit-packed quantized codes (GPTQ / RTN codes and
//! zero points) bit-exactly, for dynapress's own storage of quantized
//! layers; the container format does not use it yet.
//!
//! Data is cut into independent chunks (1 MiB by default) that code and
//! decode in parallel with rayon. Every chunk carries xxh3-64 checksums of
//! its payload and of its original bytes; the index and header carry their
//! own. See [`format`](mod@format) for the byte layout.
//!
//! # Example
//!
//! ```
//! use dynapress_pack::{InputFile, PackOptions, PackedReader, pack_files};
//! # fn main() -> dynapress_pack::Result<()> {
//! let config = br#"{"hidden_size": 256}"#;
//! let mut buf = std::io::Cursor::new(Vec::new());
//! let files = [InputFile { name: "config.json", data: config }];
//! let report = pack_files(&files, &mut buf, "mem.dpk".as_ref(), &PackOptions::default())?;
//! let reader = PackedReader::from_bytes(buf.into_inner(), "mem.dpk")?;
//! assert_eq!(reader.read_file("config.json")?, config);
//! assert_eq!(report.files, 1);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod bits;
mod checksum;
mod error;
pub mod float;
pub mod format;
mod pack;
pub mod quant;
pub mod rans;
mod read;
mod simd;

pub use error::{Error, Result};
pub use format::{FORMAT_VERSION, FileKind};
pub use pack::{InputFile, PackOptions, PackReport, Progress, ProgressFn, pack_dir, pack_files};
pub use read::{FileInfo, PackedReader, UnpackOptions, UnpackReport, unpack};

/// A temporary file in `dir`, named `.dynapress-tmp-<pid>-…` (so the next
/// `dynapress` run there can tell a dead run's leftovers from a live one's)
/// and created with mode 0666 minus the umask, the mode `File::create` gives.
pub(crate) fn temp_file_in(dir: &std::path::Path) -> std::io::Result<tempfile::NamedTempFile> {
    let prefix = format!(".dynapress-tmp-{}-", std::process::id());
    let mut b = tempfile::Builder::new();
    b.prefix(&prefix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(0o666));
    }
    b.tempfile_in(dir)
}
