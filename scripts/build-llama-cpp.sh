#!/usr/bin/env bash
# Builds llama.cpp's command-line tools that dynapress uses as a referee for its
# GGUF and imatrix files: llama-quantize, llama-perplexity, llama-imatrix and
# llama-tokenize (CPU only, Release, static, no HTTPS, no server).
#
# The sources are the llama.cpp tree vendored in the llama-cpp-python 0.3.36
# sdist from PyPI (`vendor/llama.cpp`), so the version is pinned by the sdist's
# SHA-256 below.
#
# Usage: scripts/build-llama-cpp.sh            build if missing, print the bin dir
#        scripts/build-llama-cpp.sh --print-dir print the bin dir only (no build)
#
# Environment:
#   DYNAPRESS_LLAMA_CPP_DIR  cache directory (default
#                            ${DYNAPRESS_CACHE:-$HOME/.cache/dynapress}/llama.cpp-0.3.36)
#   PYTHON                   python with pip used to fetch the sdist (default python3)
#   JOBS                     parallel compile jobs (default 2)
#
# Idempotent: a finished build leaves `bin/.complete`; later runs only print the
# bin dir. An interrupted run resumes (the sdist and cmake's build dir are kept).
#
# cmake: installed from Debian with apt-get when missing. That needs root (CI
# runs as root); otherwise it uses sudo if present, else stops and says so.
#
# Instruction set: GGML_NATIVE=OFF. ggml then enables its portable x86-64-v3
# level (SSE4.2, AVX, AVX2, FMA, F16C, BMI2) instead of `-march=native`, so a
# cache directory restored onto a different (AVX2-capable) CI runner still
# works. The referee runs only on tiny models, where AVX-512 would not matter.
set -euo pipefail

VERSION=0.3.36
SDIST=llama_cpp_python-${VERSION}.tar.gz
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
TARGETS=(llama-quantize llama-perplexity llama-imatrix llama-tokenize)

CACHE_ROOT=${DYNAPRESS_CACHE:-$HOME/.cache/dynapress}
DIR=${DYNAPRESS_LLAMA_CPP_DIR:-$CACHE_ROOT/llama.cpp-$VERSION}
BIN=$DIR/bin
PYTHON=${PYTHON:-python3}
JOBS=${JOBS:-2}

log() { printf 'build-llama-cpp: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [[ ${1:-} == --print-dir ]]; then
    echo "$BIN"
    exit 0
elif [[ $# -gt 0 ]]; then
    die "unknown argument '$1' (usage: $0 [--print-dir])"
fi

if [[ -f $BIN/.complete ]]; then
    ok=1
    for t in "${TARGETS[@]}"; do [[ -x $BIN/$t ]] || ok=0; done
    if [[ $ok == 1 ]]; then
        log "already built"
        echo "$BIN"
        exit 0
    fi
    log "incomplete bin dir, rebuilding"
    rm -f "$BIN/.complete"
fi

start=$(date +%s)
mkdir -p "$DIR"

# 1. cmake (Debian package).
if ! command -v cmake >/dev/null 2>&1; then
    if [[ $(id -u) == 0 ]]; then
        SUDO=()
    elif command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        die "cmake is missing and installing it needs root: run 'apt-get install -y cmake' as root"
    fi
    log "installing cmake with apt-get"
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq cmake >/dev/null
fi
command -v c++ >/dev/null 2>&1 || die "no C++ compiler (install g++)"

# 2. The sdist. `--no-binary llama-cpp-python` (not `:all:`): pip prepares the
# sdist's metadata in an isolated build env, and `:all:` would make it compile
# that env's cmake and ninja from source (many minutes); wheels are fine there.
if [[ ! -f $DIR/$SDIST ]]; then
    log "downloading $SDIST from PyPI"
    tmp=$(mktemp -d "$DIR/.download.XXXXXX")
    "$PYTHON" -m pip download --quiet --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$VERSION" -d "$tmp" || { rm -rf "$tmp"; die "pip download failed"; }
    mv "$tmp/$SDIST" "$DIR/$SDIST"
    rm -rf "$tmp"
fi
echo "$SDIST_SHA256  $DIR/$SDIST" | sha256sum --check --quiet - \
    || die "$DIR/$SDIST does not have the pinned SHA-256; delete it and re-run"

# 3. Sources.
SRC=$DIR/src/llama_cpp_python-$VERSION/vendor/llama.cpp
if [[ ! -f $SRC/CMakeLists.txt ]]; then
    log "extracting"
    rm -rf "$DIR/src"
    mkdir -p "$DIR/src"
    tar -xzf "$DIR/$SDIST" -C "$DIR/src"
    [[ -f $SRC/CMakeLists.txt ]] || die "no vendor/llama.cpp in $SDIST"
fi

# 4. Configure and build only the tools we need.
log "configuring"
cmake -S "$SRC" -B "$DIR/build" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=OFF \
    -DGGML_CCACHE=OFF \
    -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_TOOLS=ON >"$DIR/configure.log" 2>&1 \
    || { tail -30 "$DIR/configure.log" >&2; die "cmake configure failed (log: $DIR/configure.log)"; }

log "building ${TARGETS[*]} with $JOBS jobs"
cmake --build "$DIR/build" --config Release -j "$JOBS" --target "${TARGETS[@]}" >"$DIR/build.log" 2>&1 \
    || { tail -30 "$DIR/build.log" >&2; die "build failed (log: $DIR/build.log)"; }

mkdir -p "$BIN"
for t in "${TARGETS[@]}"; do
    f=$DIR/build/bin/$t
    [[ -x $f ]] || die "build finished but $f is missing"
    cp -f "$f" "$BIN/$t"
done
touch "$BIN/.complete"
log "done in $(($(date +%s) - start)) s"
echo "$BIN"
