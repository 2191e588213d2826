#!/usr/bin/env bash
# The GGUF headline comparison (docs/gguf-results.md): at the file size of
# llama.cpp's Q2_K, Q3_K_M and Q4_K_M of the demo model (made by llama-quantize
# with the imatrix of our database), how close to the f32 model is
#   - the preset itself,
#   - our knapsack allocation of ggml types at the same size, and
#   - `dynapress compress --format gguf --target-size` (EvoPress)?
# Closeness = llama-perplexity --kl-divergence against the f32 GGUF at c = 256
# on docs.test.txt and code.test.txt (calibration only ever sees *.valid.txt).
#
# Usage: scripts/gguf_comparison.sh [OUT_DIR]   (default /tmp/gguf-comparison)
# Needs: target/release/dynapress (cargo build --release) and llama.cpp's tools
# (scripts/build-llama-cpp.sh). Prints a Markdown table; logs are in OUT_DIR.
# Environment: PRESETS (default "Q2_K Q3_K_M Q4_K_M"), EMBEDS (token_embd
# types tried by our searches; default: the type the preset itself gives
# token_embd (Q2_K/Q3_K/Q4_K, so that only the linear layers' allocation
# differs), Q6_K, and `auto` (the compress default: token_embd and output
# searched with the linear layers); with a fixed embedding type output.weight
# is Q6_K, as in the presets), GENERATIONS (default: the compress default). A
# budget that an embedding type makes infeasible is reported as such and
# skipped. TYPES: the database's ggml types (default the k-quants and Q8_0;
# add IQ2_XXS,IQ2_XS,IQ2_S,IQ3_XXS,IQ3_S,IQ4_XS for the i-quant levels).
# DP: the dynapress binary (default target/release/dynapress).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-/tmp/gguf-comparison}
BIN=${DYNAPRESS_LLAMA_CPP_BIN:-$(scripts/build-llama-cpp.sh)}
DP=${DP:-target/release/dynapress}
DB_TYPES=${TYPES:-Q2_K,Q3_K,Q4_K,Q5_K,Q6_K,Q8_0}
PRESETS=${PRESETS:-"Q2_K Q3_K_M Q4_K_M"}
GEN_ARGS=()
[[ -n ${GENERATIONS:-} ]] && GEN_ARGS=(--generations "$GENERATIONS")
MODEL=assets/demo-model
CALIB=(--calib assets/data/docs.valid.txt --calib assets/data/code.valid.txt)
TESTS=(docs code)
mkdir -p "$OUT"
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

# 1. The f32 reference and the database (gptq-kquant; its imatrix.gguf is the
#    one the presets are quantized with).
[[ -f $OUT/f32.gguf ]] || $DP convert --model $MODEL --type F32 --out "$OUT/f32.gguf" >/dev/null
if [[ ! -f $OUT/db/manifest.json ]]; then
    log "database"
    $DP database --model $MODEL "${CALIB[@]}" --method gptq-kquant \
        --types "$DB_TYPES" --out "$OUT/db" --quiet >/dev/null
fi
for t in "${TESTS[@]}"; do
    [[ -f $OUT/base-$t.kld ]] || "$BIN/llama-perplexity" -m "$OUT/f32.gguf" \
        -f assets/data/$t.test.txt -c 256 -t 2 --kl-divergence-base "$OUT/base-$t.kld" \
        >"$OUT/base-$t.log" 2>&1
done

# Mean KLD and same-top-p of a GGUF file against the f32 base on one test file.
kld() {
    local f=$1 t=$2 log
    log=${f#"$OUT"/}
    log=$OUT/${log//\//-}
    log=${log%.gguf}.$t.kld.log
    # llama.cpp's logger is asynchronous and not flushed at exit (llama.cpp
    # issue #22142): a run whose output lost its last lines is repeated.
    local i
    for i in 1 2 3 4 5; do
        grep -q '^Same top p:' "$log" 2>/dev/null && break
        "$BIN/llama-perplexity" -m "$f" -c 256 -t 2 --kl-divergence-base "$OUT/base-$t.kld" \
            --kl-divergence >"$log.tmp" 2>&1
        mv "$log.tmp" "$log"
    done
    awk '/^Mean +KLD:/ {k=$3} /^Same top p:/ {p=$4} END {printf "%s %s", k, p}' "$log"
}
size() { stat -c %s "$1"; }

printf '| budget | model | bytes | docs KLD | docs same top | code KLD | code same top |\n'
printf '|---|---|---|---|---|---|---|\n'
row() {
    local budget=$1 name=$2 f=$3 cells="" k p
    for t in "${TESTS[@]}"; do
        read -r k p <<<"$(kld "$f" "$t")"
        cells+=" $k | $p |"
    done
    printf '| %s | %s | %s |%s\n' "$budget" "$name" "$(size "$f")" "$cells"
}

for preset in $PRESETS; do
    pf=$OUT/preset-$preset.gguf
    [[ -f $pf ]] || "$BIN/llama-quantize" --imatrix "$OUT/db/imatrix.gguf" "$OUT/f32.gguf" "$pf" \
        "$preset" 2 >"$OUT/preset-$preset.log" 2>&1
    bytes=$(size "$pf")
    row "$preset" "llama.cpp $preset" "$pf"
    embeds=${EMBEDS:-"${preset%%_[SML]} Q6_K auto"}
    for emb in $embeds; do
        if [[ $emb == auto ]]; then
            types=(--embed-type auto --output-type auto)
            what="embed and output searched"
        else
            types=(--embed-type "$emb" --output-type Q6_K)
            what="embed $emb"
            # Knapsack at the same size (it cannot weigh the embedding's type
            # against the layers': only with fixed types).
            kf=$OUT/knapsack-$preset-$emb.gguf
            if [[ ! -f $kf ]]; then
                if ! $DP search --model $MODEL --db "$OUT/db" --target-size "$bytes" --algo knapsack \
                    "${types[@]}" --out "$OUT/knapsack-$preset-$emb.json" --quiet \
                    2>"$OUT/knapsack-$preset-$emb.err"; then
                    printf '| %s | embed %s: infeasible (%s) | | | | | |\n' "$preset" "$emb" \
                        "$(head -1 "$OUT/knapsack-$preset-$emb.err")"
                    continue
                fi
                $DP export --model $MODEL --db "$OUT/db" --config "$OUT/knapsack-$preset-$emb.json" \
                    --format gguf "${types[@]}" --out "$kf" --force >/dev/null
            fi
            row "$preset" "dynapress knapsack, $what" "$kf"
        fi
        # EvoPress (the compress defaults).
        ef=$OUT/evopress-$preset-$emb/model.gguf
        if [[ ! -f $ef ]]; then
            log "compress $preset $what"
            $DP compress --model $MODEL "${CALIB[@]}" --eval assets/data/docs.test.txt \
                --format gguf --target-size "$bytes" "${types[@]}" --db "$OUT/db" --types "$DB_TYPES" \
                --no-compare "${GEN_ARGS[@]}" --out "$OUT/evopress-$preset-$emb" --quiet \
                >"$OUT/evopress-$preset-$emb.log" 2>&1
        fi
        chosen=$(python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); print(" → %s/%s" % (c.get("embed_type","-"), c.get("output_type","-")) if "embed_type" in c else "")' \
            "$OUT/evopress-$preset-$emb/config.json")
        row "$preset" "dynapress compress (EvoPress), $what$chosen" "$ef"
    done
done
