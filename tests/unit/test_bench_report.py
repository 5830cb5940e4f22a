"""The bench's comparison tables pair the right rows (nothing here measures anything)."""

from __future__ import annotations

from bench.run import (
    Report,
    Row,
    broker_comparison,
    broker_label,
    guarantee_comparison,
    shadow_comparison,
)


def e2e(broker: str, msg_per_s: float, run: str = "end to end, max rate") -> Row:
    return Row(run=run, backend="onnx-int8", messages=100, msg_per_s=msg_per_s, broker=broker)


def test_exactly_once_is_compared_with_at_least_once_on_the_same_broker_and_phase() -> None:
    report = Report(machine="m", settings={})
    report.rows = [
        e2e("kafka", 100.0),
        e2e(broker_label("kafka", "exactly_once"), 80.0),
        e2e("embedded", 120.0),
        e2e("kafka", 50.0, run="end to end, half max rate"),
    ]
    lines = guarantee_comparison(report)
    rows = [line for line in lines if line.startswith("| end to end")]
    assert rows == ["| end to end, max rate | onnx-int8 | 100.0 | 80.0 | 0.80 | - | - | - | - |"]
    # the exactly-once row is not mistaken for Apache Kafka in the broker comparison
    broker_rows = [line for line in broker_comparison(report) if line.startswith("| end to end")]
    assert len(broker_rows) == 1
    assert "| 100.0 | 120.0 |" in broker_rows[0]


def test_no_comparison_without_an_exactly_once_row() -> None:
    report = Report(machine="m", settings={})
    report.rows = [e2e("kafka", 100.0), e2e("embedded", 120.0)]
    assert guarantee_comparison(report) == []
    assert broker_label("kafka", "at_least_once") == "kafka"


def test_the_shadow_run_is_compared_with_the_plain_run_of_its_broker() -> None:
    report = Report(machine="m", settings={})
    report.rows = [
        e2e("embedded", 100.0),
        e2e(broker_label("embedded", "at_least_once", shadow=True), 60.0),
    ]
    rows = [line for line in shadow_comparison(report) if line.startswith("| end to end")]
    assert rows == ["| end to end, max rate | onnx-int8 | 100.0 | 60.0 | 0.60 | - | - | - | - |"]
    assert guarantee_comparison(report) == []
