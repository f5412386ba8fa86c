#!/usr/bin/env bash
# Resource usage of every kernel on Hopper: assembles the PTX that the build script wrote
# ($OUT_DIR/ptx/*.ptx, newest build under target/, or the folder given with --ptx) with
# `ptxas -v -arch=sm_90` and prints one line per kernel: registers, static shared memory, stack,
# spill stores and loads. With --json FILE also writes the table as JSON.
#
# usage: tools/ptxas-table.sh [INSTALL_DIR] [--arch sm_90] [--ptx DIR] [--json FILE]
# INSTALL_DIR: where tools/install-cuda-tools.sh put the CUDA tools (default .cuda); ptxas is
# taken from there, else from $UQENGINE_PTXAS, else from PATH.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
install="$root/.cuda"
arch=sm_90
ptx_dir=""
json=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --arch) arch="$2"; shift 2 ;;
        --ptx) ptx_dir="$2"; shift 2 ;;
        --json) json="$2"; shift 2 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) install="$1"; shift ;;
    esac
done

ptxas=""
for p in "$install/nvidia/cu13/bin/ptxas" "${UQENGINE_PTXAS:-}" "$(command -v ptxas || true)" /usr/local/cuda/bin/ptxas; do
    if [[ -n "$p" && -x "$p" ]]; then ptxas="$p"; break; fi
done
[[ -n "$ptxas" ]] || { echo "ptxas-table: no ptxas (run tools/install-cuda-tools.sh)" >&2; exit 1; }

if [[ -z "$ptx_dir" ]]; then
    newest=$(find "$root/target" -path '*/out/ptx/*.ptx' -printf '%T@ %h\n' 2>/dev/null | sort -nr | head -1 | cut -d' ' -f2-)
    [[ -n "$newest" ]] || { echo "ptxas-table: no PTX under target/ (build with NVRTC available first)" >&2; exit 1; }
    ptx_dir="$newest"
fi
echo "# ptxas: $ptxas; PTX: $ptx_dir; arch: $arch" >&2

rows=$(for f in "$ptx_dir"/*.ptx; do
    "$ptxas" -v -arch="$arch" "$f" -o /dev/null 2>&1 | awk -v mod="$(basename "$f" .ptx)" '
        /Compiling entry function/ { match($0, /'"'"'[^'"'"']+'"'"'/); k = substr($0, RSTART + 1, RLENGTH - 2); stack = st = ld = 0 }
        /bytes stack frame/ { stack = $1; st = $5; ld = $9 }
        /Used [0-9]+ registers/ {
            regs = 0; smem = 0
            for (i = 1; i <= NF; i++) { if ($(i + 1) == "registers,") regs = $i; if ($(i + 1) == "bytes" && $(i + 2) ~ /^smem/) smem = $i }
            printf "%s %s %s %s %s %s %s\n", mod, k, regs, smem, stack, st, ld
        }'
done)

printf "%-12s %-26s %5s %10s %7s %12s %11s\n" module kernel regs smem_bytes stack spill_stores spill_loads
echo "$rows" | while read -r mod k regs smem stack st ld; do
    printf "%-12s %-26s %5s %10s %7s %12s %11s\n" "$mod" "$k" "$regs" "$smem" "$stack" "$st" "$ld"
done

if [[ -n "$json" ]]; then
    {
        echo "{\"arch\": \"$arch\", \"kernels\": ["
        echo "$rows" | awk 'BEGIN { first = 1 } NF == 7 {
            if (!first) printf ",\n"; first = 0
            printf "  {\"module\": \"%s\", \"kernel\": \"%s\", \"registers\": %s, \"smem_bytes\": %s, \"stack_bytes\": %s, \"spill_store_bytes\": %s, \"spill_load_bytes\": %s}", $1, $2, $3, $4, $5, $6, $7 }'
        printf "\n]}\n"
    } >"$json"
    echo "# wrote $json" >&2
fi
