"""The TensorRT runtime: a Session that runs ``model.engine`` with the TensorRT 10/11 named-tensor API, its I/O in
device buffers of NVIDIA's cuda-python (device allocations, one stream), not torch: importing this module imports
neither torch nor TensorRT, so a Jetson without torch runs engines, and :func:`cuda_unavailable` says why a machine
cannot.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ...contract import ENGINE_FILE, INPUT_NAME, RunResult
from ...errors import UserError
from ..base import Session
from . import TENSORRT

CUDA_PYTHON_MISSING = f"cuda-python is not installed ({TENSORRT.install_hints()['cuda']})"


def load_cudart():
    """NVIDIA cuda-python's CUDA runtime bindings (``cuda.bindings.runtime``; ``cuda.cudart`` before cuda-python
    12.6), or None when cuda-python is not installed. Every call returns a tuple whose first item is the error code."""
    try:
        from cuda.bindings import runtime
        return runtime
    except ImportError:
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 12.x: "cuda.cudart is deprecated, use cuda.bindings.runtime"
            from cuda import cudart
        return cudart
    except ImportError:
        return None


def cuda_unavailable() -> str | None:
    """Why no CUDA GPU can run an engine here (TensorRT installed or not), or None."""
    cudart = load_cudart()
    if cudart is None:
        return CUDA_PYTHON_MISSING
    try:
        err, count = cudart.cudaGetDeviceCount()
    except Exception as exc:  # the bindings could not reach a driver at all
        return f"no CUDA GPU ({exc})"
    if err != cudart.cudaError_t.cudaSuccess:
        name = _error_name(err)
        if name == "cudaErrorInsufficientDriver":  # cuda-python 13 needs a CUDA 13 driver (r580+)
            return (f"no CUDA GPU ({name}: no NVIDIA driver, or one older than this cuda-python needs; with a CUDA 12 "
                    f"driver, e.g. JetPack 6, pip install 'cuda-python>=12,<13')")
        return f"no CUDA GPU ({name})"
    return None if count else "no CUDA GPU"



# --- runtime --------------------------------------------------------------------------------------------------------
# Engine I/O goes through NVIDIA's cuda-python runtime bindings (no torch): a device allocation per tensor, a numpy
# host array beside it, one CUDA stream. Each cuda-python call returns (error, *values).

class CudaError(RuntimeError):
    """A CUDA runtime call failed; the message names the call and the CUDA error."""


def _error_name(err) -> str:
    return getattr(err, "name", None) or str(err)


def _cuda_call(cudart, what: str, result):
    """The value(s) of a cuda-python call after checking its error code (the first item of ``result``)."""
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        raise CudaError(f"{what} failed: {_error_name(err)}")
    return values[0] if len(values) == 1 else tuple(values)


def _require_cudart():
    cudart = load_cudart()
    if cudart is None:
        raise UserError(f"TensorRT runs here through cuda-python, and {CUDA_PYTHON_MISSING}")
    return cudart


class CudaStream:
    """One CUDA stream (``handle`` is what TensorRT's ``execute_async_v3`` takes)."""

    def __init__(self):
        self.cudart = _require_cudart()
        self.stream = _cuda_call(self.cudart, "cudaStreamCreate", self.cudart.cudaStreamCreate())

    @property
    def handle(self) -> int:
        return int(self.stream)

    def synchronize(self) -> None:
        _cuda_call(self.cudart, "cudaStreamSynchronize", self.cudart.cudaStreamSynchronize(self.stream))

    def close(self) -> None:
        if self.stream is not None:
            stream, self.stream = self.stream, None
            _cuda_call(self.cudart, "cudaStreamDestroy", self.cudart.cudaStreamDestroy(stream))


class DeviceBuffer:
    """A device allocation of one fixed-shape tensor and its numpy host copy ``host``; knows nothing of TensorRT.

    ``upload`` fills ``host`` from an array (converting it to the buffer's dtype) and queues the copy to the device;
    ``download`` queues the copy back into ``host``. Both are asynchronous on ``stream``: synchronize it before
    reading ``host``.
    """

    def __init__(self, shape, dtype):
        self.cudart = _require_cudart()
        self.host = np.zeros(tuple(int(d) for d in shape), dtype=np.dtype(dtype))
        self.nbytes = int(self.host.nbytes)
        self.ptr = _cuda_call(self.cudart, "cudaMalloc", self.cudart.cudaMalloc(max(self.nbytes, 1)))

    @property
    def shape(self) -> tuple[int, ...]:
        return self.host.shape

    @property
    def dtype(self) -> np.dtype:
        return self.host.dtype

    def upload(self, array, stream: CudaStream) -> None:
        array = np.asarray(array)
        if array.shape != self.host.shape:
            raise ValueError(f"array of shape {array.shape} for a device buffer of shape {self.host.shape}")
        np.copyto(self.host, array, casting="unsafe")   # float32 -> float16 inputs of FP16 engines
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        _cuda_call(self.cudart, "cudaMemcpyAsync (host to device)",
                   self.cudart.cudaMemcpyAsync(self.ptr, self.host.ctypes.data, self.nbytes, kind, stream.stream))

    def download(self, stream: CudaStream) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _cuda_call(self.cudart, "cudaMemcpyAsync (device to host)",
                   self.cudart.cudaMemcpyAsync(self.host.ctypes.data, self.ptr, self.nbytes, kind, stream.stream))

    def free(self) -> None:
        if self.ptr is not None:
            ptr, self.ptr = self.ptr, None
            _cuda_call(self.cudart, "cudaFree", self.cudart.cudaFree(ptr))


def numpy_dtype(trt, trt_dtype, name: str) -> np.dtype:
    """The numpy dtype of a TensorRT tensor type (``trt.nptype``)."""
    try:
        return np.dtype(trt.nptype(trt_dtype))
    except (TypeError, KeyError):
        raise UserError(f"engine tensor '{name}' is of type {trt_dtype}, which numpy cannot hold: rebuild the engine "
                        f"from the exported model.onnx with ./build_engine.sh") from None


class TensorRTSession(Session):
    """Runs ``model.engine`` with the TensorRT 10/11 named-tensor API; cuda-python device buffers hold the I/O."""

    backend = "tensorrt"
    device = "cuda"

    def __init__(self, artifact_dir, manifest: dict | None = None):
        artifact_dir = Path(artifact_dir)
        engine_path = artifact_dir / ENGINE_FILE
        self.buffers: dict[str, DeviceBuffer] = {}
        self.stream: CudaStream | None = None
        try:
            import tensorrt as trt
        except ImportError:
            raise UserError(f"TensorRT is not installed: {TENSORRT.install_hint}; or check the ONNX with --backend "
                            f"onnxruntime") from None
        if not engine_path.is_file():
            raise UserError(f"{engine_path} not found: run ./build_engine.sh in {artifact_dir} on this device first")
        why = cuda_unavailable()
        if why:
            raise UserError(f"TensorRT cannot run {engine_path} here: {why}")

        self.manifest = manifest
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise UserError(f"cannot load {engine_path}: it was built by another TensorRT version or for another GPU; "
                            f"rebuild it here with ./build_engine.sh")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise UserError(f"TensorRT cannot create an execution context for {engine_path} (out of GPU memory?)")

        inputs, self.output_names = [], []
        try:
            self.stream = CudaStream()
            for i in range(self.engine.num_io_tensors):
                name = self.engine.get_tensor_name(i)
                shape = tuple(self.engine.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise UserError(f"{engine_path} has dynamic dims on '{name}' {shape}; biformer-edge builds static "
                                    f"engines: rebuild with ./build_engine.sh")
                buf = DeviceBuffer(shape, numpy_dtype(trt, self.engine.get_tensor_dtype(name), name))
                self.buffers[name] = buf
                if not self.context.set_tensor_address(name, buf.ptr):
                    raise UserError(f"TensorRT refused the device buffer of '{name}' in {engine_path}")
                if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                    inputs.append(name)
                else:
                    self.output_names.append(name)
        except CudaError as exc:
            self.close()
            raise UserError(f"cannot set up the GPU buffers for {engine_path}: {exc}") from None
        except UserError:
            self.close()
            raise
        if len(inputs) != 1:
            self.close()
            raise UserError(f"{engine_path} has inputs {inputs}; a biformer-edge engine has one ('{INPUT_NAME}'): "
                            f"rebuild it from the exported model.onnx")
        self.input_name = inputs[0]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.buffers[self.input_name].shape

    def run(self, x: np.ndarray):
        if self.stream is None:
            raise UserError("this TensorRT session is closed")
        x = np.asarray(x)
        if tuple(x.shape) != self.input_shape:
            raise UserError(f"input shape {tuple(x.shape)} does not match the engine's input "
                            f"'{self.input_name}' {self.input_shape}: the engine is built for one static shape")
        try:
            self.buffers[self.input_name].upload(x, self.stream)
            if not self.context.execute_async_v3(self.stream.handle):
                raise UserError("TensorRT could not run the engine (execute_async_v3 returned False; see the TensorRT "
                                "messages above)")
            for name in self.output_names:
                self.buffers[name].download(self.stream)
            self.stream.synchronize()
        except CudaError as exc:
            raise UserError(f"TensorRT run failed on the GPU: {exc}") from None
        return RunResult.from_outputs(self.output_names, [self.buffers[n].host.copy() for n in self.output_names])

    def close(self) -> None:
        """Free the device buffers and the stream (also done when the session is garbage-collected)."""
        self.context = None
        for buf in self.buffers.values():
            try:
                buf.free()
            except CudaError:
                pass
        self.buffers = {}
        if self.stream is not None:
            try:
                self.stream.close()
            except CudaError:
                pass
            self.stream = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the bindings may already be gone
            pass
