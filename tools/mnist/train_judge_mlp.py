"""Train the second evaluation judge (common.DigitMLP: an MLP on the 32x32 pixels, 1024 -> 256
-> 64 -> 10) on the same 8,000-digit train split as the evaluation CNN. Like the CNN it is used
only to judge generated digits (accuracy on the conditioning class and a 64-d feature space); the
sampler and the shipped feature extractor never see it.

Input convention: float [N,1,32,32] in [0, 1], digits zero-padded 28->32 (as the CNN).
Augmentation: random integer shifts of up to 2 pixels. AdamW, cosine schedule, fixed seed.
Output: data/mnist/judge_mlp.pt ({"state_dict", "heldout_accuracy", ...}); a per-epoch
checkpoint in data/mnist/ckpt/judge_mlp.pt makes a rerun resume where it stopped.

Run from the repository root:  python3 tools/mnist/train_judge_mlp.py
"""

import math
import os

import torch
import torch.nn.functional as F

from common import CKPT, DATA, DigitMLP, Log, load_split, pad32, random_shift

SEED = 4321
EPOCHS = 30
BATCH = 64
LR = 1e-3


def to_input(images_u8):
    return torch.from_numpy(pad32(images_u8)).float().unsqueeze(1) / 255.0


def accuracy(model, x, y):
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + 500]).argmax(1) for i in range(0, len(x), 500)])
    return (pred == y).float().mean().item()


def main():
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    log = Log()
    xtr, ytr = load_split("train")
    xho, yho = load_split("heldout")
    xtr, ytr = to_input(xtr), torch.from_numpy(ytr)
    xho, yho = to_input(xho), torch.from_numpy(yho)

    model = DigitMLP()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(SEED)
    steps_per_epoch = math.ceil(len(xtr) / BATCH)
    total = EPOCHS * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * s / total))
    )
    os.makedirs(CKPT, exist_ok=True)
    ckpt_path = os.path.join(CKPT, "judge_mlp.pt")
    start = 0
    if os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, map_location="cpu")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        gen.set_state(ck["gen"])
        torch.set_rng_state(ck["torch_rng"])
        start = ck["epoch"]
        log(f"resumed after epoch {start}")
    log(f"params {sum(p.numel() for p in model.parameters())}")

    for epoch in range(start, EPOCHS):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        tot_loss = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * BATCH : (i + 1) * BATCH]
            x = random_shift(xtr[idx], 2, gen)
            loss = F.cross_entropy(model(x), ytr[idx])
            opt.zero_grad()
            loss.backward()
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
                "torch_rng": torch.get_rng_state(),
                "epoch": epoch + 1,
            },
            ckpt_path,
        )

    acc_tr = accuracy(model, xtr, ytr)
    acc_ho = accuracy(model, xho, yho)
    out = os.path.join(DATA, "judge_mlp.pt")
    torch.save(
        {
            "state_dict": model.state_dict(),
            "heldout_accuracy": acc_ho,
            "train_accuracy": acc_tr,
            "input": "float [N,1,32,32] in [0,1], 28x28 digits zero-padded to 32x32",
            "feature_dim": DigitMLP.FEATURE_DIM,
        },
        out,
    )
    from common import load_judge_mlp

    acc_reload = accuracy(load_judge_mlp(out), xho, yho)
    assert abs(acc_reload - acc_ho) < 1e-9, (acc_reload, acc_ho)
    log(f"saved {out}: train acc {acc_tr:.4f}, heldout acc {acc_ho:.4f}")


if __name__ == "__main__":
    main()
