"""A checkpoint with a real architecture and seeded random weights: the real model's cost, without
its weights (``../shared/models/distilbert-sst2-config`` holds only config and tokenizer)."""

from __future__ import annotations

from pathlib import Path

SEED = 1234


def save_random_model(config_dir: Path | str, target: Path, seed: int = SEED) -> Path:
    """Save config + tokenizer from ``config_dir`` with seeded random weights to ``target``;
    reuses an earlier save there."""
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(config_dir)
    model = AutoModelForSequenceClassification.from_config(config)  # type: ignore[no-untyped-call]
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(config_dir).save_pretrained(target)
    return target
