"""The records that flow through the pipeline, as plain frozen dataclasses.

raw Kafka record -> (decode/validate) -> Message -> (clean, score) -> Prediction -> enriched event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Label = Literal["POSITIVE", "NEGATIVE", "NEUTRAL"]
LABELS: tuple[Label, ...] = ("POSITIVE", "NEGATIVE", "NEUTRAL")


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One Kafka record as the consumer saw it: bytes plus where it came from."""

    value: bytes | None
    key: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Message:
    """A valid input message (the input contract, decoded)."""

    id: str
    text: str
    event_time_ms: int
    source: str | None = None
    channel: str | None = None
    author: str | None = None
    lang: str | None = None
    gold_label: str | None = None


@dataclass(frozen=True, slots=True)
class Prediction:
    """The model's verdict on one text; ``score`` is the probability of ``label``."""

    label: Label
    score: float
    probabilities: dict[str, float]
    token_count: int
    truncated: bool
    batch_size: int  # how many texts shared this one's forward pass
    inference_ms: float  # wall time of that forward pass


@dataclass(frozen=True, slots=True)
class ScoredBatch:
    """Predictions for a list of texts, in the order the texts were given."""

    predictions: list[Prediction]
    model_ms: float
    forward_batches: int = 1
    real_tokens: int = 0
    padded_tokens: int = 0
    # One entry per forward pass: how many texts it held, its padded tokens, its wall time.
    forward_sizes: tuple[int, ...] = ()
    forward_tokens: tuple[int, ...] = ()
    forward_ms: tuple[float, ...] = ()

    @property
    def padding_efficiency(self) -> float:
        return self.real_tokens / self.padded_tokens if self.padded_tokens else 1.0
