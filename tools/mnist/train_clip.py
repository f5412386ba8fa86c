"""Train the demo feature extractor: a small transformers CLIPVisionModelWithProjection on
1-channel 32x32 digits, as a digit classifier (a linear head on the projected `image_embeds`,
cross-entropy). The head is not exported; the engine uses `image_embeds` (32-d) as features.

Preprocessing is exactly the saved CLIPImageProcessor's: 28x28 digits zero-padded to 32x32
(uint8), then resize (shortest edge 32: identity here) + centre crop 32 (identity) +
x / 255 + normalise with mean 0.5, std 0.5, i.e. pixel_values = (x / 255 - 0.5) / 0.5.
Training applies that arithmetic to randomly shifted (up to 2 pixels) padded digits.

Output: assets/demo/clip/{config.json, model.safetensors (float32), preprocessor_config.json}.
A per-epoch checkpoint in data/mnist/ckpt/clip.pt makes a rerun resume where it stopped.
After export, the saved processor + model are reloaded and run on PIL grayscale images of the
held-out split; their accuracy must match the in-training evaluation.

Run from the repository root:  python3 tools/mnist/train_clip.py
"""

import math
import os

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from common import ASSETS, CKPT, Log, load_split, pad32, random_shift

SEED = 4321
EPOCHS = 15
BATCH = 64
LR = 2e-3
OUT = os.path.join(ASSETS, "clip")

CONFIG = dict(
    num_channels=1,
    image_size=32,
    patch_size=4,
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=128,
    projection_dim=32,
    hidden_act="quick_gelu",
)

PROCESSOR = dict(
    do_resize=True,
    size={"shortest_edge": 32},
    do_center_crop=True,
    crop_size={"height": 32, "width": 32},
    do_rescale=True,
    rescale_factor=1 / 255,
    do_normalize=True,
    image_mean=[0.5],
    image_std=[0.5],
    resample=3,
    do_convert_rgb=False,
)


def normalise(pixels):
    """float32 pixels in [0, 255] -> the processor's pixel_values, bit for bit (its rescale
    rounds x * (1/255) in float64 to float32, which equals float32 x / 255 on 0..255)."""
    return (pixels / 255 - 0.5) / 0.5


class Classifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(SEED)
        self.clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**CONFIG))
        self.head = torch.nn.Linear(CONFIG["projection_dim"], 10)

    def forward(self, pixel_values):
        return self.head(self.clip(pixel_values=pixel_values).image_embeds)


def accuracy(model, pixel_values, labels):
    model.eval()
    with torch.no_grad():
        pred = torch.cat(
            [model(pixel_values[i : i + 500]).argmax(1) for i in range(0, len(labels), 500)]
        )
    return (pred == labels).float().mean().item()


def main():
    torch.set_num_threads(1)
    log = Log()
    xtr, ytr = load_split("train")
    xho_u8, yho = load_split("heldout")
    xtr = torch.from_numpy(pad32(xtr)).float().unsqueeze(1)  # [N,1,32,32] in [0,255]
    ytr = torch.from_numpy(ytr)
    yho = torch.from_numpy(yho)
    xho = normalise(torch.from_numpy(pad32(xho_u8)).float().unsqueeze(1))

    model = Classifier()
    n_clip = sum(p.numel() for p in model.clip.parameters())
    log(f"CLIP vision params {n_clip}")
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.05)
    gen = torch.Generator().manual_seed(SEED)
    steps_per_epoch = math.ceil(len(xtr) / BATCH)
    total = EPOCHS * steps_per_epoch
    warm = 2 * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * s / total))
    )
    os.makedirs(CKPT, exist_ok=True)
    ckpt_path = os.path.join(CKPT, "clip.pt")
    start = 0
    if os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, map_location="cpu")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        gen.set_state(ck["gen"])
        start = ck["epoch"]
        log(f"resumed after epoch {start}")

    for epoch in range(start, EPOCHS):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        tot_loss = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * BATCH : (i + 1) * BATCH]
            x = normalise(random_shift(xtr[idx], 2, gen))
            loss = F.cross_entropy(model(x), ytr[idx])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            tot_loss += loss.item() * len(idx)
        acc = accuracy(model, xho, yho)
        log(f"epoch {epoch + 1}/{EPOCHS} loss {tot_loss / len(xtr):.4f} heldout acc {acc:.4f}")
        torch.save(
            {
                "model": model.state_dict(),
                "opt": opt.state_dict(),
                "sched": sched.state_dict(),
                "gen": gen.get_state(),
                "epoch": epoch + 1,
            },
            ckpt_path,
        )

    acc_train_eval = accuracy(model, xho, yho)
    model.clip.save_pretrained(OUT, safe_serialization=True)
    CLIPImageProcessor(**PROCESSOR).save_pretrained(OUT)

    # Reload both from disk and classify PIL grayscale images through the saved processor.
    clip = CLIPVisionModelWithProjection.from_pretrained(OUT).eval()
    proc = CLIPImageProcessor.from_pretrained(OUT)
    pil = [Image.fromarray(im, mode="L") for im in pad32(xho_u8)]
    pv = proc(images=pil, return_tensors="pt")["pixel_values"]
    assert torch.equal(pv, xho), float((pv - xho).abs().max())
    with torch.no_grad():
        emb = clip(pixel_values=pv).image_embeds
        acc_reload = (model.head(emb).argmax(1) == yho).float().mean().item()
    log(f"heldout acc in training {acc_train_eval:.4f}, reloaded processor+model {acc_reload:.4f}")
    assert abs(acc_reload - acc_train_eval) < 1e-9
    size = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    log(f"exported {OUT}: {sorted(os.listdir(OUT))}, {size} bytes")


if __name__ == "__main__":
    main()
