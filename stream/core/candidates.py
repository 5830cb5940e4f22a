"""A candidate model beside the primary: a shadow that scores the same messages after the
primary and is only compared, or a canary that scores a stable share of the messages for real.

message id -> stable hash -> in the share? (shadow: compare; canary: the canary scores it, and its
event says so). The same id always lands on the same side, on every worker and after a restart.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from stream.core.records import Message, Prediction

if TYPE_CHECKING:
    from stream.core.pipeline import Classifier

SHADOW_SALT = "shadow"
CANARY_SALT = "canary"


def in_share(message_id: str, fraction: float, salt: str) -> bool:
    """Whether ``message_id`` falls in the stable ``fraction`` of ids (0 none, 1 all)."""
    if fraction >= 1.0:
        return True
    if fraction <= 0.0:
        return False
    digest = hashlib.blake2b(f"{salt}:{message_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


@dataclass(frozen=True)
class Candidate:
    """A model and the share of message ids it sees."""

    classifier: Classifier
    fraction: float


def shadow_value(
    message: Message, primary: Prediction, payload: dict[str, Any], shadow: Prediction,
    shadow_model: Classifier,
) -> bytes:  # fmt: skip
    """The shadow topic's value for one message (keyed by its id): both predictions, their
    versions, agreement and each model's forward-pass time for the batch it was in."""
    value: dict[str, Any] = {
        "id": message.id,
        "agree": primary.label == shadow.label,
        "primary": {
            "label": primary.label,
            "score": primary.score,
            "model_name": payload["model_name"],
            "model_version": payload["model_version"],
            "forward_ms": round(primary.inference_ms, 3),
        },
        "shadow": {
            "label": shadow.label,
            "score": shadow.score,
            "model_name": shadow_model.name,
            "model_version": shadow_model.version,
            "forward_ms": round(shadow.inference_ms, 3),
        },
        "event_time": payload["event_time"],
    }
    if message.gold_label is not None:
        value["gold_label"] = message.gold_label
    return orjson.dumps(value)
