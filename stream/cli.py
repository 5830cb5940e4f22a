"""The ``sentistream`` command: worker, broker, produce, demo."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from stream.settings import Settings

log = logging.getLogger("sentistream")

REDACTED_LIBRARY_LOGGERS = ("faust", "aiokafka", "mode", "kafka")


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def cmd_worker(_args: argparse.Namespace) -> int:
    from faust.worker import Worker

    from connectors.admin import ensure_topics, pipeline_topics
    from models.runner import ModelLoadError, RunnerOptions, SentimentRunner
    from stream.app import create_app

    settings = Settings.from_env()
    configure_logging(settings.log_level)
    try:
        runner = SentimentRunner(
            settings.model,
            RunnerOptions(
                device=settings.device,
                revision=settings.model_revision,
                max_batch_size=settings.batch_size,
                max_batch_tokens=settings.batch_max_tokens,
                torch_threads=settings.torch_threads,
            ),
        )
    except ModelLoadError as exc:
        print(f"sentistream: {exc}", file=sys.stderr)
        return 2
    log.info("model %s (%s) loaded on %s", runner.name, runner.version, runner.device)
    ensure_topics(
        settings.kafka,
        pipeline_topics(settings.topics, settings.app_id),
        replication_factor=settings.topics.replication_factor,
        # A compacted aggregates topic keeps the latest state of every window.
        compacted={settings.topics.aggregates_topic},
    )
    app = create_app(settings, runner)
    worker = Worker(app, loglevel=settings.log_level, quiet=True)
    if settings.redact_text:
        # The Kafka libraries log record values at DEBUG; with redaction no text may reach a log.
        for name in REDACTED_LIBRARY_LOGGERS:
            logging.getLogger(name).setLevel(max(logging.INFO, logging.getLogger(name).level))

    @app.task  # type: ignore[untyped-decorator]
    async def install_task_dump() -> None:
        # After the worker's own signal handlers (mode binds SIGUSR2 to pdb).
        worker.loop.add_signal_handler(signal.SIGUSR2, dump_tasks)

    worker.execute_from_commandline()
    return 0


def dump_tasks() -> None:
    """SIGUSR2: log where every asyncio task waits, following its chain of awaits."""
    import asyncio

    for task in asyncio.all_tasks():
        frames = []
        awaitable: object = task.get_coro()
        while awaitable is not None:
            frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "ag_frame", None)
            if frame is not None:
                frames.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
            awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "ag_await", None)
        log.warning("task %s waits in:\n  %s", task.get_name(), "\n  ".join(frames))


def cmd_broker(args: argparse.Namespace) -> int:
    from connectors.broker import EmbeddedBroker

    configure_logging("info")
    broker = EmbeddedBroker(args.port).start()

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping the embedded broker", signal.Signals(signum).name)
        broker.terminate()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print(f"embedded broker listening on {broker.bootstrap_servers}", flush=True)
    print(f"  export KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers}", flush=True)
    print("  export KAFKA_BROKER_PROFILE=embedded", flush=True)
    code = broker.wait()
    broker.stop()
    log.info("embedded broker stopped (exit code %s)", code)
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    from connectors.producer import produce_values

    settings = Settings.from_env()
    configure_logging(settings.log_level)
    topic = args.topic or settings.topics.input_topic
    if args.file == "-":
        lines = [line.rstrip(b"\r\n") for line in sys.stdin.buffer if line.strip()]
    else:
        lines = [line for line in Path(args.file).read_bytes().splitlines() if line.strip()]
    if args.format == "text":
        import orjson

        lines = [orjson.dumps({"text": line.decode("utf-8", "replace")}) for line in lines]
    report = produce_values(settings.kafka, topic, lines)
    print(f"sent {report.sent} records to {topic}, {report.failed} failed")
    for error in report.errors[:10]:
        print(f"  {error}", file=sys.stderr)
    return 1 if report.failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from stream.demo import run_demo

    configure_logging("warning")
    return run_demo(sample=Path(args.sample), timeout=args.timeout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sentistream", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    worker = commands.add_parser("worker", help="run the scoring worker (settings from env)")
    worker.set_defaults(handler=cmd_worker)

    broker = commands.add_parser("broker", help="run the embedded Kafka-compatible broker")
    broker.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    broker.set_defaults(handler=cmd_broker)

    produce = commands.add_parser("produce", help="produce messages from a file or stdin")
    produce.add_argument("file", help="path, or - for stdin")
    produce.add_argument("--topic", help="default: SENTISTREAM_INPUT_TOPIC")
    produce.add_argument(
        "--format",
        choices=["raw", "text"],
        default="raw",
        help="raw: each line is sent as-is (JSONL); text: each line is a message text",
    )
    produce.set_defaults(handler=cmd_produce)

    demo = commands.add_parser("demo", help="broker + worker + sample messages, end to end")
    demo.add_argument(
        "--sample",
        default=str(Path(__file__).resolve().parent / "samples" / "demo_messages.jsonl"),
    )
    demo.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for results")
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = args.handler
    return int(handler(args))
