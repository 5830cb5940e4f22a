"""A seeded, realistic mix of social posts and chat messages for the benchmark.

Lengths 3-60 words (log-normal, median ~15, like tweets), with mentions, URLs, hashtags, emojis and
HTML entities in the proportions a social feed shows, plus short chat one-liners.
"""

from __future__ import annotations

import random

WORDS = (
    "the", "a", "this", "that", "it", "is", "was", "so", "really", "very", "not", "just", "never",
    "always", "today", "tonight", "again", "movie", "show", "game", "team", "food", "service",
    "update", "app", "phone", "battery", "price", "delivery", "support", "love", "hate", "like",
    "enjoy", "recommend", "regret", "miss", "want", "need", "wish", "hope", "think", "feel",
    "know", "good", "great", "amazing", "awesome", "best", "perfect", "fun", "happy", "excited",
    "beautiful", "brilliant", "solid", "bad", "awful", "terrible", "worst", "boring", "slow",
    "broken", "sad", "angry", "annoying", "disappointing", "cold", "and", "but", "because",
    "while", "after", "before", "with", "without", "for", "about", "from", "into", "over", "my",
    "your", "our", "their", "his", "her", "everyone", "nobody", "people", "friends", "customers",
    "fans", "staff", "ever", "fast", "late", "early", "long", "short", "new", "old", "first",
    "last", "next", "whole", "half", "experience", "weekend", "morning", "night", "episode",
    "season", "release", "price", "quality", "design", "screen", "honestly", "literally",
    "actually", "finally", "totally", "seriously", "basically", "probably", "maybe",
)  # fmt: skip
HASHTAGS = ("#MondayMotivation", "#fail", "#win", "#customerservice", "#gameday", "#foodie",
            "#NowPlaying", "#tech", "#travel", "#blessed")  # fmt: skip
EMOJIS = ("😀", "😂", "😍", "😡", "😢", "👍", "👎", "🔥", "🙏", "💯")
CHAT = (
    "thanks!", "ok cool", "that's great news", "this is not working", "lol", "ugh, again?",
    "love it", "no way", "can you help me?", "worst support ever", "perfect, thank you",
    "meh", "awesome 🔥", "so annoying", "see you tomorrow",
)  # fmt: skip
SOURCES = ("twitter", "reddit", "chat")


def post(rng: random.Random) -> str:
    length = max(3, min(60, round(rng.lognormvariate(2.7, 0.55))))
    words = [rng.choice(WORDS) for _ in range(length)]
    if rng.random() < 0.4:
        words.insert(0, f"@{rng.choice(('alex', 'sam_k', 'brand', 'support', 'jo99'))}")
    if rng.random() < 0.3:
        words.append(rng.choice(HASHTAGS))
    if rng.random() < 0.25:
        words.append(f"https://t.co/{rng.getrandbits(40):x}")
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words) + 1), rng.choice(EMOJIS))
    if rng.random() < 0.05:
        words.insert(rng.randrange(len(words) + 1), "&amp;")
    text = " ".join(words)
    return text[0].upper() + text[1:] + rng.choice((".", "!", "", "?", "!!"))


def message_mix(count: int, seed: int = 42) -> list[dict[str, str]]:
    """``count`` input-contract messages (id, text, source, channel); same seed, same mix."""
    rng = random.Random(seed)
    messages = []
    for index in range(count):
        source = rng.choice(SOURCES)
        text = rng.choice(CHAT) if source == "chat" and rng.random() < 0.5 else post(rng)
        messages.append(
            {"id": f"bench-{seed}-{index}", "text": text, "source": source, "channel": "bench"}
        )
    return messages
