#!/usr/bin/env bash
# GPTQ vs RTN (g128, asymmetric) on the demo model: held-out perplexity and KL
# to the base at 2, 3, 4 and 8 bits. Calibration: both *.valid.txt splits,
# 32768 tokens (128 windows of 256); evaluation: both *.test.txt splits,
# 64 windows of 256. Writes a markdown table to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/dynapress}
OUT=${OUT:-out/database-table}
mkdir -p "$OUT"
for m in gptq rtn; do
    "$BIN" database --model assets/demo-model --calib assets/data/docs.valid.txt --calib assets/data/code.valid.txt \
        --calib-tokens 32768 --method "$m" --bits 2,3,4,8 --out "$OUT/$m" --quiet --json > "$OUT/$m.build.json"
done
echo "| method | bits | bits/weight | docs.test PPL | docs.test KL | code.test PPL | code.test KL |"
echo "|---|---|---|---|---|---|---|"
for b in 2 3 4 8; do
    for m in rtn gptq; do
        "$BIN" eval --model assets/demo-model --db "$OUT/$m" --bits "$b" --base assets/demo-model \
            --data assets/data/docs.test.txt --data assets/data/code.test.txt --json --quiet > "$OUT/$m-$b.json"
        python3 - "$OUT/$m-$b.json" "$m" "$b" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))["datasets"]
b = int(sys.argv[3])
bpw = b + (16 + b) / 128
print(f"| {sys.argv[2].upper()} | {b} | {bpw:.4f} | {d['docs.test.txt']['perplexity']:.3f} | {d['docs.test.txt']['kl']:.5f} | {d['code.test.txt']['perplexity']:.3f} | {d['code.test.txt']['kl']:.5f} |")
PY
    done
done
"$BIN" eval --model assets/demo-model --data assets/data/docs.test.txt --data assets/data/code.test.txt --json --quiet > "$OUT/base.json"
python3 - "$OUT/base.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))["datasets"]
print(f"| base (bf16) | 16 | 16 | {d['docs.test.txt']['perplexity']:.3f} | 0 | {d['code.test.txt']['perplexity']:.3f} | 0 |")
PY
