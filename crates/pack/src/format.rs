//! The container layout: a fixed header, chunk payloads, and an index.
//!
//! ```text
//! offset 0   header (64 bytes, little-endian)
//!            [0..8)   magic "DYNAPACK"
//!            [8..12)  format version (u32): 2 if a segment uses codec 3,
//!                     else 1 (the layout is otherwise the same)
//!            [12..16) flags (u32) = 0; nonzero flags are rejected
//!            [16..24) index offset (u64)
//!            [24..32) index length (u64)
//!            [32..40) xxh3-64 of the index bytes
//!            [40..48) total container length (u64)
//!            [48..56) reserved, zero
//!            [56..64) xxh3-64 of bytes [0..56)
//! 64         chunk payloads, back to back, in file/segment/chunk order
//! index off  the index (below); it ends the file
//! ```
//!
//! Index (all integers little-endian):
//!
//! ```text
//! u32 file count
//! per file:   u16 name length, UTF-8 name (relative, '/'-separated)
//!             u64 size, u8 kind (0 opaque, 1 safetensors), u32 segment count
//! per segment: u8 codec (0 stored, 1 bytes, 2 float, 3 quantized codes)
//!             float only: u8 format (0 bf16, 1 f16, 2 f32), u8 k
//!             quantized codes only (version >= 2):
//!                 u8 bits (1..=8), u64 code count, u8 mode (1 plain, 2 centered)
//!                 centered only: u32 zero-point segment (index in the same
//!                 file), u64 codes per row, u64 codes per group (<= row)
//!             bytes/float/quantized: u32 table length, frequency table (bit-packed)
//!             u64 length, u32 chunk count
//! per chunk:  u64 payload offset, u32 payload length, u32 original length,
//!             u8 mode (0 stored verbatim, 1 coded),
//!             u64 xxh3-64 of the payload, u64 xxh3-64 of the original bytes
//! ```
//!
//! A file's bytes are its segments' bytes in order; a segment's bytes are its
//! chunks' bytes in order.
//!
//! A quantized-code segment holds `count` codes of `bits` bits bit-packed
//! LSB-first (`ceil(count bits / 8)` bytes). Every chunk but the last has a
//! multiple of `bits` bytes, i.e. of 8 codes, so a chunk's first code index
//! is `8 / bits` times its byte offset in the segment. A coded chunk is one
//! rANS stream of its codes under the segment's table: the codes themselves
//! (mode 1), or `c - z + 2^bits - 1` (mode 2) with `z` the zero point of the
//! code's group, read from the zero-point segment (`rows * ceil(cols /
//! group)` zero points packed at `bits` bits, `rows = count / cols`), which
//! must not be centered itself. See [`crate::quant`].

use std::path::Path;

use crate::bits::BitReader;
use crate::error::{Error, Result};
use crate::float::{FloatFormat, Split};
use crate::rans::{FreqTable, Layout};

/// Magic bytes at the start of every container.
pub const MAGIC: [u8; 8] = *b"DYNAPACK";
/// The highest format version this build writes and reads. Version 2 added
/// the quantized-code segment codec; a container without such segments is
/// written as version 1, which older readers read too.
pub const FORMAT_VERSION: u32 = 2;
/// The version that introduced quantized-code segments.
pub(crate) const QUANT_VERSION: u32 = 2;
/// Size of the fixed header.
pub(crate) const HEADER_LEN: usize = 64;
/// Largest original size of one chunk.
pub const MAX_CHUNK: usize = 64 << 20;
/// Bytes per chunk record in the index.
const CHUNK_RECORD: usize = 8 + 4 + 4 + 1 + 8 + 8;

/// The container's checksum: XXH3-64 with seed 0.
pub(crate) fn hash(bytes: &[u8]) -> u64 {
    crate::checksum::xxh3_64(bytes)
}

/// The fixed header's variable fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) version: u32,
    pub(crate) index_offset: u64,
    pub(crate) index_len: u64,
    pub(crate) index_hash: u64,
    pub(crate) total_len: u64,
}

impl Header {
    pub(crate) fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[16..24].copy_from_slice(&self.index_offset.to_le_bytes());
        b[24..32].copy_from_slice(&self.index_len.to_le_bytes());
        b[32..40].copy_from_slice(&self.index_hash.to_le_bytes());
        b[40..48].copy_from_slice(&self.total_len.to_le_bytes());
        let h = hash(&b[..56]);
        b[56..64].copy_from_slice(&h.to_le_bytes());
        b
    }

    /// Validates the header of a container of `file_len` bytes, in the
    /// order that gives the most useful error: magic, version, truncation,
    /// checksum, index placement.
    pub(crate) fn parse(path: &Path, data: &[u8]) -> Result<Self> {
        let file_len = data.len() as u64;
        if data.len() < 8 || data[..8] != MAGIC {
            if data.len() < 8 && MAGIC.starts_with(data) && !data.is_empty() {
                return Err(Error::Truncated {
                    path: path.into(),
                    detail: format!("only {} bytes, shorter than the magic bytes", data.len()),
                });
            }
            return Err(Error::NotAPack { path: path.into() });
        }
        let u32_at = |o: usize| {
            data.get(o..o + 4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4")))
        };
        let u64_at = |o: usize| {
            data.get(o..o + 8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8")))
        };
        let truncated = |detail: String| Error::Truncated {
            path: path.into(),
            detail,
        };
        let Some(version) = u32_at(8) else {
            return Err(truncated(format!(
                "only {file_len} bytes, shorter than the header"
            )));
        };
        if version > FORMAT_VERSION {
            return Err(Error::FutureVersion {
                path: path.into(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        if data.len() < HEADER_LEN {
            return Err(truncated(format!(
                "only {file_len} bytes, shorter than the {HEADER_LEN}-byte header"
            )));
        }
        let corrupt = |detail: String| Error::Corrupt {
            path: path.into(),
            detail,
        };
        let stored = u64_at(56).expect("in header");
        if hash(&data[..56]) != stored {
            return Err(Error::Checksum {
                path: path.into(),
                what: "the header".into(),
            });
        }
        if version == 0 {
            return Err(corrupt("format version 0".into()));
        }
        let flags = u32_at(12).expect("in header");
        if flags != 0 {
            return Err(corrupt(format!("unknown flags {flags:#x}")));
        }
        let h = Header {
            version,
            index_offset: u64_at(16).expect("in header"),
            index_len: u64_at(24).expect("in header"),
            index_hash: u64_at(32).expect("in header"),
            total_len: u64_at(40).expect("in header"),
        };
        if file_len < h.total_len {
            return Err(truncated(format!(
                "{file_len} bytes, but the header says {}",
                h.total_len
            )));
        }
        if file_len > h.total_len {
            return Err(corrupt(format!(
                "{file_len} bytes, but the header says {}: trailing data",
                h.total_len
            )));
        }
        if h.index_offset < HEADER_LEN as u64
            || h.index_offset.checked_add(h.index_len) != Some(h.total_len)
        {
            return Err(corrupt(format!(
                "index at {} with length {} does not end the {}-byte file",
                h.index_offset, h.index_len, h.total_len
            )));
        }
        Ok(h)
    }
}

/// What kind of file a packed file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Any file, coded as bytes.
    Opaque,
    /// A safetensors file whose float tensors were split into planes.
    Safetensors,
}

/// How a segment's chunks are coded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Codec {
    /// Stored verbatim (integer tensors, incompressible data).
    Stored,
    /// Order-0 rANS over bytes.
    Bytes { table: FreqTable },
    /// Float head/tail planes.
    Float { split: Split, table: FreqTable },
    /// Bit-packed quantized codes, order-0 rANS per chunk (version 2).
    Quant {
        /// Bits per code, 1..=8.
        bits: u8,
        /// Codes in the segment.
        count: u64,
        /// Centered on zero points (mode 2), or plain (mode 1).
        center: Option<Center>,
        /// Over `2^bits` (plain) or `2^(bits+1) - 1` (centered) symbols.
        table: FreqTable,
    },
}

impl Codec {
    /// The lowest format version that has this codec.
    pub(crate) fn min_version(&self) -> u32 {
        match self {
            Codec::Quant { .. } => QUANT_VERSION,
            _ => 1,
        }
    }
}

/// The group layout of centered quantized codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Center {
    /// Index (within the file) of the segment holding the zero points.
    pub(crate) zeros_segment: u32,
    /// Codes per row.
    pub(crate) cols: u64,
    /// Codes per group along a row (the last group of a row may be shorter).
    pub(crate) group_len: u64,
}

impl Center {
    /// Number of zero points for `count` codes (whole rows, validated).
    pub(crate) fn zero_count(&self, count: u64) -> u64 {
        (count / self.cols) * self.cols.div_ceil(self.group_len)
    }
}

/// One chunk's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkRec {
    pub(crate) offset: u64,
    pub(crate) stored_len: u32,
    pub(crate) raw_len: u32,
    pub(crate) coded: bool,
    pub(crate) payload_hash: u64,
    pub(crate) raw_hash: u64,
}

/// A run of a file's bytes with one codec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentRec {
    pub(crate) codec: Codec,
    pub(crate) raw_len: u64,
    pub(crate) chunks: Vec<ChunkRec>,
}

/// One packed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileRec {
    pub(crate) name: String,
    pub(crate) size: u64,
    pub(crate) kind: FileKind,
    pub(crate) segments: Vec<SegmentRec>,
}

/// Appends the index for `files` to `out`.
pub(crate) fn write_index(files: &[FileRec], out: &mut Vec<u8>) {
    out.extend_from_slice(&(files.len() as u32).to_le_bytes());
    for f in files {
        out.extend_from_slice(&(f.name.len() as u16).to_le_bytes());
        out.extend_from_slice(f.name.as_bytes());
        out.extend_from_slice(&f.size.to_le_bytes());
        out.push(match f.kind {
            FileKind::Opaque => 0,
            FileKind::Safetensors => 1,
        });
        out.extend_from_slice(&(f.segments.len() as u32).to_le_bytes());
        for s in &f.segments {
            let table = match &s.codec {
                Codec::Stored => {
                    out.push(0);
                    None
                }
                Codec::Bytes { table } => {
                    out.push(1);
                    Some(table)
                }
                Codec::Float { split, table } => {
                    out.push(2);
                    out.push(split.format.code());
                    out.push(split.k as u8);
                    Some(table)
                }
                Codec::Quant {
                    bits,
                    count,
                    center,
                    table,
                } => {
                    out.push(3);
                    out.push(*bits);
                    out.extend_from_slice(&count.to_le_bytes());
                    match center {
                        None => out.push(1),
                        Some(c) => {
                            out.push(2);
                            out.extend_from_slice(&c.zeros_segment.to_le_bytes());
                            out.extend_from_slice(&c.cols.to_le_bytes());
                            out.extend_from_slice(&c.group_len.to_le_bytes());
                        }
                    }
                    Some(table)
                }
            };
            if let Some(t) = table {
                let mut w = crate::bits::BitWriter::default();
                t.write(&mut w);
                let tb = w.finish();
                out.extend_from_slice(&(tb.len() as u32).to_le_bytes());
                out.extend_from_slice(&tb);
            }
            out.extend_from_slice(&s.raw_len.to_le_bytes());
            out.extend_from_slice(&(s.chunks.len() as u32).to_le_bytes());
            for c in &s.chunks {
                out.extend_from_slice(&c.offset.to_le_bytes());
                out.extend_from_slice(&c.stored_len.to_le_bytes());
                out.extend_from_slice(&c.raw_len.to_le_bytes());
                out.push(u8::from(c.coded));
                out.extend_from_slice(&c.payload_hash.to_le_bytes());
                out.extend_from_slice(&c.raw_hash.to_le_bytes());
            }
        }
    }
}

/// Bounds-checked little-endian reader over the index.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2)
            .map(|b| u16::from_le_bytes(b.try_into().expect("2")))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4")))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8")))
    }
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }
}

/// Whether `name` is a safe relative path: non-empty '/'-separated
/// components, none empty, `.` or `..`, no backslashes, NUL or drive
/// prefixes.
pub(crate) fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains(['\\', '\0', ':'])
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Parses and fully validates the index of a container of format `version`
/// whose payload area is `[HEADER_LEN, data_end)`. Every count is checked
/// against the bytes that remain before anything is allocated for it.
pub(crate) fn read_index(
    path: &Path,
    index: &[u8],
    data_end: u64,
    version: u32,
) -> Result<Vec<FileRec>> {
    let corrupt = |detail: String| Error::Corrupt {
        path: path.into(),
        detail,
    };
    let short = || corrupt("the index ends early".into());
    let mut c = Cursor {
        data: index,
        pos: 0,
    };
    let nfiles = c.u32().ok_or_else(short)? as usize;
    // A file record takes at least 2 + 1 + 8 + 1 + 4 bytes.
    if nfiles > c.remaining() / 16 {
        return Err(corrupt(format!(
            "index claims {nfiles} files, more than it can hold"
        )));
    }
    let mut files = Vec::with_capacity(nfiles);
    let mut names = std::collections::HashSet::new();
    for fi in 0..nfiles {
        let nlen = usize::from(c.u16().ok_or_else(short)?);
        let name = std::str::from_utf8(c.take(nlen).ok_or_else(short)?)
            .map_err(|_| corrupt(format!("file {fi}: name is not UTF-8")))?
            .to_string();
        if !is_safe_name(&name) {
            return Err(corrupt(format!("file {fi}: unsafe name {name:?}")));
        }
        if !names.insert(name.clone()) {
            return Err(corrupt(format!("file name {name:?} appears twice")));
        }
        let size = c.u64().ok_or_else(short)?;
        let kind = match c.u8().ok_or_else(short)? {
            0 => FileKind::Opaque,
            1 => FileKind::Safetensors,
            k => return Err(corrupt(format!("{name}: unknown file kind {k}"))),
        };
        let nseg = c.u32().ok_or_else(short)? as usize;
        // A segment record takes at least 1 + 8 + 4 bytes.
        if nseg > c.remaining() / 13 {
            return Err(corrupt(format!(
                "{name}: claims {nseg} segments, more than the index holds"
            )));
        }
        let mut segments = Vec::with_capacity(nseg);
        let mut total = 0u64;
        for si in 0..nseg {
            let seg = read_segment(&mut c, data_end, version)
                .map_err(|d| corrupt(format!("{name}: segment {si}: {d}")))?;
            total = total
                .checked_add(seg.raw_len)
                .ok_or_else(|| corrupt(format!("{name}: segment sizes overflow")))?;
            segments.push(seg);
        }
        if total != size {
            return Err(corrupt(format!(
                "{name}: segments hold {total} bytes but the file size is {size}"
            )));
        }
        check_contexts(&segments).map_err(|d| corrupt(format!("{name}: {d}")))?;
        files.push(FileRec {
            name,
            size,
            kind,
            segments,
        });
    }
    if c.remaining() != 0 {
        return Err(corrupt(format!(
            "{} bytes after the end of the index",
            c.remaining()
        )));
    }
    Ok(files)
}

/// Checks that every centered quantized-code segment names a zero-point
/// segment of the same file that is not centered itself and holds exactly
/// the packed zero points of its groups.
fn check_contexts(segments: &[SegmentRec]) -> std::result::Result<(), String> {
    for (si, s) in segments.iter().enumerate() {
        let Codec::Quant {
            bits,
            count,
            center: Some(c),
            ..
        } = &s.codec
        else {
            continue;
        };
        let zi = c.zeros_segment as usize;
        let Some(z) = segments.get(zi).filter(|_| zi != si) else {
            return Err(format!(
                "segment {si}: zero points in segment {zi}, which is not another segment of the file"
            ));
        };
        if matches!(
            z.codec,
            Codec::Quant {
                center: Some(_),
                ..
            }
        ) {
            return Err(format!(
                "segment {si}: its zero-point segment {zi} is centered itself"
            ));
        }
        let want = crate::quant::packed_len(c.zero_count(*count) as usize, *bits) as u64;
        if z.raw_len != want {
            return Err(format!(
                "segment {si}: zero-point segment {zi} holds {} bytes, its groups need {want}",
                z.raw_len
            ));
        }
    }
    Ok(())
}

fn read_segment(
    c: &mut Cursor<'_>,
    data_end: u64,
    version: u32,
) -> std::result::Result<SegmentRec, String> {
    let short = || "the index ends early".to_string();
    let tag = c.u8().ok_or_else(short)?;
    let table_for = |c: &mut Cursor<'_>, alphabet: u32| -> std::result::Result<FreqTable, String> {
        let tlen = c.u32().ok_or_else(short)? as usize;
        let tb = c.take(tlen).ok_or_else(short)?;
        FreqTable::read(&mut BitReader::new(tb), alphabet).map_err(|e| e.to_string())
    };
    let codec = match tag {
        0 => Codec::Stored,
        1 => Codec::Bytes {
            table: table_for(c, 256)?,
        },
        2 => {
            let fcode = c.u8().ok_or_else(short)?;
            let format = FloatFormat::from_code(fcode)
                .ok_or_else(|| format!("unknown float format {fcode}"))?;
            let k = u32::from(c.u8().ok_or_else(short)?);
            if k > format.max_k() {
                return Err(format!(
                    "{format:?} split k = {k} exceeds {}",
                    format.max_k()
                ));
            }
            let split = Split { format, k };
            Codec::Float {
                split,
                table: table_for(c, 1 << split.head_bits())?,
            }
        }
        3 if version >= QUANT_VERSION => {
            let bits = c.u8().ok_or_else(short)?;
            if !(1..=8).contains(&bits) {
                return Err(format!("quantized codes of {bits} bits"));
            }
            let count = c.u64().ok_or_else(short)?;
            if count == 0 {
                return Err("quantized-code segment of zero codes".into());
            }
            let center = match c.u8().ok_or_else(short)? {
                1 => None,
                2 => {
                    let zeros_segment = c.u32().ok_or_else(short)?;
                    let cols = c.u64().ok_or_else(short)?;
                    let group_len = c.u64().ok_or_else(short)?;
                    if cols == 0 || !count.is_multiple_of(cols) {
                        return Err(format!("{count} codes are not whole rows of {cols}"));
                    }
                    if group_len == 0 || group_len > cols {
                        return Err(format!(
                            "group length {group_len} outside 1..={cols} (the row)"
                        ));
                    }
                    Some(Center {
                        zeros_segment,
                        cols,
                        group_len,
                    })
                }
                m => return Err(format!("unknown quantized-code mode {m}")),
            };
            let maxq = (1u32 << bits) - 1;
            let alphabet = if center.is_some() {
                2 * maxq + 1
            } else {
                maxq + 1
            };
            Codec::Quant {
                bits,
                count,
                center,
                table: table_for(c, alphabet)?,
            }
        }
        3 => {
            return Err(format!(
                "quantized-code segment in a version {version} container (needs {QUANT_VERSION})"
            ));
        }
        t => return Err(format!("unknown codec {t}")),
    };
    let raw_len = c.u64().ok_or_else(short)?;
    if let Codec::Quant { bits, count, .. } = &codec {
        let want = u128::from(*count) * u128::from(*bits);
        if u128::from(raw_len) != want.div_ceil(8) {
            return Err(format!(
                "{raw_len} bytes cannot hold exactly {count} codes of {bits} bits"
            ));
        }
    }
    let nchunks = c.u32().ok_or_else(short)? as usize;
    if nchunks > c.remaining() / CHUNK_RECORD {
        return Err(format!(
            "claims {nchunks} chunks, more than the index holds"
        ));
    }
    let mut chunks = Vec::with_capacity(nchunks);
    let mut total = 0u64;
    for ci in 0..nchunks {
        let last = ci + 1 == nchunks;
        let rec = ChunkRec {
            offset: c.u64().ok_or_else(short)?,
            stored_len: c.u32().ok_or_else(short)?,
            raw_len: c.u32().ok_or_else(short)?,
            coded: match c.u8().ok_or_else(short)? {
                0 => false,
                1 => true,
                m => return Err(format!("chunk {ci}: unknown mode {m}")),
            },
            payload_hash: c.u64().ok_or_else(short)?,
            raw_hash: c.u64().ok_or_else(short)?,
        };
        let raw = rec.raw_len as usize;
        if raw == 0 || raw > MAX_CHUNK {
            return Err(format!(
                "chunk {ci}: original length {raw} outside 1..={MAX_CHUNK}"
            ));
        }
        let end = rec.offset.checked_add(u64::from(rec.stored_len));
        if rec.offset < HEADER_LEN as u64 || end.is_none_or(|e| e > data_end) {
            return Err(format!(
                "chunk {ci}: payload at offset {} with length {} lies outside the data area [{HEADER_LEN}, {data_end})",
                rec.offset, rec.stored_len
            ));
        }
        let stored = rec.stored_len as usize;
        if !rec.coded && stored != raw {
            return Err(format!(
                "chunk {ci}: stored verbatim but {stored} bytes hold {raw}"
            ));
        }
        if rec.coded {
            match &codec {
                Codec::Stored => {
                    return Err(format!("chunk {ci}: coded chunk in a stored segment"));
                }
                Codec::Bytes { .. } => {
                    if stored < Layout::for_len(1).min_bytes() {
                        return Err(format!(
                            "chunk {ci}: payload of {stored} bytes is too short"
                        ));
                    }
                }
                Codec::Quant { bits, count, .. } => {
                    // Codes in this chunk: whole groups of 8 unless last.
                    let n = if last {
                        count.saturating_sub(total * 8 / u64::from(*bits))
                    } else {
                        raw as u64 * 8 / u64::from(*bits)
                    };
                    let need = Layout::for_len(n as usize).min_bytes();
                    if stored < need {
                        return Err(format!(
                            "chunk {ci}: payload of {stored} bytes is shorter than its {need}-byte minimum"
                        ));
                    }
                }
                Codec::Float { split, .. } => {
                    let width = split.format.bytes();
                    if !raw.is_multiple_of(width) {
                        return Err(format!(
                            "chunk {ci}: {raw} bytes is not a whole number of {width}-byte floats"
                        ));
                    }
                    let need = 4 + split.tail_bytes(raw / width);
                    if stored < need {
                        return Err(format!(
                            "chunk {ci}: payload of {stored} bytes is shorter than its {need}-byte minimum"
                        ));
                    }
                }
            }
        }
        if let Codec::Quant { bits, .. } = &codec
            && !last
            && !raw.is_multiple_of(usize::from(*bits))
        {
            return Err(format!(
                "chunk {ci}: {raw} bytes is not a whole number of 8 codes of {bits} bits"
            ));
        }
        total += rec.raw_len as u64;
        chunks.push(rec);
    }
    if total != raw_len {
        return Err(format!(
            "chunks hold {total} bytes but the segment length is {raw_len}"
        ));
    }
    Ok(SegmentRec {
        codec,
        raw_len,
        chunks,
    })
}
