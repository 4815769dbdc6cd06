#!/usr/bin/env python3
"""nfnet beside PyTorch eager (timm), ONNX Runtime and OpenVINO: same checkpoint, same input,
one run. Prints median / min latency per engine, nfnet's ratio to each peer (of the medians, of
the minimums, and per round: the median and range of the ratios of the two engines' medians
within each round), and each one's relative L2 error on the logits against timm evaluated in
float64.

The engines take turns so that load from other tenants of a shared machine falls on all of
them alike. By default in blocks (`--schedule blocks`): every round runs `--iters` calls of
each engine back to back after a warm-up, one engine after the other (nfnet as `nfnet bench
--iters N`, a fresh process per round): the warm latency of an engine that has the machine to
itself. `--schedule calls` takes turns call by call instead: every round is `--iters` steps,
each step calls every engine once, in an order that rotates from step to step, after a short
`--pause`; nfnet runs as one warm process (`nfnet bench --serve`) asked for one inference at a
time. That is the latency of a model called between other work, and a burst of load falls on
all of them alike; every engine measures slower so on a machine whose cores run compute-bound
code slower for a while after sitting idle (as the shared ones here do), the most
compute-bound engine most (see the README's Benchmarks).

    cargo build --release
    python3 tools/bench/side_by_side.py [--model DIR] [--threads 2] [--iters 10] [--rounds 5]
        [--peers torch,ort,ov,ov-default,torch-bf16] [--schedule blocks|calls] [--pause S]
        [--nfnet BINARY] [--also NAME=BINARY ...] [--all-outputs]

Peers: `torch` (PyTorch eager, float32), `ort` (ONNX Runtime), `ov` (OpenVINO with the f32
precision hint), `ov-default` (OpenVINO with its default settings: bf16 on CPUs with AMX or
AVX-512 BF16), `torch-bf16` (PyTorch eager, channels_last under `torch.autocast("cpu",
bfloat16)`). `--also` times further nfnet builds of the same checkpoint in the same rounds
(a build before and after a change, or another NFNET_WINOGRAD policy). `--all-outputs` also
prints every output's error (logits, pre-logits, forward_features, the five feature maps) for
the nfnet builds and the OpenVINO and PyTorch bf16 peers, those peers run on a second export
that returns them all (timed runs use the logits-only export).

--model must be the checkpoint the nfnet binary was compiled from, checked by its sha256 (default: the built-in
synthetic eca_nfnet_l2, recreated with `nfc synth --arch eca_nfnet_l2 --seed 0`). The input
size is the compiled one (`nfnet info`). Optional dependencies: torch timm safetensors numpy
(required), onnx onnxruntime (ort), openvino (ov).
"""
import argparse
import hashlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

try:
    import numpy as np
    import torch
    import timm  # noqa: F401
    import safetensors  # noqa: F401
except ImportError as e:
    sys.exit(f"{e.name} is required: pip install torch timm safetensors numpy")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tools", "reference"))
import timm_reference  # noqa: E402

NFNET = os.path.join(ROOT, "target", "release", "nfnet")
PEERS = ("torch", "ort", "ov", "ov-default", "torch-bf16")
NFC = os.path.join(ROOT, "target", "release", "nfc")


def compiled_info():
    out = subprocess.run([NFNET, "bench", "--iters", "1", "--json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def compiled_sha256():
    out = subprocess.run([NFNET, "info"], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("weights") and "sha256 " in line:
            return line.split("sha256 ")[1].split()[0]
    sys.exit(f"{NFNET} info: no weights sha256 in its output")


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def rel_l2(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def timed(f, iters, warm=2):
    for _ in range(warm):
        f()
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        f()
        ts.append((time.perf_counter() - t) * 1e3)
    return ts


class NfnetServer:
    """A warm `nfnet bench --serve` process: `once()` runs one inference and returns its ms."""

    def __init__(self, threads):
        self.p = subprocess.Popen([NFNET, "bench", "--serve", "--threads", str(threads)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, bufsize=1)
        line = self.p.stdout.readline().strip()
        if line != "ready":
            self.close()
            sys.exit(f"{NFNET} bench --serve: expected 'ready', got {line!r}")

    def once(self):
        self.p.stdin.write("1\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            sys.exit(f"{NFNET} bench --serve ended early (exit status {self.p.wait()})")
        return float(line)

    def close(self):
        if self.p.stdin:
            self.p.stdin.close()
        self.p.wait()


def standardized_copy(model):
    """A float32 copy of the model whose ScaledStdConv2d layers are plain convs with the
    standardized weights precomputed, so ONNX consumers see ordinary Conv nodes."""
    import copy
    import torch.nn.functional as F
    from timm.layers import ScaledStdConv2d

    m = copy.deepcopy(model).float()
    for conv in [x for x in m.modules() if isinstance(x, ScaledStdConv2d)]:
        w = conv.weight.reshape(conv.out_channels, -1)
        mean = w.mean(dim=1, keepdim=True)
        var = w.var(dim=1, unbiased=False, keepdim=True)
        std_w = ((w - mean) / torch.sqrt(var + conv.eps) * (conv.gain.view(-1, 1) * conv.scale)).reshape_as(conv.weight)
        fixed = std_w.detach().clone()
        conv.forward = (lambda c, wt: lambda x: F.conv2d(x, wt, c.bias, c.stride, c.padding, c.dilation, c.groups))(conv, fixed)
    return m


def main():
    global NFNET
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=10, help="iterations per engine and round")
    p.add_argument("--rounds", type=int, default=5, help="rounds visiting every engine in turn (more rounds spread the load of a shared machine more evenly)")
    p.add_argument("--peers", default="torch,ort,ov")
    p.add_argument("--nfnet", default=NFNET, help="the nfnet binary (default: target/release/nfnet)")
    p.add_argument("--also", action="append", default=[], metavar="NAME=BINARY",
                   help="another nfnet build of the same checkpoint to time in the same rounds")
    p.add_argument("--schedule", default="blocks", choices=["blocks", "calls"],
                   help="take turns in blocks of --iters calls per engine (default) or call by call")
    p.add_argument("--all-outputs", action="store_true",
                   help="also compare every output (feature maps, forward_features, pre-logits) against float64")
    p.add_argument("--pause", type=float, default=0.1,
                   help="seconds of rest before each call (--schedule calls), so no engine's idle threads spin into the next one's time")
    a = p.parse_args()
    NFNET = a.nfnet
    peers = [x for x in a.peers.split(",") if x]
    unknown = [x for x in peers if x not in PEERS]
    if unknown:
        sys.exit(f"--peers: unknown engine {', '.join(unknown)} (choose from {', '.join(PEERS)})")
    also = []
    for spec in a.also:
        name, _, path = spec.partition("=")
        if not name or not os.access(path, os.X_OK):
            sys.exit(f"--also {spec}: want NAME=BINARY with an executable nfnet binary")
        also.append((name, path))
    if a.threads < 1 or a.iters < 1 or a.rounds < 1:
        sys.exit("--threads, --iters and --rounds must be at least 1")
    if not 0 <= a.pause <= 60:
        sys.exit("--pause must be between 0 and 60 seconds")
    # The optional peers: one line each for what is missing, then the rest run.
    for peer, modules in (("ort", ["onnx", "onnxruntime"]), ("ov", ["onnx", "openvino"]),
                          ("ov-default", ["onnx", "openvino"])):
        if peer in peers:
            missing = [m for m in modules if importlib.util.find_spec(m) is None]
            if missing:
                print(f"skipping {peer}: {', '.join(missing)} not installed (pip install {' '.join(missing)})",
                      file=sys.stderr)
                peers.remove(peer)
    for path in (NFNET, NFC):
        if not os.access(path, os.X_OK):
            sys.exit(f"{path} not found: run `cargo build --release` first")
    info = compiled_info()
    h, w = info["input_size"]
    batch = info["batch"]
    # Removed when the run ends (however it ends): the checkpoint and the ONNX export take
    # about 430 MB.
    scratch = tempfile.TemporaryDirectory(prefix="nfnet-bench-")
    tmp = scratch.name
    model_dir = a.model
    if model_dir is None:
        model_dir = os.path.join(tmp, "builtin")
        subprocess.run([NFC, "synth", "--arch", "eca_nfnet_l2", "--seed", "0", "--out", model_dir], check=True,
                       capture_output=True)
    weights = os.path.join(model_dir, "model.safetensors")
    if not os.path.isfile(weights):
        sys.exit(f"{weights}: not found (--model wants a directory with config.json and model.safetensors)")
    compiled, given = compiled_sha256(), file_sha256(weights)
    if compiled != given:
        which = f"--model {a.model}" if a.model else "the built-in synthetic eca_nfnet_l2 (no --model)"
        sys.exit(f"{which}: model.safetensors (sha256 {given[:12]}...) is not the checkpoint nfnet was compiled "
                 f"from (sha256 {compiled[:12]}...); pass --model with the NFNET_MODEL directory of the build")
    x = np.random.default_rng(0).standard_normal((batch, 3, h, w)).astype(np.float32)
    xp = os.path.join(tmp, "x.npy")
    np.save(xp, x)
    torch.set_num_threads(a.threads)
    m64 = timm_reference.load_model(model_dir, torch.float64)
    with torch.no_grad():
        ref = m64(torch.from_numpy(x).double()).numpy()
        ref_all = None
        if a.all_outputs:
            ref_all = {k: v.numpy() for k, v in timm_reference.run(m64, torch.from_numpy(x).double())[0].items()}
    del m64
    # Each engine: a name, one call, its logits. Timed in rounds that visit every engine in
    # turn (a pause between engines lets the previous one's spinning threads settle), so a
    # burst of load from other tenants of the machine hits all of them alike.
    engines = []
    m32 = timm_reference.load_model(model_dir, torch.float32)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        if "torch" in peers:
            engines.append(("pytorch eager (timm)", lambda: m32(xt), lambda: m32(xt).numpy()))
        if "torch-bf16" in peers:
            mcl = timm_reference.load_model(model_dir, torch.float32).to(memory_format=torch.channels_last)
            xcl = xt.contiguous(memory_format=torch.channels_last)

            def bf16_call():
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return mcl(xcl)
            engines.append(("pytorch bf16 autocast", bf16_call, lambda: bf16_call().float().numpy()))
        onnx_path = os.path.join(tmp, "m.onnx")
        if any(p in peers for p in ("ort", "ov", "ov-default")):
            torch.onnx.export(standardized_copy(m32), (xt,), onnx_path, dynamo=False, opset_version=17,
                              input_names=["x"], output_names=["y"])
    if "ort" in peers:
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        so.inter_op_num_threads = 1
        s = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
        engines.append((f"onnxruntime {ort.__version__}", lambda: s.run(None, {"x": x}),
                        lambda: s.run(None, {"x": x})[0]))
    if "ov" in peers:
        import openvino as ov
        cm = ov.Core().compile_model(onnx_path, "CPU", {"INFERENCE_NUM_THREADS": a.threads,
                                                        "PERFORMANCE_HINT": "LATENCY",
                                                        "INFERENCE_PRECISION_HINT": "f32"})
        req = cm.create_infer_request()
        engines.append((f"openvino {ov.__version__.split('-')[0]}", lambda: req.infer({0: x}),
                        lambda: req.infer({0: x})[cm.output(0)]))
    if "ov-default" in peers:
        import openvino as ov
        cmd = ov.Core().compile_model(onnx_path, "CPU", {"INFERENCE_NUM_THREADS": a.threads,
                                                         "PERFORMANCE_HINT": "LATENCY"})
        reqd = cmd.create_infer_request()
        hint = cmd.get_property("INFERENCE_PRECISION_HINT")
        prec = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        engines.append((f"openvino default ({prec})", lambda: reqd.infer({0: x}),
                        lambda: reqd.infer({0: x})[cmd.output(0)]))
    # nfnet: accuracy through `nfnet run`, speed through `nfnet bench` (its own process).
    nf_name = f"nfnet ({info['isa']})"
    builds = [(nf_name, NFNET)] + [(f"nfnet {n}", path) for n, path in also]
    errors = {}
    for name, path in builds:
        lp = os.path.join(tmp, "logits.npy")
        subprocess.run([path, "run", "--input", xp, "--output", lp, "--threads", str(a.threads)], check=True)
        errors[name] = rel_l2(np.load(lp), ref)
    all_errors = {}
    if a.all_outputs:
        all_errors = all_output_errors(a, peers, builds, model_dir, x, xp, ref_all, tmp)
    # Per engine, the iterations' times of each round.
    rounds = {name: [] for name, _ in builds}
    with torch.no_grad():
        for name, _, logits in engines:
            errors[name] = rel_l2(logits(), ref)
            rounds[name] = []
        if a.schedule == "blocks":
            for r in range(a.rounds):
                for name, call, _ in engines:
                    time.sleep(1)
                    rounds[name].append(timed(call, a.iters))
                # After a pause: PyTorch's OpenMP threads spin for a while after its runs.
                time.sleep(2)
                for name, path in builds:
                    out = subprocess.run([path, "bench", "--iters", str(a.iters), "--threads", str(a.threads), "--json"],
                                         check=True, capture_output=True, text=True)
                    rounds[name].append(json.loads(out.stdout)["times_ms"])
                    time.sleep(1)
        else:
            if also:
                sys.exit("--also works with --schedule blocks only")
            server = NfnetServer(a.threads)
            try:
                # nfnet times itself (the inference only, as `nfnet bench`); the peers are timed
                # around their Python call.
                calls = [(nf_name, server.once)] + [(name, lambda c=call: timed(c, 1, warm=0)[0])
                                                     for name, call, _ in engines]
                for name, call, _ in engines:
                    timed(call, 0)
                for r in range(a.rounds):
                    for name, _ in calls:
                        rounds[name].append([])
                    for i in range(a.iters):
                        k = (r * a.iters + i) % len(calls)
                        for name, call in calls[k:] + calls[:k]:
                            time.sleep(a.pause)
                            rounds[name][-1].append(call())
            finally:
                server.close()
    times = {n: [t for rt in rs for t in rt] for n, rs in rounds.items()}
    rows = [(n, statistics.median(times[n]), min(times[n]), errors[n]) for n, _ in builds]
    rows += [(n, statistics.median(times[n]), min(times[n]), errors[n]) for n, _, _ in engines]
    nf, nf_min = rows[0][1], rows[0][2]
    turns = "call by call" if a.schedule == "calls" else "in blocks"
    print(f"{info['architecture']} {h}x{w} batch {batch}, {a.threads} threads, {a.rounds} rounds x {a.iters} "
          f"iterations per engine ({turns}), checkpoint {model_dir}")
    print(f"{'':28} {'median ms':>10} {'min ms':>8} {'nfnet/peer':>10} {'(of mins)':>10} {'(per round)':>18} "
          f"{'rel L2 vs f64':>14}")
    for name, med, mn, e in rows:
        # nfnet's median over each peer's in the same round (seconds apart), then the median
        # and range of those ratios: a burst of load that covers one round moves one ratio.
        per = sorted(statistics.median(x) / statistics.median(y) for x, y in zip(rounds[nf_name], rounds[name]))
        per_s = f"{statistics.median(per):.2f} [{per[0]:.2f}-{per[-1]:.2f}]"
        print(f"{name:28} {med:10.1f} {mn:8.1f} {nf / med:10.2f} {nf_min / mn:10.2f} {per_s:>18} {e:14.2e}")
    if all_errors:
        print("relative L2 vs float64 per output:")
        print(f"{'':28} " + " ".join(f"{k:>10}" for k in OUTPUTS))
        for name, errs in all_errors.items():
            print(f"{name:28} " + " ".join(f"{errs[k]:10.2e}" for k in OUTPUTS))


OUTPUTS = ("logits", "pre_logits", "forward_features", "feature0", "feature1", "feature2", "feature3", "feature4")


class AllOutputs(torch.nn.Module):
    """The model returning every output of `timm_reference.run`, in `OUTPUTS` order."""

    def __init__(self, m):
        super().__init__()
        self.m = m
        self.captured = {}
        for i, name in enumerate(timm_reference.feature_taps(m)):
            m.get_submodule(name).register_forward_hook(
                lambda mod, inp, out, i=i: self.captured.__setitem__(f"feature{i}", out))

    def forward(self, x):
        feats = self.m.forward_features(x)
        out = {"logits": self.m.forward_head(feats), "pre_logits": self.m.forward_head(feats, pre_logits=True),
               "forward_features": feats, **self.captured}
        return tuple(out[k] for k in OUTPUTS)


def all_output_errors(a, peers, builds, model_dir, x, xp, ref, tmp):
    """Every output's relative L2 error against float64, per nfnet build and bf16-capable peer."""
    errs = {}
    for name, path in builds:
        d = os.path.join(tmp, "outputs")
        os.makedirs(d, exist_ok=True)
        t = ["--threads", str(a.threads)]
        subprocess.run([path, "run", "--input", xp, "--output", os.path.join(d, "logits.npy")] + t, check=True)
        subprocess.run([path, "embed", "--input", xp, "--output", os.path.join(d, "pre_logits.npy")] + t,
                       check=True, capture_output=True)
        subprocess.run([path, "embed", "--input", xp, "--unpooled", "--output",
                        os.path.join(d, "forward_features.npy")] + t, check=True, capture_output=True)
        subprocess.run([path, "features", "--input", xp, "--out-dir", d] + t, check=True, capture_output=True)
        errs[name] = {k: rel_l2(np.load(os.path.join(d, k + ".npy")), ref[k]) for k in OUTPUTS}
    m = AllOutputs(standardized_copy(timm_reference.load_model(model_dir, torch.float32)))
    xt = torch.from_numpy(x)
    if "torch-bf16" in peers:
        mcl = AllOutputs(timm_reference.load_model(model_dir, torch.float32).to(memory_format=torch.channels_last))
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            outs = mcl(xt.contiguous(memory_format=torch.channels_last))
        errs["pytorch bf16 autocast"] = {k: rel_l2(o.float().numpy(), ref[k]) for k, o in zip(OUTPUTS, outs)}
    ov_peers = [p for p in ("ov", "ov-default") if p in peers]
    if ov_peers:
        import openvino as ov
        path = os.path.join(tmp, "all.onnx")
        with torch.no_grad():
            torch.onnx.export(m, (xt,), path, dynamo=False, opset_version=17, input_names=["x"],
                              output_names=list(OUTPUTS))
        for p in ov_peers:
            cfg = {"INFERENCE_NUM_THREADS": a.threads, "PERFORMANCE_HINT": "LATENCY"}
            if p == "ov":
                cfg["INFERENCE_PRECISION_HINT"] = "f32"
            cm = ov.Core().compile_model(path, "CPU", cfg)
            res = cm.create_infer_request().infer({0: x})
            errs["openvino " + ("f32" if p == "ov" else "default")] = {
                k: rel_l2(np.asarray(res[cm.output(i)]), ref[k]) for i, k in enumerate(OUTPUTS)}
    return errs


if __name__ == "__main__":
    main()
