#!/usr/bin/env bash
# Lossless packing benchmark: dynapress-pack vs zstd -3/-19 vs ZipNN on the
# fixture's model.safetensors and on a 268 MB synthetic bf16 model with the
# fixture's per-tensor statistics. Prints a markdown table (see
# docs/lossless.md for the recorded results and the method).
#
# Needs: cargo; a Python with `zstandard` and `zipnn` installed, given as
# $PYTHON (default: python3), e.g.
#   python3 -m venv /tmp/venv-pack && /tmp/venv-pack/bin/pip install zstandard zipnn
#   PYTHON=/tmp/venv-pack/bin/python scripts/bench_pack.sh
# Environment: REPS (runs per measurement, default 3), ROUNDS (interleaved
# passes over all tools, best time kept, default 3), THREADS (default 1,2),
# WORK (default /tmp/dynapress-bench), CARGO_TARGET_DIR (default target).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
REPS=${REPS:-3}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-1,2}
WORK=${WORK:-/tmp/dynapress-bench}
TARGET=${CARGO_TARGET_DIR:-target}
mkdir -p "$WORK"

cargo build --release -p dynapress-pack --example bench >&2
BENCH="$TARGET/release/examples/bench"
FIXTURE=assets/demo-model/model.safetensors
SYNTH="$WORK/synth-bf16.safetensors"
if [ ! -f "$SYNTH" ]; then
    "$BENCH" synth "$FIXTURE" "$SYNTH" --scale 4 --seed 1 >&2
fi

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$PYTHON" scripts/bench_pack.py --bench-bin "$BENCH" --reps "$REPS" --rounds "$ROUNDS" --threads "$THREADS" "$FIXTURE" "$SYNTH"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
