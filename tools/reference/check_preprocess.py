#!/usr/bin/env python3
"""Compare `nfnet preprocess` with timm's eval transform (PIL) on image files.

    python3 tools/reference/check_preprocess.py IMAGE_OR_DIR... [--size 320] [--crop-pct 0.9]

Prints, per image, the largest difference before normalization in units of 1/255 and the share
of values that are exactly equal. Defaults: the built-in model's data config (eca_nfnet_l2).
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image
from timm.data import create_transform

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NFNET = os.path.join(ROOT, "target", "release", "nfnet")
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("paths", nargs="+")
    p.add_argument("--size", default="320", help="S or HxW, as compiled")
    p.add_argument("--crop-pct", type=float, default=0.9)
    a = p.parse_args()
    hw = [int(v) for v in a.size.lower().split("x")] * (1 if "x" in a.size.lower() else 2)
    t = create_transform(input_size=(3, hw[0], hw[1]), interpolation="bicubic", mean=tuple(MEAN), std=tuple(STD),
                         crop_pct=a.crop_pct, crop_mode="center", is_training=False)
    files = []
    for x in a.paths:
        files += sorted(os.path.join(x, f) for f in os.listdir(x)) if os.path.isdir(x) else [x]
    worst = 0.0
    tmp = tempfile.mkdtemp()
    for f in files:
        try:
            want = t(Image.open(f).convert("RGB")).numpy()
        except Exception as e:  # not an image PIL reads
            print(f"{os.path.basename(f):32} PIL cannot read it: {type(e).__name__}")
            continue
        out = os.path.join(tmp, "x.npy")
        r = subprocess.run([NFNET, "preprocess", f, "--output", out], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{os.path.basename(f):32} nfnet refused it: {r.stderr.strip()}")
            continue
        got = np.load(out)[0]
        to255 = lambda x: (x * STD[:, None, None] + MEAN[:, None, None]) * 255
        d = np.abs(to255(got.astype(np.float64)) - to255(want.astype(np.float64)))
        exact = float((d < 1e-3).mean())
        worst = max(worst, float(d.max()))
        print(f"{os.path.basename(f):32} max diff {d.max():6.3f}/255, exact {100 * exact:6.2f}%, bitwise equal {np.array_equal(got, want)}")
    print(f"worst max diff {worst:.3f}/255")
    sys.exit(0 if worst == 0.0 else 1)


if __name__ == "__main__":
    main()
