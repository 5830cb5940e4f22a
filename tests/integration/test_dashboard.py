"""The live page (/dashboard) in headless Chromium (Debian's package): it loads, runs its script,
and shows the windows, the throughput and the model of a stream this test produced."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from connectors.producer import RecordProducer
from stream.settings import KafkaSettings, TopicSettings
from tests.conftest import Collector, WorkerFactory

pytestmark = [
    pytest.mark.broker, pytest.mark.slow, pytest.mark.one_broker,
    pytest.mark.debian_tools("chromium"),
]  # fmt: skip


def chromium(url: str, *extra: str, budget_ms: int = 8000) -> str:
    """Headless Chromium: load ``url``, let its script run for ``budget_ms`` of virtual time."""
    browser = shutil.which("chromium") or "chromium"
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--hide-scrollbars", f"--virtual-time-budget={budget_ms}", *extra, url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_live_page_shows_the_windows_of_a_stream(
    kafka: KafkaSettings,
    topics: TopicSettings,
    start_worker: WorkerFactory,
    collect: Collector,
    minilm: Path,
    tmp_path: Path,
) -> None:
    worker = start_worker(
        minilm, topics,
        SENTISTREAM_BACKEND="torch-fp32", SENTISTREAM_WINDOW_TUMBLING_S="2",
        SENTISTREAM_WINDOW_HOPPING_S="4", SENTISTREAM_WINDOW_HOP_S="2",
        SENTISTREAM_WINDOW_GRACE_S="0.5", SENTISTREAM_IDLE_FLUSH_S="2",
    )  # fmt: skip
    producer = RecordProducer(kafka)
    sent = 0
    for second in range(6):
        for index in range(20):
            source = "reviews" if index % 2 else "support-chat"
            text = "I love this, great job" if index % 4 < 3 else "this is terrible"
            value = orjson.dumps({"id": f"w{second}-{index}", "text": text, "source": source})
            producer.send(topics.input_topic, value)
            sent += 1
        producer.flush()
        time.sleep(1.0)
    collect(topics, expected=sent, worker=worker)
    base = f"http://127.0.0.1:{worker.env['SENTISTREAM_WEB_PORT']}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the windows close on the idle flush
        with urllib.request.urlopen(f"{base}/aggregates/keys", timeout=10) as response:
            keys = orjson.loads(response.read())["keys"]
        if {"all", "source=reviews", "source=support-chat"} <= set(keys):
            break
        time.sleep(1)

    dom = chromium(f"{base}/dashboard", "--dump-dom")
    assert re.search(r'data-loaded="[1-9]', dom), dom[-3000:]  # the script ran to the end
    assert 'id="error"></div>' in dom  # and met no error
    for key in ("all", "source=reviews", "source=support-chat"):
        assert f'data-key="{key}"' in dom  # a line on the chart per key
        assert f"<td>{key}</td>" in dom  # and rows in the windows table
    assert "<polyline" in dom
    model_tile = re.search(r'id="model"[^>]*>([^<]+)<', dom)
    assert model_tile is not None
    assert model_tile.group(1).startswith("sha256:")  # the model's version
    rate = re.search(r'id="rate">([^<]+)<', dom)
    assert rate is not None
    assert rate.group(1) != "…"
    screenshot = tmp_path / "dashboard.png"
    chromium(f"{base}/dashboard", f"--screenshot={screenshot}", "--window-size=1000,1000")
    assert screenshot.read_bytes().startswith(b"\x89PNG")
