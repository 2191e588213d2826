//! Outputs, one rule for every command:
//!
//! 1. an output never overwrites (or replaces a directory holding) an input of
//!    the same run — paths are compared canonicalized, so `x/../x/a` and a
//!    symbolic link to `a` are `a` ([`check_output`]);
//! 2. an existing output (a file, or a non-empty directory) is replaced only
//!    with `--force`;
//! 3. everything is written under a temporary name (`.dynapress-tmp-<pid>-…`)
//!    in the destination directory and renamed into place when complete, so a
//!    failure or a kill leaves the previous output (or none), never a part;
//! 4. the temporaries a dead run left behind are removed by the next run in
//!    that directory ([`clean_stale_temps`]): those whose owning process is
//!    gone, and unattributed ones untouched for an hour, never a live run's;
//! 5. published files and directories get the modes `File::create` and
//!    `create_dir` would give them (0666 / 0777 minus the umask).

use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};

/// Every temporary name dynapress (and its crates) create starts with this.
pub const TEMP_PREFIX: &str = ".dynapress-tmp-";

/// Unattributed temporaries (no owner pid in the name) older than this are stale.
pub const STALE_AFTER: Duration = Duration::from_secs(3600);

/// The prefix of this process's temporaries: `.dynapress-tmp-<pid>-`.
pub fn temp_prefix() -> String {
    format!("{TEMP_PREFIX}{}-", std::process::id())
}

/// A temporary file in `dir` named after this process, created with mode
/// 0666 minus the umask (the mode the published file should have).
pub fn temp_file_in(dir: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let prefix = temp_prefix();
    let mut b = tempfile::Builder::new();
    b.prefix(&prefix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(0o666));
    }
    b.tempfile_in(dir)
}

/// A temporary directory in `dir` named after this process, mode 0777 minus the umask.
pub fn temp_dir_in(dir: &Path) -> std::io::Result<tempfile::TempDir> {
    let prefix = temp_prefix();
    let mut b = tempfile::Builder::new();
    b.prefix(&prefix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(0o777));
    }
    b.tempdir_in(dir)
}

/// The directory a file at `path` lives in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes `bytes` to `path` atomically (temporary file + rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Creates `path` atomically from whatever `fill` writes.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<&mut std::fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    let dir = parent_dir(path);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut tmp = temp_file_in(&dir).map_err(|e| Error::io(&dir, e))?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        fill(&mut w).map_err(|e| Error::io(path, e))?;
        w.flush().map_err(|e| Error::io(path, e))?;
    }
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Moves the finished directory `new` to `out`, replacing whatever is there.
/// The old `out` is first renamed aside (to a temporary name), so `out` is at
/// every moment either the old or the new directory, never a mix.
pub fn replace_dir(new: &Path, out: &Path) -> Result<()> {
    if std::fs::symlink_metadata(out).is_ok() {
        let parent = parent_dir(out);
        let aside = temp_dir_in(&parent).map_err(|e| Error::io(&parent, e))?;
        let old = aside.path().join("old");
        std::fs::rename(out, &old).map_err(|e| Error::io(out, e))?;
        std::fs::rename(new, out).map_err(|e| Error::io(out, e))?;
        drop(aside); // removes the old directory
    } else {
        std::fs::rename(new, out).map_err(|e| Error::io(out, e))?;
    }
    Ok(())
}

/// How a run reads one of its inputs.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// One file.
    File(&'a Path),
    /// Some files of a directory (a model, a database): the directory and
    /// everything already in it must survive; a new file inside it is fine.
    Dir(&'a Path),
    /// Every file under a directory (`pack`): nothing may be written inside it.
    Tree(&'a Path),
}

/// What an output is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// A file, replaced whole.
    File,
    /// A directory, replaced whole (with `--force` if it is not empty).
    Dir,
    /// A directory files are written into, keeping the others (`unpack`;
    /// with `--force` if it is not empty).
    IntoDir,
    /// A directory a run resumes in (`database --out`): may exist and hold
    /// files; only the input rules apply.
    ResumeDir,
}

/// `path` made absolute and resolved: symbolic links and `..` of the existing
/// part resolved by the file system, the rest (not yet created) appended
/// lexically.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::io(path, e))?
            .join(path)
    };
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = std::fs::canonicalize(existing) {
            let mut out = c;
            for comp in rest.iter().rev() {
                match comp {
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::CurDir => {}
                    c => out.push(c.as_os_str()),
                }
            }
            return Ok(out);
        }
        match (existing.parent(), existing.components().next_back()) {
            (Some(p), Some(c)) => {
                rest.push(c);
                existing = p;
            }
            _ => return Ok(abs),
        }
    }
}

/// Whether `a` and `b` are the same existing file (also through a hard link).
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    let _ = (a, b);
    false
}

/// Checks the output `out` (given with option `flag`, e.g. `--out`) of a run
/// reading `inputs`, before any work: it must not be an input, must not be a
/// directory holding an input if it replaces it whole, must not lie inside an
/// [`Input::Tree`], nor be an existing path inside an [`Input::Dir`]; and an
/// existing output needs `force`. The error is one line naming the paths and what to do.
pub fn check_output(
    out: &Path,
    flag: &str,
    kind: OutputKind,
    inputs: &[Input<'_>],
    force: bool,
) -> Result<()> {
    let o = resolve(out)?;
    let elsewhere = format!("choose another {flag}");
    for input in inputs {
        let (path, tree, dir) = match *input {
            Input::File(p) => (p, false, false),
            Input::Dir(p) => (p, false, true),
            Input::Tree(p) => (p, true, true),
        };
        let i = resolve(path)?;
        if o == i || same_file(out, path) {
            return Err(Error::data(
                out,
                format!(
                    "{flag} is also an input of this run ({}); {elsewhere}",
                    path.display()
                ),
            ));
        }
        if i.starts_with(&o) && matches!(kind, OutputKind::File | OutputKind::Dir) {
            return Err(Error::data(
                out,
                format!(
                    "{flag} would replace a directory holding the input {}; {elsewhere}",
                    path.display()
                ),
            ));
        }
        if dir && o.starts_with(&i) {
            let exists = std::fs::symlink_metadata(&o).is_ok();
            if tree || exists {
                return Err(Error::data(
                    out,
                    format!(
                        "{flag} is inside the input directory {}{}; {elsewhere}",
                        path.display(),
                        if tree {
                            " (every file of which is read)"
                        } else {
                            ""
                        }
                    ),
                ));
            }
        }
    }
    let meta = std::fs::metadata(out);
    match (kind, meta) {
        (_, Err(_)) => Ok(()),
        (OutputKind::File, Ok(m)) if m.is_dir() => Err(Error::data(
            out,
            format!("{flag} is a directory; give a file name"),
        )),
        (OutputKind::File, Ok(m)) if !m.is_file() => Err(Error::data(
            out,
            format!("{flag} is not a regular file; give a file name"),
        )),
        (OutputKind::File, Ok(_)) if !force => Err(Error::data(
            out,
            "exists; pass --force to replace it".to_string(),
        )),
        (OutputKind::File, Ok(_)) => Ok(()),
        (_, Ok(m)) if !m.is_dir() => Err(Error::data(
            out,
            format!("{flag} exists and is not a directory; give a directory"),
        )),
        (OutputKind::ResumeDir, Ok(_)) => Ok(()),
        (_, Ok(_)) => {
            let empty = std::fs::read_dir(out)
                .map_err(|e| Error::io(out, e))?
                .next()
                .is_none();
            if empty || force {
                Ok(())
            } else {
                Err(Error::data(
                    out,
                    "exists and is not empty; pass --force to replace its contents".to_string(),
                ))
            }
        }
    }
}

/// The pid in a temporary's name `.dynapress-tmp-<pid>-…`, if it has one.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(TEMP_PREFIX)?;
    let (digits, tail) = rest.split_once('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || tail.is_empty() {
        return None;
    }
    digits.parse().ok()
}

/// Whether process `pid` is alive (on this machine, in this pid namespace).
fn pid_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    #[cfg(unix)]
    {
        let Ok(p) = libc::pid_t::try_from(pid) else {
            return false;
        };
        // SAFETY: signal 0 only checks that the process exists.
        if unsafe { libc::kill(p, 0) } == 0 {
            return true;
        }
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    }
    #[allow(unreachable_code)]
    true
}

/// The newest modification time of `path` and, for a directory, its entries.
fn last_modified(path: &Path) -> Option<SystemTime> {
    let m = std::fs::symlink_metadata(path).ok()?;
    let mut t = m.modified().ok()?;
    if m.is_dir()
        && let Ok(rd) = std::fs::read_dir(path)
    {
        for e in rd.flatten() {
            if let Ok(em) = e.metadata()
                && let Ok(et) = em.modified()
            {
                t = t.max(et);
            }
        }
    }
    Some(t)
}

/// Removes the temporaries (`.dynapress-tmp-*`, files or directories) a dead
/// run left in `dir`: those named after a process that no longer exists, and
/// those without an owner in their name not modified for [`STALE_AFTER`]. A
/// live run's temporaries are never touched. Best effort: returns how many
/// were removed and ignores what cannot be.
pub fn clean_stale_temps(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(TEMP_PREFIX) {
            continue;
        }
        let path = e.path();
        let stale = match owner_pid(name) {
            Some(pid) => !pid_alive(pid),
            None => last_modified(&path)
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > STALE_AFTER),
        };
        if !stale {
            continue;
        }
        let ok = match e.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path).is_ok(),
            Ok(_) => std::fs::remove_file(&path).is_ok(),
            Err(_) => false,
        };
        removed += ok as usize;
    }
    removed
}

/// [`clean_stale_temps`] in the directory an output lives in (and in the
/// output itself when it is a directory).
pub fn clean_stale_temps_for(out: &Path) -> usize {
    let mut n = clean_stale_temps(&parent_dir(out));
    if out.is_dir() {
        n += clean_stale_temps(out);
    }
    n
}

/// Reads a small text file (a JSON config, a manifest) of at most `limit`
/// bytes: a directory, a FIFO or a device is refused by name instead of being
/// read until memory runs out.
pub fn read_text_limited(path: &Path, limit: u64) -> Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let m = f.metadata().map_err(|e| Error::io(path, e))?;
    if !m.is_file() {
        return Err(Error::data(
            path,
            if m.is_dir() {
                "is a directory, not a file"
            } else {
                "is not a regular file (a device or a pipe?)"
            },
        ));
    }
    if m.len() > limit {
        return Err(Error::data(
            path,
            format!(
                "is {} bytes, more than the {limit} such a file can be; is it the right file?",
                m.len()
            ),
        ));
    }
    let mut s = String::new();
    f.take(limit + 1)
        .read_to_string(&mut s)
        .map_err(|e| Error::io(path, e))?;
    Ok(s)
}

/// Checks that a data file the run reads exists and is a regular file.
pub fn check_input_file(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::data(path, "file not found"))
        }
        Err(e) => Err(Error::io(path, e)),
        Ok(m) if m.is_dir() => Err(Error::data(path, "is a directory; give a file")),
        Ok(m) if !m.is_file() => Err(Error::data(
            path,
            "is not a regular file (a device or a pipe?); give a file",
        )),
        Ok(_) => Ok(()),
    }
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        sha2::Digest::update(&mut h, &buf[..n]);
    }
    Ok(hex(&sha2::Digest::finalize(h)))
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_only_our_names() {
        assert_eq!(owner_pid(".dynapress-tmp-123-abc"), Some(123));
        assert_eq!(owner_pid(".dynapress-tmp-abc"), None);
        assert_eq!(owner_pid(".dynapress-tmp-export-abc"), None);
        assert_eq!(owner_pid(".dynapress-tmp-12-"), None);
    }

    #[test]
    fn check_output_applies_the_one_rule() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("model");
        std::fs::create_dir(&m).unwrap();
        std::fs::write(m.join("w.safetensors"), b"w").unwrap();
        let calib = d.path().join("c.txt");
        std::fs::write(&calib, b"text").unwrap();
        let inputs = [Input::Dir(&m), Input::File(&calib)];
        let check = |out: &Path, kind, force| check_output(out, "--out", kind, &inputs, force);
        // The input itself, also through `..` and a symbolic link, and even with force.
        assert!(check(&calib, OutputKind::File, true).is_err());
        assert!(check(&m.join("../c.txt"), OutputKind::File, true).is_err());
        #[cfg(unix)]
        {
            let link = d.path().join("link.txt");
            std::os::unix::fs::symlink(&calib, &link).unwrap();
            assert!(check(&link, OutputKind::File, true).is_err());
        }
        // A directory output that is or holds an input.
        assert!(check(&m, OutputKind::Dir, true).is_err());
        assert!(check(d.path(), OutputKind::Dir, true).is_err());
        // An existing file inside an input directory; a new one is fine.
        assert!(check(&m.join("w.safetensors"), OutputKind::File, true).is_err());
        assert!(check(&m.join("new.gguf"), OutputKind::File, false).is_ok());
        // Inside a tree that is read whole: never.
        let tree = [Input::Tree(&m)];
        assert!(check_output(&m.join("new.dpk"), "out", OutputKind::File, &tree, true).is_err());
        // Existing outputs need force; an empty directory does not.
        let other = d.path().join("other.json");
        std::fs::write(&other, b"{}").unwrap();
        assert!(check(&other, OutputKind::File, false).is_err());
        assert!(check(&other, OutputKind::File, true).is_ok());
        let empty = d.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(check(&empty, OutputKind::Dir, false).is_ok());
        std::fs::write(empty.join("x"), b"x").unwrap();
        assert!(check(&empty, OutputKind::Dir, false).is_err());
        assert!(check(&empty, OutputKind::ResumeDir, false).is_ok());
        // A directory where a file goes, and the reverse.
        assert!(check(&empty, OutputKind::File, true).is_err());
        assert!(check(&other, OutputKind::Dir, true).is_err());
    }

    #[test]
    fn temporaries_follow_the_umask() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let d = tempfile::tempdir().unwrap();
            let probe = d.path().join("probe");
            std::fs::write(&probe, b"").unwrap();
            let want = std::fs::metadata(&probe).unwrap().permissions().mode() & 0o777;
            let out = d.path().join("f");
            write_atomic(&out, b"x").unwrap();
            let got = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
            assert_eq!(got, want);
        }
    }

    #[test]
    fn resolve_handles_missing_tails_and_dotdot() {
        let d = tempfile::tempdir().unwrap();
        let c = std::fs::canonicalize(d.path()).unwrap();
        assert_eq!(resolve(&d.path().join("a/../b")).unwrap(), c.join("b"));
        assert_eq!(resolve(&d.path().join("x/./y")).unwrap(), c.join("x/y"));
    }
}
