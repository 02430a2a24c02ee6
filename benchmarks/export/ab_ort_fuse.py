"""edgedf's ONNX Runtime op with and without the norm, GELU and residual add fused in, inside a whole ViT-S.

    python benchmarks/export/ab_ort_fuse.py --rounds 30 --out benchmarks/export/results_ab_ort_fuse_zen5.md

A `native` bundle opened by the runtime on ONNX Runtime runs edgedf's op with the RMSNorm in front of each BitLinear,
fc1's GELU and the residual adds taken into it (runtime/backends/ort_native.py: fuse); "plain" is the same op on the
canonical graph as the bundle stores it (ONNX Runtime's SimplifiedLayerNormalization, its Erf-form GELU and Adds
around the op). Both sessions live in one process; every round times each at batch 1 (3 runs) and batch 8 (1 run) in
turn, the two taking turns to go first, and prints plain/fused per round (median and middle half: a change is real
when the middle half clears 1.0), the wall medians and the largest output difference. Random-initialised ViT-S at
224 px, exported with `edgedf export`'s own code, target ort; 2 threads.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_export import make_checkpoints  # this folder's export benchmark


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--out", type=Path, help="also write what it printed as markdown")
    args = ap.parse_args()
    from edgedf.devices.bench import host_info
    from edgedf.export.api import ExportOptions, export_bundle
    from edgedf.runtime.backends import ort_native
    from edgedf.runtime.backends.ort import NativeModel, OrtSession

    lines = []

    def say(s: str) -> None:
        print(s, flush=True)
        lines.append(s)

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        ck = make_checkpoints("vit_small", tmp)["bit"]
        path, _ = export_bundle(ck, ExportOptions(target="ort", out=tmp / "b", lowering="native", verify_n=16))
        raw = (path / "model.onnx").read_bytes()
    lib = ort_native.library()
    sessions = {}
    for name, model in (("plain", raw), ("fused", ort_native.fuse(raw))):
        m = NativeModel(model)
        m.library = lib
        sessions[name] = OrtSession(m, threads=2)
    rng = np.random.default_rng(0)
    xs = {b: rng.standard_normal((b, 3, 224, 224)).astype(np.float32) for b in (1, 8)}
    outs = {n: s.run({s.input_names[0]: xs[8]})[0] for n, s in sessions.items()}
    host = host_info()
    say(f"Machine: {host['cpu']} ({', '.join(host['cpu_flags'])}), 2 threads; kernel path "
        f"{ort_native.cpu_path(lib)}; {time.strftime('%Y-%m-%d')}; load average {host.get('loadavg_1m')}.")  # fmt: skip
    say(f"max |plain - fused| output at batch 8: {float(np.abs(outs['plain'] - outs['fused']).max()):.3g} "
        f"(of {float(np.abs(outs['plain']).max()):.3g})")  # fmt: skip
    times: dict[str, dict[int, list[float]]] = {n: {1: [], 8: []} for n in sessions}
    ratios: dict[int, list[float]] = {1: [], 8: []}
    for i in range(args.rounds + 2):  # the first two rounds warm up
        order = ("plain", "fused") if i % 2 == 0 else ("fused", "plain")
        this: dict[str, dict[int, float]] = {n: {} for n in order}
        for n in order:
            s = sessions[n]
            for b, reps in ((1, 3), (8, 1)):
                t0 = time.perf_counter()
                for _ in range(reps):
                    s.run({s.input_names[0]: xs[b]})
                this[n][b] = (time.perf_counter() - t0) * 1000 / reps / b
        if i >= 2:
            for b in (1, 8):
                for n in order:
                    times[n][b].append(this[n][b])
                ratios[b].append(this["plain"][b] / this["fused"][b])
    say("")
    say("| batch | plain ms/img | fused ms/img | plain / fused, median of rounds | middle half |")
    say("|---|---|---|---|---|")
    for b in (1, 8):
        q = statistics.quantiles(ratios[b], n=4)
        say(f"| {b} | {statistics.median(times['plain'][b]):.2f} | {statistics.median(times['fused'][b]):.2f} | "
            f"{statistics.median(ratios[b]):.3f}x | {q[0]:.3f}-{q[2]:.3f} |")  # fmt: skip
    say("")
    say(f"Load average after: {host_info().get('loadavg_1m')}.")
    say(f"{args.rounds} interleaved rounds after 2 warm-up rounds (`python benchmarks/export/ab_ort_fuse.py "
        f"--rounds {args.rounds}`), random-initialised ViT-S at 224 px, ONNX Runtime 2 threads.")  # fmt: skip
    if args.out:
        title = "# edgedf's ONNX Runtime op: plain against the norm, GELU and residual fused in (ab_ort_fuse.py)"
        args.out.write_text(title + "\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
