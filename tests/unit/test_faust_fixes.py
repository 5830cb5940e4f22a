"""stream.faust_fixes.HeadlessWorker: the root logger keeps the configured level."""

from __future__ import annotations

import logging

import faust
from faust.worker import Worker

from stream.faust_fixes import HeadlessWorker


def root_after_setup(worker_class: type[Worker]) -> logging.Logger:
    app = faust.App("headless-test", broker="kafka://127.0.0.1:1")
    worker = worker_class(app, loglevel="warning", quiet=True)
    root = logging.Logger("root-under-test", logging.WARNING)
    root.addHandler(logging.StreamHandler())
    worker.on_setup_root_logger(root, logging.WARNING)
    return root


def test_faust_worker_turns_the_root_logger_to_debug_for_its_spinner() -> None:
    """The upstream behaviour HeadlessWorker corrects (if this fails, Faust fixed it)."""
    root = root_after_setup(Worker)
    assert root.level == logging.DEBUG
    assert len(root.handlers) == 2


def test_headless_worker_keeps_the_configured_level_and_handlers() -> None:
    root = root_after_setup(HeadlessWorker)
    assert root.level == logging.WARNING
    assert len(root.handlers) == 1
    assert not root.isEnabledFor(logging.DEBUG)
