#!/usr/bin/env python3
"""Regenerate the committed timm fixtures under fixtures/ (run from the repository root).

Each fixture directory holds `synth.json` (the `nfc synth` arguments that recreate its
checkpoint deterministically, so no weights are committed), `input.npy`, and timm's float64
outputs as float32 .npy. Large maps of the full-size model are stored as channel slices:
`featureN.every{K}.npy` holds channels 0, K, 2K, ... of featureN. `timm_f32/` holds timm's
own float32 outputs on the same input, sliced the same way: the tests bound nfnet's error
against float64 by a multiple of timm float32's.

    cargo build --release -p nfnet-compiler && python3 tools/reference/make_fixtures.py [NAME ...]

Without names, every fixture; with names, only those.

Needs: pip install torch timm safetensors numpy
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import timm_reference  # noqa: E402

CASES = {
    # A tiny config through model_args: odd, non-square input, batch 2, 10 classes, F32.
    "tiny": dict(
        synth=dict(arch="eca_nfnet_l0", seed=3, num_classes=10, dtype="f32",
                   model_args=dict(depths=[1, 1, 2, 1], channels=[32, 64, 96, 128], stem_chs=16,
                                   group_size=8, num_features=192)),
        input=[2, 3, 45, 37], input_seed=1, every={}),
    # Other NfCfg paths: no conv2b, one group, width_factor, ch_div 4, ECA gamma 1, no head,
    # bf16 storage.
    "tiny_variant_bf16": dict(
        synth=dict(arch="eca_nfnet_l1", seed=4, num_classes=0, dtype="bf16",
                   model_args=dict(depths=[2, 1, 1, 2], channels=[32, 64, 96, 128], stem_chs=16,
                                   group_size=None, num_features=192, extra_conv=False,
                                   width_factor=0.75, ch_div=4, attn_kwargs=dict(gamma=1))),
        input=[1, 3, 33, 64], input_seed=2, every={}),
    # Groups of 32 channels and wider stages: the convs bf16 precision runs in bf16 (at least
    # 32 input channels per group), 3x3 ones included, and chains of them.
    "tiny_wide": dict(
        synth=dict(arch="eca_nfnet_l0", seed=5, num_classes=10, dtype="f32",
                   model_args=dict(depths=[1, 1, 2, 1], channels=[128, 128, 256, 256], stem_chs=32,
                                   group_size=32, num_features=256)),
        input=[1, 3, 52, 44], input_seed=3, every={}),
    # The built-in model: the synthetic eca_nfnet_l2 at 320x320.
    "l2_320": dict(
        synth=dict(arch="eca_nfnet_l2", seed=0, num_classes=None, dtype="f32", model_args=None),
        input=[1, 3, 320, 320], input_seed=7,
        every={"feature0": 8, "feature1": 16, "feature2": 32, "feature3": 48, "feature4": 96,
               "forward_features": 3}),
}


def synth_args(s, out):
    args = ["--arch", s["arch"], "--seed", str(s["seed"]), "--dtype", s["dtype"], "--out", out]
    if s["num_classes"] is not None:
        args += ["--num-classes", str(s["num_classes"])]
    if s["model_args"] is not None:
        args += ["--model-args", json.dumps(s["model_args"])]
    return args


def main():
    nfc = os.path.join("target", "release", "nfc")
    root = "fixtures"
    names = sys.argv[1:] or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        sys.exit(f"unknown fixture {', '.join(unknown)} (choose from {', '.join(CASES)})")
    for name in names:
        case = CASES[name]
        out = os.path.join(root, name)
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([nfc, "synth"] + synth_args(case["synth"], tmp), check=True)
            x = np.random.default_rng(case["input_seed"]).standard_normal(case["input"]).astype(np.float32)
            torch = timm_reference.torch
            model = timm_reference.load_model(tmp, torch.float64)
            outs, taps = timm_reference.run(model, torch.from_numpy(x).double())
            model32 = timm_reference.load_model(tmp, torch.float32)
            outs32, _ = timm_reference.run(model32, torch.from_numpy(x))
        np.save(os.path.join(out, "input.npy"), x)
        os.makedirs(os.path.join(out, "timm_f32"))
        for d, o in ((out, outs), (os.path.join(out, "timm_f32"), outs32)):
            for k, t in o.items():
                a = t.numpy().astype(np.float32)
                if k in case["every"]:
                    step = case["every"][k]
                    np.save(os.path.join(d, f"{k}.every{step}.npy"), np.ascontiguousarray(a[:, ::step]))
                else:
                    np.save(os.path.join(d, k + ".npy"), a)
        for k in outs:
            e = (outs32[k].double() - outs[k]).norm() / outs[k].norm()
            print(f"  timm float32 {name}/{k}: relative L2 {e.item():.2e}")
        with open(os.path.join(out, "synth.json"), "w") as f:
            json.dump(dict(case["synth"], taps=taps, timm=timm_reference.timm.__version__,
                           torch=timm_reference.torch.__version__), f, indent=1)
            f.write("\n")
        print(name, {k: list(v.shape) for k, v in outs.items()})


if __name__ == "__main__":
    main()
