"""Prometheus metrics of one worker, served at ``/metrics`` on its HTTP port.

Counted after a batch's outputs were acknowledged by the broker, so the counters say what was
published, not what was attempted. Names follow Prometheus conventions (``_total``, ``_seconds``).
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Iterable, Sequence

import orjson
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from stream.core.drift import DriftRecord
from stream.core.health import PartitionProgress
from stream.core.pipeline import BatchOutcome
from stream.core.records import RawRecord

# aiohttp (under Faust) refuses a charset inside content_type; the exposition is ASCII anyway.
CONTENT_TYPE = "text/plain; version=0.0.4"

# Batch sizes up to the largest sensible SENTISTREAM_BATCH_SIZE; latencies from 1 ms to 1 min.
SIZE_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)
TOKEN_BUCKETS = (16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0,
)  # fmt: skip


def peak_rss_bytes() -> int:
    """This process's peak resident set size.

    Linux: ``VmHWM`` from /proc (``ru_maxrss`` survives exec, so a worker started by a big parent
    would report the parent's peak); elsewhere ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


class PeakMemoryCollector(Collector):
    """Peak resident set size of this process, which the process collector lacks."""

    def collect(self) -> Iterable[GaugeMetricFamily]:
        peak_bytes = peak_rss_bytes()
        yield GaugeMetricFamily(
            "sentistream_process_peak_resident_memory_bytes",
            "Peak resident memory of the worker process.",
            value=float(peak_bytes),
        )


class WorkerMetrics:
    """The worker's counters and histograms, in a registry of their own."""

    def __init__(self, *, model: str, version: str, backend: str, device: str) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        ProcessCollector(registry=registry)  # process_resident_memory_bytes, cpu seconds, fds
        PlatformCollector(registry=registry)
        registry.register(PeakMemoryCollector())
        self.model_info = Gauge(
            "sentistream_model_info",
            "The model this worker scores with (value is always 1).",
            ["model", "version", "backend", "device"],
            registry=registry,
        )
        self.model_info.labels(model, version, backend, device).set(1)
        self.window_positive_ratio = Gauge(
            "sentistream_window_positive_ratio",
            "Positive ratio of the last closed tumbling window, for all and per source.",
            ["key"],
            registry=registry,
        )
        self.window_events = Gauge(
            "sentistream_window_events",
            "Events counted in the last closed tumbling window, for all and per source.",
            ["key"],
            registry=registry,
        )
        self.drift_psi = Gauge(
            "sentistream_drift_psi",
            "Population stability index of the last closed drift window against the reference.",
            ["source", "distribution"],
            registry=registry,
        )
        self.drift_js = Gauge(
            "sentistream_drift_js",
            "Jensen-Shannon divergence (bits) of the last closed drift window and the reference.",
            ["source", "distribution"],
            registry=registry,
        )
        self.drift_window_events = Gauge(
            "sentistream_drift_window_events",
            "Events in the last closed drift window (windows under SENTISTREAM_DRIFT_MIN_COUNT "
            "are never flagged).",
            ["source"],
            registry=registry,
        )
        self.drift_dead_letter_rate = Gauge(
            "sentistream_drift_dead_letter_rate",
            "Dead letters / inputs in the last closed drift window.",
            ["source"],
            registry=registry,
        )
        self.drift_windows = Counter(
            "sentistream_drift_windows",
            "Closed drift windows, by whether a distribution's PSI was over 0.2.",
            ["source", "drifted"],
            registry=registry,
        )
        self.window_accuracy = Gauge(
            "sentistream_window_accuracy",
            "Accuracy of the last closed drift window's events that carried gold_label.",
            ["source"],
            registry=registry,
        )
        self.window_ece = Gauge(
            "sentistream_window_ece",
            "Expected calibration error of the last closed drift window's gold-labelled events.",
            ["source"],
            registry=registry,
        )
        self.shadow_comparisons = Counter(
            "sentistream_shadow_comparisons",
            "Messages scored by the shadow model too, by whether the two labels agree.",
            ["agree"],
            registry=registry,
        )
        self.shadow_failures = Counter(
            "sentistream_shadow_failures",
            "Takes the shadow model could not score (the events were unaffected).",
            registry=registry,
        )
        self.shadow_latency = Histogram(
            "sentistream_shadow_model_seconds",
            "Shadow model forward-pass time (compare sentistream_model_seconds).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.model_swaps = Counter(
            "sentistream_model_swaps",
            "Switches to a promoted model version (hot swap, no restart).",
            registry=registry,
        )
        self.model_load_failures = Counter(
            "sentistream_model_load_failures",
            "Promoted model versions that failed to load or to score the warm-up batch; the "
            "worker kept its model.",
            registry=registry,
        )
        self.messages_in = Counter(
            "sentistream_messages_in", "Input records taken from Kafka.", registry=registry
        )
        self.events_out = Counter(
            "sentistream_events_out", "Enriched events published.", registry=registry
        )
        self.dead_letters = Counter(
            "sentistream_dead_letters",
            "Records published to the dead-letter topic, by reason.",
            ["reason"],
            registry=registry,
        )
        self.take_size = Histogram(
            "sentistream_take_size",
            "Records taken from the queue per scoring round (adaptive: grows with load).",
            buckets=SIZE_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "sentistream_batch_size",
            "Texts per model forward pass.",
            buckets=SIZE_BUCKETS,
            registry=registry,
        )
        self.batch_tokens = Histogram(
            "sentistream_batch_tokens",
            "Padded tokens per model forward pass.",
            buckets=TOKEN_BUCKETS,
            registry=registry,
        )
        self.real_tokens = Counter(
            "sentistream_real_tokens", "Tokens of the texts scored.", registry=registry
        )
        self.padded_tokens = Counter(
            "sentistream_padded_tokens",
            "Tokens fed to the model including padding.",
            registry=registry,
        )
        self.padding_efficiency = Gauge(
            "sentistream_padding_efficiency",
            "Real / padded tokens since start (1.0 = no padding wasted).",
            registry=registry,
        )
        self.model_latency = Histogram(
            "sentistream_model_latency_seconds",
            "Wall time of one model forward pass.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.end_to_end_latency = Histogram(
            "sentistream_end_to_end_latency_seconds",
            "From the input record's Kafka timestamp to its output being acknowledged.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "sentistream_consumer_lag",
            "Records waiting past the group's committed offset, per consumed partition.",
            ["partition"],
            registry=registry,
        )
        self.rebalances = Counter(
            "sentistream_rebalances",
            "Partition assignments this worker received.",
            registry=registry,
        )
        self.recovery_seconds = Histogram(
            "sentistream_recovery_seconds",
            "From a partition assignment to the worker consuming again (table recovery).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.stalls = Counter(
            "sentistream_stalls",
            "Times a partition had records waiting and no progress for the stall limit.",
            ["partition"],
            registry=registry,
        )
        self._real = 0
        self._padded = 0

    def record_window(self, key: bytes | None, value: bytes | None) -> None:
        """A closed tumbling window of ``all`` or of one source (not per channel: one series per
        conversation would be unbounded): its positive ratio and event count."""
        parts = (key or b"").decode(errors="replace").split("|")
        if len(parts) != 3 or parts[1] != "tumbling" or ",channel=" in parts[0] or value is None:
            return
        window = orjson.loads(value)
        counts = window.get("counts", {})
        self.window_events.labels(parts[0]).set(sum(int(v) for v in counts.values()))
        if window.get("positive_ratio") is not None:
            self.window_positive_ratio.labels(parts[0]).set(float(window["positive_ratio"]))

    def record_drift(self, record: DriftRecord) -> None:
        """The latest closed drift window of a source: PSI and JS per distribution, accuracy and
        calibration error where its events carried gold labels."""
        for name, drift in record.distributions.items():
            self.drift_psi.labels(record.source, name).set(drift.psi)
            self.drift_js.labels(record.source, name).set(drift.js)
        self.drift_window_events.labels(record.source).set(record.events)
        self.drift_dead_letter_rate.labels(record.source).set(record.dead_letter_rate)
        self.drift_windows.labels(record.source, "true" if record.drifted else "false").inc()
        if record.accuracy is not None:
            self.window_accuracy.labels(record.source).set(record.accuracy)
        if record.ece is not None:
            self.window_ece.labels(record.source).set(record.ece)

    def model_swapped(self, *, model: str, version: str, backend: str, device: str) -> None:
        self.model_info.clear()
        self.model_info.labels(model, version, backend, device).set(1)
        self.model_swaps.inc()

    def record_batch(
        self, records: Sequence[RawRecord], outcome: BatchOutcome, published_ms: int
    ) -> None:
        """Count one published batch: what came in, what went out, how the model was used."""
        self.messages_in.inc(len(records))
        self.take_size.observe(len(records))
        self.events_out.inc(len(outcome.events))
        for reason, count in outcome.reasons.items():
            self.dead_letters.labels(reason).inc(count)
        for scored in outcome.scored_batches:
            for size, tokens, ms in zip(
                scored.forward_sizes, scored.forward_tokens, scored.forward_ms, strict=True
            ):
                self.batch_size.observe(size)
                self.batch_tokens.observe(tokens)
                self.model_latency.observe(ms / 1000)
            self.real_tokens.inc(scored.real_tokens)
            self.padded_tokens.inc(scored.padded_tokens)
            self._real += scored.real_tokens
            self._padded += scored.padded_tokens
        if self._padded:
            self.padding_efficiency.set(self._real / self._padded)
        for agree, count in outcome.shadow_agreements.items():
            self.shadow_comparisons.labels("true" if agree else "false").inc(count)
        self.shadow_failures.inc(outcome.shadow_failures)
        for scored in outcome.shadow_batches:
            for ms in scored.forward_ms:
                self.shadow_latency.observe(ms / 1000)
        for record in records:
            if record.timestamp_ms is not None and record.timestamp_ms > 0:
                self.end_to_end_latency.observe(max(0, published_ms - record.timestamp_ms) / 1000)

    def record_progress(
        self, report: Sequence[PartitionProgress], newly_stalled: Sequence[str]
    ) -> None:
        """Lag per partition from one progress check; partitions no longer assigned drop out."""
        self.consumer_lag.clear()
        for progress in report:
            self.consumer_lag.labels(progress.partition).set(progress.lag)
        for partition in newly_stalled:
            self.stalls.labels(partition).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
