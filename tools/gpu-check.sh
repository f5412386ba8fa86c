#!/usr/bin/env bash
# GPU check of the CUDA backend, for a machine with an NVIDIA GPU.
#
#   tools/gpu-check.sh               build (when cargo is here) and run everything below
#   tools/gpu-check.sh --build-only  on a machine without a GPU: build the test binaries and copy
#                                    them with the PTX into target/gpu-check/, to carry to a GPU
#                                    machine that has no Rust toolchain
#
# Steps: install the CUDA tools (tools/install-cuda-tools.sh) unless ptxas/NVRTC are already
# present; build with UQENGINE_REQUIRE_NVRTC=1; run the kernel tests on the GPU
# (the modules tests/kernels_emu.rs, tests/emu_selftest.rs, tests/device_sampler.rs of the
# integration test binary); `ptxas -v` facts for
# sm_90 (tools/ptxas-table.sh); the kernel benchmarks (benches/kernels.rs) next to PyTorch at the
# same shapes when python3 has torch (f16, as the engine), with whole sampling runs of the demo
# and the ddpm-cifar10-32 architecture at K = 1 and K = 6 (images/s); end-to-end `sample` (with
# the extractor and files) on the demo at K = 1 and K = 6 (images/s)
# and the GPU against the CPU backend on 64 demo samples (max sample error, Spearman of the
# scores). Everything is written under $OUT (default out/gpu-check). Budget: about 8 minutes.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
OUT="${OUT:-$root/out/gpu-check}"
mkdir -p "$OUT"
pre="$root/target/gpu-check"
build_only=0
[[ "${1:-}" == "--build-only" ]] && build_only=1
status=0

log() { echo "== $*" | tee -a "$OUT/summary.txt"; }

if command -v cargo >/dev/null; then
    if ! command -v ptxas >/dev/null || [[ $build_only == 1 ]]; then
        eval "$(tools/install-cuda-tools.sh)" || { log "installing the CUDA tools failed"; exit 1; }
    fi
    export UQENGINE_REQUIRE_NVRTC=1 UQENGINE_CUDA_ARCH="${UQENGINE_CUDA_ARCH:-compute_80}"
    log "building test binaries (UQENGINE_REQUIRE_NVRTC=1, $UQENGINE_CUDA_ARCH)"
    { cargo test --release --no-run --message-format=json --test integration &&
      cargo bench --no-run --message-format=json --bench kernels &&
      cargo build --release --message-format=json; } \
        >"$pre.json" 2>"$OUT/build.log" || { log "build failed: see build.log"; tail -30 "$OUT/build.log"; exit 1; }
    rm -rf "$pre" && mkdir -p "$pre/ptx"
    python3 - "$pre.json" "$pre" <<'PY'
import json, shutil, sys, os
out = sys.argv[2]
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] in (["test"], ["bench"], ["bin"]):
        shutil.copy(m["executable"], os.path.join(out, m["target"]["name"]))
    if m.get("reason") == "build-script-executed" and m["package_id"].find("uqengine") >= 0:
        ptx = os.path.join(m["out_dir"], "ptx")
        for f in os.listdir(ptx) if os.path.isdir(ptx) else []:
            shutil.copy(os.path.join(ptx, f), os.path.join(out, "ptx", f))
PY
    strip "$pre"/integration "$pre"/kernels "$pre"/uqengine 2>/dev/null || true
    log "binaries and PTX in $pre ($(du -sh "$pre" | cut -f1))"
fi
[[ $build_only == 1 ]] && exit 0
[[ -x "$pre/integration" ]] || { log "no test binaries in $pre: run with cargo, or --build-only elsewhere and carry target/gpu-check"; exit 1; }

# Run-time NVRTC (used only when the driver rejects the embedded PTX): a pip-installed copy will do.
if [[ -z "${UQENGINE_CUDA_LIB:-}" ]]; then
    lib=$(find /usr/local /opt /usr/lib "$root/.cuda" -name 'libnvrtc.so.13' 2>/dev/null | head -1)
    [[ -n "$lib" ]] && export UQENGINE_CUDA_LIB="$(dirname "$lib")"
fi
nvidia-smi 2>&1 | head -15 >>"$OUT/summary.txt" || log "nvidia-smi failed"

for t in emu_selftest kernels_emu device_sampler; do
    log "GPU tests: $t"
    if "$pre/integration" "$t::" --test-threads=1 --nocapture >"$OUT/test_$t.txt" 2>&1; then
        grep -E "^test result" "$OUT/test_$t.txt" | tee -a "$OUT/summary.txt"
    else
        status=1
        log "$t FAILED"; grep -E "^test |panicked|mismatch" "$OUT/test_$t.txt" | head -40 | tee -a "$OUT/summary.txt"
    fi
    grep -q "skipping GPU" "$OUT/test_$t.txt" && { log "no GPU seen by the tests"; status=1; }
done

log "ptxas -v, sm_90"
tools/ptxas-table.sh --ptx "$pre/ptx" --json "$OUT/ptxas_sm90.json" 2>&1 | tee -a "$OUT/summary.txt" || status=1

log "kernel benchmarks"
UQENGINE_BENCH_JSON="$OUT/kernel_bench.json" "$pre/kernels" 2>&1 | tee "$OUT/kernel_bench.txt" | tail -60 | tee -a "$OUT/summary.txt"

log "end to end: demo, 64 samples, 50 steps"
for k in plain uq; do
    extra=(); [[ $k == plain ]] && extra=(--no-uncertainty)
    for dev in cuda cpu; do
        [[ $dev == cpu && $k == plain ]] && continue
        /usr/bin/time -f "%e s wall" "$pre/uqengine" sample --num 64 --steps 50 --device $dev "${extra[@]}" \
            --out "$OUT/demo_${k}_$dev" --overwrite 2>&1 | tail -2 | tee -a "$OUT/summary.txt"
    done
done
python3 - "$OUT" <<'PY' 2>&1 | tee -a "$OUT/summary.txt"
import json, os, sys, struct
out = sys.argv[1]
def npy(p):
    b = open(p, "rb").read(); hl = struct.unpack("<H", b[8:10])[0]
    return struct.unpack(f"<{(len(b) - 10 - hl) // 4}f", b[10 + hl:])
def scores(d):
    rows = [l.split(",") for l in open(os.path.join(d, "scores.csv")).read().split()[1:]]
    return [float(r[3]) for r in sorted(rows, key=lambda r: int(r[0]))]
def rank(v):
    o = sorted(range(len(v)), key=lambda i: v[i]); r = [0] * len(v)
    for j, i in enumerate(o): r[i] = j
    return r
g, c = os.path.join(out, "demo_uq_cuda"), os.path.join(out, "demo_uq_cpu")
for d in ("demo_plain_cuda", "demo_uq_cuda", "demo_uq_cpu"):
    s = json.load(open(os.path.join(out, d, "summary.json")))
    print(f"{d}: {64 / s['seconds_sampling']:.1f} images/s sampling, transfers {s.get('device_transfers')}")
a, b = npy(os.path.join(g, "samples.npy")), npy(os.path.join(c, "samples.npy"))
print(f"GPU vs CPU: max sample error {max(abs(x - y) for x, y in zip(a, b)):.3e}")
ra, rb = rank(scores(g)), rank(scores(c)); n = len(ra)
rho = 1 - 6 * sum((x - y) ** 2 for x, y in zip(ra, rb)) / (n * (n * n - 1))
print(f"GPU vs CPU: Spearman of the scores {rho:.4f} (n = {n})")
PY

if python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    log "PyTorch at the same shapes"
    python3 - "$OUT/torch_bench.json" <<'PY' 2>&1 | tee -a "$OUT/summary.txt"
import json, sys, torch, torch.nn.functional as F
dev, bf = "cuda", torch.float16  # the engine's activations and tensor-core type
def t(f, reps=20):
    for _ in range(3): f()
    torch.cuda.synchronize()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for a, b in ev:
        a.record(); f(); b.record()
    torch.cuda.synchronize()
    ms = sorted(a.elapsed_time(b) for a, b in ev)
    return ms[len(ms) // 2]
res = []
levels = [(96, 32, 16), (96, 16, 32), (96, 8, 64), (16, 32, 128), (16, 16, 256), (16, 8, 256), (16, 4, 256),
          (8, 128, 256), (8, 64, 256), (8, 32, 512), (8, 16, 768), (8, 8, 1024)]
for n, hw, c in levels:
    grp = 32 if c % 32 == 0 else 1
    x = torch.randn(n, c, hw, hw, device=dev, dtype=bf).to(memory_format=torch.channels_last)
    w = (torch.randn(c, c, 3, 3, device=dev, dtype=bf) * 0.02).to(memory_format=torch.channels_last)
    bias = torch.zeros(c, device=dev, dtype=bf)
    g, be = torch.ones(c, device=dev, dtype=bf), torch.zeros(c, device=dev, dtype=bf)
    fl = 2 * n * hw * hw * c * c * 9
    shape = f"n{n} {hw}x{hw} {c}->{c} 3x3"
    ms = t(lambda: F.conv2d(x, w, bias, padding=1)); res.append(dict(op="conv2d", shape=shape, ms=ms, tflops=fl / ms / 1e9))
    ms = t(lambda: F.conv2d(F.silu(F.group_norm(x, grp, g, be)), w, bias, padding=1) + x)
    res.append(dict(op="norm_conv2d_silu", shape=shape, ms=ms, tflops=fl / ms / 1e9))
    ms = t(lambda: F.silu(F.group_norm(x, grp, g, be))); res.append(dict(op="group_norm_silu", shape=f"n{n} {hw}x{hw}x{c} g{grp}", ms=ms))
x = torch.randn(16, 512, device=dev, dtype=bf); w = torch.randn(512, 512, device=dev, dtype=bf) * 0.04
ms = t(lambda: F.silu(F.linear(x, w))); res.append(dict(op="linear_silu", shape="16x512->512", ms=ms, tflops=2 * 16 * 512 * 512 / ms / 1e9))
for n, L, h, dh in [(96, 64, 2, 32), (16, 256, 1, 256), (8, 1024, 8, 64), (8, 256, 12, 64), (8, 64, 16, 64)]:
    q, k, v = (torch.randn(n, h, L, dh, device=dev, dtype=bf) for _ in range(3))
    ms = t(lambda: F.scaled_dot_product_attention(q, k, v), 10)
    res.append(dict(op="attention", shape=f"n{n} len{L} heads{h} dh{dh}", ms=ms, tflops=4 * n * h * L * L * dh / ms / 1e9))
json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, results=res), open(sys.argv[1], "w"), indent=1)
import os
ours_path = sys.argv[1].replace("torch_bench", "kernel_bench")
ours = {(r["op"], r["shape"]): r for r in json.load(open(ours_path))["results"]} if os.path.exists(ours_path) else {}
print(f"{'op':18} {'shape':28} {'ours ms':>9} {'torch ms':>9} {'torch/ours':>10}")
for r in res:
    o = ours.get((r["op"], r["shape"]))
    if o:
        print(f"{r['op']:18} {r['shape']:28} {o['ms']:9.3f} {r['ms']:9.3f} {r['ms'] / o['ms']:10.2f}")
PY
fi
log "done (status $status); files in $OUT"
exit $status
