"""One benchmark run: baselines, the runner offline, and the worker end to end, in one table.

(a) naive: ``transformers.pipeline``, one message at a time (what a first prototype does);
(b) offline: the project's model runner on the whole mix at once, per backend (its ceiling);
(c) end to end: a broker (Apache Kafka with the ``kafka`` client profile, the embedded broker with
    its ``embedded`` profile, or both, one after the other) + a running worker per backend;
    messages produced at max rate and at half the measured max; latency = event published (its
    record timestamp) - message produced.
Speed uses random-init DistilBERT SST-2 (the real architecture, so the real cost); accuracy uses
the real shared MiniLM SST-2 model on GLUE SST-2 dev. Nothing here asserts on time: it reports.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from bench.messages import message_mix
from bench.options import NULL, BenchOptions
from bench.random_model import save_random_model
from connectors.admin import ensure_topics, pipeline_topics
from connectors.broker import BrokerProcess, EmbeddedBroker, KafkaBroker, free_port
from connectors.producer import RecordProducer
from connectors.sink import read_topics
from stream.settings import KafkaSettings, TopicSettings
from stream.worker_process import WorkerProcess

if TYPE_CHECKING:
    from models.runner import SentimentRunner

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED = PROJECT_ROOT.parent / "shared"
DISTILBERT_CONFIG = SHARED / "models" / "distilbert-sst2-config"
MINILM = SHARED / "models" / "sentiment-minilm-sst2"
SST2_DEV = SHARED / "data" / "sst2" / "glue_dev.tsv"
# The latency-throughput curve: offered load as fractions of the measured max rate.
CURVE_FRACTIONS = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


@dataclass
class Row:
    """One line of the table; ``None`` where a column does not apply."""

    run: str
    backend: str
    messages: int
    msg_per_s: float
    broker: str = "-"  # end to end: "kafka" (Apache Kafka) or "embedded"
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    mean_batch: float | None = None
    batch_fill: float | None = None
    padding_efficiency: float | None = None
    peak_rss_mb: float | None = None
    offered_per_s: float | None = None
    model_ms_per_message: float | None = None  # forward-pass time per message (worker metrics)
    cores_worker: float | None = None  # CPU cores busy during the phase, by process
    cores_broker: float | None = None
    cores_load: float | None = None  # this process: producer and consumer
    worker_cpu_ms_per_message: float | None = None  # the worker's CPU time (all threads) / msg
    latency_target_ms: int | None = None  # the worker's SENTISTREAM_LATENCY_TARGET_MS, if set


@dataclass
class Accuracy:
    backend: str
    sst2_dev_accuracy: float
    agreement_with_fp32: float
    flips: int


@dataclass
class Graph:
    """An ONNX backend's model file: its fused transformer operators and its size."""

    backend: str
    fused_operators: dict[str, int]
    size_mb: float


@dataclass
class Report:
    machine: str
    settings: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    accuracy: list[Accuracy] = field(default_factory=list)
    graphs: list[Graph] = field(default_factory=list)
    goals: list[dict[str, Any]] = field(default_factory=list)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


# --- (a) naive ------------------------------------------------------------------------------------


def bench_naive(model: Path, texts: Sequence[str], threads: int) -> Row:
    import torch
    from transformers import pipeline

    torch.set_num_threads(threads)
    classify = pipeline("text-classification", model=str(model), device="cpu")
    classify(texts[0])  # warm-up
    latencies = []
    started = time.perf_counter()
    for text in texts:
        one = time.perf_counter()
        classify(text)
        latencies.append((time.perf_counter() - one) * 1000)
    elapsed = time.perf_counter() - started
    return Row(
        run="naive pipeline, 1 at a time",
        backend="torch-fp32",
        messages=len(texts),
        msg_per_s=len(texts) / elapsed,
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
        p99_ms=percentile(latencies, 99),
        mean_batch=1.0,
        batch_fill=None,
    )


# --- (b) offline ----------------------------------------------------------------------------------


def bench_language(texts: Sequence[str]) -> Row:
    """What the events' lang_detected costs: the offline language identifier alone."""
    from models.language import LanguageIdentifier

    identify = LanguageIdentifier()
    identify(texts[:10])  # loads the model
    started = time.perf_counter()
    identify(texts)
    elapsed = time.perf_counter() - started
    return Row(
        run="language detection (fastText lite)",
        backend="-",
        messages=len(texts),
        msg_per_s=len(texts) / elapsed,
        model_ms_per_message=1000 * elapsed / len(texts),
    )


def load_runner(model: Path, backend: str, opts: BenchOptions) -> SentimentRunner:
    """The runner as the bench's workers run it: batch size, threads, the shared export cache."""
    from models.runner import RunnerOptions, SentimentRunner

    assert opts.workdir is not None, "run_bench resolves the workdir"
    return SentimentRunner(
        str(model),
        RunnerOptions(
            backend=backend,
            max_batch_size=opts.batch_size,
            torch_threads=opts.threads,
            lanes=opts.lanes,
            cache_dir=opts.workdir / "model-cache",
        ),
    )


def bench_offline(
    model: Path, texts: Sequence[str], backend: str, opts: BenchOptions
) -> tuple[Row, Graph | None]:
    from stream.core.cleaning import CleaningRules, clean_text

    runner = load_runner(model, backend, opts)
    cleaned = [clean_text(text, CleaningRules()) for text in texts]
    started = time.perf_counter()
    scored = runner.predict(cleaned)
    elapsed = time.perf_counter() - started
    sizes = scored.forward_sizes
    return Row(
        run="runner offline, whole mix",
        backend=backend,
        messages=len(texts),
        msg_per_s=len(texts) / elapsed,
        mean_batch=statistics.fmean(sizes),
        batch_fill=statistics.fmean(sizes) / opts.batch_size,
        padding_efficiency=scored.padding_efficiency,
    ), onnx_graph(runner, backend)


def onnx_graph(runner: SentimentRunner, backend: str) -> Graph | None:
    """The ONNX file an ONNX backend runs: fused operator counts and size (None: not ONNX)."""
    path = getattr(runner.forward, "path", None)
    if path is None:
        return None
    import onnx

    from models.backends import fused_operator_counts

    graph = onnx.load(str(path), load_external_data=False).graph
    return Graph(backend, fused_operator_counts(graph), Path(path).stat().st_size / 2**20)


# --- (c) end to end -------------------------------------------------------------------------------


def scrape(port: int) -> dict[str, float]:
    """The worker's /metrics as {sample name{labels}: value}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def delta(after: dict[str, float], before: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


class EndToEnd:
    """A worker for one backend on the shared broker, fed and read by this process."""

    def __init__(
        self,
        kafka: KafkaSettings,
        model: Path,
        backend: str,
        opts: BenchOptions,
        broker_pid: int,
        guarantee: str = "at_least_once",
        shadow: bool = False,
        latency_target_ms: int | None = None,
    ) -> None:
        self.kafka = kafka
        self.broker_pid = broker_pid
        self.opts = opts
        self.backend = backend
        suffix = uuid.uuid4().hex[:8]
        self.topics = TopicSettings(
            input_topic=f"bench.{suffix}.input",
            events_topic=f"bench.{suffix}.events",
            deadletter_topic=f"bench.{suffix}.deadletter",
            aggregates_topic=f"bench.{suffix}.aggregates",
        )
        app_id = f"bench-{suffix}"
        ensure_topics(kafka, pipeline_topics(self.topics, app_id))
        self.port = free_port()
        assert opts.workdir is not None, "run_bench resolves the workdir"
        base = opts.workdir
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "KAFKA_BROKER_PROFILE": str(kafka.broker_profile),
            "SENTISTREAM_APP_ID": app_id,
            "SENTISTREAM_INPUT_TOPIC": self.topics.input_topic,
            "SENTISTREAM_EVENTS_TOPIC": self.topics.events_topic,
            "SENTISTREAM_DEADLETTER_TOPIC": self.topics.deadletter_topic,
            "SENTISTREAM_AGGREGATES_TOPIC": self.topics.aggregates_topic,
            "SENTISTREAM_MODEL": str(model),
            "SENTISTREAM_BACKEND": backend,
            "SENTISTREAM_MODEL_CACHE_DIR": str(base / "model-cache"),
            "SENTISTREAM_BATCH_SIZE": str(opts.batch_size),
            "SENTISTREAM_TORCH_THREADS": str(opts.threads),
            "SENTISTREAM_INFERENCE_LANES": "" if opts.lanes is None else str(opts.lanes),
            "SENTISTREAM_WEB_PORT": str(self.port),
            "SENTISTREAM_DATA_DIR": str(base / f"worker-{suffix}"),
            "SENTISTREAM_LOG_LEVEL": "warning",
            "SENTISTREAM_PROCESSING_GUARANTEE": guarantee,
        }
        self.latency_target_ms = (
            opts.latency_target_ms if latency_target_ms is None else latency_target_ms
        )
        if self.latency_target_ms is not None:
            env["SENTISTREAM_LATENCY_TARGET_MS"] = str(self.latency_target_ms)
        if shadow:  # the same model again, on every message: the cost of a shadow
            env["SENTISTREAM_SHADOW_MODEL"] = str(model)
            env["SENTISTREAM_SHADOW_TOPIC"] = f"bench.{suffix}.shadow"
        self.worker = WorkerProcess(env, log_path=base / f"worker-{backend}-{suffix}.log")
        self.produced_ms: dict[str, int] = {}

    def __enter__(self) -> EndToEnd:
        self.worker.start()
        self.run_phase([{"id": f"warmup-{i}", "text": "warm up"} for i in range(4)], rate=None)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.worker.stop()

    def run_phase(
        self, messages: Sequence[dict[str, str]], rate: float | None, timeout: float = 900.0
    ) -> tuple[list[float], float]:
        """Produce ``messages`` (at ``rate``/s, or as fast as possible) and wait for their events.

        Returns per-message latencies (ms) and throughput (messages / (last event - first sent)).
        """
        wanted = {message["id"] for message in messages}
        latencies: dict[str, float] = {}
        last_event_ms = 0
        producer_done = threading.Event()
        first_sent: list[int] = []

        def produce() -> None:
            producer = RecordProducer(self.kafka)
            started = time.monotonic()
            for index, message in enumerate(messages):
                if rate is not None:
                    pause = started + index / rate - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                sent_ms = int(time.time() * 1000)
                if not first_sent:
                    first_sent.append(sent_ms)
                self.produced_ms[message["id"]] = sent_ms
                producer.send(
                    self.topics.input_topic,
                    orjson.dumps(message),
                    key=message["id"].encode(),
                    timestamp_ms=sent_ms,
                )
            producer.flush()
            producer_done.set()

        thread = threading.Thread(target=produce, daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout
        for record in read_topics(
            self.kafka,
            [self.topics.events_topic, self.topics.deadletter_topic],
            deadline=deadline,
            until=lambda: len(latencies) >= len(wanted) or self.worker.exit_code() is not None,
        ):
            if record.topic == self.topics.deadletter_topic:
                raise RuntimeError(f"bench message dead-lettered: {record.headers}")
            event_id = str(orjson.loads(record.value or b"{}")["id"])
            if event_id in wanted and event_id not in latencies:
                latencies[event_id] = record.timestamp_ms - self.produced_ms[event_id]
                last_event_ms = max(last_event_ms, record.timestamp_ms)
        thread.join(60)
        if len(latencies) < len(wanted):
            raise RuntimeError(
                f"{backend_label(self.backend)}: {len(latencies)}/{len(wanted)} events arrived; "
                f"worker log:\n{self.worker.log_tail()}"
            )
        elapsed_s = max(1e-3, (last_event_ms - first_sent[0]) / 1000)
        return list(latencies.values()), len(messages) / elapsed_s

    def measure(self, messages: Sequence[dict[str, str]], rate: float | None, run: str) -> Row:
        before = scrape(self.port)
        cpu_before = cpu_seconds(self.worker.pid), cpu_seconds(self.broker_pid), own_cpu_seconds()
        wall_before = time.monotonic()
        latencies, throughput = self.run_phase(messages, rate)
        wall = time.monotonic() - wall_before
        cpu_after = cpu_seconds(self.worker.pid), cpu_seconds(self.broker_pid), own_cpu_seconds()
        cores = [(b - a) / wall for a, b in zip(cpu_before, cpu_after, strict=True)]
        after = scrape(self.port)
        batches = delta(after, before, "sentistream_batch_size_count")
        texts = delta(after, before, "sentistream_batch_size_sum")
        padded = delta(after, before, "sentistream_padded_tokens_total")
        mean_batch = texts / batches if batches else None
        return Row(
            run=run,
            backend=self.backend,
            messages=len(messages),
            msg_per_s=throughput,
            p50_ms=percentile(latencies, 50),
            p95_ms=percentile(latencies, 95),
            p99_ms=percentile(latencies, 99),
            mean_batch=mean_batch,
            batch_fill=mean_batch / self.opts.batch_size if mean_batch else None,
            padding_efficiency=(
                delta(after, before, "sentistream_real_tokens_total") / padded if padded else None
            ),
            peak_rss_mb=after.get("sentistream_process_peak_resident_memory_bytes", 0) / 2**20,
            offered_per_s=rate,
            model_ms_per_message=(
                delta(after, before, "sentistream_model_latency_seconds_sum") * 1000 / texts
                if texts
                else None
            ),
            cores_worker=cores[0],
            cores_broker=cores[1],
            cores_load=cores[2],
            worker_cpu_ms_per_message=(cpu_after[0] - cpu_before[0]) * 1000 / len(messages),
            latency_target_ms=self.latency_target_ms,
        )


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process (and its threads), from /proc; 0 if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def backend_label(backend: str) -> str:
    return f"worker ({backend})"


# --- accuracy -------------------------------------------------------------------------------------


def bench_accuracy(backends: Sequence[str], opts: BenchOptions) -> list[Accuracy]:
    rows = SST2_DEV.read_text(encoding="utf-8").splitlines()[1:]
    pairs = [row.rsplit("\t", 1) for row in rows if row.strip()]
    texts = [text for text, _ in pairs]
    gold = ["POSITIVE" if label == "1" else "NEGATIVE" for _, label in pairs]
    labels: dict[str, list[str]] = {}
    results = []
    for backend in ("torch-fp32", *[b for b in backends if b not in ("torch-fp32", NULL)]):
        runner = load_runner(MINILM, backend, opts)
        labels[backend] = [p.label for p in runner.predict(texts).predictions]
        flips = sum(a != b for a, b in zip(labels[backend], labels["torch-fp32"], strict=True))
        correct = sum(a == g for a, g in zip(labels[backend], gold, strict=True))
        results.append(Accuracy(backend, correct / len(texts), 1 - flips / len(texts), flips))
    return results


# --- the run --------------------------------------------------------------------------------------


def run_bench(opts: BenchOptions, say: Callable[[str], None] = print) -> Report:
    base = opts.workdir or Path(tempfile.mkdtemp(prefix="sentistream-bench-"))
    opts = replace(opts, workdir=base)
    model = save_random_model(DISTILBERT_CONFIG, base / "random-distilbert")
    mix = message_mix(opts.messages, seed=opts.seed)
    texts = [m["text"] for m in mix]
    report = Report(machine=machine_description(), settings=asdict(opts) | {"workdir": str(base)})
    report.settings["backends"] = list(opts.backends)

    say(f"(a) naive pipeline on {opts.naive_messages} messages ...")
    report.rows.append(bench_naive(model, texts[: opts.naive_messages], opts.threads))
    for backend in opts.backends:
        if backend == NULL:
            continue
        say(f"(b) runner offline, {backend} ...")
        row, graph = bench_offline(model, texts, backend, opts)
        report.rows.append(row)
        if graph is not None:
            report.graphs.append(graph)

    say("language detection on the mix ...")
    report.rows.append(bench_language(texts))

    for name in opts.brokers:
        with start_broker(name, base) as broker:
            kafka = KafkaSettings(
                bootstrap_servers=broker.bootstrap_servers, broker_profile=broker.profile
            )
            runs = [
                (backend, guarantee, False)
                for backend in opts.backends
                for guarantee in opts.guarantees
                if guarantee == "at_least_once" or not kafka.embedded
            ]
            if opts.shadow:
                runs += [(b, "at_least_once", True) for b in opts.backends if b != NULL]
            for backend, guarantee, shadow in runs:
                label = broker_label(name, guarantee, shadow)
                with EndToEnd(
                    kafka, model, backend, opts, broker.pid or 0, guarantee, shadow
                ) as e2e:
                    if backend == NULL:
                        say(f"(c) end to end on {label}, null classifier: pipeline ceiling ...")
                        null_mix = tag(message_mix(opts.null_messages, seed=opts.seed), "null")
                        row = e2e.measure(null_mix, None, "end to end, max rate")
                        report.rows.append(replace(row, broker=label))
                        continue
                    say(f"(c) end to end on {label}, {backend}: max rate ...")
                    fast = e2e.measure(tag(mix, "max"), None, "end to end, max rate")
                    report.rows.append(replace(fast, broker=label))
                    rate = fast.msg_per_s / 2
                    count = max(20, round(rate * opts.half_rate_seconds))
                    say(f"(c) end to end on {label}, {backend}: {rate:.0f} msg/s (half of max) ...")
                    half_mix = tag(message_mix(count, seed=opts.seed + 1), "half")
                    half = e2e.measure(half_mix, rate, "end to end, half max rate")
                    report.rows.append(replace(half, broker=label))
                if backend == opts.curve_backend and guarantee == "at_least_once" and not shadow:
                    for target in opts.curve_targets:
                        curve_worker = partial(
                            EndToEnd, kafka, model, backend, opts, broker.pid or 0,
                            latency_target_ms=target,
                        )  # fmt: skip
                        report.rows += latency_curve(curve_worker, fast.msg_per_s, label, opts, say)

    if not opts.skip_accuracy:
        say("accuracy on GLUE SST-2 dev (real MiniLM SST-2 model) ...")
        report.accuracy = bench_accuracy(opts.backends, opts)
    report.goals = evaluate_goals(report)
    return report


CURVE_RUN = "end to end, curve"


def latency_curve(
    worker: Callable[[], EndToEnd],
    max_rate: float,
    label: str,
    opts: BenchOptions,
    say: Callable[[str], None],
) -> list[Row]:
    """Latency against offered load: a fresh mix at each fraction of the measured max rate, each
    on a fresh ``worker()`` with topics of its own. The embedded broker's cost per record grows
    with the records already on its topics (README, "The embedded broker"): on shared topics the
    later points measured the broker's slowdown, not the load."""
    rows = []
    for index, fraction in enumerate(CURVE_FRACTIONS):
        rate = max_rate * fraction
        count = max(20, round(rate * opts.curve_seconds))
        with worker() as e2e:
            say(f"(d) latency curve on {label}, {e2e.backend}, target {e2e.latency_target_ms} "
                f"ms: {fraction:.0%} of max ({rate:.0f}/s)")  # fmt: skip
            mix = tag(message_mix(count, seed=opts.seed + 10 + index), f"curve{index}")
            row = e2e.measure(mix, rate, f"{CURVE_RUN} {fraction:.0%} of max")
        rows.append(replace(row, broker=label))
    return rows


def curve_rows(report: Report) -> list[Row]:
    return [r for r in report.rows if r.run.startswith(CURVE_RUN)]


def curves(report: Report) -> dict[int | None, list[Row]]:
    """The curve's rows by the worker's latency target, each in offered-load order."""
    by_target: dict[int | None, list[Row]] = {}
    for row in curve_rows(report):
        by_target.setdefault(row.latency_target_ms, []).append(row)
    return by_target


def plot_curve(report: Report, path: Path) -> None:
    """p50/p95/p99 against the offered rate (the latency-throughput curve), one set of lines per
    latency target, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_target = curves(report)
    if not by_target:
        return
    figure, axes = plt.subplots(figsize=(7.5, 4.5))
    styles = ["--", "-", ":", "-."]
    for (target, rows), style in zip(by_target.items(), styles * 4, strict=False):
        offered = [r.offered_per_s or 0 for r in rows]
        name = "no target" if not target else f"target {target} ms"
        for quantile, colour in (("p50", "tab:blue"), ("p95", "tab:orange"), ("p99", "tab:green")):
            values = [getattr(r, f"{quantile}_ms") or float("nan") for r in rows]
            axes.plot(offered, values, style, color=colour, marker="o",
                      label=f"{quantile}, {name}")  # fmt: skip
    axes.axhline(100, color="grey", linestyle="--", linewidth=1)
    axes.set_yscale("log")
    axes.set_xlabel("offered rate (msg/s)")
    axes.set_ylabel("latency, produced -> event published (ms)")
    first = next(iter(by_target.values()))[0]
    axes.set_title(f"{first.backend} on {first.broker}: latency against offered load")
    axes.legend(fontsize=8)
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


EXACTLY_ONCE_SUFFIX = ", exactly-once"
SHADOW_SUFFIX = ", shadow"


def broker_label(broker: str, guarantee: str, shadow: bool = False) -> str:
    """The table's broker column: the broker, and what differs from a plain run."""
    return (
        broker
        + (EXACTLY_ONCE_SUFFIX if guarantee == "exactly_once" else "")
        + (SHADOW_SUFFIX if shadow else "")
    )


def start_broker(name: str, base: Path) -> BrokerProcess:
    """The bench's broker, not yet started (a context manager starts it)."""
    log_path = base / f"broker-{name}.log"
    if name == "kafka":
        return KafkaBroker(log_path=log_path, data_dir=base / "kafka-data", heap="1g")
    return EmbeddedBroker(log_path=log_path)


def tag(messages: Sequence[dict[str, str]], phase: str) -> list[dict[str, str]]:
    return [{**m, "id": f"{phase}-{m['id']}"} for m in messages]


def machine_description() -> str:
    import platform

    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"{model}, {os.cpu_count()} cores, {platform.python_version()} {gpu}".strip()


def find(report: Report, run: str, backend: str) -> Row | None:
    return next((r for r in report.rows if r.run.startswith(run) and r.backend == backend), None)


def evaluate_goals(report: Report) -> list[dict[str, Any]]:
    """The goals, as ratios from this run. "Chosen" is the fastest backend offline that keeps
    >= 99% label agreement and <= 0.5 points accuracy loss (without accuracy figures: the
    fastest offline)."""
    goals: list[dict[str, Any]] = []
    naive = find(report, "naive", "torch-fp32")
    fp32 = find(report, "runner offline", "torch-fp32")
    int8 = find(report, "runner offline", "onnx-int8")
    offline = [r for r in report.rows if r.run.startswith("runner offline")]
    reference = next((a for a in report.accuracy if a.backend == "torch-fp32"), None)
    accurate = {
        a.backend
        for a in report.accuracy
        if reference is not None
        and a.agreement_with_fp32 >= 0.99
        and (reference.sst2_dev_accuracy - a.sst2_dev_accuracy) * 100 <= 0.5
    }
    ceiling = find(report, "end to end, max rate", NULL)
    if ceiling is not None:
        goals.append(goal(f"pipeline ceiling, null classifier ({ceiling.broker}) >= 5,000 msg/s",
                          ceiling.msg_per_s, 5000))  # fmt: skip
    eligible = [r for r in offline if r.backend in accurate] or offline
    if not eligible:
        return [*goals, rss_goal(report)]
    chosen = max(eligible, key=lambda r: r.msg_per_s)
    if int8 is not None:
        goals.append(goal(f"fastest accurate CPU backend ({chosen.backend}) >= 1.3x onnx-int8",
                          chosen.msg_per_s / int8.msg_per_s, 1.3))  # fmt: skip
    if fp32:
        goals.append(goal(f"fastest accurate CPU backend ({chosen.backend}) >= 2.5x torch fp32",
                          chosen.msg_per_s / fp32.msg_per_s, 2.5))  # fmt: skip
    for e2e in (r for r in report.rows if r.run == "end to end, max rate"
                and r.backend == chosen.backend):  # fmt: skip
        where = f"{chosen.backend}, {e2e.broker}"
        if naive:
            goals.append(goal(f"end to end ({where}) >= 3x naive",
                              e2e.msg_per_s / naive.msg_per_s, 3.0))  # fmt: skip
        goals.append(goal(f"end to end >= 90% of offline ({where})",
                          e2e.msg_per_s / chosen.msg_per_s, 0.90))  # fmt: skip
    for row in report.rows:
        if row.run == "end to end, half max rate" and row.p95_ms is not None:
            goals.append(goal(f"p95 at half max rate ({row.backend}, {row.broker}) <= 100 ms",
                              row.p95_ms, 100,
                              lower_is_better=True))  # fmt: skip
    return [*goals, rss_goal(report)]


def rss_goal(report: Report) -> dict[str, Any]:
    peak = max((r.peak_rss_mb or 0 for r in report.rows), default=0)
    return goal("worker peak RSS <= 1.5 GB (MB)", peak, 1536, lower_is_better=True)


def goal(name: str, value: float, target: float, lower_is_better: bool = False) -> dict[str, Any]:
    met = value <= target if lower_is_better else value >= target
    return {"goal": name, "value": round(value, 4), "target": target, "met": met}


# --- output ---------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def cores(row: Row) -> str:
    if row.cores_worker is None:
        return "-"
    return f"{row.cores_worker:.2f}/{_fmt(row.cores_broker, 2)}/{_fmt(row.cores_load, 2)}"


def render(report: Report) -> str:
    naive = find(report, "naive", "torch-fp32")
    lines = [
        f"machine: {report.machine}",
        f"mix: {report.settings['messages']} messages (seed {report.settings['seed']}), "
        f"batch size {report.settings['batch_size']}, {report.settings['threads']} threads"
        f" in {report.settings.get('lanes') or 'the default'} lane(s)",
        "",
        "| run | broker | backend | msg/s | x naive | p50 ms | p95 ms | p99 ms | mean batch | "
        "fill | padding eff. | model ms/msg | worker CPU ms/msg | peak RSS MB | "
        "cores: worker/broker/load |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in report.rows:
        run = row.run + (f" ({row.offered_per_s:.0f}/s offered)" if row.offered_per_s else "")
        speedup = row.msg_per_s / naive.msg_per_s if naive else None
        lines.append(
            f"| {run} | {row.broker} | {row.backend} | {row.msg_per_s:.1f} | {_fmt(speedup)} | "
            f"{_fmt(row.p50_ms, 0)} | {_fmt(row.p95_ms, 0)} | {_fmt(row.p99_ms, 0)} | "
            f"{_fmt(row.mean_batch)} | {_fmt(row.batch_fill, 2)} | "
            f"{_fmt(row.padding_efficiency, 2)} | {_fmt(row.model_ms_per_message)} | "
            f"{_fmt(row.worker_cpu_ms_per_message, 2)} | {_fmt(row.peak_rss_mb, 0)} | "
            f"{cores(row)} |"
        )
    lines += curve_table(report)
    lines += graph_table(report)
    lines += broker_comparison(report)
    lines += guarantee_comparison(report)
    lines += shadow_comparison(report)
    if report.accuracy:
        lines += [
            "",
            "| backend | SST-2 dev accuracy (MiniLM) | label agreement with torch fp32 | flips |",
            "|---|---:|---:|---:|",
        ]
        for acc in report.accuracy:
            lines.append(
                f"| {acc.backend} | {acc.sst2_dev_accuracy:.2%} | {acc.agreement_with_fp32:.2%} "
                f"| {acc.flips} |"
            )
    if report.goals:
        lines += ["", "| goal | value | target | met |", "|---|---:|---:|---|"]
        for item in report.goals:
            met = "yes" if item["met"] else "NO"
            lines.append(f"| {item['goal']} | {item['value']} | {item['target']} | {met} |")
    return "\n".join(lines)


def curve_table(report: Report) -> list[str]:
    by_target = curves(report)
    if not by_target:
        return []
    first = next(iter(by_target.values()))[0]
    lines = [
        "",
        f"latency against offered load ({first.backend}, {first.broker}):",
        "",
        "| latency target | offered | offered msg/s | delivered msg/s | p50 ms | p95 ms | p99 ms "
        "| mean batch |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for target, rows in by_target.items():
        for row in rows:
            fraction = row.run.removeprefix(CURVE_RUN).strip()
            lines.append(
                f"| {f'{target} ms' if target else 'none'} | {fraction} | "
                f"{_fmt(row.offered_per_s)} | {row.msg_per_s:.1f} | {_fmt(row.p50_ms, 0)} | "
                f"{_fmt(row.p95_ms, 0)} | {_fmt(row.p99_ms, 0)} | {_fmt(row.mean_batch)} |"
            )
    return lines


def graph_table(report: Report) -> list[str]:
    if not report.graphs:
        return []
    lines = [
        "",
        "| ONNX backend | Attention | EmbedLayerNormalization | SkipLayerNormalization | "
        "BiasGelu | file MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for graph in report.graphs:
        ops = graph.fused_operators
        lines.append(
            f"| {graph.backend} | {ops.get('Attention', 0)} | "
            f"{ops.get('EmbedLayerNormalization', 0)} | {ops.get('SkipLayerNormalization', 0)} | "
            f"{ops.get('BiasGelu', 0)} | {graph.size_mb:.1f} |"
        )
    return lines


def broker_comparison(report: Report) -> list[str]:
    """Apache Kafka beside the embedded broker, per backend and phase, when both ran."""
    pairs = paired_rows(report, lambda row: "embedded" if row.broker == "kafka" else None)
    if not pairs:
        return []
    lines = [
        "",
        "| run | backend | msg/s kafka | msg/s embedded | kafka / embedded | p95 ms kafka | "
        "p95 ms embedded | broker cores kafka | broker cores embedded |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kafka, embedded in pairs:
        lines.append(
            f"| {kafka.run} | {kafka.backend} | {kafka.msg_per_s:.1f} | {embedded.msg_per_s:.1f} | "
            f"{kafka.msg_per_s / embedded.msg_per_s:.2f} | {_fmt(kafka.p95_ms, 0)} | "
            f"{_fmt(embedded.p95_ms, 0)} | {_fmt(kafka.cores_broker, 2)} | "
            f"{_fmt(embedded.cores_broker, 2)} |"
        )
    return lines


def guarantee_comparison(report: Report) -> list[str]:
    """Exactly-once beside at-least-once on Apache Kafka, per backend and phase: the cost of
    transactions."""
    return variant_comparison(report, EXACTLY_ONCE_SUFFIX, "at-least-once", "exactly-once")


def shadow_comparison(report: Report) -> list[str]:
    """The same model as its own shadow beside no shadow: what a shadow costs the stream."""
    return variant_comparison(report, SHADOW_SUFFIX, "no shadow", "shadow")


def paired_rows(report: Report, partner: Callable[[Row], str | None]) -> list[tuple[Row, Row]]:
    """(row, its partner) for each end-to-end row whose ``partner(row)`` names the broker column
    of another row of the same run and backend (None: the row is not compared)."""
    e2e = [r for r in report.rows if r.run.startswith("end to end")]
    by_key = {(r.broker, r.run, r.backend): r for r in e2e}
    pairs = []
    for row in e2e:
        broker = partner(row)
        other = by_key.get((broker, row.run, row.backend)) if broker is not None else None
        if other is not None:
            pairs.append((row, other))
    return pairs


def variant_comparison(report: Report, suffix: str, plain_name: str, name: str) -> list[str]:
    """Rows whose broker column ends with ``suffix`` beside the same run without it."""
    pairs = [
        (base, variant)
        for variant, base in paired_rows(
            report,
            lambda row: row.broker.removesuffix(suffix) if row.broker.endswith(suffix) else None,
        )
    ]
    if not pairs:
        return []
    lines = [
        "",
        f"| run | backend | msg/s {plain_name} | msg/s {name} | {name} / {plain_name} "
        f"| p95 ms {plain_name} | p95 ms {name} | worker cores {plain_name} | "
        f"worker cores {name} |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for base, variant in pairs:
        lines.append(
            f"| {base.run} | {base.backend} | {base.msg_per_s:.1f} | {variant.msg_per_s:.1f} | "
            f"{variant.msg_per_s / base.msg_per_s:.2f} | {_fmt(base.p95_ms, 0)} | "
            f"{_fmt(variant.p95_ms, 0)} | {_fmt(base.cores_worker, 2)} | "
            f"{_fmt(variant.cores_worker, 2)} |"
        )
    return lines


def write_json(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(asdict(report), option=orjson.OPT_INDENT_2))
