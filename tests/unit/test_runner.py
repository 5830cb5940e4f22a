"""models.runner, real small checkpoint, torch fp32: tokenizer, labels, batching, truncation.

Backends other than torch fp32 are compared with it in test_backends.py.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from models.backends import Backend
from models.checkpoints import fold_to_single_logit, relabel
from models.labels import UnsupportedLabels
from models.runner import (
    DEFAULT_OVERHEAD_TOKENS,
    OVERHEAD_TOKENS_BOUNDS,
    ModelLoadError,
    RunnerOptions,
    SentimentRunner,
    forward_lanes,
    lane_threads,
    model_version,
)
from stream.core.records import Prediction

pytestmark = pytest.mark.slow

MINILM = Path(__file__).resolve().parents[2].parent / "shared/models/sentiment-minilm-sst2"
TOLERANCE = 1e-5


def require_model() -> Path:
    if not MINILM.is_dir():
        pytest.fail(f"{MINILM} is missing: the tests need ../shared beside the project checkout")
    return MINILM


@pytest.fixture(scope="module")
def runner() -> SentimentRunner:
    return SentimentRunner(str(require_model()), RunnerOptions(device="cpu", backend="torch-fp32"))


@pytest.fixture(scope="module")
def small_batch_runner() -> SentimentRunner:
    """A second load of the same checkpoint, with at most 4 texts per forward pass."""
    return SentimentRunner(
        str(require_model()), RunnerOptions(device="cpu", backend="torch-fp32", max_batch_size=4)
    )


def varied_texts(count: int = 20, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    words = [
        *("the", "movie", "was", "good", "bad", "great", "terrible", "boring", "fun", "acting"),
        *("plot", "long", "short", "really", "not", "very", "charming", "awful", "brilliant"),
        *("dull", "soundtrack", "ending"),
    ]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 80))) for _ in range(count)]


MIXED_SENTENCES = [
    "I absolutely love this, best day ever!",
    "What a wonderful, charming film with a brilliant cast and a soundtrack I keep humming.",
    "Great.",
    "This is terrible, I hate it.",
    "Two hours of my life I will never get back: dull plot, wooden acting, awful ending.",
    "A delightful surprise from start to finish, funny and warm and very well made indeed.",
]


def mixed_texts() -> list[str]:
    """Clear sentences of both labels among word salad: ~20 texts of very different lengths."""
    texts = varied_texts(count=14)
    for index, sentence in enumerate(MIXED_SENTENCES):
        texts.insert(index * 3, sentence)
    return texts


def assert_same_predictions(first: list[Prediction], second: list[Prediction]) -> None:
    assert len(first) == len(second)
    for one, other in zip(first, second, strict=True):
        assert one.label == other.label
        assert one.token_count == other.token_count
        assert one.probabilities.keys() == other.probabilities.keys()
        for label, probability in one.probabilities.items():
            assert probability == pytest.approx(other.probabilities[label], abs=TOLERANCE)


# --- tokenizer ------------------------------------------------------------------------------------


def test_tokenizer_has_a_real_vocabulary(runner: SentimentRunner) -> None:
    # A tokenizer loaded with the wrong backend can come back with a handful of special tokens and
    # map every word to [UNK]; the model then scores every text the same.
    tokenizer = runner.tokenizer
    assert len(tokenizer) > 10_000
    great, terrible = tokenizer.convert_tokens_to_ids(["great", "terrible"])
    assert tokenizer.unk_token_id not in (great, terrible)
    assert great != terrible
    ids = tokenizer("great terrible")["input_ids"]
    assert ids[1:-1] == [great, terrible]
    assert tokenizer.unk_token_id not in ids


def test_runner_reads_labels_and_window_from_the_checkpoint(runner: SentimentRunner) -> None:
    assert runner.labels == ["NEGATIVE", "POSITIVE"]
    assert runner.max_length == 512
    assert runner.name == str(MINILM)


# --- predictions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("I absolutely love this, best day ever!", "POSITIVE"),
        ("What a wonderful, charming film.", "POSITIVE"),
        ("This is terrible, I hate it.", "NEGATIVE"),
        ("The worst service I have ever had. Awful.", "NEGATIVE"),
    ],
)
def test_clear_sentiment_gets_the_clear_label(
    runner: SentimentRunner, text: str, label: str
) -> None:
    (prediction,) = runner.predict([text]).predictions
    assert prediction.label == label
    assert prediction.score > 0.9


def test_predictions_do_not_depend_on_batch_composition_or_order(runner: SentimentRunner) -> None:
    texts = mixed_texts()
    together = runner.predict(texts).predictions
    alone = [runner.predict([text]).predictions[0] for text in texts]
    reversed_back = runner.predict(texts[::-1]).predictions[::-1]
    assert_same_predictions(together, alone)
    assert_same_predictions(together, reversed_back)
    assert len({p.label for p in together}) == 2, "a mix of labels, or this proves little"


def test_predictions_come_back_in_the_order_of_the_texts(runner: SentimentRunner) -> None:
    texts = ["This is terrible, I hate it.", "I absolutely love this, best day ever!"] * 3
    labels = [p.label for p in runner.predict(texts).predictions]
    assert labels == ["NEGATIVE", "POSITIVE"] * 3


def test_score_is_the_top_probability_and_probabilities_sum_to_one(
    runner: SentimentRunner,
) -> None:
    for prediction in runner.predict(varied_texts(seed=11)).predictions:
        assert set(prediction.probabilities) == {"NEGATIVE", "POSITIVE"}
        assert math.fsum(prediction.probabilities.values()) == pytest.approx(1.0, abs=TOLERANCE)
        assert prediction.score == max(prediction.probabilities.values())
        assert prediction.probabilities[prediction.label] == prediction.score
        assert 0.5 <= prediction.score <= 1.0


# --- truncation -----------------------------------------------------------------------------------


def test_long_text_is_truncated_to_the_window(runner: SentimentRunner) -> None:
    long_text = " ".join(["good"] * 2000)
    long, short = runner.predict([long_text, "a short good text"]).predictions
    assert long.truncated is True
    assert long.token_count == runner.max_length
    assert short.truncated is False
    assert short.token_count == 6  # [CLS] a short good text [SEP]


@pytest.mark.parametrize(("words", "truncated"), [(509, False), (510, False), (511, True)])
def test_text_filling_the_window_exactly_is_not_truncated(
    runner: SentimentRunner, words: int, truncated: bool
) -> None:
    # "good" is one token, plus [CLS] and [SEP]: 510 words fill the 512-token window exactly.
    (prediction,) = runner.predict([" ".join(["good"] * words)]).predictions
    assert prediction.truncated is truncated
    assert prediction.token_count == min(words + 2, runner.max_length)


# --- batching -------------------------------------------------------------------------------------


def test_padded_tokens_cover_real_tokens(runner: SentimentRunner) -> None:
    scored = runner.predict(varied_texts(seed=3))
    assert scored.real_tokens == sum(p.token_count for p in scored.predictions)
    assert scored.padded_tokens >= scored.real_tokens
    assert 0 < scored.padding_efficiency <= 1


@pytest.mark.parametrize("count", [1, 3, 4, 5, 8, 10])
def test_forward_batches_hold_at_most_max_batch_size_texts(
    small_batch_runner: SentimentRunner, count: int
) -> None:
    texts = [f"review number {i} was fine" for i in range(count)]
    lengths = {len(small_batch_runner.tokenizer(t)["input_ids"]) for t in texts}
    assert len(lengths) == 1, "equal-length texts, so only max_batch_size splits them"
    scored = small_batch_runner.predict(texts)
    assert scored.forward_batches == math.ceil(count / 4)
    assert scored.padded_tokens == scored.real_tokens  # equal lengths: no padding at all
    sizes = sorted((p.batch_size for p in scored.predictions), reverse=True)
    expected = [4] * (count // 4) * 4 + [count % 4] * (count % 4)
    assert sizes == expected


def test_batch_size_field_reflects_the_shared_forward_pass(runner: SentimentRunner) -> None:
    assert [p.batch_size for p in runner.predict(["good", "bad", "fine"]).predictions] == [3] * 3
    assert runner.predict(["good"]).predictions[0].batch_size == 1
    scored = runner.predict(varied_texts(count=40, seed=5))
    assert max(scored.forward_sizes) <= 32  # the default max_batch_size
    expected = Counter({size: 0 for size in scored.forward_sizes})
    for size in scored.forward_sizes:
        expected[size] += size
    assert Counter(p.batch_size for p in scored.predictions) == expected


def test_a_take_of_short_and_long_texts_is_scored_in_a_pass_for_each(
    runner: SentimentRunner,
) -> None:
    """One pass padded to the long texts would cost more than a second pass's fixed cost."""
    runner.forward_cost.forget()  # the default fixed cost, 32 tokens a pass
    long = " ".join(["the acting was good but the plot was long"] * 12)
    scored = runner.predict(["good", long, "bad", long, "fine", long, "ok", long])
    assert sorted(scored.forward_sizes) == [4, 4]
    assert {p.batch_size for p in scored.predictions} == {4}
    assert scored.padding_efficiency > 0.95


def test_the_runner_fits_what_a_forward_pass_costs_from_its_passes(
    runner: SentimentRunner,
) -> None:
    runner.forward_cost.forget()
    assert runner.overhead_tokens() == DEFAULT_OVERHEAD_TOKENS
    for seed in range(4):
        runner.predict(varied_texts(count=12, seed=seed))
    fitted = runner.forward_cost.line()
    assert fitted is not None
    fixed_ms, ms_per_token = fitted
    assert ms_per_token > 0
    low, high = OVERHEAD_TOKENS_BOUNDS
    assert runner.overhead_tokens() == pytest.approx(min(high, max(low, fixed_ms / ms_per_token)))


@pytest.mark.parametrize(
    ("requested", "backend", "cpus", "lanes"),
    [
        (None, Backend.ONNX_INT8, 2, 2),
        (None, Backend.ONNX_FP32, 16, 2),
        (None, Backend.ONNX_INT8, 1, 1),
        (3, Backend.ONNX_INT8, 2, 3),
        (1, Backend.ONNX_FUSED_INT8, 8, 1),
        (None, Backend.TORCH_FP32, 8, 1),
        (None, Backend.CUDA_FP16, 8, 1),
    ],
)
def test_forward_lanes_default_to_two_for_onnx_on_two_cores_or_more(
    monkeypatch: pytest.MonkeyPatch, requested: int | None, backend: Backend, cpus: int, lanes: int
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: cpus)
    assert forward_lanes(requested, backend) == lanes


def test_lanes_are_for_the_onnx_backends_only(caplog: pytest.LogCaptureFixture) -> None:
    laned = SentimentRunner(
        str(require_model()), RunnerOptions(device="cpu", backend="torch-fp32", lanes=2)
    )
    assert laned.lanes == 1
    assert "applies to the ONNX backends only" in caplog.text


@pytest.mark.parametrize(
    ("total", "lanes", "each"), [(2, 2, 1), (4, 2, 2), (1, 2, 1), (3, 1, 3), (5, 2, 2)]
)
def test_each_lane_gets_its_share_of_the_threads(
    total: int | None, lanes: int, each: int | None
) -> None:
    assert lane_threads(total, lanes) == each


def test_lanes_without_a_thread_count_share_the_cpus() -> None:
    import os

    assert lane_threads(None, 2) == max(1, (os.cpu_count() or 1) // 2)
    assert lane_threads(None, 1) == (os.cpu_count() or 1)


# --- loading and versions -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["missing-model", "nested/missing/model"])
def test_missing_local_model_names_the_path_and_the_setting(tmp_path: Path, name: str) -> None:
    missing = tmp_path / name
    with pytest.raises(ModelLoadError) as caught:
        SentimentRunner(str(missing), RunnerOptions(device="cpu", backend="torch-fp32"))
    message = str(caught.value)
    assert str(missing) in message
    assert "SENTISTREAM_MODEL" in message


def test_local_directory_without_a_checkpoint_is_a_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="SENTISTREAM_MODEL"):
        SentimentRunner(str(tmp_path), RunnerOptions(device="cpu", backend="torch-fp32"))


def test_model_version_is_a_stable_weights_hash(
    runner: SentimentRunner, small_batch_runner: SentimentRunner
) -> None:
    assert runner.version.startswith("sha256:")
    assert len(runner.version) == len("sha256:") + 16
    assert runner.version == small_batch_runner.version


def test_model_version_changes_with_the_weights(tmp_path: Path) -> None:
    no_commit = SimpleNamespace(config=SimpleNamespace(_commit_hash=None))
    (tmp_path / "model.safetensors").write_bytes(b"weights one")
    first = model_version(str(tmp_path), no_commit)
    (tmp_path / "model.safetensors").write_bytes(b"weights two")
    second = model_version(str(tmp_path), no_commit)
    assert first.startswith("sha256:")
    assert second.startswith("sha256:")
    assert first != second


def test_model_version_falls_back_to_hub_commit_then_unknown() -> None:
    hub = SimpleNamespace(config=SimpleNamespace(_commit_hash="0123456789abcdef0123"))
    assert model_version("org/some-model", hub) == "0123456789ab"
    nothing = SimpleNamespace(config=SimpleNamespace())
    assert model_version("org/some-model", nothing) == "unknown"


def test_predict_with_no_texts_returns_an_empty_batch(runner: SentimentRunner) -> None:
    scored = runner.predict([])
    assert scored.predictions == []
    assert scored.forward_batches == 0


# --- other checkpoint shapes: one sigmoid logit, labels named by SENTISTREAM_LABEL_MAP ----------


@pytest.fixture(scope="module")
def single_logit_runner(tmp_path_factory: pytest.TempPathFactory) -> SentimentRunner:
    folded = fold_to_single_logit(require_model(), tmp_path_factory.mktemp("single-logit"))
    return SentimentRunner(str(folded), RunnerOptions(device="cpu", backend="torch-fp32"))


def test_a_single_logit_head_scores_like_the_two_class_head_it_was_folded_from(
    runner: SentimentRunner, single_logit_runner: SentimentRunner
) -> None:
    texts = [*MIXED_SENTENCES, *varied_texts(30)]
    two_class = runner.predict(texts).predictions
    one_logit = single_logit_runner.predict(texts).predictions
    assert single_logit_runner.single_logit
    assert single_logit_runner.labels == ["NEGATIVE", "POSITIVE"]
    assert {p.label for p in two_class} == {"NEGATIVE", "POSITIVE"}, "a mix proves more"
    for pair, single in zip(two_class, one_logit, strict=True):
        assert single.label == pair.label
        assert single.score == pytest.approx(pair.score, abs=TOLERANCE)
        assert set(single.probabilities) == {"NEGATIVE", "POSITIVE"}
        assert single.probabilities["POSITIVE"] == pytest.approx(
            pair.probabilities["POSITIVE"], abs=TOLERANCE
        )


def test_the_binary_threshold_decides_a_single_logit_label(tmp_path: Path) -> None:
    folded = fold_to_single_logit(require_model(), tmp_path / "single")
    strict = SentimentRunner(
        str(folded), RunnerOptions(device="cpu", backend="torch-fp32", binary_threshold=0.99)
    )
    predictions = strict.predict([*MIXED_SENTENCES, *varied_texts(40)]).predictions
    for prediction in predictions:
        positive = prediction.probabilities["POSITIVE"]
        assert prediction.label == ("POSITIVE" if positive >= 0.99 else "NEGATIVE")
        assert prediction.score == pytest.approx(prediction.probabilities[prediction.label])
    assert any(p.label == "NEGATIVE" and p.probabilities["POSITIVE"] > 0.5 for p in predictions), (
        "some text is positive at 0.5 but not at 0.99"
    )


def test_a_label_map_names_classes_the_checkpoint_does_not(tmp_path: Path) -> None:
    amazon = relabel(require_model(), tmp_path / "amazon", {0: "2", 1: "1"})
    with pytest.raises(UnsupportedLabels, match="cannot map"):
        SentimentRunner(str(amazon), RunnerOptions(device="cpu", backend="torch-fp32"))
    mapped = SentimentRunner(
        str(amazon),
        RunnerOptions(
            device="cpu", backend="torch-fp32", label_map={"1": "POSITIVE", "2": "NEGATIVE"}
        ),
    )
    assert mapped.labels == ["NEGATIVE", "POSITIVE"]
    assert mapped.predict(["I love this, wonderful"]).predictions[0].label == "POSITIVE"


def test_max_length_cuts_texts_shorter_and_cannot_exceed_the_window(tmp_path: Path) -> None:
    short = SentimentRunner(
        str(require_model()), RunnerOptions(device="cpu", backend="torch-fp32", max_length=16)
    )
    assert short.max_length == 16
    scored = short.predict([" ".join(["good"] * 40), "fine"]).predictions
    assert scored[0].token_count == 16
    assert scored[0].truncated
    assert not scored[1].truncated
    with pytest.raises(ModelLoadError, match="SENTISTREAM_MAX_LENGTH=100000"):
        SentimentRunner(
            str(require_model()),
            RunnerOptions(device="cpu", backend="torch-fp32", max_length=100_000),
        )
