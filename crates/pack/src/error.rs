//! The crate's error type.

use std::path::{Path, PathBuf};

/// Everything that can go wrong while packing, reading or unpacking. Each
/// variant names the file it concerns (the container, or an input file).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error while reading or writing `path`.
    #[error("{path}: {action}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done ("reading", "creating a temporary file", ...).
        action: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the container magic bytes.
    #[error(
        "{path}: not a dynapress pack (bad magic bytes); expected a file written by `dynapress pack`"
    )]
    NotAPack {
        /// The container.
        path: PathBuf,
    },
    /// The container was written by a newer format version.
    #[error(
        "{path}: written in pack format version {found}, newer than this build reads (up to {supported}); upgrade dynapress"
    )]
    FutureVersion {
        /// The container.
        path: PathBuf,
        /// Version in the file.
        found: u32,
        /// Highest version this build reads.
        supported: u32,
    },
    /// The container is shorter than its header says.
    #[error("{path}: truncated: {detail}; the file was cut short (interrupted copy or download?)")]
    Truncated {
        /// The container.
        path: PathBuf,
        /// What is missing.
        detail: String,
    },
    /// The container's structure is inconsistent.
    #[error("{path}: corrupt container: {detail}")]
    Corrupt {
        /// The container.
        path: PathBuf,
        /// What is inconsistent.
        detail: String,
    },
    /// Stored data does not match its checksum.
    #[error(
        "{path}: checksum mismatch in {what}; the file is damaged, re-create or re-download it"
    )]
    Checksum {
        /// The container.
        path: PathBuf,
        /// Which part (header, index, or chunk `i` of file `name`).
        what: String,
    },
    /// `read_file` was asked for a name the container does not hold.
    #[error("{path}: no file named {name:?} in this pack")]
    NoSuchFile {
        /// The container.
        path: PathBuf,
        /// The requested name.
        name: String,
    },
    /// The input to `pack` is unusable.
    #[error("{path}: cannot pack: {detail}")]
    BadInput {
        /// The input file or directory.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The output path is unusable: it exists (and replacing it was not
    /// asked for), or it is, or lies inside, the input.
    #[error("{path}: {detail}")]
    Output {
        /// The output file or directory.
        path: PathBuf,
        /// Why, and what to do.
        detail: String,
    },
    /// Options out of range.
    #[error("invalid pack options: {0}")]
    BadOptions(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}
