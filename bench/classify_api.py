"""The classify API's latency: ``python -m bench.classify_api [--model M] [--broker kafka]``.

A worker on a real broker; one text per request at ``--api-rate`` requests/s, first with the
worker idle, then while a stream of ``--stream-rate`` messages/s flows through the same worker
(the requests' texts join its takes). Prints p50/p95/p99 of each phase as a table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson

from bench.run import start_broker
from connectors.admin import ensure_topics, pipeline_topics
from connectors.broker import free_port
from connectors.producer import RecordProducer
from stream.core.live import percentile as nearest_rank
from stream.settings import KafkaSettings, TopicSettings
from stream.worker_process import WorkerProcess

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def sentences() -> list[str]:
    rows = (SHARED / "data" / "sst2" / "glue_dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [row.rsplit("\t", 1)[0] for row in rows if row.strip()]


def percentile(values: list[float], q: float) -> float:
    """Nearest rank, as the live page's (the phases are never empty)."""
    value = nearest_rank(sorted(values), q)
    assert value is not None
    return value


def ask(base: str, texts: list[str], rate: float, count: int) -> list[float]:
    latencies = []
    for index in range(count):
        due = time.monotonic() + 1 / rate
        body = orjson.dumps({"text": texts[index % len(texts)]})
        request = urllib.request.Request(f"{base}/v1/classify", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200
            response.read()
        latencies.append((time.perf_counter() - started) * 1000)
        time.sleep(max(0.0, due - time.monotonic()))
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=str(SHARED / "models" / "sentiment-minilm-sst2"))
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--broker", choices=["kafka", "embedded"], default="kafka")
    parser.add_argument("--api-rate", type=float, default=5.0)
    parser.add_argument("--stream-rate", type=float, default=20.0)
    parser.add_argument("--requests", type=int, default=150)
    args = parser.parse_args()
    texts = sentences()
    with tempfile.TemporaryDirectory(prefix="bench-api-") as folder:
        base_dir = Path(folder)
        with start_broker(args.broker, base_dir) as broker:
            kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers,
                                  broker_profile=broker.profile)  # fmt: skip
            topics = TopicSettings(input_topic="api.input", events_topic="api.events",
                                   deadletter_topic="api.deadletter",
                                   aggregates_topic="api.aggregates")  # fmt: skip
            ensure_topics(kafka, pipeline_topics(topics, "bench-api"))
            port = free_port()
            worker = WorkerProcess({
                "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
                "KAFKA_BROKER_PROFILE": str(kafka.broker_profile),
                "SENTISTREAM_APP_ID": "bench-api", "SENTISTREAM_MODEL": args.model,
                "SENTISTREAM_BACKEND": args.backend, "SENTISTREAM_WEB_PORT": str(port),
                "SENTISTREAM_INPUT_TOPIC": topics.input_topic,
                "SENTISTREAM_EVENTS_TOPIC": topics.events_topic,
                "SENTISTREAM_DEADLETTER_TOPIC": topics.deadletter_topic,
                "SENTISTREAM_AGGREGATES_TOPIC": topics.aggregates_topic,
                "SENTISTREAM_DATA_DIR": str(base_dir / "worker"),
                "SENTISTREAM_MODEL_CACHE_DIR": str(base_dir / "cache"),
                "SENTISTREAM_LOG_LEVEL": "warning", "SENTISTREAM_API_BURST": "100000",
            }, log_path=base_dir / "worker.log").start()  # fmt: skip
            base = f"http://127.0.0.1:{port}"
            try:
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline:
                    try:
                        urllib.request.urlopen(f"{base}/v1/openapi.json", timeout=5).close()
                        break
                    except (urllib.error.URLError, ConnectionError):
                        time.sleep(0.5)
                ask(base, texts, args.api_rate, 10)  # warm-up
                idle = ask(base, texts, args.api_rate, args.requests)
                stop = threading.Event()

                def stream() -> None:
                    producer = RecordProducer(kafka)
                    index = 0
                    while not stop.is_set():
                        due = time.monotonic() + 1 / args.stream_rate
                        value = orjson.dumps({"id": f"s{index}", "text": texts[index % len(texts)]})
                        producer.send(topics.input_topic, value)
                        index += 1
                        time.sleep(max(0.0, due - time.monotonic()))
                    producer.flush()

                feeder = threading.Thread(target=stream)
                feeder.start()
                time.sleep(3)
                busy = ask(base, texts, args.api_rate, args.requests)
                stop.set()
                feeder.join()
            finally:
                worker.stop()
    print(f"classify API, one text per request at {args.api_rate}/s, {args.requests} requests, "
          f"model {Path(args.model).name} ({args.backend}), broker {args.broker}")  # fmt: skip
    print("| worker | p50 ms | p95 ms | p99 ms | mean ms |")
    print("|---|---:|---:|---:|---:|")
    for name, values in (("idle", idle), (f"stream at {args.stream_rate:g} msg/s", busy)):
        print(
            f"| {name} | {percentile(values, 0.5):.1f} | {percentile(values, 0.95):.1f} | "
            f"{percentile(values, 0.99):.1f} | {statistics.mean(values):.1f} |"
        )


if __name__ == "__main__":
    main()
