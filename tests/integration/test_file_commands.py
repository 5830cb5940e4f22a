"""``sentistream produce`` and ``sentistream tail`` against the test broker (no worker needed)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.admin import ensure_topics
from connectors.producer import RecordProducer
from connectors.sink import ConsumedRecord, read_topics
from stream.cli import main
from stream.core.codec import dead_letter_headers
from stream.core.errors import DeadLetterReason, Stage
from stream.core.records import RawRecord
from stream.settings import KafkaSettings

# File formats and the tail printer are above the broker: one broker is enough (Apache Kafka).
pytestmark = [pytest.mark.broker, pytest.mark.one_broker]

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
FAILED_AT_MS = 1_795_166_102_000  # 2026-11-20T09:15:02.000Z


@pytest.fixture
def broker_env(kafka: KafkaSettings, monkeypatch: pytest.MonkeyPatch) -> KafkaSettings:
    """The commands read the broker from the environment, as a user's shell gives it."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka.bootstrap_servers)
    monkeypatch.setenv("KAFKA_BROKER_PROFILE", str(kafka.broker_profile))
    return kafka


def new_topic(kafka: KafkaSettings, partitions: int = 2) -> str:
    name = f"test.{uuid.uuid4().hex[:10]}.files"
    ensure_topics(kafka, {name: partitions})
    return name


def read_back(kafka: KafkaSettings, topic: str) -> list[ConsumedRecord]:
    """Everything on ``topic``: the command has flushed, so it is all there once assigned."""
    return list(read_topics(kafka, [topic], idle_timeout=2.0, deadline=time.monotonic() + 60))


def by_key(records: list[ConsumedRecord]) -> dict[bytes | None, Any]:
    keyed = {record.key: orjson.loads(record.value or b"") for record in records}
    assert len(keyed) == len(records), "one record per key"
    return keyed


def write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_produce_jsonl_sends_each_valid_line_keyed_by_id_and_lists_skipped_lines(
    broker_env: KafkaSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = new_topic(broker_env)
    path = write(
        tmp_path,
        "posts.jsonl",
        b'{"id": "p1", "text": "love it", "source": "reddit"}\n'
        b"{oops\n"
        b"\n"
        b'{"text": "no id, no source"}\n'
        b'{"id": 42, "text": 17}\n',
    )
    code = main(["produce", str(path), "--topic", topic, "--source", "twitter"])
    out = capsys.readouterr().out
    assert code == 0
    summary = out.splitlines()
    assert summary[2].startswith("  line 2: invalid_json: not JSON: ")  # orjson's own words
    assert summary[:2] + summary[3:] == [
        f"sent 2 records to {topic}, 0 failed, 3 lines skipped",
        "skipped:",
        "  line 3: empty line",
        "  line 5: text_not_string: 'text' must be a string, got number",
    ]
    assert by_key(read_back(broker_env, topic)) == {
        b"p1": {"id": "p1", "text": "love it", "source": "reddit"},
        b"posts:4": {"id": "posts:4", "text": "no id, no source", "source": "twitter"},
    }


def test_produce_text_from_stdin_wraps_each_line_with_a_line_id(
    broker_env: KafkaSettings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = new_topic(broker_env)
    stdin = io.TextIOWrapper(io.BytesIO("first post\n\nsecond 👍\r\n".encode()))
    monkeypatch.setattr(sys, "stdin", stdin)
    code = main(["produce", "-", "--format", "text", "--topic", topic, "--id-prefix", "chat"])
    assert code == 0
    assert capsys.readouterr().out.startswith(f"sent 2 records to {topic}, 0 failed, 1 lines")
    assert by_key(read_back(broker_env, topic)) == {
        b"chat:1": {"id": "chat:1", "text": "first post"},
        b"chat:3": {"id": "chat:3", "text": "second 👍"},
    }


def test_produce_csv_maps_columns_and_stamps_the_channel(
    broker_env: KafkaSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = new_topic(broker_env)
    path = write(
        tmp_path,
        "export.tsv",
        b"when\tmsg\tref\tgold\n"
        b"2026-11-20T09:15:02Z\tgreat, thanks\tr-1\tpositive\n"
        b"1795166102000\t\tr-2\tnegative\n"
        b"2026-11-20T09:16:00Z\tnot great\tr-3\tnegative\n",
    )
    code = main(
        [
            "produce",
            str(path),
            "--topic",
            topic,
            "--format",
            "csv",
            "--delimiter",
            "tab",
            "--text-column",
            "msg",
            "--id-column",
            "2",
            "--label-column",
            "gold",
            "--timestamp-column",
            "when",
            "--channel",
            "support",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines() == [
        f"sent 2 records to {topic}, 0 failed, 1 lines skipped",
        "skipped:",
        "  line 3: empty text",
    ]
    assert by_key(read_back(broker_env, topic)) == {
        b"r-1": {
            "id": "r-1",
            "text": "great, thanks",
            "label": "positive",
            "timestamp": "2026-11-20T09:15:02Z",
            "channel": "support",
        },
        b"r-3": {
            "id": "r-3",
            "text": "not great",
            "label": "negative",
            "timestamp": "2026-11-20T09:16:00Z",
            "channel": "support",
        },
    }


def test_produce_sentiment140_reads_latin1_and_utf8_lines(
    broker_env: KafkaSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = new_topic(broker_env)
    path = write(
        tmp_path,
        "testdata.csv",
        b'"0","11","Mon Apr 06 22:19:45 PDT 2009","NO_QUERY","ann","caf\xe9 was cold"\n'
        + '"4","12","Mon Apr 06 22:20:00 PDT 2009","kindle2","bob","naïve fun"\n'.encode()
        + b'"4","13","Mon Apr 06 22:20:00 PDT 2009","kindle2","short row"\n',
    )
    code = main(["produce", str(path), "--topic", topic, "--format", "sentiment140"])
    out = capsys.readouterr().out
    assert code == 0
    assert "  line 3: expected 6 columns, got 5" in out.splitlines()
    assert by_key(read_back(broker_env, topic)) == {
        b"11": {
            "id": "11",
            "text": "café was cold",
            "label": "0",
            "author": "ann",
            "timestamp": "2009-04-06T22:19:45-07:00",
        },
        b"12": {
            "id": "12",
            "text": "naïve fun",
            "label": "4",
            "author": "bob",
            "timestamp": "2009-04-06T22:20:00-07:00",
        },
    }


def test_produce_tweeteval_pairs_texts_with_the_labels_file(
    broker_env: KafkaSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = new_topic(broker_env)
    text = write(tmp_path, "val_text.txt", b"what a day \n@user no thanks \n")
    write(tmp_path, "val_labels.txt", b"2\n0\n")
    assert main(["produce", str(text), "--topic", topic, "--format", "tweeteval"]) == 0
    assert capsys.readouterr().out.startswith(f"sent 2 records to {topic}, 0 failed, 0 lines")
    assert by_key(read_back(broker_env, topic)) == {
        b"val_text:1": {"id": "val_text:1", "text": "what a day ", "label": "2"},
        b"val_text:2": {"id": "val_text:2", "text": "@user no thanks ", "label": "0"},
    }


def test_produce_tweeteval_with_a_mismatched_labels_file_sends_nothing(
    broker_env: KafkaSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = new_topic(broker_env)
    text = write(tmp_path, "val_text.txt", b"one\ntwo\nthree\n")
    labels = write(tmp_path, "gold.txt", b"1\n2\n")
    args = [
        "produce",
        str(text),
        "--topic",
        topic,
        "--format",
        "tweeteval",
        "--labels",
        str(labels),
    ]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        "sentistream produce: val_text.txt has 3 lines but gold.txt has 2: "
        "every text line needs exactly one label"
    )
    assert read_back(broker_env, topic) == []


def test_produce_sst2_sends_the_first_sentences_of_the_glue_dev_set(
    broker_env: KafkaSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = new_topic(broker_env)
    path = SHARED_DATA / "sst2" / "glue_dev.tsv"
    if not path.exists():
        pytest.fail(f"{path} is missing: the tests need ../shared beside the project checkout")
    code = main(["produce", str(path), "--topic", topic, "--format", "sst2", "--limit", "3"])
    assert code == 0
    assert capsys.readouterr().out.startswith(f"sent 3 records to {topic}, 0 failed, 0 lines")
    rows = path.read_text(encoding="utf-8").splitlines()[1:4]
    expected = {}
    for line_no, row in enumerate(rows, start=2):
        sentence, label = row.rsplit("\t", 1)
        message_id = f"glue_dev:{line_no}"
        expected[message_id.encode()] = {"id": message_id, "text": sentence, "label": label}
    assert by_key(read_back(broker_env, topic)) == expected


def test_produce_raw_sends_every_non_blank_line_byte_for_byte(
    broker_env: KafkaSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = new_topic(broker_env, partitions=1)
    lines = [b'{"id": "r1", "text":   "spaced"}', b"this is not json \xff", b'{"text": "no id"}']
    path = write(tmp_path, "raw.jsonl", b"\n".join([lines[0], lines[1], b"", lines[2]]) + b"\n")
    assert main(["produce", str(path), "--topic", topic, "--format", "raw"]) == 0
    assert capsys.readouterr().out.startswith(f"sent 3 records to {topic}, 0 failed, 1 lines")
    records = read_back(broker_env, topic)
    assert [(r.value, r.key) for r in records] == [
        (lines[0], b"r1"),
        (lines[1], None),
        (lines[2], None),
    ]


def test_produce_strict_stops_at_the_first_malformed_line(
    broker_env: KafkaSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = new_topic(broker_env)
    path = write(tmp_path, "s.jsonl", b'{"text": "a"}\n\n{"text": "b"}\n[]\n{"text": "c"}\n')
    assert main(["produce", str(path), "--topic", topic, "--strict"]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        "sentistream produce: line 4: not_an_object: expected a JSON object, got array (--strict)"
    )
    assert captured.out.startswith(f"sent 2 records to {topic}, 0 failed, 2 lines skipped")
    assert set(by_key(read_back(broker_env, topic))) == {b"s:1", b"s:3"}


def test_produce_counts_a_line_too_large_for_the_producer_as_failed(
    broker_env: KafkaSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = new_topic(broker_env)
    huge = "x" * (2 * 1024 * 1024)
    path = write(tmp_path, "big.txt", f"small one\n{huge}\nsmall two\n".encode())
    assert main(["produce", str(path), "--topic", topic, "--format", "text"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"sent 2 records to {topic}, 1 failed, 0 lines skipped"
    assert out[1] == "failed:"
    assert out[2].startswith("  line 2: ")
    assert set(by_key(read_back(broker_env, topic))) == {b"big:1", b"big:3"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--delimiter", ";"], "--delimiter applies to --format csv only"),
        (["--format", "text", "--labels", "x"], "--labels applies to --format tweeteval only"),
        (["--format", "raw", "--source", "s"], "--format raw sends lines untouched"),
    ],
)
def test_produce_rejects_options_that_mean_nothing_for_the_format(
    broker_env: KafkaSettings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    path = write(tmp_path, "f.jsonl", b'{"text": "a"}\n')
    assert main(["produce", str(path), "--topic", "unused", *args]) == 2
    assert message in capsys.readouterr().err


def send_events_and_a_dead_letter(kafka: KafkaSettings) -> tuple[str, str]:
    events, dead_letters = new_topic(kafka, partitions=1), new_topic(kafka, partitions=1)
    producer = RecordProducer(kafka)
    for index in (1, 2):
        event = {"id": f"e{index}", "label": "POSITIVE", "score": 0.5 + index / 10}
        producer.send(events, orjson.dumps(event), key=f"e{index}".encode())
    source = RawRecord(b"not json \xff", b"bad-1", "t.input", 0, 9, timestamp_ms=0)
    headers = dead_letter_headers(
        source, DeadLetterReason.INVALID_UTF8, "invalid UTF-8 at byte 9", Stage.DECODE, FAILED_AT_MS
    )
    producer.send(dead_letters, source.value, key=source.key, headers=headers)
    assert producer.flush().sent == 3
    return events, dead_letters


def test_tail_writes_events_and_unpacked_dead_letters_to_the_output_file(
    broker_env: KafkaSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events, dead_letters = send_events_and_a_dead_letter(broker_env)
    output = tmp_path / "out.jsonl"
    assert main(["tail", events, dead_letters, "--output", str(output)]) == 0
    lines = [orjson.loads(line) for line in output.read_bytes().splitlines()]
    expected = [
        {"id": "e1", "label": "POSITIVE", "score": 0.6},
        {"id": "e2", "label": "POSITIVE", "score": 0.7},
        {
            "reason": "invalid_utf8",
            "error": "invalid UTF-8 at byte 9",
            "stage": "decode",
            "source_topic": "t.input",
            "source_partition": 0,
            "source_offset": 9,
            "failed_at": "2026-11-20T09:15:02.000Z",
            "key": "bad-1",
            "original_base64": "bm90IGpzb24g/w==",
        },
    ]
    assert sorted(lines, key=orjson.dumps) == sorted(expected, key=orjson.dumps)
    # Events of one partition keep their order.
    assert [line["id"] for line in lines if "id" in line] == ["e1", "e2"]
    assert capsys.readouterr().err.strip() == f"tail: 3 records from {events}, {dead_letters}"


def test_tail_with_meta_and_max_prints_the_first_record_with_its_origin(
    broker_env: KafkaSettings, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    events, _ = send_events_and_a_dead_letter(broker_env)
    assert main(["tail", events, "--with-meta", "--max", "1"]) == 0
    lines = capsysbinary.readouterr().out.splitlines()
    assert len(lines) == 1
    line = orjson.loads(lines[0])
    assert line.pop("timestamp").endswith("Z")
    assert line == {
        "topic": events,
        "partition": 0,
        "offset": 0,
        "key": "e1",
        "value": {"id": "e1", "label": "POSITIVE", "score": 0.6},
    }


def test_tail_of_a_missing_topic_says_so(
    broker_env: KafkaSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tail", "test.no-such-topic"]) == 1
    assert capsys.readouterr().err.strip() == "sentistream tail: no such topic: test.no-such-topic"


@pytest.mark.slow
def test_tail_follow_prints_new_records_until_sigterm_then_counts_them(
    broker_env: KafkaSettings, tmp_path: Path
) -> None:
    events, _ = send_events_and_a_dead_letter(broker_env)
    output = tmp_path / "follow.jsonl"
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": broker_env.bootstrap_servers,
        "KAFKA_BROKER_PROFILE": str(broker_env.broker_profile),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "stream", "tail", events, "--follow", "--output", str(output)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def lines_written() -> int:
            return len(output.read_bytes().splitlines()) if output.exists() else 0

        def wait_for(count: int) -> None:
            deadline = time.monotonic() + 60
            while lines_written() < count:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, f"only {lines_written()}/{count} lines"
                time.sleep(0.2)

        wait_for(2)
        producer = RecordProducer(broker_env)
        producer.send(events, b'{"id": "e3", "label": "NEGATIVE", "score": 0.9}', key=b"e3")
        assert producer.flush().sent == 1
        wait_for(3)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    assert err.strip().splitlines()[-1] == f"tail: 3 records from {events}"
    assert [orjson.loads(line)["id"] for line in output.read_bytes().splitlines()] == [
        "e1",
        "e2",
        "e3",
    ]
