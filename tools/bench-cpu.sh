#!/usr/bin/env bash
# CPU speed of one UNet forward, uqengine against PyTorch (diffusers), same config, batch and
# machine, in the same run. Prints both and the ratio (PyTorch time / uqengine time: > 1 means
# uqengine is faster).
#   tools/bench-cpu.sh [--batch 16] [--iters 5] [--config tools/ddpm_cifar10_32_config.json]
set -euo pipefail
cd "$(dirname "$0")/.."
batch=16 iters=5 config=tools/ddpm_cifar10_32_config.json
while [[ $# -gt 0 ]]; do
  case "$1" in
    --batch) batch=$2; shift 2 ;;
    --iters) iters=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
mkdir -p target/bench
threads=$(nproc)
cargo bench --bench cpu_forward -- --config "$config" --batch "$batch" --iters "$iters" --json target/bench/uqengine.json
python3 tools/bench_torch_unet.py --config "$config" --batch "$batch" --iters "$iters" --threads "$threads" --json target/bench/torch.json
python3 - <<'PY'
import json
u = json.load(open("target/bench/uqengine.json"))
t = json.load(open("target/bench/torch.json"))
tu, tt = u["ms_per_forward_median"], t["ms_per_forward_median"]
print(f"uqengine {tu:.1f} ms/forward ({u['ms_per_image']:.2f} ms/image), PyTorch {tt:.1f} ms/forward "
      f"({tt / u['batch']:.2f} ms/image), batch {u['batch']}, {u['threads']} threads")
print(f"ratio PyTorch/uqengine = {tt / tu:.2f}  (> 1: uqengine faster)")
json.dump({"uqengine": u, "torch": t, "ratio_torch_over_uqengine": tt / tu}, open("target/bench/cpu_forward.json", "w"), indent=2)
PY
