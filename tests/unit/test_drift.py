"""Drift scores (stream.core.drift) on known shifts, and a control drawn from the reference's own
distribution that must stay quiet."""

from __future__ import annotations

import random
from typing import Any

import pytest

from stream.core.drift import (
    DriftReferenceError,
    DriftTracker,
    Profile,
    compare,
    js_divergence,
    length_bin,
    psi,
)

WINDOW_MS = 300_000


def event(
    rng: random.Random,
    *,
    positive_share: float = 0.5,
    mean_tokens: float = 20.0,
    confident: bool = True,
    source: str = "twitter",
    gold: bool = False,
) -> dict[str, Any]:
    label = "POSITIVE" if rng.random() < positive_share else "NEGATIVE"
    score = rng.uniform(0.8, 1.0) if confident else rng.uniform(0.5, 0.65)
    tokens = max(1, int(rng.gauss(mean_tokens, mean_tokens / 4)))
    payload: dict[str, Any] = {
        "label": label, "score": score, "token_count": tokens, "truncated": tokens >= 128,
        "uncertain": score < 0.7, "source": source,
    }  # fmt: skip
    if gold:
        # right with probability = score: a calibrated model
        right = rng.random() < score
        payload["gold_label"] = (
            label if right else ("NEGATIVE" if label == "POSITIVE" else "POSITIVE")
        )
    return payload


def profile_of(events: list[dict[str, Any]]) -> Profile:
    profile = Profile()
    for item in events:
        profile.add_event(item)
    return profile


@pytest.fixture
def reference() -> Profile:
    rng = random.Random(1)
    return profile_of([event(rng) for _ in range(5_000)])


def drift(reference: Profile, events: list[dict[str, Any]]) -> dict[str, Any]:
    record = compare(
        reference, profile_of(events), window_start_ms=0, window_end_ms=WINDOW_MS,
        source="all", min_count=100,
    )  # fmt: skip
    return record.to_json()


def test_a_window_from_the_reference_distribution_stays_quiet(reference: Profile) -> None:
    rng = random.Random(2)
    record = drift(reference, [event(rng) for _ in range(1_000)])
    assert record["drifted"] == []
    assert record["max_psi"] < 0.05, record["psi"]
    assert max(record["js"].values()) < 0.02


def test_longer_texts_move_the_length_distribution_only(reference: Profile) -> None:
    rng = random.Random(3)
    record = drift(reference, [event(rng, mean_tokens=60) for _ in range(1_000)])
    assert record["drifted"] == ["token_length"]
    assert record["psi"]["token_length"] > 1.0
    assert record["psi"]["label"] < 0.05


def test_a_label_ratio_shift_is_flagged(reference: Profile) -> None:
    rng = random.Random(4)
    record = drift(reference, [event(rng, positive_share=0.15) for _ in range(1_000)])
    assert "label" in record["drifted"]
    assert record["psi"]["label"] > 0.2
    assert record["psi"]["token_length"] < 0.05


def test_a_confidence_collapse_is_flagged_with_the_uncertain_share(reference: Profile) -> None:
    rng = random.Random(5)
    record = drift(reference, [event(rng, confident=False) for _ in range(1_000)])
    assert {"confidence", "uncertain"} <= set(record["drifted"])
    assert record["js"]["confidence"] > 0.9  # the score bins barely overlap


def test_a_small_window_is_reported_but_never_flagged(reference: Profile) -> None:
    rng = random.Random(6)
    record = drift(reference, [event(rng, positive_share=0.0) for _ in range(20)])
    assert record["psi"]["label"] > 0.2
    assert record["enough_events"] is False
    assert record["drifted"] == []


def test_psi_and_js_of_known_distributions() -> None:
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(
        (0.9 - 0.5) * 0.5877866649 + (0.1 - 0.5) * -1.6094379124, rel=1e-6
    )
    assert js_divergence([1.0, 0.0], [0.0, 1.0]) == pytest.approx(1.0)
    assert js_divergence([0.3, 0.7], [0.3, 0.7]) == 0.0
    assert length_bin(0) == "0-3"
    assert length_bin(20) == "16-23"
    assert length_bin(600) == "512+"


def test_accuracy_and_calibration_error_from_gold_labels() -> None:
    rng = random.Random(7)
    calibrated = profile_of([event(rng, gold=True) for _ in range(4_000)])
    assert calibrated.accuracy == pytest.approx(0.9, abs=0.02)
    assert calibrated.ece is not None
    assert calibrated.ece < 0.03
    # the same scores, but the model is right only half the time: overconfident
    wrong = profile_of([
        {**item, "gold_label": rng.choice(["POSITIVE", "NEGATIVE"])}
        for item in (event(rng) for _ in range(4_000))
    ])  # fmt: skip
    assert wrong.ece is not None
    assert wrong.ece > 0.35


def test_the_tracker_closes_windows_by_event_time_per_source(reference: Profile) -> None:
    rng = random.Random(8)
    tracker = DriftTracker(reference, window_ms=WINDOW_MS, grace_ms=10_000, min_count=10)
    for index in range(200):
        source = "twitter" if index % 2 else "reddit"
        tracker.add_event(event(rng, source=source), event_time_ms=index * 1_000, origin="in/0")
    tracker.add_dead_letter("invalid_json", time_ms=150_000, origin="in/0")
    assert tracker.close_due() == []  # stream time 199 s: the first window is still open
    tracker.add_event(event(rng), event_time_ms=WINDOW_MS + 10_000, origin="in/0")
    closed = tracker.close_due()
    assert [(r.window_start_ms, r.source) for r in closed] == [
        (0, "all"), (0, "source=reddit"), (0, "source=twitter"),
    ]  # fmt: skip
    overall = closed[0]
    assert (overall.events, overall.dead_letters) == (200, 1)
    assert overall.dead_letter_reasons == {"invalid_json": 1}
    tracker.add_event(event(rng), event_time_ms=5_000, origin="in/0")  # for a closed window: late
    assert tracker.late_events == 1
    assert [r.window_start_ms for r in tracker.flush()] == [WINDOW_MS, WINDOW_MS]


def test_a_partition_read_ahead_does_not_make_the_others_late(reference: Profile) -> None:
    rng = random.Random(9)
    tracker = DriftTracker(reference, window_ms=WINDOW_MS, grace_ms=0, min_count=1,
                           idle_ms=30_000)  # fmt: skip
    tracker.add_event(event(rng), event_time_ms=1_000, origin="in/1", now_ms=0)
    tracker.add_event(event(rng), event_time_ms=WINDOW_MS * 3, origin="in/0", now_ms=1_000)
    assert tracker.close_due(now_ms=1_000) == []  # in/1 holds stream time back at 1 s
    tracker.add_event(event(rng), event_time_ms=2_000, origin="in/1", now_ms=2_000)
    assert tracker.late_events == 0
    # in/1 goes quiet: after idle_ms of wall time it stops holding the window open
    closed = tracker.close_due(now_ms=40_000)
    assert next((r.window_start_ms, r.source, r.events) for r in closed) == (0, "all", 2)


def test_only_gold_labels_that_name_a_class_count() -> None:
    profile = Profile()
    for gold in ("positive", "POS", "Negative", "4", "1", None):
        profile.add_event({"label": "POSITIVE", "score": 0.9, "token_count": 5, "gold_label": gold})
    assert profile.labelled == 3
    assert profile.correct == 2


def test_a_profile_survives_json_and_a_foreign_file_is_refused(reference: Profile) -> None:
    again = Profile.from_json(reference.to_json())
    assert again.counts == reference.counts
    assert again.events == reference.events
    with pytest.raises(DriftReferenceError, match="sentistream drift reference"):
        Profile.from_json({"format": 99})
