"""Write an evaluation to disk: report.json, report.csv, predictions.jsonl, thresholds.csv and
three plots (confusion matrix, precision-recall, confidence thresholds).

stream.evaluate (metrics in hand) -> **files** -> a short text summary for the terminal.
matplotlib is imported only when the plots are drawn, with the Agg canvas (no display needed).
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from stream.core.evaluation import THRESHOLD_GRID, ThresholdRow
from stream.evaluate import Evaluation

REPORT_JSON = "report.json"
REPORT_CSV = "report.csv"
PREDICTIONS = "predictions.jsonl"
CONFUSION_PNG = "confusion_matrix.png"
PR_PNG = "precision_recall.png"
THRESHOLDS_CSV = "thresholds.csv"
THRESHOLDS_PNG = "thresholds.png"
RELIABILITY_PNG = "reliability.png"


@dataclass(frozen=True, slots=True)
class ReportFiles:
    report_json: Path
    report_csv: Path
    predictions: Path
    confusion_png: Path
    precision_recall_png: Path
    thresholds_csv: Path
    thresholds_png: Path
    reliability_png: Path


def write_reports(evaluation: Evaluation, out_dir: Path) -> ReportFiles:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(
        report_json=out_dir / REPORT_JSON,
        report_csv=out_dir / REPORT_CSV,
        predictions=out_dir / PREDICTIONS,
        confusion_png=out_dir / CONFUSION_PNG,
        precision_recall_png=out_dir / PR_PNG,
        thresholds_csv=out_dir / THRESHOLDS_CSV,
        thresholds_png=out_dir / THRESHOLDS_PNG,
        reliability_png=out_dir / RELIABILITY_PNG,
    )
    files.report_json.write_bytes(
        orjson.dumps(report_document(evaluation), option=orjson.OPT_INDENT_2) + b"\n"
    )
    _write_csv(evaluation, files.report_csv)
    with files.predictions.open("wb") as handle:
        for result in evaluation.results:
            line = {
                "id": result.row.record_id,
                "line": result.row.line_no,
                "gold": result.row.gold,
                "predicted": result.predicted,
                "score": result.score,
                "probabilities": result.probabilities,
            }
            handle.write(orjson.dumps(line) + b"\n")
    _write_thresholds_csv(evaluation, files.thresholds_csv)
    plot_confusion_matrix(evaluation, files.confusion_png)
    plot_precision_recall(evaluation, files.precision_recall_png)
    plot_thresholds(evaluation, files.thresholds_png)
    plot_reliability(evaluation, files.reliability_png)
    return files


def report_document(evaluation: Evaluation) -> dict[str, Any]:
    """report.json: the metrics, the counts that account for every line, and what was run."""
    metrics = evaluation.metrics
    request = evaluation.request
    return {
        "run_id": evaluation.run_id,
        "created_at": evaluation.created_at,
        "mode": evaluation.mode,
        "file": request.path,
        "format": str(request.fmt),
        "model": {
            "name": ", ".join(evaluation.model_names),
            "version": ", ".join(evaluation.model_versions),
            "backend": evaluation.model_backend,
        },
        "label_map": evaluation.label_map,
        "neutral": "keep" if request.keep_neutral else "drop",
        "counts": asdict(evaluation.counts),
        "n": metrics.n,
        "accuracy": metrics.accuracy,
        "classes": {
            scores.label: {
                "precision": scores.precision,
                "recall": scores.recall,
                "f1": scores.f1,
                "support": scores.support,
            }
            for scores in metrics.classes
        },
        "macro": {
            "precision": metrics.macro_precision,
            "recall": metrics.macro_recall,
            "f1": metrics.macro_f1,
        },
        "confusion_matrix": {
            "labels": metrics.labels,
            "rows": "gold",
            "columns": "predicted",
            "matrix": metrics.confusion,
        },
        "average_precision": {curve.label: curve.average_precision for curve in evaluation.curves},
        "skipped_lines": [
            {"line": line_no, "reason": reason} for line_no, reason in evaluation.skipped
        ],
        "dead_letter_reasons": dict(sorted(evaluation.dead_letter_reasons.items())),
        "thresholds": [asdict(row) for row in table_rows(evaluation)],
        "target_precision": _target_document(evaluation),
        "calibration": {
            "ece": evaluation.ece,
            "bins": [asdict(b) for b in evaluation.reliability],
        },
    }


def table_rows(evaluation: Evaluation) -> list[ThresholdRow]:
    """The thresholds of the printed table (the plot has finer ones)."""
    return [row for row in evaluation.thresholds if row.threshold in THRESHOLD_GRID]


def _target_document(evaluation: Evaluation) -> dict[str, Any] | None:
    target = evaluation.request.target_precision
    if target is None:
        return None
    row = evaluation.target
    return {"target": target, "reached": row is not None, **(asdict(row) if row else {})}


def _write_thresholds_csv(evaluation: Evaluation, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["threshold", "kept", "coverage", "accuracy", "precision", "recall"])
        for row in evaluation.thresholds:
            writer.writerow(
                [row.threshold, row.kept, _fixed(row.coverage), _fixed(row.accuracy),
                 _fixed(row.precision), _fixed(row.recall)]
            )  # fmt: skip


def plot_thresholds(evaluation: Evaluation, path: Path) -> None:
    """Coverage, accuracy, precision and recall of the predictions kept at each threshold."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 5), layout="tight")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    rows = [row for row in evaluation.thresholds if row.threshold >= 0.5]
    x = [row.threshold for row in rows]
    for name, style in (("coverage", "-"), ("accuracy", ":"), ("precision", "-"), ("recall", "-")):
        axes.plot(x, [getattr(row, name) for row in rows], style, label=name)
    if evaluation.target is not None:
        axes.axvline(evaluation.target.threshold, linestyle="--", color="grey",
                     label=f"precision >= {evaluation.request.target_precision}")  # fmt: skip
    axes.set_xlabel("confidence threshold (score of the predicted label)")
    axes.set_ylim(0.0, 1.05)
    axes.set_title(f"acting only on confident predictions, n={evaluation.metrics.n}")
    axes.legend(loc="lower left")
    figure.savefig(path, dpi=100)


def _write_csv(evaluation: Evaluation, path: Path) -> None:
    """Per-class rows, then the macro average, then accuracy (in the f1 column, as
    scikit-learn's classification report puts it)."""
    metrics = evaluation.metrics
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "precision", "recall", "f1", "support"])
        for scores in metrics.classes:
            writer.writerow(
                [
                    scores.label,
                    _fixed(scores.precision),
                    _fixed(scores.recall),
                    _fixed(scores.f1),
                    scores.support,
                ]
            )
        writer.writerow(
            [
                "macro avg",
                _fixed(metrics.macro_precision),
                _fixed(metrics.macro_recall),
                _fixed(metrics.macro_f1),
                metrics.n,
            ]
        )
        writer.writerow(["accuracy", "", "", _fixed(metrics.accuracy), metrics.n])


def _fixed(value: float) -> str:
    return f"{value:.4f}"


def plot_reliability(evaluation: Evaluation, path: Path) -> None:
    """Reliability diagram: accuracy against mean confidence per score bin, with the ECE."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 5), layout="tight")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    bins = evaluation.reliability
    axes.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    widths = [b.upper - b.lower for b in bins]
    axes.bar([b.lower for b in bins], [b.accuracy for b in bins], width=widths, align="edge",
             alpha=0.6, edgecolor="black", label="accuracy of the bin")  # fmt: skip
    axes.plot([b.confidence for b in bins], [b.accuracy for b in bins], "o-", color="tab:red",
              label="mean confidence -> accuracy")  # fmt: skip
    for b in bins:
        axes.annotate(str(b.n), (b.lower + (b.upper - b.lower) / 2, 0.02), ha="center", fontsize=7)
    ece = "n/a" if evaluation.ece is None else f"{evaluation.ece:.4f}"
    axes.set_xlabel("confidence (score of the predicted label)")
    axes.set_ylabel("accuracy")
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.05)
    axes.set_title(f"reliability, ECE {ece}, n={evaluation.metrics.n}")
    axes.legend(loc="upper left")
    figure.savefig(path, dpi=100)


def plot_confusion_matrix(evaluation: Evaluation, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = evaluation.metrics
    labels = metrics.labels
    figure = Figure(figsize=(1.6 * len(labels) + 2.4, 1.4 * len(labels) + 1.8), layout="tight")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(metrics.confusion, cmap="Blues")
    figure.colorbar(image, ax=axes)
    highest = max((max(row) for row in metrics.confusion), default=0)
    for i, row in enumerate(metrics.confusion):
        for j, count in enumerate(row):
            colour = "white" if count > highest / 2 else "black"
            axes.text(j, i, str(count), ha="center", va="center", color=colour)
    axes.set_xticks(range(len(labels)), labels)
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("gold")
    axes.set_title(f"n={metrics.n}, accuracy {metrics.accuracy:.4f}")
    figure.savefig(path, dpi=100)


def plot_precision_recall(evaluation: Evaluation, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 5), layout="tight")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for curve in evaluation.curves:
        if not curve.points:
            continue  # no gold row of this class: no recall to plot
        recall = [0.0] + [point.recall for point in curve.points]
        precision = [curve.points[0].precision] + [point.precision for point in curve.points]
        ap = "n/a" if curve.average_precision is None else f"{curve.average_precision:.4f}"
        axes.step(recall, precision, where="post", label=f"{curve.label} (AP {ap})")
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.05)
    one_vs_rest = " (one-vs-rest)" if len(evaluation.curves) > 1 else ""
    axes.set_title(f"precision-recall{one_vs_rest}, n={evaluation.metrics.n}")
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="lower left")
    figure.savefig(path, dpi=100)


def summary_text(evaluation: Evaluation, files: ReportFiles) -> str:
    """What the command prints: accuracy, macro F1, the confusion matrix, the counts, the files."""
    metrics = evaluation.metrics
    counts = evaluation.counts
    width = max(len(label) for label in metrics.labels) + 2
    lines = [
        f"model:    {', '.join(evaluation.model_names)} ({', '.join(evaluation.model_versions)}"
        + (f", {evaluation.model_backend})" if evaluation.model_backend else ")"),
        f"mode:     {evaluation.mode}, {evaluation.request.path} ({evaluation.request.fmt})",
        f"lines:    {counts.total_lines} read, {counts.skipped_lines} skipped, "
        f"{counts.unmapped} unmapped, {counts.neutral_excluded} neutral excluded, "
        f"{counts.dead_lettered} dead-lettered, {counts.scored} scored",
        f"accuracy: {metrics.accuracy:.4f}   macro F1: {metrics.macro_f1:.4f}"
        + ("" if evaluation.ece is None else f"   ECE: {evaluation.ece:.4f}")
        + "".join(
            f"   AP({curve.label}): {curve.average_precision:.4f}"
            for curve in evaluation.curves
            if curve.average_precision is not None
        ),
        "confusion matrix (rows gold, columns predicted):",
        " " * width + "".join(f"{label:>{width}}" for label in metrics.labels),
    ]
    for label, row in zip(metrics.labels, metrics.confusion, strict=True):
        lines.append(f"{label:<{width}}" + "".join(f"{count:>{width}}" for count in row))
    lines += [
        f"report:   {files.report_json}",
        f"          {files.report_csv}",
        f"          {files.predictions}",
        f"          {files.thresholds_csv}",
        f"plots:    {files.confusion_png}",
        f"          {files.precision_recall_png}",
        f"          {files.thresholds_png}",
        f"          {files.reliability_png}",
    ]
    return "\n".join([*lines[:-8], *threshold_lines(evaluation), *lines[-8:]])


def threshold_lines(evaluation: Evaluation) -> list[str]:
    """The threshold table, and the answer to --target-precision."""
    lines = ["confidence threshold: coverage, accuracy, macro precision, macro recall (kept rows)"]
    for row in table_rows(evaluation):
        lines.append(
            f"  >= {row.threshold:<5} {row.coverage:>8.4f} {row.accuracy:>8.4f} "
            f"{row.precision:>8.4f} {row.recall:>8.4f}"
        )
    target, reached = evaluation.request.target_precision, evaluation.target
    if target is not None:
        lines.append(
            f"target precision {target}: no threshold reaches it"
            if reached is None
            else f"target precision {target}: lowest threshold {reached.threshold:.4f} "
            f"(precision {reached.precision:.4f}, coverage {reached.coverage:.4f}, "
            f"kept {reached.kept})"
        )
    return lines
