"""``sentistream compare``: a shadow or canary stretch read back from its topic and summarised
(``stream/core/comparison.py`` does the arithmetic)."""

from __future__ import annotations

import argparse

import orjson

from stream.core.comparison import compare_shadow, compare_versions, shadow_lines, version_lines
from stream.core.errors import UnavailableError
from stream.settings import Settings


def add_compare_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    compare = commands.add_parser(
        "compare",
        help="a shadow or canary run: agreement, confusion, latency and accuracy per model",
    )
    which = compare.add_mutually_exclusive_group(required=True)
    which.add_argument("--shadow", action="store_true", help="read SENTISTREAM_SHADOW_TOPIC")
    which.add_argument(
        "--canary", action="store_true", help="read the events topic, by model version"
    )
    compare.add_argument("--topic", help="another topic to read")
    compare.add_argument(
        "--idle", type=float, default=3.0, help="stop after this many seconds without a record"
    )
    compare.set_defaults(handler=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from connectors.admin import topic_names
    from connectors.sink import read_topics

    settings = Settings.from_env()
    topic = args.topic or (
        settings.topics.shadow_topic if args.shadow else settings.topics.events_topic
    )
    if topic not in topic_names(settings.kafka):
        raise UnavailableError(f"no such topic: {topic}")
    values = [
        orjson.loads(record.value)
        for record in read_topics(settings.kafka, [topic], idle_timeout=args.idle)
        if record.value
    ]
    if args.shadow:
        print("\n".join(shadow_lines(compare_shadow(values))))
    else:
        print("\n".join(version_lines(compare_versions(values))))
    return 0
