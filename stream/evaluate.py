"""``sentistream eval``: how good is the model on a labelled file?

labelled file -> parse (connectors.files) -> map gold labels (explicit label map; unmapped and,
by default, NEUTRAL rows are counted and left out) -> score, either
  offline: process_batch with a SentimentRunner, exactly as the worker decodes, cleans and scores,
  live: through the running pipeline (input topic -> worker -> events / dead letters)
-> metrics (stream.core.evaluation) -> report files (stream.reports).

Every line of the file is accounted for once: total = skipped + unmapped + neutral excluded +
dead-lettered + scored.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connectors.files import DEFAULT_LABEL_MAPS, CsvOptions, FileFormat, ParsedLine, read_records
from stream.core.codec import HEADER_REASON, encode_json
from stream.core.drift import ReliabilityBin, expected_calibration_error, reliability_bins
from stream.core.errors import ConfigurationError
from stream.core.evaluation import (
    LABEL_ORDER,
    THRESHOLD_GRID,
    CurvePoint,
    Excluded,
    Metrics,
    ThresholdRow,
    average_precision,
    classification_metrics,
    evaluated_classes,
    lowest_threshold_for_precision,
    map_gold_label,
    precision_recall_curve,
    threshold_table,
)
from stream.core.records import Label, RawRecord
from stream.settings import Settings, pipeline_config

if TYPE_CHECKING:
    from models.runner import SentimentRunner

# Formats without a default map (jsonl, text, csv) take labels that already name a class.
LABELS_BY_NAME: dict[str, Label] = {label.lower(): label for label in LABEL_ORDER}
OFFLINE_CHUNK = 256  # records per process_batch call (the runner plans its own forward batches)
SKIPPED_LISTED = 20  # skipped lines listed by line number in the report


class EvaluationError(ConfigurationError):
    """The evaluation cannot go on; the message is one line and says what to change."""


# The threshold plot's points: the table's grid and every hundredth from 0.5 up.
PLOTTED_THRESHOLDS = sorted({*THRESHOLD_GRID, *(round(0.5 + 0.01 * i, 2) for i in range(50))})


@dataclass(frozen=True, slots=True)
class EvalRequest:
    path: str
    fmt: FileFormat
    csv: CsvOptions | None = None
    labels_path: str | None = None
    id_prefix: str | None = None
    label_map: Mapping[str, Label] | None = None  # None: the format's default map
    keep_neutral: bool = False
    offline: bool = False
    model: str | None = None  # offline only; default: SENTISTREAM_MODEL
    timeout_s: float = 300.0  # live only: wait for results after the last send
    target_precision: float | None = None  # name the lowest threshold that reaches it


@dataclass(frozen=True, slots=True)
class LabelledRow:
    line_no: int
    record_id: str  # the id the file gives (or connectors.files derives): stable across runs
    message_id: str  # unique to this run: eval-<run id>:<line>
    gold: Label
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RowResult:
    row: LabelledRow
    predicted: str
    score: float
    probabilities: dict[str, float]


@dataclass(frozen=True, slots=True)
class Curve:
    label: str  # the class scored one-vs-rest, by P(label)
    points: list[CurvePoint]
    average_precision: float | None


@dataclass
class Counts:
    total_lines: int = 0
    skipped_lines: int = 0
    unmapped: int = 0
    neutral_excluded: int = 0
    dead_lettered: int = 0
    scored: int = 0


@dataclass
class Evaluation:
    request: EvalRequest
    run_id: str
    created_at: str
    mode: str  # "offline" or "live"
    label_map: dict[str, Label]
    classes: list[Label]
    counts: Counts
    skipped: list[tuple[int, str]]  # (line, reason), the first SKIPPED_LISTED
    dead_letter_reasons: Counter[str]
    model_names: list[str]
    model_versions: list[str]
    model_backend: str | None  # offline: the runner's backend; live: not known here
    results: list[RowResult]
    metrics: Metrics
    curves: list[Curve] = field(default_factory=list)
    thresholds: list[ThresholdRow] = field(default_factory=list)  # THRESHOLD_GRID, then finer
    target: ThresholdRow | None = None  # the lowest threshold reaching request.target_precision
    # the enriched events as published, by message id (drift reference profiles are built from them)
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    reliability: list[ReliabilityBin] = field(default_factory=list)
    ece: float | None = None


@dataclass
class _Scored:
    """Results by message id, the same shape from both modes, and the model that scored them."""

    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    dead_letters: dict[str, str] = field(default_factory=dict)
    model_names: list[str] = field(default_factory=list)
    model_versions: list[str] = field(default_factory=list)
    backend: str | None = None


def default_label_map(fmt: FileFormat) -> dict[str, Label]:
    known = DEFAULT_LABEL_MAPS.get(fmt)
    if known is None:
        return dict(LABELS_BY_NAME)
    return {raw: _label(target) for raw, target in known.items()}


def run_evaluation(
    request: EvalRequest,
    settings: Settings,
    *,
    progress: Callable[[str], None] = lambda _line: None,
) -> Evaluation:
    """Read, map, score and measure; raises :class:`EvaluationError` (and the file reader's
    ``FileFormatError``/``OSError``, the runner's ``ModelLoadError``)."""
    if request.model and not request.offline:
        raise EvaluationError(
            "--model needs --offline: the live pipeline scores with the worker's own model"
        )
    run_id = uuid.uuid4().hex[:8]
    created_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    label_map = dict(request.label_map or default_label_map(request.fmt))
    classes = evaluated_classes(label_map, keep_neutral=request.keep_neutral)
    counts = Counts()
    skipped: list[tuple[int, str]] = []
    rows = _labelled_rows(request, label_map, run_id, counts, skipped)
    if not rows:
        raise EvaluationError(
            f"nothing to evaluate in {request.path}: {counts.total_lines} lines, "
            f"{counts.skipped_lines} skipped, {counts.unmapped} with no label the map knows "
            f"({_describe_map(label_map)}), {counts.neutral_excluded} neutral excluded"
        )
    progress(f"{len(rows)} labelled messages to score ({'offline' if request.offline else 'live'})")
    if request.offline:
        scored = _score_offline(rows, settings, request, progress)
    else:
        scored = _score_live(rows, settings, request, progress)
    results, reasons = _results(rows, scored, counts)
    if request.keep_neutral and results and "NEUTRAL" not in results[0].probabilities:
        raise EvaluationError(
            f"--neutral keep needs a model with a NEUTRAL label; "
            f"{', '.join(scored.model_names)} has only "
            f"{', '.join(results[0].probabilities)} (use --neutral drop)"
        )
    if not results:
        raise EvaluationError(
            f"all {len(rows)} messages were dead-lettered ({_describe(reasons)}): nothing scored"
        )
    gold = [result.row.gold for result in results]
    predicted = [result.predicted for result in results]
    scores = [result.score for result in results]
    metrics = classification_metrics(gold, predicted, classes)
    target = None
    if request.target_precision is not None:
        target = lowest_threshold_for_precision(
            gold, predicted, scores, classes, request.target_precision
        )
    return Evaluation(
        request=request,
        run_id=run_id,
        created_at=created_at,
        mode="offline" if request.offline else "live",
        label_map=label_map,
        classes=classes,
        counts=counts,
        skipped=skipped,
        dead_letter_reasons=reasons,
        model_names=scored.model_names,
        model_versions=scored.model_versions,
        model_backend=scored.backend,
        results=results,
        metrics=metrics,
        curves=_curves(results, classes),
        thresholds=threshold_table(gold, predicted, scores, classes, PLOTTED_THRESHOLDS),
        target=target,
        events=scored.events,
        reliability=reliability_bins(
            scores, [g == p for g, p in zip(gold, predicted, strict=True)]
        ),
        ece=expected_calibration_error(
            scores, [g == p for g, p in zip(gold, predicted, strict=True)]
        ),
    )


def _labelled_rows(
    request: EvalRequest,
    label_map: Mapping[str, Label],
    run_id: str,
    counts: Counts,
    skipped: list[tuple[int, str]],
) -> list[LabelledRow]:
    rows = []
    lines = read_records(
        request.path,
        request.fmt,
        csv=request.csv,
        labels_path=request.labels_path,
        id_prefix=request.id_prefix,
    )
    for line in lines:
        counts.total_lines += 1
        if not isinstance(line, ParsedLine):
            counts.skipped_lines += 1
            if len(skipped) < SKIPPED_LISTED:
                skipped.append((line.line_no, line.reason))
            continue
        gold = map_gold_label(
            line.payload.get("label"), label_map, keep_neutral=request.keep_neutral
        )
        if gold is Excluded.UNMAPPED:
            counts.unmapped += 1
            continue
        if gold is Excluded.NEUTRAL:
            counts.neutral_excluded += 1
            continue
        message_id = f"eval-{run_id}:{line.line_no}"
        rows.append(
            LabelledRow(
                line_no=line.line_no,
                record_id=str(line.payload["id"]),
                message_id=message_id,
                gold=_label(gold),
                payload={**line.payload, "id": message_id},
            )
        )
    return rows


def _score_offline(
    rows: Sequence[LabelledRow],
    settings: Settings,
    request: EvalRequest,
    progress: Callable[[str], None],
) -> _Scored:
    from stream.core.pipeline import process_batch

    runner = load_runner(request.model or settings.model, settings)
    if request.keep_neutral and "NEUTRAL" not in runner.labels:
        raise EvaluationError(
            f"--neutral keep needs a model with a NEUTRAL label; {runner.name} has "
            f"{', '.join(runner.labels)} (use --neutral drop)"
        )
    config = pipeline_config(settings)  # the worker's own size limit and cleaning rules
    scored = _Scored(
        model_names=[runner.name], model_versions=[runner.version], backend=str(runner.backend)
    )
    now_ms = time.time_ns() // 1_000_000
    for start in range(0, len(rows), OFFLINE_CHUNK):
        chunk = rows[start : start + OFFLINE_CHUNK]
        records = [
            RawRecord(
                value=encode_json(row.payload),
                key=row.message_id.encode(),
                topic="eval",
                partition=0,
                offset=start + index,
                timestamp_ms=now_ms,
            )
            for index, row in enumerate(chunk)
        ]
        outcome = process_batch(records, runner, config, lambda: time.time_ns() // 1_000_000)
        for event in outcome.events:
            scored.events[event.message.id] = event.payload
        for dead in outcome.dead_letters:
            headers = dict(dead.headers)
            reason = headers.get(HEADER_REASON, b"unknown").decode()
            scored.dead_letters[(dead.key or b"").decode()] = reason
        progress(f"scored {min(start + OFFLINE_CHUNK, len(rows))}/{len(rows)}")
    return scored


def load_runner(model: str, settings: Settings) -> SentimentRunner:
    """The model as the worker would load it (backend, device, batch limits, threads)."""
    from models.runner import RunnerOptions, SentimentRunner

    return SentimentRunner(model, RunnerOptions.from_settings(settings, model))


def _score_live(
    rows: Sequence[LabelledRow],
    settings: Settings,
    request: EvalRequest,
    progress: Callable[[str], None],
) -> _Scored:
    from connectors.roundtrip import run_through_pipeline

    step = max(1, len(rows) // 10)

    def report(answered: int, total: int) -> None:
        if answered % step == 0 or answered == total:
            progress(f"results {answered}/{total}")

    messages = [(row.message_id, encode_json(row.payload)) for row in rows]
    trip = run_through_pipeline(
        settings.kafka, settings.topics, messages, timeout_s=request.timeout_s, on_progress=report
    )
    events = trip.events.values()
    return _Scored(
        events=trip.events,
        dead_letters=trip.dead_letters,
        # Several names or versions: the worker's model changed during the run.
        model_names=sorted({str(event.get("model_name")) for event in events}),
        model_versions=sorted({str(event.get("model_version")) for event in events}),
    )


def _results(
    rows: Sequence[LabelledRow], scored: _Scored, counts: Counts
) -> tuple[list[RowResult], Counter[str]]:
    results = []
    reasons: Counter[str] = Counter()
    for row in rows:
        event = scored.events.get(row.message_id)
        if event is None:
            reasons[scored.dead_letters.get(row.message_id, "unknown")] += 1
            counts.dead_lettered += 1
            continue
        probabilities = {str(k): float(v) for k, v in event["probabilities"].items()}
        results.append(RowResult(row, str(event["label"]), float(event["score"]), probabilities))
        counts.scored += 1
    return results, reasons


def _curves(results: Sequence[RowResult], classes: Sequence[Label]) -> list[Curve]:
    """POSITIVE against the rest for two classes; every class one-vs-rest for three."""
    targets: Sequence[Label] = classes if len(classes) > 2 else ["POSITIVE"]
    curves = []
    for label in targets:
        if not all(label in result.probabilities for result in results):
            continue  # the model has no such class: no score to rank by
        scores = [result.probabilities[label] for result in results]
        positive = [result.row.gold == label for result in results]
        curves.append(
            Curve(
                label,
                precision_recall_curve(scores, positive),
                average_precision(scores, positive),
            )
        )
    return curves


def _label(name: str) -> Label:
    for label in LABEL_ORDER:
        if name == label:
            return label
    raise EvaluationError(f"{name!r} is not a model label ({', '.join(LABEL_ORDER)})")


def _describe_map(label_map: Mapping[str, Label]) -> str:
    return ", ".join(f"{raw}={label}" for raw, label in label_map.items())


def _describe(counter: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counter.items()))


def default_out_dir(path: str, now: datetime) -> Path:
    stem = "stdin" if path == "-" else Path(path).stem
    return Path(f"eval-{stem}-{now.strftime('%Y%m%d-%H%M%S')}")
