#!/usr/bin/env python3
"""PyTorch reference throughput for a diffusers `UNet2DModel` forward pass (CPU, float32).

    python3 tools/bench_torch_unet.py --config tools/ddpm_cifar10_32_config.json \
        --batch 16 --iters 10 --threads 16 --json bench_torch.json

Builds the model from a diffusers config.json with random weights (no checkpoint needed: the cost
does not depend on the values), eval mode, `torch.inference_mode()`. Warms up 2 forwards, then
times `--iters` forwards at the given batch with random x ~ N(0, 1) and random integer t.

GFLOP/image counts 2 FLOPs per multiply-accumulate, from forward hooks on
  Conv2d:  MACs = numel(output) * (C_in / groups) * k_h * k_w
  Linear:  MACs = numel(output) * in_features
  Attention (scores and weighted sum): MACs = 2 * B * N^2 * C for N = H*W tokens of C channels
           (summed over heads: heads * head_dim = C)
Bias adds, normalisation, activations and softmax are not counted (a few percent at most).
"""

import argparse
import json
import os
import platform
import statistics
import time

import torch
import diffusers
from diffusers import UNet2DModel


def count_macs(model: UNet2DModel, x: torch.Tensor, t: torch.Tensor, cls) -> dict:
    counts = {"conv": 0, "linear": 0, "attention": 0}
    hooks = []

    def conv_hook(mod, inp, out):
        kh, kw = mod.kernel_size
        counts["conv"] += out.numel() * (mod.in_channels // mod.groups) * kh * kw

    def linear_hook(mod, inp, out):
        counts["linear"] += out.numel() * mod.in_features

    def attn_hook(mod, args, kwargs, out):
        h = args[0] if args else kwargs["hidden_states"]
        if h.dim() == 4:
            b, c, hh, ww = h.shape
            n = hh * ww
        else:
            b, n, c = h.shape
        counts["attention"] += 2 * b * n * n * c

    for mod in model.modules():
        if isinstance(mod, torch.nn.Conv2d):
            hooks.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, torch.nn.Linear):
            hooks.append(mod.register_forward_hook(linear_hook))
        elif type(mod).__name__ == "Attention":
            hooks.append(mod.register_forward_hook(attn_hook, with_kwargs=True))
    with torch.inference_mode():
        model(x, t, class_labels=cls)
    for h in hooks:
        h.remove()
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="diffusers UNet2DModel config.json")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="default: all cores")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    with open(args.config) as f:
        config = json.load(f)
    model = UNet2DModel.from_config(config).eval()  # float32 parameters
    n_params = sum(p.numel() for p in model.parameters())

    size = model.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    c = model.config.in_channels
    x = torch.randn(args.batch, c, *size)
    t = torch.randint(0, 1000, (args.batch,), dtype=torch.int64)
    cls = None
    if model.config.num_class_embeds is not None:
        cls = torch.randint(0, model.config.num_class_embeds, (args.batch,), dtype=torch.int64)

    macs = count_macs(model, x[:1], t[:1], None if cls is None else cls[:1])
    gflop_per_image = 2 * sum(macs.values()) / 1e9

    times = []
    with torch.inference_mode():
        for _ in range(args.warmup):
            model(x, t, class_labels=cls)
        for _ in range(args.iters):
            t0 = time.perf_counter()
            model(x, t, class_labels=cls)
            times.append(time.perf_counter() - t0)

    ms_fwd = 1e3 * statistics.mean(times)
    result = {
        "config": os.path.abspath(args.config),
        "parameters": n_params,
        "batch": args.batch,
        "iters": args.iters,
        "warmup": args.warmup,
        "ms_per_forward": ms_fwd,
        "ms_per_forward_min": 1e3 * min(times),
        "ms_per_forward_median": 1e3 * statistics.median(times),
        "ms_per_image": ms_fwd / args.batch,
        "gflop_per_image": gflop_per_image,
        "gflop_breakdown": {k: 2 * v / 1e9 for k, v in macs.items()},
        "gflops_achieved": gflop_per_image * args.batch / (ms_fwd / 1e3) if gflop_per_image else None,
        "torch_version": torch.__version__,
        "diffusers_version": diffusers.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "dtype": "float32",
        "device": "cpu",
    }
    print(f"parameters       {n_params}")
    print(f"ms_per_forward   {ms_fwd:.2f} (batch {args.batch}, {args.iters} iters, {result['threads']} threads)")
    print(f"ms_per_image     {result['ms_per_image']:.3f}")
    if gflop_per_image:
        print(f"GFLOP/image      {gflop_per_image:.3f} "
              + " ".join(f"{k}={v:.3f}" for k, v in result["gflop_breakdown"].items()))
        print(f"GFLOP/s achieved {result['gflops_achieved']:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
