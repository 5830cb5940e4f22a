"""clean_text: what a post looks like after cleaning, one behaviour per test."""

from __future__ import annotations

import dataclasses

import pytest

from stream.core.cleaning import CleaningRules, clean_text

ALL_OFF = CleaningRules(
    mentions=False, urls=False, hashtags=False, html_entities=False, whitespace=False
)


# --- mentions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("thanks @bob", "thanks @user"),
        ("@alice @bob_99 @Carol2", "@user @user @user"),
        ("thanks @bob!", "thanks @user!"),
        ("@bob, @alice: look at this", "@user, @user: look at this"),
        ("(cc @dev_team)", "(cc @user)"),
        ("@bob's take is wrong", "@user's take is wrong"),
        ('"@bob" said so', '"@user" said so'),
        (".@bob you are wrong", ".@user you are wrong"),
        ("@bob,@alice agreed", "@user,@user agreed"),
        ("@josé_ñ hola", "@user hola"),
        ("@jose\u0301 hola", "@user hola"),  # decomposed é: the accent belongs to the name
        ("@ミク_39 最高", "@user 最高"),
        ("@bob@mastodon.social great toot", "@user great toot"),
    ],
)
def test_clean_replaces_mentions_with_user(text: str, expected: str) -> None:
    assert clean_text(text) == expected


def test_clean_keeps_existing_user_placeholder() -> None:
    assert clean_text("ping @user and @user") == "ping @user and @user"


@pytest.mark.parametrize(
    "text",
    [
        "mail me at a.b@example.com",
        "support@company.co.uk never answers",
        "write to first_last+promo@mail.example.org today",
    ],
)
def test_clean_leaves_email_addresses_untouched(text: str) -> None:
    assert clean_text(text) == text


@pytest.mark.parametrize("text", ["meet @ 5pm", "@ home", "lone @"])
def test_clean_leaves_at_sign_without_name_untouched(text: str) -> None:
    assert clean_text(text) == text


# --- URLs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("look http://example.com/page now", "look now"),
        ("look https://example.com/page now", "look now"),
        ("look HTTPS://Example.com/Page now", "look now"),
        ("look www.example.com now", "look now"),
        ("look www.example.com/deals now", "look now"),
        ("look bit.ly/3xYz now", "look now"),
        ("look example.com/some/path?q=1&r=two now", "look now"),
        ("look https://example.com/search?q=cats&page=2#results now", "look now"),
        ("look https://shop.example.co.uk:8443/cart now", "look now"),
        ("look https://en.wikipedia.org/wiki/Foo_(bar) now", "look now"),
        ("look https://mastodon.social/@bob/1234 now", "look now"),
        ("look https://de.wikipedia.org/wiki/Straße now", "look now"),
        ("two links https://a.example/x and https://b.example/y here", "two links and here"),
    ],
)
def test_clean_removes_urls(text: str, expected: str) -> None:
    assert clean_text(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Read this https://x.com/a/b. Great!", "Read this. Great!"),
        ("Read this https://x.com/a/b, then cry", "Read this, then cry"),
        ("(see https://x.com/a)", "(see)"),
        ("wow https://x.com/a!", "wow!"),
        ("really https://x.com/a?!", "really?!"),
        ("so https://x.com/a... meh", "so... meh"),
        ("fine https://x.com/a; done", "fine; done"),
        ("[link https://x.com/a]", "[link]"),
        ('she said "https://x.com/a" twice', 'she said "" twice'),
        ("truncated tweet https://x.com/a…", "truncated tweet…"),
    ],
)
def test_clean_keeps_punctuation_that_followed_a_url(text: str, expected: str) -> None:
    assert clean_text(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://x.com/a this is great", "this is great"),
        ("this is great https://x.com/a", "this is great"),
        ("this is\nhttps://x.com/a\ngreat", "this is great"),
    ],
)
def test_clean_removes_url_at_start_end_or_own_line(text: str, expected: str) -> None:
    assert clean_text(text) == expected


def test_clean_keeps_emoji_glued_to_end_of_url() -> None:
    assert clean_text("new drop https://x.com/a😍") == "new drop😍"


@pytest.mark.parametrize(
    "text",
    [
        "Amazon.com is down again",
        "I love example.com",
        "version 3.5/5 stars",
        "rated it 50/50",
        "and/or w/o i.e./e.g.",
    ],
)
def test_clean_keeps_bare_domains_without_path_and_slashed_words(text: str) -> None:
    assert clean_text(text) == text


def test_clean_does_not_leave_space_before_punctuation_elsewhere_untouched() -> None:
    # The space-before-punctuation tidy-up happens only where a URL was removed.
    assert clean_text("wait , what ?") == "wait , what ?"


# --- hashtags ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("#GreatDay", "Great Day"),
        ("#love", "love"),
        ("#COVID19", "COVID 19"),
        ("#iPhone15Pro", "iPhone 15 Pro"),
        ("#eBay", "eBay"),
        ("#HTMLParser", "HTML Parser"),
        ("#ILoveNY", "I Love NY"),
        ("#2024goals", "2024 goals"),
        ("#día_feliz", "día feliz"),
        ("#CaféConLeche", "Café Con Leche"),
        ("#Cafe\u0301ConLeche", "Cafe\u0301 Con Leche"),  # decomposed é keeps its accent
        ("#東京", "東京"),
        ("#東京2020", "東京 2020"),
        ("#नमस्ते_दुनिया", "नमस्ते दुनिया"),
        ("#snake_case_tag", "snake case tag"),
        ("#_leading_and_trailing_", "leading and trailing"),
        ("#1", "1"),
        ("fixed in #123", "fixed in 123"),
    ],
)
def test_clean_turns_hashtags_into_words(text: str, expected: str) -> None:
    assert clean_text(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("what a #GreatDay at the beach", "what a Great Day at the beach"),
        ("#MondayMotivation #NoExcuses #gym", "Monday Motivation No Excuses gym"),
        ("so #blessed!", "so blessed!"),
        ("(#ThrowbackThursday)", "(Throwback Thursday)"),
        ("#love❤️", "love❤️"),
    ],
)
def test_clean_turns_hashtags_into_words_mid_sentence(text: str, expected: str) -> None:
    assert clean_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "I code in C# and F#",
        "see page.html#top",
        "a lone # sign",
        "##",
        "#__",
        "keycap #️⃣ emoji",
    ],
)
def test_clean_leaves_non_hashtag_hash_signs_untouched(text: str) -> None:
    assert clean_text(text) == text


# --- HTML entities ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fish &amp; chips", "fish & chips"),
        ("I &lt;3 this", "I <3 this"),
        ("&gt;&gt; not impressed", ">> not impressed"),
        ("he said &quot;never again&quot;", 'he said "never again"'),
        ("it&#39;s fine", "it's fine"),
        ("smile &#128512;", "smile 😀"),
        ("smile &#x1F600;", "smile 😀"),
        ("double escaped &amp;lt;3", "double escaped <3"),
        ("AT&T and R&D stay", "AT&T and R&D stay"),
    ],
)
def test_clean_unescapes_html_entities(text: str, expected: str) -> None:
    assert clean_text(text) == expected


def test_clean_unescapes_entities_before_finding_mentions() -> None:
    assert clean_text("&#64;bob thanks") == "@user thanks"


def test_clean_unescapes_entities_before_finding_urls() -> None:
    assert clean_text("see https://x.com/a?b=1&amp;c=2 ok") == "see ok"


# --- emojis -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "emoji",
    [
        "😀",
        "❤️",
        "👍🏽",
        "👨‍👩‍👧",
        "👩🏾‍💻",
        "🏳️‍🌈",
        "🇯🇵",
        "1️⃣",
        "😂😂😂",
    ],
)
def test_clean_keeps_emojis_untouched(emoji: str) -> None:
    text = f"@bob {emoji} loved it #BestDay {emoji} https://x.com/a"
    assert clean_text(text) == f"@user {emoji} loved it Best Day {emoji}"


def test_clean_keeps_emoji_only_message() -> None:
    assert clean_text("😭😭😭") == "😭😭😭"


# --- whitespace -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so\t\tgood", "so good"),
        ("so\n\ngood", "so good"),
        ("so\r\ngood", "so good"),
        ("so\u00a0good", "so good"),
        ("so \u00a0 \t\n good", "so good"),
        ("so\u3000good", "so good"),
        ("   padded   ", "padded"),
        ("\n\tpadded\n", "padded"),
    ],
)
def test_clean_collapses_whitespace_and_strips_ends(text: str, expected: str) -> None:
    assert clean_text(text) == expected


def test_clean_turns_nbsp_entity_into_plain_space() -> None:
    assert clean_text("so&nbsp;&nbsp;good") == "so good"


# --- empty results ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "\n\t\u00a0",
        "https://x.com/a",
        "  https://x.com/a  ",
        "www.example.com",
        "bit.ly/3xYz https://t.co/abc",
        "&nbsp;",
    ],
)
def test_clean_returns_empty_string_when_nothing_is_left(text: str) -> None:
    assert clean_text(text) == ""


# --- rules switched off -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "text", "expected"),
    [
        pytest.param(
            CleaningRules(mentions=False),
            "hey @bob #GreatDay https://x.com/a",
            "hey @bob Great Day",
            id="mentions-off",
        ),
        pytest.param(
            CleaningRules(urls=False),
            "hey @bob #GreatDay https://x.com/a",
            "hey @user Great Day https://x.com/a",
            id="urls-off",
        ),
        pytest.param(
            CleaningRules(urls=False),
            "see https://mastodon.social/@bob and https://x.com/page#top",
            "see https://mastodon.social/@bob and https://x.com/page#top",
            id="urls-off-keeps-mentions-and-fragments-inside-urls",
        ),
        pytest.param(
            CleaningRules(hashtags=False),
            "hey @bob #GreatDay https://x.com/a",
            "hey @user #GreatDay",
            id="hashtags-off",
        ),
        pytest.param(
            CleaningRules(html_entities=False),
            "fish &amp; chips &lt;3 &#64;bob",
            "fish &amp; chips &lt;3 &#64;bob",
            id="entities-off",
        ),
        pytest.param(
            CleaningRules(whitespace=False),
            "  so\t\tgood @bob  ",
            "  so\t\tgood @user  ",
            id="whitespace-off",
        ),
        pytest.param(
            CleaningRules(whitespace=False),
            "look https://x.com/a now",
            "look now",
            id="whitespace-off-still-removes-the-space-before-a-url",
        ),
    ],
)
def test_clean_leaves_feature_untouched_when_its_rule_is_off(
    rules: CleaningRules, text: str, expected: str
) -> None:
    assert clean_text(text, rules) == expected


@pytest.mark.parametrize(
    "text",
    [
        "hey @bob #GreatDay https://x.com/a &amp; more",
        "  \t\n  ",
        "&#64;bob&nbsp;&lt;3",
    ],
)
def test_clean_with_every_rule_off_returns_text_unchanged(text: str) -> None:
    assert clean_text(text, ALL_OFF) == text


def test_cleaning_rules_are_immutable() -> None:
    rules = CleaningRules()
    with pytest.raises(dataclasses.FrozenInstanceError):
        rules.urls = False  # type: ignore[misc]


# --- idempotence ------------------------------------------------------------------------------

REALISTIC_MESSAGES = [
    "Just got the new #iPhone15Pro from @apple &amp; honestly?? 😍👍🏽 Best purchase ever!!!",
    "@united lost my bag AGAIN. 3rd time this year. #NeverAgain https://t.co/xYz123",
    "lol this is great",
    "ugh",
    "Read this https://example.com/blog/post-1. Totally agree with @jane_doe, @sam!",
    "(source: bit.ly/3xYz) not sure how I feel about this #MixedFeelings",
    "we &lt;3 the new update!!! #BestDayEver 🎉🎉",
    "Can someone from support email me at help.me@example.com? Order #48213 still missing 😡",
    "Family trip 👨‍👩‍👧 to #東京 was amazing!\n\nThanks @TokyoTravel www.example.jp/tours",
    "Hoy fue un #día_feliz ☀️ gracias @amiga",
    "&amp;amp; double-escaped &amp;quot;quotes&amp;quot; from the scraper",
    "meh.   \t  it's fine I guess\u00a0\u00a0🤷",
    "@bob@mastodon.social thoughts on C# vs F#? #DevLife",
    "https://x.com/only/a/link",
    "new drop https://shop.example.com/new😍 #COVID19 #HTMLParser",
    "   ",
    "",
]


@pytest.mark.parametrize("text", REALISTIC_MESSAGES)
def test_clean_is_idempotent(text: str) -> None:
    once = clean_text(text)
    assert clean_text(once) == once
