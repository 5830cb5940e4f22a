"""The null classifier: no model, an answer at once. It measures the pipeline's own ceiling.

``SENTISTREAM_BACKEND=null`` runs the worker with it (``sentistream bench --backends null``): every
text is NEGATIVE or POSITIVE by the parity of its length, with probability 1. Nothing is tokenized
and nothing runs a forward pass, so what the worker then spends per message is the pipeline's:
fetching, decoding, cleaning, building and publishing records, acks, aggregates.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from models.backends import Backend
from models.labels import BINARY_LABELS
from stream.core.records import Label, Prediction, ScoredBatch


class NullClassifier:
    backend = Backend.NULL
    device = "none"
    lanes = 1
    name = "null"
    version = "0.0.0-null"
    labels: tuple[Label, ...] = tuple(BINARY_LABELS)

    def predict(self, texts: Sequence[str]) -> ScoredBatch:
        started = time.perf_counter()
        negative, positive = self.labels
        answers: tuple[dict[str, float], dict[str, float]] = (
            {negative: 1.0, positive: 0.0},
            {negative: 0.0, positive: 1.0},
        )
        predictions = []
        for text in texts:
            side = len(text) % 2
            predictions.append(
                Prediction(
                    label=self.labels[side],
                    score=1.0,
                    probabilities=answers[side],
                    token_count=0,
                    truncated=False,
                    batch_size=len(texts),
                    inference_ms=0.0,
                )
            )
        elapsed_ms = (time.perf_counter() - started) * 1000
        return ScoredBatch(
            predictions=predictions,
            model_ms=elapsed_ms,
            forward_batches=1,
            forward_sizes=(len(texts),),
            forward_tokens=(0,),
            forward_ms=(elapsed_ms,),
        )
