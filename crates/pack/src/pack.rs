//! Packing: plan each file into segments, choose a codec per segment, code
//! chunks in parallel and write them in order, then the index and header.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;

use crate::error::{Error, Result, io};
use crate::float::{self, FloatFormat, Split};
use crate::format::{
    self, ChunkRec, Codec, FileKind, FileRec, HEADER_LEN, Header, MAX_CHUNK, SegmentRec, hash,
};
use crate::quant;
use crate::rans::{self, Encoder, FreqTable, Layout};

/// Progress of a pack or unpack: original bytes processed so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Original bytes done.
    pub done: u64,
    /// Original bytes in total.
    pub total: u64,
}

/// A progress callback.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// Options for [`pack_dir`] and [`pack_files`].
#[derive(Clone)]
pub struct PackOptions {
    /// Worker threads; 0 uses rayon's global pool.
    pub threads: usize,
    /// Original bytes per chunk (4 KiB ..= 64 MiB). Chunks are coded and
    /// decoded independently, so they are the unit of parallelism.
    pub chunk_size: usize,
    /// Called after each batch of chunks is written.
    pub progress: Option<ProgressFn>,
    /// [`pack_dir`]: replace an existing output file (otherwise an error).
    pub overwrite: bool,
}

impl Default for PackOptions {
    fn default() -> Self {
        Self {
            threads: 0,
            chunk_size: 1 << 20,
            progress: None,
            overwrite: false,
        }
    }
}

impl std::fmt::Debug for PackOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackOptions")
            .field("threads", &self.threads)
            .field("chunk_size", &self.chunk_size)
            .field("progress", &self.progress.is_some())
            .field("overwrite", &self.overwrite)
            .finish()
    }
}

/// What [`pack_dir`] / [`pack_files`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PackReport {
    /// Files packed.
    pub files: usize,
    /// Total original bytes.
    pub input_bytes: u64,
    /// Container size.
    pub output_bytes: u64,
    /// Original bytes of float tensors coded as planes.
    pub float_input_bytes: u64,
    /// Payload bytes of those tensors (without index).
    pub float_output_bytes: u64,
    /// Original bytes stored verbatim (integer tensors, incompressible data).
    pub stored_bytes: u64,
    /// Original bytes of the quantized codes and zero points recognised
    /// from `dynapress.quant` metadata (format 2), all their chunks.
    pub quant_input_bytes: u64,
    /// Payload bytes of those tensors (without index).
    pub quant_output_bytes: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl PackReport {
    /// Container size as a fraction of the original bytes.
    pub fn ratio(&self) -> f64 {
        self.output_bytes as f64 / self.input_bytes.max(1) as f64
    }
}

/// One input file for [`pack_files`].
#[derive(Debug, Clone, Copy)]
pub struct InputFile<'a> {
    /// Relative name in the container ('/'-separated).
    pub name: &'a str,
    /// Its bytes.
    pub data: &'a [u8],
}

/// What kind of bytes a segment holds, before a codec is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SegKind {
    /// Pass through (integer tensors, dtypes we do not split).
    Stored,
    /// Order-0 byte coding (headers, JSON, unknown files).
    Bytes,
    /// Float planes.
    Float(FloatFormat),
    /// Bit-packed quantized codes or zero points of a layer described by
    /// the file's `dynapress.quant` metadata.
    Quant(QuantPlan),
}

/// A quantized-code tensor: `count` codes of `bits` bits.
#[derive(Debug, Clone, PartialEq, Eq)]
struct QuantPlan {
    bits: u8,
    count: u64,
    /// For asymmetric codes: where the group zero points are.
    center: Option<CenterPlan>,
}

/// The zero points of a codes tensor: the segment (index in the file) and
/// byte range that hold them, and the group layout.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CenterPlan {
    segment: usize,
    range: Range<usize>,
    cols: u64,
    group_len: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SegPlan {
    range: Range<usize>,
    kind: SegKind,
}

/// Splits a file into segments: for a valid safetensors file, the header,
/// each tensor and any gaps; otherwise the whole file as bytes.
fn plan_file(data: &[u8]) -> (FileKind, Vec<SegPlan>) {
    if let Some((tensors, quant)) = parse_safetensors(data) {
        let base = 8 + u64::from_le_bytes(data[..8].try_into().expect("8")) as usize;
        let mut segs = vec![SegPlan {
            range: 0..base,
            kind: SegKind::Bytes,
        }];
        // Tensor start offset -> segment index, to link codes to zeros.
        let mut seg_of = std::collections::HashMap::new();
        let mut at = base;
        for t in tensors {
            if t.range.start > at {
                segs.push(SegPlan {
                    range: at..t.range.start,
                    kind: SegKind::Bytes,
                });
            }
            at = t.range.end;
            let kind = match quant.get(&t.range.start) {
                Some(q) => SegKind::Quant(q.clone()),
                None => t.kind,
            };
            seg_of.insert(t.range.start, segs.len());
            segs.push(SegPlan {
                range: t.range,
                kind,
            });
        }
        if at < data.len() {
            segs.push(SegPlan {
                range: at..data.len(),
                kind: SegKind::Bytes,
            });
        }
        for s in &mut segs {
            if let SegKind::Quant(QuantPlan {
                center: Some(c), ..
            }) = &mut s.kind
            {
                c.segment = seg_of[&c.range.start];
            }
        }
        (FileKind::Safetensors, segs)
    } else if data.is_empty() {
        (FileKind::Opaque, vec![])
    } else {
        (
            FileKind::Opaque,
            vec![SegPlan {
                range: 0..data.len(),
                kind: SegKind::Bytes,
            }],
        )
    }
}

/// One non-empty tensor of a safetensors file.
struct TensorSpan {
    name: String,
    dtype: String,
    range: Range<usize>,
    kind: SegKind,
}

/// The non-empty tensors of a safetensors file as absolute byte ranges
/// sorted by offset, with the quantized-code tensors its metadata describes
/// (keyed by start offset), or `None` if the file is not well-formed
/// safetensors (then it is packed as opaque bytes, which is always
/// lossless).
#[allow(clippy::type_complexity)]
fn parse_safetensors(
    data: &[u8],
) -> Option<(Vec<TensorSpan>, std::collections::HashMap<usize, QuantPlan>)> {
    let n = u64::from_le_bytes(data.get(..8)?.try_into().ok()?);
    let base = 8usize.checked_add(usize::try_from(n).ok()?)?;
    let header = data.get(8..base)?;
    if header.first() != Some(&b'{') {
        return None;
    }
    let json: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header).ok()?;
    let mut tensors = Vec::with_capacity(json.len());
    for (name, v) in &json {
        if name == "__metadata__" {
            continue;
        }
        let dtype = v.get("dtype")?.as_str()?;
        let offs = v.get("data_offsets")?.as_array()?;
        if offs.len() != 2 {
            return None;
        }
        let a = base.checked_add(usize::try_from(offs[0].as_u64()?).ok()?)?;
        let b = base.checked_add(usize::try_from(offs[1].as_u64()?).ok()?)?;
        if a > b || b > data.len() {
            return None;
        }
        if a == b {
            continue;
        }
        let kind = match FloatFormat::from_safetensors_dtype(dtype) {
            Some(f) if (b - a) % f.bytes() == 0 => SegKind::Float(f),
            _ => SegKind::Stored,
        };
        tensors.push(TensorSpan {
            name: name.clone(),
            dtype: dtype.to_string(),
            range: a..b,
            kind,
        });
    }
    tensors.sort_by_key(|t| t.range.start);
    if tensors
        .windows(2)
        .any(|w| w[0].range.end > w[1].range.start)
    {
        return None;
    }
    let quant = json
        .get("__metadata__")
        .and_then(|m| m.get(QUANT_METADATA_KEY))
        .map(|q| quant_tensors(q, &tensors))
        .unwrap_or_default();
    Some((tensors, quant))
}

/// The `__metadata__` key of a dynapress-native quantized export.
const QUANT_METADATA_KEY: &str = "dynapress.quant";

/// The quantized-code tensors described by a `dynapress.quant` metadata
/// value (a JSON object, or a string holding one, mapping each layer `NAME`
/// to `{"rows", "cols", "scheme": {"bits", "group_size", "sym"}}`), keyed
/// by the start offset of the tensor: `NAME.codes` and, for asymmetric
/// schemes, `NAME.zeros` (U8, bit-packed at `bits` bits). A layer whose
/// description or tensors do not fit together is left out, so its tensors
/// are packed like any other integer tensor.
fn quant_tensors(
    meta: &serde_json::Value,
    tensors: &[TensorSpan],
) -> std::collections::HashMap<usize, QuantPlan> {
    let mut out = std::collections::HashMap::new();
    let parsed;
    let map = match meta {
        serde_json::Value::String(s) => match serde_json::from_str(s) {
            Ok(serde_json::Value::Object(m)) => {
                parsed = m;
                &parsed
            }
            _ => return out,
        },
        serde_json::Value::Object(m) => m,
        _ => return out,
    };
    let by_name: std::collections::HashMap<&str, &TensorSpan> =
        tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    for (name, desc) in map {
        let Some(layer) = LayerDesc::parse(desc) else {
            continue;
        };
        // Bytes of `n` packed codes, if every size fits.
        let packed = |n: u64| -> Option<usize> {
            usize::try_from((u128::from(n) * u128::from(layer.bits)).div_ceil(8)).ok()
        };
        let u8_tensor = |suffix: &str| {
            by_name
                .get(format!("{name}.{suffix}").as_str())
                .filter(|t| t.dtype == "U8")
        };
        let Some(count) = layer.rows.checked_mul(layer.cols) else {
            continue;
        };
        let Some(codes) = u8_tensor("codes").filter(|t| Some(t.range.len()) == packed(count))
        else {
            continue;
        };
        let group_len = if layer.group_size == 0 || layer.group_size >= layer.cols {
            layer.cols
        } else {
            layer.group_size
        };
        let zero_count = layer.rows * layer.cols.div_ceil(group_len);
        let zeros = by_name.get(format!("{name}.zeros").as_str());
        let center = match (layer.sym, zeros) {
            (true, None) => None,
            (false, Some(_)) => {
                let Some(z) =
                    u8_tensor("zeros").filter(|t| Some(t.range.len()) == packed(zero_count))
                else {
                    continue;
                };
                out.insert(
                    z.range.start,
                    QuantPlan {
                        bits: layer.bits,
                        count: zero_count,
                        center: None,
                    },
                );
                Some(CenterPlan {
                    segment: usize::MAX, // resolved by plan_file
                    range: z.range.clone(),
                    cols: layer.cols,
                    group_len,
                })
            }
            // Zero points missing for an asymmetric layer, or present for a
            // symmetric one: the description does not fit the tensors.
            _ => continue,
        };
        out.insert(
            codes.range.start,
            QuantPlan {
                bits: layer.bits,
                count,
                center,
            },
        );
    }
    out
}

/// The fields of one layer's `dynapress.quant` entry that the packer uses
/// (other fields are ignored).
struct LayerDesc {
    rows: u64,
    cols: u64,
    bits: u8,
    group_size: u64,
    sym: bool,
}

impl LayerDesc {
    fn parse(v: &serde_json::Value) -> Option<Self> {
        let scheme = v.get("scheme")?;
        let bits = u8::try_from(scheme.get("bits")?.as_u64()?).ok()?;
        let d = Self {
            rows: v.get("rows")?.as_u64()?,
            cols: v.get("cols")?.as_u64()?,
            bits,
            group_size: scheme.get("group_size")?.as_u64()?,
            sym: scheme.get("sym")?.as_bool()?,
        };
        ((1..=8).contains(&bits) && d.rows > 0 && d.cols > 0).then_some(d)
    }
}

/// Chunk ranges (relative to the segment) of `len` bytes with elements of
/// `width` bytes.
fn chunk_ranges(len: usize, chunk: usize, width: usize) -> Vec<Range<usize>> {
    let step = (chunk / width).max(1) * width;
    (0..len)
        .step_by(step)
        .map(|s| s..(s + step).min(len))
        .collect()
}

/// Order-0 byte histogram, in parallel for large inputs.
fn byte_histogram(data: &[u8]) -> Vec<u64> {
    data.par_chunks(1 << 20)
        .map(|c| rans::histogram(c, 256))
        .reduce(|| vec![0u64; 256], add_hist)
}

fn add_hist(mut a: Vec<u64>, b: Vec<u64>) -> Vec<u64> {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
    a
}

/// Chooses the codec of one segment by its exact coded size. For centered
/// quantized codes, also returns the unpacked zero points (the context the
/// chunks are coded with).
fn choose_codec(data: &[u8], plan: &SegPlan, chunks: &[Range<usize>]) -> (Codec, Option<Vec<u8>>) {
    let bytes = &data[plan.range.clone()];
    let codec = match &plan.kind {
        SegKind::Stored => Codec::Stored,
        SegKind::Bytes => {
            let counts = byte_histogram(bytes);
            let Some(table) = FreqTable::from_counts(&counts, rans::scale_for(&counts)) else {
                return (Codec::Stored, None);
            };
            let overhead: usize = chunks
                .iter()
                .map(|c| Layout::for_len(c.len()).min_bytes())
                .sum();
            let bits =
                table.cost_bits(&counts) + table.serialized_bits() as f64 + 8.0 * overhead as f64;
            if bits < 8.0 * bytes.len() as f64 {
                Codec::Bytes { table }
            } else {
                Codec::Stored
            }
        }
        SegKind::Float(format) => {
            let format = *format;
            let hist = chunks
                .par_iter()
                .map(|c| float::head_histogram(format, &bytes[c.clone()]))
                .reduce(
                    || vec![0u64; 1 << (format.exp_bits() + format.max_k())],
                    add_hist,
                );
            let lens: Vec<usize> = chunks.iter().map(|c| c.len() / format.bytes()).collect();
            match float::choose_model(format, &hist, (bytes.len() / format.bytes()) as u64, &lens) {
                Some(m) => Codec::Float {
                    split: m.split,
                    table: m.table,
                },
                None => Codec::Stored,
            }
        }
        SegKind::Quant(q) => return choose_quant(data, bytes, q, chunks),
    };
    (codec, None)
}

/// Codes in each chunk of a quantized-code segment of `count` codes, and
/// the index of each chunk's first code.
fn quant_chunk_codes(
    chunks: &[Range<usize>],
    bits: u8,
    count: u64,
) -> impl Iterator<Item = (usize, usize)> + '_ {
    let b = usize::from(bits);
    chunks.iter().map(move |c| {
        let first = c.start * 8 / b;
        // The last chunk ends with padding bits, not codes.
        (first, (c.end * 8 / b).min(count as usize) - first)
    })
}

/// The model of a quantized-code segment: plain, or centered on the zero
/// points when that is smaller (as [`quant::encode_codes`] decides), or
/// stored when coding does not pay.
fn choose_quant(
    data: &[u8],
    bytes: &[u8],
    q: &QuantPlan,
    chunks: &[Range<usize>],
) -> (Codec, Option<Vec<u8>>) {
    let zeros = q.center.as_ref().map(|c| {
        let n = q.count / c.cols * c.cols.div_ceil(c.group_len);
        quant::unpack_values(&data[c.range.clone()], q.bits, n as usize)
    });
    let groups = q
        .center
        .as_ref()
        .zip(zeros.as_ref())
        .map(|(c, z)| quant::Groups {
            zeros: z,
            cols: c.cols as usize,
            group_len: c.group_len as usize,
        });
    let spans: Vec<(usize, usize)> = quant_chunk_codes(chunks, q.bits, q.count).collect();
    let maxq = (1usize << q.bits) - 1;
    let (plain, centered) = chunks
        .par_iter()
        .zip(&spans)
        .map(|(c, &(first, n))| {
            quant::chunk_histograms(&bytes[c.clone()], q.bits, first, n, groups.as_ref())
        })
        .reduce(
            || {
                (
                    vec![0u64; maxq + 1],
                    groups.as_ref().map(|_| vec![0u64; 2 * maxq + 1]),
                )
            },
            |(a, ca), (b, cb)| {
                let c = match (ca, cb) {
                    (Some(x), Some(y)) => Some(add_hist(x, y)),
                    (x, _) => x,
                };
                (add_hist(a, b), c)
            },
        );
    let flushes: usize = spans
        .iter()
        .map(|&(_, n)| Layout::for_len(n).min_bytes())
        .sum();
    let cost = |counts: &[u64]| {
        let t = FreqTable::from_counts(counts, rans::scale_for(counts))
            .expect("a non-empty segment has codes; alphabet <= 511");
        let bits = t.cost_bits(counts) + t.serialized_bits() as f64 + 8.0 * flushes as f64;
        (t, bits)
    };
    let mut best = (None, cost(&plain));
    if let (Some(h), Some(c)) = (&centered, &q.center) {
        let alt = cost(h);
        if alt.1 < best.1.1 {
            best = (
                Some(format::Center {
                    zeros_segment: c.segment as u32,
                    cols: c.cols,
                    group_len: c.group_len,
                }),
                alt,
            );
        }
    }
    let (center, (table, bits)) = best;
    if bits >= 8.0 * bytes.len() as f64 {
        return (Codec::Stored, None);
    }
    let ctx = if center.is_some() { zeros } else { None };
    (
        Codec::Quant {
            bits: q.bits,
            count: q.count,
            center,
            table,
        },
        ctx,
    )
}

enum SegEncoder {
    Stored,
    Bytes(Encoder),
    Float(Split, Encoder),
    Quant(QuantEncoder),
}

/// What coding the chunks of a quantized-code segment needs.
struct QuantEncoder {
    enc: Encoder,
    bits: u8,
    count: usize,
    /// For centered codes: the unpacked zero points, codes per row, codes
    /// per group.
    ctx: Option<(Vec<u8>, usize, usize)>,
}

/// Codes one chunk, which starts `offset` bytes into its segment; falls
/// back to storing it when coding does not shrink it.
fn encode_one<'a>(enc: &SegEncoder, raw: &'a [u8], offset: usize) -> (Cow<'a, [u8]>, bool) {
    let coded = match enc {
        SegEncoder::Stored => None,
        SegEncoder::Bytes(e) => Some(
            e.encode(raw, Layout::for_len(raw.len()))
                .expect("table built from this segment"),
        ),
        SegEncoder::Float(split, e) => {
            Some(float::encode_chunk(*split, e, raw).expect("table built from this segment"))
        }
        SegEncoder::Quant(q) => {
            let b = usize::from(q.bits);
            let first = offset * 8 / b;
            // The last chunk ends with padding bits, not codes.
            let n = ((offset + raw.len()) * 8 / b).min(q.count) - first;
            let groups = q.ctx.as_ref().map(|(z, cols, gl)| quant::Groups {
                zeros: z,
                cols: *cols,
                group_len: *gl,
            });
            quant::encode_chunk(&q.enc, q.bits, groups.as_ref(), raw, first, n)
        }
    };
    match coded {
        Some(p) if p.len() < raw.len() => (Cow::Owned(p), true),
        _ => (Cow::Borrowed(raw), false),
    }
}

/// Runs `f` on a pool of `threads` workers (0: the global pool).
pub(crate) fn with_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> Result<R> {
    if threads == 0 {
        return Ok(f());
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::BadOptions(format!("cannot start {threads} threads: {e}")))?;
    Ok(pool.install(f))
}

/// Packs in-memory files into a container written to `out` (which must be
/// positioned at its start). `label` names the output in errors.
pub fn pack_files<W: Write + Seek + Send>(
    inputs: &[InputFile<'_>],
    out: &mut W,
    label: &Path,
    opts: &PackOptions,
) -> Result<PackReport> {
    if !(4096..=MAX_CHUNK).contains(&opts.chunk_size) {
        return Err(Error::BadOptions(format!(
            "chunk size {} outside 4096..={MAX_CHUNK}",
            opts.chunk_size
        )));
    }
    let mut names = std::collections::HashSet::new();
    for f in inputs {
        if !format::is_safe_name(f.name) || f.name.len() > usize::from(u16::MAX) {
            return Err(Error::BadInput {
                path: f.name.into(),
                detail: "file name must be a relative '/'-separated path without '.', '..', '\\' or ':' components".into(),
            });
        }
        if !names.insert(f.name) {
            return Err(Error::BadInput {
                path: f.name.into(),
                detail: "file name appears twice".into(),
            });
        }
    }
    with_threads(opts.threads, || pack_inner(inputs, out, label, opts))?
}

fn pack_inner<W: Write + Seek>(
    inputs: &[InputFile<'_>],
    out: &mut W,
    label: &Path,
    opts: &PackOptions,
) -> Result<PackReport> {
    let start = Instant::now();
    let wr = io(label, "writing the pack");
    // Plan, then choose codecs (segments in parallel).
    struct Seg<'a> {
        file: usize,
        data: &'a [u8],
        range: Range<usize>,
        chunks: Vec<Range<usize>>,
        codec: Codec,
    }
    let mut planned = Vec::new();
    let mut kinds = Vec::with_capacity(inputs.len());
    for (fi, f) in inputs.iter().enumerate() {
        let (kind, segs) = plan_file(f.data);
        kinds.push(kind);
        for p in segs {
            // Float chunks hold whole elements; quantized-code chunks whole
            // groups of 8 codes (`bits` bytes).
            let width = match &p.kind {
                SegKind::Float(fmt) => fmt.bytes(),
                SegKind::Quant(q) => usize::from(q.bits),
                _ => 1,
            };
            let chunks = chunk_ranges(p.range.len(), opts.chunk_size, width);
            planned.push((fi, p, chunks));
        }
    }
    let (segs, encoders): (Vec<Seg<'_>>, Vec<SegEncoder>) = planned
        .into_par_iter()
        .map(|(fi, p, chunks)| {
            let data = inputs[fi].data;
            let (codec, ctx) = choose_codec(data, &p, &chunks);
            let encoder = match &codec {
                Codec::Stored => SegEncoder::Stored,
                Codec::Bytes { table } => SegEncoder::Bytes(Encoder::new(table)),
                Codec::Float { split, table } => SegEncoder::Float(*split, Encoder::new(table)),
                Codec::Quant {
                    bits,
                    count,
                    center,
                    table,
                } => SegEncoder::Quant(QuantEncoder {
                    enc: Encoder::new(table),
                    bits: *bits,
                    count: *count as usize,
                    ctx: center
                        .zip(ctx)
                        .map(|(c, z)| (z, c.cols as usize, c.group_len as usize)),
                }),
            };
            let seg = Seg {
                file: fi,
                data,
                range: p.range,
                chunks,
                codec,
            };
            (seg, encoder)
        })
        .unzip();

    // Code chunks in parallel batches, write them in order.
    let total: u64 = inputs.iter().map(|f| f.data.len() as u64).sum();
    let jobs: Vec<(usize, usize)> = segs
        .iter()
        .enumerate()
        .flat_map(|(si, s)| (0..s.chunks.len()).map(move |ci| (si, ci)))
        .collect();
    let mut recs: Vec<Vec<ChunkRec>> = segs
        .iter()
        .map(|s| Vec::with_capacity(s.chunks.len()))
        .collect();
    out.write_all(&[0u8; HEADER_LEN]).map_err(wr)?;
    let mut offset = HEADER_LEN as u64;
    let mut done = 0u64;
    let mut report = PackReport {
        files: inputs.len(),
        input_bytes: total,
        ..Default::default()
    };
    let batch_bytes = 256usize << 20;
    let mut at = 0;
    while at < jobs.len() {
        let mut end = at;
        let mut bytes = 0;
        while end < jobs.len() && (end == at || bytes < batch_bytes) {
            let (si, ci) = jobs[end];
            bytes += segs[si].chunks[ci].len();
            end += 1;
        }
        let coded: Vec<_> = jobs[at..end]
            .par_iter()
            .map(|&(si, ci)| {
                let s = &segs[si];
                let r = &s.chunks[ci];
                let raw = &s.data[s.range.start + r.start..s.range.start + r.end];
                let (payload, is_coded) = encode_one(&encoders[si], raw, r.start);
                let raw_hash = hash(raw);
                let payload_hash = if is_coded { hash(&payload) } else { raw_hash };
                (payload, is_coded, payload_hash, raw_hash)
            })
            .collect();
        for (&(si, ci), (payload, is_coded, payload_hash, raw_hash)) in
            jobs[at..end].iter().zip(coded)
        {
            out.write_all(&payload)
                .map_err(io(label, "writing the pack"))?;
            let raw_len = segs[si].chunks[ci].len();
            recs[si].push(ChunkRec {
                offset,
                stored_len: payload.len() as u32,
                raw_len: raw_len as u32,
                coded: is_coded,
                payload_hash,
                raw_hash,
            });
            offset += payload.len() as u64;
            done += raw_len as u64;
            match (&segs[si].codec, is_coded) {
                (Codec::Float { .. }, true) => {
                    report.float_input_bytes += raw_len as u64;
                    report.float_output_bytes += payload.len() as u64;
                }
                (_, false) => report.stored_bytes += raw_len as u64,
                _ => {}
            }
            if let Codec::Quant { .. } = &segs[si].codec {
                report.quant_input_bytes += raw_len as u64;
                report.quant_output_bytes += payload.len() as u64;
            }
        }
        if let Some(p) = &opts.progress {
            p(Progress { done, total });
        }
        at = end;
    }

    // Index and header.
    let mut files: Vec<FileRec> = inputs
        .iter()
        .zip(&kinds)
        .map(|(f, &kind)| FileRec {
            name: f.name.to_string(),
            size: f.data.len() as u64,
            kind,
            segments: vec![],
        })
        .collect();
    for (s, chunks) in segs.into_iter().zip(recs) {
        files[s.file].segments.push(SegmentRec {
            codec: s.codec,
            raw_len: s.range.len() as u64,
            chunks,
        });
    }
    let mut index = Vec::new();
    format::write_index(&files, &mut index);
    out.write_all(&index)
        .map_err(io(label, "writing the pack index"))?;
    // The lowest version that has every codec used: packs without
    // quantized-code segments stay readable by format-1 readers.
    let version = files
        .iter()
        .flat_map(|f| &f.segments)
        .map(|s| s.codec.min_version())
        .max()
        .unwrap_or(1);
    let header = Header {
        version,
        index_offset: offset,
        index_len: index.len() as u64,
        index_hash: hash(&index),
        total_len: offset + index.len() as u64,
    };
    out.seek(SeekFrom::Start(0))
        .map_err(io(label, "seeking in the pack"))?;
    out.write_all(&header.to_bytes())
        .map_err(io(label, "writing the pack header"))?;
    out.seek(SeekFrom::Start(header.total_len))
        .map_err(io(label, "seeking in the pack"))?;
    report.output_bytes = header.total_len;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// A file's bytes, memory-mapped (or empty).
enum Source {
    Map(memmap2::Mmap),
    Empty,
}

impl Source {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Map(m) => m,
            Self::Empty => &[],
        }
    }
}

/// Regular files under `dir` (recursing into subdirectories, following
/// symlinks to files but not to directories), as sorted relative names.
fn list_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(io(&d, "listing the directory"))? {
            let entry = entry.map_err(io(&d, "listing the directory"))?;
            let path = entry.path();
            let name = entry
                .file_name()
                .into_string()
                .map_err(|n| Error::BadInput {
                    path: path.clone(),
                    detail: format!("file name {n:?} is not UTF-8"),
                })?;
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if rel
                .rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with(".dynapress-tmp-"))
            {
                continue; // another run's unfinished output
            }
            let ft = entry.file_type().map_err(io(&path, "reading file type"))?;
            if ft.is_dir() {
                stack.push((path, rel));
                continue;
            }
            let meta = std::fs::metadata(&path).map_err(io(&path, "reading metadata"))?;
            if !meta.is_file() {
                continue;
            }
            out.push((rel, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Packs every file under `in_dir` into the single container `out`.
///
/// The container is written to a temporary file next to `out` and renamed
/// into place only when complete, so a failure leaves no output behind.
pub fn pack_dir(in_dir: &Path, out: &Path, opts: &PackOptions) -> Result<PackReport> {
    let meta = std::fs::metadata(in_dir).map_err(io(in_dir, "reading the input directory"))?;
    if !meta.is_dir() {
        return Err(Error::BadInput {
            path: in_dir.into(),
            detail: "not a directory".into(),
        });
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let out_canon = std::fs::canonicalize(&parent)
        .map_err(io(&parent, "resolving the output directory"))?
        .join(out.file_name().ok_or_else(|| Error::BadInput {
            path: out.into(),
            detail: "output path has no file name".into(),
        })?);
    let in_canon =
        std::fs::canonicalize(in_dir).map_err(io(in_dir, "resolving the input directory"))?;
    if out_canon.starts_with(&in_canon) {
        // Packed, it would leave itself out; written, it would replace an input.
        return Err(Error::Output {
            path: out.into(),
            detail: format!(
                "is inside the input directory {} (every file of which is packed); write the pack elsewhere",
                in_dir.display()
            ),
        });
    }
    match std::fs::metadata(out) {
        Ok(m) if m.is_dir() => {
            return Err(Error::Output {
                path: out.into(),
                detail: "is a directory; give a file name for the pack".into(),
            });
        }
        Ok(_) if !opts.overwrite => {
            return Err(Error::Output {
                path: out.into(),
                detail: "exists; pass --force to replace it".into(),
            });
        }
        _ => {}
    }
    let listed = list_files(in_dir)?;
    if listed.is_empty() {
        return Err(Error::BadInput {
            path: in_dir.into(),
            detail: "the directory holds no files".into(),
        });
    }
    let mut sources = Vec::with_capacity(listed.len());
    for (_, path) in &listed {
        let f = File::open(path).map_err(io(path, "opening"))?;
        let len = f.metadata().map_err(io(path, "reading metadata"))?.len();
        sources.push(if len == 0 {
            Source::Empty
        } else {
            // SAFETY: the map is read-only; like every reader of model files
            // we assume nobody truncates them while we read.
            Source::Map(unsafe { memmap2::Mmap::map(&f) }.map_err(io(path, "memory-mapping"))?)
        });
    }
    let inputs: Vec<InputFile<'_>> = listed
        .iter()
        .zip(&sources)
        .map(|((name, _), s)| InputFile {
            name,
            data: s.bytes(),
        })
        .collect();
    let tmp = crate::temp_file_in(&parent).map_err(io(&parent, "creating a temporary file"))?;
    let mut w = BufWriter::with_capacity(4 << 20, tmp.as_file());
    let report = pack_files(&inputs, &mut w, out, opts)?;
    w.flush().map_err(io(out, "writing the pack"))?;
    drop(w);
    tmp.as_file()
        .sync_all()
        .map_err(io(out, "syncing the pack"))?;
    tmp.persist(out).map_err(|e| Error::Io {
        path: out.into(),
        action: "renaming the finished pack into place",
        source: e.error,
    })?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn safetensors(tensors: &[(&str, &str, &[u8])], pad: usize) -> Vec<u8> {
        let mut header = String::from("{");
        let mut off = 0;
        for (i, (name, dtype, data)) in tensors.iter().enumerate() {
            if i > 0 {
                header.push(',');
            }
            header += &format!(
                "\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{off},{}]}}",
                data.len(),
                off + data.len()
            );
            off += data.len();
        }
        header.push('}');
        header.extend(std::iter::repeat_n(' ', pad));
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        for (_, _, d) in tensors {
            out.extend_from_slice(d);
        }
        out
    }

    #[test]
    fn plans_safetensors_segments() {
        let f = safetensors(
            &[
                ("a", "BF16", &[1, 2, 3, 4]),
                ("b", "I32", &[9; 8]),
                ("c", "F32", &[7; 6]),
            ],
            3,
        );
        let (kind, segs) = plan_file(&f);
        assert_eq!(kind, FileKind::Safetensors);
        let kinds: Vec<_> = segs.iter().map(|s| s.kind.clone()).collect();
        // Header, bf16, i32 stored, f32 with 6 bytes is not whole floats.
        assert_eq!(
            kinds,
            [
                SegKind::Bytes,
                SegKind::Float(FloatFormat::Bf16),
                SegKind::Stored,
                SegKind::Stored
            ]
        );
        assert_eq!(segs.last().unwrap().range.end, f.len());
        for w in segs.windows(2) {
            assert_eq!(w[0].range.end, w[1].range.start);
        }
    }

    #[test]
    fn malformed_safetensors_is_opaque() {
        let mut f = safetensors(&[("a", "BF16", &[1, 2, 3, 4])], 0);
        let n = f.len();
        f.truncate(n - 1); // tensor runs past the end
        assert_eq!(plan_file(&f).0, FileKind::Opaque);
        assert_eq!(plan_file(b"{\"not\": 1}").0, FileKind::Opaque);
        assert_eq!(plan_file(&[]).1, vec![]);
        // Overlapping tensors.
        let hdr = br#"{"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},"b":{"dtype":"BF16","shape":[2],"data_offsets":[2,6]}}"#;
        let mut f = (hdr.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(hdr);
        f.extend_from_slice(&[0; 6]);
        assert_eq!(plan_file(&f).0, FileKind::Opaque);
    }

    #[test]
    fn chunk_ranges_cover_and_align() {
        for (len, chunk, width) in [(10, 4, 2), (4096, 1000, 4), (1, 4096, 1), (12, 5, 4)] {
            let r = chunk_ranges(len, chunk, width);
            assert_eq!(r.first().unwrap().start, 0);
            assert_eq!(r.last().unwrap().end, len);
            for w in r.windows(2) {
                assert_eq!(w[0].end, w[1].start);
                assert_eq!(w[0].len() % width, 0);
            }
        }
    }
}
