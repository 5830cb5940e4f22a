"""Why a record could not be processed, and whose fault that is.

bytes -> decode (utf-8, JSON) -> validate (contract) -> clean -> score. A failure in the first four
is the producer's fault and final: the record is *poison* and goes to the dead-letter topic with its
original bytes. A failure while scoring may be transient: the batch is split and retried, and only a
record that still fails alone is dead-lettered, with reason ``model``.
"""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    DECODE = "decode"
    VALIDATE = "validate"
    CLEAN = "clean"
    SCORE = "score"


class DeadLetterReason(StrEnum):
    OVERSIZE = "oversize"
    EMPTY_PAYLOAD = "empty_payload"
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_TEXT = "missing_text"
    TEXT_NOT_STRING = "text_not_string"
    EMPTY_TEXT = "empty_text"
    INVALID_FIELD = "invalid_field"
    EMPTY_AFTER_CLEANING = "empty_after_cleaning"
    MODEL = "model"


STAGE_OF_REASON: dict[DeadLetterReason, Stage] = {
    DeadLetterReason.OVERSIZE: Stage.DECODE,
    DeadLetterReason.EMPTY_PAYLOAD: Stage.DECODE,
    DeadLetterReason.INVALID_UTF8: Stage.DECODE,
    DeadLetterReason.INVALID_JSON: Stage.DECODE,
    DeadLetterReason.NOT_AN_OBJECT: Stage.VALIDATE,
    DeadLetterReason.MISSING_TEXT: Stage.VALIDATE,
    DeadLetterReason.TEXT_NOT_STRING: Stage.VALIDATE,
    DeadLetterReason.EMPTY_TEXT: Stage.VALIDATE,
    DeadLetterReason.INVALID_FIELD: Stage.VALIDATE,
    DeadLetterReason.EMPTY_AFTER_CLEANING: Stage.CLEAN,
    DeadLetterReason.MODEL: Stage.SCORE,
}


class PoisonRecord(Exception):
    """The record can never be processed; the producer must fix it.

    ``detail`` describes the problem without quoting the message text, so it is safe to log and to
    put in dead-letter headers even when text redaction is on.
    """

    def __init__(self, reason: DeadLetterReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    @property
    def stage(self) -> Stage:
        return STAGE_OF_REASON[self.reason]


# --- the command's own errors ------------------------------------------------------------------
# Every failure a user can cause or meet ends the command with one line and an exit code that says
# whose move it is; ``stream.cli.main`` is the one place that prints them and exits.


class SentistreamError(Exception):
    """A failure of a ``sentistream`` command; its message is one line naming what to change."""

    exit_code: int = 1


class ConfigurationError(SentistreamError):
    """A setting, option, model or file the user chose cannot work: change it (exit 2)."""

    exit_code = 2


class UnavailableError(SentistreamError):
    """Something the command needs did not answer or is missing (broker, topic, time-out): it
    may work when retried (exit 1)."""

    exit_code = 1


class InterruptedRun(SentistreamError):
    """Stopped by a signal before the work was done; resumable where the command says so
    (exit 130, as a shell reports SIGINT)."""

    exit_code = 130


class UnpublishedError(SentistreamError):
    """Results could not be published, so their input was not committed: it is read again after a
    restart (exit 70, EX_SOFTWARE)."""

    exit_code = 70


EXIT_CONFIGURATION = ConfigurationError.exit_code
EXIT_UNAVAILABLE = UnavailableError.exit_code
EXIT_INTERRUPTED = InterruptedRun.exit_code
EXIT_UNPUBLISHED = UnpublishedError.exit_code
