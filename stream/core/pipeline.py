"""One batch through the pipeline: raw records -> decode/validate -> clean -> score -> enrich.

Pure apart from the classifier it is handed, so the worker runs it off the event loop and tests run
it with a fake classifier. Every input record leaves as exactly one enriched event or exactly one
dead letter.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from stream.core.batching import score_isolating_failures
from stream.core.candidates import CANARY_SALT, SHADOW_SALT, Candidate, in_share, shadow_value
from stream.core.cleaning import CleaningRules, clean_text
from stream.core.codec import (
    HEADER_REASON,
    HEADER_SOURCE_TOPIC,
    dead_letter_headers,
    decode_message,
    encode_json,
    format_time_ms,
)
from stream.core.errors import STAGE_OF_REASON, DeadLetterReason, PoisonRecord
from stream.core.records import Message, Prediction, RawRecord, ScoredBatch

# Cleaned texts -> an ISO 639-1 code per text (None: could not tell).
LanguageDetector = Callable[[Sequence[str]], list[str | None]]


class Classifier(Protocol):
    """What the pipeline needs of a model (``models.runner.SentimentRunner`` in production)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    def predict(self, texts: Sequence[str]) -> ScoredBatch: ...


# What an event's Kafka key is: the message id (default), or its channel (a conversation).
EventKey = Literal["id", "channel"]


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    max_message_bytes: int = 64 * 1024
    redact_text: bool = False
    cleaning: CleaningRules = field(default_factory=CleaningRules)
    # Events whose score (the chosen label's probability) is below this carry ``uncertain: true``
    # (their label is kept); None: no event carries the field.
    confidence_threshold: float | None = None
    # Languages in scope (ISO 639-1); events in others carry ``out_of_scope: true`` and windows
    # count them apart. Empty: every language is in scope.
    languages: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class OutRecord:
    """A record to publish, all bytes: the worker's events, dead letters, facts and windows, and
    the replay's outputs. ``topic`` None: the caller's topic; ``partition`` None: by key;
    ``timestamp_ms`` None: the time it is sent; ``value`` None: a tombstone (replayed as read)."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    topic: str | None = None
    timestamp_ms: int | None = None
    partition: int | None = None


@dataclass(frozen=True, slots=True)
class ScoredEvent:
    """An enriched event, before encoding; the windowed aggregates consume these."""

    message: Message
    prediction: Prediction
    processed_at_ms: int
    payload: dict[str, Any]
    origin: str  # the input record's "topic/partition"
    offset: int  # the input record's offset


@dataclass(slots=True)
class BatchOutcome:
    events: list[ScoredEvent] = field(default_factory=list)
    dead_letters: list[OutRecord] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    scored_batches: list[ScoredBatch] = field(default_factory=list)
    shadow: list[OutRecord] = field(default_factory=list)  # one comparison per shadowed message
    shadow_batches: list[ScoredBatch] = field(default_factory=list)
    shadow_failures: int = 0  # takes the shadow could not score (the events are unaffected)
    shadow_agreements: Counter[bool] = field(default_factory=Counter)  # labels equal? -> count
    language_failures: int = 0  # takes whose language detection failed (languages left null)

    def event_records(self, key_by: EventKey = "id") -> list[OutRecord]:
        """The events as records, keyed by the message id, or (``channel``) by the message's
        channel, so one conversation's events share a partition and stay in order (a message
        without a channel is keyed by its id)."""
        return [
            OutRecord(key=event_key(event, key_by), value=encode_json(event.payload))
            for event in self.events
        ]


def split_outcome(
    outcome: BatchOutcome, side_topic: str
) -> tuple[BatchOutcome, list[ScoredEvent], list[OutRecord]]:
    """Take the results of records read from ``side_topic`` (the classify API's texts, scored
    with a take) out of ``outcome``: (what the stream publishes, their events, their dead
    letters). The forward passes stay in the stream's outcome: they ran once for both."""
    side_events = [e for e in outcome.events if e.origin.rsplit("/", 1)[0] == side_topic]
    side_dead = [d for d in outcome.dead_letters if _source_topic(d) == side_topic]
    side_ids = {e.message.id.encode() for e in side_events} | {d.key for d in side_dead}
    stream_dead = [d for d in outcome.dead_letters if _source_topic(d) != side_topic]
    reasons: Counter[str] = Counter()
    for dead in stream_dead:
        reasons[dict(dead.headers).get(HEADER_REASON, b"unknown").decode()] += 1
    stream = BatchOutcome(
        events=[e for e in outcome.events if e.origin.rsplit("/", 1)[0] != side_topic],
        dead_letters=stream_dead,
        reasons=reasons,
        scored_batches=outcome.scored_batches,
        shadow=[r for r in outcome.shadow if r.key not in side_ids],
        shadow_batches=outcome.shadow_batches,
        shadow_failures=outcome.shadow_failures,
        shadow_agreements=outcome.shadow_agreements,
        language_failures=outcome.language_failures,
    )
    return stream, side_events, side_dead


def _source_topic(dead: OutRecord) -> str | None:
    value = dict(dead.headers).get(HEADER_SOURCE_TOPIC)
    return None if value is None else value.decode()


def event_key(event: ScoredEvent, key_by: EventKey) -> bytes:
    if key_by == "channel" and event.message.channel:
        return event.message.channel.encode()
    return event.message.id.encode()


def next_offsets(records: Sequence[RawRecord]) -> dict[tuple[str, int], int]:
    """Per (topic, partition) of a take, the offset after its last record: what committing the
    take means (the exactly-once publisher commits these with the take's outputs)."""
    offsets: dict[tuple[str, int], int] = {}
    for record in records:
        where = (record.topic, record.partition)
        offsets[where] = max(offsets.get(where, 0), record.offset + 1)
    return offsets


@dataclass(frozen=True, slots=True)
class _Cleaned:
    record: RawRecord
    message: Message
    text: str


def process_batch(
    records: Sequence[RawRecord],
    classifier: Classifier,
    config: PipelineConfig,
    now_ms: Callable[[], int],
    *,
    canary: Candidate | None = None,
    shadow: Candidate | None = None,
    detect_languages: LanguageDetector | None = None,
    language_models: Mapping[str, Classifier] | None = None,
) -> BatchOutcome:
    """Turn ``records`` into events and dead letters; never raises for a bad record.

    ``canary``: its share of the message ids is scored by the canary instead (the events say
    which model scored them). ``language_models``: a message in one of their languages (its own
    ``lang``, else the detected one) is scored by that language's model, and is in scope.
    ``shadow``: its share is scored again by the shadow after the primary, and only compared
    (``outcome.shadow``); a shadow failure never touches the events.
    """
    outcome = BatchOutcome()

    def dead_letter(record: RawRecord, reason: DeadLetterReason, detail: str) -> None:
        headers = dead_letter_headers(record, reason, detail, STAGE_OF_REASON[reason], now_ms())
        outcome.dead_letters.append(OutRecord(record.key, record.value or b"", headers))
        outcome.reasons[str(reason)] += 1

    ready: list[_Cleaned] = []
    for record in records:
        try:
            message = decode_message(record, max_bytes=config.max_message_bytes)
        except PoisonRecord as poison:
            dead_letter(record, poison.reason, poison.detail)
            continue
        text = clean_text(message.text, config.cleaning)
        if not text:
            dead_letter(
                record, DeadLetterReason.EMPTY_AFTER_CLEANING, "no text left after cleaning"
            )
            continue
        ready.append(_Cleaned(record, message, text))

    detected: list[str | None] = [None] * len(ready)
    if detect_languages is not None:
        try:
            detected = detect_languages([item.text for item in ready])
        except Exception:  # noqa: BLE001 - a language is an annotation: never worth a take
            outcome.language_failures += 1
    # The message's own lang wins over the detected one.
    languages = {
        id(item): item.message.lang or lang for item, lang in zip(ready, detected, strict=True)
    }
    by_language = language_models or {}
    # Languages with a model of their own are in scope too; None: every language is.
    in_scope = config.languages | frozenset(by_language) if config.languages else None

    def route(item: _Cleaned) -> Classifier:
        """A model for the message's language, else the canary for its share, else the primary."""
        language = (languages[id(item)] or "").lower()
        if language in by_language:
            return by_language[language]
        if canary is not None and in_share(item.message.id, canary.fraction, CANARY_SALT):
            return canary.classifier
        return classifier

    grouped: dict[int, tuple[Classifier, list[_Cleaned]]] = {}
    for item in ready:
        model = route(item)
        grouped.setdefault(id(model), (model, []))[1].append(item)
    scored_items: list[tuple[_Cleaned, Prediction, Classifier]] = []
    for model, items in grouped.values():

        def score(chunk: Sequence[_Cleaned], model: Classifier = model) -> list[Prediction]:
            scored = model.predict([item.text for item in chunk])
            outcome.scored_batches.append(scored)
            return scored.predictions

        done, failed = score_isolating_failures(items, score)
        for failure in failed:
            error = failure.error
            # A model's error message may quote its input: with redaction only the type is kept.
            detail = (
                type(error).__name__ if config.redact_text else f"{type(error).__name__}: {error}"
            )
            dead_letter(failure.item.record, DeadLetterReason.MODEL, detail)
        scored_items += [(item, prediction, model) for item, prediction in done]

    # Input order: the windows keep the highest input offset counted per partition, so facts must
    # leave in the order their records were read.
    position = {id(item): index for index, item in enumerate(ready)}
    scored_items.sort(key=lambda entry: position[id(entry[0])])
    processed_at_ms = now_ms()
    for item, prediction, model in scored_items:
        payload = enrich(item.message, item.text, prediction, model, config, processed_at_ms,
                         languages[id(item)], detecting=detect_languages is not None,
                         in_scope=in_scope)  # fmt: skip
        record = item.record
        outcome.events.append(
            ScoredEvent(
                item.message,
                prediction,
                processed_at_ms,
                payload,
                origin=f"{record.topic}/{record.partition}",
                offset=record.offset,
            )
        )
    if shadow is not None:
        texts = {id(item.message): item.text for item in ready}
        compare_with_shadow(outcome, shadow, texts)
    return outcome


def compare_with_shadow(outcome: BatchOutcome, shadow: Candidate, texts: dict[int, str]) -> None:
    """Score the shadow's share of the events with the shadow; record each comparison."""
    sampled = [e for e in outcome.events if in_share(e.message.id, shadow.fraction, SHADOW_SALT)]
    if not sampled:
        return
    try:
        scored = shadow.classifier.predict([texts[id(event.message)] for event in sampled])
    except Exception:  # noqa: BLE001 - the shadow must never cost the primary its results
        outcome.shadow_failures += 1
        return
    outcome.shadow_batches.append(scored)
    for event, prediction in zip(sampled, scored.predictions, strict=True):
        value = shadow_value(
            event.message, event.prediction, event.payload, prediction, shadow.classifier
        )
        outcome.shadow.append(OutRecord(key=event.message.id.encode(), value=value))
        outcome.shadow_agreements[event.prediction.label == prediction.label] += 1


def enrich(
    message: Message,
    cleaned_text: str,
    prediction: Prediction,
    classifier: Classifier,
    config: PipelineConfig,
    processed_at_ms: int,
    language: str | None = None,
    *,
    detecting: bool = False,
    in_scope: frozenset[str] | None = None,
) -> dict[str, Any]:
    """The enriched event as published (value JSON; the key is the message id). ``language``:
    the message's own or the detected one; ``in_scope``: the languages not out of scope (None:
    every language)."""
    payload: dict[str, Any] = {
        "id": message.id,
        "source": message.source,
        "channel": message.channel,
        "author": message.author,
        "lang": message.lang,
        "label": prediction.label,
        "score": prediction.score,
        "probabilities": prediction.probabilities,
        "model_name": classifier.name,
        "model_version": classifier.version,
        "inference_time_ms": round(prediction.inference_ms, 3),
        "batch_size": prediction.batch_size,
        "text_length": len(message.text),
        "token_count": prediction.token_count,
        "truncated": prediction.truncated,
        "event_time": format_time_ms(message.event_time_ms),
        "processed_at": format_time_ms(processed_at_ms),
    }
    if detecting or message.lang is not None:  # null: the detector could not tell
        payload["lang_detected"] = language
    if in_scope is not None:
        payload["out_of_scope"] = (language or "").lower() not in in_scope
    if config.confidence_threshold is not None:
        payload["uncertain"] = prediction.score < config.confidence_threshold
    if message.gold_label is not None:
        payload["gold_label"] = message.gold_label
    if not config.redact_text:
        payload["text"] = cleaned_text
    return payload
