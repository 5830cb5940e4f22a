"""The decisions of ``sentistream train`` (stream.core.training): recipes, split, precision,
early stopping, the per-epoch summary of the Trainer's log, F1 by threshold."""

from __future__ import annotations

import pytest

from stream.core.training import (
    EarlyStopping,
    Head,
    Precision,
    Recipe,
    Schedule,
    TrainingConfigError,
    best_epoch,
    f1_by_threshold,
    head_labels,
    in_validation_split,
    options_for,
    resolve_precision,
    summarise_log,
)


def test_the_custom_spec_recipe_has_the_documents_values() -> None:
    options = options_for(Recipe.CUSTOM_SPEC, {})
    assert options.learning_rate == 1e-5
    assert options.weight_decay == 0.01
    assert options.schedule is Schedule.COSINE
    assert 0 < options.min_lr < options.learning_rate
    assert options.batch_size == 64
    assert options.max_epochs == 15
    assert options.patience == 5
    assert options.label_smoothing == 0.1
    assert options.max_grad_norm == 1.0
    assert options.validation_split == 0.15
    assert options.precision is Precision.AUTO  # mixed precision wherever a GPU is


def test_the_amazon_recipe_maps_1_to_positive_and_2_to_negative() -> None:
    options = options_for(Recipe.AMAZON, {})
    assert options.label_map == {"1": "POSITIVE", "2": "NEGATIVE"}
    assert (options.batch_size, options.max_epochs, options.min_epochs) == (32, 10, 5)
    assert options.patience == 2
    assert options.warmup_steps == 500
    assert options.schedule is Schedule.LINEAR


def test_the_twitter_recipe_has_a_sigmoid_head_and_maps_0_and_4() -> None:
    options = options_for(Recipe.TWITTER, {})
    assert options.label_map == {"0": "NEGATIVE", "4": "POSITIVE"}
    assert options.head is Head.SIGMOID
    assert options.max_length == 128
    assert head_labels(options) == {0: "POSITIVE"}


def test_explicit_options_win_over_the_recipe() -> None:
    options = options_for(Recipe.CUSTOM_SPEC, {"learning_rate": 3e-5, "max_epochs": 2})
    assert options.learning_rate == 3e-5
    assert options.max_epochs == 2
    assert options.patience == 5


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"learning_rate": 0.0}, "--lr"),
        ({"min_epochs": 4, "max_epochs": 3}, "--min-epochs"),
        ({"label_smoothing": 1.0}, "--label-smoothing"),
        ({"validation_split": 0.0}, "--validation-split"),
        ({"metric": "auc"}, "--metric"),
        ({"head": Head.SIGMOID, "keep_neutral": True}, "--neutral keep"),
        ({"min_lr": 1.0}, "--min-lr"),
        ({"evals_per_epoch": 0}, "--evals-per-epoch"),
    ],
)
def test_bad_options_are_refused_by_name(overrides: dict[str, object], named: str) -> None:
    with pytest.raises(TrainingConfigError, match=named):
        options_for(Recipe.DEFAULT, overrides)


def test_mixed_precision_needs_a_gpu() -> None:
    assert resolve_precision(Precision.AUTO, cuda=False, bf16_supported=False) is Precision.FP32
    assert resolve_precision(Precision.AUTO, cuda=True, bf16_supported=True) is Precision.FP16
    assert resolve_precision(Precision.BF16, cuda=True, bf16_supported=True) is Precision.BF16
    with pytest.raises(TrainingConfigError, match="fp16 needs a CUDA GPU"):
        resolve_precision(Precision.FP16, cuda=False, bf16_supported=False)
    with pytest.raises(TrainingConfigError, match="bf16"):
        resolve_precision(Precision.BF16, cuda=True, bf16_supported=False)


def test_the_validation_split_is_stable_sized_and_seeded() -> None:
    ids = [f"train:{line}" for line in range(20_000)]
    held = [record_id for record_id in ids if in_validation_split(record_id, 0.15, seed=42)]
    assert 0.14 < len(held) / len(ids) < 0.16
    again = [record_id for record_id in ids if in_validation_split(record_id, 0.15, seed=42)]
    assert held == again
    other_seed = {record_id for record_id in ids if in_validation_split(record_id, 0.15, seed=7)}
    assert other_seed != set(held)


def test_early_stopping_waits_patience_evaluations_without_improvement() -> None:
    rule = EarlyStopping(patience=2, min_epochs=1, higher_is_better=True)
    assert [rule.observe(e, v) for e, v in [(1, 0.80), (2, 0.85), (3, 0.85), (4, 0.84)]] == [
        False, False, False, True,
    ]  # fmt: skip
    assert rule.best_epoch == 2  # a tie (epoch 3) is not an improvement


def test_early_stopping_never_stops_before_the_minimum_epochs() -> None:
    rule = EarlyStopping(patience=1, min_epochs=4, higher_is_better=True)
    decisions = [rule.observe(e, v) for e, v in [(1, 0.9), (2, 0.8), (3, 0.8), (4, 0.8)]]
    assert decisions == [False, False, False, True]


def test_early_stopping_on_loss_wants_it_lower_and_without_patience_never_stops() -> None:
    loss = EarlyStopping(patience=1, min_epochs=1, higher_is_better=False)
    assert [loss.observe(e, v) for e, v in [(1, 0.5), (2, 0.4), (3, 0.45)]] == [False, False, True]
    forever = EarlyStopping(patience=None, min_epochs=1, higher_is_better=True)
    assert not any(forever.observe(e, 0.5) for e in range(1, 20))


def test_the_log_summary_weights_training_loss_by_steps_per_validation_pass() -> None:
    log = [
        {"loss": 1.0, "learning_rate": 1e-5, "epoch": 0.25, "step": 10},
        {"loss": 0.6, "learning_rate": 2e-5, "epoch": 0.75, "step": 30},
        {"eval_loss": 0.55, "eval_accuracy": 0.7, "eval_f1": 0.72, "epoch": 1.0, "step": 40},
        {"loss": 0.4, "learning_rate": 1e-5, "epoch": 1.5, "step": 60},
        {"eval_loss": 0.5, "eval_accuracy": 0.8, "eval_f1": 0.81, "epoch": 2.0, "step": 80},
        {"train_runtime": 12.0, "epoch": 2.0, "step": 80},
    ]
    history = summarise_log(log)
    assert [row.epoch for row in history.epochs] == [1.0, 2.0]
    first, second = history.epochs
    assert first.train_loss == pytest.approx((1.0 * 10 + 0.6 * 20) / 30)
    assert first.validation_loss == 0.55
    assert first.learning_rate == 2e-5
    assert second.train_loss == pytest.approx(0.4)
    assert second.f1 == 0.81
    assert [point.step for point in history.train_loss] == [10, 30, 60]
    assert best_epoch(history.epochs, "f1") is second
    assert best_epoch(history.epochs, "loss") is second


def test_the_best_epoch_is_the_earliest_on_a_tie() -> None:
    log = [
        {"eval_loss": 0.5, "eval_f1": 0.8, "epoch": 1.0, "step": 1},
        {"eval_loss": 0.4, "eval_f1": 0.8, "epoch": 2.0, "step": 2},
    ]
    epochs = summarise_log(log).epochs
    best = best_epoch(epochs, "f1")
    assert best is not None
    assert best.epoch == 1.0


def test_f1_by_threshold_counts_positive_predictions_at_each_cut() -> None:
    scores = [0.9, 0.8, 0.6, 0.4, 0.2]
    gold = [True, False, True, True, False]
    at_half, at_high = f1_by_threshold(scores, gold, [0.5, 0.85])
    # t=0.5: predicted positive 0.9, 0.8, 0.6 -> tp 2, fp 1, fn 1
    assert (at_half.precision, at_half.recall) == pytest.approx((2 / 3, 2 / 3))
    assert at_half.f1 == pytest.approx(2 / 3)
    # t=0.85: only 0.9 -> tp 1, fp 0, fn 2
    assert (at_high.precision, at_high.recall) == pytest.approx((1.0, 1 / 3))
    assert at_high.f1 == pytest.approx(0.5)
