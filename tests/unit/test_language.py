"""The offline language identifier behind the events' lang_detected."""

from __future__ import annotations

from models.language import LanguageIdentifier


def test_clear_sentences_get_their_language() -> None:
    identify = LanguageIdentifier()
    texts = [
        "I love this, wonderful news from the team",
        "Je déteste ce service, c'est horrible",
        "Das ist wirklich schlecht und teuer",
        "me encanta este producto, es genial",
        "这个产品很好",
    ]
    assert identify(texts) == ["en", "fr", "de", "es", "zh"]


def test_text_without_language_gets_none() -> None:
    assert LanguageIdentifier()(["", "   ", "😂😂 🎉"]) == [None, None, None]
