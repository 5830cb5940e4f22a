"""The figures and the model card of a ``sentistream train`` run (matplotlib's Agg canvas, no
display). The confusion matrix and the precision-recall curve are ``sentistream eval``'s own
(stream.reports), drawn from the final model's evaluation."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from stream.core.training import TrainingHistory, f1_by_threshold
from stream.evaluate import Evaluation, RowResult

F1_THRESHOLDS = [round(0.01 * i, 2) for i in range(1, 100)]
SAMPLES_PER_KIND = 4
SAMPLE_TEXT_CHARS = 72


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="tight")
    FigureCanvasAgg(figure)
    return figure


def plot_loss(history: TrainingHistory, path: Path) -> None:
    """Training loss (each logged step, and the epoch means) against validation loss."""
    figure = _figure(7, 4.5)
    axes = figure.add_subplot()
    if history.train_loss:
        axes.plot(
            [p.epoch for p in history.train_loss], [p.loss for p in history.train_loss],
            color="tab:blue", alpha=0.35, linewidth=1, label="training loss (logged steps)",
        )  # fmt: skip
    epochs = [row for row in history.epochs if row.train_loss is not None]
    axes.plot([r.epoch for r in epochs], [r.train_loss for r in epochs], "o-", color="tab:blue",
              label="training loss (mean since the last validation)")  # fmt: skip
    validated = [row for row in history.epochs if row.validation_loss is not None]
    axes.plot([r.epoch for r in validated], [r.validation_loss for r in validated], "s-",
              color="tab:orange", label="validation loss")  # fmt: skip
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss")
    axes.set_title("training vs validation loss")
    axes.legend(loc="upper right")
    figure.savefig(path, dpi=100)


def positive_scores(evaluation: Evaluation) -> tuple[list[float], list[bool]]:
    results = evaluation.results
    scores = [float(r.probabilities.get("POSITIVE", 0.0)) for r in results]
    return scores, [r.row.gold == "POSITIVE" for r in results]


def plot_f1_threshold(evaluation: Evaluation, path: Path) -> dict[str, Any]:
    """F1, precision and recall of POSITIVE when POSITIVE means P(positive) >= t; returns the
    best threshold and its F1 (and the F1 at 0.5)."""
    scores, gold = positive_scores(evaluation)
    points = f1_by_threshold(scores, gold, F1_THRESHOLDS)
    best = max(points, key=lambda p: p.f1)
    at_half = next(p for p in points if p.threshold == 0.5)
    figure = _figure(6, 4.5)
    axes = figure.add_subplot()
    x = [p.threshold for p in points]
    axes.plot(x, [p.f1 for p in points], label="F1", linewidth=2)
    axes.plot(x, [p.precision for p in points], ":", label="precision")
    axes.plot(x, [p.recall for p in points], ":", label="recall")
    axes.axvline(best.threshold, color="grey", linestyle="--",
                 label=f"best F1 {best.f1:.4f} at {best.threshold:.2f}")  # fmt: skip
    axes.set_xlabel("threshold on P(POSITIVE)")
    axes.set_ylim(0.0, 1.05)
    axes.set_title(f"F1 vs threshold (POSITIVE), n={len(scores)}")
    axes.legend(loc="lower center")
    figure.savefig(path, dpi=100)
    return {"best": asdict(best), "at_0.5": asdict(at_half)}


def sample_rows(evaluation: Evaluation) -> list[tuple[str, RowResult]]:
    """The most confident right answers, the most confident wrong ones, and the least confident."""
    results = evaluation.results
    right = sorted((r for r in results if r.predicted == r.row.gold), key=lambda r: -r.score)
    wrong = sorted((r for r in results if r.predicted != r.row.gold), key=lambda r: -r.score)
    unsure = sorted(results, key=lambda r: r.score)
    picked: list[tuple[str, RowResult]] = []
    seen: set[str] = set()
    for kind, rows in (("right", right), ("wrong", wrong), ("least sure", unsure)):
        taken = 0
        for row in rows:
            if taken == SAMPLES_PER_KIND:
                break
            if row.row.message_id in seen:
                continue
            seen.add(row.row.message_id)
            picked.append((kind, row))
            taken += 1
    return picked


def plot_samples(evaluation: Evaluation, path: Path) -> list[dict[str, Any]]:
    picked = sample_rows(evaluation)
    cells = []
    listed = []
    for kind, result in picked:
        text = str(result.row.payload.get("text", ""))
        short = text if len(text) <= SAMPLE_TEXT_CHARS else text[: SAMPLE_TEXT_CHARS - 1] + "…"
        cells.append([kind, short, result.row.gold, result.predicted, f"{result.score:.3f}"])
        listed.append({"kind": kind, "text": text, "gold": result.row.gold,
                       "predicted": result.predicted, "score": round(result.score, 4)})  # fmt: skip
    figure = _figure(12, 0.42 * len(cells) + 1.2)
    axes = figure.add_subplot()
    axes.axis("off")
    if cells:
        table = axes.table(
            cellText=cells, colLabels=["", "text", "gold", "predicted", "score"],
            colWidths=[0.08, 0.66, 0.09, 0.09, 0.08], loc="center", cellLoc="left",
        )  # fmt: skip
        table.auto_set_font_size(False)
        table.set_fontsize(8)
        table.scale(1, 1.3)
    axes.set_title("sample outputs (most confident right, most confident wrong, least sure)")
    figure.savefig(path, dpi=100)
    return listed


def model_card(config: dict[str, Any], report: dict[str, Any]) -> str:
    """MODEL_CARD.md in the model card's shape, with this run's measured numbers."""
    options = config["options"]
    evaluation = report["evaluation"]
    best = report.get("best_validation") or {}
    rows = config["data"]["train"].get("rows", {})
    classes = ", ".join(config["classes"])
    head = (
        "one logit through a sigmoid (POSITIVE when P >= 0.5)"
        if options["head"] == "sigmoid"
        else f"softmax over {classes}"
    )
    per_class = "\n".join(
        f"| {label} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |"
        for label, c in evaluation["classes"].items()
    )
    export = report.get("export")
    export_line = (
        f"\nONNX int8 (`{export['path']}`, {export['bytes'] / 1e6:.1f} MB against "
        f"{export['fp32_weights_bytes'] / 1e6:.1f} MB of fp32 weights): accuracy "
        f"{export['accuracy']:.4f} vs {export['fp32_accuracy']:.4f} in fp32, "
        f"{export['label_agreement']:.2%} label agreement on the same {export['n']} rows.\n"
        if export
        else ""
    )
    epochs = "\n".join(
        f"| {e['epoch']} | {_num(e['train_loss'])} | {_num(e['validation_loss'])} | "
        f"{_num(e['accuracy'])} | {_num(e['f1'])} |"
        for e in report["epochs"]
    )
    stopped = report.get("stopped_early_after_epoch")
    stop_note = f", stopped early at epoch {stopped}" if stopped else ""
    return f"""# Model card: {config["base"]} fine-tuned for sentiment ({config["recipe"]} recipe)

## Overview
- Base model: `{config["base"]}`; classification head: {head}.
- Classes: {classes}. Trained by `sentistream train` ({config["libraries"]["transformers"]}
  transformers, torch {config["libraries"]["torch"]}), seed {config["seed"]}, {report["precision"]}
  on {report["device"]}.
- Data: `{config["data"]["train"]["path"]}` ({config["data"]["train"]["format"]}),
  {rows.get("train", "?")} training rows, {report["rows"].get("validation", "?")} validation rows.
- Kept checkpoint: the validation pass at epoch {report["best_epoch"]} (best validation
  {options["metric"]}) of {len(report["epochs"])} passes{stop_note};
  {report["train_seconds"]:.0f} s of training.

## Intended use
Scoring the sentiment of short English posts and chat messages in the sentistream worker
(`SENTISTREAM_MODEL=<this folder>/model`), for aggregate monitoring (positive/negative ratios per
source and window) and for routing messages by tone. Not for decisions about individuals.

## Input and output
- Input: one message text, cleaned exactly as the worker cleans it (HTML entities unescaped, URLs
  removed, mentions to `@user`, hashtags split into words, whitespace collapsed), cut at
  {options["max_length"]} tokens (the tokenizer saved with the model remembers it).
- Output: per message, the label, its score, the probability of each class; the worker adds the
  model name and version, inference time, text length, whether it was truncated and whether the
  score is under the confidence threshold.

## Performance
Measured on {report["evaluated_on"]} data (`{evaluation["path"]}`, n={evaluation["n"]}) by the
saved checkpoint loaded as the worker loads it: accuracy **{evaluation["accuracy"]:.4f}**, macro F1
{evaluation["macro_f1"]:.4f}. Best validation epoch: accuracy {_num(best.get("accuracy"))},
F1 {_num(best.get("f1"))}.

| class | precision | recall | F1 | support |
|---|---:|---:|---:|---:|
{per_class}
{export_line}
| epoch (validation pass) | training loss | validation loss | validation accuracy | validation F1 |
|---:|---:|---:|---:|---:|
{epochs}

Figures: `loss.png`, `f1_threshold.png`, `sample_outputs.png`, and under `evaluation/` the
confusion matrix and precision-recall curve.

## Limitations
- Trained on one domain's labels; expect lower accuracy on text unlike the training data (other
  platforms, languages other than English, long reviews cut at {options["max_length"]} tokens).
- Two-class models have no neutral: neutral text gets whichever side is closer, often with a low
  score (the worker marks scores under its confidence threshold `uncertain`).
- Sarcasm, negation over long spans and domain slang are known failure modes of models this size.
- The numbers above are from one run with one seed.
"""


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.4f}"
