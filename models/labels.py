"""Map a checkpoint's ``id2label`` names onto the labels the pipeline publishes (no torch here)."""

from __future__ import annotations

from collections.abc import Mapping

from stream.core.errors import ConfigurationError
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


class UnsupportedLabels(ConfigurationError, ValueError):
    """The checkpoint's labels are not a sentiment scheme this service can publish."""


# A single-logit head (num_labels == 1) scores the positive class: sigmoid(logit) = P(POSITIVE).
BINARY_LABELS: tuple[Label, Label] = ("NEGATIVE", "POSITIVE")


def normalise_labels(
    id2label: Mapping[int, str], label_map: Mapping[str, Label] | None = None
) -> list[Label]:
    """Return the published label for each class index, in index order. ``label_map``
    (``SENTISTREAM_LABEL_MAP``) names the label of each class by the checkpoint's label name or
    by class index, for checkpoints whose labels are not recognised."""
    count = len(id2label)
    names = [str(id2label[index]) for index in range(count)]
    if label_map:
        return _mapped_labels(names, label_map)
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


def _mapped_labels(names: list[str], label_map: Mapping[str, Label]) -> list[Label]:
    labels: list[Label] = []
    for index, name in enumerate(names):
        label = label_map.get(name, label_map.get(str(index)))
        if label is None:
            raise UnsupportedLabels(
                f"SENTISTREAM_LABEL_MAP names no label for class {index} ({name!r}); map every "
                f"class of {names} by name or index, e.g. 0:NEGATIVE,1:POSITIVE"
            )
        labels.append(label)
    if not {"POSITIVE", "NEGATIVE"} <= set(labels) or len(set(labels)) != len(labels):
        raise UnsupportedLabels(
            f"SENTISTREAM_LABEL_MAP gives the classes {names} the labels {labels}; each class "
            "needs its own label and both POSITIVE and NEGATIVE must be there"
        )
    return labels
