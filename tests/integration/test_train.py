"""``sentistream train`` end to end on a few hundred rows: every output, early stopping, a
resume after SIGTERM that ends on the same weights as a straight run, the label maps, and the
result scoring a real stream in a worker.

The base is a tiny BERT (2 layers, width 32) with the shared MiniLM's tokenizer: it trains in
seconds and exercises the same code as a real base."""

from __future__ import annotations

import itertools
import os
import signal
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.files import CsvOptions, FileFormat
from connectors.producer import RecordProducer
from stream.cli import main
from stream.core.errors import InterruptedRun
from stream.core.training import Recipe
from stream.settings import KafkaSettings, Settings, TopicSettings
from stream.train import TrainRequest, run_training
from tests.conftest import SHARED, Collector, WorkerFactory, require

pytestmark = [pytest.mark.slow]

SST2_TRAIN = SHARED / "data" / "sst2" / "train.tsv"
SST2_VALIDATION = SHARED / "data" / "sst2" / "validation.tsv"
SST2_DEV = SHARED / "data" / "sst2" / "glue_dev.tsv"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def head_of(source: Path, rows: int, target: Path) -> Path:
    """The header and the first ``rows`` rows of an SST-2 TSV."""
    lines = require(source).read_text(encoding="utf-8").splitlines(keepends=True)
    target.write_text("".join(lines[: rows + 1]), encoding="utf-8")
    return target


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory, minilm: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    target = tmp_path_factory.mktemp("tiny-base")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512,
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(target)  # type: ignore[no-untyped-call]
    AutoTokenizer.from_pretrained(minilm).save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("train-data")
    return {
        "train": head_of(SST2_TRAIN, 240, folder / "train.tsv"),
        "validation": head_of(SST2_VALIDATION, 60, folder / "validation.tsv"),
        "test": head_of(SST2_DEV, 80, folder / "test.tsv"),
    }


def test_a_small_run_leaves_a_loadable_checkpoint_reports_figures_and_a_registry_version(
    tiny_base: Path,
    small_data: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from models.registry import ModelRegistry
    from models.runner import RunnerOptions, SentimentRunner

    out = tmp_path / "run"
    monkeypatch.setenv("SENTISTREAM_MODEL_REGISTRY", str(tmp_path / "registry"))
    code = main([
        "train", "--train", str(small_data["train"]), "--format", "sst2",
        "--test", str(small_data["test"]), "--base", str(tiny_base), "--out", str(out),
        "--epochs", "2", "--batch-size", "16", "--lr", "1e-3", "--max-length", "64",
        "--export", "onnx-int8", "--register", "1.0.0", "--no-progress",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert f"SENTISTREAM_MODEL={out / 'model'}" in printed

    # the checkpoint loads as the worker loads it, with the labels set and the training window
    runner = SentimentRunner(str(out / "model"), RunnerOptions(device="cpu", backend="torch-fp32"))
    assert runner.labels == ["NEGATIVE", "POSITIVE"]
    assert runner.max_length == 64
    assert {p.label for p in runner.predict(["fine", "awful"]).predictions} <= {
        "NEGATIVE", "POSITIVE",
    }  # fmt: skip

    config = orjson.loads((out / "training-config.json").read_bytes())
    assert config["options"]["learning_rate"] == 1e-3
    assert config["options"]["label_map"] == {"0": "NEGATIVE", "1": "POSITIVE"}
    assert config["seed"] == 42
    assert {"torch", "transformers", "accelerate", "python"} <= set(config["libraries"])
    train_file = config["data"]["train"]
    assert len(train_file["sha256"]) == 64
    assert train_file["counts"]["lines"] == 240  # every row read (the header is not a row)
    assert train_file["counts"]["kept"] == 240
    assert train_file["rows"]["train"] + train_file["rows"]["validation"] == 240
    assert train_file["rows"]["validation"] > 0  # --validation-split 0.15 of the file

    report = orjson.loads((out / "training_report.json").read_bytes())
    assert [row["epoch"] for row in report["epochs"]] == [1.0, 2.0]
    for row in report["epochs"]:
        for key in ("train_loss", "validation_loss", "accuracy", "precision", "recall", "f1"):
            assert isinstance(row[key], float), (key, row)
    assert report["best_epoch"] in (1.0, 2.0)
    assert report["evaluated_on"] == "test"
    assert report["evaluation"]["n"] == 80
    assert sum(map(sum, report["evaluation"]["confusion"])) == 80
    assert report["export"]["label_agreement"] >= 0.9
    assert report["export"]["bytes"] > 0
    assert (out / report["export"]["path"]).is_file()
    for figure in report["figures"].values():
        data = (out / figure).read_bytes()
        assert data.startswith(PNG_MAGIC), figure
        assert len(data) > 5_000, figure
    card = (out / "MODEL_CARD.md").read_text(encoding="utf-8")
    for section in ("## Overview", "## Intended use", "## Input and output", "## Performance",
                    "## Limitations"):  # fmt: skip
        assert section in card
    assert f"{report['evaluation']['accuracy']:.4f}" in card
    assert not (out / "checkpoints").exists(), "optimizer states go after a finished run"
    entry = ModelRegistry(tmp_path / "registry").get("1.0.0")
    assert (entry.path / "model.safetensors").is_file()


def train_request(base: Path, data: dict[str, Path], out: Path, **overrides: Any) -> TrainRequest:
    from models.training import DataFile

    return TrainRequest(
        train=DataFile(str(data["train"]), FileFormat.SST2),
        validation=DataFile(str(data["validation"]), FileFormat.SST2),
        out=out,
        base=str(base),
        overrides={"batch_size": 16, "max_length": 48, **overrides},
        progress=False,
    )


def test_early_stopping_stops_when_the_metric_stops_improving(
    tiny_base: Path, small_data: dict[str, Path], tmp_path: Path
) -> None:
    """A learning rate too small to change a prediction: F1 is flat from the first epoch."""
    settings = Settings.from_env()
    flat = {"learning_rate": 1e-12, "max_epochs": 6, "patience": 1}
    stopped = run_training(train_request(tiny_base, small_data, tmp_path / "a", **flat), settings,
                           write=lambda _line: None)  # fmt: skip
    assert [row["epoch"] for row in stopped.report["epochs"]] == [1.0, 2.0]
    assert stopped.report["stopped_early_after_epoch"] == 2.0
    assert stopped.report["best_epoch"] == 1.0

    at_least = run_training(
        train_request(tiny_base, small_data, tmp_path / "b", **flat, min_epochs=3),
        settings, write=lambda _line: None,
    )  # fmt: skip
    assert [row["epoch"] for row in at_least.report["epochs"]] == [1.0, 2.0, 3.0]


class SignalAtStep:
    """Sends this process a real signal once training reaches ``step``."""

    def __new__(cls, step: int, signum: int) -> Any:
        from transformers import TrainerCallback

        class _Send(TrainerCallback):
            sent = False

            def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
                if state.global_step == step and not self.sent:
                    self.sent = True
                    os.kill(os.getpid(), signum)

        return _Send()


RESUME_OPTIONS = {"learning_rate": 5e-4, "max_epochs": 2}  # 15 steps per epoch at batch 16


@pytest.fixture(scope="module")
def straight_run(
    tiny_base: Path, small_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Any:
    out = tmp_path_factory.mktemp("straight") / "run"
    return run_training(train_request(tiny_base, small_data, out, **RESUME_OPTIONS),
                        Settings.from_env(), write=lambda _line: None)  # fmt: skip


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_resume_after_a_signal_ends_on_the_same_weights_as_a_straight_run(
    tiny_base: Path, small_data: dict[str, Path], tmp_path: Path, signum: int, straight_run: Any
) -> None:
    from models.training import weights_sha256

    settings = Settings.from_env()
    interrupted = train_request(tiny_base, small_data, tmp_path / "cut", **RESUME_OPTIONS)
    with pytest.raises(InterruptedRun, match="--resume") as stopped:
        run_training(interrupted, settings, write=lambda _line: None,
                     callbacks=[SignalAtStep(step=17, signum=signum)])  # fmt: skip
    assert stopped.value.exit_code == 130
    assert "step 17/30" in str(stopped.value)  # mid-way through the second epoch
    assert (tmp_path / "cut" / "checkpoints" / "checkpoint-17").is_dir()
    assert not (tmp_path / "cut" / "model").exists()

    seconds = float((tmp_path / "cut" / "checkpoints" / "train_seconds").read_text())
    resumed = run_training(_resumed(interrupted), settings, write=lambda _line: None)
    assert resumed.report["train_seconds"] >= round(seconds, 1)  # the time before the cut counts
    assert weights_sha256(resumed.model_dir) == weights_sha256(straight_run.model_dir)
    assert resumed.report["epochs"] == straight_run.report["epochs"]
    # a command that changed something cannot resume that run
    changed = train_request(tiny_base, small_data, tmp_path / "cut", learning_rate=1e-4,
                            max_epochs=2)  # fmt: skip
    with pytest.raises(Exception, match="differs from the interrupted run"):
        run_training(_resumed(changed), settings, write=lambda _line: None)


def _resumed(request: TrainRequest) -> TrainRequest:
    from dataclasses import replace

    return replace(request, resume=True)


def stored_labels(stem: Path) -> list[int]:
    return list(stem.with_suffix(".labels").read_bytes())


def stored_texts(stem: Path) -> list[str]:
    blob = stem.with_suffix(".text").read_bytes()
    raw = stem.with_suffix(".offsets").read_bytes()
    offsets = [struct.unpack_from("<q", raw, i)[0] for i in range(0, len(raw), 8)]
    return [blob[a:b].decode() for a, b in itertools.pairwise(offsets)]


@pytest.mark.parametrize(
    ("recipe", "fmt", "lines", "overrides", "labels", "neutral_dropped"),
    [
        # Sentiment140 {0, 2, 4}: 2 is NEUTRAL, dropped by default
        (Recipe.DEFAULT, FileFormat.SENTIMENT140,
         ['"0","1","Mon Apr 06 22:19:45 PDT 2009","NO_QUERY","u","@bob awful http://x.co/a"',
          '"4","2","Mon Apr 06 22:19:45 PDT 2009","NO_QUERY","u","#GreatDay lovely"',
          '"2","3","Mon Apr 06 22:19:45 PDT 2009","NO_QUERY","u","meh"'],
         {}, [0, 1], 1),
        # the Twitter report: {0, 4} -> {0, 1}, one sigmoid logit
        (Recipe.TWITTER, FileFormat.SENTIMENT140,
         ['"4","1","Mon Apr 06 22:19:45 PDT 2009","NO_QUERY","u","so good"',
          '"0","2","Mon Apr 06 22:19:45 PDT 2009","NO_QUERY","u","so bad"'],
         {}, [1, 0], 0),
        # the Amazon report: 1 = positive, 2 = negative (a CSV with a label column)
        (Recipe.AMAZON, FileFormat.CSV,
         ["label,text", "1,great blender", "2,broke in a week", "1,works"],
         {}, [1, 0, 1], 0),
        # TweetEval kept as three classes
        (Recipe.DEFAULT, FileFormat.TWEETEVAL, ["bad day", "a day", "good day"],
         {"keep_neutral": True}, [0, 1, 2], 0),
    ],
)  # fmt: skip
def test_each_label_map_and_the_stream_cleaning_are_applied(
    tmp_path: Path, recipe: Recipe, fmt: FileFormat, lines: list[str],
    overrides: dict[str, Any], labels: list[int], neutral_dropped: int,
) -> None:  # fmt: skip
    from models.training import DataFile, prepare_examples
    from stream.core.training import options_for
    from stream.evaluate import default_label_map
    from stream.settings import pipeline_config

    path = tmp_path / ("val_text.txt" if fmt is FileFormat.TWEETEVAL else "data.txt")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if fmt is FileFormat.TWEETEVAL:
        (tmp_path / "val_labels.txt").write_text("0\n1\n2\n", encoding="utf-8")
    options = options_for(recipe, overrides)
    label_map = dict(options.label_map) if options.label_map else default_label_map(fmt)
    csv = CsvOptions(label_column="label") if fmt is FileFormat.CSV else None
    cleaning = pipeline_config(Settings.from_env()).cleaning
    counts, sizes = prepare_examples(
        DataFile(str(path), fmt, csv=csv), label_map, options, cleaning,
        {"train": tmp_path / "store" / "train"}, lambda _id: "train",
    )  # fmt: skip
    assert stored_labels(tmp_path / "store" / "train") == labels
    assert counts.neutral_dropped == neutral_dropped
    assert sizes["train"] == len(labels)
    texts = stored_texts(tmp_path / "store" / "train")
    if fmt is FileFormat.SENTIMENT140 and recipe is Recipe.DEFAULT:
        assert texts == ["@user awful", "Great Day lovely"]  # the worker's own cleaning


@pytest.mark.broker
@pytest.mark.one_broker
def test_a_trained_sigmoid_checkpoint_scores_a_real_stream_in_the_worker(
    kafka: KafkaSettings,
    topics: TopicSettings,
    start_worker: WorkerFactory,
    collect: Collector,
    tiny_base: Path,
    small_data: dict[str, Path],
    tmp_path: Path,
) -> None:
    from dataclasses import replace

    request = replace(
        train_request(tiny_base, small_data, tmp_path / "run", max_epochs=1),
        recipe=Recipe.TWITTER,
    )
    # the twitter recipe maps {0, 4}: SST-2's {0, 1} needs the SST-2 map back
    request = replace(
        request, overrides={**dict(request.overrides or {}),
                            "label_map": {"0": "NEGATIVE", "1": "POSITIVE"}},
    )  # fmt: skip
    trained = run_training(request, Settings.from_env(), write=lambda _line: None)
    config = orjson.loads((trained.model_dir / "config.json").read_bytes())
    assert len(config["id2label"]) == 1  # one logit

    worker = start_worker(trained.model_dir, topics, SENTISTREAM_BACKEND="torch-fp32")
    producer = RecordProducer(kafka)
    texts = [f"message {index}: the film was {'great' if index % 2 else 'dull'}" for index in
             range(30)]  # fmt: skip
    for index, text in enumerate(texts):
        producer.send(topics.input_topic, orjson.dumps({"id": f"t-{index}", "text": text}))
    producer.flush()
    outputs = collect(topics, expected=len(texts), worker=worker)
    assert not outputs.dead_letters
    for index in range(len(texts)):
        (event,) = outputs.events[f"t-{index}"]
        assert event["model_name"] == str(trained.model_dir)
        assert event["label"] in ("NEGATIVE", "POSITIVE")
        assert set(event["probabilities"]) == {"NEGATIVE", "POSITIVE"}
        assert sum(event["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
