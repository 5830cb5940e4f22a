"""``sentistream demo``: embedded broker + worker + the shipped sample messages, end to end."""

from __future__ import annotations

import os
import tempfile
import time
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from connectors.admin import ensure_topics, pipeline_topics
from connectors.broker import EmbeddedBroker, free_port
from connectors.producer import produce_values
from connectors.sink import ConsumedRecord, read_topics
from stream.core.codec import HEADER_ERROR, HEADER_REASON
from stream.settings import DEFAULT_MODEL, BrokerProfile, KafkaSettings, TopicSettings
from stream.worker_process import WorkerProcess

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_MODEL = PROJECT_ROOT.parent / "shared" / "models" / "sentiment-minilm-sst2"


def demo_model() -> str:
    """SENTISTREAM_MODEL if set, else the shared real model when present, else the hub default."""
    configured = os.environ.get("SENTISTREAM_MODEL")
    if configured:
        return configured
    return str(SHARED_MODEL) if SHARED_MODEL.is_dir() else DEFAULT_MODEL


def run_demo(sample: Path, timeout: float) -> int:
    lines = [line for line in sample.read_bytes().splitlines() if line.strip()]
    model = demo_model()
    workdir = Path(tempfile.mkdtemp(prefix="sentistream-demo-"))
    topics = TopicSettings()
    print(f"model:  {model}")
    print(f"sample: {sample} ({len(lines)} messages)")
    print(f"logs:   {workdir}")
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        kafka = KafkaSettings(
            bootstrap_servers=broker.bootstrap_servers, broker_profile=BrokerProfile.EMBEDDED
        )
        print(f"broker: embedded Tansu on {broker.bootstrap_servers}")
        ensure_topics(kafka, pipeline_topics(topics, "sentistream"))
        web_port = free_port()
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "KAFKA_BROKER_PROFILE": "embedded",
            "SENTISTREAM_MODEL": model,
            "SENTISTREAM_WEB_PORT": str(web_port),
            "SENTISTREAM_DATA_DIR": str(workdir / "data"),
            # The sample's last windows close on the idle flush: keep the demo short.
            "SENTISTREAM_IDLE_FLUSH_S": "3",
        }
        with WorkerProcess(env, log_path=workdir / "worker.log") as worker:
            print(f"worker: pid {worker.pid}, scoring {topics.input_topic}\n")
            report = produce_values(kafka, topics.input_topic, lines)
            if report.failed:
                print(f"could not produce {report.failed} messages: {report.errors[:3]}")
                return 1
            received = _print_results(kafka, topics, report.sent, worker, timeout)
            _print_windows(f"http://127.0.0.1:{web_port}", timeout=30)
        print("\nworker stopped; broker stopping")
    return 0 if received >= report.sent else 1


def _print_results(
    kafka: KafkaSettings,
    topics: TopicSettings,
    expected: int,
    worker: WorkerProcess,
    timeout: float,
) -> int:
    labels: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    by_source: dict[str, Counter[str]] = {}
    received = 0
    deadline = time.monotonic() + timeout
    for record in read_topics(
        kafka, [topics.events_topic, topics.deadletter_topic], deadline=deadline
    ):
        received += 1
        if record.topic == topics.events_topic:
            event = orjson.loads(record.value or b"{}")
            labels[event["label"]] += 1
            by_source.setdefault(event.get("source") or "-", Counter())[event["label"]] += 1
            print(_format_event(event))
        else:
            reasons[record.headers.get(HEADER_REASON, b"?").decode()] += 1
            print(_format_dead_letter(record))
        if received >= expected:
            break
        if worker.exit_code() is not None:
            print(f"\nthe worker exited ({worker.exit_code()}); its log:\n{worker.log_tail()}")
            break
    print(
        f"\n{received}/{expected} messages accounted for: {sum(labels.values())} events, "
        f"{sum(reasons.values())} dead letters"
    )
    print("labels:       " + ", ".join(f"{k} {v}" for k, v in sorted(labels.items())))
    print("dead letters: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))
    print("positive ratio by source (all events received):")
    for source, counts in sorted(by_source.items()):
        polar = counts["POSITIVE"] + counts["NEGATIVE"]
        ratio = f"{counts['POSITIVE'] / polar:.2f}" if polar else "n/a"
        print(f"  {source:<10} {ratio}  ({counts['POSITIVE']} positive / {polar})")
    return received


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our own worker
        return orjson.loads(response.read())


def _print_windows(base_url: str, timeout: float) -> None:
    """The windowed ratios, read back over the worker's HTTP side once every window closed."""
    deadline = time.monotonic() + timeout
    overall = None
    while time.monotonic() < deadline:
        try:
            overall = _get_json(f"{base_url}/aggregates?key=all&window=tumbling&last=100")
        except (OSError, ValueError):
            overall = None
        if overall is not None and overall["closed"] and not overall["current"]:
            break
        time.sleep(0.5)
    if overall is None:
        print("\n(no windowed aggregates could be read from the worker)")
        return
    print(f"\nwindowed ratios over HTTP ({base_url}/aggregates), tumbling 60 s, all sources:")
    print(f"  {'window start':<26} {'pos':>4} {'neg':>4}  ratio")
    for window in overall["closed"] + overall["current"]:
        counts = window["counts"]
        ratio = window["positive_ratio"]
        shown = f"{ratio:.2f}" if ratio is not None else "n/a"
        flag = "" if window["final"] else "  (open)"
        print(
            f"  {window['window_start']:<26} {counts['POSITIVE']:>4} {counts['NEGATIVE']:>4}"
            f"  {shown}{flag}"
        )
    keys = _get_json(f"{base_url}/aggregates/keys")["keys"]
    print("last closed 300 s hopping window per source:")
    for key in keys:
        if not key.startswith("source=") or ",channel=" in key:
            continue
        hopping = _get_json(f"{base_url}/aggregates?key={urllib.parse.quote(key)}&window=hopping")
        if hopping["closed"]:
            last = hopping["closed"][-1]
            ratio = last["positive_ratio"]
            shown = f"{ratio:.2f}" if ratio is not None else "n/a"
            print(f"  {key:<18} {last['window_start']}  ratio {shown}  ({last['total']} events)")


def _format_event(event: dict[str, object]) -> str:
    where = f"{event.get('source') or '-'}:{event.get('channel') or '-'}"
    text = str(event.get("text", "<redacted>"))
    text = text if len(text) <= 70 else text[:67] + "..."
    score = float(event["score"])  # type: ignore[arg-type]
    return f"{event['label']:<8} {score:.3f}  {where:<26} {text}"


def _format_dead_letter(record: ConsumedRecord) -> str:
    reason = record.headers.get(HEADER_REASON, b"?").decode()
    error = record.headers.get(HEADER_ERROR, b"").decode()
    original = (record.value or b"")[:50]
    return f"{'DEAD':<8} {reason:<20} {error[:50]:<50} {original!r}"
