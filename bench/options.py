"""What a bench run measures (``sentistream bench``'s flags and their defaults), kept apart from
:mod:`bench.run` so the command line reads its defaults without importing the bench."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CPU_BACKENDS = ("torch-fp32", "torch-int8", "onnx-fp32", "onnx-int8", "onnx-fused-fp32",
                "onnx-fused-int8")  # fmt: skip
BF16_BACKENDS = ("torch-bf16",)  # by default only where the CPU has AMX or AVX-512 BF16
NULL = "null"  # the pipeline's ceiling: end to end only, with its own (larger) message count


@dataclass(frozen=True)
class BenchOptions:
    messages: int = 1000
    naive_messages: int = 200
    half_rate_seconds: float = 20.0
    backends: Sequence[str] = CPU_BACKENDS
    batch_size: int = 16
    threads: int = 2
    # SENTISTREAM_INFERENCE_LANES: forward passes side by side, threads shared (None: the default)
    lanes: int | None = None
    seed: int = 42
    skip_accuracy: bool = False
    workdir: Path | None = None
    brokers: Sequence[str] = ("embedded",)  # end to end on each: "kafka", "embedded"
    # end to end with each processing guarantee; exactly_once runs on Apache Kafka only
    guarantees: Sequence[str] = ("at_least_once",)
    shadow: bool = False  # also end to end with the same model as a shadow of itself
    # The null classifier's run (0: no null run). 10,000: the embedded broker's cost per record
    # grows with the records already on its topics (0.19 -> 2.0 ms of its CPU a message from the
    # first to the fourth 10,000 on one set of topics): a longer run measures the broker more.
    null_messages: int = 10000
    curve_backend: str | None = None  # the latency-throughput curve's backend (None: no curve)
    curve_seconds: float = 15.0  # per point of the curve
    # One curve per SENTISTREAM_LATENCY_TARGET_MS (0: takes never wait), each in its own worker.
    curve_targets: Sequence[int] = (0, 100)
    latency_target_ms: int | None = None  # SENTISTREAM_LATENCY_TARGET_MS for the workers
