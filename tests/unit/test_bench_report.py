"""The bench's comparison tables pair the right rows (nothing here measures anything)."""

from __future__ import annotations

from bench.run import (
    CURVE_FRACTIONS,
    CURVE_RUN,
    Accuracy,
    Report,
    Row,
    broker_comparison,
    broker_label,
    curve_table,
    evaluate_goals,
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


def offline(backend: str, msg_per_s: float) -> Row:
    return Row(run="runner offline, whole mix", backend=backend, messages=100, msg_per_s=msg_per_s)


def goals_by_name(report: Report) -> dict[str, dict[str, object]]:
    return {str(item["goal"]): item for item in evaluate_goals(report)}


def test_goals_take_the_fastest_backend_that_keeps_agreement_and_accuracy() -> None:
    report = Report(machine="m", settings={})
    report.rows = [
        offline("torch-fp32", 40.0),
        offline("onnx-int8", 100.0),
        offline("onnx-fused-int8", 150.0),  # fastest, but flips too many labels
        offline("torch-bf16", 120.0),  # agrees, but loses 0.6 points
        Row(
            run="end to end, max rate",
            backend="onnx-int8",
            messages=100,
            msg_per_s=95.0,
            broker="embedded",
        ),
        Row(
            run="end to end, max rate",
            backend="null",
            messages=100,
            msg_per_s=6000.0,
            broker="embedded",
        ),
    ]
    report.accuracy = [
        Accuracy("torch-fp32", 0.8945, 1.0, 0),
        Accuracy("onnx-int8", 0.8933, 0.9943, 5),
        Accuracy("onnx-fused-int8", 0.8945, 0.9885, 10),
        Accuracy("torch-bf16", 0.8885, 0.9920, 7),
    ]
    goals = goals_by_name(report)
    assert goals["fastest accurate CPU backend (onnx-int8) >= 1.3x onnx-int8"]["value"] == 1.0
    assert goals["fastest accurate CPU backend (onnx-int8) >= 2.5x torch fp32"]["value"] == 2.5
    assert goals["fastest accurate CPU backend (onnx-int8) >= 2.5x torch fp32"]["met"] is True
    assert goals["end to end >= 90% of offline (onnx-int8, embedded)"]["value"] == 0.95
    ceiling = goals["pipeline ceiling, null classifier (embedded) >= 5,000 msg/s"]
    assert ceiling["met"] is True


def test_the_null_classifier_is_neither_offline_nor_in_the_accuracy_table() -> None:
    report = Report(machine="m", settings={})
    report.rows = [offline("onnx-int8", 100.0)]
    assert all("null" not in name for name in goals_by_name(report))


def test_the_curve_table_lists_each_offered_fraction_in_order() -> None:
    report = Report(machine="m", settings={})
    report.rows = [
        Row(
            latency_target_ms=100,
            run=f"{CURVE_RUN} {f:.0%} of max",
            backend="onnx-int8",
            messages=10,
            msg_per_s=f * 50,
            broker="embedded",
            offered_per_s=f * 50,
            p50_ms=10 * f,
            p95_ms=20 * f,
            p99_ms=30 * f,
            mean_batch=1.0,
        )
        for f in CURVE_FRACTIONS
    ]
    lines = [line for line in curve_table(report) if line.startswith("| ") and "of max" in line]
    assert [line.split(" | ")[1] for line in lines] == [f"{f:.0%} of max" for f in CURVE_FRACTIONS]
    assert lines[-1] == "| 100 ms | 100% of max | 50.0 | 50.0 | 10 | 20 | 30 | 1.0 |"
