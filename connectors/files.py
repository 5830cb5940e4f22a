"""Read message files line by line into input-contract payloads, for ``produce`` and ``eval``.

file bytes -> lines (split on ``\\n``, numbered from 1) -> decode -> parse (per format) ->
:class:`ParsedLine` (an input-contract object with ``id`` and ``text``) or :class:`SkippedLine` (a
line number and why). A bad line never stops the read; a file that cannot be read as its format at
all (a missing column, a TweetEval labels file that does not match) raises :class:`FileFormatError`.

Lines are read as they are, however long: the pipeline's own size limit (``oversize`` dead letters)
and the producer's request limit decide what a long line becomes, so nothing is dropped here.
Labels are carried as the file spells them (strings); :data:`DEFAULT_LABEL_MAPS` maps them to the
model's labels. Pure Python and the standard library's ``csv``: no Kafka here.
"""

from __future__ import annotations

import codecs
import csv as csv_module
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from stream.core.codec import decode_message
from stream.core.errors import ConfigurationError, PoisonRecord
from stream.core.records import RawRecord

STDIN = "-"
EMPTY_LINE = "empty line"
UTF8_BOM = codecs.BOM_UTF8
# The csv module refuses fields over 128 KiB by default; a long post is not a malformed line.
CSV_FIELD_LIMIT = 64 * 1024 * 1024
# Reasons quote at most this much of a value (never message text, only labels and headers).
_QUOTE_CHARS = 20


class FileFormat(StrEnum):
    JSONL = "jsonl"  # one input-contract JSON object per line (sent as the object it is)
    TEXT = "text"  # one message text per line
    CSV = "csv"  # delimited with column mapping (CsvOptions)
    SENTIMENT140 = "sentiment140"  # polarity,id,date,query,user,text; no header; Latin-1 or UTF-8
    TWEETEVAL = "tweeteval"  # <split>_text.txt + <split>_labels.txt (0 neg / 1 neu / 2 pos)
    SST2 = "sst2"  # GLUE SST-2 TSV: header `sentence<TAB>label`, 1 pos / 0 neg


# The file's label spelling -> the model label, per format with labels of its own.
DEFAULT_LABEL_MAPS: dict[FileFormat, dict[str, str]] = {
    FileFormat.SENTIMENT140: {"0": "NEGATIVE", "2": "NEUTRAL", "4": "POSITIVE"},
    FileFormat.TWEETEVAL: {"0": "NEGATIVE", "1": "NEUTRAL", "2": "POSITIVE"},
    FileFormat.SST2: {"0": "NEGATIVE", "1": "POSITIVE"},
}


class FileFormatError(ConfigurationError, ValueError):
    """The file cannot be read as the given format at all; the message is one line."""


@dataclass(frozen=True, slots=True)
class CsvOptions:
    """Which columns hold what: a header name, or a column index counting from 0."""

    text_column: str | int = "text"
    id_column: str | int | None = None
    label_column: str | int | None = None
    timestamp_column: str | int | None = None
    source_column: str | int | None = None
    channel_column: str | int | None = None
    delimiter: str = ","
    has_header: bool = True
    encoding: str = "utf-8"


@dataclass(frozen=True, slots=True)
class ParsedLine:
    line_no: int  # 1-based line number in the (text) file
    # An input-contract object: always "id" and "text"; "label" when the file has one.
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SkippedLine:
    line_no: int
    reason: str  # one line, says what is wrong (never quotes long text)


Parsed = ParsedLine | SkippedLine


def read_records(
    path: str | Path,
    fmt: FileFormat,
    *,
    csv: CsvOptions | None = None,
    labels_path: str | Path | None = None,
    id_prefix: str | None = None,
    stream: BinaryIO | None = None,
) -> Iterator[Parsed]:
    """Every line of ``path`` (``-``: stdin, or ``stream`` when given), parsed as ``fmt``.

    Lines without an id get ``<id_prefix or file stem>:<line number>``. Raises
    :class:`FileFormatError` (before yielding anything where it can tell up front) and ``OSError``
    for a file that cannot be opened.
    """
    fmt = FileFormat(fmt)
    prefix = id_prefix or id_stem(path)
    if fmt is FileFormat.JSONL:
        return _read_jsonl(iter_lines(path, stream), prefix)
    if fmt is FileFormat.TEXT:
        return _read_text(iter_lines(path, stream), prefix)
    if fmt is FileFormat.CSV:
        return _read_csv(iter_lines(path, stream), csv or CsvOptions(), prefix)
    if fmt is FileFormat.SENTIMENT140:
        return _read_sentiment140(iter_lines(path, stream))
    if fmt is FileFormat.TWEETEVAL:
        labels = _tweeteval_labels(path, labels_path)
        return _read_tweeteval(iter_lines(path, stream), labels, path, prefix)
    return _read_sst2(iter_lines(path, stream), prefix)


def id_stem(path: str | Path) -> str:
    """The default id prefix: the file name without its extension (``stdin`` for ``-``)."""
    return "stdin" if str(path) == STDIN else Path(path).stem


def iter_lines(path: str | Path, stream: BinaryIO | None = None) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, the line's bytes with its ``\\n`` still on)."""
    with _open_binary(path, stream) as source:
        yield from enumerate(source, start=1)


def count_lines(path: str | Path) -> int | None:
    """Lines in a regular file (a last line without ``\\n`` counts), or None for stdin/pipes."""
    if str(path) == STDIN or not Path(path).is_file():
        return None
    lines = 0
    last = b"\n"
    with Path(path).open("rb") as source:
        while chunk := source.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")


@contextmanager
def _open_binary(path: str | Path, stream: BinaryIO | None) -> Iterator[BinaryIO]:
    if stream is not None:
        yield stream
    elif str(path) == STDIN:
        yield sys.stdin.buffer
    else:
        with Path(path).open("rb") as source:
            yield source


def _strip_newline(line: bytes) -> bytes:
    return line.rstrip(b"\r\n")


def _strip_bom(line_no: int, line: bytes) -> bytes:
    return line[len(UTF8_BOM) :] if line_no == 1 and line.startswith(UTF8_BOM) else line


@dataclass(frozen=True, slots=True)
class _Undecodable:
    reason: str


def _decode_utf8(line: bytes) -> str | _Undecodable:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _Undecodable(f"invalid UTF-8 at byte {exc.start}")


def _quote(value: str) -> str:
    """A short value for a reason: labels and header cells, cut to a few characters."""
    return repr(value if len(value) <= _QUOTE_CHARS else value[:_QUOTE_CHARS] + "...")


def _read_jsonl(lines: Iterator[tuple[int, bytes]], prefix: str) -> Iterator[Parsed]:
    """Each line must pass the pipeline's own decode and validate steps, else it is skipped with
    the reason the pipeline would dead-letter it for."""
    for line_no, raw in lines:
        line = _strip_bom(line_no, _strip_newline(raw))
        if not line.strip():
            yield SkippedLine(line_no, EMPTY_LINE)
            continue
        probe = RawRecord(line, None, "", 0, 0, timestamp_ms=0)
        try:
            decode_message(probe, max_bytes=len(line))
        except PoisonRecord as exc:
            yield SkippedLine(line_no, f"{exc.reason}: {exc.detail}")
            continue
        payload: dict[str, Any] = orjson.loads(line)
        if payload.get("id") in (None, ""):
            payload["id"] = f"{prefix}:{line_no}"
        yield ParsedLine(line_no, payload)


def _read_text(lines: Iterator[tuple[int, bytes]], prefix: str) -> Iterator[Parsed]:
    for line_no, raw in lines:
        text = _decode_utf8(_strip_bom(line_no, _strip_newline(raw)))
        if isinstance(text, _Undecodable):
            yield SkippedLine(line_no, text.reason)
        elif not text.strip():
            yield SkippedLine(line_no, EMPTY_LINE)
        else:
            yield ParsedLine(line_no, {"id": f"{prefix}:{line_no}", "text": text})


def _check_line_encoding(encoding: str) -> str:
    """The codec's name, if lines can be split on newline bytes in it (not UTF-16/32)."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise FileFormatError(f"unknown encoding {encoding!r}") from None
    if "\n".encode(name) != b"\n":
        raise FileFormatError(
            f"encoding {encoding!r} is not supported: lines are split on newline bytes; "
            f"convert the file to UTF-8 first (iconv -f {encoding} -t utf-8)"
        )
    return name


def _read_csv(
    lines: Iterator[tuple[int, bytes]], options: CsvOptions, prefix: str
) -> Iterator[Parsed]:
    encoding = _check_line_encoding(options.encoding)
    if len(options.delimiter) != 1:
        raise FileFormatError(f"the delimiter must be one character, got {options.delimiter!r}")
    csv_module.field_size_limit(max(csv_module.field_size_limit(), CSV_FIELD_LIMIT))
    bad_lines: dict[int, str] = {}  # physical line -> why it could not be decoded

    def decoded() -> Iterator[str]:
        for line_no, raw in lines:
            line = _strip_bom(line_no, raw) if encoding.startswith("utf-8") else raw
            try:
                yield line.decode(encoding)
            except UnicodeDecodeError as exc:
                bad_lines[line_no] = f"not valid {options.encoding} at byte {exc.start}"
                yield line.decode(encoding, errors="replace")

    reader = csv_module.reader(decoded(), delimiter=options.delimiter)
    columns = _CsvColumns(options)
    if options.has_header:
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv_module.Error as exc:
            raise FileFormatError(f"line 1: the header is not valid CSV: {exc}") from None
        if bad_lines:
            raise FileFormatError(f"line 1: the header is {next(iter(bad_lines.values()))}")
        columns.resolve(header)
    else:
        columns.resolve(None)
    last_line = reader.line_num
    while True:
        first_line = last_line + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv_module.Error as exc:
            last_line = reader.line_num
            yield SkippedLine(first_line, f"not valid CSV: {exc}")
            continue
        last_line = reader.line_num
        undecodable = [bad_lines.pop(n) for n in range(first_line, last_line + 1) if n in bad_lines]
        if undecodable:
            yield SkippedLine(first_line, undecodable[0])
        elif not row or (len(row) == 1 and not row[0].strip()):
            yield SkippedLine(first_line, EMPTY_LINE)
        else:
            yield columns.parse(first_line, row, prefix)


class _CsvColumns:
    """Column names or indexes -> indexes into a row, and a row -> a payload."""

    FIELDS = ("id", "label", "timestamp", "source", "channel")

    def __init__(self, options: CsvOptions) -> None:
        self._wanted: dict[str, str | int | None] = {
            "text": options.text_column,
            "id": options.id_column,
            "label": options.label_column,
            "timestamp": options.timestamp_column,
            "source": options.source_column,
            "channel": options.channel_column,
        }
        self._index: dict[str, int] = {}

    def resolve(self, header: list[str] | None) -> None:
        names = [cell.strip() for cell in header] if header is not None else None
        for field, column in self._wanted.items():
            if column is None:
                continue
            if isinstance(column, int):
                if column < 0:
                    raise FileFormatError(f"column indexes count from 0, got {column}")
                self._index[field] = column
            elif names is None:
                raise FileFormatError(
                    f"{field} column {column!r}: a file without a header needs column indexes "
                    "(counting from 0)"
                )
            elif column in names:
                self._index[field] = names.index(column)
            else:
                shown = ", ".join(_quote(name) for name in names[:10])
                raise FileFormatError(
                    f"{field} column {column!r} is not in the header ({shown}"
                    f"{', ...' if len(names) > 10 else ''})"
                )

    def parse(self, line_no: int, row: list[str], prefix: str) -> Parsed:
        needed = max(self._index.values()) + 1
        if len(row) < needed:
            return SkippedLine(line_no, f"expected at least {needed} columns, got {len(row)}")
        text = row[self._index["text"]]
        if not text.strip():
            return SkippedLine(line_no, "empty text")
        payload: dict[str, Any] = {"id": f"{prefix}:{line_no}", "text": text}
        for field in self.FIELDS:
            if field in self._index and (value := row[self._index[field]].strip()):
                payload[field] = value
        return ParsedLine(line_no, payload)


SENTIMENT140_POLARITIES = ("0", "2", "4")
_MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
        start=1,
    )
}
_ZONES = {"UTC": "+00:00", "GMT": "+00:00", "PDT": "-07:00", "PST": "-08:00"}
_TIME = re.compile(r"[0-9]{2}:[0-9]{2}:[0-9]{2}")


def sentiment140_timestamp(date: str) -> str | None:
    """``Mon Apr 06 22:19:45 PDT 2009`` -> ``2009-04-06T22:19:45-07:00``; None if not that shape.

    Parsed by hand: ``strptime``'s ``%a``/``%b`` follow the locale, and ``%Z`` rejects PDT.
    """
    parts = date.split()
    if len(parts) != 6:
        return None
    _weekday, month, day, clock, zone, year = parts
    if month not in _MONTHS or zone not in _ZONES or not _TIME.fullmatch(clock):
        return None
    if not (day.isascii() and day.isdigit() and year.isascii() and year.isdigit()):
        return None
    return f"{int(year):04d}-{_MONTHS[month]:02d}-{int(day):02d}T{clock}{_ZONES[zone]}"


def _read_sentiment140(lines: Iterator[tuple[int, bytes]]) -> Iterator[Parsed]:
    """The Sentiment140 CSV; each line is tried as UTF-8, then Latin-1 (the published file)."""
    for line_no, raw in lines:
        line = _strip_bom(line_no, _strip_newline(raw))
        if not line.strip():
            yield SkippedLine(line_no, EMPTY_LINE)
            continue
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError:
            decoded = line.decode("latin-1")
        try:
            rows = list(csv_module.reader([decoded]))
        except csv_module.Error as exc:
            yield SkippedLine(line_no, f"not valid CSV: {exc}")
            continue
        row = rows[0] if rows else []
        if len(row) != 6:
            yield SkippedLine(line_no, f"expected 6 columns, got {len(row)}")
            continue
        polarity, tweet_id, date, _query, user, text = row
        if polarity not in SENTIMENT140_POLARITIES:
            yield SkippedLine(line_no, f"polarity must be 0, 2 or 4, got {_quote(polarity)}")
        elif not tweet_id.strip():
            yield SkippedLine(line_no, "empty id")
        elif not text.strip():
            yield SkippedLine(line_no, "empty text")
        else:
            payload: dict[str, Any] = {"id": tweet_id.strip(), "text": text, "label": polarity}
            if user.strip():
                payload["author"] = user.strip()
            if (timestamp := sentiment140_timestamp(date)) is not None:
                payload["timestamp"] = timestamp
            yield ParsedLine(line_no, payload)


TWEETEVAL_LABELS = ("0", "1", "2")


def tweeteval_labels_path(text_path: str | Path) -> Path:
    """``val_text.txt`` -> ``val_labels.txt`` (the TweetEval layout)."""
    path = Path(text_path)
    if not path.name.endswith("_text.txt"):
        raise FileFormatError(
            f"{path.name}: cannot tell the labels file (expected <split>_text.txt); "
            "give it with --labels"
        )
    return path.with_name(path.name.removesuffix("_text.txt") + "_labels.txt")


def _tweeteval_labels(path: str | Path, labels_path: str | Path | None) -> list[str]:
    """The labels, one per text line; a labels file that cannot match the text is an error."""
    if labels_path is None:
        if str(path) == STDIN:
            raise FileFormatError("tweeteval from stdin needs the labels file (--labels)")
        labels_path = tweeteval_labels_path(path)
    labels_file = Path(labels_path)
    try:
        content = labels_file.read_bytes()
    except FileNotFoundError:
        raise FileFormatError(f"the labels file {labels_file} does not exist") from None
    except OSError as exc:
        message = f"cannot read the labels file {labels_file}: {exc.strerror}"
        raise FileFormatError(message) from None
    try:
        labels = [line.strip() for line in content.decode("utf-8").split("\n")]
    except UnicodeDecodeError as exc:
        raise FileFormatError(f"{labels_file}: invalid UTF-8 at byte {exc.start}") from None
    if labels and labels[-1] == "" and content.endswith(b"\n"):
        labels.pop()  # the newline that ends the last line starts no new one
    text_lines = count_lines(path)
    if text_lines is not None and text_lines != len(labels):
        raise FileFormatError(_mismatch(path, text_lines, labels_file, len(labels)))
    return labels


def _mismatch(path: str | Path, text_lines: int, labels_file: Path, labels: int) -> str:
    return (
        f"{Path(path).name} has {text_lines} lines but {labels_file.name} has {labels}: "
        "every text line needs exactly one label"
    )


def _read_tweeteval(
    lines: Iterator[tuple[int, bytes]], labels: list[str], path: str | Path, prefix: str
) -> Iterator[Parsed]:
    line_no = 0
    for line_no, raw in lines:
        if line_no > len(labels):  # only when the text's length could not be known up front
            raise FileFormatError(f"{id_stem(path)}: line {line_no} has no label (labels end)")
        text = _decode_utf8(_strip_bom(line_no, _strip_newline(raw)))
        label = labels[line_no - 1]
        if isinstance(text, _Undecodable):
            yield SkippedLine(line_no, text.reason)
        elif not text.strip():
            yield SkippedLine(line_no, EMPTY_LINE)
        elif label not in TWEETEVAL_LABELS:
            yield SkippedLine(line_no, f"label must be 0, 1 or 2, got {_quote(label)}")
        else:
            yield ParsedLine(line_no, {"id": f"{prefix}:{line_no}", "text": text, "label": label})
    if line_no < len(labels):
        raise FileFormatError(f"{id_stem(path)}: {line_no} text lines but {len(labels)} labels")


SST2_HEADER = "sentence\tlabel"
SST2_LABELS = ("0", "1")


def _read_sst2(lines: Iterator[tuple[int, bytes]], prefix: str) -> Iterator[Parsed]:
    """GLUE SST-2: ``sentence<TAB>label`` with that header; the sentence is before the last tab."""
    for line_no, raw in lines:
        line = _decode_utf8(_strip_bom(line_no, _strip_newline(raw)))
        if line_no == 1:
            if isinstance(line, _Undecodable) or line.strip() != SST2_HEADER:
                shown = _quote(line) if isinstance(line, str) else line.reason
                raise FileFormatError(
                    f"line 1: expected the SST-2 header 'sentence<TAB>label', got {shown}"
                )
            continue
        if isinstance(line, _Undecodable):
            yield SkippedLine(line_no, line.reason)
            continue
        if not line.strip():
            yield SkippedLine(line_no, EMPTY_LINE)
            continue
        sentence, tab, label = line.rpartition("\t")
        label = label.strip()
        if not tab:
            yield SkippedLine(line_no, "expected sentence<TAB>label, found no tab")
        elif label not in SST2_LABELS:
            yield SkippedLine(line_no, f"label must be 0 or 1, got {_quote(label)}")
        elif not sentence.strip():
            yield SkippedLine(line_no, "empty text")
        else:
            yield ParsedLine(
                line_no, {"id": f"{prefix}:{line_no}", "text": sentence, "label": label}
            )
