"""Two versions of the native ternary kernel against each other inside a whole ViT, in one process.

    python benchmarks/export/ab_native.py OLD.cpp                 # against the kernel that ships now
    python benchmarks/export/ab_native.py OLD.cpp NEW.cpp --path avx2 --rounds 25

A version of the kernel is its ternary_linear.cpp with the ternary_core.hpp beside it (the one it includes; with
none beside it, the shipped one): `git show REV:runtime/native/ternary_linear.cpp > old/ternary_linear.cpp` and the
same for ternary_core.hpp.

Whole-model timings on this shared host move by up to a fifth between runs, more than most kernel changes gain,
so a change to runtime/native/ternary_linear.cpp is judged here: both builds load into one process (each in its
own OpenVINO Core), every round times each at batch 1 (3 runs) and batch 8 (1 run) in turn, the two taking turns
to go first, and the medians are printed with OLD/NEW per round (its median and middle half: a change is real
when the middle half clears 1.0) and the largest output difference between the two. Passing the same source
twice (an A/A run) shows how far this host's noise alone moves it. --path avx2 / avxvnni / vnni limit
oneDNN and force edgedf's kernel as bench_export.py's --emulate-* do; cpu (default) is the CPU as it is. Random-
initialised ViT-S (--preset vit_tiny: ViT-Ti) at 224 px, exported with `edgedf export`'s own code; 2 threads.
--out FILE also writes what it printed as markdown, with the machine and the two sources' sha256 (results_ab*.md:
recorded A/Bs).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_export import EMULATE, make_checkpoints  # this folder's export benchmark

CHILD = r"""
import statistics, sys, time
from pathlib import Path
import numpy as np, openvino as ov
from edgedf.runtime.backends import openvino as ovb, ov_native
from edgedf.runtime.bundle import load_bundle
old, new, bundle, rounds = sys.argv[1:]
model = ovb.model_for_bundle(load_bundle(bundle))
reqs = {}
for name, src in (("old", old), ("new", new)):
    lib = ov_native.build(source=Path(src))
    core = ov.Core()
    core.add_extension(str(lib))
    m = core.read_model(model=bytes(model), weights=ov.Tensor(np.empty(0, np.uint8)))
    config = {"INFERENCE_NUM_THREADS": 2, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    reqs[name] = (core.compile_model(m, "CPU", config).create_infer_request(), ov_native.cpu_path(lib))
rng = np.random.default_rng(0)
xs = {b: rng.standard_normal((b, 3, 224, 224)).astype(np.float32) for b in (1, 8)}
outs = {n: r.infer({0: xs[8]})[0].copy() for n, (r, _) in reqs.items()}
print(f"kernel paths: old {reqs['old'][1]}, new {reqs['new'][1]}; max |old - new| output at batch 8: "
      f"{float(np.abs(outs['old'] - outs['new']).max()):.3g}")
times = {n: {1: [], 8: []} for n in reqs}
ratios = {1: [], 8: []}  # per round: old's time over new's (batch 1: the mean of its 3 runs)
for i in range(int(rounds)):
    order = ("old", "new") if i % 2 == 0 else ("new", "old")  # who goes first alternates
    this = {n: {} for n in order}
    for n in order:
        r = reqs[n][0]
        for b, x in xs.items():
            runs = []
            for _ in range(3 if b == 1 else 1):
                t0 = time.perf_counter()
                r.infer({0: x})
                runs.append((time.perf_counter() - t0) * 1000 / b)
            times[n][b] += runs
            this[n][b] = statistics.fmean(runs)
    for b in (1, 8):
        ratios[b].append(this["old"][b] / this["new"][b])
for b in (1, 8):
    o, n = statistics.median(times["old"][b]), statistics.median(times["new"][b])
    q1, q2, q3 = statistics.quantiles(ratios[b], n=4)
    print(f"batch {b}: old {o:.2f}, new {n:.2f} ms/img (median of {len(times['old'][b])}); old/new per round: "
          f"median {q2:.3f}x, middle half {q1:.3f}-{q3:.3f}x")
"""


PRESETS = {"vit_tiny": "ViT-Ti", "vit_small": "ViT-S"}  # --preset: the model and its name in the results


def main() -> None:
    from edgedf.export.api import ExportOptions, export_bundle
    from edgedf.runtime.backends import ov_native

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", type=Path, help="the kernel source to compare against")
    ap.add_argument("new", type=Path, nargs="?", default=ov_native.SOURCE, help="default: the shipped kernel")
    ap.add_argument("--path", nargs="+", choices=["cpu", *EMULATE], default=["cpu"], help="one or more, in turn")
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--preset", default="vit_small", choices=list(PRESETS), help="the model (224 px)")
    ap.add_argument("--out", type=Path, help="also write the result as markdown here")
    args = ap.parse_args()
    for src in (args.old, args.new):
        if not src.is_file():
            sys.exit(f"error: no such kernel source: {src}")
    printed = {}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        ck = make_checkpoints(args.preset, tmp)["bit"]
        opts = ExportOptions(target="cpu", precision="ternary", out=tmp / "bit", lowering="native", verify_n=16)
        export_bundle(ck, opts)
        cmd = [sys.executable, "-c", CHILD, str(args.old.resolve()), str(args.new.resolve()), str(tmp / "bit")]
        for path in args.path:
            label = EMULATE[path]["name"] + " (emulated)" if path in EMULATE else "this CPU as it is"
            env = {**os.environ, **(EMULATE[path]["env"] if path in EMULATE else {})}
            print(f"## {label}", flush=True)
            proc = subprocess.run([*cmd, str(args.rounds)], env=env, stdout=subprocess.PIPE, text=True)
            print(proc.stdout, end="")
            if proc.returncode != 0:
                sys.exit(proc.returncode)
            printed[label] = proc.stdout
    if args.out:
        write_markdown(args, printed)


def write_markdown(args, printed: dict[str, str]) -> None:
    from edgedf.devices.bench import host_info

    host = host_info()
    sha = {name: hashlib.sha256(p.read_bytes()).hexdigest()[:12] for name, p in (("old", args.old), ("new", args.new))}
    lines = [
        "# Native kernel A/B in one process (generated by ab_native.py)",
        "",
        f"Machine: {host['cpu']} ({', '.join(host['cpu_flags'])}), 2 threads; openvino "
        f"{host['backends'].get('openvino')}; {time.strftime('%Y-%m-%d')}. Random-initialised "
        f"{PRESETS[args.preset]} at 224 px; {args.rounds} rounds per CPU path, each timing old and new in turn "
        f"(who goes first alternates). old: {args.old.name} (sha256 {sha['old']}), new: {args.new.name} "
        f"(sha256 {sha['new']}). Emulated paths as in bench_export.py.",
    ]
    for label, out in printed.items():
        lines += ["", f"## {label}", "", "```", *out.strip().splitlines(), "```"]
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
