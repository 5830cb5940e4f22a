"""The evaluation metrics against small examples worked out by hand."""

from __future__ import annotations

import pytest

from stream.core.evaluation import (
    Excluded,
    LabelMapError,
    average_precision,
    classification_metrics,
    confusion_matrix,
    evaluated_classes,
    lowest_threshold_for_precision,
    map_gold_label,
    parse_label_map,
    precision_recall_curve,
    threshold_table,
)
from stream.core.records import Label

N: Label = "NEGATIVE"
U: Label = "NEUTRAL"
P: Label = "POSITIVE"


def test_confusion_matrix_has_gold_rows_and_predicted_columns() -> None:
    matrix = confusion_matrix([P, P, P, N, N], [P, P, N, N, P], [N, P])
    assert matrix == [[1, 1], [1, 2]]


def test_confusion_matrix_rejects_a_label_outside_the_order() -> None:
    with pytest.raises(ValueError, match="NEUTRAL"):
        confusion_matrix([N], [U], [N, P])


def test_binary_metrics_match_hand_computed_values() -> None:
    # gold NEGATIVE: 1 right, 1 wrong; gold POSITIVE: 2 right, 1 wrong
    metrics = classification_metrics([P, P, P, N, N], [P, P, N, N, P], [N, P])
    assert metrics.n == 5
    assert metrics.accuracy == pytest.approx(3 / 5)
    negative, positive = metrics.classes
    assert (negative.label, negative.support) == (N, 2)
    assert (negative.precision, negative.recall, negative.f1) == pytest.approx((0.5, 0.5, 0.5))
    assert (positive.label, positive.support) == (P, 3)
    assert (positive.precision, positive.recall, positive.f1) == pytest.approx((2 / 3,) * 3)
    assert metrics.macro_f1 == pytest.approx((0.5 + 2 / 3) / 2)
    assert metrics.labels == [N, P]


def test_a_class_never_predicted_scores_zero_instead_of_dividing_by_zero() -> None:
    metrics = classification_metrics([N, N, P, P], [P, P, P, P], [N, P])
    negative, positive = metrics.classes
    assert (negative.precision, negative.recall, negative.f1) == (0.0, 0.0, 0.0)
    assert (positive.precision, positive.recall) == pytest.approx((0.5, 1.0))
    assert positive.f1 == pytest.approx(2 / 3)
    assert metrics.accuracy == pytest.approx(0.5)
    assert metrics.macro_precision == pytest.approx(0.25)
    assert metrics.macro_recall == pytest.approx(0.5)
    assert metrics.macro_f1 == pytest.approx(1 / 3)
    assert metrics.confusion == [[0, 2], [0, 2]]


def test_three_class_metrics_match_hand_computed_values() -> None:
    gold = [N, N, U, U, U, P]
    predicted = [N, U, U, P, U, P]
    metrics = classification_metrics(gold, predicted, [P, U, N])
    assert metrics.labels == [N, U, P]
    assert metrics.confusion == [[1, 1, 0], [0, 2, 1], [0, 0, 1]]
    assert metrics.accuracy == pytest.approx(4 / 6)
    by_label = {scores.label: scores for scores in metrics.classes}
    assert (by_label[N].precision, by_label[N].recall) == pytest.approx((1.0, 0.5))
    assert (by_label[U].precision, by_label[U].recall) == pytest.approx((2 / 3, 2 / 3))
    assert (by_label[P].precision, by_label[P].recall) == pytest.approx((0.5, 1.0))
    assert [scores.f1 for scores in metrics.classes] == pytest.approx([2 / 3] * 3)
    assert metrics.macro_precision == pytest.approx(13 / 18)
    assert metrics.macro_recall == pytest.approx(13 / 18)
    assert metrics.macro_f1 == pytest.approx(2 / 3)


def test_a_predicted_label_outside_the_classes_is_a_column_but_not_in_the_macro_mean() -> None:
    # A 3-class model on positive/negative gold: its NEUTRAL answers are simply wrong.
    metrics = classification_metrics([N, P, P], [U, P, P], [N, P])
    assert metrics.labels == [N, U, P]
    assert metrics.confusion == [[0, 1, 0], [0, 0, 0], [0, 0, 2]]
    assert [scores.label for scores in metrics.classes] == [N, P]
    assert metrics.macro_f1 == pytest.approx(0.5)
    assert metrics.accuracy == pytest.approx(2 / 3)


def test_precision_recall_curve_has_one_point_per_threshold_on_a_known_ranking() -> None:
    points = precision_recall_curve([0.6, 0.9, 0.7, 0.8], [False, True, True, False])
    assert [point.threshold for point in points] == [0.9, 0.8, 0.7, 0.6]
    assert [point.precision for point in points] == pytest.approx([1.0, 0.5, 2 / 3, 0.5])
    assert [point.recall for point in points] == pytest.approx([0.5, 0.5, 1.0, 1.0])


def test_average_precision_on_a_known_ranking() -> None:
    # ranks: + - + -  ->  0.5 * 1 + 0.5 * 2/3
    assert average_precision([0.9, 0.8, 0.7, 0.6], [True, False, True, False]) == pytest.approx(
        5 / 6
    )
    assert average_precision([0.9, 0.8, 0.2], [True, True, False]) == pytest.approx(1.0)


def test_tied_scores_form_one_threshold_whatever_their_order() -> None:
    first = precision_recall_curve([0.9, 0.7, 0.7, 0.2], [True, False, True, False])
    second = precision_recall_curve([0.9, 0.7, 0.7, 0.2], [True, True, False, False])
    assert first == second
    assert [point.threshold for point in first] == [0.9, 0.7, 0.2]
    assert average_precision([0.9, 0.7, 0.7, 0.2], [True, True, False, False]) == pytest.approx(
        0.5 + 0.5 * 2 / 3
    )
    assert average_precision([0.5, 0.5], [False, True]) == pytest.approx(0.5)


def test_average_precision_is_none_without_a_positive_row() -> None:
    assert average_precision([0.9, 0.1], [False, False]) is None
    assert precision_recall_curve([], []) == []


def test_parse_label_map_reads_pairs_and_normalises_the_model_labels() -> None:
    assert parse_label_map("0=negative, 4=POSITIVE,2=Neutral") == {"0": N, "4": P, "2": U}


def test_parse_label_map_also_reads_colon_pairs() -> None:
    """SENTISTREAM_LABEL_MAP's spelling: the Amazon-review convention."""
    assert parse_label_map("1:POSITIVE,2:negative") == {"1": P, "2": N}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0 NEGATIVE", "not LABEL=MODEL_LABEL"),
        ("=NEGATIVE", "not LABEL=MODEL_LABEL"),
        (":NEGATIVE", "not LABEL=MODEL_LABEL"),
        ("0=BAD", "'BAD' is not one of"),
        ("0=NEGATIVE,0=POSITIVE", "two labels"),
        (" , ", "empty"),
    ],
)
def test_parse_label_map_says_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(LabelMapError, match=message):
        parse_label_map(spec)


def test_gold_labels_map_by_string_value_and_exclude_neutral_or_unknown() -> None:
    label_map = {"0": N, "2": U, "4": P, "positive": P}
    assert map_gold_label("4", label_map, keep_neutral=False) == P
    assert map_gold_label(4, label_map, keep_neutral=False) == P
    assert map_gold_label(" 0 ", label_map, keep_neutral=False) == N
    assert map_gold_label("Positive", label_map, keep_neutral=False) == P
    assert map_gold_label("2", label_map, keep_neutral=False) is Excluded.NEUTRAL
    assert map_gold_label("2", label_map, keep_neutral=True) == U
    assert map_gold_label("3", label_map, keep_neutral=True) is Excluded.UNMAPPED
    assert map_gold_label(None, label_map, keep_neutral=True) is Excluded.UNMAPPED
    assert map_gold_label(True, label_map, keep_neutral=True) is Excluded.UNMAPPED


def test_evaluated_classes_follow_the_map_and_the_neutral_policy() -> None:
    label_map = {"0": N, "1": U, "2": P}
    assert evaluated_classes(label_map, keep_neutral=False) == [N, P]
    assert evaluated_classes(label_map, keep_neutral=True) == [N, U, P]
    assert evaluated_classes({"0": N, "1": P}, keep_neutral=True) == [N, P]


# --- confidence thresholds ---------------------------------------------------------------------

# gold, predicted, score: the confident predictions are right, the unsure ones half wrong
ROWS = [
    ("POSITIVE", "POSITIVE", 0.99),
    ("NEGATIVE", "NEGATIVE", 0.95),
    ("POSITIVE", "POSITIVE", 0.90),
    ("NEGATIVE", "NEGATIVE", 0.80),
    ("NEGATIVE", "POSITIVE", 0.65),
    ("POSITIVE", "POSITIVE", 0.60),
    ("POSITIVE", "NEGATIVE", 0.55),
    ("NEGATIVE", "NEGATIVE", 0.52),
]
GOLD, PREDICTED, SCORES = (list(column) for column in zip(*ROWS, strict=True))


def test_threshold_table_trades_coverage_for_accuracy() -> None:
    rows = threshold_table(GOLD, PREDICTED, SCORES, [N, P], thresholds=[0.0, 0.7, 0.99, 1.0])
    everything, confident, top, none = rows
    assert (everything.kept, everything.coverage, everything.accuracy) == (8, 1.0, 6 / 8)
    assert everything.recall == pytest.approx(0.75)  # 3/4 of each class
    assert (confident.kept, confident.coverage, confident.accuracy) == (4, 0.5, 1.0)
    assert confident.precision == 1.0
    assert confident.recall == pytest.approx(0.5)  # 2 of 4 positives, 2 of 4 negatives kept
    assert (top.kept, top.precision) == (1, 1.0)
    assert top.recall == pytest.approx(0.125)
    assert (none.kept, none.coverage, none.accuracy, none.recall) == (0, 0.0, 0.0, 0.0)


def test_the_lowest_threshold_that_reaches_a_precision_is_one_of_the_scores() -> None:
    row = lowest_threshold_for_precision(GOLD, PREDICTED, SCORES, [N, P], target=0.9)
    assert row is not None
    assert row.threshold == 0.80  # below it, the 0.65 row (a wrong POSITIVE) comes in
    assert row.kept == 4
    reached = lowest_threshold_for_precision(GOLD, PREDICTED, SCORES, [N, P], target=0.7)
    assert reached is not None
    assert reached.threshold == 0.52  # everything: macro precision 0.75
    assert lowest_threshold_for_precision(["POSITIVE"], ["NEGATIVE"], [0.9], [N, P], 0.5) is None


def test_tied_scores_are_kept_or_dropped_together() -> None:
    rows = threshold_table(
        ["POSITIVE", "NEGATIVE", "POSITIVE"],
        ["POSITIVE", "POSITIVE", "POSITIVE"],
        [0.8, 0.8, 0.6],
        [N, P],
        thresholds=[0.8, 0.7],
    )
    assert [row.kept for row in rows] == [2, 2]
