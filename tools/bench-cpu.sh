#!/usr/bin/env bash
# CPU speed of one UNet forward, uqengine against PyTorch, same architecture, batch and machine,
# in the same run. Prints both and the ratio (PyTorch time / uqengine time: > 1 means uqengine
# is faster) per case, and writes target/bench/cpu_forward.json.
#   - the diffusers config (default ddpm-cifar10-32) at batch 1 and 16 (or the --batch given),
#     against diffusers (tools/bench_torch_unet.py);
#   - with --adm: the guided-diffusion (ADM) architectures of tools/adm_64_flags.txt and
#     tools/adm_128_flags.txt at batch 1, against guided-diffusion's own UNetModel
#     (tools/bench_torch_adm.py), both with random float32 weights.
# PYTHON selects the interpreter with torch, diffusers and guided_diffusion (default:
# tools/.venv/bin/python when it exists, else python3).
#   tools/bench-cpu.sh [--batch 16] [--iters 5] [--config tools/ddpm_cifar10_32_config.json]
#                      [--adm] [--adm-only] [--adm-iters 3]
set -euo pipefail
cd "$(dirname "$0")/.."
batches="1 16" iters=5 config=tools/ddpm_cifar10_32_config.json adm=0 diffusers=1 adm_iters=3
while [[ $# -gt 0 ]]; do
  case "$1" in
    --batch) batches=$2; shift 2 ;;
    --iters) iters=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --adm) adm=1; shift ;;
    --adm-only) adm=1; diffusers=0; shift ;;
    --adm-iters) adm_iters=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
py=${PYTHON:-python3}
[[ -z "${PYTHON:-}" && -x tools/.venv/bin/python ]] && py=tools/.venv/bin/python
mkdir -p target/bench
threads=$(nproc)
cases=()
if [[ $diffusers == 1 ]]; then
  for batch in $batches; do
    name="b$batch"
    cargo bench --bench cpu_forward -- --config "$config" --batch "$batch" --iters "$iters" --json "target/bench/uqengine_$name.json"
    "$py" tools/bench_torch_unet.py --config "$config" --batch "$batch" --iters "$iters" --threads "$threads" --json "target/bench/torch_$name.json"
    cases+=("$name")
  done
fi
if [[ $adm == 1 ]]; then
  for res in 64 128; do
    name="adm${res}_b1"
    flags="tools/adm_${res}_flags.txt"
    cargo bench --bench cpu_forward -- --adm-flags "$flags" --batch 1 --iters "$adm_iters" --json "target/bench/uqengine_$name.json"
    "$py" tools/bench_torch_adm.py --flags-file "$flags" --batch 1 --iters "$adm_iters" --threads "$threads" --json "target/bench/torch_$name.json"
    cases+=("$name")
  done
fi
"$py" - "${cases[@]}" <<'PY'
import json, sys
out = {}
for name in sys.argv[1:]:
    u = json.load(open(f"target/bench/uqengine_{name}.json"))
    t = json.load(open(f"target/bench/torch_{name}.json"))
    tu = u["ms_per_forward_median"]
    tt = t.get("ms_per_forward_median", t.get("ms_per_forward"))
    print(f"{name} ({u['config']}): uqengine {tu:.1f} ms/forward ({u['ms_per_image']:.2f} ms/image), "
          f"PyTorch {tt:.1f} ms/forward ({tt / u['batch']:.2f} ms/image), {u['threads']} threads; "
          f"ratio PyTorch/uqengine = {tt / tu:.2f}  (> 1: uqengine faster)")
    out[name] = {"uqengine": u, "torch": t, "ratio_torch_over_uqengine": tt / tu}
json.dump(out, open("target/bench/cpu_forward.json", "w"), indent=2)
PY
