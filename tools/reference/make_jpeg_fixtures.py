#!/usr/bin/env python3
"""Write the JPEG preprocessing fixtures under fixtures/preprocess/ (run from the repository root).

Each JPEG variant (baseline and progressive; 4:4:4, 4:2:2, 4:2:0, 4:4:0, 4:1:1; grayscale;
CMYK; restart markers; arithmetic coding; odd sizes) is encoded by Pillow (or libjpeg-turbo's
cjpeg where Pillow cannot write the variant) from deterministic photo-like images,
and timm's eval transform of it (Pillow decode, convert("RGB"), resize, center crop), before
normalization, is stored beside it as float32 (3, H, W) in 0..255. The cases are added to
cases.json (existing entries of other images are kept).

    python3 tools/reference/make_jpeg_fixtures.py

Needs: pip install torch timm pillow numpy; cjpeg (apt-get install libjpeg-turbo-progs)
"""
import io
import json
import os
import subprocess

import numpy as np
from PIL import Image
from timm.data import create_transform

OUT = os.path.join("fixtures", "preprocess")
SIZES = [((45, 37), 0.9), ((40, 56), 0.875), ((32, 32), 1.0)]


def photo(w, h, seed):
    """Smooth color fields, edges and noise: what makes chroma upsampling and the IDCT round."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 100 * np.sin(x / (3 + w / 9)) * np.cos(y / (4 + h / 7))
    g = 128 + 90 * np.cos((x + 2 * y) / (5 + w / 11))
    b = np.where((x - w / 2) ** 2 + (y - h / 3) ** 2 < (min(w, h) / 3) ** 2, 220.0, 40.0)
    a = np.stack([r, g, b], -1) + rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")


def variants():
    base = photo(61, 47, 1)
    odd = photo(33, 71, 2)
    yield "q85_420", base, dict(quality=85, subsampling="4:2:0")
    yield "q90_420_progressive", base, dict(quality=90, subsampling="4:2:0", progressive=True)
    yield "q75_444", base, dict(quality=75, subsampling="4:4:4")
    yield "q60_422", base, dict(quality=60, subsampling="4:2:2")
    yield "q95_444_progressive", odd, dict(quality=95, subsampling="4:4:4", progressive=True)
    yield "q50_420_odd", odd, dict(quality=50, subsampling="4:2:0")
    yield "q80_gray", base.convert("L"), dict(quality=80)
    yield "q70_gray_progressive", odd.convert("L"), dict(quality=70, progressive=True)
    yield "q90_cmyk", base.convert("CMYK"), dict(quality=90)
    yield "q85_420_restart", base, dict(quality=85, subsampling="4:2:0", restart_marker_blocks=3)
    # Pillow cannot write these; libjpeg-turbo's cjpeg can (apt-get install libjpeg-turbo-progs).
    yield "q85_440", odd, ["-sample", "1x2", "-quality", "85"]
    yield "q80_411", base, ["-sample", "4x1", "-quality", "80"]
    yield "q85_arithmetic", base, ["-arithmetic", "-quality", "85"]
    yield "q85_arithmetic_progressive", odd, ["-arithmetic", "-progressive", "-quality", "85"]


def encode(img, opts):
    """JPEG bytes: Pillow's encoder with keyword options, cjpeg with a list of arguments."""
    if isinstance(opts, dict):
        buf = io.BytesIO()
        img.save(buf, "JPEG", **opts)
        return buf.getvalue()
    ppm = io.BytesIO()
    img.save(ppm, "PPM")
    return subprocess.run(["cjpeg", *opts], input=ppm.getvalue(), capture_output=True, check=True).stdout


def fnv1a(data):
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def corruptions():
    """What Pillow does with damaged copies of two JPEGs (baseline, progressive): every prefix,
    and single bytes overwritten at spread-out positions. Written to jpeg_damaged.json: per case
    the source, the damage, and either Pillow's error or the FNV-1a hash of its RGB pixels."""
    out = []
    for src in ["q85_420_61x47.jpg", "q90_420_progressive_61x47.jpg"]:
        data = open(os.path.join(OUT, src), "rb").read()
        cases = [("prefix", n, None) for n in range(0, len(data), 7)] + [("prefix", len(data) - k, None) for k in (1, 2, 3)]
        rng = np.random.default_rng(len(data))
        for pos in sorted(set(rng.integers(0, len(data), 120).tolist())):
            cases.append(("byte", pos, int(rng.integers(0, 256))))
        for kind, pos, val in cases:
            d = data[:pos] if kind == "prefix" else data[:pos] + bytes([val]) + data[pos + 1:]
            try:
                im = Image.open(io.BytesIO(d))
                im.load()
                res = dict(pixels=fnv1a(im.convert("RGB").tobytes()))
            except Exception as e:  # what Pillow refuses
                res = dict(error=f"{type(e).__name__}: {e}")
            out.append(dict(source=src, damage=kind, at=pos, value=val, **res))
    with open(os.path.join(OUT, "jpeg_damaged.json"), "w") as f:
        json.dump(out, f, indent=0)
        f.write("\n")
    print(len(out), "damaged cases,", sum("error" in c for c in out), "refused by Pillow")


def main():
    with open(os.path.join(OUT, "cases.json")) as f:
        cases = [c for c in json.load(f) if not c["image"].endswith(".jpg")]
    for name, img, opts in variants():
        data = encode(img, opts)
        fname = f"{name}_{img.width}x{img.height}.jpg"
        with open(os.path.join(OUT, fname), "wb") as f:
            f.write(data)
        rgb = Image.open(os.path.join(OUT, fname)).convert("RGB")
        for (h, w), crop in SIZES:
            t = create_transform(input_size=(3, h, w), interpolation="bicubic", mean=(0, 0, 0), std=(1, 1, 1),
                                 crop_pct=crop, crop_mode="center", is_training=False)
            want = (t(rgb).numpy() * 255).round().astype(np.float32)
            exp = f"{fname}.{h}x{w}_crop{crop}.npy"
            np.save(os.path.join(OUT, exp), want)
            cases.append(dict(image=fname, size=[h, w], crop_pct=crop, expected=exp))
        print(fname, len(data), "bytes")
    cases.sort(key=lambda c: (c["image"], c["expected"]))
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1)
        f.write("\n")
    corruptions()


if __name__ == "__main__":
    main()
