"""read_records: each format's lines -> input-contract payloads, or skipped lines with reasons."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.files import (
    DEFAULT_LABEL_MAPS,
    EMPTY_LINE,
    CsvOptions,
    FileFormat,
    FileFormatError,
    ParsedLine,
    SkippedLine,
    count_lines,
    read_records,
    sentiment140_timestamp,
)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def read(
    path: Path, fmt: FileFormat, **kwargs: object
) -> tuple[list[ParsedLine], list[SkippedLine]]:
    items = list(read_records(path, fmt, **kwargs))  # type: ignore[arg-type]
    parsed = [item for item in items if isinstance(item, ParsedLine)]
    skipped = [item for item in items if isinstance(item, SkippedLine)]
    assert len(parsed) + len(skipped) == len(items)
    return parsed, skipped


def write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


# --- jsonl ------------------------------------------------------------------------------------


def test_jsonl_keeps_each_object_and_its_own_id(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "posts.jsonl",
        b'{"id": "a-1", "text": "good", "source": "chat", "label": 1}\n'
        b'{"text": "no id here"}\n'
        b'{"id": 77, "text": "numeric id"}\n',
    )
    parsed, skipped = read(path, FileFormat.JSONL)
    assert skipped == []
    assert [(p.line_no, p.payload) for p in parsed] == [
        (1, {"id": "a-1", "text": "good", "source": "chat", "label": 1}),
        (2, {"id": "posts:2", "text": "no id here"}),
        (3, {"id": 77, "text": "numeric id"}),
    ]


def test_jsonl_skips_malformed_lines_with_the_pipelines_reason(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bad.jsonl",
        b'{"text": "fine"}\n'
        b"not json at all\n"
        b"[1, 2]\n"
        b'{"id": "x"}\n'
        b'{"text": 42}\n'
        b'{"text": "   "}\n'
        b'{"text": "ok", "timestamp": "yesterday"}\n'
        b'{"text": "\xff\xfe"}\n'
        b"\n"
        b"   \r\n"
        b'{"text": "last"',
    )
    parsed, skipped = read(path, FileFormat.JSONL)
    assert [p.line_no for p in parsed] == [1]
    reasons = {s.line_no: s.reason for s in skipped}
    assert reasons[2].startswith("invalid_json: not JSON")
    assert reasons[3] == "not_an_object: expected a JSON object, got array"
    assert reasons[4] == "missing_text: the required field 'text' is missing"
    assert reasons[5] == "text_not_string: 'text' must be a string, got number"
    assert reasons[6] == "empty_text: 'text' is empty"
    assert reasons[7] == "invalid_field: 'timestamp' is neither ISO-8601 nor epoch millis"
    assert reasons[8] == "invalid_utf8: invalid UTF-8 at byte 10"
    assert reasons[9] == EMPTY_LINE
    assert reasons[10] == EMPTY_LINE
    assert reasons[11].startswith("invalid_json:")
    assert len(reasons) == 10


def test_jsonl_reads_a_two_megabyte_line_whole(tmp_path: Path) -> None:
    long_text = "word " * 400_000  # 2,000,000 characters
    path = write(
        tmp_path,
        "huge.jsonl",
        b'{"text": "before"}\n' + b'{"text": "' + long_text.encode() + b'"}\n{"text": "after"}\n',
    )
    parsed, skipped = read(path, FileFormat.JSONL)
    assert skipped == []
    assert [p.payload["text"] for p in parsed] == ["before", long_text, "after"]
    assert [p.line_no for p in parsed] == [1, 2, 3]


def test_jsonl_strips_a_utf8_byte_order_mark_on_the_first_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bom.jsonl", b'\xef\xbb\xbf{"id": "b", "text": "hi"}\n')
    parsed, skipped = read(path, FileFormat.JSONL)
    assert skipped == []
    assert parsed[0].payload == {"id": "b", "text": "hi"}


# --- text -------------------------------------------------------------------------------------


def test_text_makes_one_message_per_line_with_file_stem_ids(tmp_path: Path) -> None:
    path = write(tmp_path, "chat.log.txt", "héllo 👋\r\n\nsecond line\nno newline at end".encode())
    parsed, skipped = read(path, FileFormat.TEXT)
    assert [(p.line_no, p.payload) for p in parsed] == [
        (1, {"id": "chat.log:1", "text": "héllo 👋"}),
        (3, {"id": "chat.log:3", "text": "second line"}),
        (4, {"id": "chat.log:4", "text": "no newline at end"}),
    ]
    assert skipped == [SkippedLine(2, EMPTY_LINE)]


def test_text_skips_a_line_that_is_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path, "mixed.txt", b"fine\ncaf\xe9 latin-1\nfine again\n")
    parsed, skipped = read(path, FileFormat.TEXT)
    assert [p.line_no for p in parsed] == [1, 3]
    assert skipped == [SkippedLine(2, "invalid UTF-8 at byte 3")]


def test_text_uses_the_id_prefix_when_given(tmp_path: Path) -> None:
    path = write(tmp_path, "a.txt", b"one\ntwo\n")
    parsed, _ = read(path, FileFormat.TEXT, id_prefix="run7")
    assert [p.payload["id"] for p in parsed] == ["run7:1", "run7:2"]


def test_stdin_is_read_from_the_given_stream_with_stdin_ids() -> None:
    stream = io.BytesIO(b"from a pipe\n\nand more\n")
    items = list(read_records("-", FileFormat.TEXT, stream=stream))
    assert items == [
        ParsedLine(1, {"id": "stdin:1", "text": "from a pipe"}),
        SkippedLine(2, EMPTY_LINE),
        ParsedLine(3, {"id": "stdin:3", "text": "and more"}),
    ]


# --- csv --------------------------------------------------------------------------------------


def test_csv_maps_columns_by_header_name(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "export.csv",
        b"msg_id,body,sentiment,ts,platform,room\n"
        b'm1,"Hello, world",positive,2026-01-02T03:04:05Z,slack,#general\n'
        b'm2,"a ""quoted"" word",,1700000000000,,\n',
    )
    options = CsvOptions(
        text_column="body",
        id_column="msg_id",
        label_column="sentiment",
        timestamp_column="ts",
        source_column="platform",
        channel_column="room",
    )
    parsed, skipped = read(path, FileFormat.CSV, csv=options)
    assert skipped == []
    assert [(p.line_no, p.payload) for p in parsed] == [
        (
            2,
            {
                "id": "m1",
                "text": "Hello, world",
                "label": "positive",
                "timestamp": "2026-01-02T03:04:05Z",
                "source": "slack",
                "channel": "#general",
            },
        ),
        (3, {"id": "m2", "text": 'a "quoted" word', "timestamp": "1700000000000"}),
    ]


def test_csv_maps_columns_by_index_without_a_header(tmp_path: Path) -> None:
    path = write(tmp_path, "rows.csv", b"1,first text,pos\n2,second text,neg\n")
    options = CsvOptions(text_column=1, label_column=2, has_header=False)
    parsed, skipped = read(path, FileFormat.CSV, csv=options)
    assert skipped == []
    assert [p.payload for p in parsed] == [
        {"id": "rows:1", "text": "first text", "label": "pos"},
        {"id": "rows:2", "text": "second text", "label": "neg"},
    ]


def test_csv_index_zero_is_the_first_column_even_with_a_header(tmp_path: Path) -> None:
    path = write(tmp_path, "h.csv", b"content,other\nthe text,x\n")
    parsed, _ = read(path, FileFormat.CSV, csv=CsvOptions(text_column=0))
    assert parsed == [ParsedLine(2, {"id": "h:2", "text": "the text"})]


def test_csv_reads_tab_delimited_files(tmp_path: Path) -> None:
    path = write(tmp_path, "t.tsv", b"text\tlabel\nfine, with a comma\t1\n")
    parsed, _ = read(path, FileFormat.CSV, csv=CsvOptions(delimiter="\t", label_column="label"))
    assert parsed == [ParsedLine(2, {"id": "t:2", "text": "fine, with a comma", "label": "1"})]


def test_csv_keeps_a_quoted_newline_and_numbers_the_row_by_its_first_line(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", b'text\n"two\nlines"\nafter\n')
    parsed, skipped = read(path, FileFormat.CSV)
    assert skipped == []
    assert [(p.line_no, p.payload["text"]) for p in parsed] == [(2, "two\nlines"), (4, "after")]


def test_csv_skips_short_rows_empty_text_blank_lines_and_bad_bytes(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "s.csv",
        b"id,text\n1,good\n2\n3,\n\n5,caf\xe9\n6,also good\n",
    )
    parsed, skipped = read(path, FileFormat.CSV, csv=CsvOptions(id_column="id"))
    assert [p.payload["id"] for p in parsed] == ["1", "6"]
    assert skipped == [
        SkippedLine(3, "expected at least 2 columns, got 1"),
        SkippedLine(4, "empty text"),
        SkippedLine(5, EMPTY_LINE),
        SkippedLine(6, "not valid utf-8 at byte 5"),
    ]


def test_csv_decodes_with_the_given_encoding(tmp_path: Path) -> None:
    path = write(tmp_path, "l.csv", "text\ncafé crème\n".encode("latin-1"))
    parsed, skipped = read(path, FileFormat.CSV, csv=CsvOptions(encoding="latin-1"))
    assert skipped == []
    assert parsed[0].payload["text"] == "café crème"


def test_csv_reads_a_field_over_the_csv_modules_default_limit(tmp_path: Path) -> None:
    long_text = "x" * 2_000_000
    path = write(tmp_path, "big.csv", b"text\n" + long_text.encode() + b"\nsmall\n")
    parsed, skipped = read(path, FileFormat.CSV)
    assert skipped == []
    assert [len(p.payload["text"]) for p in parsed] == [2_000_000, 5]


def test_csv_unknown_column_name_is_a_one_line_error(tmp_path: Path) -> None:
    path = write(tmp_path, "c.csv", b"id,message\n1,hi\n")
    with pytest.raises(FileFormatError, match=r"^text column 'text' is not in the header \("):
        list(read_records(path, FileFormat.CSV))


def test_csv_column_names_need_a_header(tmp_path: Path) -> None:
    path = write(tmp_path, "c.csv", b"1,hi\n")
    with pytest.raises(FileFormatError, match="without a header needs column indexes"):
        list(read_records(path, FileFormat.CSV, csv=CsvOptions(has_header=False)))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (CsvOptions(encoding="utf-16"), "not supported: lines are split on newline bytes"),
        (CsvOptions(encoding="no-such-codec"), "unknown encoding 'no-such-codec'"),
        (CsvOptions(delimiter="::"), "the delimiter must be one character"),
    ],
)
def test_csv_options_that_cannot_work_are_errors(
    tmp_path: Path, options: CsvOptions, message: str
) -> None:
    path = write(tmp_path, "c.csv", b"text\nhi\n")
    with pytest.raises(FileFormatError, match=message):
        list(read_records(path, FileFormat.CSV, csv=options))


# --- sentiment140 -----------------------------------------------------------------------------


def test_sentiment140_reads_latin1_and_utf8_lines_in_one_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "training.csv",
        # Latin-1 (the published file), then UTF-8, then a doubled quote.
        b'"0","1467810369","Mon Apr 06 22:19:45 PDT 2009","NO_QUERY","_TheSpecial",'
        b'"caf\xe9 is closed"\n'
        + '"4","1467810672","Mon Apr 06 22:19:49 PDT 2009","NO_QUERY","scotthamilton",'
        '"naïve joy 😀"\n'.encode()
        + b'"2","1467810917","Sat May 16 23:58:44 UTC 2009","kindle2","mattycus",'
        b'"meh, ""fine"""\n',
    )
    parsed, skipped = read(path, FileFormat.SENTIMENT140)
    assert skipped == []
    assert [(p.line_no, p.payload) for p in parsed] == [
        (
            1,
            {
                "id": "1467810369",
                "text": "café is closed",
                "label": "0",
                "author": "_TheSpecial",
                "timestamp": "2009-04-06T22:19:45-07:00",
            },
        ),
        (
            2,
            {
                "id": "1467810672",
                "text": "naïve joy 😀",
                "label": "4",
                "author": "scotthamilton",
                "timestamp": "2009-04-06T22:19:49-07:00",
            },
        ),
        (
            3,
            {
                "id": "1467810917",
                "text": 'meh, "fine"',
                "label": "2",
                "author": "mattycus",
                "timestamp": "2009-05-16T23:58:44+00:00",
            },
        ),
    ]


def test_sentiment140_skips_rows_that_do_not_fit_the_format(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "s140.csv",
        b'"4","1","Mon Apr 06 22:19:45 PDT 2009","q","u","good"\n'
        b'"4","2","date","q","text without user"\n'
        b'"5","3","Mon Apr 06 22:19:45 PDT 2009","q","u","bad polarity"\n'
        b'"0","4","Mon Apr 06 22:19:45 PDT 2009","q","u",""\n'
        b"\n"
        b'"0","6","someday","q","u","odd date kept without a timestamp"\n',
    )
    parsed, skipped = read(path, FileFormat.SENTIMENT140)
    assert [p.payload["id"] for p in parsed] == ["1", "6"]
    assert "timestamp" not in parsed[1].payload
    assert skipped == [
        SkippedLine(2, "expected 6 columns, got 5"),
        SkippedLine(3, "polarity must be 0, 2 or 4, got '5'"),
        SkippedLine(4, "empty text"),
        SkippedLine(5, EMPTY_LINE),
    ]


@pytest.mark.parametrize(
    ("date", "expected"),
    [
        ("Mon Apr 06 22:19:45 PDT 2009", "2009-04-06T22:19:45-07:00"),
        ("Tue Jan 06 01:02:03 PST 2009", "2009-01-06T01:02:03-08:00"),
        ("Sat May 16 23:58:44 UTC 2009", "2009-05-16T23:58:44+00:00"),
        ("Mon Apr 06 22:19:45 CEST 2009", None),
        ("2009-04-06", None),
        ("Mon Foo 06 22:19:45 PDT 2009", None),
    ],
)
def test_sentiment140_dates_become_iso_timestamps(date: str, expected: str | None) -> None:
    assert sentiment140_timestamp(date) == expected


# --- tweeteval --------------------------------------------------------------------------------


def test_tweeteval_pairs_each_text_line_with_its_label(tmp_path: Path) -> None:
    text = write(tmp_path, "val_text.txt", b"so happy today \nmeh \n\nawful service \n")
    write(tmp_path, "val_labels.txt", b"2\n1\n1\n0\n")
    parsed, skipped = read(text, FileFormat.TWEETEVAL)
    assert [(p.line_no, p.payload) for p in parsed] == [
        (1, {"id": "val_text:1", "text": "so happy today ", "label": "2"}),
        (2, {"id": "val_text:2", "text": "meh ", "label": "1"}),
        (4, {"id": "val_text:4", "text": "awful service ", "label": "0"}),
    ]
    assert skipped == [SkippedLine(3, EMPTY_LINE)]


def test_tweeteval_labels_file_can_be_given(tmp_path: Path) -> None:
    text = write(tmp_path, "tweets.txt", b"one\ntwo\n")
    labels = write(tmp_path, "gold.txt", b"0\n3\n")
    parsed, skipped = read(text, FileFormat.TWEETEVAL, labels_path=labels)
    assert [p.payload["label"] for p in parsed] == ["0"]
    assert skipped == [SkippedLine(2, "label must be 0, 1 or 2, got '3'")]


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (b"2\n1\n", r"^val_text.txt has 3 lines but val_labels.txt has 2: "),
        (b"2\n1\n0\n1\n", r"^val_text.txt has 3 lines but val_labels.txt has 4: "),
    ],
)
def test_tweeteval_label_count_mismatch_is_an_error_before_any_line(
    tmp_path: Path, labels: bytes, message: str
) -> None:
    text = write(tmp_path, "val_text.txt", b"a\nb\nc\n")
    write(tmp_path, "val_labels.txt", labels)
    with pytest.raises(FileFormatError, match=message):
        read_records(text, FileFormat.TWEETEVAL)


def test_tweeteval_missing_labels_file_is_an_error(tmp_path: Path) -> None:
    text = write(tmp_path, "test_text.txt", b"a\n")
    with pytest.raises(FileFormatError, match=r"the labels file .*test_labels.txt does not exist"):
        read_records(text, FileFormat.TWEETEVAL)


def test_tweeteval_from_stdin_needs_a_labels_file_and_checks_the_count(tmp_path: Path) -> None:
    with pytest.raises(FileFormatError, match="needs the labels file"):
        read_records("-", FileFormat.TWEETEVAL, stream=io.BytesIO(b"a\n"))
    labels = write(tmp_path, "labels.txt", b"0\n2\n")
    short = read_records("-", FileFormat.TWEETEVAL, labels_path=labels, stream=io.BytesIO(b"a\n"))
    assert next(short) == ParsedLine(1, {"id": "stdin:1", "text": "a", "label": "0"})
    with pytest.raises(FileFormatError, match="1 text lines but 2 labels"):
        next(short)
    long = read_records(
        "-", FileFormat.TWEETEVAL, labels_path=labels, stream=io.BytesIO(b"a\nb\nc\n")
    )
    assert len([next(long), next(long)]) == 2
    with pytest.raises(FileFormatError, match="line 3 has no label"):
        next(long)


def test_tweeteval_shared_validation_split_reads_whole() -> None:
    text = SHARED_DATA / "tweeteval" / "val_text.txt"
    if not text.exists():
        pytest.fail(f"{text} is missing: the tests need ../shared beside the project checkout")
    parsed, skipped = read(text, FileFormat.TWEETEVAL)
    assert (len(parsed), skipped) == (2000, [])
    assert {p.payload["label"] for p in parsed} == set(DEFAULT_LABEL_MAPS[FileFormat.TWEETEVAL])


# --- sst2 -------------------------------------------------------------------------------------


def test_sst2_reads_sentence_and_label_after_the_header(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "dev.tsv",
        b"sentence\tlabel\n"
        b"it 's a charming journey . \t1\n"
        b"unflinchingly bleak \t0\n"
        b"no tab here\n"
        b"bad label\t7\n"
        b"\n",
    )
    parsed, skipped = read(path, FileFormat.SST2)
    assert [(p.line_no, p.payload) for p in parsed] == [
        (2, {"id": "dev:2", "text": "it 's a charming journey . ", "label": "1"}),
        (3, {"id": "dev:3", "text": "unflinchingly bleak ", "label": "0"}),
    ]
    assert skipped == [
        SkippedLine(4, "expected sentence<TAB>label, found no tab"),
        SkippedLine(5, "label must be 0 or 1, got '7'"),
        SkippedLine(6, EMPTY_LINE),
    ]


def test_sst2_without_its_header_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "test.tsv", b"index\tsentence\n0\tuneasy mishmash\n")
    with pytest.raises(FileFormatError, match=r"^line 1: expected the SST-2 header"):
        list(read_records(path, FileFormat.SST2))


def test_sst2_glue_dev_set_reads_all_872_sentences() -> None:
    path = SHARED_DATA / "sst2" / "glue_dev.tsv"
    if not path.exists():
        pytest.fail(f"{path} is missing: the tests need ../shared beside the project checkout")
    parsed, skipped = read(path, FileFormat.SST2)
    assert (len(parsed), skipped) == (872, [])
    labels = [p.payload["label"] for p in parsed]
    assert (labels.count("1"), labels.count("0")) == (444, 428)


# --- helpers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "lines"), [(b"", 0), (b"a\n", 1), (b"a\nb", 2), (b"a\n\n", 2), (b"\n", 1)]
)
def test_count_lines_counts_a_last_line_without_newline(
    tmp_path: Path, content: bytes, lines: int
) -> None:
    assert count_lines(write(tmp_path, "f.txt", content)) == lines


def test_count_lines_is_unknown_for_stdin() -> None:
    assert count_lines("-") is None


def test_default_label_maps_name_model_labels() -> None:
    assert DEFAULT_LABEL_MAPS == {
        FileFormat.SENTIMENT140: {"0": "NEGATIVE", "2": "NEUTRAL", "4": "POSITIVE"},
        FileFormat.TWEETEVAL: {"0": "NEGATIVE", "1": "NEUTRAL", "2": "POSITIVE"},
        FileFormat.SST2: {"0": "NEGATIVE", "1": "POSITIVE"},
    }


def test_files_module_imports_no_kafka_or_model_package() -> None:
    # A fresh interpreter: this one has long since imported them. `eval --offline` relies on it.
    code = (
        "import sys, connectors.files; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'confluent_kafka', 'faust', 'aiokafka', 'torch', 'transformers'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "[]"
