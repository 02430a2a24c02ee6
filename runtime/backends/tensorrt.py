"""TensorRT backend (Jetson / NVIDIA GPUs): builds an engine from the bundle's ONNX once, caches it
(options.cache_dir, else ~/.cache/edgedf/engines; keyed by model, precision, TensorRT version and GPU
model) and runs it with explicit-quantisation Q/DQ as exported, batches 1..MAX_BATCH per call.

TensorRT 10 (JetPack 6) builds with the FP16/INT8 builder flags. TensorRT 11 removed them (strongly
typed networks only): int8 bundles build as they are (int8 GEMMs from their Q/DQ nodes, everything else
fp32) and an fp16 bundle's ONNX is converted to fp16 tensors first (to_fp16). Neither version could be
installed where this was written (TensorRT's wheels download at install time); both paths follow
NVIDIA's documentation and the migration guide from 10.x to 11.x.

Needs `tensorrt` (JetPack ships it) and `cuda-python` for device memory. Where they do not import,
`trtexec_command()` gives the equivalent command line for building the engine by hand.
"""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path

import numpy as np

from ..errors import EdgedfError
from ..fsutil import atomic_write_bytes

INSTALL_HINT = "TensorRT comes with JetPack on a Jetson; elsewhere: pip install tensorrt cuda-python"


MAX_BATCH = 64  # the engine's optimisation profile covers batches 1..MAX_BATCH; larger feeds run in chunks
OPT_BATCH = 8  # the batch the runtime's classifier feeds most often


def available() -> bool:
    """TensorRT and a CUDA runtime binding both import (either alone cannot run an engine)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    try:
        _cudart()
    except ImportError:
        return False
    return True


def major_version(version: str) -> int:
    return int(version.split(".")[0])


def strongly_typed(version: str) -> bool:
    """TensorRT 11 removed the weak-typing precision flags (BuilderFlag.FP16/INT8, trtexec --fp16/--int8):
    every network is strongly typed, int8 comes from the model's Q/DQ nodes and fp16 from fp16 tensors."""
    return major_version(version) >= 11


def model_for_bundle(bundle) -> bytes:
    """The ONNX TensorRT builds from: ternary bundles keep 2-bit weights on disk and expand them to
    int8 Q/DQ here (TensorRT has no 2-bit GEMM and no bit-unpacking ops)."""
    from ..ternary import expand_packed_ternary

    return expand_packed_ternary(bundle.entry.read_bytes())


def to_fp16(onnx_bytes: bytes) -> bytes:
    """The fp model in fp16 with fp32 inputs and outputs, for a strongly typed build (TensorRT 11): what
    BuilderFlag.FP16 let TensorRT choose by itself before. Norms, softmax and their reductions stay fp32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load_from_string(onnx_bytes)
    keep_fp32 = [
        "LayerNormalization", "Softmax", "ReduceMean", "ReduceMax",
        "ReduceSum", "Pow", "Sqrt", "Div", "Exp", "Erf",
    ]  # fmt: skip
    half = convert_float_to_float16(model, keep_io_types=True, op_block_list=keep_fp32)
    OnnxModel(half).topological_sort()  # the converter appends its Casts last; parsers read nodes in order
    return half.SerializeToString()


def precision_flags(precision: str, version: str) -> list[str]:
    """BuilderFlag names to set on TensorRT 10 (weak typing); none on 11 (see strongly_typed)."""
    if strongly_typed(version) or precision == "fp32":
        return []
    return ["FP16", "INT8"] if precision in ("int8-ptq", "int8-qat", "ternary") else ["FP16"]


def trtexec_command(
    onnx_path: str | Path,
    precision: str,
    engine_path: str | Path,
    version: str = "10",
    input_name: str = "input",
    chw: tuple[int, int, int] | None = None,
) -> str:
    """The equivalent trtexec build for TensorRT `version`, with the runtime's batch profile when the
    model's batch is dynamic (`chw` given). TensorRT 11's trtexec has no precision flags: an fp16 build
    needs an fp16 model first (what to_fp16 makes; NVIDIA's ModelOpt AutoCast does the same)."""
    args = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    args += [f"--{f.lower()}" for f in precision_flags(precision, version)]
    if chw:
        dims = "x".join(map(str, chw))
        profile = (("min", 1), ("opt", OPT_BATCH), ("max", MAX_BATCH))
        args += [f"--{k}Shapes={input_name}:{b}x{dims}" for k, b in profile]
    return shlex.join(args)


def _cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart
    return cudart


def _check(ret):
    err, *rest = ret if isinstance(ret, tuple) else (ret,)
    if int(err) != 0:
        raise EdgedfError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


def gpu_identity(cudart, device: int) -> str:
    """Name and compute capability of the GPU: an engine is only valid for the GPU model it was built on."""
    props = _check(cudart.cudaGetDeviceProperties(device))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return f"{name.strip(chr(0)).strip()} sm{props.major}{props.minor}"


def engine_key(onnx_bytes: bytes, precision: str, trt_version: str, gpu: str) -> str:
    parts = [onnx_bytes, precision.encode(), trt_version.encode(), gpu.encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def build_engine(onnx_bytes: bytes, precision: str, workspace_gb: float = 2.0) -> bytes:
    import tensorrt as trt

    if strongly_typed(trt.__version__) and precision == "fp16":
        onnx_bytes = to_fp16(onnx_bytes)  # int8 bundles build as they are: int8 from Q/DQ, the rest fp32
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode since TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EdgedfError(f"TensorRT cannot parse the ONNX model: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    for flag in precision_flags(precision, trt.__version__):
        config.set_flag(getattr(trt.BuilderFlag, flag))  # INT8 with Q/DQ: explicit quantisation, no calibrator
    inp = network.get_input(0)
    if inp.shape[0] == -1:
        profile = builder.create_optimization_profile()
        c, h, w = inp.shape[1:]
        profile.set_shape(inp.name, (1, c, h, w), (OPT_BATCH, c, h, w), (MAX_BATCH, c, h, w))
        config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise EdgedfError("TensorRT engine build failed (see the TensorRT log above)")
    return bytes(engine)


class TensorRTSession:
    def __init__(self, model: Path | bytes, precision: str = "fp16", cache_dir: Path | None = None, device: str = ""):
        import tensorrt as trt

        self._cudart = _cudart()
        if device:
            _check(self._cudart.cudaSetDevice(int(device)))
        onnx_bytes = model if isinstance(model, bytes) else Path(model).read_bytes()
        gpu = gpu_identity(self._cudart, int(device or 0))
        key = engine_key(onnx_bytes, precision, trt.__version__, gpu)
        cache = (cache_dir or Path.home() / ".cache" / "edgedf" / "engines") / f"{key}.engine"
        if cache.is_file():
            plan = cache.read_bytes()
        else:
            plan = build_engine(onnx_bytes, precision)
            atomic_write_bytes(cache, plan)
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.input_names = [n for n in names if self._engine.get_tensor_mode(n) == mode]
        self.output_names = [n for n in names if self._engine.get_tensor_mode(n) != mode]
        self._stream = _check(self._cudart.cudaStreamCreate())

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        n = next(iter(feeds.values())).shape[0]
        if n <= MAX_BATCH:
            return self._run(feeds)
        parts = [self._run({k: v[i : i + MAX_BATCH] for k, v in feeds.items()}) for i in range(0, n, MAX_BATCH)]
        return [np.concatenate(outs) for outs in zip(*parts, strict=True)]

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        cudart = self._cudart
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        buffers = []
        try:
            for name in self.input_names:
                x = np.ascontiguousarray(feeds[name], dtype=np.float32)
                self._context.set_input_shape(name, x.shape)
                ptr = _check(cudart.cudaMallocAsync(x.nbytes, self._stream))
                buffers.append(ptr)
                _check(cudart.cudaMemcpyAsync(ptr, x.ctypes.data, x.nbytes, h2d, self._stream))
                self._context.set_tensor_address(name, ptr)
            outs = []
            for name in self.output_names:
                y = np.empty(tuple(self._context.get_tensor_shape(name)), np.float32)
                ptr = _check(cudart.cudaMallocAsync(y.nbytes, self._stream))
                buffers.append(ptr)
                self._context.set_tensor_address(name, ptr)
                outs.append((y, ptr))
            if not self._context.execute_async_v3(self._stream):
                raise EdgedfError("TensorRT execution failed")
            for y, ptr in outs:
                _check(cudart.cudaMemcpyAsync(y.ctypes.data, ptr, y.nbytes, d2h, self._stream))
            _check(cudart.cudaStreamSynchronize(self._stream))
            return [y for y, _ in outs]
        finally:
            for ptr in buffers:
                cudart.cudaFreeAsync(ptr, self._stream)


def open(model: Path | bytes, options) -> TensorRTSession:  # noqa: A001
    return TensorRTSession(
        model, precision=options.precision or "fp16", cache_dir=options.cache_dir, device=options.device
    )
