#!/usr/bin/env bash
# CPU speed of one UNet forward, uqengine against PyTorch, same architecture, batch and machine,
# in the same run. Prints both and the ratio (PyTorch time / uqengine time: > 1 means uqengine
# is faster) per case, and writes target/bench/cpu_forward.json.
#   - the diffusers config (default ddpm-cifar10-32) at batch 1 and 16 (or the --batch given),
#     against diffusers (tools/bench_torch_unet.py);
#   - with --adm: the guided-diffusion (ADM) architectures of tools/adm_64_flags.txt and
#     tools/adm_128_flags.txt at batch 1, against guided-diffusion's own UNetModel
#     (tools/bench_torch_adm.py), both with random float32 weights.
# Each case runs in --rounds rounds (default 3), uqengine then PyTorch in every round, so both
# see the same load of a shared machine; the ratio is that of the medians over the rounds'
# medians, and each round's own ratio is printed next to it.
# PYTHON selects the interpreter with torch, diffusers and guided_diffusion (default:
# tools/.venv/bin/python when it exists, else python3).
#   tools/bench-cpu.sh [--batch 16] [--iters 5] [--rounds 3]
#                      [--config tools/ddpm_cifar10_32_config.json]
#                      [--adm] [--adm-only] [--adm-iters 3]
set -euo pipefail
cd "$(dirname "$0")/.."
batches="1 16" iters=5 rounds=3 config=tools/ddpm_cifar10_32_config.json adm=0 diffusers=1 adm_iters=3
while [[ $# -gt 0 ]]; do
  case "$1" in
    --batch) batches=$2; shift 2 ;;
    --iters) iters=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
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
    for r in $(seq "$rounds"); do
      cargo bench --bench cpu_forward -- --config "$config" --batch "$batch" --iters "$iters" --json "target/bench/uqengine_${name}_r$r.json"
      "$py" tools/bench_torch_unet.py --config "$config" --batch "$batch" --iters "$iters" --threads "$threads" --json "target/bench/torch_${name}_r$r.json"
    done
    cases+=("$name")
  done
fi
if [[ $adm == 1 ]]; then
  for res in 64 128; do
    name="adm${res}_b1"
    flags="tools/adm_${res}_flags.txt"
    for r in $(seq "$rounds"); do
      cargo bench --bench cpu_forward -- --adm-flags "$flags" --batch 1 --iters "$adm_iters" --json "target/bench/uqengine_${name}_r$r.json"
      "$py" tools/bench_torch_adm.py --flags-file "$flags" --batch 1 --iters "$adm_iters" --threads "$threads" --json "target/bench/torch_${name}_r$r.json"
    done
    cases+=("$name")
  done
fi
"$py" - "$rounds" "${cases[@]}" <<'PY'
import json, statistics, sys
rounds = int(sys.argv[1])
out = {}
for name in sys.argv[2:]:
    us = [json.load(open(f"target/bench/uqengine_{name}_r{r}.json")) for r in range(1, rounds + 1)]
    ts = [json.load(open(f"target/bench/torch_{name}_r{r}.json")) for r in range(1, rounds + 1)]
    tu_r = [u["ms_per_forward_median"] for u in us]
    tt_r = [t.get("ms_per_forward_median", t.get("ms_per_forward")) for t in ts]
    tu, tt = statistics.median(tu_r), statistics.median(tt_r)
    u, batch = us[0], us[0]["batch"]
    per_round = ", ".join(f"{b / a:.2f}" for a, b in zip(tu_r, tt_r))
    print(f"{name} ({u['config']}): uqengine {tu:.1f} ms/forward ({tu / batch:.2f} ms/image), "
          f"PyTorch {tt:.1f} ms/forward ({tt / batch:.2f} ms/image), {u['threads']} threads, "
          f"{rounds} rounds; ratio PyTorch/uqengine = {tt / tu:.2f} (rounds: {per_round})  "
          f"(> 1: uqengine faster)")
    out[name] = {"uqengine": us, "torch": ts, "uqengine_ms_median": tu, "torch_ms_median": tt,
                 "ratio_torch_over_uqengine": tt / tu,
                 "ratio_per_round": [b / a for a, b in zip(tu_r, tt_r)]}
json.dump(out, open("target/bench/cpu_forward.json", "w"), indent=2)
PY
