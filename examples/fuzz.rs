//! A mutation fuzzer for dynapress's readers that runs on the stable
//! toolchain (cargo-fuzz needs nightly for its sanitizer coverage flags).
//!
//! It has no coverage feedback: every execution takes a seed of the target's
//! corpus (`fuzz/corpus/<target>/`) and applies 1–8 random mutations (bit
//! flips, interesting integers at random offsets, chunk deletions,
//! duplications and splices; for the JSON targets also JSON tokens and
//! out-of-range numbers), then calls the reader. A panic, or an input taking
//! longer than the hang limit, is a failure: the input is saved under
//! `fuzz/crashes/` and the run stops with exit code 1.
//!
//! ```text
//! cargo run --release --example fuzz -- list
//! cargo run --release --example fuzz -- run <target|all> [--execs N] [--seconds S] [--seed X]
//! cargo run --release --example fuzz -- replay <target> <file>...
//! cargo run --release --example fuzz -- seeds      # rewrites fuzz/corpus from assets/
//! ```
//!
//! Targets: safetensors, config, tokenizer, gguf, dpk, imatrix, manifest.

use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A target: its name, whether its inputs are JSON text, and the reader.
struct Target {
    name: &'static str,
    json: bool,
    run: fn(&[u8], &Scratch),
}

/// Per-process scratch space for readers that only take a path.
struct Scratch {
    dir: tempfile::TempDir,
}

/// Scratch files in memory (/dev/shm) where there is one.
fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap()
}

const TARGETS: &[Target] = &[
    Target {
        name: "safetensors",
        json: false,
        run: fuzz_safetensors,
    },
    Target {
        name: "config",
        json: true,
        run: fuzz_config,
    },
    Target {
        name: "tokenizer",
        json: true,
        run: fuzz_tokenizer,
    },
    Target {
        name: "gguf",
        json: false,
        run: fuzz_gguf,
    },
    Target {
        name: "dpk",
        json: false,
        run: fuzz_dpk,
    },
    Target {
        name: "imatrix",
        json: false,
        run: fuzz_imatrix,
    },
    Target {
        name: "manifest",
        json: true,
        run: fuzz_manifest,
    },
];

/// The safetensors reader the model loader uses, then every tensor's bytes
/// read and (if small) converted to f32.
fn fuzz_safetensors(data: &[u8], _: &Scratch) {
    let path = PathBuf::from("fuzz/model.safetensors");
    let Ok(w) = dynapress::model::WeightSource::from_buffers(
        Path::new("fuzz"),
        vec![(path, data.to_vec())],
    ) else {
        return;
    };
    for name in w.names() {
        let _ = w.shape(&name);
        if let Ok(raw) = w.raw(&name)
            && raw.data.len() <= 1 << 20
        {
            let _ = dynapress::model::weights::to_f32(&raw, &name);
        }
    }
}

/// config.json: parse, validate, then the sizes derived from it.
fn fuzz_config(data: &[u8], _: &Scratch) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(c) = dynapress::model::ModelConfig::from_json(&v, Path::new("config.json")) {
        let _ = c.num_parameters();
        let _ = c.qkv_out();
        for id in dynapress::model::linear_ids(&c).into_iter().take(64) {
            let _ = id.shape(&c);
        }
    }
}

/// tokenizer.json: load, then encode and decode a fixed text.
fn fuzz_tokenizer(data: &[u8], _: &Scratch) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) =
        dynapress::model::Tokenizer::from_json(text, Path::new("tokenizer.json"), Some(0))
        && let Ok(ids) = t.encode("Hello, wörld! fn main() { 42 }\n")
    {
        let _ = t.decode(&ids);
        let _ = t.added_bos();
    }
}

/// GGUF: the header parser, the file reader with its Hugging Face import,
/// and the model loader's use of what the import returns.
fn fuzz_gguf(data: &[u8], _: &Scratch) {
    if let Ok(h) = dynapress_gguf::parse_header(data) {
        for t in &h.tensors {
            let end = h.data_offset + t.offset + t.n_bytes;
            assert!(end <= data.len() as u64, "{} ends at {end}", t.name);
        }
    }
    let Ok(f) = dynapress_gguf::GgufFile::from_bytes(data.to_vec(), "fuzz.gguf") else {
        return;
    };
    if let Ok(imported) = dynapress_gguf::import(&f) {
        let path = Path::new("fuzz.gguf");
        if let Ok(c) = dynapress::model::ModelConfig::from_json(&imported.config, path) {
            let _ = c.num_parameters();
        }
        let _ = dynapress::model::Tokenizer::from_json(&imported.tokenizer_json, path, None);
    }
}

/// .dpk: open, list, and decode every (reasonably small) file.
fn fuzz_dpk(data: &[u8], _: &Scratch) {
    let Ok(r) = dynapress_pack::PackedReader::from_bytes(data.to_vec(), "fuzz.dpk") else {
        return;
    };
    for f in r.files() {
        if f.size <= 16 << 20 {
            let _ = r.read_file(&f.name);
            let _ = r.safetensors_header(&f.name);
        }
    }
}

/// imatrix: the legacy binary format from bytes; the GGUF format through a file.
fn fuzz_imatrix(data: &[u8], s: &Scratch) {
    let _ = dynapress_gguf::Imatrix::parse_legacy(data, Path::new("fuzz.dat"));
    if data.starts_with(b"GGUF") {
        let p = s.dir.path().join("imatrix.gguf");
        if std::fs::write(&p, data).is_ok() {
            let _ = dynapress_gguf::Imatrix::read_gguf(&p);
        }
    }
}

/// manifest.json: parse, then the search space built from it.
fn fuzz_manifest(data: &[u8], _: &Scratch) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(m) = dynapress::database::Manifest::parse(text, Path::new("manifest.json")) else {
        return;
    };
    let _ = m.method.levels();
    if let Ok(space) = dynapress::database::SearchSpace::from_manifest(&m) {
        let _ = space.bits_per_weight(&space.lowest());
        let _ = space.bits_per_weight(&space.highest());
        let _ = space.check_target(3.0);
    }
}

/// splitmix64: a small, fast, seedable generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    7,
    8,
    16,
    31,
    32,
    63,
    64,
    127,
    128,
    255,
    256,
    4095,
    4096,
    65535,
    65536,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
    u64::MAX - 1,
];

const JSON_TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "null",
    "true",
    "false",
    "0",
    "-1",
    "-0.0",
    "1e309",
    "-1e309",
    "NaN",
    "1e-400",
    "4294967296",
    "18446744073709551616",
    "9007199254740993",
    "\"\"",
    "[]",
    "{}",
    "\\u0000",
    "\\ud800",
    "0.5",
    "3",
    "99",
    "\"F32\"",
    "\"BF16\"",
];

const MAX_LEN: usize = 4 << 20;

/// Applies 1–8 random mutations to `buf`, possibly splicing from `other`.
fn mutate(buf: &mut Vec<u8>, other: &[u8], json: bool, rng: &mut Rng) {
    let n = 1 + rng.below(8);
    for _ in 0..n {
        let len = buf.len();
        match rng.below(if json { 12 } else { 9 }) {
            0 if len > 0 => {
                let i = rng.below(len);
                buf[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                buf[i] = rng.next() as u8;
            }
            2 if len > 0 => {
                // An interesting integer, 1/2/4/8 bytes little-endian.
                let w = [1, 2, 4, 8][rng.below(4)];
                let v = INTERESTING[rng.below(INTERESTING.len())];
                let v = if rng.below(4) == 0 {
                    v.wrapping_neg()
                } else {
                    v
                };
                let i = rng.below(len);
                let bytes = v.to_le_bytes();
                let k = w.min(len - i);
                buf[i..i + k].copy_from_slice(&bytes[..k]);
            }
            3 if len > 0 => {
                // Small arithmetic on a u32 (sizes and counts).
                let i = rng.below(len.saturating_sub(3).max(1));
                if i + 4 <= len {
                    let mut x = u32::from_le_bytes(buf[i..i + 4].try_into().unwrap());
                    let d = 1 + rng.below(64) as u32;
                    x = if rng.below(2) == 0 {
                        x.wrapping_add(d)
                    } else {
                        x.wrapping_sub(d)
                    };
                    buf[i..i + 4].copy_from_slice(&x.to_le_bytes());
                }
            }
            4 if len > 0 => {
                // Delete a chunk.
                let i = rng.below(len);
                let k = 1 + rng.below((len - i).min(256));
                buf.drain(i..i + k);
            }
            5 if len > 0 && len < MAX_LEN => {
                // Duplicate a chunk at a random place.
                let i = rng.below(len);
                let k = 1 + rng.below((len - i).min(256));
                let chunk = buf[i..i + k].to_vec();
                let at = rng.below(len + 1);
                buf.splice(at..at, chunk);
            }
            6 if len > 0 => {
                // Truncate.
                buf.truncate(rng.below(len));
            }
            7 if !other.is_empty() && len < MAX_LEN => {
                // Splice in a chunk of another corpus input.
                let i = rng.below(other.len());
                let k = 1 + rng.below((other.len() - i).min(512));
                let at = rng.below(len + 1);
                let end = (at + k).min(len);
                buf.splice(at..end, other[i..i + k].iter().copied());
            }
            8 if len < MAX_LEN => {
                // Insert random bytes.
                let at = rng.below(len + 1);
                let k = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..k).map(|_| rng.next() as u8).collect();
                buf.splice(at..at, bytes);
            }
            9 | 10 => {
                // Insert or overwrite with a JSON token.
                let t = JSON_TOKENS[rng.below(JSON_TOKENS.len())].as_bytes();
                let at = rng.below(len + 1);
                let end = if rng.below(2) == 0 {
                    at
                } else {
                    (at + rng.below(8)).min(len)
                };
                buf.splice(at..end, t.iter().copied());
            }
            11 => {
                // Replace a number with an out-of-range one.
                let digits: Vec<usize> = (0..len).filter(|&i| buf[i].is_ascii_digit()).collect();
                if let Some(&i) = digits.get(rng.below(digits.len())) {
                    let mut j = i;
                    while j < len && (buf[j].is_ascii_digit() || b".eE-+".contains(&buf[j])) {
                        j += 1;
                    }
                    let t = JSON_TOKENS[10 + rng.below(10)].as_bytes();
                    buf.splice(i..j, t.iter().copied());
                }
            }
            _ => {}
        }
    }
    buf.truncate(MAX_LEN);
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn load_corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}; run `fuzz seeds` first", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let c: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!c.is_empty(), "{}: empty corpus", dir.display());
    c
}

/// Set while a target runs: its panics are caught and reported by the fuzzer.
static IN_TARGET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What the panic hook saw last (message and location).
static LAST_PANIC: Mutex<String> = Mutex::new(String::new());

fn save_failure(target: &str, kind: &str, input: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/crashes");
    let _ = std::fs::create_dir_all(&dir);
    let h = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let p = dir.join(format!("{target}-{kind}-{h:016x}"));
    let _ = std::fs::write(&p, input);
    p
}

/// Runs `target` for `execs` executions or `seconds`, whichever ends first.
/// Returns the executions done, or exits the process on a failure.
fn fuzz(t: &Target, execs: u64, seconds: f64, seed: u64, hang: Duration) -> u64 {
    let corpus = load_corpus(t.name);
    let scratch = Scratch { dir: scratch_dir() };
    let mut rng = Rng(seed ^ (t.name.len() as u64).wrapping_mul(0x1234_5678_9abc_def1));
    let start = Instant::now();
    // Watchdog: the current input and when it started.
    let current: Arc<Mutex<(Vec<u8>, Instant)>> = Arc::new(Mutex::new((Vec::new(), start)));
    let done = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (current, done, finished) = (current.clone(), done.clone(), finished.clone());
        let name = t.name;
        std::thread::spawn(move || {
            let mut last = (u64::MAX, Instant::now());
            while !finished.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let d = done.load(Ordering::Relaxed);
                if d != last.0 {
                    last = (d, Instant::now());
                } else if last.1.elapsed() > hang {
                    let input = current.lock().map(|c| c.0.clone()).unwrap_or_default();
                    let p = save_failure(name, "hang", &input);
                    eprintln!(
                        "{name}: an input ran longer than {hang:?}; saved to {}",
                        p.display()
                    );
                    std::process::exit(1);
                }
            }
        });
    }
    let mut n = 0u64;
    let mut buf = Vec::new();
    let deadline = Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX);
    let mut next_report = 1_000_000u64;
    while n < execs {
        if n.is_multiple_of(256) && start.elapsed() >= deadline {
            break;
        }
        let a = &corpus[rng.below(corpus.len())];
        let b = &corpus[rng.below(corpus.len())];
        buf.clear();
        buf.extend_from_slice(a);
        // One in 16 executions runs a seed unmutated (the happy paths stay covered).
        if !n.is_multiple_of(16) {
            mutate(&mut buf, b, t.json, &mut rng);
        }
        if let Ok(mut c) = current.lock() {
            c.0.clear();
            c.0.extend_from_slice(&buf);
        }
        IN_TARGET.store(true, Ordering::Relaxed);
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| (t.run)(&buf, &scratch)));
        IN_TARGET.store(false, Ordering::Relaxed);
        if r.is_err() {
            let p = save_failure(t.name, "panic", &buf);
            let msg = LAST_PANIC.lock().map(|m| m.clone()).unwrap_or_default();
            eprintln!(
                "{}: panic after {n} executions: {msg}\ninput saved to {}",
                t.name,
                p.display()
            );
            std::process::exit(1);
        }
        n += 1;
        done.store(n, Ordering::Relaxed);
        if n >= next_report {
            next_report += 1_000_000;
            eprintln!(
                "{}: {n} executions, {:.0}/s",
                t.name,
                n as f64 / start.elapsed().as_secs_f64()
            );
        }
    }
    finished.store(true, Ordering::Relaxed);
    n
}

fn target(name: &str) -> &'static Target {
    TARGETS.iter().find(|t| t.name == name).unwrap_or_else(|| {
        eprintln!(
            "unknown target `{name}`; targets: {}",
            TARGETS
                .iter()
                .map(|t| t.name)
                .collect::<Vec<_>>()
                .join(", ")
        );
        std::process::exit(2)
    })
}

fn main() {
    std::panic::set_hook(Box::new(|info| {
        if let Ok(mut m) = LAST_PANIC.lock() {
            *m = info.to_string();
        }
        if !IN_TARGET.load(Ordering::Relaxed) {
            eprintln!("{info}");
        }
    }));
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    match args.first().map(String::as_str) {
        Some("list") => {
            for t in TARGETS {
                println!("{}", t.name);
            }
        }
        Some("run") => {
            let which = args.get(1).map(String::as_str).unwrap_or("all");
            let execs: u64 = opt("--execs").map_or(u64::MAX, |s| s.parse().expect("--execs N"));
            let seconds: f64 =
                opt("--seconds").map_or(f64::INFINITY, |s| s.parse().expect("--seconds S"));
            let seed: u64 = opt("--seed").map_or_else(
                || {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as u64)
                },
                |s| s.parse().expect("--seed X"),
            );
            let hang = Duration::from_secs(
                opt("--hang-seconds").map_or(10, |s| s.parse().expect("--hang-seconds S")),
            );
            let list: Vec<&Target> = if which == "all" {
                TARGETS.iter().collect()
            } else {
                vec![target(which)]
            };
            for t in list {
                let start = Instant::now();
                let n = fuzz(t, execs, seconds, seed, hang);
                let secs = start.elapsed().as_secs_f64();
                println!(
                    "{}: {n} executions in {secs:.1} s ({:.0}/s), seed {seed}, no crash",
                    t.name,
                    n as f64 / secs
                );
                let _ = std::io::stdout().flush();
            }
        }
        Some("replay") => {
            let t = target(args.get(1).map(String::as_str).unwrap_or(""));
            let scratch = Scratch { dir: scratch_dir() };
            let mut failed = false;
            for f in &args[2..] {
                let data = std::fs::read(f).unwrap();
                IN_TARGET.store(true, Ordering::Relaxed);
                let r = std::panic::catch_unwind(AssertUnwindSafe(|| (t.run)(&data, &scratch)));
                IN_TARGET.store(false, Ordering::Relaxed);
                match r {
                    Ok(()) => println!("{f}: ok"),
                    Err(_) => {
                        failed = true;
                        let msg = LAST_PANIC.lock().map(|m| m.clone()).unwrap_or_default();
                        println!("{f}: panic: {msg}");
                    }
                }
            }
            std::process::exit(failed as i32);
        }
        Some("seeds") => seeds::write_all(),
        _ => {
            eprintln!(
                "usage: fuzz list | run <target|all> [--execs N] [--seconds S] [--seed X] [--hang-seconds S] | replay <target> FILE... | seeds"
            );
            std::process::exit(2);
        }
    }
}

/// The seed corpus, made from the repository's own small files.
mod seeds {
    use std::path::Path;

    fn root() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR"))
    }

    fn put(target: &str, name: &str, bytes: &[u8]) {
        let dir = super::corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
        println!("{target}/{name}: {} bytes", bytes.len());
    }

    /// A small safetensors file: a few tensors of several dtypes, with metadata.
    fn safetensors(quant: bool) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        let mut add = |name: &str, dtype: &str, shape: &[usize], bytes: Vec<u8>| {
            header.insert(
                name.into(),
                serde_json::json!({"dtype": dtype, "shape": shape,
                    "data_offsets": [data.len(), data.len() + bytes.len()]}),
            );
            data.extend(bytes);
        };
        add(
            "model.norm.weight",
            "F32",
            &[4],
            [1.0f32, -2.0, 0.5, 3.0]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        );
        add(
            "model.embed_tokens.weight",
            "BF16",
            &[2, 3],
            (0..6u16).flat_map(|x| (0x3f80 + x).to_le_bytes()).collect(),
        );
        add(
            "lm_head.weight",
            "F16",
            &[3, 2],
            (0..6u16).flat_map(|x| (0x3c00 + x).to_le_bytes()).collect(),
        );
        add(
            "ids",
            "I64",
            &[2],
            vec![1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0],
        );
        let mut md = serde_json::Map::new();
        md.insert("format".into(), "pt".into());
        if quant {
            add(
                "w.codes",
                "U8",
                &[8],
                vec![0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0],
            );
            add("w.scales", "F16", &[2, 1], vec![0x00, 0x3c, 0x00, 0x40]);
            md.insert(
                "dynapress.quant".into(),
                serde_json::json!({"w": {"rows": 2, "cols": 8}})
                    .to_string()
                    .into(),
            );
        }
        header.insert("__metadata__".into(), md.into());
        let mut json = serde_json::to_vec(&header).unwrap();
        while !json.len().is_multiple_of(8) {
            json.push(b' ');
        }
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend(json);
        out.extend(data);
        out
    }

    const TOKENIZER_BPE: &str = r#"{"version":"1.0","truncation":null,"padding":null,
"added_tokens":[{"id":0,"content":"<|endoftext|>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
"normalizer":null,
"pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true},
"post_processor":{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":false,"use_regex":true},
"decoder":{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true},
"model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,"end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,"ignore_merges":false,
"vocab":{"<|endoftext|>":0,"H":1,"e":2,"l":3,"o":4,"He":5,"ll":6,"Hell":7,"Hello":8,"Ġ":9,"w":10,"r":11,"d":12,"!":13,",":14},
"merges":["H e","l l","He ll","Hell o"]}}"#;

    const TOKENIZER_WORDLEVEL: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
"normalizer":{"type":"Lowercase"},
"pre_tokenizer":{"type":"Whitespace"},
"post_processor":{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>","type_id":0}},{"Sequence":{"id":"A","type_id":0}}],"pair":[{"Sequence":{"id":"A","type_id":0}},{"Sequence":{"id":"B","type_id":1}}],"special_tokens":{"<s>":{"id":"<s>","ids":[1],"tokens":["<s>"]}}},
"decoder":null,
"model":{"type":"WordLevel","vocab":{"<unk>":0,"<s>":1,"hello":2,"world":3},"unk_token":"<unk>"}}"#;

    pub fn write_all() {
        let r = root();
        put("safetensors", "plain.safetensors", &safetensors(false));
        put("safetensors", "quant.safetensors", &safetensors(true));
        for arch in ["llama3", "mistral", "qwen2", "qwen3", "llama-tied-4x"] {
            let p = r.join("tests/fixtures/tiny").join(arch).join("config.json");
            put(
                "config",
                &format!("{arch}.json"),
                &std::fs::read(p).unwrap(),
            );
        }
        put(
            "config",
            "demo.json",
            &std::fs::read(r.join("assets/demo-model/config.json")).unwrap(),
        );
        put("tokenizer", "bpe.json", TOKENIZER_BPE.as_bytes());
        put(
            "tokenizer",
            "wordlevel.json",
            TOKENIZER_WORDLEVEL.as_bytes(),
        );

        // GGUF: a tiny Llama (1 block, hidden 16) with the BPE vocabulary above.
        let tmp = tempfile::tempdir().unwrap();
        let gguf = tmp.path().join("tiny.gguf");
        let m = tiny_model(tmp.path());
        let files = dynapress::model::ModelFiles::open(&m).unwrap();
        dynapress::export::convert_gguf(&files, &gguf, dynapress_ggml::GgmlType::F32, None)
            .unwrap();
        put("gguf", "tiny-llama.gguf", &std::fs::read(&gguf).unwrap());

        // imatrix, both formats.
        let mut im = dynapress_gguf::Imatrix::default();
        im.entries.insert(
            "blk.0.attn_q.weight".into(),
            dynapress_gguf::ImatrixEntry::new(vec![1.0, 2.0, 0.5, 4.0], 10.0),
        );
        im.entries.insert(
            "blk.0.ffn_down.weight".into(),
            dynapress_gguf::ImatrixEntry::new(vec![0.25; 8], 3.0),
        );
        im.datasets = vec!["docs.valid.txt".into()];
        im.chunk_count = 2;
        im.chunk_size = 64;
        let p = tmp.path().join("imatrix.gguf");
        im.write_gguf(&p).unwrap();
        put("imatrix", "imatrix.gguf", &std::fs::read(&p).unwrap());
        let p = tmp.path().join("imatrix.dat");
        im.write_legacy(&p).unwrap();
        put("imatrix", "imatrix.dat", &std::fs::read(&p).unwrap());

        // .dpk: the tiny model packed (safetensors planes, JSON stored).
        let dpk = tmp.path().join("tiny.dpk");
        dynapress_pack::pack_dir(
            &m,
            &dpk,
            &dynapress_pack::PackOptions {
                chunk_size: 4096,
                ..Default::default()
            },
        )
        .unwrap();
        put("dpk", "tiny.dpk", &std::fs::read(&dpk).unwrap());
        let small = tmp.path().join("small");
        std::fs::create_dir(&small).unwrap();
        std::fs::write(small.join("a.safetensors"), safetensors(false)).unwrap();
        std::fs::write(small.join("b.txt"), b"hello").unwrap();
        let dpk = tmp.path().join("small.dpk");
        dynapress_pack::pack_dir(&small, &dpk, &Default::default()).unwrap();
        put("dpk", "small.dpk", &std::fs::read(&dpk).unwrap());

        // manifest.json: a database of the tiny model (RTN, two levels).
        let db = tmp.path().join("db");
        let calib = tmp.path().join("calib.txt");
        std::fs::write(&calib, "Hello world, hello! ".repeat(200)).unwrap();
        let cal = dynapress::calib::load_calibration(
            std::slice::from_ref(&calib),
            &files.tokenizer,
            128,
            16,
        )
        .unwrap();
        dynapress::database::build_database(
            &files,
            &cal,
            &db,
            &dynapress::database::BuildOptions {
                spec: dynapress::database::MethodSpec {
                    method: dynapress::database::Method::Rtn,
                    bits: vec![2, 4],
                    group_size: 16,
                    ..Default::default()
                },
                batch: 4,
                keep_hessians: false,
                force: false,
                quiet: true,
                abort_after: None,
            },
        )
        .unwrap();
        put(
            "manifest",
            "rtn.json",
            &std::fs::read(db.join("manifest.json")).unwrap(),
        );
    }

    /// A Llama with 1 block of hidden size 16 and the BPE tokenizer above.
    fn tiny_model(dir: &Path) -> std::path::PathBuf {
        let m = dir.join("tiny");
        std::fs::create_dir(&m).unwrap();
        let cfg = serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": 16, "hidden_size": 16, "intermediate_size": 32,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 64,
            "tie_word_embeddings": false, "bos_token_id": 0, "eos_token_id": 0,
            "torch_dtype": "float32"
        });
        std::fs::write(m.join("config.json"), cfg.to_string()).unwrap();
        std::fs::write(m.join("tokenizer.json"), TOKENIZER_BPE).unwrap();
        let (h, f, v, l, kv) = (16usize, 32usize, 16usize, 1usize, 8usize);
        let mut tensors: Vec<(String, Vec<usize>)> = vec![
            ("model.embed_tokens.weight".into(), vec![v, h]),
            ("model.norm.weight".into(), vec![h]),
            ("lm_head.weight".into(), vec![v, h]),
        ];
        for b in 0..l {
            let p = format!("model.layers.{b}");
            for (n, s) in [
                ("input_layernorm.weight", vec![h]),
                ("post_attention_layernorm.weight", vec![h]),
                ("self_attn.q_proj.weight", vec![h, h]),
                ("self_attn.k_proj.weight", vec![kv, h]),
                ("self_attn.v_proj.weight", vec![kv, h]),
                ("self_attn.o_proj.weight", vec![h, h]),
                ("mlp.gate_proj.weight", vec![f, h]),
                ("mlp.up_proj.weight", vec![f, h]),
                ("mlp.down_proj.weight", vec![h, f]),
            ] {
                tensors.push((format!("{p}.{n}"), s));
            }
        }
        let specs: Vec<dynapress::formats::safetensors::TensorSpec> = tensors
            .iter()
            .map(|(n, s)| dynapress::formats::safetensors::TensorSpec {
                name: n.clone(),
                dtype: safetensors::Dtype::F32,
                shape: s.clone(),
            })
            .collect();
        let mut w = dynapress::formats::safetensors::SafetensorsWriter::create(
            &m.join("model.safetensors"),
            specs,
            &Default::default(),
        )
        .unwrap();
        let mut x = 1u32;
        for (n, s) in &tensors {
            let count: usize = s.iter().product();
            let vals: Vec<f32> = (0..count)
                .map(|_| {
                    x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    if n.contains("norm") {
                        1.0
                    } else {
                        ((x >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.2
                    }
                })
                .collect();
            w.write_f32(n, &vals).unwrap();
        }
        w.finish().unwrap();
        m
    }
}
