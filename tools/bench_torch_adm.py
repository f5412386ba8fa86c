#!/usr/bin/env python3
"""PyTorch reference throughput for a guided-diffusion (ADM) `UNetModel` forward pass (CPU, float32).

    python3 tools/bench_torch_adm.py --flags-file tools/adm_128_flags.txt \
        --batch 4 --iters 5 --threads 16 --json bench_torch_adm.json

Builds guided-diffusion's UNet (`guided_diffusion.script_util.create_model_and_diffusion`) from a
flags string in guided-diffusion's README form, parsed by guided-diffusion's own argparse setup,
always in float32 (a `--use_fp16 True` in the flags is overridden: the benchmark is float32), with
random weights: every parameter is overwritten (Conv/Linear weights N(0, 1/fan_in), biases
N(0, 0.1^2), GroupNorm scale 1 + N(0, 0.1^2), shift N(0, 0.1^2), class embedding N(0, 1)), so
also the layers guided-diffusion zero-initialises carry values; the cost does not depend on them.
Eval mode, `torch.inference_mode()`. Warms up `--warmup` forwards, then times `--iters` forwards
at the given batch with random x ~ N(0, 1), random integer t in [0, diffusion_steps) and random
class labels (class-conditional models). `ms_per_forward` is the median.

`--save-pt PATH` also writes that random-weight model's `torch.save(model.state_dict())` (float32),
a checkpoint to convert and run with the same weights elsewhere (several hundred MB for the
ImageNet-128 flags; keep it out of the repository).

GFLOP/image counts 2 FLOPs per multiply-accumulate, from forward hooks on
  Conv1d/Conv2d: MACs = numel(output) * (C_in / groups) * prod(kernel_size)
  Linear:        MACs = numel(output) * in_features
  Attention (QKVAttention / QKVAttentionLegacy, scores and weighted sum):
                 MACs = 2 * B * N^2 * C for N tokens of C = heads * head_dim channels
Bias adds, normalisation, activations and softmax are not counted (a few percent at most).
"""

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import time
import warnings

import torch

# guided_diffusion.nn decorates with the deprecated torch.cuda.amp.custom_fwd/bwd.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"guided_diffusion\.")

from guided_diffusion import script_util
from guided_diffusion.unet import QKVAttention, QKVAttentionLegacy


def parse_flags(flags: str) -> dict:
    """guided-diffusion's own argparse setup: defaults + README-form flags, str2bool booleans."""
    defaults = script_util.model_and_diffusion_defaults()
    parser = argparse.ArgumentParser()
    script_util.add_dict_to_argparser(parser, defaults)
    args = parser.parse_args(shlex.split(flags))
    return script_util.args_to_dict(args, defaults.keys())


def randomise_(model: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for mod in model.modules():
            for p_name, p in mod.named_parameters(recurse=False):
                if isinstance(mod, torch.nn.GroupNorm):
                    p.normal_(1.0 if p_name == "weight" else 0.0, 0.1, generator=gen)
                elif isinstance(mod, torch.nn.Embedding):
                    p.normal_(0.0, 1.0, generator=gen)
                elif p_name == "weight":
                    p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()), generator=gen)
                else:
                    p.normal_(0.0, 0.1, generator=gen)


def count_macs(model, x, t, y) -> dict:
    counts = {"conv": 0, "linear": 0, "attention": 0}
    hooks = []

    def conv_hook(mod, inp, out):
        counts["conv"] += out.numel() * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)

    def linear_hook(mod, inp, out):
        counts["linear"] += out.numel() * mod.in_features

    def attn_hook(mod, inp, out):
        b, width, n = inp[0].shape  # qkv: [B, 3 * heads * head_dim, tokens]
        counts["attention"] += 2 * b * n * n * (width // 3)

    for mod in model.modules():
        if isinstance(mod, (torch.nn.Conv1d, torch.nn.Conv2d)):
            hooks.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, torch.nn.Linear):
            hooks.append(mod.register_forward_hook(linear_hook))
        elif isinstance(mod, (QKVAttention, QKVAttentionLegacy)):
            hooks.append(mod.register_forward_hook(attn_hook))
    with torch.inference_mode():
        out = model(x, t, **({} if y is None else {"y": y}))
    for h in hooks:
        h.remove()
    return counts, float(out.abs().max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flags-file", required=True, help="guided-diffusion model flags, README form")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="default: all cores")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--save-pt", help="also save the random-weight state_dict (float32) here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    with open(args.flags_file) as f:
        flags = " ".join(f.read().split())
    margs = parse_flags(flags)
    margs["use_fp16"] = False  # float32 benchmark
    model, _ = script_util.create_model_and_diffusion(**margs)
    randomise_(model, torch.Generator().manual_seed(args.seed))
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    if args.save_pt:
        torch.save(model.state_dict(), args.save_pt)
        print(f"saved random-weight checkpoint to {args.save_pt}")

    s = margs["image_size"]
    gen = torch.Generator().manual_seed(args.seed + 1)
    x = torch.randn(args.batch, 3, s, s, generator=gen)
    t = torch.randint(0, margs["diffusion_steps"], (args.batch,), generator=gen, dtype=torch.int64)
    y = None
    if margs["class_cond"]:
        y = torch.randint(0, script_util.NUM_CLASSES, (args.batch,), generator=gen, dtype=torch.int64)
    kw = {} if y is None else {"y": y}

    macs, max_abs_out = count_macs(model, x[:1], t[:1], None if y is None else y[:1])
    gflop_per_image = 2 * sum(macs.values()) / 1e9

    times = []
    with torch.inference_mode():
        for _ in range(args.warmup):
            model(x, t, **kw)
        for _ in range(args.iters):
            t0 = time.perf_counter()
            model(x, t, **kw)
            times.append(time.perf_counter() - t0)

    ms_fwd = 1e3 * statistics.median(times)
    result = {
        "flags_file": os.path.abspath(args.flags_file),
        "flags": flags,
        "parameters": n_params,
        "batch": args.batch,
        "iters": args.iters,
        "warmup": args.warmup,
        "ms_per_forward": ms_fwd,
        "ms_per_forward_mean": 1e3 * statistics.mean(times),
        "ms_per_forward_min": 1e3 * min(times),
        "ms_per_image": ms_fwd / args.batch,
        "gflop_per_image": gflop_per_image,
        "gflop_breakdown": {k: 2 * v / 1e9 for k, v in macs.items()},
        "max_abs_out_first_image": max_abs_out,
        "gflops_achieved": gflop_per_image * args.batch / (ms_fwd / 1e3),
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "dtype": "float32",
        "device": "cpu",
        "seed": args.seed,
    }
    print(f"parameters       {n_params}")
    print(f"ms_per_forward   {ms_fwd:.2f} (median; batch {args.batch}, {args.iters} iters, "
          f"{result['threads']} threads)")
    print(f"ms_per_image     {result['ms_per_image']:.3f}")
    print(f"GFLOP/image      {gflop_per_image:.3f} "
          + " ".join(f"{k}={v:.3f}" for k, v in result["gflop_breakdown"].items()))
    print(f"GFLOP/s achieved {result['gflops_achieved']:.1f}")
    print(f"max |out|        {max_abs_out:.4g} (first image)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
