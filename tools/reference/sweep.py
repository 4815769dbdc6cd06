#!/usr/bin/env python3
"""Compare `nfc reference` with timm (float64) over many checkpoints, sizes and batches.

    cargo build --release -p nfnet-compiler && python3 tools/reference/sweep.py [--quick]

Each case: `nfc synth` a checkpoint, run timm (created from the directory with
`timm.create_model("local-dir:...")`, strict load) and `nfc reference` (and `--folded`) on the
same input, and print the worst relative L2 error over all eight outputs.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import timm_reference as tr  # noqa: E402

NFC = os.path.join("target", "release", "nfc")
TINY = dict(depths=[1, 2, 1, 1], channels=[48, 64, 80, 96], stem_chs=24, group_size=16, num_features=160)

CASES = [
    # (arch, seed, num_classes, model_args, dtype, input shape)
    ("eca_nfnet_l0", 11, 1000, None, "f32", [1, 3, 224, 224]),
    ("eca_nfnet_l1", 12, 37, None, "f16", [2, 3, 97, 131]),
    ("eca_nfnet_l3", 13, 1000, None, "bf16", [1, 3, 65, 65]),
    ("eca_nfnet_l2", 14, 0, None, "f32", [1, 3, 128, 96]),
    ("eca_nfnet_l0", 15, 5, TINY, "f32", [3, 3, 33, 77]),
    ("eca_nfnet_l0", 16, 3, dict(TINY, extra_conv=False, alpha=0.5, attn_gain=1.0, bottle_ratio=0.5), "f32", [2, 3, 40, 40]),
    ("eca_nfnet_l1", 17, 2, dict(TINY, width_factor=1.5, ch_div=16, attn_kwargs=dict(gamma=1.5, beta=2)), "f32", [1, 3, 51, 35]),
    ("eca_nfnet_l2", 18, 10, dict(TINY, group_size=None, stem_chs=None, std_conv_eps=1e-3), "bf16", [2, 3, 64, 48]),
    ("eca_nfnet_l0", 19, 1, dict(TINY, channels=[16, 32, 32, 64], group_size=8, num_features=0), "f32", [1, 3, 32, 32]),
]


def main():
    quick = "--quick" in sys.argv
    worst_all = 0.0
    for arch, seed, nc, args, dtype, shape in CASES[:4] if quick else CASES:
        with tempfile.TemporaryDirectory() as tmp:
            mdir = os.path.join(tmp, "m")
            cmd = [NFC, "synth", "--arch", arch, "--seed", str(seed), "--num-classes", str(nc),
                   "--dtype", dtype, "--out", mdir]
            if args is not None:
                cmd += ["--model-args", json.dumps(args)]
            subprocess.run(cmd, check=True, capture_output=True)
            x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
            xp = os.path.join(tmp, "x.npy")
            np.save(xp, x)
            model = tr.load_model(mdir, tr.torch.float64)
            want, _ = tr.run(model, tr.torch.from_numpy(x).double())
            for mode in ([], ["--folded"]):
                out = os.path.join(tmp, "out" + "".join(mode))
                subprocess.run([NFC, "reference", "--model", mdir, "--input", xp, "--out-dir", out] + mode,
                               check=True)
                worst = 0.0
                for k, t in want.items():
                    w = t.numpy()
                    g = np.load(os.path.join(out, k + ".npy")).astype(np.float64)
                    assert g.shape == w.shape, (k, g.shape, w.shape)
                    worst = max(worst, np.linalg.norm(g - w) / max(np.linalg.norm(w), 1e-300))
                worst_all = max(worst_all, worst)
                print(f"{arch} seed {seed} classes {nc} {dtype} {shape} args={args is not None} "
                      f"{'folded' if mode else 'reference'}: worst relative L2 {worst:.2e}", flush=True)
    print(f"worst over all cases: {worst_all:.2e}")
    sys.exit(0 if worst_all < 1e-5 else 1)


if __name__ == "__main__":
    main()
