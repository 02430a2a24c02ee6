"""TensorRT backend (Jetson / NVIDIA GPUs): builds an engine from the bundle's ONNX once, caches it
beside the bundle (or in options.cache_dir), and runs it with explicit-quantisation Q/DQ as exported.

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


def available() -> bool:
    try:
        import tensorrt  # noqa: F401
        from cuda.bindings import runtime  # noqa: F401
    except ImportError:
        try:
            from cuda import cudart  # noqa: F401
        except ImportError:
            return False
    return True


def model_for_bundle(bundle) -> bytes:
    """The ONNX TensorRT builds from: ternary bundles keep 2-bit weights on disk and expand them to
    int8 Q/DQ here (TensorRT has no 2-bit GEMM and no bit-unpacking ops)."""
    from ..ternary import expand_packed_ternary

    return expand_packed_ternary(bundle.entry.read_bytes())


def trtexec_command(onnx_path: str | Path, precision: str, engine_path: str | Path) -> str:
    flags = {
        "fp16": ["--fp16"],
        "fp32": [],
        "int8-ptq": ["--int8", "--fp16"],
        "int8-qat": ["--int8", "--fp16"],
        "ternary": ["--int8", "--fp16"],
    }.get(precision, [])
    return shlex.join(["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}", *flags])


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


def build_engine(onnx_bytes: bytes, precision: str, workspace_gb: float = 2.0) -> bytes:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EdgedfError(f"TensorRT cannot parse the ONNX model: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if precision != "fp32":
        config.set_flag(trt.BuilderFlag.FP16)
    if precision in ("int8-ptq", "int8-qat", "ternary"):
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantisation: scales come from the Q/DQ nodes
    inp = network.get_input(0)
    if any(d == -1 for d in inp.shape):
        profile = builder.create_optimization_profile()
        c, h, w = inp.shape[1:]
        profile.set_shape(inp.name, (1, c, h, w), (8, c, h, w), (32, c, h, w))
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
        key = hashlib.sha256(onnx_bytes + precision.encode() + trt.__version__.encode()).hexdigest()[:16]
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
