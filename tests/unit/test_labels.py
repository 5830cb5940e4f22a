"""normalise_labels: a checkpoint's id2label names -> the labels the pipeline publishes."""

from __future__ import annotations

import pytest

from models.labels import UnsupportedLabels, normalise_labels
from stream.core.records import Label


@pytest.mark.parametrize(
    ("id2label", "expected"),
    [
        ({0: "NEGATIVE", 1: "POSITIVE"}, ["NEGATIVE", "POSITIVE"]),
        ({0: "POSITIVE", 1: "NEGATIVE"}, ["POSITIVE", "NEGATIVE"]),
        ({0: "negative", 1: "positive"}, ["NEGATIVE", "POSITIVE"]),
        ({0: "Negative", 1: "Positive"}, ["NEGATIVE", "POSITIVE"]),
        ({0: "nEgAtIvE", 1: " positive "}, ["NEGATIVE", "POSITIVE"]),
        ({0: "neg", 1: "pos"}, ["NEGATIVE", "POSITIVE"]),
        ({0: "NEG", 1: "POS"}, ["NEGATIVE", "POSITIVE"]),
        ({0: "pos", 1: "neg"}, ["POSITIVE", "NEGATIVE"]),
        ({0: "negative", 1: "neutral", 2: "positive"}, ["NEGATIVE", "NEUTRAL", "POSITIVE"]),
        ({0: "positive", 1: "negative", 2: "neutral"}, ["POSITIVE", "NEGATIVE", "NEUTRAL"]),
        ({0: "NEG", 1: "NEU", 2: "POS"}, ["NEGATIVE", "NEUTRAL", "POSITIVE"]),
        ({0: "LABEL_0", 1: "LABEL_1"}, ["NEGATIVE", "POSITIVE"]),
        ({0: "label_0", 1: "label_1"}, ["NEGATIVE", "POSITIVE"]),
        ({0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}, ["NEGATIVE", "NEUTRAL", "POSITIVE"]),
    ],
)
def test_normalise_maps_sentiment_names_in_index_order(
    id2label: dict[int, str], expected: list[Label]
) -> None:
    assert normalise_labels(id2label) == expected


@pytest.mark.parametrize(
    "id2label",
    [
        {0: "joy", 1: "anger"},
        {0: "joy", 1: "anger", 2: "sadness", 3: "fear"},
        {i: f"LABEL_{i}" for i in range(5)},  # 1-5 star ratings: not a scheme we can publish
        {0: "LABEL_0"},
        {0: "positive"},  # one class is no classifier
        {0: "positive", 1: "POSITIVE"},  # two classes, one label: ambiguous
        {0: "negative", 1: "LABEL_1"},  # half named, half positional
        {0: "neutral", 1: "positive"},  # no NEGATIVE: not the 2-class scheme either
        {0: "negative", 1: "positive", 2: "joy"},  # one name we cannot map
        {0: "neg", 1: "neu", 2: "pos", 3: "mixed"},
        {},
    ],
)
def test_normalise_rejects_non_sentiment_labels_clearly(id2label: dict[int, str]) -> None:
    with pytest.raises(UnsupportedLabels) as caught:
        normalise_labels(id2label)
    message = str(caught.value)
    assert "POSITIVE/NEGATIVE" in message
    assert "sentiment classification checkpoint" in message
    for name in id2label.values():
        assert repr(name) in message, "the message names the labels it could not map"


def test_unsupported_labels_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="joy"):
        normalise_labels({0: "joy", 1: "anger"})
