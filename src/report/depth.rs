//! The report of `compress --prune depth`: every method's held-out scores
//! next to its parameters and calibration KL, and which sublayers each drops.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::eval::perplexity::WindowScores;
use crate::fsutil::write_atomic;
use crate::model::{DepthConfig, Sublayer, SublayerId};
use crate::search::evopress::GenerationLog;
use crate::search::fitness::EvalStats;

/// One method's configuration, evaluated.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DepthRow {
    /// `last`, `shortgpt`, `kl-alone`, `evopress` or `exported (…)`.
    pub method: String,
    /// Parameters of the pruned model.
    pub params: Option<u64>,
    /// Mean KL(base ‖ pruned) on the calibration windows.
    pub calib_kl: Option<f64>,
    /// Dropped sublayers (`3.attn`, `5.mlp`).
    pub dropped: Vec<String>,
    pub datasets: BTreeMap<String, WindowScores>,
    /// KL averaged over the evaluation files.
    pub mean_kl: Option<f64>,
}

impl DepthRow {
    pub fn new(method: &str, c: &DepthConfig, datasets: BTreeMap<String, WindowScores>) -> Self {
        let kls: Vec<f64> = datasets.values().filter_map(|d| d.kl).collect();
        DepthRow {
            method: method.into(),
            params: c.params,
            calib_kl: c.calib_kl,
            dropped: c.dropped.iter().map(|s| s.to_string()).collect(),
            mean_kl: (!kls.is_empty()).then(|| kls.iter().sum::<f64>() / kls.len() as f64),
            datasets,
        }
    }

    fn drops(&self, block: usize, sublayer: Sublayer) -> bool {
        self.dropped
            .contains(&SublayerId { block, sublayer }.to_string())
    }
}

/// Everything the depth `report.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DepthReport {
    pub dynapress_version: String,
    pub machine: String,
    pub threads: usize,
    pub model: String,
    pub architecture: String,
    pub num_layers: usize,
    pub budget: String,
    pub whole_blocks: bool,
    pub total_params: u64,
    pub calib_windows: usize,
    pub exported: String,
    pub exported_format: String,
    pub exported_bytes: u64,
    /// Directory of the methods' configurations (`eval --config`, `export --config`).
    pub configs: String,
    pub rows: Vec<DepthRow>,
    /// The unpruned model's scores.
    pub base: BTreeMap<String, WindowScores>,
    pub eval_files: Vec<String>,
    pub eval_seq_len: usize,
    pub eval_windows: usize,
    pub search_history: Vec<GenerationLog>,
    pub search_stats: EvalStats,
    pub notes: Vec<String>,
    pub seconds: BTreeMap<String, f64>,
}

impl DepthReport {
    /// A row by method name.
    pub fn row(&self, method: &str) -> Option<&DepthRow> {
        self.rows.iter().find(|r| r.method == method)
    }
}

/// Writes `report.json`, `report.md` and `report.html` into `dir`.
pub fn write_reports(r: &DepthReport, dir: &Path) -> Result<()> {
    write_atomic(
        &dir.join("report.json"),
        serde_json::to_string_pretty(r).expect("json").as_bytes(),
    )?;
    write_atomic(&dir.join("report.md"), markdown(r).as_bytes())?;
    write_atomic(&dir.join("report.html"), html(r).as_bytes())?;
    Ok(())
}

fn header(r: &DepthReport) -> Vec<String> {
    let mut h = vec!["method".into(), "parameters".into(), "calib KL".into()];
    for f in &r.eval_files {
        h.push(format!("{f} PPL"));
        h.push(format!("{f} KL"));
    }
    h.push("mean KL".into());
    h.push("dropped".into());
    h
}

fn cells(r: &DepthReport, row: &DepthRow) -> Vec<String> {
    let kl = |x: Option<f64>| x.map_or("-".into(), |k| format!("{k:.5}"));
    let mut c = vec![
        row.method.clone(),
        row.params.map_or("-".into(), |p| p.to_string()),
        kl(row.calib_kl),
    ];
    for f in &r.eval_files {
        let d = row.datasets.get(f);
        c.push(d.map_or("-".into(), |d| format!("{:.3}", d.perplexity)));
        c.push(kl(d.and_then(|d| d.kl)));
    }
    c.push(kl(row.mean_kl));
    c.push(row.dropped.join(" "));
    c
}

/// Markdown report.
pub fn markdown(r: &DepthReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# dynapress depth-pruning report\n");
    let _ = writeln!(
        s,
        "Model `{}` ({}, {} blocks, {} parameters). Budget: {}{}. Machine: {} ({} threads). dynapress {}.\n",
        r.model,
        r.architecture,
        r.num_layers,
        r.total_params,
        r.budget,
        if r.whole_blocks {
            " (whole blocks)"
        } else {
            ""
        },
        r.machine,
        r.threads,
        r.dynapress_version
    );
    let _ = writeln!(
        s,
        "Exported EvoPress's configuration: `{}` ({}, {} bytes). Every method's configuration: `{}`.\n",
        r.exported, r.exported_format, r.exported_bytes, r.configs
    );
    for n in &r.notes {
        let _ = writeln!(s, "{n}.\n");
    }
    let _ = writeln!(
        s,
        "## Held-out evaluation\n\n{} windows of {} tokens per file; KL is KL(base ‖ pruned) per token; calib KL is the search's fitness on {} calibration windows.\n",
        r.eval_windows, r.eval_seq_len, r.calib_windows
    );
    super::md_table(&mut s, &header(r), r.rows.iter().map(|row| cells(r, row)));
    let base: Vec<String> = r
        .eval_files
        .iter()
        .map(|f| {
            r.base
                .get(f)
                .map_or("-".into(), |d| format!("{f} {:.3}", d.perplexity))
        })
        .collect();
    let _ = writeln!(s, "\nUnpruned perplexity: {}.", base.join(", "));
    let _ = writeln!(
        s,
        "\n## Dropped sublayers\n\n`A` attention dropped, `M` MLP dropped, `·` kept.\n"
    );
    let methods: Vec<&DepthRow> = r
        .rows
        .iter()
        .filter(|x| !x.method.starts_with("exported"))
        .collect();
    let names: Vec<&str> = methods.iter().map(|x| x.method.as_str()).collect();
    let _ = writeln!(s, "| block | {} |", names.join(" | "));
    let _ = writeln!(s, "|---|{}|", vec!["---"; names.len()].join("|"));
    for b in 0..r.num_layers {
        let marks: Vec<String> = methods
            .iter()
            .map(|row| {
                let a = if row.drops(b, Sublayer::Attn) {
                    "A"
                } else {
                    "·"
                };
                let m = if row.drops(b, Sublayer::Mlp) {
                    "M"
                } else {
                    "·"
                };
                format!("{a}{m}")
            })
            .collect();
        let _ = writeln!(s, "| {b} | {} |", marks.join(" | "));
    }
    let _ = writeln!(s, "\n## Time\n");
    for (k, v) in &r.seconds {
        let _ = writeln!(s, "- {k}: {v:.1} s");
    }
    s
}

/// HTML report: the table and a grid of dropped sublayers per method.
pub fn html(r: &DepthReport) -> String {
    let esc = super::esc;
    let mut s = super::html_head(
        "dynapress depth-pruning report",
        ".muted{color:#666}.d{background:#d9534f;color:#fff;text-align:center}.k{background:#e8f4e8;text-align:center}",
    );
    let _ = write!(
        s,
        r#"<p>Model <code>{}</code> ({}, {} blocks, {} parameters). Budget: <b>{}</b>{}.</p>
<p>Exported EvoPress's configuration: <code>{}</code> ({}, {} bytes).</p>
<p class="muted">Machine: {} ({} threads). dynapress {}.</p>"#,
        esc(&r.model),
        r.architecture,
        r.num_layers,
        r.total_params,
        esc(&r.budget),
        if r.whole_blocks {
            " (whole blocks)"
        } else {
            ""
        },
        esc(&r.exported),
        esc(&r.exported_format),
        r.exported_bytes,
        esc(&r.machine),
        r.threads,
        r.dynapress_version
    );
    for n in &r.notes {
        let _ = write!(s, "<p class=\"muted\">{}</p>", esc(n));
    }
    let _ = write!(
        s,
        "<h2>Held-out evaluation</h2><p class=\"muted\">{} windows of {} tokens per file; KL(base ‖ pruned) per token.</p>",
        r.eval_windows, r.eval_seq_len
    );
    super::html_table(&mut s, &header(r), r.rows.iter().map(|row| cells(r, row)));
    s.push_str("<h2>Dropped sublayers</h2><table><tr><th>block</th>");
    let methods: Vec<&DepthRow> = r
        .rows
        .iter()
        .filter(|x| !x.method.starts_with("exported"))
        .collect();
    for m in &methods {
        let _ = write!(s, "<th colspan=\"2\">{}</th>", esc(&m.method));
    }
    s.push_str("</tr>");
    for b in 0..r.num_layers {
        let _ = write!(s, "<tr><td>{b}</td>");
        for m in &methods {
            for (sub, label) in [(Sublayer::Attn, "attn"), (Sublayer::Mlp, "mlp")] {
                let (class, text) = if m.drops(b, sub) {
                    ("d", label)
                } else {
                    ("k", "")
                };
                let _ = write!(s, "<td class=\"{class}\">{text}</td>");
            }
        }
        s.push_str("</tr>");
    }
    s.push_str("</table><h2>Time</h2><ul>");
    for (k, v) in &r.seconds {
        let _ = write!(s, "<li>{k}: {v:.1} s</li>");
    }
    s.push_str("</ul></body></html>\n");
    s
}
