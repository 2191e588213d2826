//! Reading containers: validation on open, parallel chunk decoding, unpack.

use std::collections::HashMap;
use std::fs::File;
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use rayon::prelude::*;

use crate::checksum::Xxh3Stream;
use crate::error::{Error, Result, io};
use crate::float::{self, FloatDecoder, Split};
use crate::format::{self, ChunkRec, Codec, FileKind, FileRec, Header, hash};
use crate::pack::{Progress, ProgressFn, with_threads};
use crate::quant::{ChunkDecoder, Groups};
use crate::rans::{self, DecodeTable};

/// A packed file as listed by [`PackedReader::files`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// Relative '/'-separated name.
    pub name: String,
    /// Original size in bytes.
    pub size: u64,
    /// Whether it was packed as safetensors (float planes) or opaque bytes.
    pub kind: FileKind,
}

enum Backing {
    Map(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Map(m) => m,
            Self::Owned(v) => v,
        }
    }
}

/// An open, validated container.
///
/// [`PackedReader::open`] checks the header (magic, version, length,
/// checksum) and the whole index (checksum, every offset, length and table)
/// before anything else is allocated; chunk checksums are verified as
/// chunks are decoded.
pub struct PackedReader {
    path: PathBuf,
    data: Backing,
    files: Vec<FileRec>,
    by_name: HashMap<String, usize>,
}

impl std::fmt::Debug for PackedReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedReader")
            .field("path", &self.path)
            .field("files", &self.files.len())
            .finish()
    }
}

enum SegDecoder {
    Stored,
    Bytes(DecodeTable<u8>),
    Float(Split, FloatDecoder),
    Quant(ChunkDecoder),
}

impl SegDecoder {
    fn new(codec: &Codec) -> Self {
        match codec {
            Codec::Stored => Self::Stored,
            Codec::Bytes { table } => Self::Bytes(DecodeTable::new(table, |s| s as u8)),
            Codec::Float { split, table } => Self::Float(*split, FloatDecoder::new(*split, table)),
            Codec::Quant {
                bits,
                center,
                table,
                ..
            } => Self::Quant(ChunkDecoder::new(*bits, center.is_some(), table)),
        }
    }
}

/// The unpacked zero points of a centered quantized-code segment, with its
/// row and group lengths.
struct Context {
    zeros: Vec<u8>,
    cols: usize,
    group_len: usize,
}

impl Context {
    fn groups(&self) -> Groups<'_> {
        Groups {
            zeros: &self.zeros,
            cols: self.cols,
            group_len: self.group_len,
        }
    }
}

/// One chunk to decode: segment, chunk, its record, its byte offset in the
/// segment, and where its bytes go.
type Job<'a, 'o> = (usize, usize, &'a ChunkRec, u64, &'o mut [MaybeUninit<u8>]);

impl PackedReader {
    /// Opens and validates a container file (memory-mapped).
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path).map_err(io(path, "opening the pack"))?;
        let len = f.metadata().map_err(io(path, "reading metadata"))?.len();
        let data = if len == 0 {
            Backing::Owned(Vec::new())
        } else {
            // SAFETY: read-only map; the container must not be modified while
            // it is open (as for any memory-mapped model file).
            Backing::Map(
                unsafe { memmap2::Mmap::map(&f) }.map_err(io(path, "memory-mapping the pack"))?,
            )
        };
        Self::from_backing(path.to_path_buf(), data)
    }

    /// Validates a container held in memory; `label` names it in errors.
    pub fn from_bytes(bytes: Vec<u8>, label: impl Into<PathBuf>) -> Result<Self> {
        Self::from_backing(label.into(), Backing::Owned(bytes))
    }

    fn from_backing(path: PathBuf, data: Backing) -> Result<Self> {
        let bytes = data.bytes();
        let h = Header::parse(&path, bytes)?;
        let index = &bytes[h.index_offset as usize..h.total_len as usize];
        if hash(index) != h.index_hash {
            return Err(Error::Checksum {
                path,
                what: "the index".into(),
            });
        }
        let files = format::read_index(&path, index, h.index_offset, h.version)?;
        let by_name = files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.clone(), i))
            .collect();
        Ok(Self {
            path,
            data,
            files,
            by_name,
        })
    }

    /// The container's path (or label).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the container in bytes.
    pub fn packed_len(&self) -> u64 {
        self.data.bytes().len() as u64
    }

    /// The packed files in container order (sorted by name for [`crate::pack_dir`]).
    pub fn files(&self) -> Vec<FileInfo> {
        self.files
            .iter()
            .map(|f| FileInfo {
                name: f.name.clone(),
                size: f.size,
                kind: f.kind,
            })
            .collect()
    }

    /// Whether the container holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    fn file(&self, name: &str) -> Result<&FileRec> {
        self.by_name
            .get(name)
            .map(|&i| &self.files[i])
            .ok_or_else(|| Error::NoSuchFile {
                path: self.path.clone(),
                name: name.into(),
            })
    }

    /// Reconstructs a file's exact bytes in memory, decoding chunks in
    /// parallel on the current rayon pool and verifying every checksum.
    pub fn read_file(&self, name: &str) -> Result<Vec<u8>> {
        let f = self.file(name)?;
        let n = f.size as usize;
        let mut out = Vec::with_capacity(n);
        advise_huge_pages(out.as_ptr(), n);
        self.decode_file(f, &mut out.spare_capacity_mut()[..n], true)?;
        // SAFETY: decode_file initialised every byte: the chunks cover the
        // file and each one is zero-filled before it is decoded.
        unsafe { out.set_len(n) };
        Ok(out)
    }

    /// The original header of a packed safetensors file (the 8-byte length
    /// and the JSON), decoded on its own without the tensors, so a loader
    /// can inspect names, dtypes and shapes cheaply.
    pub fn safetensors_header(&self, name: &str) -> Result<Vec<u8>> {
        let f = self.file(name)?;
        let seg = match (f.kind, f.segments.first()) {
            (FileKind::Safetensors, Some(seg)) => seg,
            _ => {
                return Err(Error::BadOptions(format!(
                    "{name} in {} was not packed as a safetensors file",
                    self.path.display()
                )));
            }
        };
        let dec = SegDecoder::new(&seg.codec);
        let mut out = vec![0u8; seg.raw_len as usize];
        let mut at = 0;
        for (ci, c) in seg.chunks.iter().enumerate() {
            let n = c.raw_len as usize;
            self.decode_chunk(f, 0, ci, c, at as u64, &dec, None, &mut out[at..at + n])?;
            at += n;
        }
        Ok(out)
    }

    /// Like [`Self::read_file`], into a caller buffer of exactly the file's
    /// size.
    pub fn read_file_into(&self, name: &str, out: &mut [u8]) -> Result<()> {
        let f = self.file(name)?;
        if out.len() as u64 != f.size {
            return Err(Error::BadOptions(format!(
                "buffer of {} bytes for {name}, which has {} bytes",
                out.len(),
                f.size
            )));
        }
        // SAFETY: same layout; decode_file only writes initialised bytes.
        let out = unsafe { &mut *(out as *mut [u8] as *mut [MaybeUninit<u8>]) };
        self.decode_file(f, out, false)
    }

    /// Decodes every chunk of `f` into `out` in parallel. With `init`, the
    /// bytes of `out` may be uninitialised and each chunk's range is
    /// zero-filled (while it is hot in cache) before decoding; without it
    /// they must be initialised already.
    ///
    /// Segments that other segments use as context (the zero points of
    /// centered quantized codes) are decoded and verified first; then
    /// everything else, in parallel.
    fn decode_file(&self, f: &FileRec, out: &mut [MaybeUninit<u8>], init: bool) -> Result<()> {
        // Decode tables are built by the first chunk of each segment that
        // needs them, inside the same parallel loop.
        let decoders: Vec<OnceLock<SegDecoder>> =
            f.segments.iter().map(|_| OnceLock::new()).collect();
        let is_context: Vec<bool> = {
            let mut v = vec![false; f.segments.len()];
            for s in &f.segments {
                if let Codec::Quant {
                    center: Some(c), ..
                } = &s.codec
                {
                    v[c.zeros_segment as usize] = true;
                }
            }
            v
        };
        let mut first: Vec<Job<'_, '_>> = Vec::new();
        let mut rest_jobs: Vec<Job<'_, '_>> =
            Vec::with_capacity(f.segments.iter().map(|s| s.chunks.len()).sum());
        let mut rest = out;
        for (si, s) in f.segments.iter().enumerate() {
            let mut at = 0u64;
            for (ci, c) in s.chunks.iter().enumerate() {
                let (head, tail) = rest.split_at_mut(c.raw_len as usize);
                let job = (si, ci, c, at, head);
                if is_context[si] {
                    first.push(job);
                } else {
                    rest_jobs.push(job);
                }
                at += u64::from(c.raw_len);
                rest = tail;
            }
        }
        debug_assert!(
            rest.is_empty(),
            "index validation guarantees the sizes add up"
        );
        let run = |job: &mut Job<'_, '_>, contexts: &[Option<Context>]| {
            let (si, ci, c, at, o) = job;
            if init {
                o.fill(MaybeUninit::new(0));
            }
            // SAFETY: every byte of `o` is initialised (zero-filled above, or
            // by the caller); MaybeUninit<u8> and u8 have the same layout.
            let o = unsafe { &mut *(&mut **o as *mut [MaybeUninit<u8>] as *mut [u8]) };
            let dec = decoders[*si].get_or_init(|| SegDecoder::new(&f.segments[*si].codec));
            let groups = contexts
                .get(*si)
                .and_then(|c| c.as_ref())
                .map(Context::groups);
            self.decode_chunk(f, *si, *ci, c, *at, dec, groups.as_ref(), o)
        };
        if first.is_empty() {
            return rest_jobs.par_iter_mut().try_for_each(|j| run(j, &[]));
        }
        first.par_iter_mut().try_for_each(|j| run(j, &[]))?;
        // The zero points are decoded and verified: unpack them for the
        // segments centered on them.
        let mut contexts: Vec<Option<Context>> = Vec::with_capacity(f.segments.len());
        for s in &f.segments {
            let Codec::Quant {
                bits,
                count,
                center: Some(c),
                ..
            } = &s.codec
            else {
                contexts.push(None);
                continue;
            };
            let zs = c.zeros_segment as usize;
            let mut packed = Vec::with_capacity(f.segments[zs].raw_len as usize);
            for (_, _, _, _, o) in first.iter().filter(|j| j.0 == zs) {
                // SAFETY: decoded above, so initialised.
                packed.extend_from_slice(unsafe {
                    &*(&**o as *const [MaybeUninit<u8>] as *const [u8])
                });
            }
            contexts.push(Some(Context {
                zeros: crate::quant::unpack_values(&packed, *bits, c.zero_count(*count) as usize),
                cols: c.cols as usize,
                group_len: c.group_len as usize,
            }));
        }
        rest_jobs.par_iter_mut().try_for_each(|j| run(j, &contexts))
    }

    /// Decodes chunk `ci` of segment `si` of `f` (which starts `offset`
    /// bytes into its segment) into `out`, verifying its checksums. `groups`
    /// are the zero points of a centered quantized-code segment.
    #[allow(clippy::too_many_arguments)]
    fn decode_chunk(
        &self,
        f: &FileRec,
        si: usize,
        ci: usize,
        c: &ChunkRec,
        offset: u64,
        dec: &SegDecoder,
        groups: Option<&Groups<'_>>,
        out: &mut [u8],
    ) -> Result<()> {
        let what = |part: &str| format!("{} (segment {si}, chunk {ci}, {part})", f.name);
        let start = c.offset as usize;
        // In bounds: the index validation checked offset + length <= index offset.
        let payload = &self.data.bytes()[start..start + c.stored_len as usize];
        let damaged = || Error::Checksum {
            path: self.path.clone(),
            what: what("stored payload"),
        };
        if !c.coded {
            if hash(payload) != c.payload_hash {
                return Err(damaged());
            }
            out.copy_from_slice(payload);
            return Ok(());
        }
        // On the happy path only the decoded bytes are hashed: they cover
        // the payload and the decoder. The payload hash is consulted when
        // something is wrong, to report a damaged file rather than a
        // decoding failure.
        // Float chunks hash their output piece by piece as it is written.
        let mut stream = Xxh3Stream::new();
        let decoded = match dec {
            SegDecoder::Stored => {
                unreachable!("index validation rejects coded chunks in stored segments")
            }
            SegDecoder::Bytes(t) => rans::decode(payload, t, out).map_err(|e| e.to_string()),
            SegDecoder::Float(split, d) => {
                float::decode_chunk(*split, d, payload, out, &mut stream).map_err(|e| e.to_string())
            }
            SegDecoder::Quant(d) => match &f.segments[si].codec {
                Codec::Quant { bits, count, .. } => {
                    // Index validation: chunks before the last hold whole
                    // groups of 8 codes, and the sizes add up to `count`.
                    let b = u64::from(*bits);
                    let first = offset * 8 / b;
                    let n = ((offset + out.len() as u64) * 8 / b).min(*count) - first;
                    d.decode(
                        payload,
                        first as usize,
                        n as usize,
                        groups,
                        out,
                        &mut stream,
                    )
                    .map_err(|e| e.to_string())
                }
                _ => unreachable!("the decoder was built from this codec"),
            },
        };
        let out_hash = decoded.as_ref().ok().map(|_| stream.finish(out));
        if out_hash != Some(c.raw_hash) && hash(payload) != c.payload_hash {
            return Err(damaged());
        }
        if let Err(detail) = decoded {
            return Err(Error::Corrupt {
                path: self.path.clone(),
                detail: format!("{}: {detail}", what("payload")),
            });
        }
        if out_hash != Some(c.raw_hash) {
            return Err(Error::Checksum {
                path: self.path.clone(),
                what: what("decoded bytes"),
            });
        }
        Ok(())
    }
}

/// Asks Linux for transparent huge pages for a large output buffer before
/// its first touch: decoding writes at several GB/s, where faulting in 4 KiB
/// pages costs a good part of the time.
fn advise_huge_pages(p: *const u8, n: usize) {
    #[cfg(target_os = "linux")]
    if n >= 8 << 20 {
        const HUGE: usize = 2 << 20;
        let start = (p as usize).next_multiple_of(HUGE);
        let end = (p as usize + n) / HUGE * HUGE;
        if end > start {
            // SAFETY: advisory call on whole pages inside one allocation.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    let _ = (p, n);
}

/// Options for [`unpack`].
#[derive(Clone, Default)]
pub struct UnpackOptions {
    /// Worker threads; 0 uses rayon's global pool.
    pub threads: usize,
    /// Called after each file is decoded.
    pub progress: Option<ProgressFn>,
    /// Write into an output directory that already holds files (replacing
    /// those the container also holds); otherwise that is an error.
    pub overwrite: bool,
}

impl std::fmt::Debug for UnpackOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnpackOptions")
            .field("threads", &self.threads)
            .field("progress", &self.progress.is_some())
            .field("overwrite", &self.overwrite)
            .finish()
    }
}

/// What [`unpack`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UnpackReport {
    /// Files written.
    pub files: usize,
    /// Bytes written.
    pub bytes: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Directories created by an unpack, removed again if it fails.
struct CreatedDirs(Vec<PathBuf>);

impl CreatedDirs {
    fn create(&mut self, dir: &Path) -> Result<()> {
        let mut missing = Vec::new();
        let mut d = dir;
        while !d.as_os_str().is_empty() && !d.exists() {
            missing.push(d.to_path_buf());
            match d.parent() {
                Some(p) => d = p,
                None => break,
            }
        }
        for m in missing.into_iter().rev() {
            std::fs::create_dir(&m).map_err(io(&m, "creating the directory"))?;
            self.0.push(m);
        }
        Ok(())
    }

    fn remove_all(&mut self) {
        for d in self.0.drain(..).rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Unpacks every file of `dpk` under `out_dir`, byte-identical to the packed
/// originals.
///
/// The container is validated completely before anything is written. Each
/// file is decoded into a temporary file in its destination directory;
/// only when every file has decoded and verified are they renamed into
/// place, so a damaged container leaves no output files (and removes the
/// directories it created).
pub fn unpack(dpk: &Path, out_dir: &Path, opts: &UnpackOptions) -> Result<UnpackReport> {
    let start = Instant::now();
    let reader = PackedReader::open(dpk)?;
    if let Ok(mut rd) = std::fs::read_dir(out_dir)
        && rd.next().is_some()
        && !opts.overwrite
    {
        return Err(Error::Output {
            path: out_dir.into(),
            detail: "exists and is not empty; pass --force to write into it".into(),
        });
    }
    let dpk_canon = std::fs::canonicalize(dpk).map_err(io(dpk, "resolving the container"))?;
    for f in &reader.files {
        let target = f
            .name
            .split('/')
            .fold(out_dir.to_path_buf(), |p, c| p.join(c));
        if std::fs::canonicalize(&target).is_ok_and(|t| t == dpk_canon) {
            return Err(Error::Output {
                path: out_dir.into(),
                detail: format!(
                    "unpacking would replace the container itself ({}); unpack elsewhere",
                    f.name
                ),
            });
        }
    }
    let mut created = CreatedDirs(Vec::new());
    let result = with_threads(opts.threads, || {
        unpack_inner(&reader, out_dir, opts, &mut created)
    });
    match result {
        Ok(Ok(temps)) => {
            let mut bytes = 0;
            let files = temps.len();
            for (tmp, target, size) in temps {
                tmp.persist(&target).map_err(|e| Error::Io {
                    path: target.clone(),
                    action: "renaming the unpacked file into place",
                    source: e.error,
                })?;
                bytes += size;
            }
            Ok(UnpackReport {
                files,
                bytes,
                seconds: start.elapsed().as_secs_f64(),
            })
        }
        Ok(Err(e)) | Err(e) => {
            created.remove_all();
            Err(e)
        }
    }
}

type Temps = Vec<(tempfile::NamedTempFile, PathBuf, u64)>;

fn unpack_inner(
    reader: &PackedReader,
    out_dir: &Path,
    opts: &UnpackOptions,
    created: &mut CreatedDirs,
) -> Result<Temps> {
    created.create(out_dir)?;
    let total: u64 = reader.files.iter().map(|f| f.size).sum();
    let mut done = 0;
    let mut temps: Temps = Vec::with_capacity(reader.files.len());
    for f in &reader.files {
        let target = f
            .name
            .split('/')
            .fold(out_dir.to_path_buf(), |p, c| p.join(c));
        let dir = target.parent().expect("joined under out_dir").to_path_buf();
        created.create(&dir)?;
        let tmp = crate::temp_file_in(&dir).map_err(io(&dir, "creating a temporary file"))?;
        if f.size > 0 {
            tmp.as_file()
                .set_len(f.size)
                .map_err(io(&target, "sizing the output file"))?;
            // SAFETY: the temporary file is ours alone and sized above.
            let mut map = unsafe { memmap2::MmapMut::map_mut(tmp.as_file()) }
                .map_err(io(&target, "memory-mapping the output file"))?;
            let out: &mut [u8] = &mut map;
            // SAFETY: same layout; decode_file only writes initialised bytes.
            let out = unsafe { &mut *(out as *mut [u8] as *mut [MaybeUninit<u8>]) };
            reader.decode_file(f, out, false)?;
        }
        done += f.size;
        if let Some(p) = &opts.progress {
            p(Progress { done, total });
        }
        temps.push((tmp, target, f.size));
    }
    Ok(temps)
}
