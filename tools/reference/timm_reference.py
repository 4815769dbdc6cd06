#!/usr/bin/env python3
"""Write timm's outputs for a model directory (config.json + model.safetensors) and an input.

The model is created the way a user of the hub layout creates it,
`timm.create_model("local-dir:DIR", pretrained=True)` (which loads the weights with
strict=True), then evaluated in float64 (or float32 with --dtype float32).

Outputs, float32 .npy (NCHW): logits, pre_logits, forward_features, feature0..feature4
(taps stem.conv3, stages.0, stages.1, stages.2, final_conv, as features_only).

    python tools/reference/timm_reference.py --model DIR --input x.npy --out-dir OUT
    python tools/reference/timm_reference.py --model DIR --make-input 2x3x45x37 --seed 1 --out-dir OUT

Needs: pip install torch timm safetensors numpy
"""
import argparse
import json
import os
import sys

import numpy as np
import timm
import torch


def load_model(model_dir, dtype):
    model = timm.create_model("local-dir:" + os.path.abspath(model_dir), pretrained=True)
    model.eval().to(dtype)
    return model


def feature_taps(model):
    """Module names of the features_only taps, as timm's feature_info lists them."""
    return [f["module"] for f in model.feature_info]


@torch.no_grad()
def run(model, x):
    taps = feature_taps(model)
    captured = {}
    hooks = [
        model.get_submodule(name).register_forward_hook(
            lambda m, i, o, name=name: captured.__setitem__(name, o.clone()))
        for name in taps
    ]
    feats = model.forward_features(x)
    for h in hooks:
        h.remove()
    pre = model.forward_head(feats, pre_logits=True)
    logits = model.forward_head(feats)
    out = {"logits": logits, "pre_logits": pre, "forward_features": feats}
    for i, name in enumerate(taps):
        out[f"feature{i}"] = captured[name]
    return out, taps


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--input", help="float32 (B, 3, H, W) .npy")
    p.add_argument("--make-input", help="BxCxHxW: write a seeded standard-normal input.npy to --out-dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    a = p.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    if a.make_input:
        shape = [int(v) for v in a.make_input.lower().split("x")]
        x = np.random.default_rng(a.seed).standard_normal(shape).astype(np.float32)
        np.save(os.path.join(a.out_dir, "input.npy"), x)
    elif a.input:
        x = np.load(a.input)
    else:
        sys.exit("one of --input or --make-input is required")
    dtype = torch.float64 if a.dtype == "float64" else torch.float32
    model = load_model(a.model, dtype)
    out, taps = run(model, torch.from_numpy(np.ascontiguousarray(x)).to(dtype))
    for name, t in out.items():
        np.save(os.path.join(a.out_dir, name + ".npy"), t.numpy().astype(np.float32))
    meta = {"timm": timm.__version__, "torch": torch.__version__, "dtype": a.dtype,
            "taps": taps, "input_shape": list(x.shape),
            "shapes": {k: list(v.shape) for k, v in out.items()}}
    with open(os.path.join(a.out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(json.dumps(meta["shapes"]))


if __name__ == "__main__":
    main()
