#!/usr/bin/env bash
# Install the CUDA compiler pieces uqengine's build uses (NVRTC, the runtime headers, ptxas) from
# the Python package index into DIR (default: .cuda in the repository root). Idempotent: a second
# run with everything present installs nothing. Prints the environment lines to use them.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-$root/.cuda}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

pkgs=(nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvcc==13.0.88)
stamp="$dir/.installed"
want="${pkgs[*]}"

if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
        --target "$dir" "${pkgs[@]}"
    echo "$want" >"$stamp"
fi

cu="$dir/nvidia/cu13"
lib="$cu/lib"
inc="$cu/include"
ptxas="$cu/bin/ptxas"

missing=0
for f in "$lib/libnvrtc.so.13" "$inc/cuda_fp16.h" "$inc/cuda_bf16.h"; do
    [[ -e "$f" ]] || { echo "install-cuda-tools: missing $f" >&2; missing=1; }
done
ls "$lib"/libnvrtc-builtins.so* >/dev/null 2>&1 || { echo "install-cuda-tools: missing libnvrtc-builtins in $lib" >&2; missing=1; }
[[ -x "$ptxas" ]] || { echo "install-cuda-tools: missing $ptxas" >&2; missing=1; }
[[ $missing == 0 ]] || exit 1

cat <<ENV
export LD_LIBRARY_PATH="$lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export UQENGINE_CUDA_INCLUDE="$inc"
export UQENGINE_PTXAS="$ptxas"
ENV
