"""``sentistream drift reference``: the profile the worker's drift windows are compared with.

From a labelled file (scored offline exactly as the worker scores: ``sentistream eval --offline``'s
path, so the events carry ``gold_label`` and the profile has accuracy and calibration too), or from
a period of the events and dead-letter topics (what the pipeline published between two event
times). The profile is JSON (stream.core.drift.Profile); ``SENTISTREAM_DRIFT_REFERENCE`` names it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from connectors.files import FileFormat
from stream.core.codec import HEADER_REASON, parse_timestamp_ms
from stream.core.drift import DriftReferenceError, Profile
from stream.core.errors import ConfigurationError, PoisonRecord
from stream.core.evaluation import parse_label_map
from stream.core.replay_plan import parse_time
from stream.settings import Settings

TOPIC_IDLE_S = 5.0  # a topic read ends after this long without a record


def load_profile(path: Path) -> Profile:
    try:
        document = orjson.loads(Path(path).expanduser().read_bytes())
    except OSError as exc:
        raise DriftReferenceError(
            f"cannot read the drift reference {path}: {exc.strerror}"
        ) from exc
    except orjson.JSONDecodeError as exc:
        raise DriftReferenceError(f"{path} is not JSON: {exc}") from exc
    return Profile.from_json(document)


def profile_from_file(args: argparse.Namespace, settings: Settings) -> Profile:
    from stream.cli import csv_options
    from stream.evaluate import EvalRequest, run_evaluation

    request = EvalRequest(
        path=args.file, fmt=FileFormat(args.format), csv=csv_options(args),
        labels_path=args.labels, id_prefix=args.id_prefix,
        label_map=parse_label_map(args.label_map) if args.label_map else None,
        offline=True, model=args.model,
    )  # fmt: skip
    evaluation = run_evaluation(request, settings)
    profile = Profile()
    for result in evaluation.results:  # the gold label as the file's label map names it
        payload = evaluation.events[result.row.message_id]
        profile.add_event({**payload, "gold_label": result.row.gold})
    for reason, count in evaluation.dead_letter_reasons.items():
        for _ in range(count):
            profile.add_dead_letter(reason)
    return profile


def profile_from_topics(settings: Settings, start_ms: int | None, end_ms: int | None) -> Profile:
    """Events whose event time is in [start, end), and dead letters whose record time is."""
    from connectors.sink import read_topics

    topics = settings.topics
    profile = Profile()

    def inside(time_ms: int | None) -> bool:
        if time_ms is None:
            return start_ms is None and end_ms is None
        return (start_ms is None or time_ms >= start_ms) and (end_ms is None or time_ms < end_ms)

    wanted = [topics.events_topic, topics.deadletter_topic]
    for record in read_topics(settings.kafka, wanted, idle_timeout=TOPIC_IDLE_S):
        if record.topic == topics.events_topic:
            event = orjson.loads(record.value or b"{}")
            if inside(_event_time(event)):
                profile.add_event(event)
        elif inside(record.timestamp_ms):
            reason = dict(record.headers).get(HEADER_REASON, b"unknown").decode()
            profile.add_dead_letter(reason)
    return profile


def _event_time(event: dict[str, object]) -> int | None:
    try:
        return parse_timestamp_ms(str(event.get("event_time", "")))
    except PoisonRecord:
        return None


def add_drift_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    file_format_arguments: Callable[[argparse.ArgumentParser], None],
) -> None:
    drift = commands.add_parser(
        "drift", help="drift monitoring: build the reference profile the worker compares with"
    )
    actions = drift.add_subparsers(dest="action", required=True)
    reference = actions.add_parser(
        "reference",
        help="profile a labelled file (scored offline) or a period of the output topics",
        description="Give FILE and --format to score a labelled file as the worker would, or "
        "--from-topics with an optional --start-time/--end-time (event time) to profile what "
        "the pipeline published.",
    )
    reference.add_argument("file", nargs="?", help="labelled file (path, or - for stdin)")
    reference.add_argument("--format", choices=[str(f) for f in FileFormat], help="its format")
    file_format_arguments(reference)
    reference.add_argument("--label-map", help="file label -> model label (as for eval)")
    reference.add_argument("--model", help="file: the model to score with (SENTISTREAM_MODEL)")
    reference.add_argument("--from-topics", action="store_true",
                           help="profile the events and dead-letter topics instead")  # fmt: skip
    reference.add_argument("--start-time", help="--from-topics: ISO-8601 or epoch ms (inclusive)")
    reference.add_argument("--end-time", help="--from-topics: ISO-8601 or epoch ms (exclusive)")
    reference.add_argument("--out", required=True, type=Path, help="where to write the JSON")
    drift.set_defaults(handler=cmd_drift)


def cmd_drift(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    started = time.monotonic()
    if args.from_topics == bool(args.file):
        raise ConfigurationError("give either FILE (with --format) or --from-topics")
    if args.file and not args.format:
        raise ConfigurationError("FILE needs --format")
    if args.from_topics:
        start = parse_time(args.start_time, "--start-time") if args.start_time else None
        end = parse_time(args.end_time, "--end-time") if args.end_time else None
        profile = profile_from_topics(settings, start, end)
    else:
        try:
            profile = profile_from_file(args, settings)
        except OSError as exc:
            raise ConfigurationError(f"{exc.strerror or exc}: {exc.filename or ''}") from exc
    if profile.events == 0:
        raise ConfigurationError("no events to profile: nothing was written")
    args.out.write_bytes(orjson.dumps(profile.to_json(), option=orjson.OPT_INDENT_2) + b"\n")
    labels = profile.counts["label"]
    accuracy = "" if profile.accuracy is None else f", accuracy {profile.accuracy:.4f}"
    ece = "" if profile.ece is None else f", ECE {profile.ece:.4f}"
    print(
        f"reference: {profile.events} events, {profile.dead_letters} dead letters, labels "
        f"{dict(sorted(labels.items()))}{accuracy}{ece} -> {args.out} "
        f"({time.monotonic() - started:.1f} s)",
        file=sys.stdout,
    )
    return 0
