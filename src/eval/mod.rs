//! Evaluation: perplexity, KL divergence and top-1 agreement against a base
//! model on held-out text, and multiple-choice accuracy.

/// Text loading lives before calibration in the flow; re-exported here.
pub use crate::data;
pub mod compare;
pub mod perplexity;
pub mod tasks;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use perplexity::{WindowOptions, WindowScores, score_windows};
pub use tasks::{TaskItem, TaskScores};

use crate::error::Result;
use crate::model::Model;
use crate::progress;

/// What to evaluate.
#[derive(Debug, Clone, Default)]
pub struct EvalPlan {
    pub data: Vec<PathBuf>,
    pub tasks: Vec<PathBuf>,
    pub windows: WindowOptions,
    /// Tokens per forward pass when scoring task choices.
    pub task_batch_tokens: usize,
    pub quiet: bool,
}

/// Everything `dynapress eval` reports (its `--json` form).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EvalReport {
    pub model: String,
    pub base: Option<String>,
    pub seq_len: usize,
    pub protocol: perplexity::Protocol,
    pub datasets: BTreeMap<String, WindowScores>,
    pub tasks: BTreeMap<String, TaskScores>,
    /// Tokens through the evaluated model per second of wall time (base model
    /// forwards, when given, take time but are not counted).
    pub tokens_per_second: f64,
}

/// A display name for a data file: its file name.
pub fn file_label(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Gives memory freed by earlier work back to the system.
///
/// The binary tells glibc to keep freed memory (`keep_freed_memory` in
/// main.rs, for the speed of the forward pass), so without this the search's
/// buffers and each evaluation group's models would stay resident while the
/// next ones are built, and the peak would be their sum. Then
/// [`log_memory`].
pub fn release_freed_memory(at: &str) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    log_memory(at);
}

/// With `DYNAPRESS_DEBUG_MEM` set, prints the resident and peak memory at `at`
/// on stderr.
pub fn log_memory(at: &str) {
    if std::env::var_os("DYNAPRESS_DEBUG_MEM").is_some() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |k: &str| {
            status
                .lines()
                .find(|l| l.starts_with(k))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .map_or(0.0, |kib| kib / 1024.0)
        };
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        eprintln!(
            "memory {at} ({:.1} s): resident {:.0} MiB (anonymous {:.0}, file {:.0}), peak {:.0} MiB",
            START.get_or_init(Instant::now).elapsed().as_secs_f64(),
            field("VmRSS:"),
            field("RssAnon:"),
            field("RssFile:"),
            field("VmHWM:")
        );
    }
}

/// Runs an evaluation plan.
pub fn evaluate(model: &Model, base: Option<&Model>, plan: &EvalPlan) -> Result<EvalReport> {
    let start = Instant::now();
    let mut forwarded = 0usize;
    let mut datasets = BTreeMap::new();
    if !plan.data.is_empty() {
        plan.windows.validate()?;
    }
    for path in &plan.data {
        let mut tokens = data::load_tokens(path, &model.tokenizer)?;
        let mut wopts = plan.windows;
        if wopts.protocol == perplexity::Protocol::LlamaPerplexity {
            // llama.cpp tokenizes the file with its special tokens: BOS first.
            wopts.bos = model.tokenizer.added_bos();
            if let Some(bos) = wopts.bos {
                tokens.insert(0, bos);
            }
        }
        if let Some(b) = base {
            // KL compares distributions over the same token stream.
            let bt = data::load_tokens(path, &b.tokenizer)?;
            if bt != tokens {
                return Err(crate::error::Error::Invalid(format!(
                    "the base model's tokenizer splits {} differently; KL needs the same tokenizer",
                    path.display()
                )));
            }
        }
        let n = perplexity::usable_windows(tokens.len(), &wopts);
        let label = file_label(path);
        if n < plan.windows.windows && !plan.quiet {
            eprintln!(
                "note: {label} has {} tokens: {n} windows of {} instead of {}",
                tokens.len(),
                plan.windows.seq_len,
                plan.windows.windows
            );
        }
        let pb = progress::bar((n * plan.windows.seq_len) as u64, &label, "tok", plan.quiet);
        let scores = score_windows(model, base, &tokens, &wopts, |k| pb.inc(k as u64)).map_err(
            |e| match e {
                crate::error::Error::Invalid(m) => crate::error::Error::data(path, m),
                e => e,
            },
        )?;
        pb.finish_and_clear();
        forwarded += scores.windows * plan.windows.seq_len;
        datasets.insert(label, scores);
    }
    let mut task_scores = BTreeMap::new();
    for path in &plan.tasks {
        let items = tasks::load_tasks(path)?;
        let requests = tasks::task_requests(model, &items)?;
        let total: usize = requests.iter().map(|r| r.tokens.len()).sum();
        let label = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| file_label(path));
        let pb = progress::bar(total as u64, &label, "tok", plan.quiet);
        let lls = tasks::score_requests(model, &requests, plan.task_batch_tokens.max(1), |k| {
            pb.inc(k as u64)
        })?;
        pb.finish_and_clear();
        forwarded += total;
        task_scores.insert(label, tasks::task_scores(&items, &lls));
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(EvalReport {
        model: model.dir().display().to_string(),
        base: base.map(|b| b.dir().display().to_string()),
        seq_len: plan.windows.seq_len,
        protocol: plan.windows.protocol,
        datasets,
        tasks: task_scores,
        tokens_per_second: if secs > 0.0 {
            forwarded as f64 / secs
        } else {
            0.0
        },
    })
}

impl EvalReport {
    /// A plain-text table.
    pub fn to_table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "model: {}", self.model);
        if let Some(b) = &self.base {
            let _ = writeln!(s, "base:  {b}");
        }
        if !self.datasets.is_empty() {
            let _ = writeln!(
                s,
                "\n{:<24} {:>8} {:>10} {:>11} {:>10} {:>7}",
                "dataset", "tokens", "nll/token", "perplexity", "KL", "top-1"
            );
            for (name, d) in &self.datasets {
                let kl = d.kl.map_or("-".to_string(), |k| format!("{k:.5}"));
                let t1 = d
                    .top1_agreement
                    .map_or("-".to_string(), |k| format!("{k:.4}"));
                let _ = writeln!(
                    s,
                    "{:<24} {:>8} {:>10.4} {:>11.4} {:>10} {:>7}",
                    name, d.tokens, d.nll_per_token, d.perplexity, kl, t1
                );
            }
        }
        if !self.tasks.is_empty() {
            let _ = writeln!(
                s,
                "\n{:<24} {:>8} {:>10} {:>10}",
                "task", "items", "acc", "acc_norm"
            );
            for (name, t) in &self.tasks {
                let _ = writeln!(
                    s,
                    "{:<24} {:>8} {:>10.4} {:>10.4}",
                    name, t.items, t.acc, t.acc_norm
                );
            }
        }
        let _ = writeln!(s, "\nthroughput: {:.0} tokens/s", self.tokens_per_second);
        s
    }
}
