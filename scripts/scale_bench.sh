#!/usr/bin/env bash
# Scale benchmark (docs/scale.md): dynapress on a synthetic checkpoint of a
# real model's shape, stage by stage, against llama.cpp's F32 forward pass.
#
# For each shape: write the checkpoint (`bench synth`, random bf16 weights,
# the demo tokenizer), print `compress --dry-run`, run `compress` end to end
# under /usr/bin/time (stage seconds from report.json, peak RSS), then time
# one F32 `llama-perplexity` pass over the same calibration tokens
# (32,768 = 128 chunks of 256), which the search's wall time is compared with.
#
# Usage: scripts/scale_bench.sh [OUT_DIR]      (default out/scale)
# Environment:
#   SHAPES    space-separated names among smollm135 qwen05 llama1b (default smollm135)
#   EXTRA     more `compress` arguments (e.g. "--format gguf --target-size N")
#   DYNAPRESS_LLAMA_CPP_BIN  llama.cpp tools (default: scripts/build-llama-cpp.sh --print-dir)
#   SKIP_COMPRESS=1          only the dry-run and llama.cpp (for the large shapes)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/scale}
DP=$PWD/target/release/dynapress
LLAMA=${DYNAPRESS_LLAMA_CPP_BIN:-$(scripts/build-llama-cpp.sh --print-dir)}
read -r -a EXTRA <<<"${EXTRA:-}"
mkdir -p "$OUT"
CALIB=(--calib assets/data/docs.valid.txt --calib assets/data/code.valid.txt)
EVAL=(--eval assets/data/docs.test.txt --eval assets/data/code.test.txt)

shape_args() {
    case $1 in
    # SmolLM2-135M: 30 blocks, hidden 576, MLP 1536, 9/3 heads, vocab 49,152
    smollm135) echo "--layers 30 --hidden 576 --intermediate 1536 --heads 9 --kv-heads 3 --vocab 49152" ;;
    # Qwen2.5-0.5B: 24 blocks, hidden 896, MLP 4864, 14/2 heads, vocab 151,936
    qwen05) echo "--layers 24 --hidden 896 --intermediate 4864 --heads 14 --kv-heads 2 --vocab 151936" ;;
    # Llama-3.2-1B: 16 blocks, hidden 2048, MLP 8192, 32/8 heads, vocab 128,256
    llama1b) echo "--layers 16 --hidden 2048 --intermediate 8192 --heads 32 --kv-heads 8 --vocab 128256" ;;
    *) echo "unknown shape $1" >&2; exit 2 ;;
    esac
}

for shape in ${SHAPES:-smollm135}; do
    M=$OUT/$shape/model
    [[ -f $M/config.json ]] || $DP bench synth --out "$M" $(shape_args "$shape")
    echo "== $shape: dry run"
    $DP compress --model "$M" "${CALIB[@]}" "${EVAL[@]}" --out "$OUT/$shape/run" --dry-run --json \
        "${EXTRA[@]}" | tee "$OUT/$shape/dry-run.json"
    if [[ ${SKIP_COMPRESS:-0} != 1 && ! -f $OUT/$shape/run/report.json ]]; then
        echo "== $shape: compress"
        /usr/bin/time -v -o "$OUT/$shape/time.txt" $DP compress --model "$M" "${CALIB[@]}" "${EVAL[@]}" \
            --out "$OUT/$shape/run" --quiet "${EXTRA[@]}"
    fi
    echo "== $shape: llama.cpp F32 pass over the calibration tokens"
    [[ -f $OUT/$shape/f32.gguf ]] || $DP convert --model "$M" --out "$OUT/$shape/f32.gguf" --type F32
    cat assets/data/docs.valid.txt assets/data/code.valid.txt >"$OUT/$shape/calib.txt"
    /usr/bin/time -f "%e" -o "$OUT/$shape/llama-time.txt" "$LLAMA/llama-perplexity" \
        -m "$OUT/$shape/f32.gguf" -f "$OUT/$shape/calib.txt" -c 256 -b 2048 --chunks 128 -t "$(nproc)" \
        >"$OUT/$shape/llama-perplexity.log" 2>&1 || true
    python3 - "$OUT/$shape" <<'PY'
import json, re, sys
d = sys.argv[1]
dry = json.load(open(f"{d}/dry-run.json"))
llama = float(open(f"{d}/llama-time.txt").read().split()[-1])
print(f"llama-perplexity F32, 128 x 256 tokens: {llama:.0f} s")
try:
    rep = json.load(open(f"{d}/run/report.json"))
except FileNotFoundError:
    rep = None
rss = None
try:
    for line in open(f"{d}/time.txt"):
        if "Maximum resident" in line:
            rss = int(line.split(":")[1]) / 1024
except FileNotFoundError:
    pass
print("| stage | predicted s | measured s | predicted peak MiB |")
print("|---|---:|---:|---:|")
for s in dry["stages"]:
    m = rep["seconds"].get(s["stage"]) if rep else None
    print(f"| {s['stage']} | {s['seconds']:.0f} | {m:.0f} |" if m is not None else f"| {s['stage']} | {s['seconds']:.0f} | - |", f"{s['peak_ram_mib']:.0f} |")
if rep:
    total = sum(rep["seconds"].values())
    print(f"total measured {total:.0f} s; peak RSS {rss:.0f} MiB" if rss else f"total {total:.0f} s")
    print(f"search / llama-perplexity pass = {rep['seconds']['search'] / llama:.2f}")
    st = rep.get("search_stats") or {}
    print("search stats:", st)
PY
done
