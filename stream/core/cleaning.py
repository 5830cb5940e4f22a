"""Text cleaning: turn a raw post or chat message into the text the sentiment model sees.

decode/validate -> **clean** -> batch -> score. A validated message's text arrives here; what leaves
is the same words with the noise that carries no sentiment taken out (URLs), or normalised so the
model reads it as language (``@someone`` -> ``@user``, ``#GreatDay`` -> ``Great Day``, ``&amp;`` ->
``&``). Emojis are never touched: they are often the strongest sentiment signal in the message.
The result may be ``""`` (a message that was only a link); deciding what to do with that is the
caller's job (it dead-letters it), so nothing here raises on content.

Steps run in a fixed order, each one switchable through :class:`CleaningRules`:
entities -> URLs -> mentions -> hashtags -> whitespace. Entities go first so ``&#64;bob`` is seen as
a mention; URLs go before mentions and hashtags so ``https://mastodon.social/@bob`` and
``https://x.com/page#top`` are removed whole rather than half-rewritten.

Rules for the ambiguous cases:

* Entities are unescaped until nothing changes, so double-escaped text from scrapers
  (``&amp;lt;3``) comes out as ``<3`` and cleaning twice gives the same result as cleaning once.
  ``html.unescape`` follows HTML5, so a few legacy names match without ``;`` (``&not`` -> ``¬``);
  ``AT&T`` and ``R&D`` are safe.
* Mentions: ``@`` directly after a word character, ``@`` or ``/`` is not a mention, which leaves
  e-mail addresses (``a.b@example.com``) and ``/@path`` URL parts alone. A fediverse handle
  ``@bob@mastodon.social`` becomes one ``@user``.
* URLs: ``http(s)://`` and ``www.`` links are removed, and so is a bare domain followed by a path
  (``bit.ly/3xYz``). A bare domain without a path (``Amazon.com is down``) stays: it is often the
  subject of the sentence. Trailing ``. , ; : ! ? '`` and a ``)`` or ``]`` with no opening partner
  inside the link are kept as text. The spaces before a removed link go with it, so
  ``read https://x.com/a.`` becomes ``read.`` and ``(see https://x.com/a)`` becomes ``(see)``; this
  tidy-up happens only where a link was removed, never elsewhere in the text.
* Hashtags: the ``#`` goes and the tag is split into words: at ``_``, at a lower-to-upper case
  change (``GreatDay`` -> ``Great Day``), before the last capital of an acronym that runs into a
  word (``HTMLParser`` -> ``HTML Parser``) and between letters and digits (``COVID19`` ->
  ``COVID 19``). One lowercase letter opening the tag is a brand prefix and stays joined
  (``iPhone15Pro`` -> ``iPhone 15 Pro``, ``eBay``). Number tags lose the ``#`` too (``#1`` ->
  ``1``). ``#`` right after a word character, ``&``, ``#``, ``/`` or ``@`` is not a hashtag
  (``C#``, ``page#top``); a lone ``#`` or a tag with no letter or digit (``#__``) stays as written.
* Whitespace: every run of Unicode whitespace (spaces, tabs, newlines, NBSP, ideographic space)
  becomes one space and the ends are stripped. Zero-width joiners are not whitespace, so emoji
  sequences such as 👨‍👩‍👧 survive intact.
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass


@dataclass(frozen=True)
class CleaningRules:
    """Which cleaning steps run; every step is on by default and can be switched off alone."""

    mentions: bool = True  # @someone -> @user
    urls: bool = True  # remove URLs
    hashtags: bool = True  # #GreatDay -> Great Day
    html_entities: bool = True  # &amp; -> &, &lt;3 -> <3, &#128512; -> 😀
    whitespace: bool = True  # collapse whitespace runs (incl. newlines, tabs, NBSP), strip ends


# Characters a link may contain: RFC 3986 reserved/unreserved plus percent and Unicode word
# characters (IRIs such as wikipedia.org/wiki/Straße). Emojis, quotes, <, > and the ellipsis of a
# truncated tweet end a link, so an emoji glued to a URL is kept.
_URL_CHAR = r"[\w\-.~:/?#\[\]@!$&'()*+,;=%]"
_DOMAIN_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_URL = re.compile(
    # Horizontal whitespace before the link is removed with it (see the module docstring). The
    # lead only starts where a whitespace run starts, so long runs are not rescanned at every
    # position (quadratic time on a message of many spaces).
    r"(?<![^\S\r\n])(?P<lead>[^\S\r\n]*)"
    r"(?<![\w@./\-])"
    r"(?P<url>"
    r"(?:https?://|www\.)\w" + _URL_CHAR + r"*"
    r"|(?:" + _DOMAIN_LABEL + r"\.)+[a-z]{2,24}(?::\d{1,5})?/" + _URL_CHAR + r"*"
    r")",
    re.IGNORECASE,
)
_URL_TRAILING_PUNCTUATION = ".,;:!?'"
_CLOSING_TO_OPENING = {")": "(", "]": "["}

# Mentions and hashtags are found by regex and then measured in Python (see _word_end): a
# regex \w stops at combining marks, which would cut "#नमस्ते_दुनिया" or a decomposed "@josé" short.
_FEDIVERSE_MENTION = re.compile(r"(?<![\w@/])@\w+@[\w-]+(?:\.[\w-]+)+")
_MENTION = re.compile(r"(?<![\w@/])@\w[^\s@#]*")
_MENTION_PLACEHOLDER = "@user"

_HASHTAG = re.compile(r"(?<![\w&#/@])#\w[^\s@#]*")

_WHITESPACE_RUN = re.compile(r"\s+")


def clean_text(text: str, rules: CleaningRules = CleaningRules()) -> str:
    """Return ``text`` cleaned by the steps ``rules`` switches on; may return ``""``.

    Idempotent: cleaning already-cleaned text changes nothing.
    """
    if rules.html_entities and "&" in text:
        text = _unescape_fully(text)
    if rules.urls:
        text = _URL.sub(_drop_url_keep_trailing_punctuation, text)
    if rules.mentions and "@" in text:
        text = _FEDIVERSE_MENTION.sub(_MENTION_PLACEHOLDER, text)
        text = _MENTION.sub(_replace_mention, text)
    if rules.hashtags and "#" in text:
        text = _HASHTAG.sub(_hashtag_as_words, text)
    if rules.whitespace:
        text = _WHITESPACE_RUN.sub(" ", text).strip()
    return text


def _unescape_fully(text: str) -> str:
    # Each pass that changes anything makes the text shorter, so this always terminates.
    while True:
        unescaped = html.unescape(text)
        if unescaped == text:
            return text
        text = unescaped


def _drop_url_keep_trailing_punctuation(match: re.Match[str]) -> str:
    url = match.group("url")
    kept = len(url)
    while kept > 0:
        last = url[kept - 1]
        if last in _URL_TRAILING_PUNCTUATION:
            kept -= 1
        elif last in _CLOSING_TO_OPENING:
            # Wikipedia-style links end in a balanced ")" that belongs to the link.
            candidate = url[:kept]
            if candidate.count(last) > candidate.count(_CLOSING_TO_OPENING[last]):
                kept -= 1
            else:
                break
        else:
            break
    return url[kept:]


def _word_end(text: str, start: int) -> int:
    """Index just past the run of word characters (regex \\w plus combining marks) at ``start``."""
    end = start
    while end < len(text) and (text[end].isalnum() or text[end] == "_" or _is_mark(text[end])):
        end += 1
    return end


def _is_mark(char: str) -> bool:
    # Combining accents, Indic vowel signs and viramas: part of the word, but not regex \w.
    return unicodedata.category(char)[0] == "M"


def _replace_mention(match: re.Match[str]) -> str:
    candidate = match.group(0)
    return _MENTION_PLACEHOLDER + candidate[_word_end(candidate, 1) :]


def _hashtag_as_words(match: re.Match[str]) -> str:
    candidate = match.group(0)
    tag_end = _word_end(candidate, 1)
    tag, rest = candidate[1:tag_end], candidate[tag_end:]
    if not any(char.isalnum() for char in tag):
        return candidate
    words = " ".join(_split_tag_segment(segment) for segment in tag.split("_") if segment)
    return words + rest


def _split_tag_segment(segment: str) -> str:
    pieces: list[str] = []
    previous = ""  # last base character, skipping marks (a decomposed "é" is "e" + mark)
    base_index = -1
    for index, char in enumerate(segment):
        if _is_mark(char):
            pieces.append(char)
            continue
        base_index += 1
        following = segment[index + 1] if index + 1 < len(segment) else ""
        if previous and _starts_new_word(previous, char, following, base_index):
            pieces.append(" ")
        pieces.append(char)
        previous = char
    return "".join(pieces)


def _starts_new_word(previous: str, char: str, following: str, base_index: int) -> bool:
    if (previous.isalpha() and char.isdecimal()) or (previous.isdecimal() and char.isalpha()):
        return True
    if previous.islower() and char.isupper():
        # One lowercase letter opening the tag is a brand prefix: iPhone, eBay, iPad.
        return base_index != 1
    # End of an acronym that runs into a capitalised word: HTMLParser -> HTML Parser.
    return previous.isupper() and char.isupper() and following.islower()
