"""Load a sequence-classification checkpoint and score texts: tokenize -> forward -> post-process.

clean text -> tokenize (no padding) -> plan length-sorted batches -> pad each batch to its longest
member -> forward -> softmax (several classes) or sigmoid (one logit) -> Prediction, mapped back to
the caller's order.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

from models.backends import (
    ONNX_BACKENDS,
    Backend,
    BackendError,
    Forward,
    OnnxForward,
    load_forward,
    onnx_model_path,
    resolve_backend,
)
from models.labels import BINARY_LABELS, normalise_labels
from models.null import NullClassifier
from stream.core.batching import CostLine, plan_batches
from stream.core.errors import ConfigurationError
from stream.core.evaluation import parse_label_map
from stream.core.records import Label, Prediction, ScoredBatch

if TYPE_CHECKING:
    from stream.settings import Settings

log = logging.getLogger(__name__)
hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

WEIGHT_SUFFIXES = (".safetensors", ".bin")
# A forward pass's fixed cost in padded tokens, until the runner has fitted its own (onnx-int8,
# random DistilBERT, 2-core AMD EPYC: 3.9 ms a pass + 0.11 ms a token, about 35 tokens), and
# the bounds of the fitted one (the upper one amounts to "as few passes as possible").
DEFAULT_OVERHEAD_TOKENS = 32.0
# Forward passes side by side on the ONNX backends by default: with 2 lanes of one intra-op thread
# each, onnx-int8 end to end (random DistilBERT, 2-core AMD EPYC, 3,000 messages) went from
# 272-291 to 327-330 msg/s, with the same p95 at 150 msg/s offered (README Performance).
DEFAULT_LANES = 2
OVERHEAD_TOKENS_BOUNDS = (4.0, 4096.0)


class ModelLoadError(ConfigurationError):
    """The configured model could not be loaded; the message says what to set."""


@dataclass(frozen=True, slots=True)
class RunnerOptions:
    device: str = "auto"
    revision: str | None = None
    max_batch_size: int = 32
    max_batch_tokens: int = 4096
    torch_threads: int | None = None
    # ONNX backends: when a call to predict() has several forward passes, they run on this many
    # threads at once, each with torch_threads / lanes intra-op threads (a second session); small
    # passes scale better side by side than split op by op, and a lane the event loop preempts
    # does not stall the other. A lone pass keeps every thread (the first session). None: 2 on a
    # CPU with at least 2 cores (README Performance), else 1.
    lanes: int | None = None
    backend: str = "auto"
    cache_dir: Path = Path("~/.cache/sentistream")
    label_map: Mapping[str, Label] | None = None  # class name or index -> published label
    binary_threshold: float = 0.5  # single-logit heads: POSITIVE when sigmoid(logit) >= this
    max_length: int | None = None  # tokens per text; None: the model's own window
    version_name: str | None = None  # the registry's version; None: revision or weights hash

    @classmethod
    def from_settings(cls, settings: Settings, model: str | None = None) -> RunnerOptions:
        """The options the worker runs with; a pinned revision applies only to the configured
        model, not to another one a command names."""
        return cls(
            device=settings.device,
            revision=settings.model_revision if model in (None, settings.model) else None,
            max_batch_size=settings.batch_size,
            max_batch_tokens=settings.batch_max_tokens,
            torch_threads=settings.torch_threads,
            lanes=settings.inference_lanes,
            backend=settings.backend,
            cache_dir=settings.model_cache_dir,
            label_map=parse_label_map(settings.label_map) if settings.label_map else None,
            binary_threshold=settings.binary_threshold,
            max_length=settings.max_length,
        )


class SentimentRunner:
    """A loaded model; :meth:`predict` is thread-safe only when called from one thread at a time."""

    def __init__(self, model_id: str, options: RunnerOptions = RunnerOptions()) -> None:
        self.model_id = model_id
        self.options = options
        try:
            self.backend = resolve_backend(options.backend, options.device)
        except BackendError as exc:
            raise ModelLoadError(str(exc)) from None
        if self.backend is Backend.NULL:
            raise ModelLoadError(
                "SENTISTREAM_BACKEND=null runs no model (the benchmark's pipeline ceiling); it "
                "applies to the worker's configured model only, not to a registry version, "
                "canary, shadow or language model"
            )
        resolve_device(options.device)  # a CUDA request without CUDA fails here, with the fix
        if options.torch_threads:
            torch.set_num_threads(options.torch_threads)
        self.lanes = forward_lanes(options.lanes, self.backend)
        self.tokenizer, model = _load(model_id, options.revision)
        model.eval()
        # One logit: a binary head read through a sigmoid (the custom model spec's heads).
        self.single_logit = int(model.config.num_labels) == 1
        self.labels: list[Label] = (
            list(BINARY_LABELS)
            if self.single_logit
            else normalise_labels(model.config.id2label, options.label_map)
        )
        window = min(
            int(self.tokenizer.model_max_length),
            int(getattr(model.config, "max_position_embeddings", 512)),
        )
        if options.max_length is not None and options.max_length > window:
            raise ModelLoadError(
                f"SENTISTREAM_MAX_LENGTH={options.max_length} is longer than the model's window "
                f"of {window} tokens; set at most {window}"
            )
        self.max_length = options.max_length or window
        self._version = options.version_name or options.revision or model_version(model_id, model)
        self.forward: Forward
        if self.backend in ONNX_BACKENDS:
            path = onnx_model_path(
                model, self.backend, options.cache_dir, list(self.tokenizer.model_input_names)
            )
            # ONNX backends keep only their session, built once the torch weights are gone:
            # with both held, loading onnx-int8 (random DistilBERT, 2-core Xeon) peaked at
            # 1,487 MB RSS, with the weights released first at 1,237 MB.
            del model
            gc.collect()
            self.forward = OnnxForward(path, self.backend, options.torch_threads)
            if self.lanes > 1:
                self.lane_forward: Forward = OnnxForward(
                    path, self.backend, lane_threads(options.torch_threads, self.lanes)
                )
        else:
            self.forward = load_forward(self.backend, model, device=options.device)
        self.device = self.forward.device
        # What a forward pass costs against its padded tokens, fitted to the passes run so far:
        # it decides where a take's length-sorted texts are split into passes (plan_batches).
        self.forward_cost = CostLine(decay=0.98, min_spread=8.0)
        self._lane_pool = (
            ThreadPoolExecutor(max_workers=self.lanes, thread_name_prefix="forward-lane")
            if self.lanes > 1
            else None
        )
        self.predict(["warm-up"])  # the first forward pass pays one-off allocation costs
        if self._lane_pool is not None:  # and so does the lanes' session
            warm_up = self.tokenizer(["warm-up"], return_tensors=self.forward.tensor_type)
            self._run_pass(self.lane_forward, warm_up)
        self.forward_cost.forget()  # which are not what a pass costs

    @property
    def name(self) -> str:
        return self.model_id

    @property
    def version(self) -> str:
        return self._version

    def predict(self, texts: Sequence[str]) -> ScoredBatch:
        """Score ``texts``; predictions come back in the same order as the texts."""
        started = time.perf_counter()
        if not texts:
            return ScoredBatch(predictions=[], model_ms=0.0, forward_batches=0)
        encoded = self.tokenizer(
            list(texts), truncation=True, max_length=self.max_length, verbose=False
        )
        lengths = [len(ids) for ids in encoded["input_ids"]]
        truncated = self._truncated(texts, lengths)
        batches = plan_batches(
            lengths,
            max_size=self.options.max_batch_size,
            max_tokens=max(self.options.max_batch_tokens, self.max_length),
            overhead_tokens=self.overhead_tokens(),
        )
        # Padded on this thread (the tokenizer is shared); several passes run on the lanes.
        padded = [
            self.tokenizer.pad(
                [{key: encoded[key][i] for key in encoded} for i in batch],
                return_tensors=self.forward.tensor_type,
            )
            for batch in batches
        ]
        if self._lane_pool is not None and len(batches) > 1:
            passes = list(self._lane_pool.map(partial(self._run_pass, self.lane_forward), padded))
        else:
            passes = [self._run_pass(self.forward, inputs) for inputs in padded]
        predictions: list[Prediction | None] = [None] * len(texts)
        forward_tokens: list[int] = []
        forward_times: list[float] = []
        for batch, (probabilities, tokens, forward_ms) in zip(batches, passes, strict=True):
            forward_tokens.append(tokens)
            forward_times.append(forward_ms)
            self.forward_cost.observe(tokens, forward_ms)
            for row, index in zip(probabilities, batch, strict=True):
                predictions[index] = self._prediction(
                    row, lengths[index], truncated[index], len(batch), forward_ms
                )
        return ScoredBatch(
            predictions=[p for p in predictions if p is not None],
            model_ms=(time.perf_counter() - started) * 1000,
            forward_batches=len(batches),
            real_tokens=sum(lengths),
            padded_tokens=sum(forward_tokens),
            forward_sizes=tuple(len(batch) for batch in batches),
            forward_tokens=tuple(forward_tokens),
            forward_ms=tuple(forward_times),
        )

    def _run_pass(
        self, forward: Forward, inputs: Mapping[str, Any]
    ) -> tuple[list[list[float]], int, float]:
        """One forward pass: per text its probabilities, the padded tokens, the time it took."""
        rows, width = inputs["input_ids"].shape
        started = time.perf_counter()
        probabilities = self._probabilities(forward(inputs)).tolist()
        return probabilities, int(rows) * int(width), (time.perf_counter() - started) * 1000

    def overhead_tokens(self) -> float:
        """A forward pass's fixed cost in padded tokens, as fitted so far (plan_batches)."""
        return self.forward_cost.fixed_in_units(DEFAULT_OVERHEAD_TOKENS, *OVERHEAD_TOKENS_BOUNDS)

    def _probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Per text, the probability of each of ``self.labels``."""
        if self.single_logit:
            positive = sigmoid(logits[:, 0])
            return np.stack([1.0 - positive, positive], axis=1)
        return softmax(logits)

    def _prediction(
        self, row: list[float], tokens: int, truncated: bool, batch_size: int, forward_ms: float
    ) -> Prediction:
        if self.single_logit:
            best = 1 if row[1] >= self.options.binary_threshold else 0
        else:
            best = max(range(len(row)), key=row.__getitem__)
        return Prediction(
            label=self.labels[best],
            score=row[best],
            probabilities=dict(zip(self.labels, row, strict=True)),
            token_count=tokens,
            truncated=truncated,
            batch_size=batch_size,
            inference_ms=forward_ms,
        )

    def _truncated(self, texts: Sequence[str], lengths: list[int]) -> list[bool]:
        # Only a text that filled the whole window can have been cut; re-count just those.
        flags = [False] * len(texts)
        for index, length in enumerate(lengths):
            if length >= self.max_length:
                full = self.tokenizer(texts[index], truncation=False, verbose=False)["input_ids"]
                flags[index] = len(full) > self.max_length
        return flags


def load_classifier(model_id: str, options: RunnerOptions) -> SentimentRunner | NullClassifier:
    """The worker's configured model: a runner, or with backend ``null`` the null classifier."""
    if options.backend == Backend.NULL:
        return NullClassifier()
    return SentimentRunner(model_id, options)


def forward_lanes(requested: int | None, backend: Backend) -> int:
    """How many forward passes run at once: ``requested``, or by default 2 on a CPU with 2 cores
    or more; 1 for the torch backends, whose threads are one pool for the whole process."""
    if backend not in ONNX_BACKENDS:
        if requested is not None and requested > 1:
            log.warning(
                "SENTISTREAM_INFERENCE_LANES=%d applies to the ONNX backends only; %s runs its "
                "passes one after another", requested, backend,
            )  # fmt: skip
        return 1
    if requested is None:
        return DEFAULT_LANES if (os.cpu_count() or 1) >= DEFAULT_LANES else 1
    return max(1, requested)


def lane_threads(total: int | None, lanes: int) -> int:
    """Intra-op threads of each lane: its share of ``total``, or of the CPU's cores when unset."""
    return max(1, (total or os.cpu_count() or 1) // max(1, lanes))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=-1, keepdims=True))


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-logits.astype(np.float64))), dtype=np.float32)


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            f"SENTISTREAM_DEVICE={requested} but no CUDA device is available; use 'auto' or 'cpu'"
        )
    return device


def _load(model_id: str, revision: str | None) -> tuple[Any, Any]:
    path = Path(model_id).expanduser()
    looks_local = path.exists() or model_id.startswith((".", "/", "~"))
    if looks_local and not path.is_dir():
        raise ModelLoadError(
            f"model directory {str(path)!r} does not exist; set SENTISTREAM_MODEL to a checkpoint "
            "directory (config.json, weights, tokenizer) or to a Hugging Face hub id"
        )
    source = str(path) if looks_local else model_id
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
        model = AutoModelForSequenceClassification.from_pretrained(source, revision=revision)
    except (OSError, ValueError) as exc:
        where = "the local directory" if looks_local else "the Hugging Face hub (offline?)"
        raise ModelLoadError(
            f"could not load model {model_id!r} from {where}: {exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}. Set SENTISTREAM_MODEL to a local "
            "checkpoint directory (e.g. ../shared/models/sentiment-minilm-sst2) or a reachable "
            "hub id"
        ) from exc
    return tokenizer, model


def model_version(model_id: str, model: Any) -> str:
    """A short identity for the weights: the hub commit, else a hash of the local weight files."""
    commit = getattr(model.config, "_commit_hash", None)
    path = Path(model_id).expanduser()
    if path.is_dir():
        digest = hashlib.sha256()
        files = sorted(f for f in path.iterdir() if f.name.endswith(WEIGHT_SUFFIXES))
        for weights in files:
            with weights.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
        if files:
            return "sha256:" + digest.hexdigest()[:16]
    return str(commit)[:12] if commit else "unknown"
