"""Map a checkpoint's ``id2label`` names onto the labels the pipeline publishes (no torch here)."""

from __future__ import annotations

from collections.abc import Mapping

from stream.core.records import Label

_ALIASES: dict[str, Label] = {
    "positive": "POSITIVE",
    "pos": "POSITIVE",
    "negative": "NEGATIVE",
    "neg": "NEGATIVE",
    "neutral": "NEUTRAL",
    "neu": "NEUTRAL",
}
# Checkpoints that only say LABEL_0..LABEL_n follow the SST-2 (2 classes) and TweetEval/SemEval
# (3 classes) conventions almost without exception.
_POSITIONAL: dict[int, tuple[Label, ...]] = {
    2: ("NEGATIVE", "POSITIVE"),
    3: ("NEGATIVE", "NEUTRAL", "POSITIVE"),
}


class UnsupportedLabels(ValueError):
    """The checkpoint's labels are not a sentiment scheme this service can publish."""


def normalise_labels(id2label: Mapping[int, str]) -> list[Label]:
    """Return the published label for each class index, in index order."""
    count = len(id2label)
    names = [str(id2label[index]) for index in range(count)]
    mapped = [_ALIASES.get(name.strip().lower()) for name in names]
    named = {label for label in mapped if label is not None}
    # Named labels must be one of the published schemes: POSITIVE/NEGATIVE, optionally NEUTRAL
    # (a single class, or NEUTRAL/POSITIVE alone, would publish a ratio that means nothing).
    if len(named) == count and {"POSITIVE", "NEGATIVE"} <= named:
        return [label for label in mapped if label is not None]
    if all(name.upper().startswith("LABEL_") for name in names) and count in _POSITIONAL:
        return list(_POSITIONAL[count])
    raise UnsupportedLabels(
        f"cannot map the model's labels {names} to POSITIVE/NEGATIVE(/NEUTRAL); "
        "use a sentiment classification checkpoint"
    )
