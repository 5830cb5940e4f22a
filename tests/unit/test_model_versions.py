"""Semantic versions, the promotion history, control records, the registry on disk, and the
shadow/canary comparisons."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from models.registry import ModelRegistry, checkpoint_sha256
from stream.core.comparison import compare_shadow, compare_versions
from stream.core.errors import ConfigurationError
from stream.core.model_versions import (
    ActiveModel,
    ControlState,
    Promotion,
    WorkerStatus,
    active_version,
    check_version,
    parse_control,
    rollback_target,
    version_order,
)


@pytest.mark.parametrize("text", ["1.0.0", "0.1.2", "10.20.30", "2.0.0-rc.1", "1.0.0+build.7"])
def test_semantic_versions_are_accepted(text: str) -> None:
    assert check_version(text) == text


@pytest.mark.parametrize("text", ["1.0", "v1.0.0", "01.0.0", "1.0.0.0", "latest", ""])
def test_other_version_strings_are_refused_with_an_example(text: str) -> None:
    with pytest.raises(ConfigurationError, match=r"MAJOR\.MINOR\.PATCH"):
        check_version(text)


def test_versions_sort_by_semver_precedence() -> None:
    versions = ["1.10.0", "1.2.0", "2.0.0-rc.1", "2.0.0", "2.0.0-alpha", "1.2.0-rc.2"]
    assert sorted(versions, key=version_order) == [
        "1.2.0-rc.2", "1.2.0", "1.10.0", "2.0.0-alpha", "2.0.0-rc.1", "2.0.0",
    ]  # fmt: skip


def test_rollback_returns_to_the_version_promoted_before() -> None:
    history = [Promotion("promote", "1.0.0", 1), Promotion("promote", "1.1.0", 2)]
    assert active_version(history) == "1.1.0"
    assert rollback_target(history) == "1.0.0"
    history.append(Promotion("rollback", "1.0.0", 3))
    assert active_version(history) == "1.0.0"
    with pytest.raises(ConfigurationError, match=r"only 1\.0\.0 was promoted"):
        rollback_target(history)
    with pytest.raises(ConfigurationError, match="nothing was promoted"):
        rollback_target([])


def test_control_records_round_trip_and_fold() -> None:
    active = ActiveModel("1.1.0", "/r/versions/1.1.0/model", "ab" * 32, "promote", 5)
    status = WorkerStatus("w1", "1.2.0", False, "1.1.0", "OSError: no weights", 6)
    state = ControlState()
    for record in (active.record(), status.record()):
        state.apply(parse_control(record.key, record.value))
    assert state.active == active
    assert state.statuses == {"w1": status}
    assert parse_control(b"active", b"not json") is None
    assert parse_control(b"something-else", b"{}") is None
    assert parse_control(b"active", None) is None


def test_the_registry_keeps_versions_immutable_and_hashes_them(tmp_path: Path) -> None:
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    registry = ModelRegistry(tmp_path / "registry")
    entry = registry.add(checkpoint, "1.0.0", now_ms=1, notes="first")
    assert entry.sha256 == checkpoint_sha256(checkpoint)
    assert (entry.path / "model.safetensors").read_bytes() == b"weights"
    with pytest.raises(ConfigurationError, match="immutable"):
        registry.add(checkpoint, "1.0.0", now_ms=2)
    (checkpoint / "model.safetensors").write_bytes(b"other weights")
    second = registry.add(checkpoint, "1.1.0", now_ms=3)
    assert second.sha256 != entry.sha256
    assert registry.get("1.0.0").sha256 == entry.sha256, "the copy did not change"
    assert [e.version for e in registry.versions()] == ["1.0.0", "1.1.0"]
    registry.record(Promotion("promote", "1.0.0", 4))
    registry.record(Promotion("promote", "1.1.0", 5))
    assert registry.active() == "1.1.0"
    with pytest.raises(ConfigurationError, match=r"no version 3\.0\.0"):
        registry.record(Promotion("promote", "3.0.0", 6))
    with pytest.raises(ConfigurationError, match="not a checkpoint"):
        registry.add(tmp_path, "2.0.0", now_ms=7)


def shadow_value(
    message_id: str, primary: str, shadow: str, gold: str | None = None
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "id": message_id,
        "primary": {"label": primary, "score": 0.9, "model_version": "1", "forward_ms": 10.0},
        "shadow": {"label": shadow, "score": 0.8, "model_version": "2", "forward_ms": 30.0},
    }
    if gold:
        value["gold_label"] = gold
    return value


def test_a_shadow_comparison_counts_agreement_confusion_latency_and_accuracy() -> None:
    pairs = compare_shadow([
        shadow_value("a", "POSITIVE", "POSITIVE", "POSITIVE"),
        shadow_value("b", "POSITIVE", "NEGATIVE", "NEGATIVE"),
        shadow_value("b", "POSITIVE", "NEGATIVE", "NEGATIVE"),  # a copy after a crash
        shadow_value("c", "NEGATIVE", "NEGATIVE"),
    ])  # fmt: skip
    pair = pairs[("1", "2")]
    assert pair.n == 3
    assert pair.agreement == pytest.approx(2 / 3)
    assert pair.confusion[("POSITIVE", "NEGATIVE")] == 1
    assert pair.primary.mean_forward_ms == 10.0
    assert pair.shadow.mean_forward_ms == 30.0
    assert (pair.primary.accuracy, pair.shadow.accuracy) == (0.5, 1.0)


def test_a_canary_comparison_splits_events_by_version() -> None:
    events = [
        {"id": "a", "label": "POSITIVE", "model_version": "1.0.0", "inference_time_ms": 5.0},
        {"id": "b", "label": "NEGATIVE", "model_version": "1.1.0", "inference_time_ms": 7.0,
         "gold_label": "NEGATIVE"},
        {"id": "c", "label": "POSITIVE", "model_version": "1.1.0", "inference_time_ms": 9.0,
         "gold_label": "NEGATIVE"},
    ]  # fmt: skip
    old, new = compare_versions(events)
    assert (old.version, old.n, old.accuracy) == ("1.0.0", 1, None)
    assert (new.version, new.n, new.accuracy, new.positive_ratio) == ("1.1.0", 2, 0.5, 0.5)
    assert new.mean_forward_ms == 8.0


def test_an_eval_report_added_with_a_version_is_kept_and_listed(tmp_path: Path) -> None:
    from stream.models_command import list_lines
    from stream.settings import KafkaSettings, Settings

    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    report = tmp_path / "report.json"
    report.write_text('{"accuracy": 0.8945, "n": 872, "macro": {"f1": 0.8944}, "extra": 1}')
    registry = ModelRegistry(tmp_path / "registry")
    entry = registry.add(checkpoint, "1.0.0", now_ms=1, eval_report=report, notes="MiniLM")
    assert entry.eval == {"accuracy": 0.8945, "n": 872, "macro_f1": 0.8944}
    registry.record(Promotion("promote", "1.0.0", 2))
    # no broker answers on port 1: the listing says so instead of failing
    settings = Settings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"))
    lines = list_lines(registry, settings, timeout=2.0)
    row = next(line for line in lines if line.startswith("1.0.0"))
    assert "active" in row
    assert "acc 0.8945 n=872" in row
    assert "MiniLM" in row
    assert lines[-1].startswith("workers: control topic unreadable")
    with pytest.raises(ConfigurationError, match="not a readable report"):
        registry.add(checkpoint, "1.0.1", now_ms=3, eval_report=tmp_path / "missing.json")
