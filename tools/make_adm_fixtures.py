#!/usr/bin/env python3
"""Parity fixtures for the guided-diffusion (ADM) UNet port, its samplers and its Laplace fit.

Made by OpenAI guided-diffusion's own code (PyPI `guided-diffusion-sdk` 1.0.0, import path
`guided_diffusion`; only `script_util`, `unet`, `gaussian_diffusion` and `respace` are used).
For each configuration in CONFIGS it builds `script_util.create_model_and_diffusion(...)` from a
flags string in guided-diffusion's README form, parsed by guided-diffusion's own argparse setup
(`add_dict_to_argparser(model_and_diffusion_defaults())`, booleans through `str2bool`),
randomises EVERY parameter with a fixed seed (guided-diffusion zero-initialises the ResBlock
`out_layers.3`, attention `proj_out` and `out.2`; here nothing keeps its init):

    Conv/Linear weights N(0, 1/fan_in), their biases N(0, 0.1^2), GroupNorm scale 1 + N(0, 0.1^2),
    GroupNorm shift N(0, 0.1^2), class embedding `label_emb.weight` N(0, 1)

and writes `tests/fixtures/adm/<name>/`:

    flags.txt        the flags string, one line
    model.pt         torch.save(model.state_dict()) (zip serialization). Config "store"
                     "fp16_torso": saved after `model.convert_to_fp16()`, so the torso's conv
                     weights and biases (input_blocks, middle_block, output_blocks, attention
                     qkv/proj_out included) are float16 and the rest (time_embed, label_emb,
                     emb_layers Linear, GroupNorms, out.*) float32; "f32": every tensor float32
                     (what guided-diffusion's training code saves, also with --use_fp16 True).
    meta.json        the parsed flags dict, out_channels, T (diffusion_steps), max |forward_out|,
                     respaced timesteps and betas, parameter dtypes in model.pt, self-checks.

and reference arrays (`.npy`, float32 NCHW unless noted; int64 for t, y and timesteps), all
computed in float32 with the weights exactly as stored in model.pt (f16 ones widened to f32: the
state dict is loaded into the same model built with use_fp16 False):

    forward_x [3,3,H,W], forward_t int64 [3] = [0, 417*T//1000, T-1], forward_y int64 [3]
        (class-conditional only), forward_out = model(forward_x, forward_t, y=forward_y)
        [3, out_channels, H, W] (out_channels 6 with learn_sigma: eps, then the variance
        interpolation value v in [-1, 1] nominally).
    ddim_noise [2,3,H,W] (x_T), ddim_y int64 [2] (conditional), ddim_timesteps int64 [10]: the
        original timesteps the model sees, in sampling order (diffusion.timestep_map reversed).
        Diffusion: create_gaussian_diffusion(..., timestep_respacing="ddim10") exactly as
        script_util builds it from the flags.
    ddim_out         diffusion.ddim_sample_loop(model, shape, noise=ddim_noise, clip_denoised=True,
                     model_kwargs={"y": ddim_y}, eta=0.0)
    ddim_noclip_out  the same with clip_denoised=False
    ddim7_out, ddim7_timesteps int64 [7]: "ddim7", clip_denoised=True (configs with ddim7)
    ddim_eta_step_noise [10,2,3,H,W], ddim_eta_out: "ddim10", eta 0.5, clip_denoised=True,
        x_T = ddim_noise; the `th.randn_like(x)` that ddim_sample calls once per step returns
        ddim_eta_step_noise[i] at step i (i = 0 is the first step, at the highest timestep; the
        last step's slice is drawn but multiplied by 0) (configs with eta)
    ddpm_noise [2,3,H,W] (x_T), ddpm_step_noise [10,2,3,H,W], ddpm_timesteps int64 [10],
    ddpm_out         diffusion.p_sample_loop(model, shape, noise=ddpm_noise, clip_denoised=True,
                     model_kwargs=...) with timestep_respacing "10"; step i's
                     `th.randn_like(x)` returns ddpm_step_noise[i] (the last step, t = 0, draws
                     but adds no noise). Variance: learned range with learn_sigma, else
                     fixed_large (sigma_small False).

For the Laplace configuration also `tests/fixtures/adm/<name>/laplace/`, the same files and
meanings as tools/make_laplace_fixtures.py writes for the diffusers fixtures, with the last layer
`out.2` (Conv2d model_channels -> out_channels, 3x3, padding 1):

    x0 [N,3,H,W] f32 in [-1, 1], t int64 [N], eps [N,3,H,W] f32, class int64 [N] (conditional)
    x_t = diffusion.q_sample(x0, t, eps) of the un-respaced diffusion: f32(sqrt(abar_t)) * x0 +
        f32(sqrt(1 - abar_t)) * eps, the square roots taken in float64 on guided-diffusion's
        float64 `alphas_cumprod`, then cast to float32 (as `_extract_into_tensor` does).
    loss_n = sum over positions and output channels 0..2 (the eps part; the variance channels
        3..5 are not in the loss) of (out_n - eps_n)^2, out_n = model(x_t, t, y).
    ef_diag [P] f32  0.5 * sum_n g_n^2, g_n = d loss_n / d(out.2.weight, out.2.bias); weight
                     (cout, cin, 3, 3) flattened row-major, then bias (cout); P = cout*cin*9 + cout.
                     All cout = 6 output channels' parameters are present; channels 3..5 are
                     exactly 0. `vmap(grad(...))` via `functional_call`, checked against a
                     per-sample autograd loop.
    ggn_a [J,J] f32  J = cin*9 + 1: the factor A of the explicit Gauss-Newton matrix
                     GN = sum_n J_n^T J_n of the eps channels (J_n = d out_n[0..2] / d params by
                     `jacrev`, params per output channel as (w[co] flattened (ci, kh, kw), b[co])).
                     The script asserts GN == diag(1,1,1,0,0,0) (x) A and GN == the Hessian of
                     0.5 * sum_n loss_n.
    ggn_diag [P] f32 diag(GN) in the ef_diag order (weights then bias; channels 3..5 are 0).
    meta.json        prediction type, channels in loss, sizes, self-check errors.

And `tests/fixtures/adm/space_timesteps.json`: guided-diffusion's `space_timesteps(T, spec)` as
`create_gaussian_diffusion` uses it ("" = all T steps), sorted, for several (T, spec) pairs,
including ties in Python's round-half-to-even and specs that raise ValueError ("error": true).

Run from the repository root with a Python that has torch, numpy and guided-diffusion-sdk:
`tools/.venv/bin/python tools/make_adm_fixtures.py`. Deterministic (fixed seeds, one thread).
"""

import argparse
import copy
import contextlib
import json
import math
import os
import shlex
import shutil
import sys
import warnings

import numpy as np
import torch
from torch.func import functional_call, grad, hessian, jacrev, vmap

# guided_diffusion.nn decorates with the deprecated torch.cuda.amp.custom_fwd/bwd.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"guided_diffusion\.")

import guided_diffusion.gaussian_diffusion as gd
import guided_diffusion.nn as gd_nn
import guided_diffusion.unet as gd_unet
from guided_diffusion import script_util
from guided_diffusion.respace import space_timesteps

torch.set_num_threads(1)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "adm")
SIZE_LIMIT = 5_000_000
NUM_STEPS = 10
LAST = "out.2"
SDK_VERSION = "1.0.0"

# Each entry: name, flags string (README form), how model.pt stores the weights ("fp16_torso":
# saved after convert_to_fp16(); "f32": as guided-diffusion's training code saves checkpoints,
# float32 master parameters even with --use_fp16 True), seed, extra runs. Between them the configs
# cover every create_model flag: image_size, num_channels, num_res_blocks 0/1/2, channel_mult
# (1 and 2 levels), learn_sigma both ways, class_cond both ways, use_checkpoint (no effect on
# values), attention_resolutions (one or two, incl. full resolution), num_heads (legacy order),
# num_head_channels (new order), num_heads_upsample, use_scale_shift_norm both ways, dropout (no
# effect in eval), resblock_updown both ways, use_fp16 both ways (f16 torso and f32 files),
# use_new_attention_order both ways; and diffusion_steps 1000/100, noise_schedule linear/cosine.
# Every level has num_channels = 32 channels: GroupNorm uses 32 groups, and a 64-channel level
# would double the fixture size (the class embedding, 1000 x 128, and ggn_a, 289 x 289, are
# already 0.85 MB).
CONFIGS = [
    {
        # Class-conditional, learned variance (6 output channels), two levels, one ResBlock per
        # level, ResBlock down/upsampling, attention at 8 and 4 (ds 1 and 2, so in input, middle
        # and output blocks) with 2 heads in the legacy QKV order, scale-shift norm, fp16 torso
        # in model.pt. Also the Laplace fixture.
        "name": "cond_learned_updown",
        "flags": "--attention_resolutions 8,4 --class_cond True --diffusion_steps 1000 "
                 "--image_size 8 --learn_sigma True --noise_schedule linear --num_channels 32 "
                 "--num_heads 2 --num_res_blocks 1 --resblock_updown True --use_fp16 True "
                 "--use_scale_shift_norm True --channel_mult 1,1",
        "store": "fp16_torso",
        "seed": 101,
        "ddim7": False,
        "eta": False,
        "laplace": {"t": [0, 263, 640, 999], "seed": 171},
    },
    {
        # Unconditional, fixed (large) variance, 3 output channels, one level with two ResBlocks
        # (no down/upsampling), new attention order with 16-channel heads (2 heads) at full
        # resolution, no scale-shift norm, 100 training steps, cosine betas, dropout 0.1 (eval:
        # none), all-f32 file.
        "name": "uncond_newattn",
        "flags": "--attention_resolutions 8 --channel_mult 1 --class_cond False "
                 "--diffusion_steps 100 --dropout 0.1 --image_size 8 --learn_sigma False "
                 "--noise_schedule cosine --num_channels 32 --num_head_channels 16 "
                 "--num_res_blocks 2 --resblock_updown False --use_fp16 False "
                 "--use_new_attention_order True --use_scale_shift_norm False",
        "store": "f32",
        "seed": 202,
        "ddim7": False,
        "eta": True,
        "laplace": None,
    },
    {
        # Unconditional, learned variance, two levels with num_res_blocks 0 (input blocks: the
        # first conv and a strided-conv Downsample; output blocks: one ResBlock per level, the
        # first followed by attention and a nearest + conv Upsample), attention at 4 (ds 2) with
        # 4 heads in the middle block and 2 heads (num_heads_upsample) in the output block, legacy
        # order, scale-shift norm, cosine betas, use_checkpoint True, --use_fp16 True with an
        # all-f32 file (as released checkpoints are); dropout and use_new_attention_order left
        # at their defaults.
        "name": "heads_upsample",
        "flags": "--attention_resolutions 4 --channel_mult 1,1 --class_cond False "
                 "--diffusion_steps 1000 --image_size 8 --learn_sigma True "
                 "--noise_schedule cosine --num_channels 32 --num_heads 4 --num_heads_upsample 2 "
                 "--num_res_blocks 0 --resblock_updown False --use_checkpoint True "
                 "--use_fp16 True --use_scale_shift_norm True",
        "store": "f32",
        "seed": 303,
        "ddim7": True,
        "eta": False,
        "laplace": None,
    },
    {
        # A first level narrower than the timestep features, as in the 512x512 model
        # (channel_mult 0.5,...): num_channels 64 gives 64-wide sinusoids (time embedding 256)
        # but a 32-channel level; one level, one ResBlock, attention only in the middle block
        # (one head), scale-shift norm, linear betas, fp16 torso in model.pt.
        "name": "half_first_level",
        "flags": "--attention_resolutions 16 --channel_mult 0.5 --class_cond False "
                 "--diffusion_steps 1000 --image_size 8 --learn_sigma False "
                 "--noise_schedule linear --num_channels 64 --num_heads 1 --num_res_blocks 1 "
                 "--resblock_updown False --use_fp16 True --use_scale_shift_norm True",
        "store": "fp16_torso",
        "seed": 404,
        "ddim7": False,
        "eta": False,
        "laplace": None,
    },
]

# (T, spec) pairs for space_timesteps.json.
SPACINGS = [
    (1000, ""), (1000, "10"), (1000, "7"), (1000, "25"), (1000, "250"), (1000, "10,15,20"),
    (300, "10,15,20"), (100, "10"), (100, "7"), (1000, "ddim10"), (1000, "ddim7"),
    (1000, "ddim25"), (1000, "ddim50"), (1000, "ddim250"), (100, "ddim10"), (100, "ddim7"),
    (1000, "ddim999"), (10, "20"),
]


def parse_flags(flags: str) -> dict:
    """guided-diffusion's own argparse setup: defaults + README-form flags, str2bool booleans."""
    defaults = script_util.model_and_diffusion_defaults()
    parser = argparse.ArgumentParser()
    script_util.add_dict_to_argparser(parser, defaults)
    args = parser.parse_args(shlex.split(flags))
    return script_util.args_to_dict(args, defaults.keys())


def build(args: dict):
    """`create_model_and_diffusion(**args)`, except for a fractional channel_mult (the 512x512
    model's 0.5, which create_model reaches only through image_size 512's default and whose
    explicit form its int parser refuses): then guided-diffusion's `UNetModel` built exactly as
    create_model builds it, with the float multipliers."""
    mult = args["channel_mult"]
    if mult == "" or all(float(m).is_integer() for m in mult.split(",")):
        return script_util.create_model_and_diffusion(**args)
    attention_ds = tuple(args["image_size"] // int(r) for r in args["attention_resolutions"].split(","))
    model = gd_unet.UNetModel(
        image_size=args["image_size"],
        in_channels=3,
        model_channels=args["num_channels"],
        out_channels=6 if args["learn_sigma"] else 3,
        num_res_blocks=args["num_res_blocks"],
        attention_resolutions=attention_ds,
        dropout=args["dropout"],
        channel_mult=tuple(float(m) for m in mult.split(",")),
        num_classes=script_util.NUM_CLASSES if args["class_cond"] else None,
        use_checkpoint=args["use_checkpoint"],
        use_fp16=args["use_fp16"],
        num_heads=args["num_heads"],
        num_head_channels=args["num_head_channels"],
        num_heads_upsample=args["num_heads_upsample"],
        use_scale_shift_norm=args["use_scale_shift_norm"],
        resblock_updown=args["resblock_updown"],
        use_new_attention_order=args["use_new_attention_order"],
    )
    return model, make_diffusion(args, args["timestep_respacing"])


def make_diffusion(args: dict, respacing: str):
    """create_gaussian_diffusion exactly as create_model_and_diffusion calls it."""
    return script_util.create_gaussian_diffusion(
        steps=args["diffusion_steps"],
        learn_sigma=args["learn_sigma"],
        noise_schedule=args["noise_schedule"],
        use_kl=args["use_kl"],
        predict_xstart=args["predict_xstart"],
        rescale_timesteps=args["rescale_timesteps"],
        rescale_learned_sigmas=args["rescale_learned_sigmas"],
        timestep_respacing=respacing,
    )


def randomise_(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Overwrite every parameter (see the module docstring for the distributions)."""
    seen = set()
    with torch.no_grad():
        for mod_name, mod in model.named_modules():
            for p_name, p in mod.named_parameters(recurse=False):
                full = f"{mod_name}.{p_name}" if mod_name else p_name
                if isinstance(mod, torch.nn.GroupNorm):
                    base = 1.0 if p_name == "weight" else 0.0
                    p.copy_(base + 0.1 * torch.randn(p.shape, generator=gen))
                elif isinstance(mod, torch.nn.Embedding):
                    p.copy_(torch.randn(p.shape, generator=gen))
                elif isinstance(mod, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)):
                    if p_name == "weight":
                        fan_in = p[0].numel()
                        p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
                    else:
                        p.copy_(0.1 * torch.randn(p.shape, generator=gen))
                else:
                    raise ValueError(f"unexpected parameter {full} in {type(mod).__name__}")
                seen.add(full)
    assert seen == {k for k, _ in model.named_parameters()}


def np_f32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy().astype(np.float32))


def np_i64(t) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(t, dtype=np.int64))


class _InjectedTorch:
    """Stands in for `torch` inside gaussian_diffusion: `randn_like` returns the next slice."""

    def __init__(self, noise: torch.Tensor):
        self._noise = noise
        self.calls = 0

    def __getattr__(self, name):
        return getattr(torch, name)

    def randn_like(self, x, *args, **kwargs):
        i = self.calls
        self.calls += 1
        n = self._noise[i]
        assert tuple(n.shape) == tuple(x.shape), (n.shape, x.shape)
        return n.to(dtype=x.dtype, device=x.device)


@contextlib.contextmanager
def injected_noise(noise):
    if noise is None:
        yield None
        return
    proxy = _InjectedTorch(noise)
    original = gd.th
    gd.th = proxy
    try:
        yield proxy
    finally:
        gd.th = original


@contextlib.contextmanager
def float64_mode(model):
    """Let guided-diffusion's UNet and samplers run in float64 (for tolerance sizing only):
    GroupNorm32 without its .float(), a float64 timestep embedding, the model's input dtype,
    and float64 schedule coefficients. Attention softmax still goes through float32."""
    orig_gn = gd_nn.GroupNorm32.forward
    orig_emb = gd_unet.timestep_embedding
    orig_extract = gd._extract_into_tensor
    orig_dtype = model.dtype

    def gn_forward(self, x):
        return torch.nn.GroupNorm.forward(self, x)

    def emb64(timesteps, dim, max_period=10000):
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)
        args = timesteps[:, None].double() * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def extract64(arr, timesteps, broadcast_shape):
        res = torch.from_numpy(arr)[timesteps].double()
        while len(res.shape) < len(broadcast_shape):
            res = res[..., None]
        return res.expand(broadcast_shape)

    gd_nn.GroupNorm32.forward = gn_forward
    gd_unet.timestep_embedding = emb64
    gd._extract_into_tensor = extract64
    model.dtype = torch.float64
    try:
        yield
    finally:
        gd_nn.GroupNorm32.forward = orig_gn
        gd_unet.timestep_embedding = orig_emb
        gd._extract_into_tensor = orig_extract
        model.dtype = orig_dtype


def sampling_order(diffusion) -> np.ndarray:
    return np_i64(list(reversed(diffusion.timestep_map)))


def run_ddim(model, diffusion, x_t, kwargs, clip=True, eta=0.0, step_noise=None):
    with torch.no_grad(), injected_noise(step_noise) as proxy:
        out = diffusion.ddim_sample_loop(model, tuple(x_t.shape), noise=x_t, clip_denoised=clip,
                                         model_kwargs=kwargs, eta=eta)
    if proxy is not None:
        assert proxy.calls == diffusion.num_timesteps, proxy.calls
    return out


def run_ddpm(model, diffusion, x_t, kwargs, step_noise):
    with torch.no_grad(), injected_noise(step_noise) as proxy:
        out = diffusion.p_sample_loop(model, tuple(x_t.shape), noise=x_t, clip_denoised=True,
                                      model_kwargs=kwargs)
    assert proxy.calls == diffusion.num_timesteps, proxy.calls
    return out


def param_dtypes(state: dict) -> dict:
    counts = {}
    for v in state.values():
        key = str(v.dtype).replace("torch.", "")
        counts[key] = counts.get(key, 0) + 1
    return counts


def make_laplace(name, model, args, case) -> dict:
    out_dir = os.path.join(OUT_DIR, name, "laplace")
    os.makedirs(out_dir)
    base = make_diffusion(args, "")
    c, s = 3, args["image_size"]
    conditional = args["class_cond"]
    conv = model.out[2]
    cin, cout = conv.in_channels, conv.out_channels
    c_loss = 3
    gen = torch.Generator().manual_seed(case["seed"])

    n = len(case["t"])
    x0 = torch.rand(n, c, s, s, generator=gen) * 2 - 1
    eps = torch.randn(n, c, s, s, generator=gen)
    t = torch.tensor(case["t"], dtype=torch.int64)
    cls = torch.randint(0, script_util.NUM_CLASSES, (n,), generator=gen) if conditional else None
    xt = base.q_sample(x0, t, noise=eps)
    assert xt.dtype == torch.float32
    target = eps

    frozen = {k: v.detach() for k, v in model.named_parameters() if not k.startswith(LAST + ".")}
    buffers = dict(model.named_buffers())
    ll = {k: v.detach().clone() for k, v in model.named_parameters() if k.startswith(LAST + ".")}
    assert set(ll) == {LAST + ".weight", LAST + ".bias"}
    cls_in = cls if conditional else torch.zeros(n, dtype=torch.int64)

    def forward(llp, x, tt, y):
        kw = {"y": y[None]} if conditional else {}
        return functional_call(model, ({**frozen, **llp}, buffers), (x[None], tt[None]), kw)[0]

    def loss_single(llp, x, tt, y, tgt):
        o = forward(llp, x, tt, y)
        return ((o[:c_loss] - tgt[:c_loss]) ** 2).sum()

    g = vmap(grad(loss_single), in_dims=(None, 0, 0, 0, 0))(ll, xt, t, cls_in, target)
    flat = torch.cat([g[LAST + ".weight"].reshape(n, -1), g[LAST + ".bias"].reshape(n, -1)], 1)
    loop = []
    for i in range(n):
        p = {k: v.clone().requires_grad_(True) for k, v in ll.items()}
        li = loss_single(p, xt[i], t[i], cls_in[i], target[i])
        gw, gb = torch.autograd.grad(li, [p[LAST + ".weight"], p[LAST + ".bias"]])
        loop.append(torch.cat([gw.reshape(-1), gb.reshape(-1)]))
    loop = torch.stack(loop)
    vmap_err = (flat - loop).abs().max().item() / loop.abs().max().item()
    assert vmap_err < 1e-5, f"{name}: vmap vs loop gradients differ by {vmap_err}"
    ef = (0.5 * (flat.double() ** 2).sum(0)).float()
    nw = cout * cin * 9
    assert torch.all(ef[c_loss * cin * 9 : nw] == 0) and torch.all(ef[nw + c_loss :] == 0)

    jdim = cin * 9 + 1

    def out_of_flat(theta, x, tt, y):
        th = theta.view(cout, jdim)
        llp = {LAST + ".weight": th[:, :-1].reshape(cout, cin, 3, 3), LAST + ".bias": th[:, -1]}
        return forward(llp, x, tt, y)[:c_loss].reshape(-1)

    theta0 = torch.cat([ll[LAST + ".weight"].reshape(cout, -1), ll[LAST + ".bias"].view(cout, 1)],
                       1).reshape(-1)
    gn = torch.zeros(cout * jdim, cout * jdim, dtype=torch.float64)
    for i in range(n):
        jac = jacrev(out_of_flat)(theta0, xt[i], t[i], cls_in[i]).double()
        gn += jac.T @ jac
    a = gn[:jdim, :jdim]
    mask = torch.tensor([1.0 if co < c_loss else 0.0 for co in range(cout)], dtype=torch.float64)
    kron = torch.kron(torch.diag(mask), a)
    kron_err = (gn - kron).abs().max().item() / a.abs().max().item()
    assert kron_err < 1e-5, f"{name}: GN is not diag(mask) (x) A: {kron_err}"

    def half_loss_flat(theta):
        tot = 0.0
        for i in range(n):
            o = out_of_flat(theta, xt[i], t[i], cls_in[i])
            tot = tot + ((o - target[i][:c_loss].reshape(-1)) ** 2).sum()
        return 0.5 * tot

    hess = hessian(half_loss_flat)(theta0).double()
    hess_err = (hess - gn).abs().max().item() / a.abs().max().item()
    assert hess_err < 1e-4, f"{name}: Hessian of 0.5 * loss differs from GN by {hess_err}"

    d = torch.diagonal(gn).view(cout, jdim)
    gn_diag = torch.cat([d[:, :-1].reshape(-1), d[:, -1]])
    arrays = {"x0": np_f32(x0), "t": t.numpy(), "eps": np_f32(eps), "ef_diag": np_f32(ef),
              "ggn_a": np_f32(a), "ggn_diag": np_f32(gn_diag)}
    if conditional:
        arrays["class"] = cls.numpy()
    for k, v in arrays.items():
        np.save(os.path.join(out_dir, k + ".npy"), v)
    meta = {
        "model": name,
        "prediction_type": "epsilon",
        "channels_in_loss": c_loss,
        "num_images": n,
        "cin": cin,
        "cout": cout,
        "max_ef_diag": float(ef.abs().max()),
        "max_ggn_a": float(a.abs().max()),
        "self_checks": {
            "vmap_vs_loop_grad_rel": vmap_err,
            "gn_minus_masked_kron_rel": kron_err,
            "hessian_half_loss_minus_gn_rel": hess_err,
        },
        "notes": (
            f"guided-diffusion-sdk {SDK_VERSION}, torch {torch.__version__}; float32 forward, GN "
            "accumulated in float64. Last layer out.2; loss over output channels 0..2 (eps), "
            "channels 3..5 (variance) have zero curvature. x_t = diffusion.q_sample(x0, t, eps) "
            f"with the {args['diffusion_steps']}-step {args['noise_schedule']} schedule. "
            "ef_diag = 0.5 * sum_n g_n^2 (laplace-torch's regression factor); ggn_a: GN of the sum "
            "of squares scaled by 0.5, i.e. sum_n J_n^T J_n."
        ),
    }
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    return meta


def make_config(spec: dict) -> dict:
    name = spec["name"]
    out = os.path.join(OUT_DIR, name)
    os.makedirs(out)
    args = parse_flags(spec["flags"])
    T = args["diffusion_steps"]
    s = args["image_size"]
    conditional = args["class_cond"]
    learned = args["learn_sigma"]

    torch.manual_seed(spec["seed"])
    gen = torch.Generator().manual_seed(spec["seed"])
    model, _ = build(args)
    randomise_(model, gen)
    if spec["store"] == "fp16_torso":
        assert args["use_fp16"]
        model.convert_to_fp16()
    state = model.state_dict()
    want = {"fp16_torso": {torch.float16, torch.float32}, "f32": {torch.float32}}[spec["store"]]
    assert {v.dtype for v in state.values()} == want
    pt_path = os.path.join(out, "model.pt")
    torch.save(state, pt_path)
    with open(os.path.join(out, "flags.txt"), "w") as f:
        f.write(spec["flags"] + "\n")

    # The float32 reference model: same flags with use_fp16 False, weights from the file.
    ref_model, _ = build({**args, "use_fp16": False})
    loaded = torch.load(pt_path, map_location="cpu", weights_only=True)
    ref_model.load_state_dict(loaded)
    ref_model.eval()
    assert all(p.dtype == torch.float32 for p in ref_model.parameters())
    widen_err = max((ref_model.state_dict()[k] - v.float()).abs().max().item()
                    for k, v in state.items())
    assert widen_err == 0.0
    out_channels = ref_model.out_channels
    assert out_channels == (6 if learned else 3)

    arrays = {}
    kw = (lambda y: {"y": y}) if conditional else (lambda y: {})
    with torch.no_grad():
        x = torch.randn(3, 3, s, s, generator=gen)
        t = torch.tensor([0, 417 * T // 1000, T - 1], dtype=torch.int64)
        y = torch.tensor([0, 417, 999], dtype=torch.int64) if conditional else None
        fwd = ref_model(x, t, **kw(y))
        arrays["forward_x"] = np_f32(x)
        arrays["forward_t"] = np_i64(t)
        if conditional:
            arrays["forward_y"] = np_i64(y)
        arrays["forward_out"] = np_f32(fwd)
        max_fwd = float(fwd.abs().max())
        rms_fwd = float(fwd.pow(2).mean().sqrt())
        assert 0.1 < max_fwd < 20.0, f"{name}: max |forward_out| {max_fwd}"
        self_checks = {"f16_widening_exact": True}

        # The fp16 model as guided-diffusion runs it (torso in half precision), for information.
        if spec["store"] == "fp16_torso":
            try:
                half_out = model.eval()(x, t, **kw(y))
                self_checks["fp16_torso_forward_vs_reference_max_abs"] = float(
                    (half_out.float() - fwd).abs().max())
            except RuntimeError as e:  # half convolutions unavailable on this CPU build
                self_checks["fp16_torso_forward_vs_reference_max_abs"] = f"not run: {e}"

        # DDIM, 10 steps.
        d10 = make_diffusion(args, "ddim10")
        xb = torch.randn(2, 3, s, s, generator=gen)
        yb = torch.tensor([7, 512], dtype=torch.int64) if conditional else None
        arrays["ddim_noise"] = np_f32(xb)
        if conditional:
            arrays["ddim_y"] = np_i64(yb)
        arrays["ddim_timesteps"] = sampling_order(d10)
        ddim_out = run_ddim(ref_model, d10, xb, kw(yb))
        arrays["ddim_out"] = np_f32(ddim_out)
        arrays["ddim_noclip_out"] = np_f32(run_ddim(ref_model, d10, xb, kw(yb), clip=False))

        if spec["ddim7"]:
            d7 = make_diffusion(args, "ddim7")
            arrays["ddim7_timesteps"] = sampling_order(d7)
            arrays["ddim7_out"] = np_f32(run_ddim(ref_model, d7, xb, kw(yb)))

        if spec["eta"]:
            en = torch.randn(NUM_STEPS, 2, 3, s, s, generator=gen)
            arrays["ddim_eta_step_noise"] = np_f32(en)
            arrays["ddim_eta_out"] = np_f32(run_ddim(ref_model, d10, xb, kw(yb), eta=0.5,
                                                     step_noise=en))

        # DDPM, 10 steps.
        dp = make_diffusion(args, str(NUM_STEPS))
        xp = torch.randn(2, 3, s, s, generator=gen)
        sn = torch.randn(NUM_STEPS, 2, 3, s, s, generator=gen)
        arrays["ddpm_noise"] = np_f32(xp)
        arrays["ddpm_step_noise"] = np_f32(sn)
        arrays["ddpm_timesteps"] = sampling_order(dp)
        arrays["ddpm_out"] = np_f32(run_ddpm(ref_model, dp, xp, kw(yb), sn))

        # The file read back by a fresh model reproduces the reference bit for bit.
        again, _ = build({**args, "use_fp16": False})
        again.load_state_dict(torch.load(pt_path, map_location="cpu", weights_only=True))
        reload_err = (again.eval()(x, t, **kw(y)) - fwd).abs().max().item()
        assert reload_err == 0.0, reload_err
        self_checks["reload_forward_max_abs"] = reload_err

        # The same runs in float64 (weights, inputs and noise widened exactly): how far a correct
        # float32 implementation may land from the references, to size test tolerances.
        m64 = copy.deepcopy(ref_model).double()
        with float64_mode(m64):
            f64 = {"forward_out": m64(x.double(), t, **kw(y))}
            f64["ddim_out"] = run_ddim(m64, d10, xb.double(), kw(yb))
            f64["ddim_noclip_out"] = run_ddim(m64, d10, xb.double(), kw(yb), clip=False)
            if spec["ddim7"]:
                f64["ddim7_out"] = run_ddim(m64, d7, xb.double(), kw(yb))
            if spec["eta"]:
                f64["ddim_eta_out"] = run_ddim(m64, d10, xb.double(), kw(yb), eta=0.5,
                                               step_noise=en.double())
            f64["ddpm_out"] = run_ddpm(m64, dp, xp.double(), kw(yb), sn.double())
        f64_err = {k: float(np.abs(v.numpy() - arrays[k].astype(np.float64)).max())
                   for k, v in f64.items()}

    for k, v in arrays.items():
        np.save(os.path.join(out, k + ".npy"), v)

    laplace_meta = None
    if spec["laplace"]:
        laplace_meta = make_laplace(name, ref_model, args, spec["laplace"])

    respaced = {"ddim10": d10, str(NUM_STEPS): dp}
    if spec["ddim7"]:
        respaced["ddim7"] = d7
    meta = {
        "name": name,
        "flags": args,
        "out_channels": out_channels,
        "T": T,
        "conditional": conditional,
        "model_var_type": dp.model_var_type.name,
        "max_abs_forward_out": max_fwd,
        "rms_forward_out": rms_fwd,
        "max_abs": {k: float(np.abs(v).max()) for k, v in arrays.items()
                    if k.endswith("_out")},
        "num_parameters": sum(p.numel() for p in ref_model.parameters()),
        "model_pt_store": spec["store"],
        "model_pt_dtypes": param_dtypes(state),
        "respacing": {
            r: {"timesteps_in_sampling_order": [int(v) for v in reversed(d.timestep_map)],
                "betas": [float(b) for b in d.betas]}
            for r, d in respaced.items()
        },
        "self_checks": self_checks,
        "f64_vs_f32_max_abs": f64_err,
        "notes": (
            f"guided-diffusion-sdk {SDK_VERSION}, torch {torch.__version__}. References in float32 "
            "with the weights as stored in model.pt (f16 ones widened exactly). Sampling loops "
            "run under torch.no_grad as guided-diffusion's do; schedule coefficients are "
            "float64 numpy arrays cast to float32 per use (_extract_into_tensor). The float64 "
            "comparison keeps the attention softmax in float32."
        ),
    }
    if laplace_meta:
        meta["laplace"] = laplace_meta["self_checks"]
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    return meta


def make_spacings() -> list:
    rows = []
    for T, spec in SPACINGS:
        row = {"steps": T, "respacing": spec}
        try:
            # create_gaussian_diffusion maps "" to [steps] (every step).
            steps = space_timesteps(T, spec if spec else [T])
            row["timesteps"] = sorted(int(v) for v in steps)
        except ValueError as e:
            row["error"] = True
            row["message"] = str(e)
        rows.append(row)
    with open(os.path.join(OUT_DIR, "space_timesteps.json"), "w") as f:
        json.dump(rows, f, indent=1)
        f.write("\n")
    return rows


def dir_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, fn)) for r, _, fns in os.walk(path) for fn in fns)


def main() -> int:
    if os.path.isdir(OUT_DIR):
        shutil.rmtree(OUT_DIR)
    os.makedirs(OUT_DIR)
    for spec in CONFIGS:
        meta = make_config(spec)
        print(f"{meta['name']}: out_channels {meta['out_channels']}, T {meta['T']}, "
              f"max |forward_out| {meta['max_abs_forward_out']:.4g}, "
              f"f64 vs f32 {meta['f64_vs_f32_max_abs']}")
        if "laplace" in meta:
            print(f"  laplace self-checks {meta['laplace']}")
    make_spacings()
    size = dir_size(OUT_DIR)
    print(f"total fixture size: {size} bytes")
    if size > SIZE_LIMIT:
        print(f"fixtures exceed {SIZE_LIMIT} bytes", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
