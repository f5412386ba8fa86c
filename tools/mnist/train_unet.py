"""Train the demo denoiser: a class-conditional diffusers UNet2DModel on 32x32 MNIST digits.

Data: train split, 28x28 digits zero-padded to 32x32, scaled to [-1, 1]; labels as
`class_labels` (num_class_embeds 10, no label dropout).
Objective: DDPM, linear betas 1e-4..0.02 over 1000 steps, epsilon prediction, MSE, t ~ U{0..999}.
Optimiser: AdamW (lr 1e-3, linear warmup, cosine decay to 10%), gradient clipping at 1,
EMA of the weights (decay min(0.999, (1+s)/(10+s))); the EMA weights are what gets exported.

Every checkpoint (about every 5 minutes, data/mnist/ckpt/unet.pt; a rerun resumes from it) also
exports the EMA model to assets/demo/unet/ in float16 (config.json,
diffusion_pytorch_model.safetensors) plus scheduler/scheduler_config.json (DDIMScheduler of the
training schedule), and checks that the float16 weights cast back to float32 still give the
float32 model's output. When training is done, 64 digits (DDIM 50 steps, eta 0, classes 0..9
repeated) are sampled from the exported weights into data/mnist/unet_samples.png and scored with
the evaluation CNN (train_classifier.py).

Run from the repository root:
  python3 tools/mnist/train_unet.py             train (or resume), export, sample
  python3 tools/mnist/train_unet.py --bench 20  time 20 training iterations, print FLOPs
  python3 tools/mnist/train_unet.py --sample    only sample + score the exported model
  python3 tools/mnist/train_unet.py --compare   score DDIM config variants (100 samples each)
"""

import argparse
import copy
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from PIL import Image

from common import ASSETS, CKPT, DATA, Log, count_flops, load_classifier, load_split, pad32

SEED = 777
BATCH = 32
ITERS = 6500
LR = 1e-3
WARMUP = 250
EMA_DECAY = 0.999
CKPT_EVERY_S = 300
OUT = os.path.join(ASSETS, "unet")

UNET = dict(
    sample_size=32,
    in_channels=1,
    out_channels=1,
    block_out_channels=(16, 32, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
    attention_head_dim=32,
    num_class_embeds=10,
)

TRAIN_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_schedule="linear",
    beta_start=0.0001,
    beta_end=0.02,
    prediction_type="epsilon",
)

# Sampling schedule shipped with the model (the engine runs DDIM 50 steps, eta 0).
DDIM = dict(
    TRAIN_SCHEDULE,
    clip_sample=True,
    clip_sample_range=1.0,
    set_alpha_to_one=True,
    steps_offset=1,
    timestep_spacing="leading",
)


def make_unet():
    torch.manual_seed(SEED)
    return UNet2DModel(**UNET)


def lr_factor(step):
    warm = min(1.0, (step + 1) / WARMUP)
    progress = min(1.0, step / ITERS)
    return warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def flops_per_image(model):
    x = torch.randn(2, 1, 32, 32)
    return count_flops(model, x, torch.tensor([10, 500]), class_labels=torch.tensor([3, 7]))


def export(ema, log):
    """EMA model -> assets/demo/unet (float16) + DDIM scheduler config; checks the f16 model."""
    half = copy.deepcopy(ema).half()
    half.save_pretrained(OUT, safe_serialization=True)
    DDIMScheduler(**DDIM).save_pretrained(os.path.join(OUT, "scheduler"))
    reloaded = UNet2DModel.from_pretrained(OUT, low_cpu_mem_usage=False).float().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 1, 32, 32, generator=g)
    t = torch.linspace(0, 999, 10).long()
    y = torch.arange(10)
    with torch.no_grad():
        ref = ema(x, t, class_labels=y).sample
        got = reloaded(x, t, class_labels=y).sample
    err = (got - ref).abs().max().item() / ref.abs().max().item()
    assert torch.isfinite(got).all() and err < 1e-2, err
    size = sum(
        os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(OUT) for f in fs
    )
    log(f"exported {OUT} (f16, {size} bytes); f16->f32 vs f32 max rel err {err:.2e}")


@torch.no_grad()
def sample(unet, labels, steps=50, seed=0, ddim=DDIM):
    """DDIM (eta 0) from N(0, I) noise; returns images in [-1, 1], [N,1,32,32]."""
    sched = DDIMScheduler(**ddim)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(labels), 1, 32, 32, generator=g)
    for t in sched.timesteps:
        eps = unet(x, t, class_labels=labels).sample
        x = sched.step(eps, t, x, eta=0.0).prev_sample
    return x.clamp(-1, 1)


def save_grid(images, path, cols=8, scale=3):
    imgs = ((images[:, 0].numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    n, h, w = imgs.shape
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2), 128, np.uint8)
    for i, im in enumerate(imgs):
        r, c = divmod(i, cols)
        grid[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + c * (w + 2) : 2 + c * (w + 2) + w] = im
    Image.fromarray(grid, mode="L").resize(
        (grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST
    ).save(path)


def score_samples(images, labels):
    """Evaluation-CNN accuracy of generated images w.r.t. their class labels."""
    clf = load_classifier()
    with torch.no_grad():
        logits = clf((images + 1) / 2)
    prob = logits.softmax(1)
    acc = (logits.argmax(1) == labels).float().mean().item()
    conf = prob[torch.arange(len(labels)), labels].mean().item()
    return acc, conf


def sample_and_score(log, n=64):
    unet = UNet2DModel.from_pretrained(OUT, low_cpu_mem_usage=False).float().eval()
    labels = torch.arange(n) % 10
    t0 = time.time()
    imgs = sample(unet, labels)
    log(f"sampled {n} digits (DDIM 50) in {time.time() - t0:.1f}s")
    path = os.path.join(DATA, "unet_samples.png")
    save_grid(imgs, path)
    acc, conf = score_samples(imgs, labels)
    log(f"wrote {path}; evaluation CNN: accuracy {acc:.4f}, mean p(label) {conf:.4f}")


def compare_schedules(log, n=100):
    """Evaluation-CNN accuracy of n samples (same noise) under DDIM variants of the shipped one."""
    unet = UNet2DModel.from_pretrained(OUT, low_cpu_mem_usage=False).float().eval()
    labels = torch.arange(n) % 10
    variants = {
        "leading, offset 1, alpha_to_one true (shipped)": {},
        "leading, offset 1, alpha_to_one false": dict(set_alpha_to_one=False),
        "trailing, offset 0, alpha_to_one false": dict(
            timestep_spacing="trailing", steps_offset=0, set_alpha_to_one=False
        ),
        "leading, offset 1, no clip_sample": dict(clip_sample=False),
    }
    for name, change in variants.items():
        imgs = sample(unet, labels, seed=1, ddim=dict(DDIM, **change))
        acc, conf = score_samples(imgs, labels)
        log(f"{name}: accuracy {acc:.3f}, mean p(label) {conf:.3f}")


def save_ckpt(path, state):
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(log, bench=0):
    xtr, ytr = load_split("train")
    data = torch.from_numpy(pad32(xtr)).float().unsqueeze(1) / 127.5 - 1.0
    labels = torch.from_numpy(ytr)
    model = make_unet()
    n_params = sum(p.numel() for p in model.parameters())
    gflop = flops_per_image(model) / 1e9
    log(f"UNet2DModel {UNET['block_out_channels']}: {n_params} params, {gflop:.4f} GFLOP/forward/image")
    assert gflop <= 0.2 and n_params <= 1.5e6
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    noise_sched = DDPMScheduler(**TRAIN_SCHEDULE)
    gen = torch.Generator().manual_seed(SEED)
    step, losses = 0, []
    os.makedirs(CKPT, exist_ok=True)
    ckpt_path = os.path.join(CKPT, "unet.pt")
    if os.path.exists(ckpt_path) and not bench:
        ck = torch.load(ckpt_path, map_location="cpu")
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        gen.set_state(ck["gen"])
        step, losses = ck["step"], ck["losses"]
        log(f"resumed at step {step}")
    iters = bench or ITERS

    def checkpoint():
        save_ckpt(
            ckpt_path,
            {
                "model": model.state_dict(),
                "ema": ema.state_dict(),
                "opt": opt.state_dict(),
                "sched": sched.state_dict(),
                "gen": gen.get_state(),
                "step": step,
                "losses": losses,
            },
        )
        export(ema, log)

    model.train()
    t_last = time.time()
    t_start, step_start = time.time(), step
    while step < iters:
        idx = torch.randint(0, len(data), (BATCH,), generator=gen)
        x0, y = data[idx], labels[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, 1000, (BATCH,), generator=gen)
        xt = noise_sched.add_noise(x0, noise, t)
        loss = F.mse_loss(model(xt, t, class_labels=y).sample, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        decay = min(EMA_DECAY, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        losses.append(loss.item())
        if step % 100 == 0 or bench:
            rate = (time.time() - t_start) / (step - step_start)
            log(
                f"step {step}/{iters} loss(avg100) {np.mean(losses[-100:]):.4f} "
                f"lr {sched.get_last_lr()[0]:.2e} {rate:.3f} s/iter"
            )
        if not bench and (time.time() - t_last > CKPT_EVERY_S or step == iters):
            checkpoint()
            t_last = time.time()
    if bench:
        log(f"bench: {(time.time() - t_start) / bench:.3f} s/iter at batch {BATCH}")
        return False
    log(f"training done: {step} iterations, final loss(avg500) {np.mean(losses[-500:]):.4f}")
    if not os.path.exists(os.path.join(OUT, "config.json")):
        checkpoint()
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", type=int, default=0, help="time N iterations, no checkpoint")
    ap.add_argument("--sample", action="store_true", help="only sample the exported model")
    ap.add_argument("--compare", action="store_true", help="score DDIM config variants")
    args = ap.parse_args()
    torch.set_num_threads(1)
    log = Log()
    if args.compare:
        compare_schedules(log)
    elif args.sample or train(log, args.bench):
        sample_and_score(log)


if __name__ == "__main__":
    main()
