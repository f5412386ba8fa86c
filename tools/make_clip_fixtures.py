#!/usr/bin/env python3
"""Parity fixtures for the CLIP vision feature extractor and its image preprocessing.

Models (tiny random-weight `CLIPVisionModelWithProjection`s under `tests/fixtures/clip/<name>/`):

    model/config.json               transformers config (model_type clip_vision_model)
    model/model.safetensors         weights (f32, or f16 for `gray_gelu_f16`)
    model/preprocessor_config.json  CLIPImageProcessor config matching the model's input
    pixels.npy                      [N, C, H, W] float32 model input
    image_embeds.npy                [N, projection_dim] float32 = model(pixels).image_embeds, computed
                                    in float32 with the weights exactly as stored in the file

    rgb_quick_gelu_f32: image 32, patch 8, hidden 32, 2 layers, 4 heads, mlp 64, projection 16, RGB
    gray_gelu_f16:      the same shape with 1 channel, exact-erf `gelu`, f16 weights
    rgb_quick_gelu_f32 also has photo_embeds.npy: its preprocessor applied to photo.png, then the model

Preprocessing (`tests/fixtures/clip/preprocess/`):

    photo.png        sklearn's `china.jpg` downscaled with PIL (bicubic) to 160x107, RGB u8
    <case>.json      the CLIPImageProcessor config of one case, plus "input": which image is fed
                     ("rgb": photo.png; "gray": its first channel as an HxWx1 array;
                     "rgb_float": photo.png / 255 as float32, processed by the float path)
    <case>.npy       [C, H, W] float32: the processor's `pixel_values[0]` (`rgb_float`: see below)
    openai_224.png   the 224-crop case stored losslessly as 8-bit levels q (HWC, RGB): the processor
                     output equals ((q * rescale_factor) as float32 - mean) / std bit for bit, which
                     this script asserts; a float32 .npy of it would be 600 KB

The float path has no transformers counterpart (transformers quantises float input to u8); its
reference resizes each channel with PIL in 32-bit float mode ("F", same filter, no rounding), clips
to [0, 1], then crops, rescales (x * 255 * rescale_factor) and normalises like the processor.

The processor is transformers' PIL `CLIPImageProcessor` (what `CLIPImageProcessor` is without
torchvision): resize through PIL, center crop, rescale, normalise. Run from the repository root:
`python3 tools/make_clip_fixtures.py`. Deterministic (fixed seeds).
"""

import json
import os
import shutil

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_sample_image

import transformers
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection

torch.set_num_threads(1)
transformers.utils.logging.set_verbosity_error()

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "clip")
SIZE_LIMIT = 400_000

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]

TINY = dict(
    image_size=32,
    patch_size=8,
    hidden_size=32,
    intermediate_size=64,
    projection_dim=16,
    num_hidden_layers=2,
    num_attention_heads=4,
    layer_norm_eps=1e-5,
    attention_dropout=0.0,
)

MODELS = [
    {
        "name": "rgb_quick_gelu_f32",
        "config": dict(TINY, num_channels=3, hidden_act="quick_gelu"),
        "dtype": torch.float32,
        "batch": 2,
        "seed": 1,
        "preprocess": dict(
            size={"shortest_edge": 32},
            crop_size={"height": 32, "width": 32},
            image_mean=OPENAI_MEAN,
            image_std=OPENAI_STD,
        ),
    },
    {
        "name": "gray_gelu_f16",
        "config": dict(TINY, num_channels=1, hidden_act="gelu"),
        "dtype": torch.float16,
        "batch": 2,
        "seed": 2,
        "preprocess": dict(
            size={"shortest_edge": 32},
            crop_size={"height": 32, "width": 32},
            image_mean=[0.5],
            image_std=[0.5],
            do_convert_rgb=False,
        ),
    },
]

# Preprocessing cases: processor kwargs and the input they are applied to.
PREPROCESS_CASES = {
    # Standard openai/clip-vit-base-patch32 values: upscales 107x160 to 224x334, crops 224.
    "openai_224": dict(input="rgb", kwargs=dict(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})),
    # Downscaling (antialiased bicubic) to 40x59, crop 32.
    "small_rgb": dict(input="rgb", kwargs=dict(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32})),
    # One channel in, replicated to RGB by do_convert_rgb.
    "small_gray_to_rgb": dict(
        input="gray", kwargs=dict(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32})
    ),
    # One channel kept (do_convert_rgb false), scalar-like one-element mean/std.
    "small_gray": dict(
        input="gray",
        kwargs=dict(
            size={"shortest_edge": 36},
            crop_size={"height": 32, "width": 32},
            do_convert_rgb=False,
            image_mean=[0.5],
            image_std=[0.25],
        ),
    ),
    # Crop larger than the resized image: zero padding before rescale/normalise.
    "crop_pads": dict(input="rgb", kwargs=dict(size={"shortest_edge": 24}, crop_size={"height": 32, "width": 40})),
    # Fixed height/width resize, bilinear filter, odd crop.
    "hw_bilinear": dict(
        input="rgb",
        kwargs=dict(size={"height": 50, "width": 37}, crop_size={"height": 31, "width": 29}, resample=2),
    ),
    # shortest_edge with longest_edge cap.
    "longest_edge": dict(
        input="rgb", kwargs=dict(size={"shortest_edge": 48, "longest_edge": 60}, crop_size={"height": 32, "width": 32})
    ),
    # The other PIL filters PIL resize offers besides NEAREST (lanczos 1, box 4, hamming 5).
    "lanczos": dict(input="rgb", kwargs=dict(size={"shortest_edge": 20}, crop_size={"height": 16, "width": 16}, resample=1)),
    "box": dict(input="rgb", kwargs=dict(size={"shortest_edge": 20}, crop_size={"height": 16, "width": 16}, resample=4)),
    "hamming": dict(input="rgb", kwargs=dict(size={"shortest_edge": 20}, crop_size={"height": 16, "width": 16}, resample=5)),
    # Float input in [0, 1], resized in float (reference: PIL mode "F").
    "small_rgb_float": dict(
        input="rgb_float", kwargs=dict(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32})
    ),
}


def randomize_(model, seed):
    """Re-draw every parameter so that no layer is an identity or zero (LayerNorms included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith(".weight"):
                p.copy_(1.0 + 0.3 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.1 * noise)
            elif "embedding" in name:
                p.copy_(0.5 * noise)
            else:
                fan_in = p[0].numel()
                p.copy_(noise / fan_in**0.5)


def processor(**kwargs):
    return CLIPImageProcessorPil(**kwargs)


def save_npy(path, arr):
    np.save(path, np.ascontiguousarray(arr))


def build_model(spec):
    out = os.path.join(OUT_DIR, spec["name"])
    model_dir = os.path.join(out, "model")
    os.makedirs(model_dir, exist_ok=True)
    torch.manual_seed(spec["seed"])
    config = CLIPVisionConfig(**spec["config"])
    model = CLIPVisionModelWithProjection(config).eval()
    randomize_(model, spec["seed"])
    # Round to the file dtype, save, and compute the reference with the stored weights in f32.
    model = model.to(spec["dtype"])
    model.save_pretrained(model_dir, safe_serialization=True)
    for extra in os.listdir(model_dir):
        if extra not in ("config.json", "model.safetensors"):
            os.remove(os.path.join(model_dir, extra))
    stored = load_file(os.path.join(model_dir, "model.safetensors"))
    assert all(t.dtype == spec["dtype"] for t in stored.values())
    model = model.float()
    processor(**spec["preprocess"]).save_pretrained(model_dir)

    g = torch.Generator().manual_seed(100 + spec["seed"])
    c, s = config.num_channels, config.image_size
    pixels = torch.randn(spec["batch"], c, s, s, generator=g)
    with torch.no_grad():
        embeds = model(pixel_values=pixels).image_embeds
    save_npy(os.path.join(out, "pixels.npy"), pixels.numpy())
    save_npy(os.path.join(out, "image_embeds.npy"), embeds.numpy())
    print(f"{spec['name']}: embeds {tuple(embeds.shape)} max|ref| {embeds.abs().max():.4f}")
    return model, model_dir


def photo():
    """sklearn's china.jpg, downscaled with PIL bicubic to 160x107 (W x H)."""
    big = Image.fromarray(load_sample_image("china.jpg"))
    return np.array(big.resize((160, 107), Image.BICUBIC))


def float_reference(img01, kw):
    """The float path: PIL mode-F resize per channel, clip [0,1], crop, rescale, normalise."""
    proc = processor(**kw)
    h, w, c = img01.shape
    size = proc.size
    if size.shortest_edge:
        short, long_ = (w, h) if w <= h else (h, w)
        new_long = int(size.shortest_edge * long_ / short)
        oh, ow = (new_long, size.shortest_edge) if w <= h else (size.shortest_edge, new_long)
    else:
        oh, ow = size.height, size.width
    chans = []
    for ch in range(c):
        im = Image.fromarray(np.ascontiguousarray(img01[:, :, ch]).astype(np.float32), mode="F")
        chans.append(np.array(im.resize((ow, oh), resample=proc.resample)))
    x = np.clip(np.stack(chans, 0), 0.0, 1.0).astype(np.float32)  # CHW
    ch_, cw = proc.crop_size.height, proc.crop_size.width
    top, left = (oh - ch_) // 2, (ow - cw) // 2
    assert top >= 0 and left >= 0
    x = x[:, top : top + ch_, left : left + cw]
    x = (x.astype(np.float64) * (255.0 * proc.rescale_factor)).astype(np.float32)
    mean = np.array(proc.image_mean, np.float32)[:, None, None]
    std = np.array(proc.image_std, np.float32)[:, None, None]
    return (x - mean) / std


def build_preprocess(rgb):
    out = os.path.join(OUT_DIR, "preprocess")
    os.makedirs(out, exist_ok=True)
    Image.fromarray(rgb).save(os.path.join(out, "photo.png"), optimize=True)
    assert np.array_equal(np.array(Image.open(os.path.join(out, "photo.png"))), rgb)
    inputs = {"rgb": rgb, "gray": rgb[:, :, :1].copy()}
    for case, spec in PREPROCESS_CASES.items():
        kw = spec["kwargs"]
        proc = processor(**kw)
        cfg = proc.to_dict()
        cfg["input"] = spec["input"]
        with open(os.path.join(out, f"{case}.json"), "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
        if spec["input"] == "rgb_float":
            ref = float_reference(rgb.astype(np.float32) / 255.0, kw)
        else:
            ref = proc(inputs[spec["input"]], return_tensors="np")["pixel_values"][0]
        assert ref.dtype == np.float32
        if case == "openai_224":
            # Lossless 8-bit encoding of the output, verified bit for bit.
            mean = np.array(proc.image_mean, np.float32)[:, None, None]
            std = np.array(proc.image_std, np.float32)[:, None, None]
            q = np.rint((ref * std + mean) * 255.0).astype(np.uint8)
            decoded = ((q.astype(np.float64) * proc.rescale_factor).astype(np.float32) - mean) / std
            assert np.array_equal(decoded, ref), "8-bit encoding of the 224 output is not exact"
            Image.fromarray(np.ascontiguousarray(q.transpose(1, 2, 0))).save(
                os.path.join(out, f"{case}.png"), optimize=True
            )
        else:
            save_npy(os.path.join(out, f"{case}.npy"), ref)
        print(f"preprocess {case}: {spec['input']} -> {ref.shape}")


def main():
    if os.path.isdir(OUT_DIR):
        shutil.rmtree(OUT_DIR)
    os.makedirs(OUT_DIR)
    rgb = photo()
    for spec in MODELS:
        model, model_dir = build_model(spec)
        if spec["config"]["num_channels"] == 3:
            proc = processor(**spec["preprocess"])
            pixels = proc(rgb, return_tensors="pt")["pixel_values"]
            with torch.no_grad():
                embeds = model(pixel_values=pixels).image_embeds
            save_npy(os.path.join(OUT_DIR, spec["name"], "photo_embeds.npy"), embeds.numpy())
    build_preprocess(rgb)

    total = 0
    for dirpath, _, files in os.walk(OUT_DIR):
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    print(f"total fixture size: {total} bytes")
    assert total < SIZE_LIMIT, f"fixtures too large: {total} bytes"


if __name__ == "__main__":
    main()
