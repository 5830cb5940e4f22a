"""A CI-sized chaos run (bench/chaos.py) on each broker: a steady stream with fuzzed bad records
while the worker is SIGKILLed twice (restarted at once), a second worker joins and is SIGKILLed
(the first takes its partitions over), and the broker is paused for 20 s. Nothing may be lost,
every bad record must be dead-lettered with its reason, every closed window must be exact, and
no input partition may have lag without progress for more than 30 s."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import ChaosOptions, render, run_chaos

pytestmark = [pytest.mark.slow]

MAX_STALL_S = 30.0


@pytest.mark.parametrize(
    "broker",
    [
        pytest.param("embedded", id="embedded"),
        pytest.param("kafka", id="kafka", marks=pytest.mark.kafka_jars),
    ],
)
def test_a_chaos_run_loses_nothing_and_keeps_every_closed_window_exact(
    broker: str, tmp_path: Path, minilm: Path
) -> None:
    opts = ChaosOptions(
        broker=broker,
        messages=2000,
        rate=25,
        kills=2,
        terms=0,
        joins=0,
        join_kills=1,
        pauses=1,
        pause_s=20,
        model=minilm,
        workdir=tmp_path,
        # Kafka: the restarted worker keeps its identity (static membership), so a SIGKILL
        # costs no 60 s session timeout. The embedded broker's session timeout is 6 s.
        static_membership=broker == "kafka",
    )
    result = run_chaos(opts, say=lambda _line: None)
    report = render(result)
    assert result["lost"] == 0, report
    assert result["distinct_events"] == result["good_inputs"], report
    assert result["bad_not_dead_lettered"] == 0, report
    assert result["bad_with_wrong_reason"] == 0, report
    assert result["label_disagreements"] == 0, report
    assert result["windows_total"] > 0, report
    assert result["windows_exact"] == result["windows_total"], result["inexact_windows"]
    assert result["longest_stall_s"] <= MAX_STALL_S, report
    pause = next(d for d in result["disruptions"] if d["kind"] == "pause")
    assert pause["caught_up_after_s"] is not None, report
