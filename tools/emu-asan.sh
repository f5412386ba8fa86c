#!/usr/bin/env bash
# Build the emulated kernels once more as a shared library with AddressSanitizer, from the
# sources the build script generated for the last `--features emu` build (OUT_DIR/emu/*.cpp:
# every kernel with its host launch wrapper). Prints the library's path. Use it with the built
# tests, no rebuild of the crate:
#
#   lib=$(bash tools/emu-asan.sh)
#   UQENGINE_EMU_LIB=$lib \
#   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="env LD_PRELOAD=$(g++ -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0" \
#     cargo test --release --features emu --test integration -- kernels_emu:: device_sampler::
#
# Options: --target-dir DIR (default target/release), --out DIR (default target/emu-asan).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="$root/target/release"
out="$root/target/emu-asan"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --target-dir) target="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        *) echo "emu-asan.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
# The newest generated sources (a target folder can hold builds with other settings).
src=$(ls -td "$target"/build/uqengine-*/out/emu 2>/dev/null | head -1 || true)
if [[ -z "$src" || ! -f "$src/uq_emu_support.cpp" ]]; then
    echo "emu-asan.sh: no generated emulator sources under $target/build/uqengine-*/out/emu;" \
         "build with --features emu first" >&2
    exit 1
fi
mkdir -p "$out/obj"
rm -f "$out"/obj/*.o
# The flags of build/emu.rs, plus ASan and position-independent code.
flags=(-std=c++20 -O2 -DUQ_EMU=1 -I"$root/kernels" -fno-strict-aliasing -w -fPIC
       -fsanitize=address -fno-omit-frame-pointer)
jobs=$(nproc 2>/dev/null || echo 2)
printf '%s\n' "$src"/*.cpp | xargs -P "$jobs" -I{} sh -c \
    'f="$1"; shift; exec g++ "$@" -c "$f" -o "'"$out"'/obj/$(basename "$f" .cpp).o"' _ {} "${flags[@]}"
tmp="$out/libuqengine_emu_asan.so.tmp"
g++ -shared -fsanitize=address "$out"/obj/*.o -o "$tmp"
mv "$tmp" "$out/libuqengine_emu_asan.so"
echo "$out/libuqengine_emu_asan.so"
