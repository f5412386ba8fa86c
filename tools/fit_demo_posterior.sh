#!/usr/bin/env bash
# Fit the demo model's last-layer Laplace posterior (assets/demo/posterior.safetensors).
#
# 1. Writes the MNIST train split as 32x32 PNGs, data/mnist/train_png32/<label>/<i>.png
#    (i = row of data/mnist/train.npz, 5 digits; 28x28 digits zero-padded by 2 pixels on every
#    side, exactly what tools/mnist/train_unet.py trains on), unless all of them are there.
# 2. Runs `uqengine fit` on that folder (ef-diag, seed 0: deterministic).
#
#   tools/fit_demo_posterior.sh [--images N] [--out FILE] [--uqengine PATH] [uqengine fit args...]
#     --images N     training images used (evenly spaced over the folder; default: all 8,000)
#     --out FILE     posterior file (default: assets/demo/posterior.safetensors)
#     --uqengine P   binary (default: target/release/uqengine, built if missing)
#   Any other argument goes to `uqengine fit` unchanged, e.g. --prior-precision 1e-2,
#   --sigma-noise 1, --hessian ggn-kron, --model DIR (default: the demo model assets/demo/unet).
set -euo pipefail
cd "$(dirname "$0")/.."
images="" out=assets/demo/posterior.safetensors bin=target/release/uqengine
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --images) images=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --uqengine) bin=$2; shift 2 ;;
    *) extra+=("$1"); shift ;;
  esac
done

png=data/mnist/train_png32
python3 - "$png" <<'PY'
import os, sys
import numpy as np
from PIL import Image

out = sys.argv[1]
src = "data/mnist/train.npz"
if not os.path.exists(src):
    sys.exit(f"{src} missing: run tools/mnist/fetch_data.py first")
d = np.load(src)
images, labels = d["images"], d["labels"]
paths = [os.path.join(out, str(int(y)), f"{i:05d}.png") for i, y in enumerate(labels)]
missing = [i for i, p in enumerate(paths) if not os.path.exists(p)]
if missing:
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))  # uint8 [N,32,32], digit centred
    for y in np.unique(labels):
        os.makedirs(os.path.join(out, str(int(y))), exist_ok=True)
    for i in missing:
        Image.fromarray(padded[i], mode="L").save(paths[i])
print(f"{out}: {len(paths)} images ({len(missing)} written)")
PY

if [[ ! -x "$bin" ]]; then
  cargo build --release
fi
args=(fit --data "$png" --out "$out" --overwrite)
[[ -n "$images" ]] && args+=(--images "$images")
start=$(date +%s.%N)
"$bin" "${args[@]}" ${extra[@]+"${extra[@]}"}
end=$(date +%s.%N)
echo "fit took $(python3 -c "print(f'{$end - $start:.1f}')") s -> $out"
