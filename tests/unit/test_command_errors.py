"""One error taxonomy for every command: each failure a user can meet is one line and an exit code
that says whose move it is, handled once in ``stream.cli.main``."""

from __future__ import annotations

import os

import pytest

from connectors.admin import BrokerUnreachable
from connectors.broker import BrokerStartError, KafkaNotInstalled
from connectors.files import FileFormatError
from connectors.replay import ReplayError
from connectors.roundtrip import RoundTripError
from connectors.tail import TailError
from models.backends import BackendError
from models.labels import UnsupportedLabels
from models.runner import ModelLoadError
from stream.cli import main
from stream.core.errors import (
    ConfigurationError,
    InterruptedRun,
    SentistreamError,
    UnavailableError,
    UnpublishedError,
)
from stream.core.evaluation import LabelMapError
from stream.core.replay_plan import ReplaySpecError
from stream.evaluate import EvaluationError


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigurationError, 2),
        (ModelLoadError, 2),
        (UnsupportedLabels, 2),
        (BackendError, 2),
        (LabelMapError, 2),
        (ReplaySpecError, 2),
        (FileFormatError, 2),
        (EvaluationError, 2),
        (UnavailableError, 1),
        (BrokerUnreachable, 1),
        (BrokerStartError, 1),
        (KafkaNotInstalled, 1),
        (TailError, 1),
        (ReplayError, 1),
        (RoundTripError, 1),
        (InterruptedRun, 130),
        (UnpublishedError, 70),
    ],
)
def test_every_command_error_carries_its_exit_code(
    error: type[SentistreamError], code: int
) -> None:
    assert issubclass(error, SentistreamError)
    assert error.exit_code == code


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("KAFKA_", "SENTISTREAM_")):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("clean_env")
def test_an_option_error_is_one_line_naming_the_command_and_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["tail", "some.topic", "--from-end"]) == 2
    err = capsys.readouterr().err
    assert err == "sentistream tail: --from-end needs --follow\n"


@pytest.mark.usefixtures("clean_env")
def test_an_invalid_setting_is_one_line_naming_the_setting_and_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SENTISTREAM_BATCH_SIZE", "0")
    monkeypatch.setenv("SENTISTREAM_LOG_LEVEL", "loud")
    assert main(["tail", "some.topic"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("sentistream tail: invalid settings: ")
    assert "batch_size: Input should be greater than or equal to 1" in err
    assert "log_level" in err


@pytest.mark.usefixtures("clean_env")
def test_an_unreachable_broker_is_one_line_and_exits_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    assert main(["tail", "some.topic"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("sentistream tail: ")
    assert "Traceback" not in err


def test_bench_flags_left_out_take_the_bench_options_defaults() -> None:
    from bench.options import BenchOptions
    from stream.cli import bench_options, build_parser

    defaults = BenchOptions()
    options = bench_options(build_parser().parse_args(["bench", "--backends", "onnx-int8"]))
    names = ("messages", "half_rate_seconds", "batch_size", "threads", "lanes", "seed",
             "null_messages", "curve_seconds", "curve_targets", "latency_target_ms")  # fmt: skip
    for name in names:
        assert getattr(options, name) == getattr(defaults, name), name
    assert options.naive_messages == defaults.naive_messages
    assert options.curve_backend == "onnx-int8"
    assert list(options.backends) == ["onnx-int8"]


def test_bench_flags_override_the_defaults() -> None:
    from stream.cli import bench_options, build_parser

    args = ["bench", "--backends", "null", "--messages", "50", "--naive-messages", "80",
            "--curve-targets", "0,50", "--threads", "1", "--lanes", "2", "--no-curve"]  # fmt: skip
    options = bench_options(build_parser().parse_args(args))
    assert (options.messages, options.naive_messages) == (50, 50)  # naive at most the mix
    assert list(options.curve_targets) == [0, 50]
    assert (options.threads, options.lanes, options.curve_backend) == (1, 2, None)


def test_an_empty_curve_target_list_is_refused_not_read_as_no_curves() -> None:
    from stream.cli import bench_options, build_parser

    with pytest.raises(ValueError, match="invalid literal"):
        bench_options(build_parser().parse_args(["bench", "--curve-targets", ""]))
