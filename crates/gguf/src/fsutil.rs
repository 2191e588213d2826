//! Temporary files beside their destination, renamed into place when complete.

use std::path::{Path, PathBuf};

/// The directory a file at `path` lives in (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A temporary file in `dir`, deleted on drop unless persisted. On Unix it is
/// created with mode 0o666 minus the umask — the mode `File::create` would
/// give the final file — rather than tempfile's private 0o600.
pub(crate) fn temp_in(dir: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let mut b = tempfile::Builder::new();
    b.prefix(".dynapress-tmp-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(0o666));
    }
    b.tempfile_in(dir)
}
