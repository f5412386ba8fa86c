#!/usr/bin/env bash
# CPU speed of one UNet forward, uqengine against PyTorch (diffusers), same config, batch and
# machine, in the same run, at batch 1 and 16 (or the --batch given). Prints both and the ratio
# (PyTorch time / uqengine time: > 1 means uqengine is faster) per batch, and writes
# target/bench/cpu_forward.json. PYTHON selects the interpreter with torch and diffusers
# (default: tools/.venv/bin/python when it exists, else python3).
#   tools/bench-cpu.sh [--batch 16] [--iters 5] [--config tools/ddpm_cifar10_32_config.json]
set -euo pipefail
cd "$(dirname "$0")/.."
batches="1 16" iters=5 config=tools/ddpm_cifar10_32_config.json
while [[ $# -gt 0 ]]; do
  case "$1" in
    --batch) batches=$2; shift 2 ;;
    --iters) iters=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
py=${PYTHON:-python3}
[[ -z "${PYTHON:-}" && -x tools/.venv/bin/python ]] && py=tools/.venv/bin/python
mkdir -p target/bench
threads=$(nproc)
for batch in $batches; do
  cargo bench --bench cpu_forward -- --config "$config" --batch "$batch" --iters "$iters" --json "target/bench/uqengine_b$batch.json"
  "$py" tools/bench_torch_unet.py --config "$config" --batch "$batch" --iters "$iters" --threads "$threads" --json "target/bench/torch_b$batch.json"
done
"$py" - $batches <<'PY'
import json, sys
out = {}
for b in sys.argv[1:]:
    u = json.load(open(f"target/bench/uqengine_b{b}.json"))
    t = json.load(open(f"target/bench/torch_b{b}.json"))
    tu, tt = u["ms_per_forward_median"], t["ms_per_forward_median"]
    print(f"batch {b}: uqengine {tu:.1f} ms/forward ({u['ms_per_image']:.2f} ms/image), PyTorch "
          f"{tt:.1f} ms/forward ({tt / u['batch']:.2f} ms/image), {u['threads']} threads; "
          f"ratio PyTorch/uqengine = {tt / tu:.2f}  (> 1: uqengine faster)")
    out[b] = {"uqengine": u, "torch": t, "ratio_torch_over_uqengine": tt / tu}
json.dump(out, open("target/bench/cpu_forward.json", "w"), indent=2)
PY
