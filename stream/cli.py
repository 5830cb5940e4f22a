"""The ``sentistream`` command: worker, broker, produce, tail, demo, eval."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from connectors.files import CsvOptions, FileFormat
from stream.compare_command import add_compare_parser
from stream.core.errors import (
    EXIT_CONFIGURATION,
    EXIT_INTERRUPTED,
    ConfigurationError,
    InterruptedRun,
    SentistreamError,
    UnavailableError,
)
from stream.drift_command import add_drift_parser
from stream.models_command import add_models_parser
from stream.settings import Settings
from stream.train import add_train_parser

if TYPE_CHECKING:
    from bench.options import BenchOptions
    from connectors.replay import Transform
    from models.runner import RunnerOptions, SentimentRunner
    from stream.core.candidates import Candidate
    from stream.core.drift import DriftTracker
    from stream.core.replay_plan import ReplayRequest

log = logging.getLogger("sentistream")
Number = TypeVar("Number", int, float)

# How long a starting worker tries to read the model control topic before it falls back to
# SENTISTREAM_MODEL (its app follows the topic anyway, and swaps once the broker answers).
CONTROL_START_TIMEOUT_S = 5.0
REDACTED_LIBRARY_LOGGERS = ("faust", "aiokafka", "mode", "kafka")


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def cmd_worker(_args: argparse.Namespace) -> int:
    # Before torch loads OpenMP: idle intra-op threads sleep rather than spin, leaving the cores to
    # the event loop between forward passes (ONNX Runtime gets the same via its session options).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from connectors.admin import ensure_topics, pipeline_topics
    from connectors.model_control import control_topic, ensure_control_topic, read_control
    from models.language import LanguageIdentifier
    from models.null import NullClassifier
    from models.runner import RunnerOptions, SentimentRunner, load_classifier
    from stream.app import create_app
    from stream.core.model_versions import ActiveModel
    from stream.faust_fixes import HeadlessWorker

    settings = Settings.from_env()
    configure_logging(settings.log_level)
    options = RunnerOptions.from_settings(settings)

    def load_version(active: ActiveModel) -> SentimentRunner:
        """A promoted registry version, from this worker's registry when it has one, else from
        the path the control record names."""
        if settings.model_registry is not None:
            return load_reference(settings, active.version, options)
        return SentimentRunner(
            active.path, replace(options, version_name=active.version, revision=None)
        )

    topic = control_topic(settings.app_id)
    active = None
    try:
        ensure_control_topic(settings.kafka, topic, timeout=CONTROL_START_TIMEOUT_S)
        active = read_control(settings.kafka, topic, timeout=CONTROL_START_TIMEOUT_S).active
    except UnavailableError as exc:  # the app follows the topic once the broker answers
        log.warning("model control topic unreadable at start-up (%s); starting with "
                    "SENTISTREAM_MODEL", exc)  # fmt: skip
    runner: SentimentRunner | NullClassifier | None = None
    if active is not None:  # a worker that starts later runs the promoted version
        try:
            runner = load_version(active)
        except SentistreamError as exc:
            log.error("promoted model %s not loaded (%s); starting with SENTISTREAM_MODEL",
                      active.version, exc)  # fmt: skip
    if runner is None:
        runner = load_classifier(settings.model, options)
    log.info(
        "model %s (%s) loaded: backend %s on %s, %d forward lane(s)",
        runner.name,
        runner.version,
        runner.backend,
        runner.device,
        runner.lanes,
    )
    ensure_topics(
        settings.kafka,
        {
            **pipeline_topics(settings.topics, settings.app_id),
            topic: 1,
            **(
                {settings.topics.shadow_topic: settings.topics.input_partitions}
                if settings.shadow_model
                else {}
            ),
            **({settings.topics.drift_topic: 1} if settings.drift_reference else {}),
        },
        replication_factor=settings.topics.replication_factor,
        # A compacted aggregates topic keeps the latest state of every window; the control topic
        # the latest model and the latest status of each worker.
        compacted={settings.topics.aggregates_topic, topic},
    )
    app = create_app(
        settings,
        runner,
        load_model=load_version,
        canary=candidate(settings, settings.canary_model, settings.canary_fraction, options),
        shadow=candidate(settings, settings.shadow_model, settings.shadow_fraction, options),
        detect_languages=LanguageIdentifier() if settings.detect_language else None,
        language_models=language_models(settings, options),
        drift=drift_tracker(settings),
    )
    worker = HeadlessWorker(app, loglevel=settings.log_level, quiet=True)
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


def load_reference(settings: Settings, reference: str, options: RunnerOptions) -> SentimentRunner:
    """A model named by a registry version (``X.Y.Z``), a checkpoint path or a hub id."""
    from models.registry import ModelRegistry
    from models.runner import SentimentRunner
    from stream.core.model_versions import SEMVER

    if SEMVER.match(reference):
        if settings.model_registry is None:
            raise ConfigurationError(
                f"{reference} names a registry version: set SENTISTREAM_MODEL_REGISTRY"
            )
        entry = ModelRegistry(settings.model_registry).get(reference)
        return SentimentRunner(
            str(entry.path), replace(options, version_name=entry.version, revision=None)
        )
    return SentimentRunner(reference, replace(options, revision=None))


def candidate(
    settings: Settings, reference: str | None, fraction: float, options: RunnerOptions
) -> Candidate | None:
    """A shadow or canary model and the share of message ids it sees."""
    from stream.core.candidates import Candidate

    if not reference:
        return None
    runner = load_reference(settings, reference, options)
    log.info("candidate model %s (%s) on %.0f%% of messages", runner.name, runner.version,
             100 * fraction)  # fmt: skip
    return Candidate(runner, fraction)


def language_models(settings: Settings, options: RunnerOptions) -> dict[str, SentimentRunner]:
    """``SENTISTREAM_LANGUAGE_MODELS`` (``de=PATH,fr=1.2.0``): a model per language."""
    models: dict[str, SentimentRunner] = {}
    for item in (settings.language_models or "").split(","):
        if not item.strip():
            continue
        language, found, reference = item.partition("=")
        language, reference = language.strip().lower(), reference.strip()
        if not found or not language or not reference:
            raise ConfigurationError(
                f"SENTISTREAM_LANGUAGE_MODELS entry {item.strip()!r} is not LANGUAGE=MODEL "
                "(e.g. de=/models/german-sentiment or fr=1.2.0)"
            )
        models[language] = load_reference(settings, reference, options)
    return models


def drift_tracker(settings: Settings) -> DriftTracker | None:
    """The worker's drift windows, when SENTISTREAM_DRIFT_REFERENCE names a reference profile."""
    from stream.core.drift import DriftTracker
    from stream.drift_command import load_profile

    if settings.drift_reference is None:
        return None
    return DriftTracker(
        load_profile(settings.drift_reference),
        window_ms=int(settings.drift_window_s * 1000),
        grace_ms=int(settings.window_grace_s * 1000),
        min_count=settings.drift_min_count,
        idle_ms=int(settings.partition_idle_s * 1000),
    )


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
    from connectors.broker import BrokerProcess, EmbeddedBroker, KafkaBroker

    configure_logging("info")
    broker: BrokerProcess
    if args.kafka:
        data_dir = Path(args.data_dir).expanduser() if args.data_dir else None
        log_path = (data_dir / "broker.log") if data_dir else None
        broker = KafkaBroker(args.port, data_dir=data_dir, log_path=log_path, heap=args.heap)
    else:
        broker = EmbeddedBroker(args.port)
    broker.start()

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping the %s", signal.Signals(signum).name, broker.name)
        broker.terminate()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print(f"{broker.name} listening on {broker.bootstrap_servers}", flush=True)
    for line in broker.export_lines():
        print(f"  {line}", flush=True)
    code = broker.wait()
    broker.stop()
    log.info("%s stopped (exit code %s)", broker.name, code)
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    from connectors.admin import topic_names
    from connectors.producer import RAW, ProduceOptions, RecordProducer, produce_file, summary_lines

    settings = Settings.from_env()
    configure_logging(settings.log_level)
    problem = produce_usage_problem(args)
    if problem is not None:
        raise ConfigurationError(problem)
    options = ProduceOptions(
        fmt=RAW if args.format == RAW else FileFormat(args.format),
        csv=csv_options(args) if args.format == FileFormat.CSV else None,
        labels_path=args.labels,
        id_prefix=args.id_prefix,
        source=args.source,
        channel=args.channel,
        rate=args.rate,
        limit=args.limit,
        strict=args.strict,
    )
    topic = args.topic or settings.topics.input_topic
    topic_names(settings.kafka)  # fail fast, not after the producer's delivery timeout
    progress = not args.no_progress and sys.stderr.isatty()
    summary = produce_file(
        RecordProducer(settings.kafka), topic, args.file, options, progress=progress
    )
    if summary.aborted is not None:
        print(f"sentistream produce: {summary.aborted}", file=sys.stderr)
    if summary.lines or summary.aborted is None:
        print("\n".join(summary_lines(summary)))
    return 0 if summary.ok else 1


CSV_ONLY_DEFAULTS = {
    "text_column": "text",
    "id_column": None,
    "label_column": None,
    "timestamp_column": None,
    "source_column": None,
    "channel_column": None,
    "delimiter": ",",
    "no_header": False,
    "encoding": "utf-8",
}


def produce_usage_problem(args: argparse.Namespace) -> str | None:
    """Options that mean nothing with the chosen format, said before anything is sent."""
    if args.format != FileFormat.CSV:
        for name, default in CSV_ONLY_DEFAULTS.items():
            if getattr(args, name) != default:
                return f"--{name.replace('_', '-')} applies to --format csv only"
    if args.labels is not None and args.format != FileFormat.TWEETEVAL:
        return "--labels applies to --format tweeteval only"
    if args.format == "raw" and (args.source or args.channel or args.id_prefix):
        return "--format raw sends lines untouched: --source, --channel and --id-prefix need jsonl"
    return None


def cmd_tail(args: argparse.Namespace) -> int:
    from connectors.tail import TailOptions, tail_topics

    settings = Settings.from_env()
    configure_logging("warning")
    if args.from_end and not args.follow:
        raise ConfigurationError("--from-end needs --follow")
    options = TailOptions(
        follow=args.follow,
        from_end=args.from_end,
        idle_s=args.idle,
        max_records=args.max,
        with_meta=args.with_meta,
    )
    stopping: list[str] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with open_output(args.output) as out:
            written = tail_topics(
                settings.kafka, args.topics, out, options, stop=lambda: bool(stopping)
            )
    except BrokenPipeError:  # e.g. piped into head: the reader has all it wants
        # Point stdout at /dev/null so that the flush at interpreter exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"tail: {written} records from {', '.join(args.topics)}", file=sys.stderr)
    return 0


@contextmanager
def open_output(path: str | None) -> Iterator[BinaryIO]:
    """The file to append JSON lines to, or stdout's bytes."""
    if path is None:
        yield sys.stdout.buffer
    else:
        with Path(path).open("ab") as out:
            yield out


def positive(kind: Callable[[str], Number]) -> Callable[[str], Number]:
    """An argparse type: ``kind`` parsed, and greater than zero."""

    def parse(text: str) -> Number:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse


def chaos_arguments(parser: argparse.ArgumentParser) -> None:
    from bench.chaos import add_arguments

    add_arguments(parser)


def cmd_chaos(args: argparse.Namespace) -> int:
    from bench.chaos import run_from_args

    return run_from_args(args)


def bench_options(args: argparse.Namespace) -> BenchOptions:
    """The run ``sentistream bench`` asks for: its flags over BenchOptions' defaults."""
    from bench.options import BF16_BACKENDS, CPU_BACKENDS, NULL, BenchOptions
    from models.backends import cpu_flags, flags_with_bf16

    if args.backends:
        backends = args.backends.split(",")
    else:
        backends = [NULL, *CPU_BACKENDS]
        if flags_with_bf16(cpu_flags()):
            backends += BF16_BACKENDS
    if args.gpu:
        backends.append("cuda-fp16")
    given: dict[str, Any] = {
        name: value
        for name, value in (
            ("messages", args.messages),
            ("naive_messages", args.naive_messages),
            ("half_rate_seconds", args.half_rate_seconds),
            ("batch_size", args.batch_size),
            ("threads", args.threads),
            ("seed", args.seed),
            ("null_messages", args.null_messages),
            ("curve_seconds", args.curve_seconds),
            (
                "curve_targets",
                None
                if args.curve_targets is None
                else [int(t) for t in args.curve_targets.split(",")],
            ),
        )
        if value is not None
    }
    options = BenchOptions(
        **given,
        backends=backends,
        lanes=args.lanes,
        skip_accuracy=args.skip_accuracy,
        workdir=Path(args.workdir) if args.workdir else None,
        brokers=["kafka", "embedded"] if args.broker == "both" else [args.broker],
        guarantees=(
            ["at_least_once", "exactly_once"] if args.guarantee == "both" else [args.guarantee]
        ),
        shadow=args.shadow,
        curve_backend=None if args.no_curve else args.curve_backend,
        latency_target_ms=args.latency_target_ms,
    )
    return replace(options, naive_messages=min(options.naive_messages, options.messages))


def cmd_bench(args: argparse.Namespace) -> int:
    from bench.run import plot_curve, render, run_bench, write_json

    configure_logging("warning")
    options = bench_options(args)
    if "exactly_once" in options.guarantees and "kafka" not in options.brokers:
        raise ConfigurationError("exactly_once runs on Apache Kafka (--broker kafka or both)")
    if "kafka" in options.brokers:
        from connectors.broker import kafka_missing

        problem = kafka_missing()
        if problem:
            raise ConfigurationError(f"--broker {args.broker}: {problem}")
    report = run_bench(options, say=lambda line: print(line, file=sys.stderr, flush=True))
    table = render(report)
    print(table)
    write_json(report, Path(args.json))
    if args.curve_png:
        plot_curve(report, Path(args.curve_png))
    if args.markdown:
        Path(args.markdown).write_text(table + "\n", encoding="utf-8")
    print(f"\nJSON: {args.json}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from stream.demo import run_demo

    configure_logging("warning")
    return run_demo(sample=Path(args.sample), timeout=args.timeout)


def add_file_format_arguments(parser: argparse.ArgumentParser) -> None:
    """How to read a message file: the CSV column mapping, the TweetEval labels file, id prefix."""
    column = "a header name, or a column index counting from 0"
    parser.add_argument("--text-column", default="text", help=f"csv: {column} (default: text)")
    for name in ("id", "label", "timestamp", "source", "channel"):
        parser.add_argument(f"--{name}-column", default=None, help=f"csv: {column}")
    parser.add_argument("--delimiter", default=",", help=r"csv: one character, or tab")
    parser.add_argument("--no-header", action="store_true", help="csv: the first line is data")
    parser.add_argument("--encoding", default="utf-8", help="csv: the file's encoding")
    parser.add_argument("--labels", help="tweeteval: the labels file (default: <split>_labels.txt)")
    parser.add_argument("--id-prefix", help="ids of messages without one: PREFIX:<line>")


# --delimiter spellings that a shell makes awkward to pass as the character itself.
DELIMITER_NAMES = {"\\t": "\t", "tab": "\t", "TAB": "\t"}


def csv_options(args: argparse.Namespace) -> CsvOptions:
    def column(value: str | None) -> str | int | None:
        return int(value) if value is not None and value.isdecimal() else value

    text_column = column(args.text_column)  # index 0 is falsy: no `or "text"` here
    return CsvOptions(
        text_column="text" if text_column is None else text_column,
        id_column=column(args.id_column),
        label_column=column(args.label_column),
        timestamp_column=column(args.timestamp_column),
        source_column=column(args.source_column),
        channel_column=column(args.channel_column),
        delimiter=DELIMITER_NAMES.get(args.delimiter, args.delimiter),
        has_header=not args.no_header,
        encoding=args.encoding,
    )


def cmd_eval(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from connectors.files import FileFormat
    from stream.core.evaluation import parse_label_map
    from stream.evaluate import EvalRequest, default_out_dir, run_evaluation
    from stream.reports import summary_text, write_reports

    settings = Settings.from_env()
    configure_logging("warning")

    def progress(line: str) -> None:
        print(f"eval: {line}", file=sys.stderr, flush=True)

    try:
        request = EvalRequest(
            path=args.file,
            fmt=FileFormat(args.format),
            csv=csv_options(args),
            labels_path=args.labels,
            id_prefix=args.id_prefix,
            label_map=parse_label_map(args.label_map) if args.label_map else None,
            keep_neutral=args.neutral == "keep",
            offline=args.offline,
            model=args.model,
            timeout_s=args.timeout,
            target_precision=args.target_precision,
        )
        evaluation = run_evaluation(request, settings, progress=progress)
        out_dir = Path(args.out) if args.out else default_out_dir(args.file, datetime.now(UTC))
        files = write_reports(evaluation, out_dir)
    except OSError as exc:
        raise ConfigurationError(f"{exc.strerror or exc}: {exc.filename or ''}") from exc
    print(summary_text(evaluation, files))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    import threading

    from confluent_kafka import KafkaException

    from connectors.replay import (
        BarsProgress,
        NoProgress,
        ProgressDisplay,
        ReplayOptions,
        run_replay,
        stop_on_signals,
        summary_lines,
    )
    from stream.core.replay_plan import ReplayState, check_name

    settings = Settings.from_env()
    configure_logging("warning")
    request = replay_request(args, settings)
    options = ReplayOptions(
        name=check_name(args.name),
        request=request,
        chunk_size=args.chunk_size,
        stop_after=args.stop_after,
        restart=args.restart,
    )

    def progress(state: ReplayState) -> ProgressDisplay:
        if args.no_progress or not sys.stderr.isatty():
            return NoProgress()
        return BarsProgress(state, request.source)

    stop = threading.Event()
    try:
        with stop_on_signals(stop):
            result = run_replay(
                settings.kafka,
                settings.data_dir,
                options,
                lambda partitions: replay_transform(request, settings, partitions),
                stop=stop,
                progress=progress,
            )
    except KafkaException as exc:
        raise UnavailableError(f"Kafka: {exc.args[0] if exc.args else exc}") from exc
    except KeyboardInterrupt:
        raise InterruptedRun(
            "stopped at once; the chunk in flight is produced again on resume"
        ) from None
    print("\n".join(summary_lines(result)))
    return 0 if result.finished else EXIT_INTERRUPTED


def replay_request(args: argparse.Namespace, settings: Settings) -> ReplayRequest:
    """The replay the options ask for; raises ``ReplaySpecError`` (one line)."""
    from stream.core.replay_plan import (
        ReplayRequest,
        ReplaySpecError,
        TimeRange,
        parse_offsets,
        parse_time,
    )

    if args.to_topic is None:
        for option, value in (("--model", args.model), ("--deadletter-topic", args.deadletter)):
            if value is not None:
                raise ReplaySpecError(f"{option} applies to --to-topic only")
    elif args.input_topic is not None:
        raise ReplaySpecError("--input-topic applies to --to-input only")
    return ReplayRequest(
        source=args.source or settings.topics.input_topic,
        mode="topic" if args.to_topic else "input",
        target=args.to_topic or args.input_topic or settings.topics.input_topic,
        deadletter=(args.deadletter or f"{args.to_topic}.deadletter") if args.to_topic else None,
        model=(args.model or settings.model) if args.to_topic else None,
        time_range=TimeRange(
            start_ms=parse_time(args.start_time, "--start-time") if args.start_time else None,
            end_ms=parse_time(args.end_time, "--end-time") if args.end_time else None,
        ),
        start_offsets=parse_offsets(args.start_offsets, "--start-offsets")
        if args.start_offsets
        else None,
        end_offsets=parse_offsets(args.end_offsets, "--end-offsets") if args.end_offsets else None,
    )


def replay_transform(request: ReplayRequest, settings: Settings, partitions: int) -> Transform:
    """Re-feed as-is, or score with the chosen model as the worker does."""
    from connectors.replay import Backfill, Refeed, now_ms
    from stream.settings import pipeline_config

    if request.mode == "input":
        return Refeed(request.target, partitions)
    from models.runner import RunnerOptions, SentimentRunner

    model = request.model or settings.model
    runner = SentimentRunner(model, RunnerOptions.from_settings(settings, model))
    assert request.deadletter is not None
    return Backfill(runner, pipeline_config(settings), request.target, request.deadletter, now_ms)


def add_replay_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    replay = commands.add_parser(
        "replay",
        help="replay a topic range: re-feed it to the input topic, or score it into a topic",
        description="Replay a range of a topic, resumably (see README, 'Replay and backfill'). "
        "Exit code 0: finished; 130: stopped before the end (run the same command to resume); "
        "1: an error.",
    )
    replay.add_argument("--name", required=True, help="names the replay: its progress and group")
    replay.add_argument("--source", help="topic to read (default: SENTISTREAM_INPUT_TOPIC)")
    output = replay.add_mutually_exclusive_group(required=True)
    output.add_argument(
        "--to-input",
        action="store_true",
        help="re-feed the records untouched (key, headers, timestamp) to the input topic",
    )
    output.add_argument("--to-topic", metavar="TOPIC", help="score into TOPIC as the worker would")
    replay.add_argument("--input-topic", help="--to-input: default SENTISTREAM_INPUT_TOPIC")
    replay.add_argument("--model", help="--to-topic: default SENTISTREAM_MODEL")
    replay.add_argument(
        "--deadletter-topic", dest="deadletter", help="--to-topic: default TOPIC.deadletter"
    )
    start = replay.add_mutually_exclusive_group()
    start.add_argument("--start-time", help="ISO-8601 or epoch ms: records at or after it")
    start.add_argument("--start-offsets", help="per partition, e.g. 0:120,1:95 (default: start)")
    end = replay.add_mutually_exclusive_group()
    end.add_argument("--end-time", help="ISO-8601 or epoch ms: records before it")
    end.add_argument(
        "--end-offsets", help="per partition, exclusive (default: the end when the replay began)"
    )
    replay.add_argument(
        "--chunk-size",
        type=positive(int),
        default=500,
        help="records per chunk; progress is saved after each acknowledged chunk (default 500)",
    )
    replay.add_argument(
        "--stop-after", type=positive(int), help="stop (as if interrupted) after N records read"
    )
    replay.add_argument("--restart", action="store_true", help="discard saved progress first")
    replay.add_argument("--no-progress", action="store_true", help="no progress bars")
    replay.set_defaults(handler=cmd_replay)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sentistream", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    worker = commands.add_parser("worker", help="run the scoring worker (settings from env)")
    worker.set_defaults(handler=cmd_worker)

    broker = commands.add_parser(
        "broker", help="run a local broker: the embedded one (default) or Apache Kafka (--kafka)"
    )
    broker.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    broker.add_argument(
        "--kafka",
        action="store_true",
        help="Apache Kafka (KRaft, Java 17) from infra/kafka/lib instead of the embedded broker",
    )
    broker.add_argument(
        "--data-dir", help="--kafka: keep topics here across restarts (default: a temp dir)"
    )
    broker.add_argument("--heap", default="512m", help="--kafka: JVM heap (default 512m)")
    broker.set_defaults(handler=cmd_broker)

    produce = commands.add_parser("produce", help="produce messages from a file or stdin")
    produce.add_argument("file", help="path, or - for stdin")
    produce.add_argument("--topic", help="default: SENTISTREAM_INPUT_TOPIC")
    produce.add_argument(
        "--format",
        choices=[*(str(fmt) for fmt in FileFormat), "raw"],
        default=str(FileFormat.JSONL),
        help="jsonl (default): input-contract objects, malformed lines skipped; raw: each line's "
        "bytes as they are (the pipeline dead-letters bad ones); text: one message per line; "
        "csv, sentiment140, tweeteval, sst2: see the README",
    )
    add_file_format_arguments(produce)
    produce.add_argument("--source", help="stamp this source on messages that carry none")
    produce.add_argument("--channel", help="stamp this channel on messages that carry none")
    produce.add_argument("--rate", type=positive(float), help="at most N messages per second")
    produce.add_argument("--limit", type=positive(int), help="send at most N messages")
    produce.add_argument(
        "--strict", action="store_true", help="stop at the first malformed line (exit 1)"
    )
    produce.add_argument("--no-progress", action="store_true", help="no progress bar")
    produce.set_defaults(handler=cmd_produce)

    tail = commands.add_parser("tail", help="print the records of topics as JSON lines")
    tail.add_argument("topics", nargs="+", metavar="TOPIC")
    tail.add_argument("--output", help="append to this file instead of printing")
    tail.add_argument("--follow", action="store_true", help="keep waiting for new records")
    start = tail.add_mutually_exclusive_group()
    start.add_argument("--from-beginning", dest="from_end", action="store_false", help="(default)")
    start.add_argument(
        "--from-end", dest="from_end", action="store_true", help="only new records (--follow)"
    )
    tail.add_argument(
        "--idle",
        type=positive(float),
        default=2.0,
        help="without --follow: stop after this many seconds without a record (default 2)",
    )
    tail.add_argument("--max", type=positive(int), help="stop after N records")
    tail.add_argument(
        "--with-meta", action="store_true", help="wrap each record with topic/partition/offset..."
    )
    tail.set_defaults(handler=cmd_tail, from_end=False)

    add_models_parser(commands)
    add_compare_parser(commands)

    bench = commands.add_parser(
        "bench",
        help="throughput and latency: naive baseline, runner offline, worker end to end",
    )
    # A flag left out takes its default from bench.options.BenchOptions (shown by the bench's
    # table and JSON), the one place for them.
    bench.add_argument("--messages", type=int, help="size of the message mix")
    bench.add_argument("--naive-messages", type=int, help="for the naive baseline")
    bench.add_argument("--half-rate-seconds", type=float, help="length of the half-rate phase")
    bench.add_argument("--backends", help="comma-separated (default: every CPU backend)")
    bench.add_argument("--gpu", action="store_true", help="also run cuda-fp16")
    bench.add_argument(
        "--broker",
        choices=["kafka", "embedded", "both"],
        default="embedded",
        help="end to end on Apache Kafka (kafka profile: batching, idempotence), the embedded "
        "broker (default), or both in one run",
    )
    bench.add_argument(
        "--guarantee",
        choices=["at_least_once", "exactly_once", "both"],
        default="at_least_once",
        help="end to end with at-least-once (default), exactly-once (Apache Kafka only: "
        "transactions), or both, compared in one table",
    )
    bench.add_argument(
        "--shadow",
        action="store_true",
        help="also end to end with the model as its own shadow (what a shadow costs)",
    )
    bench.add_argument(
        "--null-messages",
        type=int,
        help="messages for the null classifier's run (backend null: the pipeline's ceiling)",
    )
    bench.add_argument(
        "--curve-backend",
        default="onnx-int8",
        help="the backend whose latency-throughput curve is measured (10%%-100%% of its max)",
    )
    bench.add_argument("--no-curve", action="store_true", help="skip the latency curve")
    bench.add_argument(
        "--curve-targets",
        help="comma-separated: one curve per SENTISTREAM_LATENCY_TARGET_MS, each in its own "
        "worker (0: none)",
    )
    bench.add_argument("--curve-seconds", type=float, help="per point of the curve")
    bench.add_argument("--curve-png", default="bench-latency-curve.png", help="the curve's PNG")
    bench.add_argument(
        "--latency-target-ms",
        type=int,
        help="SENTISTREAM_LATENCY_TARGET_MS for the workers (default: the worker's default)",
    )
    bench.add_argument("--batch-size", type=int, help="texts per forward pass")
    bench.add_argument("--threads", type=int, help="model threads")
    bench.add_argument(
        "--lanes",
        type=int,
        help="forward passes side by side, sharing the threads (default: the worker's default)",
    )
    bench.add_argument("--seed", type=int, help="of the message mix")
    bench.add_argument("--skip-accuracy", action="store_true")
    bench.add_argument("--workdir", help="keep models, caches and logs here (default: a temp dir)")
    bench.add_argument("--json", default="bench-results.json", help="where to write the JSON")
    bench.add_argument("--markdown", help="also write the table to this file")
    bench.set_defaults(handler=cmd_bench)

    chaos = commands.add_parser(
        "chaos",
        help="chaos run: crashes, restarts, a joining worker and a paused broker under load",
        description="A broker and workers under a steady stream with fuzzed bad records while "
        "workers are SIGKILLed and restarted, a second worker joins and leaves, and the broker "
        "is paused; prints a table (and --json) of lost, duplicated and dead-lettered records, "
        "exact windows and stalls. Exit 1 when anything was lost or a closed window is wrong.",
    )
    chaos_arguments(chaos)
    chaos.set_defaults(handler=cmd_chaos)

    demo = commands.add_parser("demo", help="broker + worker + sample messages, end to end")
    demo.add_argument(
        "--sample",
        default=str(Path(__file__).resolve().parent / "samples" / "demo_messages.jsonl"),
    )
    demo.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for results")
    demo.set_defaults(handler=cmd_demo)

    evaluate = commands.add_parser(
        "eval", help="measure the model on a labelled file, offline or through the pipeline"
    )
    evaluate.add_argument("file", help="path, or - for stdin")
    evaluate.add_argument(
        "--format", required=True, choices=[str(fmt) for fmt in FileFormat], help="file format"
    )
    add_file_format_arguments(evaluate)
    evaluate.add_argument(
        "--offline",
        action="store_true",
        help="score in this process (as the worker would) instead of through the running pipeline",
    )
    evaluate.add_argument("--model", help="--offline only: default SENTISTREAM_MODEL")
    evaluate.add_argument(
        "--label-map",
        help="file label -> model label, e.g. 0=NEGATIVE,4=POSITIVE (replaces the format's map)",
    )
    evaluate.add_argument(
        "--neutral",
        choices=["drop", "keep"],
        default="drop",
        help="NEUTRAL gold rows: drop them (default) or keep them as a third class",
    )
    evaluate.add_argument("--out", help="report folder (default: eval-<file stem>-<time>)")
    evaluate.add_argument(
        "--target-precision",
        type=float,
        help="name the lowest confidence threshold whose kept predictions reach this macro "
        "precision (e.g. 0.95)",
    )
    evaluate.add_argument(
        "--timeout",
        type=positive(float),
        default=300.0,
        help="live: seconds to wait for the last results after sending (default 300)",
    )
    evaluate.set_defaults(handler=cmd_eval)
    add_replay_parser(commands)
    add_train_parser(commands, add_file_format_arguments)
    add_drift_parser(commands, add_file_format_arguments)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from pydantic import ValidationError

    args = build_parser().parse_args(argv)
    handler = args.handler
    try:
        return int(handler(args))
    except SentistreamError as exc:
        print(f"sentistream {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except ValidationError as exc:  # settings from the environment: the user's to fix
        print(
            f"sentistream {args.command}: invalid settings: {settings_problems(exc)}",
            file=sys.stderr,
        )
        return EXIT_CONFIGURATION
    except KeyboardInterrupt:
        print(f"sentistream {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def settings_problems(exc: Any) -> str:
    """One line naming each setting that failed validation and why."""
    problems = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error.get("loc", ()))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)
