"""process_batch with a fake classifier: every record leaves as one event or one dead letter."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import orjson
import pytest

from stream.core.aggregation import facts_records
from stream.core.candidates import CANARY_SALT, SHADOW_SALT, Candidate, in_share
from stream.core.cleaning import CleaningRules
from stream.core.pipeline import (
    BatchOutcome,
    OutRecord,
    PipelineConfig,
    next_offsets,
    process_batch,
)
from stream.core.records import Label, Prediction, RawRecord, ScoredBatch

NOW = 1_795_166_102_000  # 2026-11-20T09:15:02.000Z
EVENT_TIME = "2026-11-20T08:00:00.250Z"
TOPIC = "sentiment.input"


class FakeClassifier:
    """POSITIVE if "good" is in the text, else NEGATIVE; raises on any batch holding "boom"."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    @property
    def name(self) -> str:
        return "fake/sentiment"

    @property
    def version(self) -> str:
        return "fake-1"

    def predict(self, texts: Sequence[str]) -> ScoredBatch:
        self.calls.append(list(texts))
        if any("boom" in text for text in texts):
            raise RuntimeError(f"the model exploded on {texts[0]!r}")
        predictions = [self._predict_one(text, len(texts)) for text in texts]
        tokens = [p.token_count for p in predictions]
        return ScoredBatch(
            predictions=predictions,
            model_ms=3.0,
            real_tokens=sum(tokens),
            padded_tokens=len(tokens) * max(tokens),
        )

    @staticmethod
    def _predict_one(text: str, batch_size: int) -> Prediction:
        label: Label = "POSITIVE" if "good" in text else "NEGATIVE"
        other: Label = "NEGATIVE" if label == "POSITIVE" else "POSITIVE"
        return Prediction(
            label=label,
            score=0.875,
            probabilities={label: 0.875, other: 0.125},
            token_count=len(text.split()) + 2,
            truncated=False,
            batch_size=batch_size,
            inference_ms=1.23456,
        )


def fixed_clock() -> int:
    return NOW


def record(value: bytes | None, offset: int, *, key: bytes | None = None) -> RawRecord:
    return RawRecord(
        value=value,
        key=key if key is not None else f"key-{offset}".encode(),
        topic=TOPIC,
        partition=1,
        offset=offset,
        timestamp_ms=NOW - 60_000,
        headers=(("trace-id", f"t{offset}".encode()),),
    )


def message(text: Any, **fields: Any) -> bytes:
    return orjson.dumps({"text": text, "timestamp": EVENT_TIME, **fields})


def run(
    records: Sequence[RawRecord], config: PipelineConfig | None = None
) -> tuple[BatchOutcome, FakeClassifier]:
    classifier = FakeClassifier()
    outcome = process_batch(records, classifier, config or PipelineConfig(), fixed_clock)
    return outcome, classifier


def headers_of(out: OutRecord) -> dict[str, bytes]:
    return dict(out.headers)


def dead_letter_by_offset(outcome: BatchOutcome) -> dict[int, OutRecord]:
    return {int(headers_of(dl)["dlq.source.offset"]): dl for dl in outcome.dead_letters}


# A mixed batch: offset -> (value, what becomes of it)
MIXED: list[tuple[bytes | None, str]] = [
    (message("a good day", id="m0", source="mastodon", author="alice"), "event"),
    (b'{"text": "truncated', "invalid_json"),
    (message("rainy and cold"), "event"),  # no id: derived from the offset
    (b"", "empty_payload"),
    (None, "empty_payload"),
    (message("https://example.com/some/page"), "empty_after_cleaning"),
    (message("boom goes the model", id="m6"), "model"),
    (message(5), "text_not_string"),
    (message("hey @bob, good stuff #GreatDay", id="m8"), "event"),
    (b'{"text": "caf\xc3"}', "invalid_utf8"),
    (message("x" * 500), "oversize"),
    (message("fine", timestamp="\u00b2"), "invalid_field"),
    (message("not good at all", id=1234), "event"),
    (b"[1, 2]", "not_an_object"),
    (message("   "), "empty_text"),
    (message("boom again, good?", id="m15"), "model"),
    (message("the last good one", id="m16"), "event"),
]
MIXED_RECORDS = [record(value, offset) for offset, (value, _) in enumerate(MIXED)]
MIXED_CONFIG = PipelineConfig(max_message_bytes=300)


@pytest.fixture
def mixed() -> tuple[BatchOutcome, FakeClassifier]:
    return run(MIXED_RECORDS, MIXED_CONFIG)


def test_every_record_leaves_as_exactly_one_event_or_dead_letter(
    mixed: tuple[BatchOutcome, FakeClassifier],
) -> None:
    outcome, _ = mixed
    event_ids = [event.message.id for event in outcome.events]
    dead_offsets = [int(headers_of(dl)["dlq.source.offset"]) for dl in outcome.dead_letters]
    expected_events = [o for o, (_, fate) in enumerate(MIXED) if fate == "event"]
    expected_dead = [o for o, (_, fate) in enumerate(MIXED) if fate != "event"]
    assert event_ids == ["m0", f"{TOPIC}/1/2", "m8", "1234", "m16"]
    assert len(event_ids) == len(expected_events)
    assert sorted(dead_offsets) == expected_dead
    assert len(set(dead_offsets)) == len(dead_offsets)


def test_dead_letters_carry_reason_original_bytes_key_and_headers(
    mixed: tuple[BatchOutcome, FakeClassifier],
) -> None:
    outcome, _ = mixed
    by_offset = dead_letter_by_offset(outcome)
    for offset, (value, fate) in enumerate(MIXED):
        if fate == "event":
            continue
        dead = by_offset[offset]
        headers = headers_of(dead)
        assert dead.value == (value or b""), f"offset {offset}: bytes must be untouched"
        assert dead.key == f"key-{offset}".encode()
        assert headers["dlq.reason"] == fate.encode()
        assert headers["dlq.source.topic"] == TOPIC.encode()
        assert headers["dlq.source.partition"] == b"1"
        assert headers["dlq.failed_at"] == b"2026-11-20T09:15:02.000Z"
        assert headers["trace-id"] == f"t{offset}".encode()


def test_reason_counts_match_the_dead_letters(mixed: tuple[BatchOutcome, FakeClassifier]) -> None:
    outcome, _ = mixed
    assert outcome.reasons == Counter(fate for _, fate in MIXED if fate != "event")
    assert outcome.reasons["empty_payload"] == 2
    assert outcome.reasons["model"] == 2


def test_model_failure_dead_letters_only_the_failing_record(
    mixed: tuple[BatchOutcome, FakeClassifier],
) -> None:
    outcome, classifier = mixed
    by_offset = dead_letter_by_offset(outcome)
    for offset in (6, 15):
        headers = headers_of(by_offset[offset])
        assert headers["dlq.stage"] == b"score"
        assert headers["dlq.error"].startswith(b"RuntimeError: the model exploded")
    ready_texts = classifier.calls[0]
    assert len(ready_texts) == 7  # 5 good + 2 boom, all in the first call
    assert ["boom goes the model"] in classifier.calls
    assert ["boom again, good?"] in classifier.calls
    assert len(classifier.calls) > 2, "the failing batch was split and retried"
    assert all(len(call) < len(ready_texts) for call in classifier.calls[1:])
    assert len(outcome.events) == 5


def test_cleaning_applies_to_the_text_the_classifier_sees(
    mixed: tuple[BatchOutcome, FakeClassifier],
) -> None:
    outcome, classifier = mixed
    assert "hey @user, good stuff Great Day" in classifier.calls[0]
    assert not any("@bob" in text for call in classifier.calls for text in call)
    event = next(e for e in outcome.events if e.message.id == "m8")
    assert event.payload["text"] == "hey @user, good stuff Great Day"
    assert event.message.text == "hey @bob, good stuff #GreatDay"  # the message itself is kept


def test_cleaning_rules_from_config_are_honoured() -> None:
    config = PipelineConfig(cleaning=CleaningRules(mentions=False))
    _, classifier = run([record(message("hey @bob good"), 0)], config)
    assert classifier.calls == [["hey @bob good"]]


def test_text_that_is_only_a_link_is_dead_lettered_as_empty_after_cleaning() -> None:
    outcome, classifier = run([record(message("  https://t.co/abc123  "), 0)])
    assert outcome.events == []
    assert classifier.calls == []
    (dead,) = outcome.dead_letters
    assert headers_of(dead)["dlq.reason"] == b"empty_after_cleaning"
    assert headers_of(dead)["dlq.stage"] == b"clean"


def test_event_payload_has_every_field() -> None:
    value = message(
        "hey @bob, good stuff",
        id="m1",
        source="mastodon",
        channel="#general",
        author="alice",
        lang="en",
    )
    outcome, _ = run([record(value, 0), record(message("meh", id="m2"), 1)])
    payload = outcome.events[0].payload
    assert payload == {
        "id": "m1",
        "source": "mastodon",
        "channel": "#general",
        "author": "alice",
        "lang": "en",
        "label": "POSITIVE",
        "score": 0.875,
        "probabilities": {"POSITIVE": 0.875, "NEGATIVE": 0.125},
        "model_name": "fake/sentiment",
        "model_version": "fake-1",
        "inference_time_ms": 1.235,
        "batch_size": 2,
        "text_length": len("hey @bob, good stuff"),
        "token_count": 6,
        "truncated": False,
        "event_time": EVENT_TIME,
        "processed_at": "2026-11-20T09:15:02.000Z",
        "text": "hey @user, good stuff",
        "lang_detected": "en",  # the message's own lang
    }
    assert outcome.events[1].payload["label"] == "NEGATIVE"
    assert outcome.events[1].payload["source"] is None


def test_event_payload_carries_gold_label_when_given() -> None:
    outcome, _ = run([record(message("good", label=4), 0), record(message("good"), 1)])
    assert outcome.events[0].payload["gold_label"] == "4"
    assert "gold_label" not in outcome.events[1].payload


def test_event_without_own_timestamp_uses_kafka_timestamp() -> None:
    value = orjson.dumps({"text": "good"})
    outcome, _ = run([record(value, 0)])
    assert outcome.events[0].payload["event_time"] == "2026-11-20T09:14:02.000Z"


SECRET_TEXT = "my secret diary entry about a good zebra-7f3a"


def test_redacted_events_never_contain_the_text() -> None:
    records = [
        record(message(SECRET_TEXT, id="s1"), 0),
        record(message("call @bob about the good zebra-7f3a", id="s2"), 1),
    ]
    outcome, classifier = run(records, PipelineConfig(redact_text=True))
    assert classifier.calls  # the model still saw the text ...
    assert len(outcome.events) == 2
    for event in outcome.events:
        assert "text" not in event.payload
    for out in outcome.event_records():
        assert out.value is not None
        assert b"zebra-7f3a" not in out.value  # ... but no published event does
        assert b"secret diary" not in out.value
        assert b"@user" not in out.value
        assert all(b"zebra" not in value for _, value in out.headers)


def test_redacted_model_dead_letters_do_not_quote_the_error_message() -> None:
    records = [record(message("boom zebra-7f3a", id="b1"), 0), record(message("good", id="g1"), 1)]
    outcome, _ = run(records, PipelineConfig(redact_text=True))
    (dead,) = outcome.dead_letters
    headers = dict(dead.headers)
    assert headers["dlq.reason"] == b"model"
    assert headers["dlq.error"] == b"RuntimeError"
    assert all(b"zebra" not in value for value in headers.values())


def test_unredacted_events_do_contain_the_text() -> None:
    outcome, _ = run([record(message(SECRET_TEXT, id="s1"), 0)])
    (out,) = outcome.event_records()
    assert SECRET_TEXT.encode() in (out.value or b"")


def test_event_records_are_keyed_by_message_id_and_encode_the_payload(
    mixed: tuple[BatchOutcome, FakeClassifier],
) -> None:
    outcome, _ = mixed
    records = outcome.event_records()
    assert [out.key for out in records] == [b"m0", f"{TOPIC}/1/2".encode(), b"m8", b"1234", b"m16"]
    for out, event in zip(records, outcome.events, strict=True):
        assert orjson.loads(out.value or b"") == event.payload


def test_events_keep_input_order_whatever_the_labels() -> None:
    texts = ["good 1", "bad 2", "good 3", "boom 4", "bad 5", "good 6", "bad 7", "good 8"]
    records = [record(message(text, id=f"id{i}"), i) for i, text in enumerate(texts)]
    outcome, _ = run(records)
    assert [e.message.id for e in outcome.events] == [f"id{i}" for i in range(8) if i != 3]
    assert [e.payload["text"] for e in outcome.events] == [t for t in texts if "boom" not in t]


def test_a_batch_where_every_text_fails_in_the_model_is_all_dead_letters() -> None:
    records = [record(message(f"boom {i}"), i) for i in range(5)]
    outcome, classifier = run(records)
    assert outcome.events == []
    assert outcome.reasons == Counter({"model": 5})
    assert sorted(int(headers_of(d)["dlq.source.offset"]) for d in outcome.dead_letters) == list(
        range(5)
    )
    assert all([f"boom {i}"] in classifier.calls for i in range(5))


def test_a_batch_with_nothing_valid_never_calls_the_classifier() -> None:
    outcome, classifier = run([record(b"", 0), record(b"nope", 1)])
    assert classifier.calls == []
    assert outcome.events == []
    assert len(outcome.dead_letters) == 2


def test_an_empty_batch_produces_nothing() -> None:
    outcome, classifier = run([])
    assert (outcome.events, outcome.dead_letters, classifier.calls) == ([], [], [])
    assert outcome.reasons == Counter()


def test_scored_batches_record_every_successful_forward_pass(
    mixed: tuple[BatchOutcome, FakeClassifier],
) -> None:
    outcome, classifier = mixed
    succeeded = [call for call in classifier.calls if not any("boom" in t for t in call)]
    assert [len(batch.predictions) for batch in outcome.scored_batches] == [
        len(call) for call in succeeded
    ]
    assert sum(len(batch.predictions) for batch in outcome.scored_batches) == 5


def test_next_offsets_commit_past_the_last_record_of_each_partition() -> None:
    records = [
        record(b"{}", 7),
        record(b"{}", 5),
        RawRecord(value=b"{}", key=None, topic=TOPIC, partition=3, offset=0, timestamp_ms=None),
        RawRecord(value=b"{}", key=None, topic="other", partition=1, offset=41, timestamp_ms=None),
    ]
    assert next_offsets(records) == {(TOPIC, 1): 8, (TOPIC, 3): 1, ("other", 1): 42}
    assert next_offsets([]) == {}


@pytest.mark.parametrize(("threshold", "uncertain"), [(0.9, True), (0.875, False), (0.7, False)])
def test_events_below_the_confidence_threshold_are_uncertain_and_keep_their_label(
    threshold: float, uncertain: bool
) -> None:
    config = PipelineConfig(confidence_threshold=threshold)
    outcome, _ = run([record(message("good stuff"), 0), record(message("meh"), 1)], config)
    assert [e.payload["uncertain"] for e in outcome.events] == [uncertain, uncertain]
    assert [e.payload["label"] for e in outcome.events] == ["POSITIVE", "NEGATIVE"]
    facts = [orjson.loads(r.value or b"") for r in facts_records(outcome, input_partitions=4)]
    assert all(("u" in fact) == uncertain for r in facts for fact in r["facts"])


def test_without_a_confidence_threshold_events_carry_no_uncertain_field() -> None:
    outcome, _ = run([record(message("good stuff"), 0)])
    assert "uncertain" not in outcome.events[0].payload


# --- canary and shadow --------------------------------------------------------------------------


class RenamedClassifier(FakeClassifier):
    """The fake model under another version; ``flip`` inverts its labels."""

    def __init__(self, version: str, flip: bool = False, fail: bool = False) -> None:
        super().__init__()
        self._version, self.flip, self.fail = version, flip, fail

    @property
    def version(self) -> str:
        return self._version

    def predict(self, texts: Sequence[str]) -> ScoredBatch:
        if self.fail:
            raise RuntimeError("shadow broke")
        scored = super().predict(texts)
        if not self.flip:
            return scored
        flipped = [
            replace(p, label="NEGATIVE" if p.label == "POSITIVE" else "POSITIVE")
            for p in scored.predictions
        ]
        return replace(scored, predictions=flipped)


def many_records(count: int) -> list[RawRecord]:
    return [record(message("good stuff" if i % 2 else "meh", id=f"m{i}"), i) for i in range(count)]


def test_in_share_is_stable_and_close_to_the_fraction() -> None:
    ids = [f"message-{i}" for i in range(4000)]
    share = [in_share(m, 0.25, CANARY_SALT) for m in ids]
    assert share == [in_share(m, 0.25, CANARY_SALT) for m in ids]
    assert 0.22 < sum(share) / len(ids) < 0.28
    assert all(in_share(m, 1.0, CANARY_SALT) for m in ids[:10])
    assert not any(in_share(m, 0.0, CANARY_SALT) for m in ids[:10])
    # shadow and canary samples are independent of each other
    assert share != [in_share(m, 0.25, SHADOW_SALT) for m in ids]


def test_a_canary_scores_its_share_and_events_say_which_model_scored_them() -> None:
    records = many_records(200)
    canary = Candidate(RenamedClassifier("2.0.0"), fraction=0.3)
    outcome = process_batch(records, FakeClassifier(), PipelineConfig(), fixed_clock, canary=canary)
    versions = {e.message.id: e.payload["model_version"] for e in outcome.events}
    assert len(versions) == 200, "every record is one event"
    for message_id, version in versions.items():
        assert version == ("2.0.0" if in_share(message_id, 0.3, CANARY_SALT) else "fake-1")
    assert 40 < list(versions.values()).count("2.0.0") < 80
    assert [e.offset for e in outcome.events] == sorted(e.offset for e in outcome.events), (
        "events leave in input order (the windows dedupe by the highest offset)"
    )
    facts = facts_records(outcome, input_partitions=4, per_model=True)
    keys = {orjson.loads(r.key or b"") for r in facts}
    assert {"model=2.0.0", "model=fake-1"} <= keys


def test_a_shadow_is_compared_and_never_changes_the_events() -> None:
    records = many_records(100)
    plain = process_batch(records, FakeClassifier(), PipelineConfig(), fixed_clock)
    shadow = Candidate(RenamedClassifier("9.9.9", flip=True), fraction=0.5)
    shadowed = process_batch(
        records, FakeClassifier(), PipelineConfig(), fixed_clock, shadow=shadow
    )
    assert [e.payload for e in shadowed.events] == [e.payload for e in plain.events]
    compared = [orjson.loads(r.value or b"") for r in shadowed.shadow]
    assert {c["id"] for c in compared} == {
        e.message.id for e in plain.events if in_share(e.message.id, 0.5, SHADOW_SALT)
    }
    assert all(not c["agree"] for c in compared), "the flipped shadow disagrees on every message"
    assert {c["shadow"]["model_version"] for c in compared} == {"9.9.9"}
    assert {c["primary"]["model_version"] for c in compared} == {"fake-1"}
    assert shadowed.shadow_agreements == {False: len(compared)}


def test_a_failing_shadow_costs_the_primary_nothing() -> None:
    records = many_records(10)
    shadow = Candidate(RenamedClassifier("9.9.9", fail=True), fraction=1.0)
    outcome = process_batch(records, FakeClassifier(), PipelineConfig(), fixed_clock, shadow=shadow)
    assert len(outcome.events) == 10
    assert not outcome.dead_letters
    assert outcome.shadow == []
    assert outcome.shadow_failures == 1


def test_detected_languages_mark_events_and_the_messages_own_lang_wins() -> None:
    records = [
        record(message("good stuff", id="a"), 0),
        record(message("gut", id="b", lang="de"), 1),
        record(message("bien", id="c"), 2),
    ]
    config = PipelineConfig(languages=frozenset({"en"}))

    def detect(texts: Sequence[str]) -> list[str | None]:
        return ["en" if "good" in text else "fr" if "bien" in text else None for text in texts]

    outcome = process_batch(records, FakeClassifier(), config, fixed_clock, detect_languages=detect)
    payloads = {e.message.id: e.payload for e in outcome.events}
    assert payloads["a"]["lang_detected"] == "en"
    assert payloads["b"]["lang_detected"] == "de"  # given by the producer, not detected
    assert payloads["c"]["lang_detected"] == "fr"
    assert [payloads[m]["out_of_scope"] for m in "abc"] == [False, True, True]
    facts = [orjson.loads(r.value or b"") for r in facts_records(outcome, input_partitions=4)]
    flagged = {fact["n"] for r in facts for fact in r["facts"] if fact.get("x")}
    assert flagged == {1, 2}


def test_without_languages_nothing_is_out_of_scope() -> None:
    outcome = process_batch(
        [record(message("bien"), 0)], FakeClassifier(), PipelineConfig(), fixed_clock,
        detect_languages=lambda texts: ["fr"] * len(texts),
    )  # fmt: skip
    assert outcome.events[0].payload["lang_detected"] == "fr"
    assert "out_of_scope" not in outcome.events[0].payload


def test_a_language_with_its_own_model_is_scored_by_it_and_in_scope() -> None:
    records = [
        record(message("good stuff", id="en-1"), 0),
        record(message("gut", id="de-1", lang="de"), 1),
        record(message("bien", id="fr-1"), 2),
    ]
    german = RenamedClassifier("de-1.0.0")

    def detect(texts: Sequence[str]) -> list[str | None]:
        return ["fr" if "bien" in text else "en" for text in texts]

    outcome = process_batch(
        records, FakeClassifier(), PipelineConfig(languages=frozenset({"en"})), fixed_clock,
        detect_languages=detect, language_models={"de": german},
    )  # fmt: skip
    payloads = {e.message.id: e.payload for e in outcome.events}
    assert payloads["de-1"]["model_version"] == "de-1.0.0"
    assert payloads["de-1"]["out_of_scope"] is False
    assert payloads["en-1"]["model_version"] == "fake-1"
    assert payloads["fr-1"]["model_version"] == "fake-1"
    assert payloads["fr-1"]["out_of_scope"] is True
    assert german.calls == [["gut"]]
    assert [e.offset for e in outcome.events] == [0, 1, 2]


def test_every_event_carries_lang_detected_while_detecting_even_when_unknown() -> None:
    outcome = process_batch(
        [record(message("😂😂", id="e"), 0)], FakeClassifier(), PipelineConfig(), fixed_clock,
        detect_languages=lambda texts: [None] * len(texts),
    )  # fmt: skip
    assert outcome.events[0].payload["lang_detected"] is None


def test_a_failing_language_detector_leaves_languages_null_and_loses_nothing() -> None:
    def broken(texts: Sequence[str]) -> list[str | None]:
        raise RuntimeError("detector broke")

    outcome = process_batch(
        many_records(5), FakeClassifier(), PipelineConfig(), fixed_clock, detect_languages=broken
    )
    assert len(outcome.events) == 5
    assert all(e.payload["lang_detected"] is None for e in outcome.events)
    assert outcome.language_failures == 1


def test_events_can_be_keyed_by_channel_in_input_order() -> None:
    """SENTISTREAM_EVENT_KEY=channel: one conversation's events share a key (so a partition), in
    the order the messages came; a message without a channel keeps its id as key."""
    texts = [("good a", "room-1"), ("bad b", "room-2"), ("good c", "room-1"), ("bad d", None)]
    records = [
        record(message(text, id=f"c{i}", **({"channel": ch} if ch else {})), i)
        for i, (text, ch) in enumerate(texts)
    ]
    outcome, _ = run(records)
    keys = [out.key for out in outcome.event_records("channel")]
    assert keys == [b"room-1", b"room-2", b"room-1", b"c3"]
    assert [out.key for out in outcome.event_records()] == [b"c0", b"c1", b"c2", b"c3"]
    ids = [orjson.loads(out.value or b"")["id"] for out in outcome.event_records("channel")]
    assert ids == ["c0", "c1", "c2", "c3"]
