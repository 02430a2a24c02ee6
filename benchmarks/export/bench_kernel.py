"""The native ternary kernel's GEMM alone, per CPU path: the multiply-adds per second each path reaches.

    python benchmarks/export/bench_kernel.py        # writes results_kernel.md / .json beside this file
    python benchmarks/export/bench_kernel.py --source OLD.cpp   # another version of the kernel: prints only
    python benchmarks/export/bench_kernel.py --tag zen3   # results_kernel_zen3.*: another machine's

Compiles a small C++ harness that includes runtime/native/ternary_linear.cpp (the same source and flags as the
extension) and times the GEMM of one ViT-S block at batch 8 (M = 1,576 tokens; qkv, proj, fc1, fc2: 2.79 GMAC)
on one thread and on two, in the row blocks the op quantises and multiplies at once (rows_per_block: 64 on AMX, 60
elsewhere), codes quantised once beforehand. 40 runs per process, paths and thread counts interleaved over 3
rounds in fresh processes (EDGEDF_TERNARY_ISA forces each path); the median and the best run. Beside it, the rate
of the path's inner-loop arithmetic alone on registers (no loads): how close the GEMM runs to what its instructions
allow on this core. On a shared VM single runs burst well above the rate a model sees (on the Zen 3 of 12-02,
150 one-thread runs: median 59 GMAC/s, 5 % and 95 % points 48 and 97, best 104), so the medians are the figures
to compare with the ternary layers' rate inside a model (results_profile*.md, 2 threads). The whole-model
speed-ups are results*.md (bench_export.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from edgedf.devices.bench import cpu_info, host_info
from edgedf.runtime.backends import native_build, ov_native

HERE = Path(__file__).parent
HARNESS = r"""
#include SOURCE
#include <chrono>
#include <cstdio>
#include <random>
#include <thread>
using namespace edgedf;

// The path's inner-loop arithmetic alone, on registers (no loads, independent sums as in its tile): the most
// multiply-adds per second its instructions allow on this core, against which the GEMM's rate is read.
#define EDGEDF_REGS(op) ".irp i," op "\n\t"
static int threads = 1;  // argv[1]: 1, or 2 (the op's own 2 threads, sharing row blocks)
template <typename F>
static void on_threads(const F& f) {  // f on this thread, and at once on a second one where threads == 2
    if (threads == 1) return f();
    std::thread other(f);
    f();
    other.join();
}
static std::vector<double> timed(void (*loop)(long)) {  // loop iterations per second, per run, all threads
    std::vector<double> rates;
    const long n = 2000000;
    for (int r = 0; r < 15; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        on_threads([&] { loop(n); });
        rates.push_back(threads * n / std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return rates;
}
__attribute__((target("avx512f,avx512vnni"))) static void loop_avx512(long n) {  // 24 sums x 64 MAC
    __asm__ volatile("vpxord %%zmm24, %%zmm24, %%zmm24\n\tvpxord %%zmm25, %%zmm25, %%zmm25\n\t1:\n\t"
                     EDGEDF_REGS("0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23")
                     "vpdpbusd %%zmm24, %%zmm25, %%zmm\\i\n\t.endr\n\tdecq %0\n\tjnz 1b"
                     : "+r"(n) :: "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
                       "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18",
                       "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25");
}
#if defined(EDGEDF_AVX_VNNI)
__attribute__((target("avx2,avxvnni"))) static void loop_avxvnni(long n) {  // 12 sums x 32 MAC
    __asm__ volatile("vpxor %%ymm14, %%ymm14, %%ymm14\n\tvpxor %%ymm15, %%ymm15, %%ymm15\n\t1:\n\t"
                     EDGEDF_REGS("0,1,2,3,4,5,6,7,8,9,10,11")
                     "%{vex%} vpdpbusd %%ymm14, %%ymm15, %%ymm\\i\n\t.endr\n\tdecq %0\n\tjnz 1b"
                     : "+r"(n) :: "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
                       "xmm9", "xmm10", "xmm11", "xmm14", "xmm15");
}
#endif
__attribute__((target("avx2"))) static void loop_avx2(long n) {  // 12 int16 sums x 32 MAC: vpmaddubsw + vpaddw
    __asm__ volatile("vpxor %%ymm14, %%ymm14, %%ymm14\n\tvpxor %%ymm15, %%ymm15, %%ymm15\n\t1:\n\t"
                     EDGEDF_REGS("0,1,2,3,4,5,6,7,8,9,10,11")
                     "vpmaddubsw %%ymm14, %%ymm15, %%ymm12\n\tvpaddw %%ymm12, %%ymm\\i, %%ymm\\i\n\t.endr\n\t"
                     "decq %0\n\tjnz 1b"
                     : "+r"(n) :: "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
                       "xmm9", "xmm10", "xmm11", "xmm12", "xmm14", "xmm15");
}
static std::vector<double> register_gmacs(Isa isa) {  // empty: not measured on this path
    std::vector<double> r;
    double macs = 0;
    if (isa == Isa::avx512) r = timed(loop_avx512), macs = 24 * 64;
#if defined(EDGEDF_AVX_VNNI)
    if (isa == Isa::avxvnni) r = timed(loop_avxvnni), macs = 12 * 32;
#endif
    if (isa == Isa::avx2) r = timed(loop_avx2), macs = 12 * 32;
    for (auto& v : r) v *= macs / 1e9;
    return r;
}
static void print(const std::vector<double>& v) {
    for (double x : v) printf(" %.1f", x);
    printf("\n");
}

int main(int argc, char** argv) {
    threads = argc > 1 ? atoi(argv[1]) : 1;
    const Isa isa = detect_isa();
    const int64_t M = 1576, task = rows_per_block(isa);
    const int64_t layers[4][2] = {{384, 1152}, {384, 384}, {384, 1536}, {1536, 384}};  // K, N
    struct Layer { std::shared_ptr<Packed> p; std::vector<float> y, bias, s; std::vector<uint8_t> a; };
    std::vector<Layer> ls;
    std::mt19937 rng(0);
    double macs = 0;
    for (const auto& kn : layers) {
        const int64_t k = kn[0], n = kn[1];
        std::vector<uint8_t> packed(n * k / 4);
        for (auto& b : packed) b = (rng() % 3) | (rng() % 3) << 2 | (rng() % 3) << 4 | (rng() % 3) << 6;
        Layer l;
        l.p = pack(packed.data(), n, k);
        std::vector<float> x(M * k);
        for (auto& v : x) v = std::normal_distribution<float>()(rng);
        l.y.resize(M * n), l.bias.assign(n, 0.1f), l.a.resize(M * l.p->k4 * 4), l.s.resize(M);
        quantize_rows(isa, x.data(), M, k, l.p->k4, l.a.data(), l.s.data());
        for (auto& v : l.s) v = 0.05f / v;  // the epilogue's g / s
        macs += double(M) * k * n;
        ls.push_back(std::move(l));
    }
    std::vector<double> gmacs;  // per run
    for (int it = 0; it < 40; ++it) {
        const auto t0 = std::chrono::steady_clock::now();
        for (auto& l : ls) {  // the op's scheduling: each thread takes the next row block as it finishes one
            std::atomic<int64_t> next{0};
            on_threads([&] {
                for (int64_t m0; (m0 = next.fetch_add(task)) < M;)
                    gemm(isa, *l.p, l.a.data(), l.s.data(), l.bias.data(), l.y.data(), m0, std::min(M, m0 + task));
            });
        }
        gmacs.push_back(macs / std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 1e9);
    }
    printf("%s\n", isa_name(isa));
    print(gmacs);
    print(register_gmacs(isa));
}
"""
# (EDGEDF_TERNARY_ISA, CPU flag)
PATHS = (("avx2", "avx2"), ("avxvnni", "avx_vnni"), ("avx512", "avx512_vnni"), ("amx", "amx_int8"))


def build(tmp: Path, source: Path) -> Path:
    _, ov_dir = ov_native._openvino()
    libs = ov_dir / "libs"
    link = [f"-l:{sorted(libs.glob(name + '*'))[0].name}" for name in ov_native.LIBS]
    src = tmp / "harness.cpp"
    src.write_text(HARNESS.replace("SOURCE", json.dumps(str(source.resolve()))))
    exe = tmp / "harness"
    flags = [f for f in native_build.FLAGS + ov_native.FLAGS if f not in ("-shared", "-fPIC")]
    cmd = [
        native_build.compiler() or "g++",
        *flags,
        f"-I{ov_dir / 'include'}",
        str(src),
        "-o",
        str(exe),
        f"-L{libs}",
        *link,
    ]
    subprocess.run([*cmd, f"-Wl,-rpath,{libs}"], check=True)
    return exe


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", type=Path, help="time this kernel source instead (results printed, not written)")
    ap.add_argument("--tag", help="write results_*_TAG.*: another machine's results beside these")
    args = ap.parse_args()
    flags = set(cpu_info()[1])
    paths = [p for p, flag in PATHS if flag in flags]
    thread_counts = [1, 2] if (os.cpu_count() or 1) >= 2 else [1]
    load_before = os.getloadavg()
    gemm: dict[tuple[str, int], list[float]] = {(p, t): [] for p in paths for t in thread_counts}
    regs: dict[tuple[str, int], list[float]] = {key: [] for key in gemm}
    names = {}
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(Path(tmp), args.source or ov_native.SOURCE)
        for _ in range(3):
            for p, t in gemm:
                env = {**os.environ, "EDGEDF_TERNARY_ISA": p}
                out = subprocess.run([str(exe), str(t)], env=env, capture_output=True, text=True, check=True).stdout
                name, runs, reg = out.splitlines()  # reg: empty where not measured
                names[p] = name
                gemm[p, t] += map(float, runs.split())
                regs[p, t] += map(float, reg.split())
    host = host_info()
    rows = [
        {
            "path": names[p],
            "threads": t,
            "gmac_per_s_median": round(statistics.median(gemm[p, t]), 1),
            "gmac_per_s_best": max(gemm[p, t]),
            "register_gmac_per_s_median": round(statistics.median(regs[p, t]), 1) if regs[p, t] else None,
            "register_gmac_per_s_best": max(regs[p, t], default=None),
            "gmac_per_s_quartiles": [round(q, 1) for q in statistics.quantiles(gemm[p, t], n=4)],
        }
        for p, t in gemm
    ]
    meta = {
        "machine": f"{host['cpu']} ({', '.join(host['cpu_flags'])})",
        "date": time.strftime("%Y-%m-%d"),
        "load_before_after": [round(load_before[0], 1), round(os.getloadavg()[0], 1)],
        "openvino": host["backends"].get("openvino"),
    }
    lines = [
        "# Native ternary kernel: the GEMM alone (generated by bench_kernel.py)",
        "",
        f"Machine: {meta['machine']}; {meta['date']}; load average before/after {meta['load_before_after'][0]} / "
        f"{meta['load_before_after'][1]}. One ViT-S block at batch 8 (M = 1,576, 2.79 GMAC) in the op's row blocks, "
        "on 1 thread and on 2 (taking row blocks from a shared counter, as the op's threads do); 40 runs in each of "
        "3 interleaved rounds in fresh processes. Register-only: the path's inner-loop arithmetic alone (vpdpbusd, "
        "or vpmaddubsw and vpaddw on AVX2), no loads, as many independent sums as its tile keeps, on as many "
        "threads, 15 runs per round: what its instructions allow on this core (not measured on AMX). On a shared "
        "VM the best run is a burst, not the rate a model sees: compare medians (a whole model's ternary layers, "
        "results_profile*.md, run on 2 threads).",
        "",
        "| path | threads | GMAC/s median (middle half) | best | register-only median (best) "
        "| GEMM / register-only, medians |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        reg, med = r["register_gmac_per_s_median"], r["gmac_per_s_median"]
        q1, _, q3 = r["gmac_per_s_quartiles"]
        regs_cells = f"{reg:.0f} ({r['register_gmac_per_s_best']:.0f}) | {med / reg:.0%}" if reg else "- | -"
        best = r["gmac_per_s_best"]
        lines.append(f"| {r['path']} | {r['threads']} | {med:.0f} ({q1:.0f}-{q3:.0f}) | {best:.0f} | {regs_cells} |")
    print("\n".join(lines))
    if args.source is None:
        stem = f"results_kernel_{args.tag}" if args.tag else "results_kernel"
        (HERE / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        (HERE / f"{stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
