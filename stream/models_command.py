"""``sentistream models add|list|promote|rollback``: the model registry and the control topic.

add: checkpoint -> registry (immutable version). promote / rollback: control record (every
worker swaps) -> registry history. list: the registry's versions, which one is active, and what
each worker reported on the control topic.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from stream.core.errors import ConfigurationError, UnavailableError
from stream.core.model_versions import ActiveModel, ControlState, Promotion, rollback_target
from stream.settings import Settings

if TYPE_CHECKING:
    from models.registry import ModelRegistry


def add_models_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = commands.add_parser(
        "models",
        help="the model registry: add a version, list, promote (every worker swaps), rollback",
        description="Needs SENTISTREAM_MODEL_REGISTRY (a directory). promote and rollback publish "
        "to the model control topic of SENTISTREAM_APP_ID's workers.",
    )
    actions = models.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add a checkpoint as an immutable version")
    add.add_argument("path", type=Path, help="checkpoint directory (config, weights, tokenizer)")
    add.add_argument("--version", required=True, help="semantic version, e.g. 1.2.0")
    add.add_argument("--notes", help="free text kept with the version")
    add.add_argument("--eval-report", type=Path, help="a sentistream eval report.json to keep")
    add.add_argument("--link", action="store_true", help="link the checkpoint instead of copying")
    actions.add_parser("list", help="versions, the active one, and what each worker runs")
    promote = actions.add_parser("promote", help="make VERSION the one every worker runs")
    promote.add_argument("version")
    actions.add_parser("rollback", help="back to the version promoted before the active one")
    models.set_defaults(handler=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    from models.registry import ModelRegistry

    settings = Settings.from_env()
    if settings.model_registry is None:
        raise ConfigurationError("set SENTISTREAM_MODEL_REGISTRY to the registry directory")
    registry = ModelRegistry(settings.model_registry)
    if args.action == "add":
        entry = registry.add(
            args.path, args.version, now_ms=now_ms(), notes=args.notes,
            eval_report=args.eval_report, link=args.link,
        )  # fmt: skip
        print(f"added {entry.version}: {entry.path} (sha256 {entry.sha256[:12]})")
        return 0
    if args.action == "list":
        print("\n".join(list_lines(registry, settings)))
        return 0
    if args.action == "promote":
        entry = registry.get(args.version)
        active = ActiveModel(entry.version, str(entry.path), entry.sha256, "promote", now_ms())
    else:
        entry = registry.get(rollback_target(registry.history()))
        active = ActiveModel(entry.version, str(entry.path), entry.sha256, "rollback", now_ms())
    version = entry.version
    publish_active(settings, active)
    registry.record(Promotion(active.action, version, active.at_ms))
    verb = "promoted" if active.action == "promote" else "rolled back to"
    print(f"{verb} {version}: every worker of {settings.app_id} loads it and swaps")
    return 0


def publish_active(settings: Settings, active: ActiveModel) -> None:
    from connectors.model_control import control_topic, ensure_control_topic, publish_control

    topic = control_topic(settings.app_id)
    ensure_control_topic(settings.kafka, topic)
    publish_control(settings.kafka, topic, [active.record()])


def list_lines(registry: ModelRegistry, settings: Settings, timeout: float = 10.0) -> list[str]:
    from connectors.model_control import control_topic, read_control

    promoted = registry.promoted()
    active = promoted[-1] if promoted else None
    previous = promoted[-2] if len(promoted) > 1 else None
    header = f"{'version':<14} {'':<9} {'added (UTC)':<17} {'sha256':<12}  {'eval':<18} notes"
    lines = [f"registry {registry.root}", "", header]
    for entry in registry.versions():
        mark = (
            "active" if entry.version == active else "previous" if entry.version == previous else ""
        )
        evaluated = entry.eval or {}
        score = (
            f"acc {evaluated['accuracy']:.4f} n={evaluated.get('n', '?')}"
            if "accuracy" in evaluated
            else "-"
        )
        lines.append(
            f"{entry.version:<14} {mark:<9} {format_ms(entry.added_at_ms):<17} "
            f"{entry.sha256[:12]:<12}  {score:<18} {entry.notes or ''}"
        )
    try:
        state = read_control(settings.kafka, control_topic(settings.app_id), timeout=timeout)
    except UnavailableError as exc:
        return [*lines, "", f"workers: control topic unreadable ({exc})"]
    return [*lines, "", *status_lines(state)]


def status_lines(state: ControlState) -> list[str]:
    lines = []
    if state.active is not None:
        lines.append(
            f"control topic: {state.active.version} ({state.active.action} at "
            f"{format_ms(state.active.at_ms)})"
        )
    statuses = sorted((state.statuses or {}).values(), key=lambda s: s.worker)
    if not statuses:
        return [*lines, "workers: none reported yet"]
    lines.append("workers:")
    for status in statuses:
        outcome = "ok" if status.ok else f"FAILED to load {status.version}: {status.error}"
        lines.append(
            f"  {status.worker:<40} runs {status.running:<12} {outcome} ({format_ms(status.at_ms)})"
        )
    return lines


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def format_ms(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")
