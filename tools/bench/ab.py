#!/usr/bin/env python3
"""A/B of two or more nfnet binaries, kernel class by kernel class, on a noisy machine.

Alternates `BIN profile --stat min` runs of every binary (round robin, every other round in
reverse order, so load from other tenants falls on all of them alike), sums each fused
kernel's best time per class (stage and conv, e.g. `conv s2.conv1` for all of stage 2's
conv1s, or the kernel kind), keeps the best round per binary and class, and prints the
classes slowest first with each binary's ratio to the first. The first binary is the
baseline. An A/A run (two copies of one binary) shows the noise floor.

    cp target/release/nfnet /tmp/nfnet_a            # before the change
    cargo build --release && cp target/release/nfnet /tmp/nfnet_b
    python3 tools/bench/ab.py /tmp/nfnet_a /tmp/nfnet_b [--threads 1] [--rounds 2] [--iters 10]

Only the Python standard library is needed.
"""
import argparse
import os
import re
import subprocess
import sys


def kernel_class(kind, modules):
    if kind != "conv":
        return kind
    first = modules.split("+")[0]
    return "conv " + re.sub(r"stages\.(\d)\.\d+\.", r"s\1.", first)


def profile(binary, threads, iters):
    env = dict(os.environ, NFNET_THREADS=str(threads))
    out = subprocess.run([binary, "profile", "--stat", "min", "--top", "0", "--iters", str(iters)],
                         check=True, capture_output=True, text=True, env=env).stdout
    classes = {}
    for line in out.splitlines():
        # "    3.53   2.7%    267.1   61.5  conv final_conv+final_act+head.global_pool"
        m = re.match(r"\s*([0-9.]+)\s+[0-9.]+%\s+[0-9.]+\s+\S+\s+(\S+)\s*(\S*)", line)
        if m:
            key = kernel_class(m.group(2), m.group(3))
            classes[key] = classes.get(key, 0.0) + float(m.group(1))
    if not classes:
        sys.exit(f"{binary}: no kernel times in its profile output")
    return classes


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("binaries", nargs="+")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--top", type=int, default=20, help="classes to print")
    a = p.parse_args()
    for b in a.binaries:
        if not os.access(b, os.X_OK):
            sys.exit(f"{b}: not an executable")
    if a.threads < 1 or a.rounds < 1 or a.iters < 1:
        sys.exit("--threads, --rounds and --iters must be at least 1")
    best = [dict() for _ in a.binaries]
    for r in range(a.rounds):
        # Every other round in reverse order: a binary run right after another one was seen
        # 2-5% faster on this machine (an A/A run of two copies of one binary), so a fixed
        # order would favour the later ones.
        order = list(enumerate(a.binaries))
        for i, b in order if r % 2 == 0 else order[::-1]:
            c = profile(b, a.threads, a.iters)
            print(f"round {r + 1}: {b} {sum(c.values()):.1f} ms in kernels", file=sys.stderr)
            for k, v in c.items():
                best[i][k] = min(v, best[i].get(k, v))
    base = best[0]
    names = [os.path.basename(b)[-14:] for b in a.binaries]
    print(f"{'class':30}" + "".join(f"{n:>15}" for n in names) + "   ratios to the first")
    rows = sorted(base, key=lambda k: -base[k])[:a.top] + ["TOTAL"]
    for k in rows:
        vals = [sum(x.values()) if k == "TOTAL" else x.get(k, float("nan")) for x in best]
        ratios = " ".join(f"{v / vals[0]:.3f}" for v in vals[1:]) if vals[0] else ""
        print(f"{k:30}" + "".join(f"{v:15.2f}" for v in vals) + f"   {ratios}")


if __name__ == "__main__":
    main()
