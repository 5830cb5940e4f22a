"""``sentistream train``: fine-tune a classifier on a labelled file, the way the stream reads it.

options (a recipe + what was given) -> one streamed pass per data file (connectors.files, label
map, the worker's clean_text) -> models.training.fit (Trainer) -> ``<out>/model`` -> evaluation of
that checkpoint as the worker loads it (stream.evaluate, offline) -> training_report.json,
figures, MODEL_CARD.md -> optionally the registry (``--register``) and ONNX int8 (``--export``).

Everything the run used is in ``<out>/training-config.json``; ``--resume`` refuses a run whose
options or data differ from the interrupted one's.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from connectors.files import CsvOptions, FileFormat
from stream.core.errors import ConfigurationError, InterruptedRun
from stream.core.evaluation import parse_label_map
from stream.core.records import Label
from stream.core.training import (
    METRICS,
    RECIPES,
    Head,
    Precision,
    Recipe,
    Schedule,
    TrainingOptions,
    best_epoch,
    class_labels,
    options_for,
    resolve_precision,
    summarise_log,
)
from stream.settings import Settings, pipeline_config

if TYPE_CHECKING:
    from transformers import TrainerCallback

    from models.training import DataFile, FitResult, ReadCounts
    from stream.evaluate import Evaluation

TRAINING_CONFIG = "training-config.json"
TRAINING_REPORT = "training_report.json"
MODEL_CARD = "MODEL_CARD.md"
LOSS_PNG = "loss.png"
F1_PNG = "f1_threshold.png"
SAMPLES_PNG = "sample_outputs.png"
EVALUATION_DIR = "evaluation"  # sentistream eval's report of the final model on the test data
DATA_DIR = "data"  # the prepared example stores (removed after a finished run)

# Options the command line can set one by one: (flag, TrainingOptions field, type, help).
OPTION_FLAGS: list[tuple[str, str, Callable[[str], Any], str]] = [
    ("--lr", "learning_rate", float, "peak learning rate (AdamW)"),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay"),
    ("--adam-beta1", "adam_beta1", float, "AdamW beta1"),
    ("--adam-beta2", "adam_beta2", float, "AdamW beta2"),
    ("--adam-epsilon", "adam_epsilon", float, "AdamW epsilon"),
    ("--max-grad-norm", "max_grad_norm", float, "gradient clipping (global L2 norm)"),
    ("--warmup-steps", "warmup_steps", int, "warmup steps (instead of --warmup-ratio)"),
    ("--warmup-ratio", "warmup_ratio", float, "warmup as a share of all steps"),
    ("--schedule", "schedule", Schedule, "decay after warmup: linear, cosine, constant"),
    ("--min-lr", "min_lr", float, "cosine: the learning rate the decay ends at"),
    ("--batch-size", "batch_size", int, "training batch size"),
    ("--eval-batch-size", "eval_batch_size", int, "evaluation batch size"),
    ("--epochs", "max_epochs", int, "at most this many epochs"),
    ("--min-epochs", "min_epochs", int, "early stopping never stops before this many"),
    ("--patience", "patience", int, "stop after this many epochs without improvement"),
    ("--metric", "metric", str, f"validation metric for early stopping: {', '.join(METRICS)}"),
    ("--label-smoothing", "label_smoothing", float, "label smoothing (both heads)"),
    ("--precision", "precision", Precision, "auto (fp16 on a GPU), fp32, fp16, bf16"),
    ("--seed", "seed", int, "seed for initialisation, data order and dropout"),
    ("--head", "head", Head, "softmax over the classes, or one logit with a sigmoid"),
    ("--max-length", "max_length", int, "tokens per text (training and serving)"),
    ("--validation-split", "validation_split", float, "held-out share without --validation"),
    ("--evals-per-epoch", "evals_per_epoch", int, "validation passes per epoch (default 1)"),
]


@dataclass(frozen=True, slots=True)
class TrainRequest:
    train: DataFile
    out: Path
    base: str
    recipe: Recipe = Recipe.DEFAULT
    overrides: Mapping[str, Any] | None = None  # TrainingOptions fields given explicitly
    validation: DataFile | None = None
    test: DataFile | None = None
    resume: bool = False
    register: str | None = None  # a registry version for the result
    export: str | None = None  # "onnx-int8"
    progress: bool = True
    keep_checkpoints: bool = False


@dataclass
class TrainOutcome:
    out: Path
    model_dir: Path
    report: dict[str, Any]
    registered: str | None


def run_training(
    request: TrainRequest,
    settings: Settings,
    *,
    write: Callable[[str], None] = print,
    callbacks: Sequence[TrainerCallback] = (),
) -> TrainOutcome:
    import torch

    from models import training

    started = time.monotonic()
    options = options_for(request.recipe, dict(request.overrides or {}))
    label_map = _label_map(request.train.fmt, options)
    precision = resolve_precision(
        options.precision,
        cuda=torch.cuda.is_available(),
        bf16_supported=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
    )
    base = training.resolve_base(request.base)
    out = request.out
    if out.exists() and not request.resume and any(out.iterdir()):
        raise ConfigurationError(f"--out {out} is not empty (use another folder, or --resume)")
    out.mkdir(parents=True, exist_ok=True)
    cleaning = pipeline_config(settings).cleaning

    data_dir = out / DATA_DIR
    write(f"train: reading {request.train.path}")
    stores = {"train": data_dir / "train", "validation": data_dir / "validation"}
    if request.validation is None:
        split = training.validation_splitter(options)
        train_counts, sizes = training.prepare_examples(
            request.train, label_map, options, cleaning, stores, split
        )
        validation_counts = None
    else:
        train_counts, sizes = training.prepare_examples(
            request.train, label_map, options, cleaning, {"train": stores["train"]},
            lambda _id: "train",
        )  # fmt: skip
        write(f"train: reading {request.validation.path}")
        validation_map = _map_for(request.validation, request.train.fmt, label_map)
        validation_counts, validation_sizes = training.prepare_examples(
            request.validation, validation_map, options, cleaning,
            {"validation": stores["validation"]}, lambda _id: "validation",
        )  # fmt: skip
        sizes["validation"] = validation_sizes["validation"]
    for name in ("train", "validation"):
        if sizes.get(name, 0) == 0:
            raise ConfigurationError(f"no {name} rows left after reading and mapping the labels")
    config = _config_document(request, options, base, precision, label_map, settings)
    config["data"] = {
        "train": _file_document(request.train, train_counts, sizes),
        "validation": _file_document(request.validation, validation_counts, sizes)
        if request.validation
        else {"split_from_train": options.validation_split, "rows": sizes["validation"]},
        "test": _file_document(request.test, None, None) if request.test else None,
    }
    _check_resume(out, config, request.resume)
    training.dump_json(out / TRAINING_CONFIG, config)
    write(
        f"train: {sizes['train']} training rows, {sizes['validation']} validation rows; "
        f"{options.max_epochs} epochs at most, batch {options.batch_size}, {precision}"
    )

    train_set = training.StoredExamples(stores["train"])
    validation_set = training.StoredExamples(stores["validation"])
    # Training time across an interrupted run and its resumes (the Trainer keeps none).
    seconds_file = out / training.CHECKPOINTS / "train_seconds"
    before = float(seconds_file.read_text()) if request.resume and seconds_file.is_file() else 0.0
    fit_started = time.monotonic()
    try:
        fitted = training.fit(
            base, options, precision, train_set, validation_set, out,
            resume=request.resume, progress=request.progress, write=write, callbacks=callbacks,
        )  # fmt: skip
        fitted.train_seconds += before
        _save_serving_window(fitted.model_dir, options)
        if request.test is not None:
            evaluation_file = request.test
            evaluation_map = _map_for(request.test, request.train.fmt, label_map)
        else:  # the validation rows, written with the class names as labels
            evaluation_file = _validation_jsonl(validation_set, data_dir, options)
            evaluation_map = {name.lower(): name for name in class_labels(options)}
    except InterruptedRun:
        seconds_file.write_text(f"{before + time.monotonic() - fit_started:.1f}")
        raise
    finally:
        train_set.close()
        validation_set.close()

    evaluated = _evaluate(evaluation_file, evaluation_map, fitted.model_dir, options, settings)
    report = _report_document(fitted, options, evaluated, bool(request.test), sizes)
    if request.export:
        report["export"] = _export_onnx_int8(
            fitted.model_dir, out, evaluation_file, evaluation_map, options, settings, evaluated
        )
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    _write_outputs(out, fitted, options, evaluated, report, config)
    registered = None
    if request.register:
        registered = _register(request.register, fitted.model_dir, out, settings)
    if not request.keep_checkpoints:
        shutil.rmtree(out / training.CHECKPOINTS, ignore_errors=True)
        shutil.rmtree(data_dir, ignore_errors=True)
    return TrainOutcome(out=out, model_dir=fitted.model_dir, report=report, registered=registered)


def _label_map(fmt: FileFormat, options: TrainingOptions) -> dict[str, Label]:
    from stream.evaluate import default_label_map

    if options.label_map is not None:
        return dict(options.label_map)
    return default_label_map(fmt)


def _map_for(
    data: DataFile, train_fmt: FileFormat, train_map: dict[str, Label]
) -> dict[str, Label]:
    """Another file's label map: the training map for the same format, else its format's own."""
    from stream.evaluate import default_label_map

    return train_map if data.fmt == train_fmt else default_label_map(data.fmt)


def _save_serving_window(model_dir: Path, options: TrainingOptions) -> None:
    """The tokenizer remembers the training length, so the worker cuts texts where training did."""
    path = model_dir / "tokenizer_config.json"
    document = orjson.loads(path.read_bytes())
    document["model_max_length"] = options.max_length
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")


def _validation_jsonl(validation: Any, data_dir: Path, options: TrainingOptions) -> DataFile:
    """The validation rows as a JSONL file ``sentistream eval`` reads (texts already cleaned;
    cleaning again changes nothing)."""
    from models.training import DataFile

    path = data_dir / "validation.jsonl"
    classes = class_labels(options)
    with path.open("wb") as handle:
        for index, (text, label) in enumerate(validation.texts()):
            row = {"id": f"validation:{index}", "text": text, "label": classes[label]}
            handle.write(orjson.dumps(row))
            handle.write(b"\n")
    return DataFile(path=str(path), fmt=FileFormat.JSONL)


def _evaluation_settings(settings: Settings, backend: str) -> Settings:
    return settings.model_copy(
        update={"backend": backend, "label_map": None, "binary_threshold": 0.5, "max_length": None}
    )


def _evaluate(
    data: DataFile,
    data_map: dict[str, Label],
    model_dir: Path,
    options: TrainingOptions,
    settings: Settings,
    backend: str = "torch-fp32",
) -> Evaluation:
    """The saved checkpoint scored as the worker scores (decode, clean, batch, runner);
    ``data_map``: the file's label spelling -> model label."""
    from stream.evaluate import EvalRequest, run_evaluation

    eval_request = EvalRequest(
        path=data.path, fmt=data.fmt, csv=data.csv, labels_path=data.labels_path,
        id_prefix=data.id_prefix, label_map=data_map, keep_neutral=options.keep_neutral,
        offline=True, model=str(model_dir),
    )  # fmt: skip
    return run_evaluation(
        eval_request, _evaluation_settings(settings, backend), progress=lambda _line: None
    )


def _export_onnx_int8(
    model_dir: Path,
    out: Path,
    data: DataFile,
    data_map: dict[str, Label],
    options: TrainingOptions,
    settings: Settings,
    fp32: Evaluation,
) -> dict[str, Any]:
    """Quantize to ONNX int8 (the worker's CPU default, through the worker's own export and
    quantization) and score the same data with it."""
    cache = out / ".onnx-cache"
    quantized = _evaluate(
        data, data_map, model_dir, options,
        settings.model_copy(update={"model_cache_dir": cache}), backend="onnx-int8",
    )  # fmt: skip
    exported = sorted(cache.glob("onnx/*/model.int8*.onnx"))
    if len(exported) != 1:
        raise ConfigurationError(
            f"--export: expected one int8 model under {cache}, found {exported}"
        )
    folder = out / "onnx"
    folder.mkdir(exist_ok=True)
    int8 = folder / "model.int8.onnx"
    shutil.copy(exported[0], int8)
    shutil.rmtree(cache, ignore_errors=True)
    agree = sum(
        a.predicted == b.predicted for a, b in zip(fp32.results, quantized.results, strict=True)
    )
    weights = sum(path.stat().st_size for path in model_dir.glob("*.safetensors"))
    return {
        "format": "onnx-int8",
        "path": str(int8.relative_to(out)),
        "bytes": int8.stat().st_size,
        "fp32_weights_bytes": weights,
        "accuracy": round(quantized.metrics.accuracy, 4),
        "fp32_accuracy": round(fp32.metrics.accuracy, 4),
        "label_agreement": round(agree / max(1, len(fp32.results)), 4),
        "n": quantized.metrics.n,
    }


def _register(version: str, model_dir: Path, out: Path, settings: Settings) -> str:
    from models.registry import ModelRegistry

    if settings.model_registry is None:
        raise ConfigurationError("--register needs SENTISTREAM_MODEL_REGISTRY (a directory)")
    entry = ModelRegistry(settings.model_registry).add(
        model_dir, version, now_ms=time.time_ns() // 1_000_000,
        notes=f"sentistream train: {out}", eval_report=out / EVALUATION_DIR / "report.json",
    )  # fmt: skip
    return entry.version


# ---------------------------------------------------------------------------------------------
# Documents


def _config_document(
    request: TrainRequest,
    options: TrainingOptions,
    base: str,
    precision: Precision,
    label_map: Mapping[str, Label],
    settings: Settings,
) -> dict[str, Any]:
    from models.training import library_versions

    values = {f.name: _plain(getattr(options, f.name)) for f in fields(TrainingOptions)}
    values["label_map"] = dict(label_map)
    return {
        "recipe": str(request.recipe),
        "recipe_values": {k: _plain(v) for k, v in RECIPES[request.recipe].items()},
        "options": values,
        "base": request.base,
        "base_resolved": base,
        "precision": str(precision),
        "classes": class_labels(options),
        "cleaning": asdict(pipeline_config(settings).cleaning),
        "libraries": library_versions(),
        "seed": options.seed,
        "command": sys.argv,
        "started_at": now_utc(),
    }


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Precision | Head | Schedule | Recipe):
        return str(value)
    return value


def _file_document(
    data: DataFile | None, counts: ReadCounts | None, sizes: Mapping[str, int] | None
) -> dict[str, Any] | None:
    from models.training import file_sha256

    if data is None:
        return None
    document: dict[str, Any] = {
        "path": data.path,
        "format": str(data.fmt),
        "sha256": file_sha256(data.path),
    }
    if counts is not None:
        document["counts"] = asdict(counts)
    if sizes is not None and counts is not None and "train" in sizes:
        document["rows"] = {name: sizes[name] for name in ("train", "validation") if name in sizes}
    return document


def _check_resume(out: Path, config: dict[str, Any], resume: bool) -> None:
    """A resumed run must be the interrupted run: same options, base and data."""
    path = out / TRAINING_CONFIG
    if not resume:
        return
    if not path.is_file():
        raise ConfigurationError(f"--resume: {path} is missing; nothing to resume in {out}")
    before = orjson.loads(path.read_bytes())
    for key in ("options", "base_resolved", "precision", "data"):
        if before.get(key) != orjson.loads(orjson.dumps(config.get(key))):
            raise ConfigurationError(
                f"--resume: this command's {key} differs from the interrupted run's "
                f"({path}); resume with the same command"
            )


def _report_document(
    fitted: FitResult,
    options: TrainingOptions,
    evaluated: Evaluation,
    is_test: bool,
    sizes: Mapping[str, int],
) -> dict[str, Any]:
    history = summarise_log(fitted.log_history)
    best = best_epoch(history.epochs, options.metric)
    metrics = evaluated.metrics
    per_class = {row.label: asdict(row) for row in metrics.classes}
    return {
        "epochs": [asdict(row) for row in history.epochs],
        "best_epoch": best.epoch if best else None,
        "best_validation": asdict(best) if best else None,
        "stopped_early_after_epoch": fitted.stopped_early_at,
        "steps": fitted.global_step,
        "max_steps": fitted.max_steps,
        "train_seconds": round(fitted.train_seconds, 1),
        "device": fitted.device,
        "precision": str(fitted.precision),
        "rows": dict(sizes),
        "evaluated_on": "test" if is_test else "validation",
        "evaluation": {
            "path": evaluated.request.path,
            "n": metrics.n,
            "accuracy": round(metrics.accuracy, 4),
            "macro_f1": round(metrics.macro_f1, 4),
            "classes": per_class,
            "labels": metrics.labels,
            "confusion": metrics.confusion,
        },
        "train_loss": [asdict(point) for point in history.train_loss],
    }


def _write_outputs(
    out: Path,
    fitted: FitResult,
    options: TrainingOptions,
    evaluated: Evaluation,
    report: dict[str, Any],
    config: dict[str, Any],
) -> None:
    from models.training import dump_json
    from stream import train_reports
    from stream.reports import write_reports

    files = write_reports(evaluated, out / EVALUATION_DIR)
    history = summarise_log(fitted.log_history)
    train_reports.plot_loss(history, out / LOSS_PNG)
    report["f1_by_threshold"] = train_reports.plot_f1_threshold(evaluated, out / F1_PNG)
    report["samples"] = train_reports.plot_samples(evaluated, out / SAMPLES_PNG)
    report["figures"] = {
        "loss": LOSS_PNG,
        "precision_recall": str(files.precision_recall_png.relative_to(out)),
        "f1_threshold": F1_PNG,
        "confusion_matrix": str(files.confusion_png.relative_to(out)),
        "sample_outputs": SAMPLES_PNG,
    }
    dump_json(out / TRAINING_REPORT, report)
    (out / MODEL_CARD).write_text(train_reports.model_card(config, report), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Command line


def add_train_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    file_format_arguments: Callable[[argparse.ArgumentParser], None],
) -> None:
    train = commands.add_parser(
        "train",
        help="fine-tune a classifier on a labelled file (transformers Trainer)",
        description="Fine-tune --base on --train; the result in OUT/model is what "
        "SENTISTREAM_MODEL loads. Recipes fill in the specification documents' values; any "
        "option given explicitly wins. SIGINT/SIGTERM save a checkpoint; --resume continues.",
    )
    formats = [str(fmt) for fmt in FileFormat]
    train.add_argument("--train", required=True, help="labelled training file")
    train.add_argument("--format", required=True, choices=formats, help="its format")
    file_format_arguments(train)
    train.add_argument("--validation", help="validation file (default: --validation-split)")
    train.add_argument("--validation-format", choices=formats, help="default: --format")
    train.add_argument("--validation-labels", help="tweeteval: the validation labels file")
    train.add_argument("--test", help="test file, scored by the final model as the worker would")
    train.add_argument("--test-format", choices=formats, help="default: --format")
    train.add_argument("--test-labels", help="tweeteval: the test labels file")
    train.add_argument(
        "--base", required=True, help="local folder, hub id, or all-MiniLM-L6-v2 (packaged)"
    )
    train.add_argument("--out", required=True, type=Path, help="output folder (empty or new)")
    train.add_argument(
        "--recipe", choices=[str(r) for r in Recipe], default=str(Recipe.DEFAULT),
        help="preset values: custom-spec, amazon, twitter (explicit options win)",
    )  # fmt: skip
    train.add_argument("--label-map", help="file label -> model label, e.g. 1=POSITIVE,2=NEGATIVE")
    train.add_argument("--neutral", choices=["drop", "keep"], default=None,
                       help="NEUTRAL rows: drop (default) or keep as a third class")  # fmt: skip
    for flag, _name, kind, text in OPTION_FLAGS:
        train.add_argument(flag, type=kind, default=None, help=text)
    train.add_argument("--resume", action="store_true", help="continue an interrupted run")
    train.add_argument("--register", metavar="X.Y.Z", help="add the result to the model registry")
    train.add_argument("--export", choices=["onnx-int8"], help="also write the quantized model")
    train.add_argument(
        "--keep-checkpoints", action="store_true",
        help="keep OUT/checkpoints (optimizer states) after a finished run",
    )  # fmt: skip
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(handler=cmd_train)


def request_from_args(args: argparse.Namespace, csv: CsvOptions) -> TrainRequest:
    from models.training import DataFile

    overrides = {
        name: getattr(args, flag.lstrip("-").replace("-", "_"))
        for flag, name, _kind, _text in OPTION_FLAGS
        if getattr(args, flag.lstrip("-").replace("-", "_")) is not None
    }
    if args.label_map:
        overrides["label_map"] = parse_label_map(args.label_map)
    if args.neutral is not None:
        overrides["keep_neutral"] = args.neutral == "keep"
    fmt = FileFormat(args.format)

    def data(path: str | None, fmt_name: str | None, labels: str | None) -> DataFile | None:
        if path is None:
            return None
        other = FileFormat(fmt_name) if fmt_name else fmt
        return DataFile(path=path, fmt=other, csv=csv, labels_path=labels)

    return TrainRequest(
        train=DataFile(args.train, fmt, csv, args.labels, args.id_prefix),
        out=args.out,
        base=args.base,
        recipe=Recipe(args.recipe),
        overrides=overrides,
        validation=data(args.validation, args.validation_format, args.validation_labels),
        test=data(args.test, args.test_format, args.test_labels),
        resume=args.resume,
        register=args.register,
        export=args.export,
        progress=not args.no_progress and sys.stderr.isatty(),
        keep_checkpoints=args.keep_checkpoints,
    )


def cmd_train(args: argparse.Namespace) -> int:
    from stream.cli import csv_options

    settings = Settings.from_env()

    def write(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    request = request_from_args(args, csv_options(args))
    try:
        outcome = run_training(request, settings, write=write)
    except OSError as exc:
        raise ConfigurationError(f"{exc.strerror or exc}: {exc.filename or ''}") from exc
    print(summary_text(outcome))
    return 0


def summary_text(outcome: TrainOutcome) -> str:
    report = outcome.report
    evaluation = report["evaluation"]
    lines = [
        f"model:      {outcome.model_dir} (SENTISTREAM_MODEL={outcome.model_dir})",
        f"epochs:     {len(report['epochs'])}, best {report['best_epoch']}"
        + (
            f", stopped early after {report['stopped_early_after_epoch']}"
            if report["stopped_early_after_epoch"]
            else ""
        ),
        f"{report['evaluated_on']}:  accuracy {evaluation['accuracy']:.4f}, macro F1 "
        f"{evaluation['macro_f1']:.4f} (n={evaluation['n']})",
        f"time:       {report['train_seconds']:.0f} s training, {report['wall_seconds']:.0f} s "
        f"in all ({report['device']}, {report['precision']})",
    ]
    if "export" in report:
        export = report["export"]
        lines.append(
            f"onnx-int8:  {export['path']} ({export['bytes'] / 1e6:.1f} MB), accuracy "
            f"{export['accuracy']:.4f} vs fp32 {export['fp32_accuracy']:.4f}, "
            f"agreement {export['label_agreement']:.4f}"
        )
    if outcome.registered:
        lines.append(f"registered: {outcome.registered}")
    lines.append(f"reports:    {outcome.out} ({TRAINING_REPORT}, {MODEL_CARD}, figures)")
    return "\n".join(lines)


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
