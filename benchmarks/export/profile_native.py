"""Where a ViT-S's time goes on OpenVINO, fp32 against the native ternary kernel (and NNCF int8-PTQ), per layer type.

    python benchmarks/export/profile_native.py     # writes results_profile.md / .json beside this file
    python benchmarks/export/profile_native.py --tag zen3   # ... results_profile_zen3.*: another machine's

Exports a random-initialised ViT-S at 224 px three times with `edgedf export`'s own code (fp32; ternary with the
`native` lowering; the fp32 model's NNCF int8-PTQ, calibrated on random crops, the fastest int8 form where
OpenVINO has VNNI), then, for each CPU path this machine has (AVX2, AVX-VNNI and AVX-512 VNNI emulated as in
bench_export.py where the CPU has more than that, and the CPU as it is), in a fresh process: compiles each as
the runtime does (2 threads, LATENCY, f32) with OpenVINO's per-layer counters on (PERF_COUNT), times batch 8
and sums each layer type's real time. edgedf's ops run as OpenVINO "Reference" layers and are named here by their
own type (TernaryLinear; Attention, on AVX-512); the TernaryLinears' multiply-adds over their time give the rate the
kernel reaches inside the model, to set beside its GEMM alone (results_kernel.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_export import EMULATE, make_checkpoints  # this folder's export benchmark

HERE = Path(__file__).parent
PRESET, BATCH, THREADS = "vit_small", 8, 2
# (column, checkpoint kind, precision, lowering): the bundles profiled side by side
COLUMNS = (("fp32", "fp", "fp32", None), ("native", "bit", "ternary", "native"), ("int8-ptq", "fp", "int8-ptq", None))
# (label, environment, CPU flag needed): the emulations are bench_export.py's own
PATHS = (
    *(
        (f"{e['name']} (emulated)", e["env"], flag)
        for e, flag in ((EMULATE["avx2"], "avx2"), (EMULATE["avxvnni"], "avx_vnni"), (EMULATE["vnni"], "avx512_vnni"))
    ),
    ("this CPU", {}, None),
)

CHILD = r"""
import collections, json, sys, time
import numpy as np, openvino as ov
from edgedf.runtime.bundle import load_bundle
from edgedf.runtime.backends import openvino as ovb
from edgedf.runtime.backends.ov_native import cpu_path, extension
batch, threads, runs, *bundles = sys.argv[1:]
out = {"kernel": cpu_path(extension())}
x = np.random.default_rng(0).standard_normal((int(batch), 3, 224, 224)).astype(np.float32)
for path in bundles:
    model = ovb.model_for_bundle(load_bundle(path))
    core = ov.Core()
    if hasattr(model, "extension"):
        core.add_extension(str(model.extension))
    if isinstance(model, bytes):
        m = core.read_model(model=bytes(model), weights=ov.Tensor(np.empty(0, np.uint8)))
    else:  # an IR's .xml
        m = core.read_model(str(model))
    config = {"INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": True}
    request = core.compile_model(m, "CPU", config).create_infer_request()
    edgedf_ops = {op.get_friendly_name(): op.get_type_name() for op in m.get_ops()
                  if op.get_type_info().version_id == "edgedf"}  # run as "Reference" layers
    for _ in range(3):
        request.infer({0: x})
    walls, per_type = [], collections.defaultdict(list)
    for _ in range(int(runs)):
        t0 = time.perf_counter()
        request.infer({0: x})
        walls.append((time.perf_counter() - t0) * 1000)
        run = collections.Counter()
        for p in request.profiling_info:
            run[edgedf_ops.get(p.node_name, p.node_type)] += p.real_time.total_seconds() * 1000
        for k, v in run.items():
            per_type[k].append(v)
    out[path] = {"wall_ms": walls, "per_type_ms": dict(per_type)}
print(json.dumps(out))
"""


def linear_macs(bundle: Path, rows: int) -> int:
    """Multiply-adds of the bundle's TernaryLinear nodes for `rows` tokens (K = 4 x packed bytes per row)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(bundle / "model.onnx"))
    inits = {i.name: i for i in m.graph.initializer}
    macs = 0
    for node in m.graph.node:
        if node.op_type == "TernaryLinear":
            n, k_bytes = numpy_helper.to_array(inits[node.input[1]]).shape
            macs += rows * n * 4 * k_bytes
    return macs


def _beyond(flags: list[str], i: int) -> bool:
    """Whether the CPU has one of the flags of the emulated paths after PATHS[i], or AMX."""
    return any(f in flags for _, _, f in PATHS[i + 1 :] if f) or "amx_int8" in flags


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--tag", help="write results_*_TAG.*: another machine's results beside these")
    args = ap.parse_args()
    from edgedf.devices.bench import host_info
    from edgedf.export.api import ExportOptions, export_bundle
    from edgedf.train.vit import ViTConfig

    host = host_info()
    load_before = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        cks = make_checkpoints(PRESET, tmp)
        bundles = {}
        for name, kind, precision, lowering in COLUMNS:
            opts = ExportOptions(
                target="cpu", precision=precision, out=tmp / name, lowering=lowering, verify_n=16, calib_n=64
            )
            export_bundle(cks[kind], opts)
            bundles[name] = tmp / name
        cfg = ViTConfig.from_preset(PRESET)
        tokens = (cfg.img_size // cfg.patch_size) ** 2 + 1
        macs = linear_macs(bundles["native"], BATCH * tokens)
        for i, (label, env, flag) in enumerate(PATHS):
            # an emulated path only where the CPU has it and more (on an AVX2-only CPU, "AVX2" is this CPU)
            if flag and not (flag in host["cpu_flags"] and _beyond(host["cpu_flags"], i)):
                continue
            cmd = [sys.executable, "-c", CHILD, str(BATCH), str(THREADS), str(args.runs), *map(str, bundles.values())]
            proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"profiling on {label} failed: {proc.stderr.strip().splitlines()[-1]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            runs = {name: res[str(path)] for name, path in bundles.items()}
            types = {}
            for name, r in runs.items():
                for t, v in r["per_type_ms"].items():
                    types.setdefault(t, {})[name] = statistics.median(v) / BATCH
            linear_ms = types.get("TernaryLinear", {}).get("native", float("nan"))
            results.append(
                {
                    "path": label,
                    "kernel": res["kernel"],
                    "wall_ms_per_img": {n: statistics.median(r["wall_ms"]) / BATCH for n, r in runs.items()},
                    "per_type_ms_per_img": types,
                    "ternary_gmac_per_s": macs / (linear_ms * BATCH) / 1e6,
                }
            )
            walls = ", ".join(f"{n} {w:.1f}" for n, w in results[-1]["wall_ms_per_img"].items())
            print(f"{label}: {walls} ms/img", flush=True)
    meta = {
        "machine": f"{host['cpu']} ({', '.join(host['cpu_flags'])}), {THREADS} threads",
        "date": time.strftime("%Y-%m-%d"),
        "openvino": host["backends"].get("openvino"),
        "load_before_after": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "runs": args.runs,
        "ternary_macs_per_batch": macs,
    }
    stem = f"results_profile_{args.tag}" if args.tag else "results_profile"
    (HERE / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    write_markdown(meta, results, HERE / f"{stem}.md")


def write_markdown(meta: dict, results: list[dict], out: Path) -> None:
    lines = [
        "# Where a ViT-S's time goes: fp32, the native ternary kernel and NNCF int8 (generated by profile_native.py)",
        "",
        f"Machine: {meta['machine']}; openvino {meta['openvino']}; {meta['date']}; load average before/after "
        f"{meta['load_before_after'][0]} / {meta['load_before_after'][1]}. Random-initialised ViT-S, 224 px, batch "
        f"{BATCH}; OpenVINO's per-layer real time (PERF_COUNT), median of {meta['runs']} runs after 3 warm-up, "
        "per image. Layers run one after another, so their times add up to about the wall time. Emulated paths "
        "as in results_*_emulated.md (oneDNN limited by ONEDNN_MAX_CPU_ISA, edgedf's kernel forced to its path).",
        "",
        "Layer types (OpenVINO's names, and edgedf's ops by their own): FullyConnected, the fp32 linears (OpenVINO "
        "fuses their GELU in); TernaryLinear, edgedf's BitLinear (with its RMSNorm in, and fc1's GELU); Subgraph, "
        "OpenVINO's attention of each block (QK^T, softmax, xV, fused); Attention, edgedf's (on AVX-512); MVN, "
        "LayerNorm (the ternary model's norms run inside edgedf's op, all but the last); FullyConnected / "
        "FullyConnectedQuantizedLegacy and FakeQuantize in the int8-ptq column, NNCF's int8 linears and activation "
        "quantisers (NNCF also quantises the attention's matmuls). The GEMM alone per path, "
        "one thread: results_kernel.md.",
        "",
    ]
    for r in results:
        wall = r["wall_ms_per_img"]
        lines += [
            f"## {r['path']} (edgedf kernel: {r['kernel']})",
            "",
            f"Wall time: fp32 {wall['fp32']:.1f}, native {wall['native']:.1f} ms/img "
            f"({wall['fp32'] / wall['native']:.2f}x), int8-ptq {wall['int8-ptq']:.1f} ms/img "
            f"({wall['fp32'] / wall['int8-ptq']:.2f}x). The ternary layers (TernaryLinear) run "
            f"{r['ternary_gmac_per_s']:.0f} GMAC/s on {THREADS} threads.",
            "",
            "| layer type | " + " | ".join(f"{n} ms/img" for n, *_ in COLUMNS) + " |",
            "|---|" + "---|" * len(COLUMNS),
        ]
        types = sorted(r["per_type_ms_per_img"].items(), key=lambda kv: -max(kv[1].values()))
        for t, v in types:
            if max(v.values()) < 0.05:
                continue
            lines.append(f"| {t} | " + " | ".join(f"{v[n]:.2f}" if n in v else "-" for n, *_ in COLUMNS) + " |")
        lines.append("")
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
