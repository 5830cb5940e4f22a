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
ONNX_RECIPE = "v2"
ONNX_OPSET = 17


class Backend(StrEnum):
    AUTO = "auto"
    TORCH_FP32 = "torch-fp32"
    TORCH_INT8 = "torch-int8"
    TORCH_BF16 = "torch-bf16"  # torch autocast to bfloat16 on the CPU (AMX / AVX-512 BF16)
    ONNX_FP32 = "onnx-fp32"
    ONNX_INT8 = "onnx-int8"
    # ONNX Runtime's transformer optimizer (fused Attention, SkipLayerNormalization, BiasGelu,
    # EmbedLayerNormalization) on the export; the int8 one quantizes the fused graph.
    ONNX_FUSED_FP32 = "onnx-fused-fp32"
    ONNX_FUSED_INT8 = "onnx-fused-int8"
    CUDA_FP16 = "cuda-fp16"
    # Benchmark only: no model; every text gets the same answer at once (the pipeline's ceiling).
    NULL = "null"


ONNX_BACKENDS = frozenset(
    {Backend.ONNX_FP32, Backend.ONNX_INT8, Backend.ONNX_FUSED_FP32, Backend.ONNX_FUSED_INT8}
)
FUSED_BACKENDS = frozenset({Backend.ONNX_FUSED_FP32, Backend.ONNX_FUSED_INT8})
INT8_ONNX_BACKENDS = frozenset({Backend.ONNX_INT8, Backend.ONNX_FUSED_INT8})


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
            "use a CPU backend (onnx-int8, onnx-fp32, torch-fp32, torch-int8, torch-bf16) or 'auto'"
        )
    if backend is Backend.CUDA_FP16 and device == "cpu":
        raise BackendError("SENTISTREAM_BACKEND=cuda-fp16 contradicts SENTISTREAM_DEVICE=cpu")
    return backend


def load_forward(
    backend: Backend,
    model: Any,
    *,
    device: str,
) -> Forward:
    """Build a torch backend's forward pass from a loaded (fp32, eval-mode) transformers
    model."""
    match backend:
        case Backend.TORCH_FP32:
            return TorchForward(model, backend, torch.device("cpu" if device == "auto" else device))
        case Backend.CUDA_FP16:
            return TorchForward(model.half(), backend, torch.device("cuda"))
        case Backend.TORCH_INT8:
            return TorchForward(quantize_torch_int8(model), backend, torch.device("cpu"))
        case Backend.TORCH_BF16:
            if not flags_with_bf16(cpu_flags()):
                log.warning(
                    "torch-bf16 on a CPU without AMX or AVX-512 BF16: bfloat16 is emulated here "
                    "and slower than fp32; onnx-int8 is the faster CPU backend"
                )
            return TorchForward(model, backend, torch.device("cpu"), autocast=torch.bfloat16)
    # ONNX backends: onnx_model_path, then OnnxForward once the torch weights are released
    # (models.runner.SentimentRunner does both).
    raise BackendError(f"no torch forward pass for backend {backend}")


class TorchForward:
    tensor_type = "pt"

    def __init__(
        self,
        model: Any,
        backend: Backend,
        device: torch.device,
        autocast: torch.dtype | None = None,
    ) -> None:
        self.backend = backend
        self.device = str(device)
        self._device = device
        self._model = model.to(device).eval()
        self._autocast = autocast  # run the matmuls in this dtype (CPU bfloat16)

    def __call__(self, inputs: Mapping[str, Any]) -> np.ndarray:
        batch = {name: tensor.to(self._device) for name, tensor in inputs.items()}
        with (
            torch.inference_mode(),
            torch.autocast(
                self._device.type, dtype=self._autocast, enabled=self._autocast is not None
            ),
        ):
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
    """The cached ONNX file for ``backend``, exporting (fusing, quantizing) it first when missing.

    One folder per weights, recipe and library versions; in it the plain export, the fused graph
    and the int8 copies of each (``-u8`` on CPUs without VNNI, see :func:`unsigned_int8_weights`).
    """
    import onnxruntime

    key = (
        f"{weights_digest(model)}-{ONNX_RECIPE}-opset{ONNX_OPSET}-"
        f"torch{torch.__version__.split('+')[0]}-ort{onnxruntime.__version__}"
    )
    folder = cache_dir.expanduser() / "onnx" / key
    fused = backend in FUSED_BACKENDS
    fp32 = folder / "model.fp32.onnx"
    if not fp32.exists():
        log.info("exporting the model to ONNX (once per weights): %s", fp32)
        _atomically(fp32, lambda tmp: export_onnx(model, tmp, input_names))
    source = fp32
    if fused:
        source = folder / "model.fused.fp32.onnx"
        if not source.exists():
            log.info("fusing the ONNX graph (once per weights): %s", source)
            _atomically(source, lambda tmp: fuse_onnx(model, tmp, input_names))
    if backend not in INT8_ONNX_BACKENDS:
        return source
    unsigned = unsigned_int8_weights(cpu_flags())
    stem = "model.fused.int8" if fused else "model.int8"
    int8 = folder / (f"{stem}-u8.onnx" if unsigned else f"{stem}.onnx")
    if not int8.exists():
        log.info("quantizing the ONNX model to int8 (once per weights): %s", int8)
        _atomically(int8, lambda tmp: quantize_onnx_int8(source, tmp, unsigned_weights=unsigned))
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


def fuse_onnx(model: Any, target: Path, input_names: list[str]) -> dict[str, int]:
    """Export with eager attention (the pattern ORT's fusions match: the SDPA export fuses no
    Attention) and run ONNX Runtime's transformer optimizer, model type bert, on it.

    Returns the fused operator counts (also in the graph's metadata, ``fused_operators``). Fails
    with :class:`BackendError` when the graph has no fused Attention: the architecture is not one
    the optimizer knows, and the plain backends should be used.
    """
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    config = model.config
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_heads", 0))
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "dim", 0))
    with tempfile.TemporaryDirectory(prefix="fuse-", dir=target.parent) as private:
        eager = Path(private) / "eager.onnx"
        # Numerically the same attention; the torch model is not run again once its ONNX
        # session exists (the runner drops it), so the switch is not undone.
        model.set_attn_implementation("eager")
        export_onnx(model, eager, input_names)
        optimized = optimizer.optimize_model(
            str(eager),
            model_type="bert",
            num_heads=heads,
            hidden_size=hidden,
            opt_level=0,  # ONNX Runtime's own graph optimizations run when the session loads
            optimization_options=FusionOptions("bert"),
            use_gpu=False,
        )
        counts = fused_operator_counts(optimized.model.graph)
        if not counts.get("Attention"):
            raise BackendError(
                f"ONNX Runtime's optimizer fused no Attention in {config.model_type} "
                f"({counts}); use onnx-int8 or onnx-fp32 for this model"
            )
        entry = optimized.model.metadata_props.add()
        entry.key, entry.value = "fused_operators", ",".join(f"{k}={v}" for k, v in counts.items())
        optimized.save_model_to_file(str(target))
    return counts


FUSED_OPERATORS = ("Attention", "EmbedLayerNormalization", "SkipLayerNormalization", "BiasGelu")


def fused_operator_counts(graph: Any) -> dict[str, int]:
    """How many of each fused transformer operator a graph holds (quantized ones included)."""
    counts = dict.fromkeys(FUSED_OPERATORS, 0)
    for node in graph.node:
        name = node.op_type.removeprefix("Q")  # QAttention: the int8 Attention
        if name in counts:
            counts[name] += 1
    return counts


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


BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def flags_with_bf16(flags: frozenset[str]) -> bool:
    """The CPU multiplies bfloat16 natively (AMX tiles or AVX-512 BF16)."""
    return bool(flags & BF16_FLAGS)


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
            # A fused graph's Attention nodes hold the Q/K/V weights: quantized to QAttention.
            op_types_to_quantize=["MatMul", "Attention"],
            nodes_to_exclude=keep_fp32,
            # The fused operators' outputs have no inferred type (another domain): fp32.
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
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
