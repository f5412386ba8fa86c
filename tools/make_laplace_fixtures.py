#!/usr/bin/env python3
"""Parity fixtures for the last-layer Laplace fit (`src/laplace.rs`) and training-image loading.

For two fixture models of `tests/fixtures/unet/` (random weights, built by make_unet_fixtures.py)
it writes `tests/fixtures/laplace/<model>/` with FIXED injected fit inputs

    x0 [N,C,H,W] f32 in [-1, 1], t int64 [N], eps [N,C,H,W] f32, class int64 [N] (conditional)

and references computed with torch.func on the diffusers model in float32:

    ef_diag [P] f32      0.5 * sum_n g_n^2, g_n = d/d(conv_out.weight, conv_out.bias) of
                         loss_n = sum over positions and the first `channels_in_loss` output
                         channels of (out - target)^2; weights (cout, cin, 3, 3) flattened, then bias.
                         `vmap(grad(...))` over the whole UNet via `functional_call`, checked against
                         a per-sample autograd loop.
    ef_diag_loss2 [P]    the same with channels_in_loss = 2 (3-channel model only).
    ggn_a [J,J] f32      J = cin*9 + 1: the Kronecker factor A of the explicit Gauss-Newton matrix
                         GN = sum_n J_n^T J_n (J_n = d out_n / d params via `jacrev`, params ordered
                         per output channel as (w[co] flattened (ci, kh, kw), b[co])). The script
                         asserts GN == I_cout (x) A and GN == Hessian of 0.5 * sum_n loss_n.
    ggn_diag [P] f32     diag(GN) in the ef_diag order (weights then bias).
    meta.json            prediction type, channels in loss, sizes, self-check errors.

`target` is what the model is trained to predict (scheduler `prediction_type`): eps for
"epsilon", v = sqrt(abar) eps - sqrt(1 - abar) x0 for "v_prediction", x0 for "sample";
x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with the scheduler's f32 `alphas_cumprod`.

It also writes `tests/fixtures/laplace/images/`: small PNG/JPEG files and the arrays a training
pipeline (PIL `convert("RGB"/"L")`, torchvision-style CenterCrop with Python `round`, optional
horizontal flip, ToTensor + Normalize(0.5, 0.5)) makes of them at size 8, HWC f32:

    <file>.c<channels>.npy  [2, 8, 8, channels]: unflipped, flipped

Run from the repository root: `python3 tools/make_laplace_fixtures.py`. Deterministic.
"""

import json
import os
import shutil
import sys

import numpy as np
import torch
from PIL import Image
from torch.func import functional_call, grad, hessian, jacrev, vmap

import diffusers
from diffusers import DDIMScheduler, UNet2DModel

torch.set_num_threads(1)
diffusers.utils.logging.set_verbosity_error()

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
UNET_DIR = os.path.join(ROOT, "tests", "fixtures", "unet")
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "laplace")
SIZE_LIMIT = 300_000
LAST = "conv_out"

CASES = [
    {"model": "gray_cond_multihead_f16", "t": [0, 263, 640, 999], "seed": 71, "loss2": False},
    {"model": "cifar_like_old_names_f32", "t": [999, 12, 500], "seed": 72, "loss2": True},
]

IMAGE_SIZE = 8


def np_f32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy().astype(np.float32))


def make_case(case: dict) -> dict:
    name = case["model"]
    model_dir = os.path.join(UNET_DIR, name, "model")
    out = os.path.join(OUT_DIR, name)
    os.makedirs(out, exist_ok=True)

    model = UNet2DModel.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    sched = DDIMScheduler.from_pretrained(model_dir, subfolder="scheduler")
    cfg = model.config
    c, s, cout = cfg.in_channels, cfg.sample_size, cfg.out_channels
    cin = cfg.block_out_channels[0]
    conditional = cfg.num_class_embeds is not None
    gen = torch.Generator().manual_seed(case["seed"])

    n = len(case["t"])
    x0 = torch.rand(n, c, s, s, generator=gen) * 2 - 1
    eps = torch.randn(n, c, s, s, generator=gen)
    t = torch.tensor(case["t"], dtype=torch.int64)
    cls = torch.randint(0, cfg.num_class_embeds, (n,), generator=gen) if conditional else None
    abar = sched.alphas_cumprod.to(torch.float32)[t].view(n, 1, 1, 1)
    xt = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    pred = sched.config.prediction_type
    if pred == "epsilon":
        target = eps
    elif pred == "v_prediction":
        target = abar.sqrt() * eps - (1 - abar).sqrt() * x0
    elif pred == "sample":
        target = x0
    else:
        raise ValueError(pred)

    frozen = {k: v.detach() for k, v in model.named_parameters() if not k.startswith(LAST + ".")}
    buffers = dict(model.named_buffers())
    ll = {k: v.detach().clone() for k, v in model.named_parameters() if k.startswith(LAST + ".")}
    assert set(ll) == {LAST + ".weight", LAST + ".bias"}
    cls_in = cls if conditional else torch.zeros(n, dtype=torch.int64)

    def forward(llp, x, tt, y):
        kw = {"class_labels": y[None]} if conditional else {}
        return functional_call(model, ({**frozen, **llp}, buffers), (x[None], tt[None]), kw).sample[0]

    def loss_single(llp, x, tt, y, tgt, c_loss):
        o = forward(llp, x, tt, y)
        return ((o[:c_loss] - tgt[:c_loss]) ** 2).sum()

    def ef_diag(c_loss):
        g = vmap(grad(loss_single), in_dims=(None, 0, 0, 0, 0, None))(ll, xt, t, cls_in, target, c_loss)
        flat = torch.cat([g[LAST + ".weight"].reshape(n, -1), g[LAST + ".bias"].reshape(n, -1)], 1)
        # Independent per-sample autograd loop.
        loop = []
        for i in range(n):
            p = {k: v.clone().requires_grad_(True) for k, v in ll.items()}
            li = loss_single(p, xt[i], t[i], cls_in[i], target[i], c_loss)
            gw, gb = torch.autograd.grad(li, [p[LAST + ".weight"], p[LAST + ".bias"]])
            loop.append(torch.cat([gw.reshape(-1), gb.reshape(-1)]))
        loop = torch.stack(loop)
        err = (flat - loop).abs().max().item() / loop.abs().max().item()
        assert err < 1e-5, f"{name}: vmap vs loop gradients differ by {err}"
        return (0.5 * (flat.double() ** 2).sum(0)).float(), err

    ef, vmap_err = ef_diag(cout)
    arrays = {"x0": np_f32(x0), "t": t.numpy(), "eps": np_f32(eps), "ef_diag": np_f32(ef)}
    if conditional:
        arrays["class"] = cls.numpy()
    if case["loss2"]:
        ef2, _ = ef_diag(2)
        assert torch.all(ef2.view(-1)[2 * cin * 9 : cout * cin * 9] == 0)
        arrays["ef_diag_loss2"] = np_f32(ef2)

    # Explicit Gauss-Newton: per-channel parameter order (w[co] flattened, b[co]).
    jdim = cin * 9 + 1

    def out_of_flat(theta, x, tt, y):
        th = theta.view(cout, jdim)
        llp = {LAST + ".weight": th[:, :-1].reshape(cout, cin, 3, 3), LAST + ".bias": th[:, -1]}
        return forward(llp, x, tt, y).reshape(-1)

    theta0 = torch.cat([ll[LAST + ".weight"].reshape(cout, -1), ll[LAST + ".bias"].view(cout, 1)], 1).reshape(-1)
    gn = torch.zeros(cout * jdim, cout * jdim, dtype=torch.float64)
    for i in range(n):
        jac = jacrev(out_of_flat)(theta0, xt[i], t[i], cls_in[i]).double()
        gn += jac.T @ jac
    a = gn[:jdim, :jdim]
    kron = torch.kron(torch.eye(cout, dtype=torch.float64), a)
    kron_err = (gn - kron).abs().max().item() / a.abs().max().item()
    assert kron_err < 1e-5, f"{name}: GN is not I (x) A: {kron_err}"

    def half_loss_flat(theta):
        tot = 0.0
        for i in range(n):
            o = out_of_flat(theta, xt[i], t[i], cls_in[i])
            tot = tot + ((o - target[i].reshape(-1)) ** 2).sum()
        return 0.5 * tot

    hess = hessian(half_loss_flat)(theta0).double()
    hess_err = (hess - gn).abs().max().item() / a.abs().max().item()
    assert hess_err < 1e-4, f"{name}: Hessian of 0.5 * loss differs from GN by {hess_err}"

    # diag(GN) in weights-then-bias order.
    d = torch.diagonal(gn).view(cout, jdim)
    gn_diag = torch.cat([d[:, :-1].reshape(-1), d[:, -1]])
    arrays["ggn_a"] = np_f32(a)
    arrays["ggn_diag"] = np_f32(gn_diag)

    for k, v in arrays.items():
        np.save(os.path.join(out, k + ".npy"), v)
    meta = {
        "model": name,
        "prediction_type": pred,
        "channels_in_loss": cout,
        "num_images": n,
        "cin": cin,
        "cout": cout,
        "max_ef_diag": float(ef.abs().max()),
        "max_ggn_a": float(a.abs().max()),
        "self_checks": {
            "vmap_vs_loop_grad_rel": vmap_err,
            "gn_minus_kron_rel": kron_err,
            "hessian_half_loss_minus_gn_rel": hess_err,
        },
        "notes": (
            f"diffusers {diffusers.__version__}, torch {torch.__version__}; float32 forward, "
            "GN accumulated in float64. ef_diag = 0.5 * sum_n g_n^2 (laplace-torch's regression "
            "factor); ggn_a: GN of the sum of squares scaled by 0.5, i.e. sum_n J_n^T J_n."
        ),
    }
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    return meta


def center_crop_box(w: int, h: int, size: int):
    """torchvision CenterCrop offsets (Python round: ties to even)."""
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return left, top


def image_reference(img: Image.Image, channels: int) -> np.ndarray:
    img = img.convert("RGB" if channels == 3 else "L")
    left, top = center_crop_box(img.width, img.height, IMAGE_SIZE)
    arr = np.asarray(img.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE)), dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    x = torch.from_numpy(arr.astype(np.float32)) / 255.0
    x = (x - 0.5) / 0.5
    x = x.numpy()
    return np.ascontiguousarray(np.stack([x, x[:, ::-1, :]]).astype(np.float32))


def make_images() -> list:
    out = os.path.join(OUT_DIR, "images")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(5)
    files = []
    # RGB 11 wide x 13 high: left offset round(1.5) = 2, top round(2.5) = 2.
    rgb = Image.fromarray(rng.integers(0, 256, (13, 11, 3), dtype=np.uint8), "RGB")
    rgb.save(os.path.join(out, "rgb_w11_h13.png"))
    files.append("rgb_w11_h13.png")
    # Gray 10 wide x 9 high: left round(1.0) = 1, top round(0.5) = 0.
    gray = Image.fromarray(rng.integers(0, 256, (9, 10), dtype=np.uint8), "L")
    gray.save(os.path.join(out, "gray_w10_h9.png"))
    files.append("gray_w10_h9.png")
    # RGBA, exactly the model size (alpha is dropped by convert("RGB")).
    rgba = Image.fromarray(rng.integers(0, 256, (8, 8, 4), dtype=np.uint8), "RGBA")
    os.makedirs(os.path.join(out, "nested"), exist_ok=True)
    rgba.save(os.path.join(out, "nested", "rgba_w8_h8.png"))
    files.append("nested/rgba_w8_h8.png")
    # Smooth RGB JPEG, 4:4:4, so decoders differ only by IDCT rounding.
    yy, xx = np.mgrid[0:12, 0:12]
    smooth = np.stack([xx * 20, yy * 20, (xx + yy) * 10], -1).astype(np.uint8)
    Image.fromarray(smooth, "RGB").save(os.path.join(out, "smooth_w12_h12.jpg"), quality=95, subsampling=0)
    files.append("smooth_w12_h12.jpg")
    for rel in files:
        img = Image.open(os.path.join(out, rel))
        img.load()
        for ch in (1, 3):
            np.save(os.path.join(out, rel.replace("/", "__") + f".c{ch}.npy"), image_reference(img, ch))
    return files


def dir_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main() -> int:
    if os.path.isdir(OUT_DIR):
        shutil.rmtree(OUT_DIR)
    os.makedirs(OUT_DIR)
    for case in CASES:
        meta = make_case(case)
        print(f"{meta['model']}: {meta['prediction_type']}, self-checks {meta['self_checks']}")
    files = make_images()
    print(f"images: {files}")
    size = dir_size(OUT_DIR)
    print(f"total fixture size: {size} bytes")
    if size > SIZE_LIMIT:
        print(f"fixtures exceed {SIZE_LIMIT} bytes", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
