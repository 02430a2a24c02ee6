"""Target profiles, named as users say them: `edgedf export --target jetson`.

Each is a small declarative entry: which backend runs the model there, which precisions it can take,
which one to pick by default per model variant, how many threads, and how ternary layers are lowered
for that backend (with the reason). Export and runtime read these; nothing else hard-codes a target.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgedf.runtime.errors import EdgedfError

PRECISIONS = ("fp32", "fp16", "int8-ptq", "int8-qat", "ternary")
BACKENDS = ("ort", "openvino", "tensorrt")


@dataclass(frozen=True)
class TargetProfile:
    name: str
    device: str  # what the hardware is, in words
    backend: str  # ort | openvino | tensorrt
    precisions: tuple[str, ...]  # what export can produce for this target
    default_fp: str  # default precision for a full-precision checkpoint
    default_bit: str  # default precision for a BitLinear checkpoint
    threads: int  # intra-op threads at run time; 0 = the backend's default (all cores)
    imgsz: int | None  # export input size; None = the checkpoint's own
    ternary_lowering: str  # how edgedf::TernaryLinear is rewritten for this backend
    why: str  # the reason for that choice, from measurements where we have them
    # the lowering where the export machine is an x86 CPU with AVX2 and edgedf's native kernel builds there
    ternary_lowering_avx2: str | None = None

    def __post_init__(self) -> None:
        assert self.backend in BACKENDS, self.backend
        assert set(self.precisions) <= set(PRECISIONS), self.precisions
        assert self.default_fp in self.precisions and self.default_bit in self.precisions

    def default_precision(self, variant: str) -> str:
        return self.default_bit if variant == "bit" else self.default_fp

    def check_precision(self, precision: str, variant: str) -> None:
        if precision not in PRECISIONS:
            raise EdgedfError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        if precision not in self.precisions:
            raise EdgedfError(
                f"target {self.name} ({self.backend}) cannot do {precision}; it supports {', '.join(self.precisions)}"
            )
        if precision == "ternary" and variant != "bit":
            raise EdgedfError(
                "precision ternary needs a BitLinear checkpoint (variant bit); this one is full precision"
            )
        if precision in ("int8-ptq", "int8-qat") and variant == "bit":
            raise EdgedfError(f"{precision} applies to full-precision checkpoints; a BitLinear one exports as ternary")


PROFILES: dict[str, TargetProfile] = {
    p.name: p
    for p in (
        TargetProfile(
            name="jetson",
            device="NVIDIA Jetson Orin (JetPack 6.x, TensorRT 10.3), GPU",
            backend="tensorrt",
            precisions=("fp32", "fp16", "int8-ptq", "int8-qat", "ternary"),
            default_fp="fp16",
            default_bit="ternary",
            threads=0,
            imgsz=None,
            ternary_lowering="int8-qdq",
            why="TensorRT has no per-token activation scales and no 2-bit GEMM: ternary weights become exact "
            "int8 DequantizeLinear constants, activations static per-tensor Q/DQ calibrated on data.",
        ),
        TargetProfile(
            name="cpu",
            device="x86-64 CPU (OpenVINO)",
            backend="openvino",
            precisions=("fp32", "fp16", "int8-ptq", "int8-qat", "ternary"),
            default_fp="fp32",
            default_bit="ternary",
            threads=0,
            imgsz=None,
            ternary_lowering="int8-qdq",
            ternary_lowering_avx2="native",
            why="On every x86 CPU with AVX2 edgedf's native kernel (its own TernaryLinear: exact per-token codes; "
            "norm, GELU, fc1->fc2, the residual adds and the attention's q and k fused) is the fastest ternary path: "
            "OpenVINO's int8 is slower than fp32 without VNNI and behind the kernel with AVX-VNNI, AVX-512 VNNI "
            "(AMD Zen 4, Zen 5) and AMX (Sapphire Rapids), so there export picks `native`. Where the kernel cannot "
            "be built, static int8 Q/DQ MatMuls, which need no compiler on the device (2-bit weights on disk, "
            "expanded to int8 at load; benchmarks/export).",
        ),
        TargetProfile(
            name="rpi",
            device="Raspberry Pi 5 (Cortex-A76, ARM64 with dot-product), ONNX Runtime",
            backend="ort",
            precisions=("fp32", "int8-ptq", "int8-qat", "ternary"),
            default_fp="fp32",
            default_bit="ternary",
            threads=4,
            imgsz=None,
            ternary_lowering="matmulnbits-2bit",
            why="ONNX Runtime has native 2-bit MatMulNBits kernels for ARM64 with sdot/udot, which the A76 has.",
        ),
        TargetProfile(
            name="rpi4",
            device="Raspberry Pi 4 (Cortex-A72, ARM64 without dot-product), ONNX Runtime",
            backend="ort",
            precisions=("fp32", "int8-ptq", "int8-qat", "ternary"),
            default_fp="fp32",
            default_bit="ternary",
            threads=4,
            imgsz=None,
            ternary_lowering="int8-exact",
            why="No dot-product instructions: the 2-bit kernels lose their edge; int8 GEMM (MatMulInteger over "
            "BitNet's per-token int8 codes and the ternary weights, exact int32 accumulation) is the fast path.",
        ),
        TargetProfile(
            name="ort",
            device="any CPU, ONNX Runtime (portable fallback)",
            backend="ort",
            precisions=("fp32", "int8-ptq", "int8-qat", "ternary"),
            default_fp="fp32",
            default_bit="ternary",
            threads=0,
            imgsz=None,
            ternary_lowering="native",
            why="The canonical graph: on x86-64 Linux with AVX2 its TernaryLinear nodes run in edgedf's kernel, "
            "registered with ONNX Runtime on the device (built there on first use); anywhere else ONNX Runtime runs "
            "the ONNX function each node carries, BitNet's exact integer arithmetic fused into MatMulIntegerToFloat "
            "(what `int8-exact` writes; 2-bit MatMulNBits ran 1.13-1.50x of fp32 time on AVX2, MEASUREMENTS.md).",
        ),
    )
}


def get_profile(name: str) -> TargetProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise EdgedfError(f"unknown target {name!r}; choose one of {', '.join(PROFILES)}") from None
