#!/usr/bin/env python3
"""Parity fixtures for the diffusers `UNet2DModel` port and the DDIM/DDPM samplers.

Builds three tiny random-weight UNet2DModel checkpoints under `tests/fixtures/unet/<name>/`:

    model/config.json                          diffusers config
    model/diffusion_pytorch_model.safetensors  weights (f32, f16 or bf16; new or old attention names)
    model/scheduler/scheduler_config.json      DDIMScheduler config
    ddpm_scheduler_config.json                 DDPMScheduler config used for ddpm_out.npy

and reference arrays (`.npy`, NCHW float32 unless noted) computed by diffusers in float32 with
the weights exactly as stored in the file (rounded to the file dtype, then widened to f32):

    forward_x [3,C,H,W], forward_t int64 [3], forward_class int64 [3] (conditional models),
    forward_out = model(forward_x, forward_t, forward_class).sample
    ddim_noise [2,C,H,W] (x_T), ddim_class int64 [2], ddim_timesteps int64 [10],
    ddim_out: 10 DDIM steps, eta 0, with the model's scheduler config, not clamped afterwards
    ddim_eta_variance_noise [10,2,C,H,W], ddim_eta_out: the same with eta 0.5 (one model)
    ddpm_step_noise [10,2,C,H,W], ddpm_timesteps int64 [10], ddpm_out: 10 DDPM steps; step i uses
        ddpm_step_noise[i] (DDPMScheduler adds noise only when t > 0, so a slice may go unused)
    meta.json

Run from the repository root: `python3 tools/make_unet_fixtures.py`. Deterministic (fixed seeds).
"""

import copy
import json
import math
import os
import shutil
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import diffusers
import diffusers.schedulers.scheduling_ddpm as scheduling_ddpm
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

torch.set_num_threads(1)
diffusers.utils.logging.set_verbosity_error()

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "unet")
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
NUM_STEPS = 10
FORWARD_T = [0, 417, 999]
SIZE_LIMIT = 1_500_000

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}

# Each entry: UNet2DModel config, DDIMScheduler config, DDPMScheduler variance_type, file dtype,
# attention weight names, whether an eta > 0 DDIM run is recorded, seed.
MODELS = [
    {
        # Architecture of google/ddpm-cifar10-32, shrunk: no class conditioning, one attention head,
        # padding-0 downsampling, sin-first time embedding with freq_shift 1, old attention names.
        "name": "cifar_like_old_names_f32",
        "unet": dict(
            sample_size=16,
            in_channels=3,
            out_channels=3,
            block_out_channels=(8, 16, 16),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            mid_block_type="UNetMidBlock2D",
            attention_head_dim=None,
            norm_num_groups=4,
            norm_eps=1e-6,
            downsample_padding=0,
            flip_sin_to_cos=False,
            freq_shift=1,
            act_fn="silu",
            dropout=0.0,
            center_input_sample=False,
            time_embedding_type="positional",
            mid_block_scale_factor=1,
            resnet_time_scale_shift="default",
        ),
        "ddim": dict(
            num_train_timesteps=1000,
            beta_start=0.0001,
            beta_end=0.02,
            beta_schedule="linear",
            timestep_spacing="leading",
            steps_offset=1,
            clip_sample=True,
            set_alpha_to_one=True,
            prediction_type="epsilon",
        ),
        "ddpm_variance_type": "fixed_large",
        "dtype": "f32",
        "attention_names": "old",
        "eta_run": True,
        "seed": 1001,
    },
    {
        # Grayscale, class-conditional, 4-head attention, f16 weights, new attention names.
        "name": "gray_cond_multihead_f16",
        "unet": dict(
            sample_size=8,
            in_channels=1,
            out_channels=1,
            block_out_channels=(16, 32),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            mid_block_type="UNetMidBlock2D",
            attention_head_dim=8,
            norm_num_groups=8,
            norm_eps=1e-5,
            downsample_padding=1,
            flip_sin_to_cos=True,
            freq_shift=0,
            act_fn="silu",
            dropout=0.0,
            num_class_embeds=10,
        ),
        "ddim": dict(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            timestep_spacing="trailing",
            steps_offset=0,
            clip_sample=False,
            set_alpha_to_one=False,
            prediction_type="v_prediction",
        ),
        "ddpm_variance_type": "fixed_small",
        "dtype": "f16",
        "attention_names": "new",
        "eta_run": False,
        "seed": 2002,
    },
    {
        # Attention at full resolution, 2 heads of dim 8, one norm group per channel (16 groups of
        # 16 channels), cosine schedule, x0-prediction, bf16 weights.
        "name": "attn_first_cosine_bf16",
        "unet": dict(
            sample_size=8,
            in_channels=3,
            out_channels=3,
            block_out_channels=(16, 16),
            layers_per_block=2,
            down_block_types=("AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D"),
            mid_block_type="UNetMidBlock2D",
            attention_head_dim=8,
            norm_num_groups=16,
            norm_eps=1e-6,
            downsample_padding=1,
            flip_sin_to_cos=True,
            freq_shift=0,
            act_fn="silu",
            dropout=0.0,
        ),
        "ddim": dict(
            num_train_timesteps=1000,
            beta_schedule="squaredcos_cap_v2",
            timestep_spacing="linspace",
            steps_offset=1,
            clip_sample=True,
            clip_sample_range=1.0,
            set_alpha_to_one=False,
            prediction_type="sample",
        ),
        "ddpm_variance_type": "fixed_small",
        "dtype": "bf16",
        "attention_names": "new",
        "eta_run": False,
        "seed": 3003,
    },
]


def randomise_(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Overwrite every parameter so nothing keeps its default init and activations stay O(1).

    Matrices and conv kernels: N(0, 1/fan_in); norm scales: 1 + N(0, 0.2^2);
    biases and norm shifts: N(0, 0.1^2); class embeddings: N(0, 0.5^2).
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "class_embedding" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            elif p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            elif name.endswith(".weight"):  # GroupNorm scale
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def round_to_dtype_(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Round weights to the storage dtype and widen back, so f32 references match the file."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).to(torch.float32))


def old_attention_name(key: str) -> str:
    """New diffusers attention key -> the pre-0.14 name (query/key/value/proj_attn)."""
    if ".attentions." not in key:
        return key
    for new, old in ((".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."),
                     (".to_out.0.", ".proj_attn.")):
        key = key.replace(new, old)
    return key


def rewrite_weights(model_dir: str, dtype: torch.dtype, old_names: bool) -> None:
    path = os.path.join(model_dir, WEIGHTS_FILE)
    state = load_file(path)
    out = {}
    for k, v in state.items():
        out[old_attention_name(k) if old_names else k] = v.to(dtype).contiguous()
    save_file(out, path, metadata={"format": "pt"})


def np_f32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy().astype(np.float32))


def run_ddim(model, sched, x, cls, eta=0.0, variance_noise=None):
    sched.set_timesteps(NUM_STEPS)
    for i, t in enumerate(sched.timesteps):
        eps = model(x, t, class_labels=cls).sample
        kw = {}
        if variance_noise is not None:
            kw["variance_noise"] = variance_noise[i]
        x = sched.step(eps, t, x, eta=eta, **kw).prev_sample
    return x


def run_ddpm(model, sched, x, cls, step_noise):
    """DDPM sampling where step i draws `step_noise[i]` instead of calling the generator."""
    sched.set_timesteps(NUM_STEPS)
    state = {"i": None, "used": []}
    original = scheduling_ddpm.randn_tensor

    def injected(shape, generator=None, device=None, dtype=None, **_):
        assert tuple(shape) == tuple(step_noise.shape[1:]), shape
        state["used"].append(state["i"])
        return step_noise[state["i"]].to(dtype=dtype)

    scheduling_ddpm.randn_tensor = injected
    try:
        for i, t in enumerate(sched.timesteps):
            state["i"] = i
            eps = model(x, t, class_labels=cls).sample
            x = sched.step(eps, t, x).prev_sample
    finally:
        scheduling_ddpm.randn_tensor = original
    return x, state["used"]


def scheduler_json(sched) -> dict:
    return {k: v for k, v in dict(sched.config).items() if not k.startswith("_")}


def make_model(spec: dict) -> dict:
    name = spec["name"]
    out = os.path.join(OUT_DIR, name)
    model_dir = os.path.join(out, "model")
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(model_dir)

    torch.manual_seed(spec["seed"])
    gen = torch.Generator().manual_seed(spec["seed"])
    model = UNet2DModel(**spec["unet"]).eval()
    randomise_(model, gen)
    dtype = DTYPES[spec["dtype"]]
    round_to_dtype_(model, dtype)

    model.save_pretrained(model_dir, safe_serialization=True)
    rewrite_weights(model_dir, dtype, spec["attention_names"] == "old")
    ddim = DDIMScheduler(**spec["ddim"])
    ddim.save_pretrained(os.path.join(model_dir, "scheduler"))

    cfg = spec["unet"]
    c, s = cfg["in_channels"], cfg["sample_size"]
    conditional = cfg.get("num_class_embeds") is not None
    arrays = {}

    with torch.inference_mode():
        # Forward pass.
        x = torch.randn(3, c, s, s, generator=gen)
        t = torch.tensor(FORWARD_T, dtype=torch.int64)
        cls = torch.tensor([3, 0, 9], dtype=torch.int64) if conditional else None
        y = model(x, t, class_labels=cls).sample
        arrays["forward_x"] = np_f32(x)
        arrays["forward_t"] = t.numpy()
        if conditional:
            arrays["forward_class"] = cls.numpy()
        arrays["forward_out"] = np_f32(y)

        # The file as written must reproduce the reference when diffusers loads it back.
        reloaded = UNet2DModel.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
        y2 = reloaded(x, t, class_labels=cls).sample
        reload_err = (y2 - y).abs().max().item()
        assert reload_err == 0.0, f"{name}: reloaded model differs by {reload_err}"
        state = load_file(os.path.join(model_dir, WEIGHTS_FILE))
        assert all(v.dtype == dtype for v in state.values())
        has_old = any(".query." in k or ".proj_attn." in k for k in state)
        assert has_old == (spec["attention_names"] == "old")

        # DDIM, eta = 0.
        zb = torch.randn(2, c, s, s, generator=gen)
        cls2 = torch.tensor([7, 2], dtype=torch.int64) if conditional else None
        ddim = DDIMScheduler.from_pretrained(model_dir, subfolder="scheduler")
        arrays["ddim_noise"] = np_f32(zb)
        if conditional:
            arrays["ddim_class"] = cls2.numpy()
        arrays["ddim_out"] = np_f32(run_ddim(model, ddim, zb, cls2))
        arrays["ddim_timesteps"] = ddim.timesteps.numpy().astype(np.int64)

        # DDIM, eta = 0.5, injected variance noise.
        if spec["eta_run"]:
            vn = torch.randn(NUM_STEPS, 2, c, s, s, generator=gen)
            arrays["ddim_eta_variance_noise"] = np_f32(vn)
            arrays["ddim_eta_out"] = np_f32(run_ddim(model, ddim, zb, cls2, eta=0.5, variance_noise=vn))

        # DDPM with the same betas, injected per-step noise.
        d = spec["ddim"]
        ddpm_kw = {k: d[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                                      "timestep_spacing", "steps_offset", "clip_sample",
                                      "clip_sample_range", "prediction_type") if k in d}
        ddpm = DDPMScheduler(variance_type=spec["ddpm_variance_type"], **ddpm_kw)
        with open(os.path.join(out, "ddpm_scheduler_config.json"), "w") as f:
            json.dump(dict(scheduler_json(ddpm), _class_name="DDPMScheduler",
                           _diffusers_version=diffusers.__version__), f, indent=2, sort_keys=True)
        sn = torch.randn(NUM_STEPS, 2, c, s, s, generator=gen)
        ddpm_x, used = run_ddpm(model, ddpm, zb, cls2, sn)
        arrays["ddpm_step_noise"] = np_f32(sn)
        arrays["ddpm_out"] = np_f32(ddpm_x)
        arrays["ddpm_timesteps"] = ddpm.timesteps.numpy().astype(np.int64)

        # The same runs in float64 (weights, inputs and noise widened exactly): how far a correct
        # f32 implementation may land from the references, to size test tolerances.
        m64 = copy.deepcopy(model).double()
        c64 = cls.clone() if conditional else None
        f64_err = {"forward_out": np.abs(np_f32(m64(x.double(), t, class_labels=c64).sample)
                                         - arrays["forward_out"]).max()}
        ddim64 = DDIMScheduler.from_pretrained(model_dir, subfolder="scheduler")
        f64_err["ddim_out"] = np.abs(np_f32(run_ddim(m64, ddim64, zb.double(), cls2))
                                     - arrays["ddim_out"]).max()
        if spec["eta_run"]:
            f64_err["ddim_eta_out"] = np.abs(np_f32(run_ddim(m64, ddim64, zb.double(), cls2, eta=0.5,
                                                             variance_noise=vn.double()))
                                             - arrays["ddim_eta_out"]).max()
        ddpm64 = DDPMScheduler.from_config(ddpm.config)
        f64_err["ddpm_out"] = np.abs(np_f32(run_ddpm(m64, ddpm64, zb.double(), cls2, sn.double())[0])
                                     - arrays["ddpm_out"]).max()

    for k, v in arrays.items():
        np.save(os.path.join(out, k + ".npy"), v)

    heads = []
    for mod_name, mod in model.named_modules():
        if type(mod).__name__ == "Attention":
            heads.append(f"{mod_name}:{mod.heads}")
    notes = (
        f"diffusers {diffusers.__version__}, torch {torch.__version__}. Weights stored as {spec['dtype']}; "
        "references computed in float32 with those exact weights. Attention heads: "
        + ", ".join(heads) + ". "
        f"DDIM: {d['beta_schedule']} betas, {d['timestep_spacing']} spacing, steps_offset {d['steps_offset']}, "
        f"clip_sample {d['clip_sample']}, set_alpha_to_one {d['set_alpha_to_one']}, "
        f"prediction {d['prediction_type']}; DDIMScheduler.step uses prev_t = t - 1000 // 10 regardless of "
        f"spacing. DDPM: variance_type {spec['ddpm_variance_type']}, prev_t = next entry of ddpm_timesteps "
        f"(-1 after the last), noise added only when t > 0; step noise slices used: {used}."
    )
    meta = {
        "name": name,
        "conditional": conditional,
        "dtype": spec["dtype"],
        "attention_names": spec["attention_names"],
        "max_abs_forward_out": float(np.abs(arrays["forward_out"]).max()),
        "max_abs_ddim_out": float(np.abs(arrays["ddim_out"]).max()),
        "max_abs_ddpm_out": float(np.abs(arrays["ddpm_out"]).max()),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "f64_vs_f32_max_abs": {k: float(v) for k, v in f64_err.items()},
        "notes": notes,
    }
    if spec["eta_run"]:
        meta["max_abs_ddim_eta_out"] = float(np.abs(arrays["ddim_eta_out"]).max())
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    return meta


def dir_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, fn)) for r, _, fns in os.walk(path) for fn in fns)


def main() -> int:
    os.makedirs(OUT_DIR, exist_ok=True)
    for spec in MODELS:
        meta = make_model(spec)
        print(f"{meta['name']}: params {meta['num_parameters']}, max|forward_out| "
              f"{meta['max_abs_forward_out']:.3f}, max|ddim_out| {meta['max_abs_ddim_out']:.3f}, "
              f"max|ddpm_out| {meta['max_abs_ddpm_out']:.3f}")
        print("  f64 vs f32 max abs: " + ", ".join(f"{k} {v:.2e}" for k, v in meta["f64_vs_f32_max_abs"].items()))
    print("sizes:")
    for spec in MODELS:
        d = os.path.join(OUT_DIR, spec["name"])
        print(f"  {spec['name']}: {dir_size(d) / 1024:.1f} KiB "
              f"(weights {os.path.getsize(os.path.join(d, 'model', WEIGHTS_FILE)) / 1024:.1f} KiB)")
    total = dir_size(OUT_DIR)
    print(f"  total tests/fixtures/unet: {total / 1024:.1f} KiB ({total} bytes)")
    if total > SIZE_LIMIT:
        print(f"error: fixtures exceed {SIZE_LIMIT} bytes", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
