"""Two models side by side, from what the worker published: the shadow topic (both models on the
same messages) or the events of a canary run (each message scored by one of them).

shadow records -> agreement, confusion (primary rows, shadow columns), forward time per model,
accuracy per model where messages carry a gold label. events -> per model version: count,
positive ratio, mean forward time, accuracy with gold labels.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stream.core.records import LABELS


@dataclass
class ModelSide:
    version: str
    n: int = 0
    forward_ms_sum: float = 0.0
    labels: Counter[str] = field(default_factory=Counter)
    gold_n: int = 0
    gold_correct: int = 0

    def add(self, label: str, forward_ms: float, gold: str | None) -> None:
        self.n += 1
        self.forward_ms_sum += forward_ms
        self.labels[label] += 1
        if gold in LABELS:
            self.gold_n += 1
            self.gold_correct += gold == label

    @property
    def mean_forward_ms(self) -> float | None:
        return self.forward_ms_sum / self.n if self.n else None

    @property
    def accuracy(self) -> float | None:
        return self.gold_correct / self.gold_n if self.gold_n else None

    @property
    def positive_ratio(self) -> float | None:
        polar = self.labels["POSITIVE"] + self.labels["NEGATIVE"]
        return self.labels["POSITIVE"] / polar if polar else None


@dataclass
class ShadowComparison:
    primary: ModelSide
    shadow: ModelSide
    agree: int = 0
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)  # (primary, shadow)

    @property
    def n(self) -> int:
        return self.primary.n

    @property
    def agreement(self) -> float | None:
        return self.agree / self.n if self.n else None


def compare_shadow(records: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], ShadowComparison]:
    """Shadow-topic values (one per message; a copy after a crash counts once), by (primary
    version, shadow version)."""
    seen: set[str] = set()
    pairs: dict[tuple[str, str], ShadowComparison] = {}
    for record in records:
        if record["id"] in seen:
            continue
        seen.add(str(record["id"]))
        primary, shadow = record["primary"], record["shadow"]
        key = (str(primary["model_version"]), str(shadow["model_version"]))
        pair = pairs.setdefault(key, ShadowComparison(ModelSide(key[0]), ModelSide(key[1])))
        gold = record.get("gold_label")
        pair.primary.add(str(primary["label"]), float(primary["forward_ms"]), gold)
        pair.shadow.add(str(shadow["label"]), float(shadow["forward_ms"]), gold)
        pair.agree += primary["label"] == shadow["label"]
        pair.confusion[(str(primary["label"]), str(shadow["label"]))] += 1
    return pairs


def compare_versions(events: Iterable[Mapping[str, Any]]) -> list[ModelSide]:
    """Events (one per message id) by the model version that scored them, in version order."""
    seen: set[str] = set()
    sides: dict[str, ModelSide] = defaultdict(lambda: ModelSide(""))
    for event in events:
        if event["id"] in seen:
            continue
        seen.add(str(event["id"]))
        version = str(event["model_version"])
        side = sides[version]
        side.version = version
        side.add(str(event["label"]), float(event.get("inference_time_ms", 0.0)),
                 event.get("gold_label"))  # fmt: skip
    return [sides[v] for v in sorted(sides)]


def shadow_lines(pairs: Mapping[tuple[str, str], ShadowComparison]) -> list[str]:
    lines: list[str] = []
    for (primary, shadow), pair in sorted(pairs.items()):
        labels = sorted({label for both in pair.confusion for label in both})
        width = max([len(label) for label in labels] + [8]) + 2
        lines += [
            f"primary {primary} vs shadow {shadow}: {pair.n} messages, agreement "
            f"{_pct(pair.agreement)}",
            f"  forward ms per batch, mean: primary {_num(pair.primary.mean_forward_ms)}, "
            f"shadow {_num(pair.shadow.mean_forward_ms)}",
            f"  positive ratio: primary {_num(pair.primary.positive_ratio, 4)}, "
            f"shadow {_num(pair.shadow.positive_ratio, 4)}",
        ]
        if pair.primary.gold_n:
            lines.append(
                f"  accuracy on {pair.primary.gold_n} gold-labelled: primary "
                f"{_num(pair.primary.accuracy, 4)}, shadow {_num(pair.shadow.accuracy, 4)}"
            )
        lines.append("  confusion (rows primary, columns shadow):")
        lines.append("  " + " " * width + "".join(f"{label:>{width}}" for label in labels))
        for row in labels:
            counts = "".join(f"{pair.confusion[(row, col)]:>{width}}" for col in labels)
            lines.append(f"  {row:<{width}}{counts}")
    return lines or ["no shadow records"]


def version_lines(sides: Iterable[ModelSide]) -> list[str]:
    lines = [f"{'version':<24} {'events':>8} {'positive ratio':>15} {'forward ms':>11} "
             f"{'accuracy (gold n)':>18}"]  # fmt: skip
    for side in sides:
        accuracy = f"{_num(side.accuracy, 4)} ({side.gold_n})" if side.gold_n else "-"
        lines.append(
            f"{side.version:<24} {side.n:>8} {_num(side.positive_ratio, 4):>15} "
            f"{_num(side.mean_forward_ms):>11} {accuracy:>18}"
        )
    return lines


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"
