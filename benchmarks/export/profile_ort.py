"""Where a ViT-S's time goes on ONNX Runtime: fp32, the int8-exact ternary lowering (stock ops) and edgedf's op.

    python benchmarks/export/profile_ort.py              # writes results_profile_ort.md / .json beside this file
    python benchmarks/export/profile_ort.py --tag zen3   # ... results_profile_ort_zen3.*: another machine's

Exports a random-initialised ViT-S at 224 px three times with `edgedf export`'s own code, target ort: fp32; ternary
with the `int8-exact` lowering; ternary with `native` (the target's default), run with edgedf's op registered and
again without it (its ONNX functions, as where the op cannot be built). Opens each as the runtime does
(runtime/backends/ort.py: 2 threads, all graph optimisations) with ONNX Runtime's profiler on, times batch 8 in
interleaved rounds (each round runs every column once: one column timed alone after another read a burst of load on
this shared host as its own, 2 of 3 runs on 12-03) and sums each node's kernel time by what it does:

    linears            fp32: MatMul with a weight initializer; int8-exact: MatMulIntegerToFloat (int8 x ternary);
                       native: edgedf's TernaryLinear op (norm, codes, GEMM, epilogue, fc1's GELU and the
                       residual add in one; runtime/native)
    linear bias        fp32: the Add of a linear's bias (ternary: in the epilogue below)
    per-token quantise int8-exact (and the ONNX functions): Abs, ReduceMax, Max, 127 / absmax, x * s,
                       QuantizeLinear (the functions also compute a run-time 1: Size, Greater, Cast)
    epilogue           int8-exact (and the ONNX functions): / s per token, + bias
    BitLinear norm     ternary: the RMSNorm in front of every BitLinear (SimplifiedLayerNormalization, fused;
                       native: in the op)
    the rest           all: attention, GELU, residual adds, LayerNorm, the patch embedding

ONNX Runtime runs a graph's nodes one after another on this path, so the kernel times add up to about the wall
time. From the int8-exact column it then works out the ceiling of any stock-op lowering with these kernels: the
speed against fp32 if the per-token quantise, the epilogue, or both cost nothing (the GEMM, the norm and the
rest kept as measured). The int8 codes must stay exactly PyTorch's, which is what keeps those nodes; edgedf's op
computes the same codes inside its GEMM's pass.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from bench_export import make_checkpoints  # this folder's export benchmark

HERE = Path(__file__).parent
PRESET, BATCH, THREADS = "vit_small", 8, 2
# (column, checkpoint kind, precision, lowering, edgedf's op registered)
COLUMNS = (
    ("fp32", "fp", "fp32", None, False),
    ("int8-exact", "bit", "ternary", "int8-exact", False),
    ("native", "bit", "ternary", "native", True),
    ("native, no op", "bit", "ternary", "native", False),  # where the op cannot be built: the ONNX functions
)
CATEGORIES = ("linears", "linear bias", "per-token quantise", "epilogue", "BitLinear norm", "the rest")
# the names of the nodes the int8 forms of TernaryLinear leave: export/lowering.py's (base__lN) and ONNX Runtime's
# for the nodes of an inlined ONNX function (`native` without edgedf's op)
TERNARY_NODE_NAMES = ("__l", "_inlfunc_TernaryLinear")


def optimised(model, tmp: Path) -> onnx.ModelProto:
    """The graph ONNX Runtime runs for `model` (a path, or ONNX bytes with an op `library`), optimised as the
    runtime's sessions are (all levels): its node names are the profile's."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp / "optimised.onnx")
    if getattr(model, "library", None):
        so.register_custom_ops_library(str(model.library))
    ort.InferenceSession(model if isinstance(model, bytes) else str(model), so, providers=["CPUExecutionProvider"])
    return onnx.load(str(tmp / "optimised.onnx"))


def categorise(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> category, read off the optimised graph."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    out: dict[str, str] = {}
    for n in g.node:  # in topological order: a node's producers are classed before it
        src = [producer.get(i) for i in n.input]
        kinds = [out.get(p.name) if p is not None else None for p in src]
        if n.op_type in ("MatMulIntegerToFloat", "TernaryLinear") or (n.op_type == "MatMul" and n.input[1] in inits):
            out[n.name] = "linears"
        elif n.op_type == "SimplifiedLayerNormalization":
            out[n.name] = "BitLinear norm"
        elif n.op_type == "Add" and "linears" in kinds and any(i in inits for i in n.input):
            mm = next(p for p, k in zip(src, kinds, strict=True) if k == "linears")
            out[n.name] = "linear bias" if mm.op_type == "MatMul" else "epilogue"
        elif n.op_type == "Div" and src[0] is not None and src[0].op_type == "MatMulIntegerToFloat":
            out[n.name] = "epilogue"
        elif n.op_type == "Add" and kinds[0] == "epilogue":
            out[n.name] = "epilogue"
        elif any(t in n.name for t in TERNARY_NODE_NAMES):
            out[n.name] = "per-token quantise"
        else:
            out[n.name] = "the rest"
    return out


def open_column(bundle: Path, tmp: Path, with_op: bool):
    """A profiled session for `bundle` as the runtime opens it (`native` with edgedf's op library unless with_op is
    False), and its node names' categories."""
    from edgedf.runtime.backends.ort import OrtSession, model_for_bundle
    from edgedf.runtime.bundle import load_bundle

    model = model_for_bundle(load_bundle(bundle)) if with_op else bundle / "model.onnx"
    names = categorise(optimised(model, tmp))
    return OrtSession(model, threads=THREADS, profile=str(tmp / f"profile-{bundle.name}-{with_op}")), names


def profile(columns: dict[str, tuple], runs: int) -> dict[str, dict]:
    """Each column's wall time and kernel time per category: 3 warm-up runs each, then `runs` rounds, each running
    every column once in turn (so a burst of load on this shared host hits all columns alike, not one)."""
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((BATCH, 3, 224, 224)).astype(np.float32)
    wall: dict[str, list[float]] = {name: [] for name in columns}
    for r in range(3 + runs):
        for name, (sess, _) in columns.items():
            t0 = time.perf_counter()
            sess.run({sess.input_names[0]: x})
            if r >= 3:
                wall[name].append((time.perf_counter() - t0) * 1000)
    out = {}
    for name, (sess, names) in columns.items():
        events = json.loads(Path(sess.end_profiling()).read_text())
        # per run: the kernel time of each category (the profile also holds the 3 warm-up runs: drop them)
        per_run: list[dict[str, float]] = []
        ops: dict[str, set] = defaultdict(set)
        for e in events:
            if e.get("cat") == "Session" and e["name"] == "model_run":
                per_run.append(defaultdict(float))
            elif e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and per_run:
                node, op = e["name"][: -len("_kernel_time")], e["args"]["op_name"]
                c = names.get(node, "the rest")
                per_run[-1][c] += e["dur"] / 1000
                ops[c].add(op)
        per_run = per_run[-runs:]
        out[name] = {
            "ort": ort.__version__,
            "wall_ms_per_img": statistics.median(wall[name]) / BATCH,
            "per_category_ms_per_img": {
                c: statistics.median(r.get(c, 0.0) for r in per_run) / BATCH for c in CATEGORIES
            },
            "ops": {c: sorted(v) for c, v in ops.items()},
        }
    return out


def bounds(fp: dict, tern: dict) -> dict[str, float]:
    """Ternary's speed against fp32 (wall) with some of its own categories at zero, the rest as measured."""
    cat, wall = tern["per_category_ms_per_img"], tern["wall_ms_per_img"]
    cases = {
        "as measured": (),
        "per-token quantise free": ("per-token quantise",),
        "epilogue free": ("epilogue",),
        "both free": ("per-token quantise", "epilogue"),
        "both and the BitLinear norm free": ("per-token quantise", "epilogue", "BitLinear norm"),
    }
    return {k: fp["wall_ms_per_img"] / (wall - sum(cat[c] for c in cs)) for k, cs in cases.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--tag", help="write results_profile_ort_TAG.*: another machine's results beside these")
    args = ap.parse_args()
    from edgedf.devices.bench import host_info
    from edgedf.export.api import ExportOptions, export_bundle

    host = host_info()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        cks = make_checkpoints(PRESET, tmp)
        columns = {}
        for name, kind, precision, lowering, with_op in COLUMNS:
            out = tmp / f"{kind}-{precision}-{lowering}"
            if not out.exists():
                opts = ExportOptions(target="ort", precision=precision, out=out, lowering=lowering, verify_n=16)
                export_bundle(cks[kind], opts)
            columns[name] = open_column(out, tmp, with_op)
        results = profile(columns, args.runs)
        for name, r in results.items():
            print(f"{name}: {r['wall_ms_per_img']:.1f} ms/img")
    meta = {
        "machine": f"{host['cpu']} ({', '.join(host['cpu_flags'])}), {THREADS} threads",
        "date": time.strftime("%Y-%m-%d"),
        "onnxruntime": results["fp32"]["ort"],
        "load_before_after": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "runs": args.runs,
    }
    ceiling = bounds(results["fp32"], results["int8-exact"])
    stem = f"results_profile_ort_{args.tag}" if args.tag else "results_profile_ort"
    doc = {"meta": meta, "results": results, "speed_vs_fp32": ceiling}
    (HERE / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    write_markdown(doc, HERE / f"{stem}.md")


def write_markdown(doc: dict, out: Path) -> None:
    meta, res, ceiling = doc["meta"], doc["results"], doc["speed_vs_fp32"]
    names = [name for name, *_ in COLUMNS]
    fp = res["fp32"]["wall_ms_per_img"]
    walls = ", ".join(
        f"{n} {res[n]['wall_ms_per_img']:.1f}" + (f" ({fp / res[n]['wall_ms_per_img']:.2f}x)" if n != "fp32" else "")
        for n in names
    )
    lines = [
        "# Where a ViT-S's time goes on ONNX Runtime: fp32, int8-exact and native (generated by profile_ort.py)",
        "",
        f"Machine: {meta['machine']}; onnxruntime {meta['onnxruntime']}; {meta['date']}; load average before/after "
        f"{meta['load_before_after'][0]} / {meta['load_before_after'][1]}. Random-initialised ViT-S, 224 px, batch "
        f"{BATCH}, target `ort`, sessions as the runtime opens them; ONNX Runtime's profiler on, median of "
        f"{meta['runs']} interleaved rounds after 3 warm-up, per image. Categories: see the script's docstring.",
        "",
        f"Wall time, ms/img: {walls}.",
        "",
        "| what | " + " | ".join(f"{n} ms/img" for n in names) + " | ONNX Runtime ops (ternary) |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for c in CATEGORIES:
        ops = sorted({o for n in names[1:] for o in res[n]["ops"].get(c, [])}) or res["fp32"]["ops"].get(c, [])
        cells = " | ".join(f"{res[n]['per_category_ms_per_img'][c]:.2f}" for n in names)
        lines.append(f"| {c} | {cells} | {', '.join(ops)} |")
    lines += [
        "",
        "The ceiling of a stock-op lowering: int8-exact's speed against fp32 (wall) with some of its own work "
        "taken out and the rest as measured.",
        "",
        "| int8-exact with | speed vs fp32 |",
        "|---|---|",
        *(f"| {k} | {v:.2f}x |" for k, v in ceiling.items()),
    ]
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
