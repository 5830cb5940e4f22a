"""Derive checkpoints from a two-class sentiment checkpoint: a single-logit (sigmoid) head, or the
same weights under other label names. Used by the tests and handy for a deployment that wants the
custom model spec's head shape without retraining.

softmax([l0, l1])[1] == sigmoid(l1 - l0), so a head whose one logit is ``l1 - l0`` gives the same
positive probability, and at threshold 0.5 the same label.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from stream.core.errors import ConfigurationError


def fold_to_single_logit(source: Path, out: Path, positive_index: int = 1) -> Path:
    """Save ``source`` (two classes) with one logit ``l[positive] - l[other]`` into ``out``."""
    model = AutoModelForSequenceClassification.from_pretrained(str(source))
    if int(model.config.num_labels) != 2:
        raise ConfigurationError(f"{source} has {model.config.num_labels} classes, not 2")
    head = last_linear(model)
    negative_index = 1 - positive_index
    folded = torch.nn.Linear(head.in_features, 1, bias=head.bias is not None)
    with torch.no_grad():
        folded.weight.copy_(head.weight[positive_index] - head.weight[negative_index])
        if head.bias is not None:
            folded.bias.copy_(head.bias[positive_index] - head.bias[negative_index])
    replace_linear(model, head, folded)
    model.config.num_labels = 1
    # transformers trains one logit with BCE-with-logits under this problem type: a sigmoid head.
    model.config.problem_type = "multi_label_classification"
    model.config.id2label = {0: "POSITIVE"}
    model.config.label2id = {"POSITIVE": 0}
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(out))
    return out


def relabel(source: Path, out: Path, id2label: Mapping[int, str]) -> Path:
    """A copy of ``source`` whose config names its classes ``id2label`` (weights unchanged)."""
    model = AutoModelForSequenceClassification.from_pretrained(str(source))
    model.config.id2label = dict(id2label)
    model.config.label2id = {name: index for index, name in id2label.items()}
    model.save_pretrained(str(out))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (source / name).exists():
            shutil.copy(source / name, out / name)
    return out


def last_linear(model: Any) -> torch.nn.Linear:
    """The classification head's output layer: the last Linear whose outputs are the classes."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    head = layers[-1]
    if head.out_features != int(model.config.num_labels):
        raise ConfigurationError("cannot find the classification head's output layer")
    return head


def replace_linear(model: torch.nn.Module, old: torch.nn.Linear, new: torch.nn.Linear) -> None:
    for parent in model.modules():
        for name, child in parent.named_children():
            if child is old:
                setattr(parent, name, new)
                return
    raise ConfigurationError("cannot replace the classification head")
