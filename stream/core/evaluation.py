"""Evaluation: how well the model's labels match the reference labels of a labelled file.

labelled file -> **map gold labels** (an explicit label map) -> score (offline or through the
pipeline) -> **confusion matrix, precision/recall/F1, precision-recall curve, average precision**.

Plain Python on lists (a few thousand rows at most, so no numpy). Conventions, as scikit-learn's:

* The confusion matrix has gold labels as rows and predicted labels as columns.
* A ratio whose denominator is 0 is 0.0: precision of a class never predicted, recall of a class
  with no gold rows, F1 when precision and recall are both 0.
* Macro precision/recall/F1 are the unweighted means of the per-class values over the evaluated
  classes (a label only ever predicted, such as NEUTRAL from a 3-class model evaluated on
  positive/negative gold, is a column of the matrix but not a class of the macro mean).
* The precision-recall curve has one point per distinct score (tied scores form one threshold, so
  the order of tied rows never matters); average precision is sum((R_k - R_k-1) * P_k) over those
  points, the step-wise area without interpolation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from stream.core.errors import ConfigurationError
from stream.core.records import LABELS, Label

# Row/column order of every matrix and table: the sentiment scale, low to high.
LABEL_ORDER: tuple[Label, ...] = ("NEGATIVE", "NEUTRAL", "POSITIVE")


class LabelMapError(ConfigurationError, ValueError):
    """A ``--label-map`` specification that cannot be read; the message says what is wrong."""


class Excluded(StrEnum):
    """Why a labelled row is left out of the evaluation."""

    UNMAPPED = "unmapped"  # no label, or a label the map does not know
    NEUTRAL = "neutral"  # a NEUTRAL gold label while neutral rows are dropped


def parse_label_map(spec: str) -> dict[str, Label]:
    """``"0=NEGATIVE,4=POSITIVE"`` (or ``"1:POSITIVE,2:NEGATIVE"``) -> ``{"0": "NEGATIVE", ...}``.

    Targets are the model labels (any case); raises :class:`LabelMapError`.
    """
    label_map: dict[str, Label] = {}
    for item in spec.split(","):
        if not item.strip():
            continue
        separator = "=" if "=" in item else ":"
        raw, found, target = item.partition(separator)
        raw, target = raw.strip(), target.strip().upper()
        if not found or not raw:
            raise LabelMapError(f"label map entry {item.strip()!r} is not LABEL=MODEL_LABEL")
        label = _as_label(target)
        if label is None:
            raise LabelMapError(
                f"label map entry {item.strip()!r}: {target!r} is not one of {', '.join(LABELS)}"
            )
        if raw in label_map and label_map[raw] != label:
            raise LabelMapError(f"label map gives {raw!r} two labels")
        label_map[raw] = label
    if not label_map:
        raise LabelMapError("the label map is empty; e.g. --label-map 0=NEGATIVE,4=POSITIVE")
    return label_map


def _as_label(name: str) -> Label | None:
    for label in LABELS:
        if name == label:
            return label
    return None


def map_gold_label(
    raw: object, label_map: Mapping[str, Label], *, keep_neutral: bool
) -> Label | Excluded:
    """The model label a file's label stands for, or why the row is excluded.

    The file's label is matched as a string (``4`` and ``"4"`` alike), exactly first, then ignoring
    case (``"Positive"`` finds a ``positive`` entry).
    """
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        return Excluded.UNMAPPED
    key = str(raw).strip()
    label = label_map.get(key)
    if label is None:
        folded = key.casefold()
        label = next((v for k, v in label_map.items() if k.casefold() == folded), None)
    if label is None:
        return Excluded.UNMAPPED
    if label == "NEUTRAL" and not keep_neutral:
        return Excluded.NEUTRAL
    return label


def evaluated_classes(label_map: Mapping[str, Label], *, keep_neutral: bool) -> list[Label]:
    """The classes gold labels can take: the map's targets, NEUTRAL only when kept."""
    targets = set(label_map.values())
    return [
        label for label in LABEL_ORDER if label in targets and (keep_neutral or label != "NEUTRAL")
    ]


def ordered(labels: Sequence[str]) -> list[str]:
    """``labels`` without repeats, in :data:`LABEL_ORDER`; anything else last, sorted."""
    distinct = set(labels)
    known = [label for label in LABEL_ORDER if label in distinct]
    return known + sorted(distinct - set(LABEL_ORDER))


def confusion_matrix(
    gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]
) -> list[list[int]]:
    """``matrix[i][j]``: rows whose gold label is ``labels[i]`` and prediction ``labels[j]``.

    Raises ``ValueError`` if the sequences differ in length or hold a label not in ``labels``.
    """
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold labels but {len(predicted)} predictions")
    index = {label: position for position, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for truth, guess in zip(gold, predicted, strict=True):
        if truth not in index or guess not in index:
            missing = truth if truth not in index else guess
            raise ValueError(f"label {missing!r} is not in {list(labels)}")
        matrix[index[truth]][index[guess]] += 1
    return matrix


@dataclass(frozen=True, slots=True)
class ClassScores:
    label: str
    precision: float
    recall: float
    f1: float
    support: int  # gold rows of this class


@dataclass(frozen=True, slots=True)
class Metrics:
    n: int
    accuracy: float
    classes: list[ClassScores]  # the evaluated classes, in label order
    macro_precision: float
    macro_recall: float
    macro_f1: float
    labels: list[str]  # row and column order of ``confusion``
    confusion: list[list[int]]  # rows gold, columns predicted


def classification_metrics(
    gold: Sequence[str], predicted: Sequence[str], classes: Sequence[str]
) -> Metrics:
    """Accuracy, per-class and macro precision/recall/F1 over ``classes``, and the confusion
    matrix (``classes`` plus any other label that was predicted or is gold)."""
    labels = ordered([*classes, *gold, *predicted])
    matrix = confusion_matrix(gold, predicted, labels)
    n = len(gold)
    correct = sum(matrix[i][i] for i in range(len(labels)))
    scores = []
    for label in ordered(list(classes)):
        i = labels.index(label)
        true_positives = matrix[i][i]
        predicted_as = sum(row[i] for row in matrix)
        support = sum(matrix[i])
        precision = _ratio(true_positives, predicted_as)
        recall = _ratio(true_positives, support)
        f1 = _ratio(2 * precision * recall, precision + recall)
        scores.append(ClassScores(label, precision, recall, f1, support))
    return Metrics(
        n=n,
        accuracy=_ratio(correct, n),
        classes=scores,
        macro_precision=_mean([s.precision for s in scores]),
        macro_recall=_mean([s.recall for s in scores]),
        macro_f1=_mean([s.f1 for s in scores]),
        labels=labels,
        confusion=matrix,
    )


@dataclass(frozen=True, slots=True)
class CurvePoint:
    """Predicting positive for every score >= ``threshold`` gives this precision and recall."""

    threshold: float
    precision: float
    recall: float


def precision_recall_curve(scores: Sequence[float], positive: Sequence[bool]) -> list[CurvePoint]:
    """One point per distinct score, highest threshold first; empty when nothing is positive."""
    if len(scores) != len(positive):
        raise ValueError(f"{len(scores)} scores but {len(positive)} gold flags")
    total_positive = sum(positive)
    if not total_positive:
        return []
    ranked = sorted(zip(scores, positive, strict=True), key=lambda pair: -pair[0])
    points = []
    true_positives = 0
    for taken, (score, is_positive) in enumerate(ranked, start=1):
        true_positives += is_positive
        next_score = ranked[taken][0] if taken < len(ranked) else None
        if next_score != score:  # the last row of a group of tied scores
            precision, recall = true_positives / taken, true_positives / total_positive
            points.append(CurvePoint(score, precision, recall))
    return points


def average_precision(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Step-wise area under the precision-recall curve; ``None`` when nothing is positive."""
    points = precision_recall_curve(scores, positive)
    if not points:
        return None
    area = previous_recall = 0.0
    for point in points:
        area += (point.recall - previous_recall) * point.precision
        previous_recall = point.recall
    return area


# --- confidence thresholds: what acting only on confident predictions costs and buys -----------

# The rows of the threshold table: every prediction (0), then 0.5 to 0.95 and 0.99.
THRESHOLD_GRID: tuple[float, ...] = (0.0, *(round(0.5 + 0.05 * i, 2) for i in range(10)), 0.99)


@dataclass(frozen=True, slots=True)
class ThresholdRow:
    """Keeping only predictions whose score is >= ``threshold``: the share kept (coverage), the
    accuracy and macro precision over those, and macro recall against every gold row (a dropped
    row is a miss)."""

    threshold: float
    kept: int
    coverage: float
    accuracy: float
    precision: float
    recall: float


def threshold_table(
    gold: Sequence[str],
    predicted: Sequence[str],
    scores: Sequence[float],
    classes: Sequence[str],
    thresholds: Sequence[float] = THRESHOLD_GRID,
) -> list[ThresholdRow]:
    """One row per threshold, in the order given."""
    sweep = _ThresholdSweep(gold, predicted, scores, classes)
    return [sweep.row_at(threshold) for threshold in thresholds]


def lowest_threshold_for_precision(
    gold: Sequence[str],
    predicted: Sequence[str],
    scores: Sequence[float],
    classes: Sequence[str],
    target: float,
) -> ThresholdRow | None:
    """The lowest threshold (one of the scores, or 0) whose kept predictions reach macro precision
    ``target``; None when no threshold does."""
    sweep = _ThresholdSweep(gold, predicted, scores, classes)
    for row in sweep.rows_by_ascending_threshold():
        if row.kept and row.precision >= target:
            return row
    return None


class _ThresholdSweep:
    """Rows sorted by score, highest first, swept once with running counts: one row per group of
    tied scores, from which every threshold is read."""

    def __init__(
        self,
        gold: Sequence[str],
        predicted: Sequence[str],
        scores: Sequence[float],
        classes: Sequence[str],
    ) -> None:
        if not len(gold) == len(predicted) == len(scores):
            raise ValueError(f"{len(gold)} gold, {len(predicted)} predicted, {len(scores)} scores")
        self.classes = list(classes)
        self.total = len(gold)
        self.support = {label: sum(1 for g in gold if g == label) for label in self.classes}
        self.ranked = sorted(zip(scores, gold, predicted, strict=True), key=lambda row: -row[0])
        self.cuts = self._cuts()  # the sweep runs once; every threshold reads it

    def _row(self, threshold: float, kept: int, correct: int, hits: dict[str, int],
             calls: dict[str, int]) -> ThresholdRow:  # fmt: skip
        precisions = [_ratio(hits[c], calls[c]) for c in self.classes if calls[c]]
        return ThresholdRow(
            threshold=threshold,
            kept=kept,
            coverage=_ratio(kept, self.total),
            accuracy=_ratio(correct, kept),
            precision=_mean(precisions),
            recall=_mean([_ratio(hits[c], self.support[c]) for c in self.classes]),
        )

    def _cuts(self) -> list[ThresholdRow]:
        """The row after each group of tied scores, highest score first."""
        hits = dict.fromkeys(self.classes, 0)
        calls = dict.fromkeys(self.classes, 0)
        correct = 0
        rows = []
        for taken, (score, gold, predicted) in enumerate(self.ranked, start=1):
            if predicted in calls:
                calls[predicted] += 1
                hits[predicted] += gold == predicted
            correct += gold == predicted
            following = self.ranked[taken][0] if taken < len(self.ranked) else None
            if following != score:
                rows.append(self._row(score, taken, correct, hits, calls))
        return rows

    def row_at(self, threshold: float) -> ThresholdRow:
        kept = [row for row in self.cuts if row.threshold >= threshold]
        if not kept:
            empty = dict.fromkeys(self.classes, 0)
            return self._row(threshold, 0, 0, empty, dict(empty))
        return replace(kept[-1], threshold=threshold)

    def rows_by_ascending_threshold(self) -> list[ThresholdRow]:
        return list(reversed(self.cuts))


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
