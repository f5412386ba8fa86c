#!/usr/bin/env python3
"""Writes the small generated seeds of the fuzz corpus in tests/fixtures/fuzz/:

- safetensors/tiny_f32_f16_bf16.safetensors: three tensors (F32 [2, 2], F16 [3], BF16 [1, 2])
  and a metadata table;
- posterior/tiny_ef_diag.safetensors and posterior/tiny_ggn_kron.safetensors: posterior files of
  a [2, 1, 1, 1] output layer, as `Posterior::save` writes them;
- npy/f8_3.npy and npy/i4_2x2.npy: `.npy` arrays of the two dtypes the other seeds lack;
- png/gray8.png, rgb8.png, gray16.png, rgba8.png, palette.png: tiny PNG images of each colour
  type the member-image reader converts.

Standard library only; the output is deterministic. Usage: python3 tools/make_fuzz_seeds.py
"""

import json
import os
import struct
import zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "fuzz")


def write(rel, data):
    path = os.path.join(ROOT, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    print(f"{rel}: {len(data)} bytes")


def safetensors(tensors, metadata=None):
    """tensors: list of (name, dtype, shape, raw bytes), stored in that order."""
    header = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(t[3] for t in tensors)


def f32(*v):
    return struct.pack(f"<{len(v)}f", *v)


def f64(*v):
    return struct.pack(f"<{len(v)}d", *v)


def f16(*v):
    return struct.pack(f"<{len(v)}e", *v)


def bf16(*v):
    return b"".join(struct.pack("<f", x)[2:] for x in v)


def posterior(hessian, curvature):
    meta = {
        "format": "uqengine-laplace-posterior",
        "format_version": "1",
        "layer": "conv_out",
        "hessian": hessian,
        "channels_in_loss": "1",
        "num_images": "4",
        "prior_precision": "1e0",
        "sigma_noise": "1e0",
        "model_fingerprint": "0123456789abcdef",
        "target": "epsilon",
        "fit_seed": "0",
    }
    return safetensors(
        [
            ("curvature", "F64", curvature[0], f64(*curvature[1])),
            ("map.bias", "F32", [2], f32(0.25, -0.5)),
            ("map.weight", "F32", [2, 1, 1, 1], f32(1.0, -2.0)),
        ],
        meta,
    )


def npy(descr, shape, raw):
    dims = f"({shape[0]},)" if len(shape) == 1 else "(" + ", ".join(map(str, shape)) + ")"
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}"
    header += " " * (-(10 + len(header) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + raw


def png(width, height, bit_depth, color_type, rows, palette=None):
    def chunk(kind, data):
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    raw = b"".join(b"\x00" + bytes(r) for r in rows)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    if palette:
        out += chunk(b"PLTE", bytes(palette))
    return out + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def main():
    write("npy/f8_3.npy", npy("<f8", [3], f64(0.5, -1.0, 1e300)))
    write("npy/i4_2x2.npy", npy("<i4", [2, 2], struct.pack("<4i", 1, -2, 2**31 - 1, -(2**31))))
    write(
        "safetensors/tiny_f32_f16_bf16.safetensors",
        safetensors(
            [
                ("a.weight", "F32", [2, 2], f32(1.0, -2.0, 0.5, 3.0)),
                ("b.bias", "F16", [3], f16(0.0, 1.5, -1.0)),
                ("c.scale", "BF16", [1, 2], bf16(2.0, -0.25)),
            ],
            {"format": "pt"},
        ),
    )
    # ef-diag: one curvature value per weight and bias (2 + 2); ggn-kron: a [cols, cols] matrix
    # with cols = cin * k * k + 1 = 2.
    write("posterior/tiny_ef_diag.safetensors", posterior("ef-diag", ([4], [1.0, 2.0, 0.5, 0.0])))
    write(
        "posterior/tiny_ggn_kron.safetensors",
        posterior("ggn-kron", ([2, 2], [2.0, 0.5, 0.5, 1.0])),
    )
    write("png/gray8.png", png(3, 2, 8, 0, [[0, 128, 255], [10, 20, 30]]))
    write("png/rgb8.png", png(2, 2, 8, 2, [[255, 0, 0, 0, 255, 0], [0, 0, 255, 9, 9, 9]]))
    write("png/gray16.png", png(2, 1, 16, 0, [[0x12, 0x34, 0xFF, 0x00]]))
    write("png/rgba8.png", png(1, 2, 8, 6, [[1, 2, 3, 255], [4, 5, 6, 0]]))
    write(
        "png/palette.png",
        png(2, 2, 8, 3, [[0, 1], [1, 0]], palette=[0, 0, 0, 200, 100, 50]),
    )


if __name__ == "__main__":
    main()
