"""The model registry: a directory of immutable, semantically versioned checkpoints and the history
of which version was promoted (no torch here: it copies files and reads JSON).

    REGISTRY/versions/<version>/model/       the checkpoint (copied read-only, or a link)
    REGISTRY/versions/<version>/version.json what it is: hash, source, time, notes, eval report
    REGISTRY/history.jsonl                   promote / rollback, one JSON line each
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from stream.core.errors import ConfigurationError
from stream.core.model_versions import (
    Promotion,
    active_version,
    check_version,
    promoted_stack,
    version_order,
)

VERSION_FILE = "version.json"
HISTORY_FILE = "history.jsonl"
CHECKPOINT_FILES = ("config.json",)


@dataclass(frozen=True, slots=True)
class VersionEntry:
    version: str
    path: Path  # the checkpoint directory workers load
    sha256: str
    source: str
    added_at_ms: int
    notes: str | None
    eval: dict[str, Any] | None  # the eval report's headline numbers, when one was given
    linked: bool

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "path": str(self.path), "sha256": self.sha256,
                "source": self.source, "added_at_ms": self.added_at_ms, "notes": self.notes,
                "eval": self.eval, "linked": self.linked}  # fmt: skip


def checkpoint_sha256(directory: Path) -> str:
    """One hash over every file of a checkpoint (relative names and contents, in name order)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode() + b"\0")
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


class ModelRegistry:
    def __init__(self, root: Path) -> None:
        self.root = root.expanduser()

    def _version_dir(self, version: str) -> Path:
        return self.root / "versions" / check_version(version)

    def add(
        self,
        source: Path,
        version: str,
        *,
        now_ms: int,
        notes: str | None = None,
        eval_report: Path | None = None,
        link: bool = False,
    ) -> VersionEntry:
        """Add ``source`` as ``version``. A version is immutable: adding it again is refused."""
        target = self._version_dir(version)
        if target.exists():
            raise ConfigurationError(f"version {version} is already in the registry (immutable)")
        source = source.expanduser().resolve()
        if not all((source / name).is_file() for name in CHECKPOINT_FILES):
            raise ConfigurationError(f"{source} is not a checkpoint directory (no config.json)")
        evaluation = _eval_headline(eval_report) if eval_report else None
        staging = target.with_name(f".{version}.adding")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        model = staging / "model"
        if link:
            model.symlink_to(source, target_is_directory=True)
        else:
            shutil.copytree(source, model)
            _make_read_only(model)
        entry = VersionEntry(
            version=version,
            path=target / "model",
            sha256=checkpoint_sha256(model),
            source=str(source),
            added_at_ms=now_ms,
            notes=notes,
            eval=evaluation,
            linked=link,
        )
        (staging / VERSION_FILE).write_bytes(
            orjson.dumps(entry.to_json(), option=orjson.OPT_INDENT_2)
        )
        staging.rename(target)  # the version appears whole or not at all
        return entry

    def get(self, version: str) -> VersionEntry:
        path = self._version_dir(version) / VERSION_FILE
        if not path.is_file():
            known = ", ".join(e.version for e in self.versions()) or "none"
            raise ConfigurationError(f"no version {version} in {self.root} (known: {known})")
        data = orjson.loads(path.read_bytes())
        return VersionEntry(
            version=str(data["version"]),
            path=Path(data["path"]),
            sha256=str(data["sha256"]),
            source=str(data["source"]),
            added_at_ms=int(data["added_at_ms"]),
            notes=data.get("notes"),
            eval=data.get("eval"),
            linked=bool(data.get("linked", False)),
        )

    def versions(self) -> list[VersionEntry]:
        folder = self.root / "versions"
        if not folder.is_dir():
            return []
        names = [p.name for p in folder.iterdir() if (p / VERSION_FILE).is_file()]
        return [self.get(name) for name in sorted(names, key=version_order)]

    def history(self) -> list[Promotion]:
        path = self.root / HISTORY_FILE
        if not path.is_file():
            return []
        return [Promotion.from_json(orjson.loads(line)) for line in path.read_bytes().splitlines()
                if line.strip()]  # fmt: skip

    def record(self, step: Promotion) -> None:
        self.get(step.version)  # only versions the registry holds
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / HISTORY_FILE).open("ab") as handle:
            handle.write(orjson.dumps(step.to_json()) + b"\n")
            handle.flush()
            os.fsync(handle.fileno())

    def active(self) -> str | None:
        return active_version(self.history())

    def promoted(self) -> list[str]:
        return promoted_stack(self.history())


def _eval_headline(report: Path) -> dict[str, Any]:
    """What ``models list`` shows of an eval report (``sentistream eval``'s report.json)."""
    try:
        data = orjson.loads(report.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigurationError(
            f"--eval-report {report}: not a readable report.json ({exc})"
        ) from None
    keep = ("accuracy", "n", "file", "format", "mode", "created_at")
    headline = {key: data[key] for key in keep if key in data}
    headline["macro_f1"] = (data.get("macro") or {}).get("f1")
    return headline


def _make_read_only(folder: Path) -> None:
    """The files, not the folders: a registry can still be deleted as a whole."""
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
