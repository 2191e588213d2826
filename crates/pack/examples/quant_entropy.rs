//! Entropy of quantized weights (issue item 4): how much would entropy
//! coding save on the integer codes, scales and zero points that dynapress
//! stores, and what does our rANS coder actually achieve on them?
//!
//! ```text
//! quant_entropy gptq DB_DIR
//!     Reads every entry of a dynapress GPTQ/RTN database (codes, f16 scales,
//!     zero points) and prints, per level, the entropy of the codes under
//!     several models, and the actual coded size of every stream next to the
//!     stored size (`storage_bits` of the manifest).
//! quant_entropy ggml MODEL.safetensors [--types q2_k,q4_k,...]
//!     Quantizes every linear layer (`*_proj.weight`) of a bf16/f16/f32
//!     checkpoint with `dynapress_ggml::quantize` (no imatrix), splits each
//!     block into its fields (codes, sub-block scales and mins, f16 scales),
//!     checks the split by decoding it and comparing bit for bit with
//!     `dynapress_ggml::dequantize`, and prints the same measurements.
//! quant_entropy ggml-db DB_DIR
//!     The same for the ggml-type entries of a database built with
//!     `dynapress database --method kquant` (ggml's encoders weighted by the
//!     calibration importance matrix).
//! ```
//!
//! Models of the codes (all per tensor unless said otherwise):
//!
//! * `H0 level` — one order-0 table for all tensors of a level or type;
//! * `H0` — one order-0 table per tensor;
//! * `row` — one table per row;
//! * `c|z` — one table per value of the group's zero point `z` (the code
//!   that decodes to 0; for symmetric grids `z` is constant);
//! * `c-z` — one order-0 table of the code minus its group's zero point;
//! * `c|prev` — one table per value of the previous code in the row.
//!
//! Each model is given twice: the ideal code length (empirical entropy, no
//! table cost), and the size under tables quantized as the coder would use
//! them plus their serialized size (`FreqTable::cost_bits +
//! serialized_bits`), which is what a real encoder pays up to the state
//! flushes. "rANS" columns are the bytes of `rans::compress_symbols` (count,
//! alphabet, table, interleaved stream), i.e. everything.

use std::collections::BTreeMap;
use std::path::Path;

use dynapress_compress::pack::{packed_len, unpack_bits};
use dynapress_ggml::GgmlType;
use std::io::Cursor;
use std::time::Instant;

use dynapress_compress::pack::pack_bits as pack_codes;
use dynapress_pack::quant::{Groups, decode_codes, encode_codes};
use dynapress_pack::rans::{FreqTable, compress_symbols, decompress_symbols, scale_for};
use dynapress_pack::{InputFile, PackOptions, pack_files};
use safetensors::{Dtype, SafeTensors};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("gptq") => gptq(Path::new(args.get(1).expect("DB_DIR"))),
        Some("ggml-db") => ggml_db(Path::new(args.get(1).expect("DB_DIR"))),
        Some("ggml") => {
            let types = args
                .iter()
                .position(|a| a == "--types")
                .and_then(|i| args.get(i + 1))
                .map(|s| {
                    s.split(',')
                        .map(|t| GgmlType::from_name(t).unwrap_or_else(|| panic!("type {t}")))
                        .collect()
                })
                .unwrap_or_else(|| {
                    vec![
                        GgmlType::Q2K,
                        GgmlType::Q3K,
                        GgmlType::Q4K,
                        GgmlType::Q5K,
                        GgmlType::Q6K,
                        GgmlType::Q4_0,
                        GgmlType::Q4_1,
                        GgmlType::Q5_0,
                        GgmlType::Q5_1,
                        GgmlType::Q8_0,
                    ]
                });
            ggml(Path::new(args.get(1).expect("MODEL")), &types)
        }
        _ => {
            eprintln!(
                "usage: quant_entropy gptq DB_DIR\n       quant_entropy ggml-db DB_DIR\n       quant_entropy ggml MODEL.safetensors [--types q2_k,q4_k,...]"
            );
            std::process::exit(2);
        }
    }
}

// ---------------------------------------------------------------------------
// Entropy helpers

/// Empirical entropy of a histogram, in bits in total (`sum c log2(N / c)`).
fn ent_bits(counts: &[u64]) -> f64 {
    let n: u64 = counts.iter().sum();
    if n == 0 {
        return 0.0;
    }
    let n = n as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| c as f64 * (n / c as f64).log2())
        .sum()
}

/// What the coder pays for data with this histogram under its own
/// quantized table, plus the serialized table, in bits.
fn coded_bits(counts: &[u64]) -> f64 {
    if counts.iter().all(|&c| c == 0) {
        return 0.0;
    }
    let t = FreqTable::from_counts(counts, scale_for(counts)).expect("present symbols <= 2^15");
    t.cost_bits(counts) + t.serialized_bits() as f64
}

/// Ideal and table-inclusive bits of a family of context histograms.
#[derive(Default, Clone, Copy)]
struct Cost {
    ideal: f64,
    coded: f64,
}

impl Cost {
    fn of(hists: &[Vec<u64>]) -> Self {
        Self {
            ideal: hists.iter().map(|h| ent_bits(h)).sum(),
            coded: hists.iter().map(|h| coded_bits(h)).sum(),
        }
    }
    fn add(&mut self, o: Cost) {
        self.ideal += o.ideal;
        self.coded += o.coded;
    }
}

/// The bytes `compress_symbols` writes for `syms`, checked by decoding.
fn rans_bytes(syms: &[u16], alphabet: u32) -> usize {
    let blob = compress_symbols(syms, alphabet);
    let back = decompress_symbols(&blob, syms.len()).expect("own blob");
    assert!(back == syms, "rANS round trip");
    blob.len()
}

/// Measurements of one code stream (one tensor).
#[derive(Default, Clone)]
struct CodeStats {
    n: u64,
    h0: Cost,
    row: Cost,
    given_z: Cost,
    minus_z: Cost,
    given_prev: Cost,
    minus_z_given_mag: Cost,
    /// Actual `compress_symbols` bytes of the codes and of `c - z + maxq`.
    rans_plain: u64,
    rans_minus_z: u64,
}

impl CodeStats {
    fn add(&mut self, o: &CodeStats) {
        self.n += o.n;
        self.h0.add(o.h0);
        self.row.add(o.row);
        self.given_z.add(o.given_z);
        self.minus_z.add(o.minus_z);
        self.given_prev.add(o.given_prev);
        self.minus_z_given_mag.add(o.minus_z_given_mag);
        self.rans_plain += o.rans_plain;
        self.rans_minus_z += o.rans_minus_z;
    }
}

/// Analyses `codes` (row-major, `cols` per row, each `< 2^bits`), where
/// every run of `unit` consecutive codes shares the zero point `zeros[i /
/// unit]`.
fn analyze_codes(codes: &[u8], bits: u32, cols: usize, unit: usize, zeros: &[u8]) -> CodeStats {
    let a = 1usize << bits;
    let maxq = a - 1;
    assert_eq!(codes.len() % cols, 0);
    assert_eq!(codes.len().div_ceil(unit), zeros.len());
    let mut h0 = vec![0u64; a];
    let mut by_z = vec![vec![0u64; a]; a];
    let mut minus = vec![0u64; 2 * a];
    let mut by_prev = vec![vec![0u64; a]; a + 1];
    // Context: bit length of |prev - z_prev| (0..=bits), or bits + 1 at a row start.
    let mut by_mag = vec![vec![0u64; 2 * a]; bits as usize + 2];
    let mut rows = Vec::new();
    let mut centered = Vec::with_capacity(codes.len());
    for row in codes.chunks(cols) {
        let mut h = vec![0u64; a];
        let mut prev = a;
        for &c in row {
            h[c as usize] += 1;
            by_prev[prev][c as usize] += 1;
            prev = c as usize;
        }
        for (s, v) in h0.iter_mut().zip(&h) {
            *s += v;
        }
        rows.push(h);
    }
    let mut mag = bits as usize + 1;
    for (i, &c) in codes.iter().enumerate() {
        let z = zeros[i / unit] as usize;
        assert!(z <= maxq);
        by_z[z][c as usize] += 1;
        let m = c as usize + maxq - z;
        minus[m] += 1;
        if i % cols == 0 {
            mag = bits as usize + 1;
        }
        by_mag[mag][m] += 1;
        mag = (usize::BITS - (c as isize - z as isize).unsigned_abs().leading_zeros()) as usize;
        centered.push(m as u16);
    }
    let plain: Vec<u16> = codes.iter().map(|&c| u16::from(c)).collect();
    CodeStats {
        n: codes.len() as u64,
        h0: Cost::of(std::slice::from_ref(&h0)),
        row: Cost::of(&rows),
        given_z: Cost::of(&by_z),
        minus_z: Cost::of(std::slice::from_ref(&minus)),
        given_prev: Cost::of(&by_prev),
        minus_z_given_mag: Cost::of(&by_mag),
        rans_plain: rans_bytes(&plain, a as u32) as u64,
        rans_minus_z: rans_bytes(&centered, 2 * a as u32) as u64,
    }
}

/// A stream of small integers stored at `bits` each (zero points, sub-block
/// scales): stored bits, order-0 entropy per tensor, actual rANS bytes.
#[derive(Default, Clone, Copy)]
struct SmallStats {
    n: u64,
    stored_bits: u64,
    h0: Cost,
    rans: u64,
}

impl SmallStats {
    fn of(values: &[u8], bits: u32) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let a = 1usize << bits;
        let mut h = vec![0u64; a];
        for &v in values {
            h[v as usize] += 1;
        }
        let syms: Vec<u16> = values.iter().map(|&v| u16::from(v)).collect();
        Self {
            n: values.len() as u64,
            stored_bits: values.len() as u64 * u64::from(bits),
            h0: Cost::of(std::slice::from_ref(&h)),
            rans: rans_bytes(&syms, a as u32) as u64,
        }
    }
    fn add(&mut self, o: SmallStats) {
        self.n += o.n;
        self.stored_bits += o.stored_bits;
        self.h0.add(o.h0);
        self.rans += o.rans;
    }
    /// Bytes a format would keep: coded or stored, whichever is smaller.
    fn best_bytes(&self) -> f64 {
        (self.rans as f64).min(self.stored_bits as f64 / 8.0)
    }
}

/// f16 values (scales): order-0 entropy of whole 16-bit patterns per tensor
/// (ideal only), and the split the float codec uses: high byte (sign,
/// exponent, top 2 mantissa bits) entropy-coded, low byte raw.
#[derive(Default, Clone, Copy)]
struct HalfStats {
    n: u64,
    h16: f64,
    hi: Cost,
    /// `compress_symbols` of the high bytes plus the raw low bytes.
    rans_split: u64,
}

impl HalfStats {
    fn of(values: &[u16]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let mut full: BTreeMap<u16, u64> = BTreeMap::new();
        let mut hi = vec![0u64; 256];
        for &v in values {
            *full.entry(v).or_default() += 1;
            hi[(v >> 8) as usize] += 1;
        }
        let counts: Vec<u64> = full.values().copied().collect();
        let his: Vec<u16> = values.iter().map(|&v| v >> 8).collect();
        Self {
            n: values.len() as u64,
            h16: ent_bits(&counts),
            hi: Cost::of(std::slice::from_ref(&hi)),
            rans_split: (rans_bytes(&his, 256) + values.len()) as u64,
        }
    }
    fn add(&mut self, o: HalfStats) {
        self.n += o.n;
        self.h16 += o.h16;
        self.hi.add(o.hi);
        self.rans_split += o.rans_split;
    }
    fn stored_bytes(&self) -> f64 {
        2.0 * self.n as f64
    }
    fn best_bytes(&self) -> f64 {
        (self.rans_split as f64).min(self.stored_bytes())
    }
}

/// Everything measured for one level (GPTQ) or type (ggml).
#[derive(Default)]
struct LevelStats {
    tensors: usize,
    bits: u32,
    codes: CodeStats,
    /// Histogram of all codes of the level (one table for all tensors).
    pooled: Vec<u64>,
    zeros: SmallStats,
    sub_scales: SmallStats,
    sub_mins: SmallStats,
    halves: HalfStats,
    /// Pooled 16-bit histogram of the f16 fields over the level.
    pooled_halves: BTreeMap<u16, u64>,
    stored_bytes: f64,
    /// Bytes of `quant::encode_codes` on the codes (with the zero points as
    /// groups) and on the stored zero points.
    offered_codes: u64,
    offered_zeros: u64,
    /// Order-0 byte-wise `compress_symbols` of every stored stream.
    bytes_order0: u64,
    /// The level's entry files (GPTQ) for the container measurement.
    files: Vec<(String, Vec<u8>)>,
    /// Coded code streams for the speed measurement.
    coded: Vec<CodedStream>,
}

/// One coded code stream and what decoding it needs.
struct CodedStream {
    blob: Vec<u8>,
    packed_len: usize,
    bits: u8,
    n: usize,
    zeros: Vec<u8>,
    cols: usize,
    group_len: usize,
}

impl CodedStream {
    fn groups(&self) -> Groups<'_> {
        Groups {
            zeros: &self.zeros,
            cols: self.cols,
            group_len: self.group_len,
        }
    }
}

/// Codes `packed` with the offered codec, checks the round trip, and keeps
/// the stream for timing.
fn offer(packed: &[u8], bits: u8, n: usize, zeros: Vec<u8>, cols: usize, gl: usize) -> CodedStream {
    let groups = Groups {
        zeros: &zeros,
        cols,
        group_len: gl,
    };
    let blob = encode_codes(packed, bits, n, Some(&groups)).expect("encode_codes");
    let back = decode_codes(&blob, bits, n, Some(&groups)).expect("decode_codes");
    assert!(back == packed, "encode_codes round trip");
    CodedStream {
        blob,
        packed_len: packed.len(),
        bits,
        n,
        zeros,
        cols,
        group_len: gl,
    }
}

fn bytes_rans(data: &[u8]) -> u64 {
    let syms: Vec<u16> = data.iter().map(|&b| u16::from(b)).collect();
    rans_bytes(&syms, 256) as u64
}

impl LevelStats {
    fn add_codes(&mut self, codes: &[u8], s: &CodeStats) {
        if self.pooled.is_empty() {
            self.pooled = vec![0; 1 << self.bits];
        }
        for &c in codes {
            self.pooled[c as usize] += 1;
        }
        self.codes.add(s);
    }
    fn add_halves(&mut self, v: &[u16]) {
        for &h in v {
            *self.pooled_halves.entry(h).or_default() += 1;
        }
        self.halves.add(HalfStats::of(v));
    }
}

fn bpc(bits: f64, n: u64) -> String {
    format!("{:.3}", bits / n as f64)
}

fn pct(part: f64, whole: f64) -> String {
    format!("{:.2}", 100.0 * part / whole)
}

/// Prints the tables for a set of levels or types.
fn print_tables(what: &str, levels: &BTreeMap<String, LevelStats>) {
    println!("\n### {what}: codes, bits per code\n");
    println!(
        "| {what} | tensors | codes | nominal | H0 level | H0 | row | c\\|z | c-z | c\\|prev | c-z\\|mag prev | rANS c | rANS c-z |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, l) in levels {
        let c = &l.codes;
        let pair = |k: Cost| format!("{} ({})", bpc(k.ideal, c.n), bpc(k.coded, c.n));
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            l.tensors,
            c.n,
            l.bits,
            bpc(ent_bits(&l.pooled), c.n),
            pair(c.h0),
            pair(c.row),
            pair(c.given_z),
            pair(c.minus_z),
            pair(c.given_prev),
            pair(c.minus_z_given_mag),
            bpc(8.0 * c.rans_plain as f64, c.n),
            bpc(8.0 * c.rans_minus_z as f64, c.n),
        );
    }
    println!("\n### {what}: side streams, bits per value\n");
    println!(
        "| {what} | zeros/mins: n, stored, H0, rANS | sub-block scales: n, stored, H0, rANS | f16: n, H16 per tensor, H16 level, hi H0 + 8, split rANS |"
    );
    println!("|---|---|---|---|");
    for (name, l) in levels {
        let small = |s: &SmallStats| {
            if s.n == 0 {
                "-".to_string()
            } else {
                format!(
                    "{}, {}, {}, {}",
                    s.n,
                    s.stored_bits / s.n,
                    bpc(s.h0.ideal, s.n),
                    bpc(8.0 * s.rans as f64, s.n)
                )
            }
        };
        let mut mins = l.zeros;
        mins.add(l.sub_mins);
        let h = &l.halves;
        let pooled: Vec<u64> = l.pooled_halves.values().copied().collect();
        println!(
            "| {name} | {} | {} | {}, {}, {}, {}, {} |",
            small(&mins),
            small(&l.sub_scales),
            h.n,
            bpc(h.h16, h.n),
            bpc(ent_bits(&pooled), h.n),
            bpc(h.hi.ideal + 8.0 * h.n as f64, h.n),
            bpc(8.0 * h.rans_split as f64, h.n),
        );
    }
    println!("\n### {what}: actual coded size, % of the stored bytes\n");
    println!(
        "| {what} | stored bytes | codes share | codes: encode_codes / codes | side streams rANS / side | total (best per stream) | total, codes only coded | saving | for comparison: order-0 bytes per stream |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, l) in levels {
        let code_stored = (l.codes.n * u64::from(l.bits)) as f64 / 8.0;
        // The offered codec includes its mode byte and picks raw, plain or
        // centered itself.
        let code_best = l.offered_codes as f64;
        let mut small = l.zeros;
        small.add(l.sub_mins);
        let side_stored =
            (small.stored_bits + l.sub_scales.stored_bits) as f64 / 8.0 + l.halves.stored_bytes();
        let zeros_best = if l.zeros.n > 0 {
            l.offered_zeros as f64 + l.sub_mins.best_bytes()
        } else {
            small.best_bytes()
        };
        let side_best = zeros_best + l.sub_scales.best_bytes() + l.halves.best_bytes();
        let total = code_best + side_best;
        assert!(
            (code_stored + side_stored - l.stored_bytes).abs() < 1.0,
            "{name}: stream sizes {} + {} do not add up to the stored {}",
            code_stored,
            side_stored,
            l.stored_bytes
        );
        println!(
            "| {name} | {:.0} | {} | {} | {} | {} | {} | **{}** | {} |",
            l.stored_bytes,
            pct(code_stored, l.stored_bytes),
            pct(code_best, code_stored),
            pct(side_best, side_stored),
            pct(total, l.stored_bytes),
            pct(code_best + side_stored, l.stored_bytes),
            pct(l.stored_bytes - total, l.stored_bytes),
            pct(l.bytes_order0 as f64, l.stored_bytes),
        );
    }
    print_speed(what, levels);
}

/// Best-of-20 wall time of decoding every coded code stream of each level
/// (one thread), and of encoding them.
fn print_speed(what: &str, levels: &BTreeMap<String, LevelStats>) {
    println!("\n### {what}: encode_codes / decode_codes speed, 1 thread, best of 20\n");
    println!("| {what} | codes | packed MB | encode MB/s | decode MB/s | decode Mcodes/s |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, l) in levels {
        let packed: Vec<Vec<u8>> = l
            .coded
            .iter()
            .map(|c| decode_codes(&c.blob, c.bits, c.n, Some(&c.groups())).expect("decode"))
            .collect();
        let best = |f: &dyn Fn()| {
            (0..20)
                .map(|_| {
                    let t = Instant::now();
                    f();
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min)
        };
        let dec = best(&|| {
            for c in &l.coded {
                let out = decode_codes(&c.blob, c.bits, c.n, Some(&c.groups())).expect("decode");
                std::hint::black_box(out);
            }
        });
        let enc = best(&|| {
            for (c, p) in l.coded.iter().zip(&packed) {
                let out = encode_codes(p, c.bits, c.n, Some(&c.groups())).expect("encode");
                std::hint::black_box(out);
            }
        });
        let bytes: usize = l.coded.iter().map(|c| c.packed_len).sum();
        let n: usize = l.coded.iter().map(|c| c.n).sum();
        println!(
            "| {name} | {n} | {:.2} | {:.0} | {:.0} | {:.0} |",
            bytes as f64 / 1e6,
            bytes as f64 / 1e6 / enc,
            bytes as f64 / 1e6 / dec,
            n as f64 / 1e6 / dec,
        );
    }
}

// ---------------------------------------------------------------------------
// GPTQ database

fn gptq(db: &Path) {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(db.join("manifest.json")).expect("manifest.json"))
            .expect("manifest JSON");
    let mut levels: BTreeMap<String, LevelStats> = BTreeMap::new();
    for e in manifest["entries"].as_array().expect("entries") {
        let file = db.join(e["file"].as_str().expect("file"));
        let bytes = std::fs::read(&file).expect("entry file");
        let (_, meta) = SafeTensors::read_metadata(&bytes).expect("safetensors");
        let st = SafeTensors::deserialize(&bytes).expect("safetensors");
        let info: serde_json::Value = serde_json::from_str(
            meta.metadata()
                .as_ref()
                .and_then(|m| m.get("dynapress"))
                .expect("dynapress metadata"),
        )
        .expect("metadata JSON");
        let q = &info["quant"];
        let rows = q["rows"].as_u64().expect("rows") as usize;
        let cols = q["cols"].as_u64().expect("cols") as usize;
        let bits = q["scheme"]["bits"].as_u64().expect("bits") as u8;
        let g = match q["scheme"]["group_size"].as_u64().expect("group_size") as usize {
            0 => cols,
            g => g,
        };
        let sym = q["scheme"]["sym"].as_bool().expect("sym");
        assert_eq!(
            cols % g,
            0,
            "{}: groups do not tile the row",
            file.display()
        );
        let groups = rows * cols / g;
        let codes_t = st.tensor("codes").expect("codes");
        assert_eq!(codes_t.dtype(), Dtype::U8);
        let codes = unpack_bits(codes_t.data(), bits, rows * cols).expect("codes length/padding");
        let zeros = if sym {
            assert!(st.tensor("zeros").is_err());
            vec![1u8 << (bits - 1); groups]
        } else {
            let t = st.tensor("zeros").expect("zeros");
            unpack_bits(t.data(), bits, groups).expect("zeros length/padding")
        };
        let scales_t = st.tensor("scales").expect("scales");
        assert_eq!(scales_t.dtype(), Dtype::F16);
        let scales: Vec<u16> = scales_t
            .data()
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        assert_eq!(scales.len(), groups);
        let storage = e["storage_bits"].as_u64().expect("storage_bits") as f64 / 8.0;
        assert_eq!(
            codes_t.data().len() + 2 * groups + if sym { 0 } else { packed_len(groups, bits) },
            (storage as usize),
            "stored streams vs storage_bits"
        );
        let l = levels
            .entry(e["level"].as_str().expect("level").to_string())
            .or_default();
        l.tensors += 1;
        l.bits = u32::from(bits);
        let s = analyze_codes(&codes, u32::from(bits), cols, g, &zeros);
        l.add_codes(&codes, &s);
        let coded = offer(codes_t.data(), bits, rows * cols, zeros.clone(), cols, g);
        l.offered_codes += coded.blob.len() as u64;
        l.coded.push(coded);
        l.bytes_order0 += bytes_rans(codes_t.data()) + bytes_rans(scales_t.data());
        if !sym {
            l.zeros.add(SmallStats::of(&zeros, u32::from(bits)));
            let z = st.tensor("zeros").expect("zeros").data();
            let blob = encode_codes(z, bits, groups, None).expect("encode zeros");
            assert_eq!(decode_codes(&blob, bits, groups, None).expect("decode"), z);
            l.offered_zeros += blob.len() as u64;
            l.bytes_order0 += bytes_rans(z);
        }
        l.add_halves(&scales);
        l.files
            .push((e["file"].as_str().expect("file").to_string(), bytes.clone()));
        // Packed bits vs the sum of the stream sizes (byte padding per
        // stream is part of storage_bits only through whole groups).
        l.stored_bytes += storage;
    }
    print_tables("level", &levels);
    println!("\n### level: the entry files in a `.dpk` container (format 1)\n");
    println!(
        "| level | entry files, bytes | of which stored streams | `.dpk` today, % of the files | `.dpk` with codes and zeros through encode_codes (estimate), % |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (name, l) in &levels {
        let inputs: Vec<InputFile<'_>> = l
            .files
            .iter()
            .map(|(n, d)| InputFile { name: n, data: d })
            .collect();
        let mut buf = Cursor::new(Vec::new());
        let report = pack_files(
            &inputs,
            &mut buf,
            "level.dpk".as_ref(),
            &PackOptions::default(),
        )
        .expect("pack");
        let files: u64 = report.input_bytes;
        // Today integer tensors are stored: swap their bytes for the coded ones.
        let code_and_zero_stored = (l.codes.n * u64::from(l.bits) + l.zeros.stored_bits) / 8;
        assert!(
            report.stored_bytes >= code_and_zero_stored,
            "integer tensors are stored"
        );
        let with_codec = report.output_bytes as f64 - code_and_zero_stored as f64
            + (l.offered_codes + l.offered_zeros) as f64;
        println!(
            "| {name} | {files} | {:.0} | {} | {} |",
            l.stored_bytes,
            pct(report.output_bytes as f64, files as f64),
            pct(with_codec, files as f64),
        );
    }
}

// ---------------------------------------------------------------------------
// ggml types

/// One ggml tensor split into its fields.
#[derive(Default)]
struct Split {
    /// One code per weight, as an unsigned level.
    codes: Vec<u8>,
    /// Per sub-block: the code that decodes to zero (clamped to the grid).
    zeros: Vec<u8>,
    sub_scales: Vec<u8>,
    sub_mins: Vec<u8>,
    halves: Vec<u16>,
}

fn f16_at(y: &[u8], off: usize) -> (u16, f32) {
    let b = u16::from_le_bytes([y[off], y[off + 1]]);
    (b, dynapress_ggml::f16_bits_to_f32(b))
}

/// The code of the zero value `-m1 / d1` on an affine grid `d1 c - m1`.
fn affine_zero(d1: f32, m1: f32, nmax: u8) -> u8 {
    if d1 == 0.0 || !d1.is_finite() || !m1.is_finite() {
        0
    } else {
        (f64::from(m1) / f64::from(d1))
            .round()
            .clamp(0.0, f64::from(nmax)) as u8
    }
}

fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Splits one block into its fields, appending to `s`, and writes the
/// values it decodes to (ggml's formulas, in ggml's f32 order) to `out`.
// Positions index several arrays at once (codes, bit planes, outputs), as in
// ggml's layouts; index loops read closest to them.
#[allow(clippy::needless_range_loop)]
fn split_block(ty: GgmlType, y: &[u8], s: &mut Split, out: &mut [f32]) {
    let nib = |qs: &[u8], p: usize| {
        if p < 16 { qs[p] & 0xf } else { qs[p - 16] >> 4 }
    };
    let two = |qs: &[u8], p: usize| (qs[32 * (p / 128) + p % 32] >> (2 * ((p % 128) / 32))) & 3;
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => {
            let (db, d) = f16_at(y, 0);
            s.halves.push(db);
            let (zero, qh) = match ty {
                GgmlType::Q4_0 => (8u8, 0u32),
                GgmlType::Q5_0 => (16, u32::from_le_bytes([y[2], y[3], y[4], y[5]])),
                _ => (128, 0),
            };
            for (p, o) in out.iter_mut().enumerate().take(32) {
                let c = match ty {
                    GgmlType::Q4_0 => nib(&y[2..18], p),
                    GgmlType::Q5_0 => nib(&y[6..22], p) | ((((qh >> p) & 1) as u8) << 4),
                    _ => y[2 + p].wrapping_add(128),
                };
                s.codes.push(c);
                *o = (i32::from(c) - i32::from(zero)) as f32 * d;
            }
            s.zeros.push(zero);
        }
        GgmlType::Q4_1 | GgmlType::Q5_1 => {
            let (db, d) = f16_at(y, 0);
            let (mb, m) = f16_at(y, 2);
            s.halves.extend([db, mb]);
            let (nmax, qh) = if ty == GgmlType::Q4_1 {
                (15, 0u32)
            } else {
                (31, u32::from_le_bytes([y[4], y[5], y[6], y[7]]))
            };
            for (p, o) in out.iter_mut().enumerate().take(32) {
                let c = if ty == GgmlType::Q4_1 {
                    nib(&y[4..20], p)
                } else {
                    nib(&y[8..24], p) | ((((qh >> p) & 1) as u8) << 4)
                };
                s.codes.push(c);
                *o = c as f32 * d + m;
            }
            s.zeros.push(affine_zero(d, -m, nmax));
        }
        GgmlType::Q2K => {
            let (db, d) = f16_at(y, 80);
            let (mb, dmin) = f16_at(y, 82);
            s.halves.extend([db, mb]);
            for j in 0..16 {
                let (sc, m) = (y[j] & 0xf, y[j] >> 4);
                s.sub_scales.push(sc);
                s.sub_mins.push(m);
                let dl = d * sc as f32;
                let ml = dmin * m as f32;
                s.zeros.push(affine_zero(dl, ml, 3));
                for p in 16 * j..16 * j + 16 {
                    let c = two(&y[16..80], p);
                    s.codes.push(c);
                    out[p] = dl * c as f32 - ml;
                }
            }
        }
        GgmlType::Q3K => {
            let (db, d) = f16_at(y, 108);
            s.halves.push(db);
            let (hmask, qs, sc) = (&y[0..32], &y[32..96], &y[96..108]);
            for j in 0..16 {
                let low = if j < 8 { sc[j] & 0xf } else { sc[j - 8] >> 4 };
                let high = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
                let v = low | (high << 4);
                s.sub_scales.push(v);
                s.zeros.push(4);
                let dl = d * (i32::from(v) - 32) as f32;
                for p in 16 * j..16 * j + 16 {
                    let c = two(qs, p) | (((hmask[p % 32] >> (p / 32)) & 1) << 2);
                    s.codes.push(c);
                    out[p] = dl * (i32::from(c) - 4) as f32;
                }
            }
        }
        GgmlType::Q4K | GgmlType::Q5K => {
            let (db, d) = f16_at(y, 0);
            let (mb, dmin) = f16_at(y, 2);
            s.halves.extend([db, mb]);
            let scales = &y[4..16];
            let (qh, qs, nmax) = if ty == GgmlType::Q4K {
                (&y[0..0], &y[16..144], 15)
            } else {
                (&y[16..48], &y[48..176], 31)
            };
            for j in 0..8 {
                let (sc, m) = scale_min_k4(j, scales);
                s.sub_scales.push(sc);
                s.sub_mins.push(m);
                let d1 = d * sc as f32;
                let m1 = dmin * m as f32;
                s.zeros.push(affine_zero(d1, m1, nmax));
                for p in 32 * j..32 * j + 32 {
                    let byte = qs[32 * (p / 64) + p % 32];
                    let mut c = if p % 64 < 32 { byte & 0xf } else { byte >> 4 };
                    if ty == GgmlType::Q5K {
                        c |= ((qh[p % 32] >> (p / 32)) & 1) << 4;
                    }
                    s.codes.push(c);
                    out[p] = d1 * c as f32 - m1;
                }
            }
        }
        GgmlType::Q6K => {
            let (db, d) = f16_at(y, 208);
            s.halves.push(db);
            let (ql, qh, sc) = (&y[0..128], &y[128..192], &y[192..208]);
            for j in 0..16 {
                s.sub_scales.push(sc[j]);
                s.zeros.push(32);
                for p in 16 * j..16 * j + 16 {
                    let (h, r) = (p / 128, p % 128);
                    let (k, i) = (r / 32, r % 32);
                    let lbyte = ql[64 * h + i + if k % 2 == 1 { 32 } else { 0 }];
                    let low = if k < 2 { lbyte & 0xf } else { lbyte >> 4 };
                    let c = low | (((qh[32 * h + i] >> (2 * k)) & 3) << 4);
                    s.codes.push(c);
                    out[p] = d * (sc[j] as i8) as f32 * (i32::from(c) - 32) as f32;
                }
            }
        }
        _ => panic!("{ty} is not a block type"),
    }
}

/// (code bits, sub-block scale bits, sub-block min bits, sub-block length,
/// f16 fields per block) of a type.
fn fields(ty: GgmlType) -> (u32, u32, u32, usize) {
    match ty {
        GgmlType::Q4_0 => (4, 0, 0, 32),
        GgmlType::Q4_1 => (4, 0, 0, 32),
        GgmlType::Q5_0 | GgmlType::Q5_1 => (5, 0, 0, 32),
        GgmlType::Q8_0 => (8, 0, 0, 32),
        GgmlType::Q2K => (2, 4, 4, 16),
        GgmlType::Q3K => (3, 6, 0, 16),
        GgmlType::Q4K => (4, 6, 6, 32),
        GgmlType::Q5K => (5, 6, 6, 32),
        GgmlType::Q6K => (6, 8, 0, 16),
        _ => panic!("{ty} is not a block type"),
    }
}

fn ggml(model: &Path, types: &[GgmlType]) {
    let bytes = std::fs::read(model).expect("model file");
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut names: Vec<String> = st
        .names()
        .into_iter()
        .filter(|n| n.ends_with("_proj.weight"))
        .map(str::to_string)
        .collect();
    names.sort();
    let tensors: Vec<(String, usize, Vec<f32>)> = names
        .iter()
        .map(|n| {
            let t = st.tensor(n).expect("tensor");
            let shape = t.shape();
            assert_eq!(shape.len(), 2, "{n}");
            let vals: Vec<f32> = match t.dtype() {
                Dtype::BF16 => t
                    .data()
                    .chunks_exact(2)
                    .map(|b| dynapress_ggml::bf16_bits_to_f32(u16::from_le_bytes([b[0], b[1]])))
                    .collect(),
                Dtype::F16 => t
                    .data()
                    .chunks_exact(2)
                    .map(|b| dynapress_ggml::f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]])))
                    .collect(),
                Dtype::F32 => t
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                d => panic!("{n}: dtype {d:?}"),
            };
            (n.clone(), shape[1], vals)
        })
        .collect();
    let mut levels: BTreeMap<String, LevelStats> = BTreeMap::new();
    for &ty in types {
        let mut l = LevelStats {
            bits: fields(ty).0,
            ..Default::default()
        };
        for (name, cols, w) in &tensors {
            let data = dynapress_ggml::quantize(ty, w, *cols, None).expect("quantize");
            ggml_tensor(&mut l, ty, *cols, &data, name);
        }
        levels.insert(format!("{ty}"), l);
    }
    print_tables("type", &levels);
}

/// Splits one ggml tensor (`data`, rows of `cols` weights) into its fields,
/// checks the split against `dequantize`, and adds its measurements to `l`.
fn ggml_tensor(l: &mut LevelStats, ty: GgmlType, cols: usize, data: &[u8], name: &str) {
    let (cbits, sbits, mbits, sub) = fields(ty);
    let n = data.len() / ty.type_size() * ty.block_size();
    let reference = dynapress_ggml::dequantize(ty, data, n).expect("dequantize");
    let mut s = Split::default();
    let mut mine = vec![0f32; n];
    for (y, o) in data
        .chunks_exact(ty.type_size())
        .zip(mine.chunks_exact_mut(ty.block_size()))
    {
        split_block(ty, y, &mut s, o);
    }
    let same = mine
        .iter()
        .zip(&reference)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(
        same,
        "{name} {ty}: the field split does not decode like ggml"
    );
    assert_eq!(s.codes.len(), n);
    l.tensors += 1;
    let st = analyze_codes(&s.codes, cbits, cols, sub, &s.zeros);
    l.add_codes(&s.codes, &st);
    // The offered codec on the codes, with the zero points a decoder would
    // derive from the sub-block scales and mins.
    let packed = pack_codes(&s.codes, cbits as u8);
    let coded = offer(&packed, cbits as u8, n, s.zeros.clone(), cols, sub);
    l.offered_codes += coded.blob.len() as u64;
    l.coded.push(coded);
    l.bytes_order0 += bytes_rans(data);
    if sbits > 0 {
        l.sub_scales.add(SmallStats::of(&s.sub_scales, sbits));
    }
    if mbits > 0 {
        l.sub_mins.add(SmallStats::of(&s.sub_mins, mbits));
    }
    l.add_halves(&s.halves);
    l.stored_bytes += data.len() as f64;
}

/// The ggml-type entries of a dynapress database (`--method kquant`): one
/// `blocks` tensor per entry, type and shape in the metadata.
fn ggml_db(db: &Path) {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(db.join("manifest.json")).expect("manifest.json"))
            .expect("manifest JSON");
    let mut levels: BTreeMap<String, LevelStats> = BTreeMap::new();
    for e in manifest["entries"].as_array().expect("entries") {
        let file = db.join(e["file"].as_str().expect("file"));
        let bytes = std::fs::read(&file).expect("entry file");
        let (_, meta) = SafeTensors::read_metadata(&bytes).expect("safetensors");
        let st = SafeTensors::deserialize(&bytes).expect("safetensors");
        let info: serde_json::Value = serde_json::from_str(
            meta.metadata()
                .as_ref()
                .and_then(|m| m.get("dynapress"))
                .expect("dynapress metadata"),
        )
        .expect("metadata JSON");
        let g = &info["ggml"];
        let ty = GgmlType::from_name(g["type"].as_str().expect("type")).expect("ggml type");
        let cols = g["cols"].as_u64().expect("cols") as usize;
        let blocks = st.tensor("blocks").expect("blocks");
        assert_eq!(
            blocks.data().len() as u64 * 8,
            e["storage_bits"].as_u64().expect("storage_bits")
        );
        let l = levels.entry(format!("{ty}")).or_insert_with(|| LevelStats {
            bits: fields(ty).0,
            ..Default::default()
        });
        ggml_tensor(l, ty, cols, blocks.data(), &file.display().to_string());
    }
    print_tables("type", &levels);
}
