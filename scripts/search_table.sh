#!/usr/bin/env bash
# EvoPress vs knapsack vs uniform on the demo model (docs/search.md): for each
# target (default 3.0 and 2.5 bits per weight), `dynapress compress` with its
# defaults (GPTQ g128 database at 2,3,4,5,6,8 bits calibrated on both valid
# splits; EvoPress from the knapsack solution) evaluates, on both test splits
# (64 windows x 256 tokens each), the uniform levels, the knapsack allocation
# and the EvoPress result; a second run starts EvoPress from random points
# (--init random). Prints a Markdown table; the reports are in OUT_DIR.
#
# Usage: scripts/search_table.sh [OUT_DIR]   (default out/search-table)
# Environment: TARGETS (default "3.0 2.5"), EXTRA (more compress arguments).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/search-table}
DP=target/release/dynapress
TARGETS=${TARGETS:-"3.0 2.5"}
read -r -a EXTRA <<<"${EXTRA:-}"
mkdir -p "$OUT"
for t in $TARGETS; do
    [[ -f $OUT/knapsack-init-$t/report.json ]] || $DP compress --target-bits "$t" --db "$OUT/db" \
        --out "$OUT/knapsack-init-$t" --quiet "${EXTRA[@]}" >"$OUT/knapsack-init-$t.log" 2>&1
    [[ -f $OUT/random-init-$t/report.json ]] || $DP compress --target-bits "$t" --db "$OUT/db" \
        --init random --no-compare --out "$OUT/random-init-$t" --quiet "${EXTRA[@]}" \
        >"$OUT/random-init-$t.log" 2>&1
done
python3 - "$OUT" $TARGETS <<'PY'
import json, sys
out, targets = sys.argv[1], sys.argv[2:]
print("| target | allocation | bits/weight | docs.test KL | code.test KL | mean KL | docs.test PPL | code.test PPL | search s | block forwards (saved) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for t in targets:
    k = json.load(open(f"{out}/knapsack-init-{t}/report.json"))
    r = json.load(open(f"{out}/random-init-{t}/report.json"))
    def row(name, x, rep=None):
        d = x["datasets"]
        extra = "| | |"
        if rep is not None:
            s = rep["search_stats"]
            extra = f"| {rep['seconds']['search']:.0f} | {s['block_forwards']} ({s['block_forwards_saved']}) |"
        print(f"| {t} | {name} | {x['bits_per_weight']:.4f} | {d['docs.test.txt']['kl']:.5f} | "
              f"{d['code.test.txt']['kl']:.5f} | {x['mean_kl']:.5f} | {d['docs.test.txt']['perplexity']:.3f} | "
              f"{d['code.test.txt']['perplexity']:.3f} {extra}")
    rows = {x["name"]: x for x in k["rows"]}
    print(f"| {t} | uniform, interpolated | {float(t):.4f} | | | {k['uniform_interpolated_kl']:.5f} | | | | |")
    for x in k["rows"]:
        if x["kind"] == "knapsack" and abs(float(x["name"].split("@")[1]) - float(t)) < 1e-9:
            row("knapsack", x)
    ev = [x for x in k["rows"] if x["kind"] == "evopress"][0]
    row("EvoPress (knapsack init, default)", ev, k)
    ev = [x for x in r["rows"] if x["kind"] == "evopress"][0]
    row("EvoPress (random init)", ev, r)
PY
