"""Shared pieces of the MNIST demo scripts: paths, data, augmentation, FLOP counting, the
evaluation CNN. Images are handled as uint8 [N, 28, 28] until they are padded to 32x32."""

import os
import time

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "data", "mnist")
CKPT = os.path.join(DATA, "ckpt")
ASSETS = os.path.join(ROOT, "assets", "demo")


def load_split(name):
    """(images uint8 [N,28,28], labels int64 [N]) of `train` or `heldout` (fetch_data.py)."""
    path = os.path.join(DATA, f"{name}.npz")
    if not os.path.exists(path):
        raise SystemExit(f"{path} missing: run tools/mnist/fetch_data.py first")
    d = np.load(path)
    return d["images"], d["labels"]


def pad32(images):
    """uint8 [N,28,28] -> uint8 [N,32,32], digit centred (2 zero pixels on every side)."""
    return np.pad(images, ((0, 0), (2, 2), (2, 2)))


def random_shift(x, max_shift, gen):
    """Shift each image of x [N,1,H,W] by an integer offset in [-max_shift, max_shift] on
    each axis, filling with zeros (x must be 0 at its border, i.e. in pixel units)."""
    n, _, h, w = x.shape
    p = max_shift
    xp = F.pad(x, (p, p, p, p))
    off = torch.randint(0, 2 * p + 1, (n, 2), generator=gen)
    rows = off[:, 0, None] + torch.arange(h)  # [N,H]
    cols = off[:, 1, None] + torch.arange(w)  # [N,W]
    idx_n = torch.arange(n)[:, None, None]
    return xp[idx_n, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


def count_flops(model, *args, **kwargs):
    """FLOPs per image of one forward: 2 * MACs of every Conv2d and Linear (forward hooks)."""
    total = [0]

    def hook(mod, _inp, out):
        if isinstance(mod, torch.nn.Conv2d):
            total[0] += 2 * out.numel() * mod.weight[0].numel()
        else:
            total[0] += 2 * out.numel() * mod.in_features

    hooks = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    with torch.no_grad():
        model(*args, **kwargs)
    for h in hooks:
        h.remove()
    batch = args[0].shape[0]
    return total[0] / batch


class DigitCNN(torch.nn.Module):
    """Evaluation classifier, independent of the shipped CLIP model.

    Input: float [N,1,32,32] in [0, 1] (28x28 digits zero-padded to 32x32).
    `features(x)` is the 64-d penultimate layer (after ReLU); `forward` gives 10 logits."""

    FEATURE_DIM = 64

    def __init__(self):
        super().__init__()
        c = torch.nn.Conv2d
        self.conv1 = c(1, 32, 3, padding=1)
        self.conv2 = c(32, 32, 3, padding=1)
        self.conv3 = c(32, 64, 3, padding=1)
        self.conv4 = c(64, 64, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(32)
        self.bn2 = torch.nn.BatchNorm2d(32)
        self.bn3 = torch.nn.BatchNorm2d(64)
        self.bn4 = torch.nn.BatchNorm2d(64)
        self.fc = torch.nn.Linear(64 * 8 * 8, self.FEATURE_DIM)
        self.drop = torch.nn.Dropout(0.3)
        self.head = torch.nn.Linear(self.FEATURE_DIM, 10)

    def features(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.bn3(self.conv3(x)))
        x = F.max_pool2d(F.relu(self.bn4(self.conv4(x))), 2)
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, x):
        return self.head(self.drop(self.features(x)))


def load_classifier(path=None):
    """The trained DigitCNN (eval mode) from data/mnist/classifier.pt."""
    path = path or os.path.join(DATA, "classifier.pt")
    model = DigitCNN()
    model.load_state_dict(torch.load(path, map_location="cpu")["state_dict"])
    return model.eval()


class DigitMLP(torch.nn.Module):
    """Second evaluation judge, of a different architecture from DigitCNN and independent of the
    shipped CLIP model and of the sampler: a plain MLP on the 1,024 pixels.

    Input: float [N,1,32,32] in [0, 1] (as DigitCNN). 1024 -> 256 -> 64 (ReLU after each) -> 10;
    `features(x)` is the 64-d second hidden layer (after ReLU), `forward` gives 10 logits."""

    FEATURE_DIM = 64
    HIDDEN = 256

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(32 * 32, self.HIDDEN)
        self.fc2 = torch.nn.Linear(self.HIDDEN, self.FEATURE_DIM)
        self.drop = torch.nn.Dropout(0.2)
        self.head = torch.nn.Linear(self.FEATURE_DIM, 10)

    def features(self, x):
        x = F.relu(self.fc1(x.flatten(1)))
        return F.relu(self.fc2(self.drop(x)))

    def forward(self, x):
        return self.head(self.drop(self.features(x)))


def load_judge_mlp(path=None):
    """The trained DigitMLP (eval mode) from data/mnist/judge_mlp.pt."""
    path = path or os.path.join(DATA, "judge_mlp.pt")
    if not os.path.exists(path):
        raise SystemExit(f"{path} missing: run tools/mnist/train_judge_mlp.py first")
    model = DigitMLP()
    model.load_state_dict(torch.load(path, map_location="cpu")["state_dict"])
    return model.eval()


class Log:
    """Print with elapsed seconds, flushed (the scripts run under nohup)."""

    def __init__(self):
        self.t0 = time.time()

    def __call__(self, msg):
        print(f"[{time.time() - self.t0:7.1f}s] {msg}", flush=True)
