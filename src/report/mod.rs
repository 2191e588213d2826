//! `report.json`, `report.md` and `report.html` (self-contained, inline SVG:
//! a heatmap of the chosen level per block × layer type, and held-out KL
//! against bits per weight for every evaluated configuration).

pub mod depth;

use std::fmt::Write;
use std::path::Path;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::eval::perplexity::WindowScores;
use crate::fsutil::write_atomic;
use crate::model::LinearKind;
use crate::search::evopress::GenerationLog;
use crate::search::fitness::EvalStats;
use crate::selection::Algo;

/// One evaluated configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalRow {
    pub name: String,
    /// `uniform`, `knapsack`, `evopress`, `exported` or `base`.
    pub kind: String,
    pub bits_per_weight: f64,
    pub datasets: BTreeMap<String, WindowScores>,
    /// KL averaged over the evaluation files.
    pub mean_kl: Option<f64>,
}

/// A layer's level in the result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportLayer {
    pub layer: String,
    pub block: usize,
    pub kind: String,
    pub level: String,
    pub bits: u8,
    pub bits_per_weight: f64,
}

/// Everything `report.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompressReport {
    pub dynapress_version: String,
    pub machine: String,
    pub threads: usize,
    pub model: String,
    pub architecture: String,
    pub linear_params: u64,
    pub target_bits: f64,
    /// The GGUF file-size target the bits budget was derived from, if any.
    pub target_size: Option<u64>,
    pub achieved_bits_per_weight: f64,
    pub algo: Algo,
    pub database: String,
    pub levels: Vec<String>,
    pub config: String,
    pub exported: String,
    /// Bytes of the exported model (the GGUF file, or the dequantized safetensors).
    pub exported_bytes: u64,
    /// The GGUF `token_embd` type the search chose (file-size budgets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embed_type: Option<String>,
    /// The GGUF `output` type the search chose (untied checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_type: Option<String>,
    /// Safetensors export: the same model with every searched layer in its
    /// compressed form (`export --format dynapress`), and its bytes.
    pub compressed: Option<String>,
    pub compressed_bytes: Option<u64>,
    pub search_fitness: Option<f64>,
    pub search_history: Vec<GenerationLog>,
    pub search_stats: Option<EvalStats>,
    pub layers: Vec<ReportLayer>,
    /// Which levels and tensor types layers could not take, and what they
    /// have instead (rows a ggml type's block cannot hold; GGUF embeddings).
    #[serde(default)]
    pub level_notes: Vec<String>,
    pub eval_files: Vec<String>,
    pub eval_seq_len: usize,
    pub eval_windows: usize,
    pub rows: Vec<EvalRow>,
    /// Uniform levels' KL interpolated linearly to the target (mean over files).
    pub uniform_interpolated_kl: Option<f64>,
    pub seconds: BTreeMap<String, f64>,
}

/// The CPU model, for the report.
pub fn machine() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Mean KL of the uniform levels, interpolated linearly in bits to `target`.
pub fn interpolate_uniform(rows: &[EvalRow], target: f64) -> Option<f64> {
    let mut pts: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.kind == "uniform")
        .filter_map(|r| r.mean_kl.map(|k| (r.bits_per_weight, k)))
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let i = pts.iter().position(|p| p.0 >= target)?;
    if i == 0 {
        return (pts[0].0 == target).then_some(pts[0].1);
    }
    let (a, b) = (pts[i - 1], pts[i]);
    Some(a.1 + (target - a.0) / (b.0 - a.0) * (b.1 - a.1))
}

/// Writes the three report files into `dir`.
pub fn write_reports(r: &CompressReport, dir: &Path) -> Result<()> {
    write_atomic(
        &dir.join("report.json"),
        serde_json::to_string_pretty(r)
            .expect("serialises")
            .as_bytes(),
    )?;
    write_atomic(&dir.join("report.md"), markdown(r).as_bytes())?;
    write_atomic(&dir.join("report.html"), html(r).as_bytes())?;
    Ok(())
}

fn fmt_kl(x: Option<f64>) -> String {
    x.map_or("-".into(), |k| format!("{k:.5}"))
}

fn row_cells(r: &CompressReport, row: &EvalRow) -> Vec<String> {
    let mut cells = vec![row.name.clone(), format!("{:.4}", row.bits_per_weight)];
    for f in &r.eval_files {
        let d = row.datasets.get(f);
        cells.push(d.map_or("-".into(), |d| format!("{:.3}", d.perplexity)));
        cells.push(fmt_kl(d.and_then(|d| d.kl)));
        cells.push(
            d.and_then(|d| d.top1_agreement)
                .map_or("-".into(), |t| format!("{t:.4}")),
        );
    }
    cells.push(fmt_kl(row.mean_kl));
    cells
}

fn header(r: &CompressReport) -> Vec<String> {
    let mut h = vec!["configuration".to_string(), "bits/weight".to_string()];
    for f in &r.eval_files {
        h.push(format!("{f} PPL"));
        h.push(format!("{f} KL"));
        h.push(format!("{f} top-1"));
    }
    h.push("mean KL".into());
    h
}

/// The level grid: blocks × layer kinds → bits.
fn grid(r: &CompressReport) -> Vec<Vec<Option<(u8, String)>>> {
    let blocks = r.layers.iter().map(|l| l.block + 1).max().unwrap_or(0);
    let mut g = vec![vec![None; LinearKind::ALL.len()]; blocks];
    for l in &r.layers {
        if let Some(k) = LinearKind::ALL
            .iter()
            .position(|k| k.short_name() == l.kind)
        {
            g[l.block][k] = Some((l.bits, l.level.clone()));
        }
    }
    g
}

/// Markdown report.
pub fn markdown(r: &CompressReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# dynapress report\n");
    let _ = writeln!(
        s,
        "Model `{}` ({}), {} linear weights. Target {} bits per weight; {} reached {:.4} \
         (scales and zeros included). Machine: {} ({} threads). dynapress {}.\n",
        r.model,
        r.architecture,
        r.linear_params,
        r.target_bits,
        r.algo,
        r.achieved_bits_per_weight,
        r.machine,
        r.threads,
        r.dynapress_version
    );
    let _ = writeln!(
        s,
        "Outputs: database `{}`, configuration `{}`, exported model `{}` ({} bytes).",
        r.database, r.config, r.exported, r.exported_bytes
    );
    if let Some(e) = &r.embed_type {
        let _ = writeln!(
            s,
            "The search chose the GGUF's `token_embd` type, {e}{}, with the linear layers' levels under the file-size budget.",
            r.output_type
                .as_ref()
                .map(|o| format!(", and `output`'s, {o}"))
                .unwrap_or_default()
        );
    }
    if let (Some(c), Some(b)) = (&r.compressed, r.compressed_bytes) {
        let _ = writeln!(
            s,
            "The same model with the searched layers in their compressed form: `{c}` ({b} bytes; `dynapress eval`, `generate` and `pack` read it)."
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "## Held-out evaluation\n\n{} windows of {} tokens per file; KL is KL(base ‖ model) per token, top-1 the agreement of the argmax with the base.\n",
        r.eval_windows, r.eval_seq_len
    );
    md_table(
        &mut s,
        &header(r),
        r.rows.iter().map(|row| row_cells(r, row)),
    );
    if let Some(k) = r.uniform_interpolated_kl {
        let _ = writeln!(
            s,
            "\nUniform levels interpolated to {} bits per weight: mean KL {k:.5}.",
            r.target_bits
        );
    }
    let _ = writeln!(s, "\n## Chosen levels (bits)\n");
    let kinds: Vec<&str> = LinearKind::ALL.iter().map(|k| k.short_name()).collect();
    let _ = writeln!(s, "| block | {} |", kinds.join(" | "));
    let _ = writeln!(s, "|---|{}|", vec!["---"; kinds.len()].join("|"));
    for (b, row) in grid(r).iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .map(|c| c.as_ref().map_or("-".into(), |(bits, _)| bits.to_string()))
            .collect();
        let _ = writeln!(s, "| {b} | {} |", cells.join(" | "));
    }
    for note in &r.level_notes {
        let _ = writeln!(s, "\n- {note}");
    }
    if let Some(st) = &r.search_stats {
        let without = st.block_forwards - st.cache_forwards + st.block_forwards_saved;
        let _ = writeln!(
            s,
            "\n## Search\n\n{} generations, {} candidate evaluations on {} tokens; final calibration KL {}. \
             Block forwards: {} run, {} without the parent cache.",
            r.search_history.len(),
            st.evaluations,
            st.tokens,
            fmt_kl(r.search_fitness),
            st.block_forwards,
            without
        );
    }
    let _ = writeln!(s, "\n## Time (seconds)\n");
    for (k, v) in &r.seconds {
        let _ = writeln!(s, "- {k}: {v:.1}");
    }
    s
}

/// A Markdown table: the header, its rule, one line per row.
pub(crate) fn md_table(
    s: &mut String,
    header: &[String],
    rows: impl IntoIterator<Item = Vec<String>>,
) {
    let _ = writeln!(s, "| {} |", header.join(" | "));
    let _ = writeln!(s, "|{}|", vec!["---"; header.len()].join("|"));
    for row in rows {
        let _ = writeln!(s, "| {} |", row.join(" | "));
    }
}

/// An HTML table of escaped cells: the header row, then one row per row.
pub(crate) fn html_table(
    s: &mut String,
    header: &[String],
    rows: impl IntoIterator<Item = Vec<String>>,
) {
    s.push_str("<table><tr>");
    for h in header {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr>");
    for row in rows {
        s.push_str("<tr>");
        for c in row {
            let _ = write!(s, "<td>{}</td>", esc(&c));
        }
        s.push_str("</tr>");
    }
    s.push_str("</table>");
}

/// The start of a self-contained HTML report: `<head>` with `title` and the
/// shared table style plus `extra_css`, then `<body>` and the `<h1>`.
pub(crate) fn html_head(title: &str, extra_css: &str) -> String {
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 7px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}{extra_css}</style></head><body>
<h1>{title}</h1>
"#
    )
}

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Colour of a bit width: blue (2) to red (8).
fn color(bits: u8) -> String {
    let t = ((bits as f64 - 2.0) / 6.0).clamp(0.0, 1.0);
    let (r, g, b) = (
        (49.0 + t * (215.0 - 49.0)) as u8,
        (54.0 + t * (48.0 - 54.0) + 120.0 * (1.0 - (2.0 * t - 1.0).abs())) as u8,
        (149.0 + t * (39.0 - 149.0)) as u8,
    );
    format!("rgb({r},{g},{b})")
}

fn heatmap_svg(r: &CompressReport) -> String {
    let g = grid(r);
    let (cw, ch, left, top) = (78.0, 26.0, 70.0, 30.0);
    let kinds: Vec<&str> = LinearKind::ALL.iter().map(|k| k.short_name()).collect();
    let w = left + cw * kinds.len() as f64 + 10.0;
    let h = top + ch * g.len() as f64 + 10.0;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    for (j, k) in kinds.iter().enumerate() {
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{k}</text>"#,
            left + cw * (j as f64 + 0.5),
            top - 10.0
        );
    }
    for (b, row) in g.iter().enumerate() {
        let y = top + ch * b as f64;
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">block {b}</text>"#,
            left - 6.0,
            y + ch * 0.65
        );
        for (j, cell) in row.iter().enumerate() {
            let x = left + cw * j as f64;
            match cell {
                Some((bits, level)) => {
                    let _ = write!(
                        s,
                        r#"<rect x="{x}" y="{y}" width="{}" height="{}" fill="{}" stroke="white"><title>block {b} {}: {}</title></rect><text x="{}" y="{}" text-anchor="middle" fill="white">{bits}</text>"#,
                        cw,
                        ch,
                        color(*bits),
                        kinds[j],
                        esc(level),
                        x + cw / 2.0,
                        y + ch * 0.65
                    );
                }
                None => {
                    let _ = write!(
                        s,
                        r##"<rect x="{x}" y="{y}" width="{cw}" height="{ch}" fill="#eee" stroke="white"/>"##
                    );
                }
            }
        }
    }
    s.push_str("</svg>");
    s
}

/// KL versus bits. `zoom`: only the points within that range of bits, on axes
/// fitted to them (ticks every quarter bit and at 1, 2, 5 × 10ᵉ), so that
/// the allocations near the target can be told apart.
fn plot_svg(r: &CompressReport, zoom: Option<(f64, f64)>) -> String {
    let pts: Vec<(&EvalRow, f64, f64)> = r
        .rows
        .iter()
        .filter(|row| row.kind != "base")
        .filter(|row| zoom.is_none_or(|(lo, hi)| (lo..=hi).contains(&row.bits_per_weight)))
        .filter_map(|row| {
            row.mean_kl
                .filter(|k| *k > 0.0)
                .map(|k| (row, row.bits_per_weight, k))
        })
        .collect();
    let (w, h, l, rt, t, b) = (640.0, 360.0, 70.0, 150.0, 20.0, 45.0);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    if pts.is_empty() {
        s.push_str("</svg>");
        return s;
    }
    let fold = |f: &dyn Fn(&(&EvalRow, f64, f64)) -> f64| {
        pts.iter()
            .map(f)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(v), b.max(v))
            })
    };
    let (x0, x1) = fold(&|p| p.1);
    let (y0, y1) = fold(&|p| p.2.log10());
    // Axis ranges and ticks: whole bits and decades, or (zoomed) quarter
    // bits and 1-2-5 steps around the data.
    let (xmin, xmax, xstep, ymin, ymax) = match zoom {
        None => {
            let (xmin, ymin) = (x0.floor(), y0.floor());
            (
                xmin,
                x1.ceil().max(xmin + 1.0),
                1.0,
                ymin,
                y1.ceil().max(ymin + 1.0),
            )
        }
        Some(_) => {
            let pad = ((y1 - y0) * 0.1).max(0.05);
            let xmin = (x0 * 4.0).floor() / 4.0;
            let xmax = ((x1 * 4.0).ceil() / 4.0).max(xmin + 0.25);
            (xmin, xmax, 0.25, y0 - pad, y1 + pad)
        }
    };
    let yticks: Vec<f64> = match zoom {
        None => (ymin as i32..=ymax as i32).map(f64::from).collect(),
        Some(_) => (ymin.floor() as i32..=ymax.ceil() as i32)
            .flat_map(|e| [1.0, 2.0, 5.0].map(|m: f64| (m * 10f64.powi(e)).log10()))
            .filter(|y| (ymin..=ymax).contains(y))
            .collect(),
    };
    let px = |x: f64| l + (x - xmin) / (xmax - xmin) * (w - l - rt);
    let py = |y: f64| t + (ymax - y.log10()) / (ymax - ymin) * (h - t - b);
    // Axes and grid.
    let _ = write!(
        s,
        r#"<rect x="{l}" y="{t}" width="{}" height="{}" fill="none" stroke="black"/>"#,
        w - l - rt,
        h - t - b
    );
    let mut i = 0;
    while xmin + i as f64 * xstep <= xmax + 1e-9 {
        let x = xmin + i as f64 * xstep;
        let _ = write!(
            s,
            r##"<line x1="{0}" x2="{0}" y1="{t}" y2="{1}" stroke="#ddd"/><text x="{0}" y="{2}" text-anchor="middle">{x}</text>"##,
            px(x),
            h - b,
            h - b + 16.0
        );
        i += 1;
    }
    for e in yticks {
        let yy = t + (ymax - e) / (ymax - ymin) * (h - t - b);
        let label = match zoom {
            None => format!("1e{e}"),
            Some(_) => format!("{}", 10f64.powf(e) as f32),
        };
        let _ = write!(
            s,
            r##"<line x1="{l}" x2="{0}" y1="{yy}" y2="{yy}" stroke="#ddd"/><text x="{1}" y="{2}" text-anchor="end">{label}</text>"##,
            w - rt,
            l - 6.0,
            yy + 4.0
        );
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">bits per weight (linear layers)</text><text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">held-out KL to base</text>"#,
        (l + w - rt) / 2.0,
        h - 8.0,
        (t + h - b) / 2.0,
        (t + h - b) / 2.0
    );
    let series = [
        ("uniform", "#1f77b4", "circle"),
        ("knapsack", "#ff7f0e", "square"),
        ("evopress", "#2ca02c", "diamond"),
        ("exported", "#d62728", "cross"),
    ];
    for (i, (kind, col, shape)) in series.iter().enumerate() {
        let mut sp: Vec<(f64, f64)> = pts
            .iter()
            .filter(|p| p.0.kind == *kind)
            .map(|p| (p.1, p.2))
            .collect();
        sp.sort_by(|a, b| a.0.total_cmp(&b.0));
        if sp.len() > 1 {
            let path: Vec<String> = sp
                .iter()
                .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
                .collect();
            let _ = write!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{col}" stroke-width="1.5"/>"#,
                path.join(" ")
            );
        }
        for (x, y) in &sp {
            let (cx, cy) = (px(*x), py(*y));
            let mark = match *shape {
                "circle" => format!(r#"<circle cx="{cx}" cy="{cy}" r="4" fill="{col}"/>"#),
                "square" => format!(
                    r#"<rect x="{}" y="{}" width="8" height="8" fill="{col}"/>"#,
                    cx - 4.0,
                    cy - 4.0
                ),
                "diamond" => format!(
                    r#"<polygon points="{},{} {},{} {},{} {},{}" fill="{col}"/>"#,
                    cx,
                    cy - 6.0,
                    cx + 6.0,
                    cy,
                    cx,
                    cy + 6.0,
                    cx - 6.0,
                    cy
                ),
                _ => format!(
                    r#"<path d="M{} {} L{} {} M{} {} L{} {}" stroke="{col}" stroke-width="2"/>"#,
                    cx - 5.0,
                    cy - 5.0,
                    cx + 5.0,
                    cy + 5.0,
                    cx - 5.0,
                    cy + 5.0,
                    cx + 5.0,
                    cy - 5.0
                ),
            };
            s.push_str(&mark);
        }
        let ly = t + 16.0 + 20.0 * i as f64;
        let _ = write!(
            s,
            r#"<rect x="{}" y="{}" width="10" height="10" fill="{col}"/><text x="{}" y="{}">{kind}</text>"#,
            w - rt + 14.0,
            ly - 9.0,
            w - rt + 30.0,
            ly
        );
    }
    s.push_str("</svg>");
    s
}

/// Self-contained HTML report.
pub fn html(r: &CompressReport) -> String {
    let mut s = html_head("dynapress report", "h2{margin-top:1.6em}.muted{color:#666}");
    let _ = write!(
        s,
        r#"<p>Model <code>{}</code> ({}), {} linear weights. Target <b>{}</b> bits per weight; {} reached <b>{:.4}</b> (scales and zeros included).</p>
<p class="muted">Machine: {} ({} threads). dynapress {}.</p>"#,
        esc(&r.model),
        r.architecture,
        r.linear_params,
        r.target_bits,
        r.algo,
        r.achieved_bits_per_weight,
        esc(&r.machine),
        r.threads,
        r.dynapress_version
    );
    let _ = write!(
        s,
        "<h2>Chosen level per layer</h2><p class=\"muted\">Bits of the level each linear layer got (hover for the level).</p>{}",
        heatmap_svg(r)
    );
    for note in &r.level_notes {
        let _ = write!(s, "<p class=\"muted\">{}</p>", esc(note));
    }
    let _ = write!(
        s,
        "<h2>Held-out KL versus bits</h2><p class=\"muted\">Mean over {} of KL(base ‖ model) per token ({} windows of {} tokens per file).</p>{}",
        esc(&r.eval_files.join(", ")),
        r.eval_windows,
        r.eval_seq_len,
        plot_svg(r, None)
    );
    let _ = write!(
        s,
        "<p class=\"muted\">Near the target ({} ± 1 bits per weight), KL on a finer scale:</p>{}",
        r.target_bits,
        plot_svg(r, Some((r.target_bits - 1.0, r.target_bits + 1.0)))
    );
    s.push_str("<h2>Table</h2>");
    html_table(
        &mut s,
        &header(r),
        r.rows.iter().map(|row| row_cells(r, row)),
    );
    if let Some(k) = r.uniform_interpolated_kl {
        let _ = write!(
            s,
            "<p>Uniform levels interpolated to {} bits per weight: mean KL {k:.5}.</p>",
            r.target_bits
        );
    }
    let _ = write!(s, "<h2>Time</h2><ul>");
    for (k, v) in &r.seconds {
        let _ = write!(s, "<li>{k}: {v:.1} s</li>");
    }
    s.push_str("</ul></body></html>\n");
    s
}
