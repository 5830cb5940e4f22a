"""Model versions: semantic version strings, the promotion history, and the control records that
tell every worker which version to run.

models add (registry) -> models promote / rollback -> history (registry) + control record
(compacted topic, key ``active``) -> every worker: load beside the current model, swap at a
batch boundary, report (key ``status/<worker>``); a worker that fails to load stays on its model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from stream.core.errors import ConfigurationError
from stream.core.pipeline import OutRecord

SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)
ACTIVE_KEY = b"active"
STATUS_PREFIX = "status/"
Action = Literal["promote", "rollback"]


def check_version(text: str) -> str:
    """``text`` if it is a semantic version (``1.2.3``, ``1.2.3-rc.1``); raises otherwise."""
    if not SEMVER.match(text):
        raise ConfigurationError(
            f"{text!r} is not a semantic version MAJOR.MINOR.PATCH (e.g. 1.4.0 or 2.0.0-rc.1)"
        )
    return text


def version_order(text: str) -> tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]:
    """A sort key: numeric parts, then a release after its pre-releases (SemVer precedence)."""
    match = SEMVER.match(text)
    if match is None:
        raise ConfigurationError(f"{text!r} is not a semantic version")
    major, minor, patch, pre = match.groups()
    pre_parts: tuple[tuple[int, int | str], ...] = tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in (pre or "").split(".") if part
    )
    return int(major), int(minor), int(patch), 0 if pre else 1, pre_parts


@dataclass(frozen=True, slots=True)
class Promotion:
    """One line of the registry's history: a version promoted, or a rollback to the one before."""

    action: Action
    version: str  # promote: the version promoted; rollback: the version rolled back to
    at_ms: int

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "version": self.version, "at_ms": self.at_ms}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Promotion:
        action = str(data["action"])
        if action not in ("promote", "rollback"):
            raise ValueError(f"unknown action {action!r}")
        return cls("promote" if action == "promote" else "rollback", str(data["version"]),
                   int(data["at_ms"]))  # fmt: skip


def promoted_stack(history: Sequence[Promotion]) -> list[str]:
    """The versions promoted and not rolled back, oldest first; the last one is active."""
    stack: list[str] = []
    for step in history:
        if step.action == "promote":
            stack.append(step.version)
        elif stack:
            stack.pop()
    return stack


def active_version(history: Sequence[Promotion]) -> str | None:
    stack = promoted_stack(history)
    return stack[-1] if stack else None


def rollback_target(history: Sequence[Promotion]) -> str:
    """The version a rollback returns to: the one promoted before the active one."""
    stack = promoted_stack(history)
    if len(stack) < 2:
        active = f"only {stack[-1]} was promoted" if stack else "nothing was promoted"
        raise ConfigurationError(f"no version to roll back to: {active}")
    return stack[-2]


@dataclass(frozen=True, slots=True)
class ActiveModel:
    """The control record under key ``active``: the version every worker should run."""

    version: str
    path: str  # the checkpoint directory in the registry
    sha256: str
    action: Action
    at_ms: int

    def record(self) -> OutRecord:
        value = {"version": self.version, "path": self.path, "sha256": self.sha256,
                 "action": self.action, "at_ms": self.at_ms}  # fmt: skip
        return OutRecord(key=ACTIVE_KEY, value=orjson.dumps(value))


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """The control record under key ``status/<worker>``: what a worker runs, or failed to load."""

    worker: str
    version: str  # the version it tried to load
    ok: bool
    running: str  # the version it runs now
    error: str | None
    at_ms: int

    def record(self) -> OutRecord:
        value = {"worker": self.worker, "version": self.version, "ok": self.ok,
                 "running": self.running, "error": self.error, "at_ms": self.at_ms}  # fmt: skip
        return OutRecord(key=f"{STATUS_PREFIX}{self.worker}".encode(), value=orjson.dumps(value))


def parse_control(key: bytes | None, value: bytes | None) -> ActiveModel | WorkerStatus | None:
    """A control-topic record, or None for a tombstone or a record this version does not know."""
    if key is None or value is None:
        return None
    try:
        data = orjson.loads(value)
        if key == ACTIVE_KEY:
            return ActiveModel(str(data["version"]), str(data["path"]), str(data["sha256"]),
                               "rollback" if data["action"] == "rollback" else "promote",
                               int(data["at_ms"]))  # fmt: skip
        if key.decode().startswith(STATUS_PREFIX):
            error = data.get("error")
            return WorkerStatus(
                str(data["worker"]),
                str(data["version"]),
                bool(data["ok"]),
                str(data["running"]),
                None if error is None else str(error),
                int(data["at_ms"]),
            )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError):
        return None
    return None


@dataclass
class ControlState:
    """The control topic folded: the active model and the latest status of each worker."""

    active: ActiveModel | None = None
    statuses: dict[str, WorkerStatus] | None = None

    def apply(self, update: ActiveModel | WorkerStatus | None) -> None:
        if isinstance(update, ActiveModel):
            self.active = update
        elif isinstance(update, WorkerStatus):
            self.statuses = {**(self.statuses or {}), update.worker: update}
