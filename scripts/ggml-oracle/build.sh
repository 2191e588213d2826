#!/usr/bin/env bash
# Builds ggml-oracle: our small C front end (ggml_oracle.c) linked against ggml's
# own quantization code (ggml.c + ggml-quants.c) from the llama.cpp tree vendored
# in the llama-cpp-python 0.3.36 sdist. dynapress-ggml's tests compare their
# bytes with it (see docs/ggml-quants.md).
#
# Usage: scripts/ggml-oracle/build.sh              build if missing or stale, print the binary's path
#        scripts/ggml-oracle/build.sh --print-path  print the path only (no build)
#
# Environment:
#   DYNAPRESS_CACHE             cache root (default $HOME/.cache/dynapress)
#   DYNAPRESS_GGML_ORACLE_DIR   oracle directory (default $DYNAPRESS_CACHE/ggml-oracle-0.3.36)
#   PYTHON                      python with pip, to fetch the sdist (default python3)
#   CC                          C compiler (default gcc)
#
# The sdist is reused from scripts/build-llama-cpp.sh's cache when present
# (same pinned SHA-256), else downloaded with pip into the oracle directory.
#
# Compiler flags are those ggml's CMake gives the ggml-base library in a Release
# build (-O3 -DNDEBUG -std=gnu11 -D_GNU_SOURCE -D_XOPEN_SOURCE=600, no -march):
# ggml-quants.c is part of ggml-base, so llama-quantize runs this code compiled
# for baseline x86-64, where gcc cannot contract a*b+c into FMA. We add
# -ffp-contract=off so that the oracle keeps those semantics on any host.
#
# Idempotent: the build is keyed by a hash of our sources and flags.
set -euo pipefail

VERSION=0.3.36
SDIST=llama_cpp_python-${VERSION}.tar.gz
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
GGML_VERSION=0.25.3

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE_ROOT=${DYNAPRESS_CACHE:-$HOME/.cache/dynapress}
DIR=${DYNAPRESS_GGML_ORACLE_DIR:-$CACHE_ROOT/ggml-oracle-$VERSION}
BIN=$DIR/bin/ggml-oracle
PYTHON=${PYTHON:-python3}
CC=${CC:-gcc}
CFLAGS=(-O3 -DNDEBUG -std=gnu11 -D_GNU_SOURCE -D_XOPEN_SOURCE=600 -ffp-contract=off)

log() { printf 'ggml-oracle build: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [[ ${1:-} == --print-path ]]; then
    echo "$BIN"
    exit 0
elif [[ $# -gt 0 ]]; then
    die "unknown argument '$1' (usage: $0 [--print-path])"
fi

command -v "$CC" >/dev/null 2>&1 || die "no C compiler '$CC' (install gcc)"
KEY=$(cat "$HERE/ggml_oracle.c" "$HERE/stubs.c" "$HERE/build.sh" | sha256sum | cut -c1-16)-$("$CC" -dumpfullversion 2>/dev/null || "$CC" -dumpversion)
if [[ -x $BIN && -f $DIR/bin/.key && $(cat "$DIR/bin/.key") == "$KEY" ]]; then
    log "up to date"
    echo "$BIN"
    exit 0
fi
mkdir -p "$DIR"

# 1. The sdist: the llama.cpp build's copy, ours, or a fresh download.
TARBALL=
for cand in "$CACHE_ROOT/llama.cpp-$VERSION/$SDIST" "$DIR/$SDIST"; do
    if [[ -f $cand ]] && echo "$SDIST_SHA256  $cand" | sha256sum --check --quiet - 2>/dev/null; then
        TARBALL=$cand
        break
    fi
done
if [[ -z $TARBALL ]]; then
    log "downloading $SDIST from PyPI"
    tmp=$(mktemp -d "$DIR/.download.XXXXXX")
    # --no-binary for this package only: pip still prepares the sdist's metadata
    # in an isolated env, where wheels of its build tools are fine (':all:' would
    # compile cmake from source).
    "$PYTHON" -m pip download --quiet --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$VERSION" -d "$tmp" || { rm -rf "$tmp"; die "pip download failed"; }
    mv "$tmp/$SDIST" "$DIR/$SDIST"
    rm -rf "$tmp"
    TARBALL=$DIR/$SDIST
    echo "$SDIST_SHA256  $TARBALL" | sha256sum --check --quiet - \
        || die "$TARBALL does not have the pinned SHA-256; delete it and re-run"
fi

# 2. Only ggml's sources are needed.
GGML=$DIR/src/llama_cpp_python-$VERSION/vendor/llama.cpp/ggml
if [[ ! -f $GGML/src/ggml-quants.c ]]; then
    log "extracting ggml from $TARBALL"
    rm -rf "$DIR/src"
    mkdir -p "$DIR/src"
    tar -xzf "$TARBALL" -C "$DIR/src" --wildcards "llama_cpp_python-$VERSION/vendor/llama.cpp/ggml/*"
    [[ -f $GGML/src/ggml-quants.c ]] || die "no vendor/llama.cpp/ggml in $TARBALL"
fi

# 3. Compile. ggml-version.h is what ggml's CMake would configure.
OBJ=$DIR/obj
rm -rf "$OBJ"
mkdir -p "$OBJ" "$DIR/bin"
printf '#pragma once\n#define GGML_VERSION "%s"\n#define GGML_COMMIT "llama-cpp-python-%s"\n' \
    "$GGML_VERSION" "$VERSION" >"$OBJ/ggml-version.h"
INC=(-I"$OBJ" -I"$GGML/include" -I"$GGML/src")
log "compiling ggml.c, ggml-quants.c and the front end with $CC ${CFLAGS[*]}"
"$CC" "${CFLAGS[@]}" "${INC[@]}" -c "$GGML/src/ggml.c" -o "$OBJ/ggml.o"
"$CC" "${CFLAGS[@]}" "${INC[@]}" -c "$GGML/src/ggml-quants.c" -o "$OBJ/ggml-quants.o"
"$CC" "${CFLAGS[@]}" "${INC[@]}" -Wall -Wextra -c "$HERE/stubs.c" -o "$OBJ/stubs.o"
"$CC" "${CFLAGS[@]}" "${INC[@]}" -Wall -Wextra -c "$HERE/ggml_oracle.c" -o "$OBJ/ggml_oracle.o"
"$CC" -o "$BIN.tmp" "$OBJ/ggml_oracle.o" "$OBJ/stubs.o" "$OBJ/ggml.o" "$OBJ/ggml-quants.o" -lm -lpthread
mv -f "$BIN.tmp" "$BIN"
echo "$KEY" >"$DIR/bin/.key"
log "built $BIN"
echo "$BIN"
