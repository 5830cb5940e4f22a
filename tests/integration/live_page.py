"""The live page (/dashboard) checked in headless Chromium (Debian's package): it loads, runs its
script without error, and shows the windows, the throughput and the model of the stream the
calling test produced (keys ``all``, ``source=reviews``, ``source=support-chat``)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import orjson

KEYS = ("all", "source=reviews", "source=support-chat")


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


def check_live_page(base: str, tmp_path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the windows close on the idle flush
        with urllib.request.urlopen(f"{base}/aggregates/keys", timeout=10) as response:
            keys = orjson.loads(response.read())["keys"]
        if set(KEYS) <= set(keys):
            break
        time.sleep(1)

    dom = chromium(f"{base}/dashboard", "--dump-dom")
    assert re.search(r'data-loaded="[1-9]', dom), dom[-3000:]  # the script ran to the end
    assert 'id="error"></div>' in dom  # and met no error
    for key in KEYS:
        assert f'data-key="{key}"' in dom  # a line on the chart per key
        assert f"<td>{key}</td>" in dom  # and rows in the windows table
    assert "<polyline" in dom
    model_tile = re.search(r'id="model"[^>]*>([^<]+)<', dom)
    assert model_tile is not None
    assert model_tile.group(1).startswith("sha256:")  # the model's version
    rate = re.search(r'id="rate">([^<]+)<', dom)
    assert rate is not None
    assert rate.group(1) != "…"
    drift = re.search(r'id="drift-status"[^>]*>([^<]+)<', dom)
    assert drift is not None
    assert drift.group(1) in ("ok", "off") or drift.group(1).endswith("drifted")
    screenshot = tmp_path / "dashboard.png"
    chromium(f"{base}/dashboard", f"--screenshot={screenshot}", "--window-size=1000,1000")
    assert screenshot.read_bytes().startswith(b"\x89PNG")
