"""Hot swap: the model a worker scores with, and the switch to a promoted version.

control record (``ActiveModel``) -> load the version beside the running model (a thread) ->
score a warm-up batch -> swap: the scoring agent reads ``ModelSlot.current`` once per take, so
the switch falls on a batch boundary, and every event says which version scored it. A version
that fails to load or to score the warm-up batch leaves the worker on its model, and is reported.
No rebalance, no restart: the consumer never notices.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from stream.core.errors import ConfigurationError
from stream.core.model_versions import ActiveModel
from stream.core.pipeline import Classifier
from stream.core.records import LABELS

WARMUP_TEXTS = ("I love this, wonderful", "this is awful, I hate it", "ok", "")
ModelLoader = Callable[[ActiveModel], Classifier]  # raises when the version cannot be loaded


class ModelSlot:
    """The worker's current model; swapped whole, read once per take."""

    def __init__(self, classifier: Classifier) -> None:
        self.current = classifier

    @property
    def version(self) -> str:
        return self.current.version

    def swap(self, classifier: Classifier) -> Classifier:
        previous, self.current = self.current, classifier
        return previous


def warm_up(classifier: Classifier) -> None:
    """Score a small batch; raises ``ConfigurationError`` when the answers are not sentiment
    predictions (wrong count, unknown labels, scores that are not probabilities)."""
    texts = [text for text in WARMUP_TEXTS if text]
    scored = classifier.predict(texts).predictions
    if len(scored) != len(texts):
        raise ConfigurationError(f"warm-up: {len(scored)} predictions for {len(texts)} texts")
    for prediction in scored:
        if prediction.label not in LABELS:
            raise ConfigurationError(f"warm-up: label {prediction.label!r} is not one of {LABELS}")
        if not (math.isfinite(prediction.score) and 0.0 <= prediction.score <= 1.0):
            raise ConfigurationError(f"warm-up: score {prediction.score!r} is not a probability")
