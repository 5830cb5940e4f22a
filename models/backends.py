"""Forward passes: the same checkpoint run by torch (fp32, dynamic int8, CUDA fp16) or ONNX Runtime.

padded token ids -> *backend forward* -> logits (numpy float32). Tokenizing before and softmax after
are the runner's, so every backend sees the same inputs and is compared on the same outputs.

ONNX models are exported from the loaded checkpoint with ``torch.onnx.export`` at first use and
cached on disk under a key made of the weights' hash, the recipe and the library versions; int8
models are quantized from that export with ONNX Runtime's own dynamic quantizer.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from stream.core.errors import ConfigurationError

log = logging.getLogger(__name__)

# Bump when the export or quantization recipe changes: cached files from older recipes are ignored.
ONNX_RECIPE = "v1"
ONNX_OPSET = 17


class Backend(StrEnum):
    AUTO = "auto"
    TORCH_FP32 = "torch-fp32"
    TORCH_INT8 = "torch-int8"
    ONNX_FP32 = "onnx-fp32"
    ONNX_INT8 = "onnx-int8"
    CUDA_FP16 = "cuda-fp16"


# Chosen from `sentistream bench` on the reference CPU (README "Performance"): ONNX Runtime int8 is
# the fastest CPU backend that keeps >= 99% label agreement with fp32; on a GPU, fp16.
CPU_DEFAULT = Backend.ONNX_INT8
GPU_DEFAULT = Backend.CUDA_FP16


class BackendError(ConfigurationError):
    """The requested backend cannot run here (no CUDA, missing onnxruntime); says what to set."""


class Forward(Protocol):
    """One backend's forward pass over a padded batch."""

    backend: Backend
    tensor_type: str  # what the tokenizer's pad() should return: "pt" or "np"
    device: str

    def __call__(self, inputs: Mapping[str, Any]) -> np.ndarray: ...


def resolve_backend(requested: str, device: str) -> Backend:
    """``auto`` -> the measured default for the device; checks CUDA for the CUDA backends."""
    try:
        backend = Backend(requested)
    except ValueError:
        choices = ", ".join(b.value for b in Backend)
        raise BackendError(f"SENTISTREAM_BACKEND={requested!r} is not one of {choices}") from None
    cuda = torch.cuda.is_available()
    wants_gpu = device.startswith("cuda") or (device == "auto" and cuda)
    if backend is Backend.AUTO:
        backend = GPU_DEFAULT if wants_gpu else CPU_DEFAULT
    if backend is Backend.CUDA_FP16 and not cuda:
        raise BackendError(
            "SENTISTREAM_BACKEND=cuda-fp16 needs a CUDA device and none is available; "
            "use a CPU backend (onnx-int8, onnx-fp32, torch-fp32, torch-int8) or 'auto'"
        )
    if backend is Backend.CUDA_FP16 and device == "cpu":
        raise BackendError("SENTISTREAM_BACKEND=cuda-fp16 contradicts SENTISTREAM_DEVICE=cpu")
    return backend


def load_forward(
    backend: Backend,
    model: Any,
    *,
    device: str,
    threads: int | None,
    cache_dir: Path,
    input_names: list[str],
) -> Forward:
    """Build ``backend``'s forward pass from a loaded (fp32, eval-mode) transformers model."""
    match backend:
        case Backend.TORCH_FP32:
            return TorchForward(model, backend, torch.device("cpu" if device == "auto" else device))
        case Backend.CUDA_FP16:
            return TorchForward(model.half(), backend, torch.device("cuda"))
        case Backend.TORCH_INT8:
            return TorchForward(quantize_torch_int8(model), backend, torch.device("cpu"))
        case Backend.ONNX_FP32 | Backend.ONNX_INT8:
            path = onnx_model_path(model, backend, cache_dir, input_names)
            return OnnxForward(path, backend, threads)
    raise BackendError(f"no forward pass for backend {backend}")  # pragma: no cover - AUTO resolved


class TorchForward:
    tensor_type = "pt"

    def __init__(self, model: Any, backend: Backend, device: torch.device) -> None:
        self.backend = backend
        self.device = str(device)
        self._device = device
        self._model = model.to(device).eval()

    def __call__(self, inputs: Mapping[str, Any]) -> np.ndarray:
        batch = {name: tensor.to(self._device) for name, tensor in inputs.items()}
        with torch.inference_mode():
            logits = self._model(**batch).logits
        return np.asarray(logits.float().cpu().numpy(), dtype=np.float32)


class OnnxForward:
    tensor_type = "np"
    device = "cpu"

    def __init__(self, path: Path, backend: Backend, threads: int | None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a dependency of the project
            raise BackendError(f"SENTISTREAM_BACKEND={backend} needs onnxruntime: {exc}") from exc
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        # Idle intra-op threads sleep instead of spinning: the worker's event loop (fetching and
        # publishing) needs those cores between forward passes. Measured in README "Performance".
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.backend = backend
        self.path = path
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._inputs = [i.name for i in self._session.get_inputs()]

    def __call__(self, inputs: Mapping[str, Any]) -> np.ndarray:
        feed = {name: np.asarray(inputs[name], dtype=np.int64) for name in self._inputs}
        (logits,) = self._session.run(["logits"], feed)
        return np.asarray(logits, dtype=np.float32)


def quantize_torch_int8(model: Any) -> Any:
    """Dynamic int8 on every Linear (torch.ao; deprecated upstream but still the torch-only way)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation notices, one per module
        return torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            model, {torch.nn.Linear}, dtype=torch.qint8
        )


def weights_digest(model: Any) -> str:
    """A hash of the parameters themselves: identifies the weights whatever their origin."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def onnx_model_path(model: Any, backend: Backend, cache_dir: Path, input_names: list[str]) -> Path:
    """The cached ONNX file for ``backend``, exporting (and quantizing) it first when missing."""
    import onnxruntime

    key = (
        f"{weights_digest(model)}-{ONNX_RECIPE}-opset{ONNX_OPSET}-"
        f"torch{torch.__version__.split('+')[0]}-ort{onnxruntime.__version__}"
    )
    folder = cache_dir.expanduser() / "onnx" / key
    fp32 = folder / "model.fp32.onnx"
    if not fp32.exists():
        log.info("exporting the model to ONNX (once per weights): %s", fp32)
        _atomically(fp32, lambda tmp: export_onnx(model, tmp, input_names))
    if backend is Backend.ONNX_FP32:
        return fp32
    unsigned = unsigned_int8_weights(cpu_flags())
    int8 = folder / ("model.int8-u8.onnx" if unsigned else "model.int8.onnx")
    if not int8.exists():
        log.info("quantizing the ONNX model to int8 (once per weights): %s", int8)
        _atomically(int8, lambda tmp: quantize_onnx_int8(fp32, tmp, unsigned_weights=unsigned))
    return int8


def export_onnx(model: Any, target: Path, input_names: list[str]) -> None:
    """Export with dynamic batch and sequence axes; outputs a single ``logits`` tensor."""
    dummy = tuple(torch.ones((2, 8), dtype=torch.long) for _ in input_names)
    axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # tracer notices about data-dependent branches
        torch.onnx.export(
            _LogitsOnly(model.float().cpu().eval(), input_names),
            dummy,
            str(target),
            input_names=input_names,
            output_names=["logits"],
            dynamic_axes={**axes, "logits": {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )


class _LogitsOnly(torch.nn.Module):
    """Positional inputs in the tokenizer's order, one ``logits`` output."""

    def __init__(self, model: Any, input_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, inputs, strict=True))).logits  # type: ignore[no-any-return]


# CPU flags of the int8 dot-product instructions (VNNI, and AMX's int8 tiles).
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is not there)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def unsigned_int8_weights(flags: frozenset[str]) -> bool:
    """Unsigned (u8) weights on x86 CPUs without VNNI. There ONNX Runtime's u8 x s8 kernels
    (VPMADDUBSW) saturate 16-bit sums. Measured with the shared MiniLM on GLUE SST-2 dev, on a
    2-core AMD EPYC with AVX2 only (fp32: 89.45%): s8 weights 88.76% (0.69 points lost, over the
    0.5 bar); s8 with 7-bit weights (reduce_range) 89.56% but 98.97% label agreement (under the
    99% bar); u8 weights 89.33% with 99.43% agreement. With VNNI, s8 keeps both bars (README
    "Performance")."""
    return not (flags & VNNI_FLAGS)


def quantize_onnx_int8(source: Path, target: Path, *, unsigned_weights: bool = False) -> None:
    """Dynamic int8, per output channel, on the weight MatMuls only (u8 weights with
    ``unsigned_weights``, for CPUs without VNNI: see :func:`unsigned_int8_weights`).

    Per-channel scales matter: per-tensor int8 flipped 3.3% of SST-2 dev labels on the reference
    model, per-channel 1.4%. The feed-forward blocks of the first third of the layers stay fp32:
    they were the most sensitive (README "Performance" has the measurements).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source), load_external_data=False).graph
    keep_fp32 = sensitive_matmuls(graph)
    # ORT writes ``<source>-inferred.onnx`` beside its input and deletes it afterwards: two
    # workers quantizing the same cached model raced on that file (one died with
    # FileNotFoundError). Each quantizes from its own link to the source, in its own folder.
    with tempfile.TemporaryDirectory(prefix="quantize-", dir=target.parent) as private:
        own_source = Path(private) / source.name
        try:
            os.link(source, own_source)
        except OSError:  # another file system, or no hard links: copy
            shutil.copyfile(source, own_source)
        quantize_dynamic(
            str(own_source),
            str(target),
            weight_type=QuantType.QUInt8 if unsigned_weights else QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=keep_fp32,
            extra_options={"MatMulConstBOnly": True},
        )


_LAYER = re.compile(r"layer\.(\d+)[./]")


def sensitive_matmuls(graph: Any) -> list[str]:
    """Feed-forward MatMuls (hidden x 4*hidden weights and back) of the first third of layers."""
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    feed_forward: dict[int, list[str]] = {}
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        weight = next((shapes[name] for name in node.input if name in shapes), None)
        layer = _LAYER.search(node.name)
        if weight is None or layer is None or len(weight) != 2:
            continue
        if max(weight) >= 3 * min(weight):  # expansion or contraction: the feed-forward block
            feed_forward.setdefault(int(layer.group(1)), []).append(node.name)
    if not feed_forward:
        return []
    first_third = max(1, round(len(feed_forward) / 3))
    return [name for layer in sorted(feed_forward)[:first_third] for name in feed_forward[layer]]


def _atomically(target: Path, write: Any) -> None:
    """Write via a temporary file in the same folder, then rename: workers may race to export."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=target.name, suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
