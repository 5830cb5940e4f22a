"""The import contract: the pure core and the label mapping never drag in Kafka, Faust or torch.

Each check runs in a fresh interpreter, because this test process has long since imported them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
HEAVY = (
    "faust",
    "confluent_kafka",
    "torch",
    "transformers",
    "prometheus_client",
    "aiokafka",
    "matplotlib",  # only stream.reports draws, and imports it lazily
)

# Imports the given modules (after discovering stream.core's), then prints which heavy packages
# (or any of their submodules) ended up in sys.modules.
PROBE = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys

    heavy = {heavy!r}
    targets = {targets!r}
    imported = []
    for target in targets:
        module = importlib.import_module(target)
        imported.append(target)
        if target == "stream.core":
            for info in pkgutil.walk_packages(module.__path__, "stream.core."):
                importlib.import_module(info.name)
                imported.append(info.name)
    loaded = sorted(
        name for name in sys.modules if name.split(".")[0] in heavy
    )
    print(json.dumps({{"imported": imported, "loaded": loaded}}))
    """
)


def probe(*targets: str) -> dict[str, list[str]]:
    code = PROBE.format(heavy=HEAVY, targets=targets)
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found: dict[str, list[str]] = json.loads(result.stdout.strip().splitlines()[-1])
    return found


def test_stream_core_imports_no_kafka_faust_model_or_metrics_package() -> None:
    found = probe("stream.core")
    expected = {
        "stream.core",
        "stream.core.records",
        "stream.core.errors",
        "stream.core.codec",
        "stream.core.cleaning",
        "stream.core.batching",
        "stream.core.pipeline",
    }
    assert expected <= set(found["imported"]), "module discovery found every core module"
    assert found["loaded"] == []


def test_stream_reports_imports_matplotlib_only_to_draw() -> None:
    assert "matplotlib" not in {name.split(".")[0] for name in probe("stream.reports")["loaded"]}


def test_models_labels_does_not_import_torch() -> None:
    assert probe("models.labels")["loaded"] == []


def test_models_package_alone_does_not_import_torch() -> None:
    assert probe("models")["loaded"] == []


@pytest.mark.parametrize("target", ["models.runner", "connectors.clients"])
def test_probe_sees_heavy_imports_where_they_belong(target: str) -> None:
    # The contract tests above would pass vacuously if the probe could not see heavy imports.
    assert probe(target)["loaded"] != []
