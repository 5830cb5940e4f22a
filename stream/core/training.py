"""The decisions of ``sentistream train``, without torch: recipes, the validation split, the
precision to train in, early stopping, and what a run's log says per epoch.

labelled file -> (connectors.files, map labels, clean_text) -> **which split a row goes to** ->
Trainer (models.training) -> **per-epoch summary, stop or go on** -> reports.

The three specification documents' training set-ups are :data:`RECIPES`; every value they fix can
also be set alone. Nothing here reads a clock or a file.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

from stream.core.errors import ConfigurationError
from stream.core.records import Label


class TrainingConfigError(ConfigurationError, ValueError):
    """A training option is out of range or contradicts another; the message says which."""


class Head(StrEnum):
    SOFTMAX = "softmax"  # one logit per class, cross-entropy
    SIGMOID = "sigmoid"  # one logit = P(POSITIVE) through a sigmoid, binary cross-entropy


class Schedule(StrEnum):
    LINEAR = "linear"  # warmup, then linear decay to 0
    COSINE = "cosine"  # warmup, then cosine decay to min_lr
    CONSTANT = "constant"  # warmup, then constant


class Precision(StrEnum):
    AUTO = "auto"  # fp16 on a CUDA GPU, fp32 on a CPU
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


class Recipe(StrEnum):
    DEFAULT = "default"
    CUSTOM_SPEC = "custom-spec"  # the custom DistilBERT training configuration
    AMAZON = "amazon"  # the Amazon-review training report
    TWITTER = "twitter"  # the Twitter (Sentiment140) training report


@dataclass(frozen=True, slots=True)
class TrainingOptions:
    """Every option of a run. ``None`` for ``warmup_steps``: ``warmup_ratio`` decides."""

    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    warmup_steps: int | None = None
    warmup_ratio: float = 0.06
    schedule: Schedule = Schedule.LINEAR
    min_lr: float = 0.0  # cosine only: where the decay ends
    batch_size: int = 32
    eval_batch_size: int = 64
    max_epochs: int = 3
    min_epochs: int = 1  # early stopping never stops before this many epochs
    patience: int | None = None  # epochs without improvement before stopping; None: never stop
    metric: str = "f1"  # validation metric for early stopping and the best checkpoint
    label_smoothing: float = 0.0
    precision: Precision = Precision.AUTO
    seed: int = 42
    head: Head = Head.SOFTMAX
    max_length: int = 128
    validation_split: float = 0.15  # used only without a validation file
    evals_per_epoch: int = 1  # validation passes (and checkpoints) per epoch
    label_map: Mapping[str, Label] | None = None  # None: the file format's own map
    keep_neutral: bool = False  # NEUTRAL rows as a third class (softmax only)


# The metrics a run can stop on, and whether higher is better.
METRICS: dict[str, bool] = {
    "f1": True,
    "accuracy": True,
    "precision": True,
    "recall": True,
    "loss": False,
}

# Each document's values. Twitter: Sentiment140's 0 -> NEGATIVE and 4 -> POSITIVE (its 2 is not in
# the training data; dropped like every neutral row), mentions to @user, URLs out, hashtags to
# words (the stream's cleaning does all three), max length 128, one logit through a sigmoid.
RECIPES: dict[Recipe, dict[str, Any]] = {
    Recipe.DEFAULT: {},
    Recipe.CUSTOM_SPEC: {
        "learning_rate": 1e-5,
        "weight_decay": 0.01,
        "schedule": Schedule.COSINE,
        "min_lr": 1e-7,
        "warmup_ratio": 0.1,
        "batch_size": 64,
        "max_epochs": 15,
        "patience": 5,
        "label_smoothing": 0.1,
        "max_grad_norm": 1.0,
        "precision": Precision.AUTO,
        "validation_split": 0.15,
    },
    Recipe.AMAZON: {
        "label_map": {"1": "POSITIVE", "2": "NEGATIVE"},
        "batch_size": 32,
        "max_epochs": 10,
        "min_epochs": 5,
        "patience": 2,
        "warmup_steps": 500,
        "schedule": Schedule.LINEAR,
        "precision": Precision.AUTO,
    },
    Recipe.TWITTER: {
        "label_map": {"0": "NEGATIVE", "4": "POSITIVE"},
        "max_length": 128,
        "head": Head.SIGMOID,
    },
}


def options_for(recipe: Recipe, overrides: Mapping[str, Any]) -> TrainingOptions:
    """The recipe's values with ``overrides`` (options given explicitly) on top, checked."""
    names = {f.name for f in fields(TrainingOptions)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TrainingConfigError(f"unknown training options: {', '.join(unknown)}")
    options = replace(TrainingOptions(), **{**RECIPES[Recipe(recipe)], **overrides})
    check_options(options)
    return options


def check_options(options: TrainingOptions) -> None:
    problems = []
    if options.learning_rate <= 0:
        problems.append("--lr must be > 0")
    if not 0 <= options.min_lr < options.learning_rate:
        problems.append("--min-lr must be >= 0 and below --lr")
    if options.batch_size < 1 or options.eval_batch_size < 1:
        problems.append("--batch-size must be >= 1")
    if options.max_epochs < 1:
        problems.append("--epochs must be >= 1")
    if not 1 <= options.min_epochs <= options.max_epochs:
        problems.append(f"--min-epochs must be between 1 and --epochs ({options.max_epochs})")
    if options.patience is not None and options.patience < 1:
        problems.append("--patience must be >= 1")
    if options.metric not in METRICS:
        problems.append(f"--metric must be one of {', '.join(METRICS)}")
    if not 0 <= options.label_smoothing < 1:
        problems.append("--label-smoothing must be in [0, 1)")
    if not 0 < options.validation_split < 1:
        problems.append("--validation-split must be in (0, 1)")
    if options.warmup_steps is not None and options.warmup_steps < 0:
        problems.append("--warmup-steps must be >= 0")
    if not 0 <= options.warmup_ratio < 1:
        problems.append("--warmup-ratio must be in [0, 1)")
    if options.evals_per_epoch < 1:
        problems.append("--evals-per-epoch must be >= 1")
    if not 8 <= options.max_length <= 8192:
        problems.append("--max-length must be between 8 and 8192")
    if options.max_grad_norm <= 0:
        problems.append("--max-grad-norm must be > 0")
    if options.head is Head.SIGMOID and options.keep_neutral:
        problems.append("a sigmoid head scores two classes: --neutral keep needs --head softmax")
    if problems:
        raise TrainingConfigError("; ".join(problems))


def resolve_precision(requested: Precision, *, cuda: bool, bf16_supported: bool) -> Precision:
    """The precision a run trains in: mixed precision needs a CUDA GPU (bf16 one that has it)."""
    if requested is Precision.AUTO:
        return Precision.FP16 if cuda else Precision.FP32
    if requested is Precision.FP16 and not cuda:
        raise TrainingConfigError("--precision fp16 needs a CUDA GPU; use fp32 (or auto) here")
    if requested is Precision.BF16 and not (cuda and bf16_supported):
        raise TrainingConfigError("--precision bf16 needs a CUDA GPU with bf16; use fp32 or auto")
    return requested


def in_validation_split(record_id: str, fraction: float, seed: int) -> bool:
    """Whether a row belongs to the held-out split: decided by its id and the seed alone, so a
    file read as a stream splits the same way every time, whatever its order or size."""
    digest = hashlib.blake2b(f"{seed}:{record_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def class_labels(options: TrainingOptions) -> list[Label]:
    """The model's classes in index order."""
    if options.keep_neutral:
        return ["NEGATIVE", "NEUTRAL", "POSITIVE"]
    return ["NEGATIVE", "POSITIVE"]


def head_labels(options: TrainingOptions) -> dict[int, str]:
    """The checkpoint's ``id2label``: a sigmoid head's one logit scores POSITIVE."""
    if options.head is Head.SIGMOID:
        return {0: "POSITIVE"}
    return dict(enumerate(class_labels(options)))


class EarlyStopping:
    """Stop when the metric has not improved for ``patience`` evaluations, never before
    ``min_epochs``. Improvements are strict (a tie does not reset the count)."""

    def __init__(self, patience: int | None, min_epochs: int, higher_is_better: bool) -> None:
        self.patience = patience
        self.min_epochs = min_epochs
        self.higher_is_better = higher_is_better
        self.best: float | None = None
        self.best_epoch: float | None = None
        self.since_best = 0

    def observe(self, epoch: float, value: float) -> bool:
        """Record the metric of the validation pass at ``epoch`` (1.0: the end of the first);
        True: stop training now. Patience counts validation passes."""
        if math.isnan(value):
            improved = False
        elif self.best is None:
            improved = True
        else:
            improved = value > self.best if self.higher_is_better else value < self.best
        if improved:
            self.best, self.best_epoch, self.since_best = value, epoch, 0
        else:
            self.since_best += 1
        if self.patience is None or epoch < self.min_epochs:
            return False
        return self.since_best >= self.patience


@dataclass(frozen=True, slots=True)
class EpochSummary:
    """One validation pass: at the end of each epoch, or ``evals_per_epoch`` times per epoch."""

    epoch: float  # where in training it ran (2.0: the end of the second epoch)
    step: int
    train_loss: float | None  # mean training loss since the previous validation pass
    validation_loss: float | None
    accuracy: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    learning_rate: float | None  # the last logged one before this pass


@dataclass(frozen=True, slots=True)
class LossPoint:
    step: int
    epoch: float
    loss: float


@dataclass
class TrainingHistory:
    epochs: list[EpochSummary] = field(default_factory=list)
    train_loss: list[LossPoint] = field(default_factory=list)  # every logged step


def summarise_log(log_history: Sequence[Mapping[str, Any]]) -> TrainingHistory:
    """A row per validation pass from the Trainer's log: the training loss is the step-weighted
    mean of the losses logged since the previous pass."""
    history = TrainingHistory()
    total, steps = 0.0, 0
    previous_step = 0
    learning_rate: float | None = None
    for entry in log_history:
        step = int(entry.get("step", 0))
        epoch_at = float(entry.get("epoch", 0.0))
        if "loss" in entry:
            covered = max(1, step - previous_step)
            previous_step = step
            total, steps = total + float(entry["loss"]) * covered, steps + covered
            history.train_loss.append(LossPoint(step, epoch_at, float(entry["loss"])))
            learning_rate = _optional(entry.get("learning_rate"))
        if "eval_loss" in entry:
            history.epochs.append(
                EpochSummary(
                    epoch=round(epoch_at, 4),
                    step=step,
                    train_loss=total / steps if steps else None,
                    validation_loss=float(entry["eval_loss"]),
                    accuracy=_optional(entry.get("eval_accuracy")),
                    precision=_optional(entry.get("eval_precision")),
                    recall=_optional(entry.get("eval_recall")),
                    f1=_optional(entry.get("eval_f1")),
                    learning_rate=learning_rate,
                )
            )
            total, steps = 0.0, 0
    return history


def _optional(value: Any) -> float | None:
    return None if value is None else float(value)


def best_epoch(epochs: Sequence[EpochSummary], metric: str) -> EpochSummary | None:
    """The epoch the kept checkpoint comes from: the best metric, the earliest on a tie."""
    higher = METRICS[metric]
    scored = [
        (value, row)
        for row in epochs
        if (value := getattr(row, "validation_loss" if metric == "loss" else metric)) is not None
    ]
    if not scored:
        return None
    best_value = max(v for v, _ in scored) if higher else min(v for v, _ in scored)
    return next(row for value, row in scored if value == best_value)


@dataclass(frozen=True, slots=True)
class F1Point:
    threshold: float
    precision: float
    recall: float
    f1: float


def f1_by_threshold(
    positive_scores: Sequence[float], gold_positive: Sequence[bool], thresholds: Sequence[float]
) -> list[F1Point]:
    """Precision, recall and F1 of the positive class when POSITIVE means P(positive) >= t."""
    points = []
    for threshold in thresholds:
        tp = fp = fn = 0
        for score, gold in zip(positive_scores, gold_positive, strict=True):
            predicted = score >= threshold
            tp += predicted and gold
            fp += predicted and not gold
            fn += gold and not predicted
        precision = tp / (tp + fp) if tp + fp else 1.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        points.append(F1Point(threshold, precision, recall, f1))
    return points
